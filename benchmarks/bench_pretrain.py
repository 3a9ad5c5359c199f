"""Pretraining step speed: nezha-cli's NEZHA against transformers' Nezha, same AdamW, same data, same run.

The issue's CPU target: BERT-base width (768 hidden, 12 heads, 3072 intermediate, 21128-word vocab) with 4 layers,
L = 128 (batch 8, 20 masked positions) and L = 512 (batch 2, 80 masked positions), in fp32 and under bf16 autocast,
with BERT-base's dropout of 0.1 (``--dropout 0`` leaves dropout out of both).
A training step is forward + backward + AdamW step on the same initial weights and batches. Ours scores the
vocabulary at the masked positions only, and its last layer computes only the rows that the heads read ([CLS] and
the masked positions; keys and values still cover every position); transformers' computes and scores every
position (its MLM loss ignores the rest).
The two models take steps in turn, so drifting load on a shared machine hits both alike; the speed-up printed is
the median of the per-step ratios. Next to it, the FLOP ratio (transformers' training FLOPs over ours, counted
from the shapes): while both are compute-bound at the same efficiency, no speed-up can exceed it.

Also printed: the share of a step of our engine (``nezha_cli.engine.Trainer``: data loading and collation,
accumulate/backward, clipping, optimizer, metrics) spent outside the model's forward and backward. On a CUDA GPU,
``--device cuda`` adds GPU-sized batches and a bf16 section with tokens/s and model FLOPs utilisation (MFU).

    python benchmarks/bench_pretrain.py                 # the issue's shapes (a few minutes on 2 cores)
    python benchmarks/bench_pretrain.py --smoke         # tiny shapes, checks that everything runs
    python benchmarks/bench_pretrain.py --device cuda --steps 20   # on a GPU
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nezha_cli.engine import StepOutput, Trainer, TrainingArguments  # noqa: E402
from nezha_cli.engine.metrics_log import read_metrics  # noqa: E402
from nezha_cli.engine.optim import fused_supported  # noqa: E402
from nezha_cli.modeling import NezhaConfig, NezhaForPreTraining  # noqa: E402
from nezha_cli.pretraining.collator import PretrainingCollator  # noqa: E402
from nezha_cli.pretraining.run import pretraining_step  # noqa: E402


def make_batch(batch: int, length: int, predictions: int, vocab: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, vocab, (batch, length), generator=g)
    positions = torch.stack([torch.randperm(length - 2, generator=g)[:predictions].sort().values + 1
                             for _ in range(batch)])
    labels = torch.gather(input_ids, 1, positions)
    input_ids = input_ids.scatter(1, positions, 4)  # [MASK]
    token_type_ids = (torch.arange(length) >= length // 2).long().expand(batch, -1).contiguous()
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "token_type_ids": token_type_ids,
            "masked_lm_positions": positions, "masked_lm_labels": labels,
            "next_sentence_label": torch.randint(0, 2, (batch,), generator=g)}


def full_labels(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    labels = torch.full_like(batch["input_ids"], -100)
    return labels.scatter(1, batch["masked_lm_positions"], batch["masked_lm_labels"])


def ours_step(model, batch):
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                token_type_ids=batch["token_type_ids"], masked_lm_positions=batch["masked_lm_positions"],
                labels=batch["masked_lm_labels"], next_sentence_label=batch["next_sentence_label"])
    return out.loss


def reference_step(model, batch):
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                token_type_ids=batch["token_type_ids"], labels=batch["full_labels"],
                next_sentence_label=batch["next_sentence_label"])
    return out.loss


def reference_model(config: NezhaConfig, ours: NezhaForPreTraining, device):
    from transformers.models.deprecated.nezha import NezhaConfig as HFConfig
    from transformers.models.deprecated.nezha import NezhaForPreTraining as HFPreTraining

    hf = HFPreTraining(HFConfig(**{k: v for k, v in config.to_dict().items() if k != "model_type"}))
    missing, _ = hf.load_state_dict(ours.state_dict(), strict=False)
    assert not [m for m in missing if "positions_encoding" not in m and "position_ids" not in m], missing
    return hf.to(device)


def engine_adamw(model: torch.nn.Module) -> torch.optim.Optimizer:
    """The AdamW of our engine (fused where torch has the kernel)."""
    return torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused_supported(model))


def time_steps(runs, batches, steps: int, warmup: int, autocast: torch.dtype | None, device,
               optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer] = engine_adamw,
               max_grad_norm: float | None = None) -> list[list[float]]:
    """Seconds per training step of each (model, step_fn) in ``runs``, the models taking steps in turn.

    Taking turns step by step exposes every model to the same drift in machine load; ratios of the same round
    cancel most of it. A step: forward, backward, clipping of the gradients' global norm to ``max_grad_norm``
    (None: none; the Trainer clips before each step), the step of ``optimizer(model)`` and zero_grad.
    """
    optimizers = [optimizer(model) for model, _ in runs]
    times: list[list[float]] = [[] for _ in runs]
    for i in range(warmup + steps):
        batch = batches[i % len(batches)]
        for (model, step_fn), optimizer, out in zip(runs, optimizers, times):
            model.train()
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
                loss = step_fn(model, batch)
            loss.backward()
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                out.append(time.perf_counter() - start)
    return times


def forward_backward_time(model, batches, steps: int, warmup: int, device) -> float:
    model.to(device).train()
    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        ours_step(model, batches[i % len(batches)]).backward()
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def engine_step_time(config: NezhaConfig, batch_size: int, length: int, predictions: int, steps: int,
                     warmup: int) -> float:
    """Seconds per step of the real Trainer (fp32, AdamW), measured over the steps after the warmup window."""
    examples = []
    for i in range((warmup + steps) * batch_size):
        b = make_batch(1, length, predictions, config.vocab_size, seed=1000 + i)
        examples.append({"input_ids": b["input_ids"][0].tolist(), "token_type_ids": b["token_type_ids"][0].tolist(),
                         "masked_lm_positions": b["masked_lm_positions"][0].tolist(),
                         "masked_lm_ids": b["masked_lm_labels"][0].tolist(),
                         "next_sentence_label": int(b["next_sentence_label"][0])})
    torch.manual_seed(0)
    model = NezhaForPreTraining(config)
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=Path(tmp) / "run", global_batch_size=batch_size, max_steps=warmup + steps,
                                 optimizer="adamw", learning_rate=1e-4, warmup_steps=0, logging_steps=warmup,
                                 save_steps=0, mixed_precision="no", progress=False, tensorboard=False)

        def step(m, batch) -> StepOutput:
            return pretraining_step(m, batch)

        # The collator `nezha pretrain` uses on static masks (make_batch's ids: [PAD] 0, [MASK] 4).
        special = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4, "vocab_size": config.vocab_size}
        Trainer(model, args, examples, PretrainingCollator(special), step).train()
        records = read_metrics(Path(tmp) / "run" / "metrics.jsonl")
    tokens_per_s = statistics.median(r["tokens_per_s"] for r in records[1:])
    return batch_size * length / tokens_per_s


def training_flops(config: NezhaConfig, batch: int, length: int, mlm_positions: int, relative_width: int,
                   last_layer_rows: int | None = None) -> float:
    """Training FLOPs of a step (3x forward, 2 per multiply-add) of a NEZHA pretraining model.

    ``relative_width``: query-key pairs per query of each relative-position term (ours: the 2K+1 buckets;
    transformers': all L keys, through its [L, L, d] table). ``mlm_positions``: rows scored against the
    vocabulary (ours: the masked ones; transformers': all batch x L). ``last_layer_rows``: rows per sequence whose
    query, attention output and feed-forward the last layer computes (ours: [CLS] and the masked positions;
    transformers': all L); its keys and values always cover all L.
    """
    h, f, layers, v = config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.vocab_size
    tokens = batch * length
    rows = batch * (length if last_layer_rows is None else last_layer_rows)
    per_query = (2 * h * h + 2 * h * f) * 2 + 2 * (length + relative_width) * h * 2  # Q, O, FFN; QK^T, PV, q.a, P.a
    per_key = 2 * h * h * 2  # K, V
    encoder = (layers - 1) * (per_query + per_key) * tokens + per_query * rows + per_key * tokens
    heads = (h * h + h * v) * 2 * mlm_positions + h * h * 2 * batch  # MLM transform + decoder; pooler
    return 3 * (encoder + heads)


def our_training_flops(config: NezhaConfig, batch: int, length: int, predictions: int) -> float:
    return training_flops(config, batch, length, batch * predictions, 2 * config.max_relative_position + 1,
                          last_layer_rows=1 + predictions)


def reference_training_flops(config: NezhaConfig, batch: int, length: int) -> float:
    """transformers' Nezha: relative terms over all L keys, every layer and the MLM head on every position."""
    return training_flops(config, batch, length, batch * length, length)


def flop_ratio(config: NezhaConfig, batch: int, length: int, predictions: int) -> float:
    """transformers' training FLOPs over ours: the most a speed-up can be while both are compute-bound."""
    return reference_training_flops(config, batch, length) / our_training_flops(config, batch, length, predictions)


def describe_device(device: torch.device) -> str:
    """The device and the software that ran a benchmark, for its header."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return (f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
            f"{torch.backends.cpu.get_cpu_capability()}")


def gpu_peak_tflops(name: str) -> float | None:
    """Dense bf16 peak of a GPU by its name (NVIDIA's data sheets), for MFU; None for a GPU not listed here."""
    if "H100" in name or "H200" in name:
        return 989.0
    if "A100" in name:
        return 312.0
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--vocab", type=int, default=21128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes and 2 steps: checks that it all runs")
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16 autocast rows")
    parser.add_argument("--dropout", type=float, default=0.1,
                        help="hidden and attention dropout of both models (default 0.1: BERT-base's, NezhaConfig's "
                             "and the recipes'; 0 compares the rest of the step alone)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="cpu: the issue's comparison; cuda: the same rows plus GPU-sized batches, tokens/s, MFU")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="GPU bf16 dense peak for MFU (default: H100/H200 989, A100 312)")
    args = parser.parse_args()
    from nezha_cli.cli.malloc import tune_malloc

    tune_malloc()  # as nezha's commands do; here for transformers' model too, which steps in the same process
    if args.device == "cpu":
        # The engine rows use the Trainer, which takes a visible GPU: hide it (before CUDA initialises) so that
        # every row of a CPU run runs on the CPU.
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    if args.smoke:
        args.layers, args.hidden, args.heads, args.vocab, args.steps, args.warmup = 1, 64, 4, 500, 2, 1
    shapes = [(128, 8, 20), (512, 2, 80)] if not args.smoke else [(32, 2, 5), (64, 1, 10)]
    device = torch.device(args.device)
    if device.type == "cuda":
        # Batches that fill a GPU, after the CPU shapes.
        shapes += [(128, 64, 20), (512, 16, 80)] if not args.smoke else []
    where = describe_device(device)
    config = NezhaConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                         num_attention_heads=args.heads, intermediate_size=4 * args.hidden,
                         hidden_dropout_prob=args.dropout, attention_probs_dropout_prob=args.dropout)
    print(f"{where}; {args.layers} layers x {args.hidden} hidden, vocab {args.vocab}, dropout {args.dropout}")
    print(f"{'L':>5} {'batch':>5} {'precision':>9} {'ours steps/s':>13} {'transformers':>13} {'speed-up':>9} "
          f"{'FLOP ratio':>10}")
    precisions = [None] if args.no_bf16 else [None, torch.bfloat16]
    for length, batch_size, predictions in shapes:
        batches = [make_batch(batch_size, length, predictions, args.vocab, seed=s) for s in range(3)]
        for b in batches:
            b["full_labels"] = full_labels(b)
        batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
        for dtype in precisions:
            torch.manual_seed(0)
            ours = NezhaForPreTraining(config).to(device)
            reference = reference_model(config, ours, device)
            ours_times, ref_times = time_steps([(ours, ours_step), (reference, reference_step)], batches,
                                               args.steps, args.warmup, dtype, device)
            del ours, reference
            speedup = statistics.median(r / o for r, o in zip(ref_times, ours_times))
            name = "bf16" if dtype is not None else "fp32"
            print(f"{length:>5} {batch_size:>5} {name:>9} {1 / statistics.median(ours_times):>13.3f} "
                  f"{1 / statistics.median(ref_times):>13.3f} {speedup:>8.2f}x "
                  f"{flop_ratio(config, batch_size, length, predictions):>9.2f}x", flush=True)
    print("\nOur engine (fp32, AdamW): share of step time outside the model's forward+backward")
    for length, batch_size, predictions in shapes:
        torch.manual_seed(0)
        batches = [{k: v.to(device) for k, v in make_batch(batch_size, length, predictions, args.vocab,
                                                           seed=s).items()} for s in range(3)]
        fb = forward_backward_time(NezhaForPreTraining(config), batches, args.steps, args.warmup, device)
        engine = engine_step_time(config, batch_size, length, predictions, args.steps, args.warmup)
        print(f"  L={length:<4} batch {batch_size}: engine step {engine * 1000:8.1f} ms, forward+backward "
              f"{fb * 1000:8.1f} ms, outside the model {max(0.0, 1 - fb / engine):6.1%}", flush=True)

    if device.type == "cuda":
        name = torch.cuda.get_device_name()
        peak = args.peak_tflops or gpu_peak_tflops(name) or 312.0
        print(f"\nGPU {name}: bf16 autocast, peak {peak:.0f} TFLOP/s assumed for MFU")
        for length, batch_size, predictions in ([(128, 64, 20), (512, 16, 80)] if not args.smoke else shapes):
            batches = [{k: v.to(device) for k, v in make_batch(batch_size, length, predictions, args.vocab,
                                                               seed=s).items()} for s in range(3)]
            torch.manual_seed(0)
            model = NezhaForPreTraining(config).to(device)
            t = statistics.median(time_steps([(model, ours_step)], batches, args.steps, args.warmup,
                                             torch.bfloat16, device)[0])
            flops = our_training_flops(config, batch_size, length, predictions)
            print(f"  L={length:<4} batch {batch_size:<3}: {batch_size * length / t:12,.0f} tokens/s, "
                  f"MFU {flops / t / (peak * 1e12):6.1%}", flush=True)


if __name__ == "__main__":
    main()
