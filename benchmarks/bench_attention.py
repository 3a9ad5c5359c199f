"""What NEZHA's functional relative positions cost: forward+backward time and peak memory of NezhaForPreTraining.

Three attention implementations in the same model, weights and data (only the attention differs):

* ``bucketed``  this package: relative terms over the 2K+1 distinct distances (no [L, L, d] tensor);
* ``table``     the formulation of the released code and transformers: a_ij gathered into an [L, L, head_size]
                tensor, multiplied in the [L, B*H, .] layout (written here, so the rest of the model is identical);
* ``no-rel``    the relative terms switched off: plain attention, the lower limit.

Each (implementation, length, precision) runs in a fresh subprocess, so its peak RSS is its own; the ratios printed
are bucketed / no-rel (the cost of the relative terms) and table / bucketed.

    python benchmarks/bench_attention.py                 # BERT-base shape, L = 128 (batch 8) and 512 (batch 2)
    python benchmarks/bench_attention.py --layers 2 --steps 2 --precision fp32   # quicker
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

IMPLEMENTATIONS = ("bucketed", "table", "no-rel")


def _table_attention_forward(self, hidden_states, attention_mask, relative_table, positions, output_attentions=False):
    """NezhaSelfAttention.forward as the released code computes it: an [L, L, d] relations tensor per call."""
    import math

    import torch

    query = self._split_heads(self.query(hidden_states))
    key = self._split_heads(self.key(hidden_states))
    value = self._split_heads(self.value(hidden_states))
    b, h, length, d = query.shape
    relations = relative_table.to(query.dtype)[positions.bucket_index]  # [L, L, d]
    scores = torch.matmul(query, key.transpose(-1, -2))
    q_r = query.permute(2, 0, 1, 3).reshape(length, b * h, d)
    scores = scores + torch.matmul(q_r, relations.transpose(1, 2)).view(length, b, h, length).permute(1, 2, 0, 3)
    scores = scores / math.sqrt(d)
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = self.dropout(torch.softmax(scores, dim=-1))
    context = torch.matmul(probs.to(value.dtype), value)
    p_r = probs.permute(2, 0, 1, 3).reshape(length, b * h, length).to(relations.dtype)
    context = context + torch.matmul(p_r, relations).view(length, b, h, d).permute(1, 2, 0, 3)
    return context.transpose(1, 2).flatten(-2), (probs if output_attentions else None)


def run_one(impl: str, length: int, batch: int, layers: int, precision: str, steps: int) -> dict:
    import torch

    from nezha_cli.modeling import NezhaConfig, NezhaForPreTraining
    from nezha_cli.modeling.modeling_nezha import NezhaSelfAttention

    torch.manual_seed(0)
    config = NezhaConfig(num_hidden_layers=layers)
    model = NezhaForPreTraining(config).train()
    if impl == "table":
        NezhaSelfAttention.forward = _table_attention_forward
    for module in model.modules():
        if isinstance(module, NezhaSelfAttention):
            module.use_relative_positions = impl != "no-rel"
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, config.vocab_size, (batch, length), generator=g)
    types = torch.zeros_like(ids)
    types[:, length // 2:] = 1
    mask = torch.ones_like(ids)
    predictions = max(1, round(0.15 * length))
    positions = torch.stack([torch.randperm(length, generator=g)[:predictions] for _ in range(batch)])
    labels = torch.randint(1000, config.vocab_size, positions.shape, generator=g)
    nsp = torch.randint(0, 2, (batch,), generator=g)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(ids, attention_mask=mask, token_type_ids=types, masked_lm_positions=positions, labels=labels,
                        next_sentence_label=nsp)
        out.loss.backward()
        model.zero_grad(set_to_none=True)

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()  # warm-up (allocator, kernels)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"seconds": statistics.median(times), "peak_mib": (peak - rss_before) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=12, help="encoder layers (BERT-base: 12)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration (median reported)")
    parser.add_argument("--lengths", default="128:8,512:2", help="comma-separated LENGTH:BATCH pairs")
    parser.add_argument("--precision", default="fp32,bf16", help="fp32, bf16 (CPU autocast) or both")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the whole sweep, keep each best time")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(run_one(**json.loads(args.child))))
        return

    import torch

    pairs = [tuple(int(x) for x in p.split(":")) for p in args.lengths.split(",")]
    precisions = [p.strip() for p in args.precision.split(",")]
    print(f"NezhaForPreTraining, hidden 768, 12 heads, {args.layers} layers, K = 64, forward + backward, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    best: dict[tuple, dict] = {}
    for _ in range(args.rounds):
        for precision in precisions:
            for length, batch in pairs:
                # Interleave implementations so that drifting machine load hits all of them alike.
                for impl in IMPLEMENTATIONS:
                    spec = dict(impl=impl, length=length, batch=batch, layers=args.layers, precision=precision,
                                steps=args.steps)
                    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], check=True,
                                         capture_output=True, text=True)
                    result = json.loads(out.stdout.strip().splitlines()[-1])
                    key = (precision, length, batch, impl)
                    if key not in best or result["seconds"] < best[key]["seconds"]:
                        best[key] = result

    header = f"{'prec':5} {'L':>5} {'B':>3} {'impl':9} {'s/step':>8} {'peak MiB':>9}"
    print(header)
    print("-" * len(header))
    for (precision, length, batch, impl), r in best.items():
        print(f"{precision:5} {length:>5} {batch:>3} {impl:9} {r['seconds']:8.3f} {r['peak_mib']:9.0f}")
    print()
    for precision in precisions:
        for length, batch in pairs:
            b, t, n = (best[(precision, length, batch, impl)] for impl in IMPLEMENTATIONS)
            table_mib = length * length * 64 * 4 / 2**20
            print(f"{precision} L={length}: relative terms cost {b['seconds'] / n['seconds'] - 1:+.1%} time and "
                  f"{b['peak_mib'] - n['peak_mib']:+.0f} MiB over no-rel; the table formulation takes "
                  f"{t['seconds'] / b['seconds']:.2f}x the time and {t['peak_mib'] - b['peak_mib']:+.0f} MiB "
                  f"(one [L, L, 64] fp32 table is {table_mib:.0f} MiB)")


if __name__ == "__main__":
    main()
