"""The fused relative-attention kernel alone: forward + backward time per launch configuration, against SDPA.

``frpe.fused_attention`` on [B, H, L, d] queries, keys and values with key padding and attention dropout, timed for
each tile configuration (BLOCK_M x BLOCK_N x warps, set through ``frpe.LAUNCH``), next to PyTorch's
``scaled_dot_product_attention`` on the same tensors without relative terms (FlashAttention on a GPU: the upper
bound). Each configuration's output is checked against the first one's, so a configuration that computes something
else is reported, not timed as a win. Prints ms per forward + backward and the ratio to SDPA.

    python benchmarks/bench_fused_kernel.py                                  # L = 128 (b 256) and 512 (b 32)
    python benchmarks/bench_fused_kernel.py --configs 64x64x8,128x64x8 --lengths 512:32
    python benchmarks/bench_fused_kernel.py --device cpu --tiny              # through Triton's interpreter
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time


def parse_configs(text: str) -> list[dict]:
    """"64x64x8,128x64x4" -> [{"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 8}, ...]."""
    configs = []
    for item in text.split(","):
        m, n, warps = (int(x) for x in item.split("x"))
        configs.append({"BLOCK_M": m, "BLOCK_N": n, "num_warps": warps})
    return configs


def parse_lengths(text: str) -> list[tuple[int, int]]:
    return [tuple(int(x) for x in item.split(":")) for item in text.split(",")]


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--lengths", type=parse_lengths, default="128:256,512:32", help="L:batch, comma-separated")
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-size", type=int, default=64)
    parser.add_argument("--clip", type=int, default=64, help="K, the relative-distance clip")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--configs", type=parse_configs, default="64x64x8,64x64x4,128x64x8,64x32x4,32x64x8",
                        help="BLOCK_MxBLOCK_Nxwarps, comma-separated; the first is the reference for outputs")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="L = 70, batch 2, 2 heads of 16, 2 configs, 1 step")
    args = parser.parse_args(argv)
    if args.tiny:
        args.lengths, args.heads, args.head_size, args.clip = [(70, 2)], 2, 16, 8
        args.configs, args.steps, args.warmup = args.configs[:2], 1, 0
    return args


def timed(step, device: str, steps: int, warmup: int) -> float:
    """Median milliseconds of ``step()``."""
    import torch

    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def sdpa_step(leaves, mask, grad, dropout: float) -> None:
    import torch
    import torch.nn.functional as F

    out = F.scaled_dot_product_attention(*leaves, attn_mask=mask, dropout_p=dropout)
    torch.autograd.grad(out, leaves, grad)


def fused_step(leaves, valid, grad, clip: int, scale: float, dropout: float) -> None:
    import torch

    from nezha_cli.modeling.kernels import frpe

    out = frpe.fused_attention(*leaves, valid, max_relative_position=clip, scale=scale, dropout_p=dropout)
    torch.autograd.grad(out, leaves, grad)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"  # read when Triton defines a kernel: before the kernels' import
    import torch

    from nezha_cli.modeling.kernels import frpe

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device is visible: use --device cpu (with --tiny for a quick check)")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if args.device == "cuda" else "CPU (Triton interpreter)"
    print(f"device: {name}; {args.dtype}, {args.heads} heads of {args.head_size}, K = {args.clip}, "
          f"dropout {args.dropout}; forward + backward, median of {args.steps}")
    default = dict(frpe.LAUNCH)
    rows = []
    try:
        for length, batch in args.lengths:
            generator = torch.Generator(device).manual_seed(0)
            shape = (batch, args.heads, length, args.head_size)
            q, k, v, grad = (torch.randn(shape, device=device, dtype=dtype, generator=generator) for _ in range(4))
            valid = torch.ones(batch, length, dtype=torch.bool, device=device)
            valid[batch // 2:, length - length // 4:] = False  # half the batch padded
            mask = torch.zeros(batch, 1, 1, length, device=device, dtype=dtype).masked_fill(~valid[:, None, None],
                                                                                              float("-inf"))
            leaves = [x.requires_grad_() for x in (q, k, v)]
            scale = args.head_size ** -0.5
            reference_ms = timed(functools.partial(sdpa_step, leaves, mask, grad, args.dropout), args.device,
                                 args.steps, args.warmup)
            print(f"L = {length}, batch {batch}: sdpa (no relative terms) {reference_ms:.3f} ms")
            reference_out = None
            for config in args.configs:
                frpe.LAUNCH.clear()
                frpe.LAUNCH.update(config)
                label = f"{config['BLOCK_M']}x{config['BLOCK_N']}x{config['num_warps']}"

                try:
                    with torch.no_grad():  # outputs without dropout, to compare configurations
                        out = frpe.fused_attention(q, k, v, valid, max_relative_position=args.clip, scale=scale)
                    reference_out = out if reference_out is None else reference_out
                    difference = (out.float() - reference_out.float()).abs().max().item()
                    step = functools.partial(fused_step, leaves, valid, grad, args.clip, scale, args.dropout)
                    ms = timed(step, args.device, args.steps, args.warmup)
                except Exception as error:  # a configuration the GPU cannot run (shared memory): say so, go on
                    print(f"  fused {label:12} failed: {type(error).__name__}: {str(error).splitlines()[0][:160]}")
                    continue
                rows.append({"length": length, "batch": batch, "config": label, "ms": ms, "sdpa_ms": reference_ms,
                             "ratio": ms / reference_ms, "max_difference": difference})
                print(f"  fused {label:12} {ms:9.3f} ms  {ms / reference_ms:5.2f}x sdpa  "
                      f"max |out - first config's| {difference:.2e}")
    finally:
        frpe.LAUNCH.clear()
        frpe.LAUNCH.update(default)
    return rows


if __name__ == "__main__":
    main()
    sys.exit(0)
