"""What the parallel CPU dropout masks (nezha_cli.modeling.kernels.dropout) save in a training step.

The same NezhaForPreTraining (BERT-base width, dropout 0.1 as in the paper's recipes, all 12 heads) takes
forward+backward steps in turn with this package's ``Dropout`` and with ``torch.nn.Dropout`` (ABAB...); the
median ratio is printed, and the dropout layers alone (mask, forward and backward) on an attention-sized tensor.

    python benchmarks/bench_dropout.py                      # 4 layers, L = 128 (batch 8) and 512 (batch 2)
    python benchmarks/bench_dropout.py --precision bf16     # under bf16 autocast
"""

from __future__ import annotations

import argparse
import statistics
import time


def swap_dropout(model, cls) -> None:
    """Replace every dropout module of ``model`` by ``cls`` with the same p."""
    import torch

    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, torch.nn.Dropout):
                setattr(module, name, cls(child.p))


def time_length(length: int, batch: int, layers: int, precision: str, steps: int) -> str:
    """One line: step time with each dropout (interleaved rounds, medians) and the attention-probs dropout alone."""
    import torch

    from nezha_cli.modeling import NezhaConfig, NezhaForPreTraining
    from nezha_cli.modeling.kernels.dropout import Dropout

    torch.manual_seed(0)
    model = NezhaForPreTraining(NezhaConfig(num_hidden_layers=layers)).train()
    ids = torch.randint(1000, 21128, (batch, length))
    nsp = torch.zeros(batch, dtype=torch.long)
    # MLM logits at 15% of the positions, as in pretraining.
    positions = torch.stack([torch.randperm(length)[: max(1, length * 15 // 100)] for _ in range(batch)])
    labels = ids.gather(1, positions)

    def step(cls) -> float:
        swap_dropout(model, cls)
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(ids, masked_lm_positions=positions, labels=labels, next_sentence_label=nsp).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    step(Dropout), step(torch.nn.Dropout)
    ratios, ours, plain = [], [], []
    for _ in range(steps):
        ours.append(step(Dropout))
        plain.append(step(torch.nn.Dropout))
        ratios.append(plain[-1] / ours[-1])

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    x = torch.randn(batch, 12, length, length, dtype=dtype, requires_grad=True)
    grad = torch.randn_like(x)

    def layer_time(layer) -> float:
        start = time.perf_counter()
        layer(x).backward(grad)
        return time.perf_counter() - start

    layer_time(Dropout(0.1)), layer_time(torch.nn.Dropout(0.1))
    ours_layer = statistics.median(layer_time(Dropout(0.1)) for _ in range(5))
    plain_layer = statistics.median(layer_time(torch.nn.Dropout(0.1)) for _ in range(5))
    return (f"L={length:4d} batch {batch}: step {statistics.median(ours) * 1e3:7.1f} ms vs "
            f"{statistics.median(plain) * 1e3:7.1f} ms with torch.nn.Dropout: {statistics.median(ratios):.2f}x; "
            f"attention-probs dropout alone fwd+bwd {ours_layer * 1e3:.1f} vs {plain_layer * 1e3:.1f} ms "
            f"({plain_layer / ours_layer:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6, help="timed rounds (medians reported)")
    parser.add_argument("--lengths", default="128:8,512:2", help="comma-separated LENGTH:BATCH pairs")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    args = parser.parse_args()

    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}; "
          f"{args.layers} layers x 768 hidden, dropout 0.1, {args.precision}")
    for pair in args.lengths.split(","):
        length, batch = (int(v) for v in pair.split(":"))
        print(time_length(length, batch, args.layers, args.precision, args.steps), flush=True)


if __name__ == "__main__":
    main()
