"""Gradient checkpointing (``--gradient-checkpointing``): activation memory and step time of a pretraining step.

The same NezhaForPreTraining (same weights, dropout on) takes forward+backward steps with and without
``gradient_checkpointing_enable()``, in turn (ABBA...), on the same batches; the reference is the model without.

* **Held for backward**: the bytes of the tensors that the forward keeps for the backward pass (parameters and
  buffers left out, each storage counted once), collected with ``torch.autograd.graph.saved_tensors_hooks``: the
  activation memory between forward and backward, the same on every device. With checkpointing an encoder layer
  keeps only its input; in the backward pass it runs again and holds its own activations until its gradients are
  computed, about one layer's share of the reference (printed below the table: those hooks cannot see the
  recomputation, which the checkpoint's own hooks save).
* **Peak allocated** (``--device cuda``): ``torch.cuda.max_memory_allocated`` over the step, less what was
  allocated before it (weights): activations, recomputation, gradients and temporaries, as the allocator saw them.
* **Step time**: the median of forward+backward over ``--steps`` rounds, and the median per-round ratio.

Before timing, both models take a step from the same RNG state: the loss and every gradient must agree within
``--tolerance`` (fp32; the recomputed layers replay the forward's RNG state, so dropout draws the same masks). The
script exits with status 1 when they do not.

    python benchmarks/bench_gradient_checkpointing.py                  # 4 x 256 hidden, L = 512, batch 8, CPU
    python benchmarks/bench_gradient_checkpointing.py --hidden 768 --layers 12 --device cuda --batch 32
    python benchmarks/bench_gradient_checkpointing.py --smoke          # tiny shapes: checks that it runs
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# The same random pretraining batches as the pretraining benchmark (this folder is on sys.path when run).
from bench_pretrain import make_batch  # noqa: E402

from nezha_cli.modeling import NezhaConfig, NezhaForPreTraining  # noqa: E402
from nezha_cli.pretraining.run import pretraining_step  # noqa: E402

MIB = 2**20


def step(model: torch.nn.Module, batch: dict, device: torch.device) -> tuple[torch.Tensor, float]:
    """Forward and backward of ``nezha pretrain``'s step; the loss and the seconds it took."""
    model.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    loss = pretraining_step(model, batch).loss
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return loss.detach(), time.perf_counter() - start


def held_for_backward(model: torch.nn.Module, batch: dict) -> int:
    """Bytes the forward saves for the backward pass: each storage once, parameters and buffers left out."""
    fixed = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in fixed:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    model.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = pretraining_step(model, batch).loss
    total = sum(saved.values())
    loss.backward()
    return total


def peak_allocated(model: torch.nn.Module, batch: dict, device: torch.device) -> int:
    """CUDA: the most memory allocated during a step beyond what was allocated before it."""
    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step(model, batch, device)
    return torch.cuda.max_memory_allocated() - before


def max_differences(reference: torch.nn.Module, other: torch.nn.Module, batch: dict,
                    device: torch.device) -> tuple[float, float]:
    """|loss difference| and the largest |gradient difference| of one step from the same RNG state."""
    torch.manual_seed(1234)
    loss_a, _ = step(reference, batch, device)
    torch.manual_seed(1234)
    loss_b, _ = step(other, batch, device)
    grads = 0.0
    for (name, a), (_, b) in zip(reference.named_parameters(), other.named_parameters()):
        if (a.grad is None) != (b.grad is None):
            raise AssertionError(f"{name}: a gradient in one model only")
        if a.grad is not None:
            grads = max(grads, float((a.grad - b.grad).abs().max()))
    return float((loss_a - loss_b).abs()), grads


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256, help="hidden size (heads of 64, intermediate 4x)")
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=21128)
    parser.add_argument("--dropout", type=float, default=0.1, help="hidden and attention dropout (BERT-base's)")
    parser.add_argument("--steps", type=int, default=4, help="timed rounds (each model one step per round)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--tolerance", type=float, default=1e-5, help="largest |difference| of loss and gradients")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes and 1 step: checks that it all runs")
    args = parser.parse_args()
    if args.smoke:
        args.layers, args.hidden, args.length, args.batch, args.vocab, args.steps = 2, 64, 64, 2, 500, 1
    from nezha_cli.cli.malloc import tune_malloc

    tune_malloc()  # as nezha's commands do
    device = torch.device(args.device)
    heads = max(1, args.hidden // 64)
    predictions = max(1, args.length * 20 // 128)  # the recipes' max_predictions_per_seq: 20 at L = 128, 80 at 512
    config = NezhaConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                         num_attention_heads=heads, intermediate_size=4 * args.hidden,
                         hidden_dropout_prob=args.dropout, attention_probs_dropout_prob=args.dropout)
    torch.manual_seed(0)
    reference = NezhaForPreTraining(config).to(device).train()
    checkpointed = copy.deepcopy(reference)
    checkpointed.gradient_checkpointing_enable()
    batches = [{k: v.to(device) for k, v in make_batch(args.batch, args.length, predictions, args.vocab,
                                                        seed=s).items()} for s in range(2)]
    if device.type == "cuda":
        where = f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    else:
        where = (f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
                 f"{torch.backends.cpu.get_cpu_capability()}")
    print(f"{where}; {args.layers} layers x {args.hidden} hidden ({heads} heads), L = {args.length}, batch "
          f"{args.batch}, {predictions} masked positions, vocab {args.vocab}, dropout {args.dropout}, fp32")

    loss_diff, grad_diff = max_differences(reference, checkpointed, batches[0], device)
    agree = loss_diff <= args.tolerance and grad_diff <= args.tolerance
    held = [held_for_backward(m, batches[0]) for m in (reference, checkpointed)]
    peaks = [peak_allocated(m, batches[0], device) for m in (reference, checkpointed)] if device.type == "cuda" \
        else None

    times: list[list[float]] = [[], []]
    for i in range(args.warmup + args.steps):
        batch = batches[i % len(batches)]
        order = (0, 1) if i % 2 == 0 else (1, 0)  # ABBA: neither model always runs first in a round
        for n in order:
            _, seconds = step((reference, checkpointed)[n], batch, device)
            if i >= args.warmup:
                times[n].append(seconds)
    slowdown = statistics.median(c / r for r, c in zip(*times))

    peak_head = f" {'peak allocated':>15}" if peaks else ""
    print(f"\n{'':<30} {'step (fwd+bwd)':>14} {'held for backward':>18}{peak_head}")
    for n, name in enumerate(("reference: no checkpointing", "gradient checkpointing")):
        peak = f" {peaks[n] / MIB:>11.1f} MiB" if peaks else ""
        print(f"{name:<30} {statistics.median(times[n]) * 1000:>11.1f} ms {held[n] / MIB:>14.1f} MiB{peak}")
    peak_ratio = f" {peaks[1] / peaks[0]:>14.2f}x" if peaks else ""
    print(f"{'ratio (checkpointing / ref.)':<30} {slowdown:>13.2f}x {held[1] / held[0]:>17.2f}x{peak_ratio}")
    per_layer = (held[0] - held[1]) / args.layers
    print(f"\nIn the backward pass a checkpointed layer also holds its recomputed activations, about "
          f"{per_layer / MIB:.1f} MiB (the reference's difference per layer): {(held[1] + per_layer) / MIB:.1f} MiB "
          f"at most, {(held[1] + per_layer) / held[0]:.2f}x the reference.")
    verdict = "agree" if agree else "DIFFER"
    print(f"Loss and gradients {verdict} (fp32, dropout {args.dropout}): max |loss difference| {loss_diff:.2e}, max "
          f"|gradient difference| {grad_diff:.2e} (tolerance {args.tolerance:.0e})")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
