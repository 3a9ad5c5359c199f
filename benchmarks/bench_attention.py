"""What NEZHA's functional relative positions cost: forward+backward time and peak memory of NezhaForPreTraining.

Three attention implementations in the same model, weights and data (only the attention differs):

* ``bucketed``  this package: relative terms over the 2K+1 distinct distances (no [L, L, d] tensor);
* ``table``     the formulation of the released code and transformers: a_ij gathered into an [L, L, head_size]
                tensor, multiplied in the [L, B*H, .] layout (written here, so the rest of the model is identical);
* ``no-rel``    the relative terms switched off: plain attention, the lower limit;
* ``sdpa``, ``fused`` (with ``--impls``): the model's other attention implementations (``attn_implementation``):
                one SDPA call of head size 2d (lengths up to K + 1 = 65), the Triton kernel (CUDA).

Timing: the three models take training steps in turn, in alternating order (ABC CBA ABC ...), so drifting load on a
shared machine hits them alike and no model always runs right after the same other one; the cost printed is the
median over rounds of bucketed / no-rel (and table / bucketed). Peak memory: each (implementation, length,
precision) runs again in a fresh subprocess, so its peak RSS is its own.

    python benchmarks/bench_attention.py                 # BERT-base shape, L = 128 (batch 8) and 512 (batch 2)
    python benchmarks/bench_attention.py --layers 2 --steps 2 --precision fp32   # quicker
    python benchmarks/bench_attention.py --device cuda --steps 20 --lengths 128:64,512:16   # on a GPU
    NEZHA_TRITON=0 python benchmarks/bench_attention.py --device cuda ...   # the GPU without the Triton kernels
    NEZHA_CPU_KERNELS=0 python benchmarks/bench_attention.py ...            # the CPU without the C kernels
    python benchmarks/bench_attention.py --impls bucketed,no-rel,sdpa --lengths 64:32   # the one-call form
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

IMPLEMENTATIONS = ("bucketed", "table", "no-rel", "sdpa", "fused")
DEFAULT_IMPLEMENTATIONS = "bucketed,table,no-rel"


def _table_attention_forward(self, hidden_states, attention_mask, relative_table, positions, output_attentions=False,
                             query_states=None):
    """NezhaSelfAttention.forward as the released code computes it: an [L, L, d] relations tensor per call."""
    import math

    import torch

    assert query_states is None, "the benchmark runs every layer on all rows"

    query = self._split_heads(self.query(hidden_states))
    key = self._split_heads(self.key(hidden_states))
    value = self._split_heads(self.value(hidden_states))
    b, h, length, d = query.shape
    relations = positions.reachable(relative_table).to(query.dtype)[positions.bucket_index]  # [L, L, d]
    scores = torch.matmul(query, key.transpose(-1, -2))
    q_r = query.permute(2, 0, 1, 3).reshape(length, b * h, d)
    scores = scores + torch.matmul(q_r, relations.transpose(1, 2)).view(length, b, h, length).permute(1, 2, 0, 3)
    scores = scores / math.sqrt(d)
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = self.dropout(torch.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)))
    context = torch.matmul(probs.to(value.dtype), value)
    p_r = probs.permute(2, 0, 1, 3).reshape(length, b * h, length).to(relations.dtype)
    context = context + torch.matmul(p_r, relations).view(length, b, h, d).permute(1, 2, 0, 3)
    return context.transpose(1, 2).flatten(-2), (probs if output_attentions else None)


def make_step(impl: str, length: int, batch: int, layers: int, precision: str, device: str = "cpu"):
    """A closure running one forward+backward of NezhaForPreTraining with attention ``impl`` (same weights, data)."""
    import types

    import torch

    from nezha_cli.modeling import NezhaConfig, NezhaForPreTraining
    from nezha_cli.modeling.modeling_nezha import NezhaSelfAttention

    torch.manual_seed(0)
    config = NezhaConfig(num_hidden_layers=layers)
    model = NezhaForPreTraining(config).train().to(device)
    for module in model.modules():
        if isinstance(module, NezhaSelfAttention):
            module.use_relative_positions = impl != "no-rel"
            if impl in ("sdpa", "fused"):
                module.attn_implementation = impl
            if impl == "table":
                module.forward = types.MethodType(_table_attention_forward, module)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, config.vocab_size, (batch, length), generator=g)
    types_ = torch.zeros_like(ids)
    types_[:, length // 2:] = 1
    mask = torch.ones_like(ids)
    predictions = max(1, round(0.15 * length))
    positions = torch.stack([torch.randperm(length, generator=g)[:predictions] for _ in range(batch)])
    labels = torch.randint(1000, config.vocab_size, positions.shape, generator=g)
    nsp = torch.randint(0, 2, (batch,), generator=g)
    ids, types_, mask, positions, labels, nsp = (t.to(device) for t in (ids, types_, mask, positions, labels, nsp))

    def step() -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16"):
            # output_hidden_states keeps every layer on all rows (the last one would otherwise run on [CLS] + the
            # masked rows alone): the cost of the relative terms over the whole encoder, as the issue states it.
            # The hidden states are kept for backward anyway, so returning them costs no memory.
            out = model(ids, attention_mask=mask, token_type_ids=types_, masked_lm_positions=positions,
                        labels=labels, next_sentence_label=nsp, output_hidden_states=True)
        out.loss.backward()
        model.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return step


def peak_memory(impl: str, length: int, batch: int, layers: int, precision: str, device: str = "cpu") -> float:
    """MiB of peak memory one training step adds (run in a fresh process: peak RSS on CPU is per process)."""
    import torch

    step = make_step(impl, length, batch, layers, precision, device)
    if device == "cuda":
        allocated = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        step()
        return (torch.cuda.max_memory_allocated() - allocated) / 2**20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()
    step()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024  # KiB on Linux


def interleaved_times(length: int, batch: int, layers: int, precision: str, device: str, steps: int,
                      impls: tuple[str, ...] = IMPLEMENTATIONS[:3]) -> dict:
    """Seconds per step of each implementation, the models stepping in turn (ABC CBA ABC ...).

    Load on a shared machine drifts over minutes; taking turns step by step exposes all three to the same drift,
    and the per-round ratios to no-rel cancel most of it. The order alternates because a step's time depends on
    which model ran just before it (cache and allocator state): on a 2-core EPYC, bucketed / no-rel at L = 128 was
    1.066 (mean of 3 runs) with bucketed always after no-rel, 1.038 always after the table model.
    """
    runs = {impl: make_step(impl, length, batch, layers, precision, device) for impl in impls}
    for run in runs.values():
        run()  # warm-up (allocator, kernels)
    times: dict[str, list[float]] = {impl: [] for impl in impls}
    for round_ in range(steps):
        for impl in impls if round_ % 2 == 0 else reversed(impls):
            times[impl].append(runs[impl]())
    results = {}
    for impl in impls:
        ratios = [t / n for t, n in zip(times[impl], times["no-rel"])]
        # The quartiles show how far single rounds scatter (several points on a shared 2-core machine).
        quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        results[impl] = {"seconds": statistics.median(times[impl]), "ratio": statistics.median(ratios),
                         "ratio_q1": quartiles[0], "ratio_q3": quartiles[2]}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=12, help="encoder layers (BERT-base: 12)")
    parser.add_argument("--steps", type=int, default=8, help="timed rounds per configuration (medians reported)")
    parser.add_argument("--lengths", default="128:8,512:2", help="comma-separated LENGTH:BATCH pairs")
    parser.add_argument("--precision", default="fp32,bf16",
                        help="comma-separated fp32 and/or bf16 (autocast); 'both' = fp32,bf16")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="where to run; on cuda peak memory is the GPU's (torch.cuda.max_memory_allocated)")
    parser.add_argument("--impls", default=DEFAULT_IMPLEMENTATIONS,
                        help=f"comma-separated, from {', '.join(IMPLEMENTATIONS)}; no-rel is always run (the ratios' "
                             "base) (default: %(default)s)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    impls = tuple(dict.fromkeys(["no-rel", *(i.strip() for i in args.impls.split(","))]))
    if not set(impls) <= set(IMPLEMENTATIONS):
        parser.error(f"--impls: expected some of {', '.join(IMPLEMENTATIONS)}, got {args.impls!r}")
    from nezha_cli.cli.malloc import tune_malloc

    # As nezha's commands and training engine do: freed memory kept for reuse (see nezha_cli.cli.malloc).
    malloc_tuned = tune_malloc()

    if args.child:
        print(json.dumps(peak_memory(**json.loads(args.child))))
        return

    import torch

    pairs = [tuple(int(x) for x in p.split(":")) for p in args.lengths.split(",")]
    precisions = [p.strip() for p in args.precision.replace("both", "fp32,bf16").split(",")]
    if not set(precisions) <= {"fp32", "bf16"}:
        parser.error(f"--precision: expected fp32, bf16 or both, got {args.precision!r}")
    from nezha_cli.modeling.kernels import dispatch as relative_kernels

    kernels = relative_kernels.available(torch.zeros(1, device=args.device))
    if args.device == "cuda":
        state = "on" if kernels else "off (NEZHA_TRITON=0 or no Triton)"
        where = f"{torch.cuda.get_device_name()}, Triton kernels {state}"
    else:
        state = "on" if kernels else "off (NEZHA_CPU_KERNELS=0, no C compiler or not Linux)"
        where = f"{torch.get_num_threads()} CPU threads, C kernels {state}"
    print(f"NezhaForPreTraining, hidden 768, 12 heads, {args.layers} layers, K = 64, forward + backward, "
          f"torch {torch.__version__}, {where}; {args.steps} interleaved steps each; glibc malloc tuning "
          f"{'on' if malloc_tuned else 'off'}")
    header = f"{'prec':5} {'L':>5} {'B':>3} {'impl':9} {'s/step':>8} {'vs no-rel':>9} {'peak MiB':>9}"
    # Memory first, while this process is small: Linux carries a parent's peak RSS into its children's ru_maxrss.
    memory = {}
    for precision in precisions:
        for length, batch in pairs:
            for impl in impls:
                spec = dict(impl=impl, length=length, batch=batch, layers=args.layers, precision=precision,
                            device=args.device)
                out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], check=True,
                                     capture_output=True, text=True)
                memory[(precision, length, batch, impl)] = json.loads(out.stdout.strip().splitlines()[-1])
    results = {}
    for precision in precisions:
        for length, batch in pairs:
            timing = interleaved_times(length, batch, args.layers, precision, args.device, args.steps, impls)
            for impl in impls:
                timing[impl]["peak_mib"] = memory[(precision, length, batch, impl)]
            results[(precision, length, batch)] = timing
    print(header)
    print("-" * len(header))
    for (precision, length, batch), timing in results.items():
        for impl, r in timing.items():
            print(f"{precision:5} {length:>5} {batch:>3} {impl:9} {r['seconds']:8.3f} {r['ratio']:9.3f} "
                  f"{r['peak_mib']:9.0f}")
    print()
    for (precision, length, _), timing in results.items():
        n = timing["no-rel"]
        for impl in ("sdpa", "fused"):
            if impl in timing and "bucketed" in timing:
                r, b = timing[impl], timing["bucketed"]
                print(f"{precision} L={length}: {impl} takes {r['ratio'] / b['ratio']:.2f}x the bucketed time and "
                      f"{r['peak_mib'] - b['peak_mib']:+.0f} MiB (falls back to bucketed where it does not apply)")
        if not {"bucketed", "table"} <= set(timing):
            continue
        b, t = timing["bucketed"], timing["table"]
        table_mib = length * length * 64 * 4 / 2**20
        # The absolute extra time too: a faster rest of the model (e.g. its dropout) raises the share alone.
        print(f"{precision} L={length}: relative terms cost {b['ratio'] - 1:+.1%} time (median of per-round ratios, "
              f"quartiles {b['ratio_q1'] - 1:+.1%} / {b['ratio_q3'] - 1:+.1%}; "
              f"{(b['seconds'] - n['seconds']) * 1e3:+.0f} ms per step) "
              f"and {b['peak_mib'] - n['peak_mib']:+.0f} MiB over no-rel; the table formulation takes "
              f"{t['ratio'] / b['ratio']:.2f}x the time and {t['peak_mib'] - b['peak_mib']:+.0f} MiB "
              f"(one [L, L, 64] fp32 table is {table_mib:.0f} MiB)")


if __name__ == "__main__":
    main()
