"""Our WordPiece tokenizer against Hugging Face ``tokenizers`` (Rust) on the embedded corpus, same vocab.

Prints whether the ids are identical line for line and the time of each, with the ratio. This is the measurement
behind keeping our own tokenizer (issue 30): it gives the same ids as transformers' ``BertTokenizer`` and as
``tokenizers``' ``BertWordPieceTokenizer``, it is faster on Chinese text, and whole word masking needs its
``encode_words_batch`` (the word of each token), which ``tokenizers`` has no call for.

    python benchmarks/bench_tokenizer.py [--lines N] [--rounds R]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nezha_cli.text.corpora import default_corpus_documents  # noqa: E402
from nezha_cli.text.tokenizer import BertTokenizer  # noqa: E402
from nezha_cli.text.vocab import bert_chinese_vocab_path  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=100_000, help="lines of the embedded corpus to tokenize")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of each; the median counts")
    args = parser.parse_args(argv)
    from tokenizers import BertWordPieceTokenizer

    lines = [line for document in default_corpus_documents() for line in document][:args.lines]
    vocab = str(bert_chinese_vocab_path())
    ours = BertTokenizer(vocab)
    theirs = BertWordPieceTokenizer(vocab, lowercase=True, strip_accents=None, clean_text=True,
                                    handle_chinese_chars=True)
    ours_ids = ours.encode_batch(lines)
    theirs_ids = [encoding.ids[1:-1] for encoding in theirs.encode_batch(lines)]  # without [CLS] ... [SEP]
    differ = sum(a != b for a, b in zip(ours_ids, theirs_ids))

    def timed(fn) -> float:
        times = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    t_ours = timed(lambda: ours.encode_batch(lines))
    t_theirs = timed(lambda: theirs.encode_batch(lines))
    characters = sum(map(len, lines))
    print(f"{len(lines):,} lines ({characters / 1e6:.1f} M characters) of the embedded corpus, BERT-Chinese vocab, "
          f"{os.cpu_count()} CPUs")
    print(f"ids identical on {len(lines) - differ:,} of {len(lines):,} lines")
    print(f"nezha BertTokenizer.encode_batch          {t_ours:.2f} s  ({characters / t_ours / 1e6:.1f} M chars/s)")
    print(f"tokenizers BertWordPieceTokenizer (Rust)  {t_theirs:.2f} s  ({characters / t_theirs / 1e6:.1f} M chars/s,"
          f" multi-threaded)")
    print(f"ratio (tokenizers time / ours): {t_theirs / t_ours:.2f}x")


if __name__ == "__main__":
    main()
