"""Data preparation speed and memory: `nezha tokenize` + `nezha mask`, end to end, against two references.

* ``jieba``     the limit: ``jieba.lcut`` alone on every line, over all cores (a process pool, each worker loading
                jieba's dictionary, as any parallel jieba run must);
* ``baseline``  a straightforward single-process pure-Python pipeline in the style of BERT's
                create_pretraining_data: transformers' (pure-Python) BertTokenizer on each jieba word, all
                documents in memory, instances, whole word masks, written out at the end;
* ``nezha``     ``nezha tokenize`` then ``nezha mask`` (static masks), as a user runs them.

Each runs as its own command, timed from start to exit (interpreter start-up and imports included), on the same
text; throughput is input MB per second. Peak memory is sampled from /proc over the whole process tree (the
largest RSS of a single process, and the peak total PSS, shared pages counted once) in runs of their own, as
sampling slows what it watches: the nezha pipeline once more on the corpus, then on the corpus repeated 10x, to
show that its memory does not grow with the corpus.

    python benchmarks/bench_pipeline.py                             # the embedded corpus (13 MB), all cores
    python benchmarks/bench_pipeline.py --size-mb 1 --baseline-mb 0.2   # a quick smoke run

Timings on a machine shared with other work are noisy: compare the ratios of one run, and rerun on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

JIEBA_ONLY = r"""
import logging, multiprocessing, sys

def init():
    import jieba
    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()

def cut(lines):
    import jieba
    return sum(len(jieba.lcut(line)) for line in lines)

def chunks(path, size=1000):
    batch = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                batch.append(line)
                if len(batch) == size:
                    yield batch
                    batch = []
    if batch:
        yield batch

if __name__ == "__main__":
    path, num_proc = sys.argv[1], int(sys.argv[2])
    with multiprocessing.get_context("fork").Pool(num_proc, init) as pool:
        print(sum(pool.imap(cut, chunks(path))))
"""


# ------------------------------------------------------------------------------------------------ the baseline
def baseline(corpus: Path, vocab: Path, output: Path, max_seq_length: int = 128, seed: int = 12345) -> None:
    """BERT's create_pretraining_data, plainly, with whole word masking over jieba words (one process)."""
    import logging
    import pickle
    import random

    import jieba
    from transformers import BertTokenizer

    jieba.setLogLevel(logging.WARNING)
    tokenizer = BertTokenizer(str(vocab), do_lower_case=True)
    rng = random.Random(seed)
    documents: list[list[list[tuple[str, int]]]] = [[]]
    with open(corpus, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                if documents[-1]:
                    documents.append([])
                continue
            sentence = []
            for word_index, word in enumerate(jieba.lcut(line)):
                sentence += [(token, word_index) for token in tokenizer.tokenize(word)]
            if sentence:
                documents[-1].append(sentence)
    documents = [d for d in documents if d]
    rng.shuffle(documents)
    vocab_words = list(tokenizer.vocab)
    instances = []
    for index in range(len(documents)):
        for tokens, segment_ids, is_random_next in _instances(documents, index, max_seq_length, rng):
            instances.append(_mask(tokens, segment_ids, is_random_next, vocab_words, rng))
    rng.shuffle(instances)
    with open(output, "wb") as f:
        pickle.dump(instances, f)


def _instances(documents, document_index, max_seq_length, rng):
    document = documents[document_index]
    max_num_tokens = max_seq_length - 3
    target = rng.randint(2, max_num_tokens) if rng.random() < 0.1 else max_num_tokens
    chunk, length, i = [], 0, 0
    while i < len(document):
        chunk.append(document[i])
        length += len(document[i])
        if i == len(document) - 1 or length >= target:
            a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
            tokens_a = [t for s in chunk[:a_end] for t in s]
            tokens_b = []
            if len(chunk) == 1 or rng.random() < 0.5:
                is_random_next = True
                for _ in range(10):
                    random_index = rng.randint(0, len(documents) - 1)
                    if random_index != document_index:
                        break
                random_document = documents[random_index]
                for j in range(rng.randint(0, len(random_document) - 1), len(random_document)):
                    tokens_b.extend(random_document[j])
                    if len(tokens_b) >= target - len(tokens_a):
                        break
                i -= len(chunk) - a_end
            else:
                is_random_next = False
                tokens_b = [t for s in chunk[a_end:] for t in s]
            while len(tokens_a) + len(tokens_b) > max_num_tokens:
                trunc = tokens_a if len(tokens_a) > len(tokens_b) else tokens_b
                if rng.random() < 0.5:
                    del trunc[0]
                else:
                    trunc.pop()
            tokens = [("[CLS]", -1)] + tokens_a + [("[SEP]", -1)] + tokens_b + [("[SEP]", -1)]
            yield tokens, [0] * (len(tokens_a) + 2) + [1] * (len(tokens_b) + 1), is_random_next
            chunk, length = [], 0
        i += 1


def _mask(tokens, segment_ids, is_random_next, vocab_words, rng, masked_lm_prob=0.15, max_predictions=20):
    candidates = []
    for i, (token, word) in enumerate(tokens):
        if token in ("[CLS]", "[SEP]"):
            continue
        if candidates and tokens[candidates[-1][-1]][1] == word and i == candidates[-1][-1] + 1:
            candidates[-1].append(i)
        else:
            candidates.append([i])
    rng.shuffle(candidates)
    output = [t for t, _ in tokens]
    budget = min(max_predictions, max(1, int(round(len(tokens) * masked_lm_prob))))
    masked = []
    for index_set in candidates:
        if len(masked) >= budget:
            break
        if len(masked) + len(index_set) > budget:
            continue
        for index in index_set:
            if rng.random() < 0.8:
                output[index] = "[MASK]"
            elif rng.random() < 0.5:
                output[index] = vocab_words[rng.randint(0, len(vocab_words) - 1)]
            masked.append((index, tokens[index][0]))
    masked.sort()
    return output, segment_ids, is_random_next, masked


# ------------------------------------------------------------------------------------------------ measuring
def _tree(pid: int) -> list[int]:
    pids, stack = [], [pid]
    while stack:
        p = stack.pop()
        pids.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    stack += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return pids


def _memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of a process in KiB; (0, 0) once it is gone."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def measure(command: list[str], what: str, memory: bool = True) -> dict:
    """Run ``command``; wall time, and with ``memory`` the largest single-process RSS and peak total PSS of its
    process tree (MiB).

    Sampling reads /proc/PID/smaps_rollup of every process 50 times a second, which costs kernel time in
    proportion to each process's memory: timed runs go without it, so it does not tax the larger process more.
    """
    print(f"  running {what}" + (" (memory sampled)" if memory else ""), file=sys.stderr, flush=True)
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    peak = {"rss": 0, "pss": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            memory = [_memory_kib(p) for p in _tree(process.pid)]
            peak["rss"] = max([peak["rss"]] + [m[0] for m in memory])
            peak["pss"] = max(peak["pss"], sum(m[1] for m in memory))
            done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True) if memory else None
    if sampler:
        sampler.start()
    code = process.wait()
    seconds = time.perf_counter() - start
    done.set()
    if sampler:
        sampler.join()
    if code != 0:
        raise SystemExit(f"{what} failed with exit code {code}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"seconds": seconds, "cpu_seconds": cpu, "max_rss_mib": peak["rss"] / 1024 if memory else None,
            "peak_pss_mib": peak["pss"] / 1024 if memory else None}


def nezha(corpus: Path, work: Path, num_proc: int, tag: str, memory: bool = True) -> dict:
    tokenized, masked = work / f"{tag}-tokenized", work / f"{tag}-masked"
    cli = [sys.executable, "-m", "nezha_cli", "--quiet"]
    first = measure(cli + ["tokenize", str(corpus), "-o", str(tokenized), "--num-proc", str(num_proc),
                           "--overwrite"], f"nezha tokenize ({tag})", memory)
    second = measure(cli + ["mask", str(tokenized), "-o", str(masked), "--num-proc", str(num_proc), "--overwrite"],
                     f"nezha mask ({tag})", memory)
    stats = json.loads((masked / "manifest.json").read_text(encoding="utf-8"))["statistics"]
    shutil.rmtree(tokenized)
    shutil.rmtree(masked)
    return {"seconds": first["seconds"] + second["seconds"],
            "cpu_seconds": first["cpu_seconds"] + second["cpu_seconds"],
            "tokenize_seconds": first["seconds"], "tokenize_cpu_seconds": first["cpu_seconds"],
            "mask_cpu_seconds": second["cpu_seconds"],
            "mask_seconds": second["seconds"], "instances": stats["instances"],
            "max_rss_mib": max(first["max_rss_mib"], second["max_rss_mib"]) if memory else None,
            "peak_pss_mib": max(first["peak_pss_mib"], second["peak_pss_mib"]) if memory else None}


def prefix(source: Path, target: Path, size_mb: float) -> Path:
    """The first ``size_mb`` MB of a BERT-layout corpus, cut at a document boundary."""
    limit = int(size_mb * 1e6)
    written = 0
    with open(source, encoding="utf-8") as f, open(target, "w", encoding="utf-8") as out:
        for line in f:
            if written >= limit and not line.strip():
                break
            out.write(line)
            written += len(line.encode("utf-8"))
    return target


def repeated(source: Path, target: Path, times: int) -> Path:
    data = source.read_bytes().rstrip(b"\n") + b"\n\n"
    with open(target, "wb") as f:
        for _ in range(times):
            f.write(data)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, help="BERT-layout text file [default: the embedded corpus]")
    parser.add_argument("--size-mb", type=float, help="Use only the first N MB of the corpus.")
    parser.add_argument("--baseline-mb", type=float,
                        help="Run the (slow) baseline on the first N MB only [default: the whole corpus].")
    parser.add_argument("--num-proc", type=int, default=None, help="Processes [default: all cores].")
    parser.add_argument("--repeat", type=int, default=10, help="Corpus repetitions for the memory check (0: skip).")
    parser.add_argument("--runs", type=int, default=3,
                        help="Runs of jieba-only and nezha, alternated; the fastest of each counts.")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--workdir", type=Path, help="Scratch directory [default: a temporary one, removed].")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    parser.add_argument("--_baseline", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._baseline:
        baseline(*map(Path, args._baseline))
        return

    from nezha_cli.text.parallel import available_cpus
    from nezha_cli.text.vocab import bert_chinese_vocab_path

    num_proc = args.num_proc or available_cpus()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        corpus = args.corpus
        if corpus is None:
            from nezha_cli.text.corpora import write_default_corpus

            corpus = write_default_corpus(work / "default-corpus.txt")
        if args.size_mb:
            corpus = prefix(corpus, work / "corpus.txt", args.size_mb)
        mb = corpus.stat().st_size / 1e6
        load = os.getloadavg()
        print(f"corpus {corpus} ({mb:.2f} MB), {num_proc} processes, {available_cpus()} CPUs, "
              f"load average {load[0]:.2f} at start", file=sys.stderr)
        results: dict = {"corpus_mb": mb, "num_proc": num_proc, "cpus": available_cpus(), "load_at_start": load[0]}
        # Alternate the two, and keep the fastest run of each: on a busy machine the quietest moments compare.
        jieba_runs, nezha_runs = [], []
        for _ in range(args.runs):
            jieba_runs.append(measure([sys.executable, "-c", JIEBA_ONLY, str(corpus), str(num_proc)],
                                      "jieba.lcut only", memory=False))
            nezha_runs.append(nezha(corpus, work, num_proc, "1x", memory=False))
        results["jieba"] = min(jieba_runs, key=lambda r: r["seconds"])
        results["nezha"] = min(nezha_runs, key=lambda r: r["seconds"])
        results["runs"] = {"jieba_seconds": [r["seconds"] for r in jieba_runs],
                           "nezha_seconds": [r["seconds"] for r in nezha_runs]}
        if not args.skip_baseline:
            try:
                import transformers  # noqa: F401
            except ImportError:
                print("  baseline skipped: it needs transformers (pip install 'nezha-cli[parity]')", file=sys.stderr)
            else:
                base_corpus = prefix(corpus, work / "baseline.txt", args.baseline_mb) if args.baseline_mb else corpus
                results["baseline_mb"] = base_corpus.stat().st_size / 1e6
                results["baseline"] = measure(
                    [sys.executable, __file__, "--_baseline", str(base_corpus), str(bert_chinese_vocab_path()),
                     str(work / "baseline.pickle")], "pure-Python baseline")
        if args.repeat > 1:
            results["nezha_memory"] = nezha(corpus, work, num_proc, "1x")
            big = repeated(corpus, work / "corpus-repeated.txt", args.repeat)
            results["nezha_repeated"] = nezha(big, work, num_proc, f"{args.repeat}x")
            results["repeated_mb"] = big.stat().st_size / 1e6
        results["load_at_end"] = os.getloadavg()[0]
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")


def report(r: dict) -> None:
    def rate(entry: dict, mb: float) -> float:
        return mb / entry["seconds"]

    mb = r["corpus_mb"]
    jieba_rate, nezha_rate = rate(r["jieba"], mb), rate(r["nezha"], mb)
    print(f"\ncorpus {mb:.2f} MB, {r['num_proc']} processes on {r['cpus']} CPUs "
          f"(load average {r['load_at_start']:.2f} -> {r['load_at_end']:.2f})")
    print(f"{'':34}{'seconds':>9}{'MB/s':>8}{'CPU s':>8}{'max RSS MiB':>13}{'peak PSS MiB':>14}")

    def row(name: str, entry: dict, size: float) -> None:
        memory = "".join(f"{entry[k]:{w}.0f}" if entry[k] is not None else f"{'-':>{w}}"
                         for k, w in (("max_rss_mib", 13), ("peak_pss_mib", 14)))
        print(f"{name:34}{entry['seconds']:9.2f}{rate(entry, size):8.3f}{entry['cpu_seconds']:8.1f}{memory}")

    row("(a) jieba.lcut only, all cores", r["jieba"], mb)
    row("nezha tokenize + mask", r["nezha"], mb)
    n = r["nezha"]
    print(f"{'':34}(tokenize {n['tokenize_seconds']:.2f} s, {n['tokenize_cpu_seconds']:.1f} CPU s; mask "
          f"{n['mask_seconds']:.2f} s, {n['mask_cpu_seconds']:.1f} CPU s; {n['instances']:,} instances)")
    if "baseline" in r:
        row(f"(b) pure-Python baseline ({r['baseline_mb']:.2f} MB)", r["baseline"], r["baseline_mb"])
    if "nezha_repeated" in r:
        row("nezha, memory sampled", r["nezha_memory"], mb)
        row(f"nezha, corpus x{round(r['repeated_mb'] / mb)} ({r['repeated_mb']:.0f} MB)", r["nezha_repeated"],
            r["repeated_mb"])
    print()
    print(f"nezha / jieba-only limit:      {nezha_rate / jieba_rate:.2f}x   (target >= 0.8; CPU time: "
          f"{r['jieba']['cpu_seconds'] / r['nezha']['cpu_seconds']:.2f}x)")
    if len(r["runs"]["jieba_seconds"]) > 1:
        print("  all runs, seconds: jieba " + " ".join(f"{t:.2f}" for t in r["runs"]["jieba_seconds"])
              + ", nezha " + " ".join(f"{t:.2f}" for t in r["runs"]["nezha_seconds"]))
    if "baseline" in r:
        print(f"nezha / pure-Python baseline:  {nezha_rate / rate(r['baseline'], r['baseline_mb']):.1f}x faster")
    if "nezha_repeated" in r:
        big, small = r["nezha_repeated"], r["nezha_memory"]
        print(f"peak memory, corpus x{round(r['repeated_mb'] / mb)} / x1:  max RSS "
              f"{big['max_rss_mib'] / small['max_rss_mib']:.2f}x, total PSS "
              f"{big['peak_pss_mib'] / small['peak_pss_mib']:.2f}x   (target <= 1.2)")


if __name__ == "__main__":
    main()
