"""GPU pretraining step: nezha against transformers' Nezha and a plain-attention BERT, tokens/s, memory and MFU.

Issue 28, point 5. BERT-base width (12 layers, 768 hidden, 12 heads, 3072 intermediate, 21128-word vocab,
K = 64, dropout 0.1), bf16 autocast, a full pretraining step: forward, backward, clipping of the gradients' global
norm to 1.0 and the LAMB step of ``nezha pretrain`` (``engine.optim.build_optimizer`` with the Trainer's default
arguments), then zero_grad. Shapes: L = 128 with batch 256 and L = 512 with batch 32, 20 and 80 masked positions (the
recipes' ``max_predictions_per_seq``); a batch that does not fit is halved until it does, and the batch used is
printed. Rows, one after the other in the same run, each on the same random batches
(``bench_pretrain.make_batch``):

* ``nezha-fused``  NezhaForPreTraining with ``config.attn_implementation = "fused"``: the FlashAttention-style
                   Triton kernel; ``nezha-eager``: the bucket path. ``nezha-auto`` (the model's own choice: eager
                   until this benchmark shows the kernel faster) and ``nezha-sdpa`` can be asked for with
                   ``--models``. The MLM head scores the masked positions
                   only, and the last layer computes only the rows the heads read.
* ``transformers-nezha``  transformers' NezhaForPreTraining, same config and initial weights
                   (``bench_pretrain.reference_model``), as users run it (no compile).
* ``bert-sdpa``    the upper bound: transformers' BERT with SDPA attention and absolute positions instead of
                   relative ones, its pretraining heads at the masked positions only (as nezha's); all of its
                   layers compute every row.

nezha and BERT run eager and with ``nn.Module.compile`` (what ``nezha pretrain --compile`` does); the compiled rows'
warm-up takes two more steps, and warm-up steps are not timed. Each row reports the median step time, tokens/s,
peak memory (``torch.cuda.max_memory_allocated``, reset before the row builds its model: weights, LAMB state and
activations), achieved TFLOP/s and MFU against the GPU's dense bf16 peak (H100/H200 989, A100 312; ``--peak-tflops``
for others). The FLOPs of a step are those each model performs, counted from the shapes by
``bench_pretrain.training_flops``:

    FLOPs = 3 x forward (backward = 2 x forward), 2 per multiply-add
          = 6 x (matmul parameters) x (rows they process)            [Q, K, V, O, FFN, MLM transform + decoder]
            + 12 x layers x (query rows) x (L + W) x hidden          [QK^T and PV, and the relative terms q.a, P.a]

with W = 2K + 1 relative buckets for nezha, L for transformers' Nezha (its [L, L, d] table) and 0 for BERT; the MLM
head processes the masked positions (all B x L positions for transformers' Nezha); nezha's last layer computes Q, O
and the FFN for [CLS] and the masked rows only. Ratio lines per length: nezha over transformers' Nezha (tokens/s),
and the cost of the relative terms, nezha's time per token over BERT's with the same compile setting, also "at equal
work": per FLOP that nezha would perform without relative terms, which takes out the last-layer saving (6% of
BERT-base's step FLOPs at L = 128 and 512).

Each row runs in a try/except: a failure prints its error and the run goes on. ``--json`` writes the rows after each
one (a run cut short keeps what it measured).

    python benchmarks/bench_gpu.py                           # the issue's shapes and rows on the GPU
    python benchmarks/bench_gpu.py --quick --json gpu.json   # fewer steps, rows as JSON for the results table
    python benchmarks/bench_gpu.py --no-compile              # eager rows only
    python benchmarks/bench_gpu.py --device cpu --tiny       # 2 tiny layers on the CPU: checks that it all runs
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import gc
import json
import statistics
import sys
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# The pretraining benchmark's batches, models, step timing and FLOP counts (this folder is on sys.path when run).
from bench_pretrain import (  # noqa: E402
    describe_device,
    full_labels,
    gpu_peak_tflops,
    make_batch,
    our_training_flops,
    ours_step,
    reference_model,
    reference_step,
    reference_training_flops,
    time_steps,
    training_flops,
)

from nezha_cli.engine import TrainingArguments  # noqa: E402
from nezha_cli.engine.optim import build_optimizer  # noqa: E402
from nezha_cli.engine.trainer import compile_model  # noqa: E402
from nezha_cli.modeling import NezhaConfig, NezhaForPreTraining  # noqa: E402

# nezha rows: the value each sets as config.attn_implementation (None: the model's own choice by device and shape).
NEZHA_ATTENTION = {"nezha-auto": None, "nezha-eager": "eager", "nezha-sdpa": "sdpa", "nezha-fused": "fused"}
MODELS = (*NEZHA_ATTENTION, "transformers-nezha", "bert-sdpa")
DEFAULT_MODELS = ("nezha-fused", "nezha-eager", "transformers-nezha", "bert-sdpa")
COMPILE_WARMUP = 2  # extra untimed steps of a compiled row: the first compiles forward and backward


@dataclasses.dataclass
class Row:
    model: str  # one of MODELS
    compiled: bool
    length: int
    target_batch: int
    batch: int | None = None  # the batch that fitted
    step_ms: float | None = None
    tokens_per_s: float | None = None
    peak_mib: float | None = None  # None on the CPU
    flops_per_step: float | None = None
    tflops: float | None = None
    mfu: float | None = None  # None without a peak (the CPU)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.tokens_per_s is not None

    @property
    def label(self) -> str:
        return self.model + (" +compile" if self.compiled else "")


def masked_positions(length: int) -> int:
    """Masked positions per sequence: the recipes' max_predictions_per_seq, 20 at 128 tokens and 80 at 512."""
    return max(1, length * 5 // 32)


def plain_training_flops(config: NezhaConfig, batch: int, length: int, predictions: int,
                         last_layer_rows: int | None = None) -> float:
    """A BERT without relative terms, MLM head at the masked positions (``last_layer_rows``: as training_flops)."""
    return training_flops(config, batch, length, batch * predictions, 0, last_layer_rows=last_layer_rows)


class PlainBertForPreTraining(torch.nn.Module):
    """transformers' BertForPreTraining with SDPA attention, its heads applied at the masked positions only.

    The same step as nezha's (MLM over the masked positions + NSP) with plain attention: transformers' own forward
    would score the whole vocabulary at every position, 13% of BERT-base's step FLOPs that nezha does not do.
    """

    def __init__(self, config: NezhaConfig, max_length: int):
        from transformers import BertConfig, BertForPreTraining

        super().__init__()
        bert_config = BertConfig(
            vocab_size=config.vocab_size, hidden_size=config.hidden_size,
            num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
            intermediate_size=config.intermediate_size, hidden_act=config.hidden_act,
            hidden_dropout_prob=config.hidden_dropout_prob,
            attention_probs_dropout_prob=config.attention_probs_dropout_prob,
            max_position_embeddings=max(config.max_position_embeddings, max_length),
            type_vocab_size=config.type_vocab_size, initializer_range=config.initializer_range,
            layer_norm_eps=config.layer_norm_eps, attn_implementation="sdpa")
        self.model = BertForPreTraining(bert_config)

    def forward(self, input_ids, attention_mask, token_type_ids, masked_lm_positions, labels, next_sentence_label):
        out = self.model.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        hidden = out.last_hidden_state
        rows = hidden.gather(1, masked_lm_positions.unsqueeze(-1).expand(-1, -1, hidden.size(-1)))
        mlm_logits, nsp_logits = self.model.cls(rows, out.pooler_output)
        mlm_loss = F.cross_entropy(mlm_logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        return mlm_loss + F.cross_entropy(nsp_logits.float(), next_sentence_label)


def bert_step(model: PlainBertForPreTraining, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], batch["masked_lm_positions"],
                 batch["masked_lm_labels"], batch["next_sentence_label"])


def build(name: str, config: NezhaConfig, length: int, device: torch.device):
    """(model on ``device``, step function, FLOPs of a step as a function of the batch) of a row's model."""
    predictions = masked_positions(length)
    torch.manual_seed(0)
    if name in NEZHA_ATTENTION:
        config = copy.deepcopy(config)
        config.attn_implementation = NEZHA_ATTENTION[name]
        return (NezhaForPreTraining(config).to(device), ours_step,
                partial(our_training_flops, config, length=length, predictions=predictions))
    if name == "transformers-nezha":
        return (reference_model(config, NezhaForPreTraining(config), device), reference_step,
                partial(reference_training_flops, config, length=length))
    if name == "bert-sdpa":
        return (PlainBertForPreTraining(config, length).to(device), bert_step,
                partial(plain_training_flops, config, length=length, predictions=predictions))
    raise ValueError(f"unknown model {name!r}: use one of {', '.join(MODELS)}")


def compile_in_place(model: torch.nn.Module, backend: str | None) -> None:
    if backend is None:
        compile_model(model)  # what `nezha pretrain` does with training.compile
    else:
        model.compile(backend=backend)  # e.g. "eager": the compile path in seconds, for the CPU test


def pretraining_optimizer() -> tuple[Callable[[torch.nn.Module], torch.optim.Optimizer], float | None]:
    """``nezha pretrain``'s optimizer builder (LAMB over BERT's weight-decay groups) and gradient clipping, with the
    Trainer's default arguments (the learning rate does not change the time of a step)."""
    args = TrainingArguments(output_dir=Path("unused"), max_steps=1)
    assert args.optimizer == "lamb"
    return partial(build_optimizer, args=args), args.max_grad_norm


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def is_out_of_memory(error: BaseException | None) -> bool:
    # Compiled code may raise the allocator's error wrapped in another one.
    while error is not None:
        if isinstance(error, torch.OutOfMemoryError):
            return True
        error = error.__cause__ or error.__context__
    return False


def measure(row: Row, batch: int, config: NezhaConfig, args, device: torch.device) -> None:
    """Time ``row`` at ``batch`` and fill in its figures (raises on out-of-memory, the caller halves the batch)."""
    free_memory(device)
    if row.compiled:
        torch.compiler.reset()  # no guards or recompile counts carried over from the row before
    model, step_fn, flops = build(row.model, config, row.length, device)
    if row.compiled:
        compile_in_place(model, args.compile_backend)
    predictions = masked_positions(row.length)
    batches = []
    for seed in range(3):
        b = make_batch(batch, row.length, predictions, config.vocab_size, seed=seed)
        b["full_labels"] = full_labels(b)
        batches.append({k: v.to(device) for k, v in b.items()})
    optimizer, max_grad_norm = pretraining_optimizer()
    autocast = torch.bfloat16 if args.precision == "bf16" else None
    warmup = args.warmup + (COMPILE_WARMUP if row.compiled else 0)
    times = time_steps([(model, step_fn)], batches, args.steps, warmup, autocast, device,
                       optimizer=optimizer, max_grad_norm=max_grad_norm)[0]
    step = statistics.median(times)
    row.batch, row.step_ms = batch, step * 1000
    row.tokens_per_s = batch * row.length / step
    row.flops_per_step = flops(batch)
    row.tflops = row.flops_per_step / step / 1e12
    row.mfu = row.tflops / args.peak_tflops if args.peak_tflops else None
    if device.type == "cuda":
        row.peak_mib = torch.cuda.max_memory_allocated(device) / 2**20


def run_row(row: Row, config: NezhaConfig, args, device: torch.device) -> None:
    """Measure ``row`` at its target batch, halving the batch while it runs out of GPU memory."""
    batch = row.target_batch
    while True:
        try:
            measure(row, batch, config, args, device)
            return
        except Exception as error:  # any failure of one row is reported, and the run goes on
            if not is_out_of_memory(error) or batch == 1:
                traceback.print_exc()
                row.error = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                row.batch = batch
                break
        # Outside the except block: the error's traceback, holding the failed attempt's tensors, is gone.
        print(f"  {row.label}: out of memory at batch {batch}, trying {batch // 2}", flush=True)
        batch //= 2
    free_memory(device)


HEADER = (f"{'L':>5} {'batch':>5} {'target':>6}  {'model':<27} {'step ms':>9} {'tokens/s':>11} {'peak MiB':>9} "
          f"{'TFLOP/s':>8} {'MFU':>6}")


def format_row(row: Row) -> str:
    if not row.ok:
        return f"{row.length:>5} {row.batch or '-':>5} {row.target_batch:>6}  {row.label:<27} error: {row.error}"
    peak = f"{row.peak_mib:9.0f}" if row.peak_mib is not None else f"{'n/a':>9}"
    mfu = f"{row.mfu:6.1%}" if row.mfu is not None else f"{'n/a':>6}"
    return (f"{row.length:>5} {row.batch:>5} {row.target_batch:>6}  {row.label:<27} {row.step_ms:9.1f} "
            f"{row.tokens_per_s:11,.0f} {peak} {row.tflops:8.3g} {mfu}")


def ratios(rows: list[Row], config: NezhaConfig) -> list[dict]:
    """Per nezha row: speed-up over transformers' Nezha and the relative terms' cost over BERT (same compile)."""
    out = []
    for n in rows:
        if n.model not in NEZHA_ATTENTION or not n.ok:
            continue
        same_length = [r for r in rows if r.length == n.length and r.ok]
        reference = next((r for r in same_length if r.model == "transformers-nezha"), None)
        bert = next((r for r in same_length if r.model == "bert-sdpa" and r.compiled == n.compiled), None)
        entry = {"length": n.length, "nezha": n.label, "vs_transformers_nezha": None, "bert": None,
                 "relative_cost": None, "relative_cost_equal_work": None}
        if reference is not None:
            entry["vs_transformers_nezha"] = n.tokens_per_s / reference.tokens_per_s
        if bert is not None:
            predictions = masked_positions(n.length)
            entry["bert"] = bert.label
            entry["relative_cost"] = bert.tokens_per_s / n.tokens_per_s - 1
            # Seconds per FLOP of the same work: nezha without its relative terms (W = 0), BERT as it ran.
            nezha_plain = plain_training_flops(config, n.batch, n.length, predictions, last_layer_rows=1 + predictions)
            nezha_time_per_flop = n.step_ms / nezha_plain
            bert_time_per_flop = bert.step_ms / bert.flops_per_step
            entry["relative_cost_equal_work"] = nezha_time_per_flop / bert_time_per_flop - 1
        out.append(entry)
    return out


def format_ratio(entry: dict) -> str:
    speedup = (f"{entry['vs_transformers_nezha']:.2f}x transformers' Nezha"
               if entry["vs_transformers_nezha"] is not None else "transformers' Nezha n/a")
    if entry["relative_cost"] is None:
        cost = "relative terms vs BERT n/a"
    else:
        cost = (f"relative terms {entry['relative_cost']:+.1%} time per token over {entry['bert']} "
                f"({entry['relative_cost_equal_work']:+.1%} at equal work)")
    return f"  L={entry['length']:<4} {entry['nezha']:<20} {speedup}; {cost}"


def write_json(path: Path, header: dict, rows: list[Row], ratio_entries: list[dict]) -> None:
    data = {**header, "rows": [dataclasses.asdict(r) | {"label": r.label} for r in rows], "ratios": ratio_entries}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def parse_lengths(text: str) -> list[tuple[int, int]]:
    try:
        pairs = [tuple(int(x) for x in item.split(":")) for item in text.split(",")]
    except ValueError:
        pairs = []
    if not pairs or any(len(p) != 2 or min(p) < 1 for p in pairs):
        raise argparse.ArgumentTypeError(f"{text!r}: give LENGTH:BATCH[,LENGTH:BATCH...], e.g. 128:256,512:32")
    return pairs


def parse_models(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"unknown model(s) {', '.join(unknown) or text!r}: use {', '.join(MODELS)}")
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="default: cuda")
    parser.add_argument("--lengths", type=parse_lengths, default="128:256,512:32",
                        help="LENGTH:BATCH pairs; a batch that runs out of memory is halved (default: %(default)s)")
    parser.add_argument("--models", type=parse_models, default=",".join(DEFAULT_MODELS),
                        help=f"rows, any of {', '.join(MODELS)} (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per row (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=3,
                        help=f"untimed steps before them, compiled rows {COMPILE_WARMUP} more (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="4 timed steps after 1 warm-up step")
    parser.add_argument("--tiny", action="store_true",
                        help="2 layers x 64 hidden, vocab 500, L 32 and 64 at batch 2, 2 steps, no compiled rows "
                             "unless --compile-backend is given: checks that everything runs (CPU)")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled rows")
    parser.add_argument("--compile-backend", default=None,
                        help="torch.compile backend of the compiled rows (default: nezha pretrain's, inductor)")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"], help="bf16 autocast (default)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="dense peak for MFU (default by GPU name: H100/H200 989, A100 312; CPU: no MFU)")
    parser.add_argument("--json", type=Path, default=None, help="write the rows and ratios to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup = 4, 1
    if args.tiny:
        args.steps, args.warmup = 2, 1
        if args.lengths == parse_lengths(parser.get_default("lengths")):
            args.lengths = [(32, 2), (64, 2)]
        # Inductor takes about 40 s on a small CPU even for the tiny model; a cheap backend runs the path.
        args.no_compile = args.no_compile or args.compile_backend is None
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> list[Row]:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device is visible: use --device cpu (with --tiny for a quick check)")
    if args.tiny:
        config = NezhaConfig(vocab_size=500, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=256)
    else:
        config = NezhaConfig()  # BERT-base width, 12 layers, K = 64, dropout 0.1
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    if args.peak_tflops is None and device.type == "cuda":
        args.peak_tflops = gpu_peak_tflops(name)

    import transformers

    _, max_grad_norm = pretraining_optimizer()
    formula = ("FLOPs/step = 6 x matmul parameters x rows they process + 12 x layers x query rows x (L + W) x hidden "
               "(W: 2K+1 nezha, L transformers' Nezha, 0 BERT; MLM head at the masked positions, all positions for "
               "transformers' Nezha; nezha's last layer on [CLS] + masked rows)")
    header = {
        "device": name, "where": describe_device(device), "transformers": transformers.__version__,
        "date": datetime.date.today().isoformat(), "command": " ".join(["python", *sys.argv]),
        "precision": args.precision, "steps": args.steps, "warmup": args.warmup, "compile_warmup": COMPILE_WARMUP,
        "compile_backend": None if args.no_compile else (args.compile_backend or "inductor"),
        "peak_tflops": args.peak_tflops, "flop_formula": formula,
        "config": {k: getattr(config, k) for k in ("num_hidden_layers", "hidden_size", "num_attention_heads",
                                                   "intermediate_size", "vocab_size", "max_relative_position",
                                                   "hidden_dropout_prob", "attention_probs_dropout_prob")},
    }
    print(f"device: {name} ({header['where']}, transformers {transformers.__version__})")
    print(f"model: {config.num_hidden_layers} layers x {config.hidden_size} hidden, {config.num_attention_heads} "
          f"heads, {config.intermediate_size} intermediate, vocab {config.vocab_size}, K = "
          f"{config.max_relative_position}, dropout {config.hidden_dropout_prob}; "
          f"{'bf16 autocast' if args.precision == 'bf16' else 'fp32'}")
    print(f"step: forward + backward + clip_grad_norm_({max_grad_norm}) + LAMB (nezha pretrain's) + zero_grad; "
          f"median of {args.steps} steps after {args.warmup} untimed (compiled rows: {args.warmup + COMPILE_WARMUP})")
    print(formula)
    print(f"MFU: against {args.peak_tflops:.0f} TFLOP/s dense peak" if args.peak_tflops else
          "MFU: n/a (no peak known for this device; --peak-tflops sets one)")
    if args.no_compile:
        print("compiled rows: skipped" + (" (--tiny: give --compile-backend eager to run them cheaply)"
                                          if args.tiny and not args.compile_backend else ""))
    print()
    print(HEADER, flush=True)

    rows: list[Row] = []
    for length, target_batch in args.lengths:
        for model in args.models:
            # transformers' Nezha runs as its users run it; nezha and BERT also compiled.
            compiled_too = model != "transformers-nezha" and not args.no_compile
            for compiled in (True, False) if compiled_too else (False,):
                row = Row(model=model, compiled=compiled, length=length, target_batch=target_batch)
                run_row(row, config, args, device)
                rows.append(row)
                print(format_row(row), flush=True)
                if args.json:
                    write_json(args.json, header, rows, ratios(rows, config))
    entries = ratios(rows, config)
    print("\nnezha over transformers' Nezha (tokens/s); relative terms: time per token over plain BERT (SDPA)")
    for entry in entries:
        print(format_ratio(entry))
    if not entries:
        print("  n/a: no nezha row ran")
    if args.json:
        write_json(args.json, header, rows, entries)
        print(f"\nrows written to {args.json}")
    return rows


if __name__ == "__main__":
    main()
