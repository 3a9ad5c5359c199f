"""`nezha tokenize`: a corpus of any size to token ids and jieba word ids, in parallel and in constant memory.

The main process reads the inputs line by line and cuts them into chunks of about 64 KiB; worker processes run
jieba and the tokenizer on each chunk; the results come back in input order and are appended to the output's Arrow
shards. Only a few chunks are in flight at any time, so memory does not grow with the corpus, and the output is
the same whatever ``num_proc`` is. Output (a ``datasets.load_from_disk`` directory):

- one row per non-blank input line, in input order: ``doc_id`` (int64, counts documents from 0), ``input_ids``
  (list of int32, no special tokens) and, unless ``whole_word_mask=False``, ``word_ids`` (list of int32, same length:
  tokens of one jieba word share an id, increasing within the row);
- ``vocab.txt``, the vocab the ids refer to;
- ``manifest.json``: ``"kind": "nezha-tokenized"``, inputs, ``vocab_sha256``, options and counts, and what
  sharding needs (:mod:`nezha_cli.text.shards`): ``stripe_documents``, ``shard`` and a ``corpus`` fingerprint.

With ``shard=(I, N)`` only the documents of shard I of N are tokenized (the whole input is still read, to number
the documents); ``doc_id`` keeps counting all documents, so the shards' rows together are the unsharded rows.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from nezha_cli import __version__
from nezha_cli.errors import ConfigError, DataError
from nezha_cli.io import atomic_output_dir, check_output_path, write_json
from nezha_cli.text.corpora import DOCUMENT_BREAK, CorpusReader, ReadOptions, Source, resolve_inputs
from nezha_cli.text.dataset_files import DatasetWriter, list_array
from nezha_cli.text.parallel import ordered_map, resolve_num_proc
from nezha_cli.text.shards import STRIPE_DOCUMENTS, WHOLE, Shard, as_shard, corpus_fingerprint
from nezha_cli.text.vocab import VOCAB_NAME, Vocab, bert_chinese_vocab_path, build_vocab, vocab_sha256

logger = logging.getLogger(__name__)

TOKENIZED_KIND = "nezha-tokenized"
MANIFEST_NAME = "manifest.json"
# A chunk is about 0.1 s of jieba: small enough that the workers finish together, large enough that the cost of
# passing it around does not show.
CHUNK_CHARS = 16 << 10
CHUNK_LINES = 1024


@dataclass(frozen=True)
class WorkerConfig:
    vocab_path: str
    do_lower_case: bool
    whole_word_mask: bool
    user_dict: str | None


class _Worker:
    """What each process needs: the tokenizer and, for whole word masking, an initialized jieba."""

    def __init__(self, config: WorkerConfig):
        from nezha_cli.text.segmenter import shared_segmenter
        from nezha_cli.text.tokenizer import BertTokenizer

        self.config = config
        self.tokenizer = BertTokenizer(config.vocab_path, do_lower_case=config.do_lower_case).warm_up()
        self.segmenter = shared_segmenter(config.user_dict) if config.whole_word_mask else None

    def __call__(self, lines: list[str]) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        if self.segmenter is None:
            encoded = [self.tokenizer.encode(line) for line in lines]
            lengths = np.fromiter(map(len, encoded), np.int64, len(encoded))
            ids = np.fromiter((i for e in encoded for i in e), np.int32, int(lengths.sum()))
            return ids, None, lengths
        return self.tokenizer.encode_words_batch(self.segmenter.cut_lines(lines))


_WORKER: _Worker | None = None


def _init_worker(config: WorkerConfig) -> None:
    global _WORKER
    if _WORKER is None or _WORKER.config != config:
        _WORKER = _Worker(config)


def _tokenize_chunk(lines: list[str]):
    return _WORKER(lines)


@dataclass
class _ChunkMeta:
    doc_ids: np.ndarray
    bytes_read: int


def _chunks(reader: CorpusReader, chunk_chars: int = CHUNK_CHARS, chunk_lines: int = CHUNK_LINES,
            shard: Shard = WHOLE, stripe_documents: int = STRIPE_DOCUMENTS) -> Iterator[tuple[list[str], _ChunkMeta]]:
    """(lines, meta) chunks of the corpus (of the documents of ``shard``); a chunk never depends on anything but
    the input, so neither does the output."""
    lines: list[str] = []
    doc_ids: list[int] = []
    size = 0
    doc_id = 0
    in_document = False
    for line in reader:
        if line is DOCUMENT_BREAK:
            if in_document:
                doc_id += 1
                in_document = False
            continue
        in_document = True
        if shard.count > 1 and (doc_id // stripe_documents) % shard.count != shard.index:
            continue
        lines.append(line)
        doc_ids.append(doc_id)
        size += len(line)
        if size >= chunk_chars or len(lines) >= chunk_lines:
            yield lines, _ChunkMeta(np.asarray(doc_ids, np.int64), reader.bytes_read)
            lines, doc_ids, size = [], [], 0
    if lines:
        yield lines, _ChunkMeta(np.asarray(doc_ids, np.int64), reader.bytes_read)


def tokenize_corpus(
    inputs: Sequence[str | Path],
    output_dir: Path | str,
    vocab: Path | str | None = None,
    build_vocab: int | None = None,
    *,
    text_field: str = "text",
    encoding: str = "utf-8",
    errors: str = "strict",
    max_line_bytes: int = 1 << 20,
    split: str = "train",
    do_lower_case: bool = True,
    whole_word_mask: bool = True,
    user_dict: Path | str | None = None,
    min_frequency: int = 2,
    num_proc: int | None = None,
    overwrite: bool = False,
    show_progress: bool = True,
    shard: Shard | tuple[int, int] | str | None = None,
    stripe_documents: int | None = None,
) -> Path:
    """Tokenize ``inputs`` into ``output_dir`` (see the module doc for the format); returns ``output_dir``.

    ``inputs``: text files (BERT layout), globs, directories, ``.jsonl`` (``text_field``), ``.gz/.bz2/.xz``,
    ``"-"`` for stdin, ``datasets.save_to_disk`` directories or dataset names. ``vocab``: a vocab.txt (default: the
    BERT-Chinese vocab); or ``build_vocab=SIZE`` to learn one from the corpus. ``whole_word_mask=False`` skips jieba
    (no ``word_ids`` column). ``shard=(I, N)`` (or ``"I/N"``, 0-based): only shard I of N of the documents, for N
    machines to share the work (:mod:`nezha_cli.text.shards`; ``stripe_documents``: the documents per stripe,
    default ``STRIPE_DOCUMENTS``).
    """
    from nezha_cli.text import shards

    output_dir = Path(output_dir)
    shard = as_shard(shard) or WHOLE
    stripe_documents = shards.STRIPE_DOCUMENTS if stripe_documents is None else stripe_documents
    if stripe_documents < 1:
        raise ConfigError(f"stripe_documents={stripe_documents}: must be at least 1")
    if shard.count > 1 and build_vocab is not None:
        raise ConfigError(f"--shard {shard} with --build-vocab: each shard would learn another vocab from its part; "
                          "learn it once (`nezha tokenize CORPUS --build-vocab SIZE`, or `nezha corpus` tools) and "
                          "pass its vocab.txt to every shard with --vocab")
    options = ReadOptions(text_field=text_field, encoding=encoding, errors=errors, max_line_bytes=max_line_bytes,
                          split=split)
    sources = resolve_inputs(inputs)
    num_proc = resolve_num_proc(num_proc)
    if vocab is not None and build_vocab is not None:
        raise ConfigError("pass either --vocab or --build-vocab, not both")
    if user_dict is not None and not Path(user_dict).is_file():
        what = "is a directory; it takes a file (jieba's format: one word per line)" if Path(user_dict).is_dir() \
            else "not found"
        raise DataError(f"{user_dict}: --user-dict {what}")
    for item in inputs:
        if Path(item).is_dir() and Path(item).resolve() in Path(output_dir).resolve().parents:
            raise DataError(f"{output_dir}: inside the input directory {item}, all of whose files are read: the "
                            "next run would read this output as text; choose an output outside it")
    files = [s.name for s in sources if s.kind in ("text", "jsonl", "dataset")]
    check_output_path(output_dir, overwrite, inputs=[*files, vocab, user_dict])
    if build_vocab is None:
        vocab_path = Path(vocab) if vocab is not None else bert_chinese_vocab_path()
        given_vocab = Vocab.from_file(vocab_path)  # fail on a bad vocab before reading the corpus

    with atomic_output_dir(output_dir, overwrite=overwrite) as tmp:
        out_vocab = tmp / VOCAB_NAME
        if build_vocab is not None:
            sources, spooled = _spool_stdin(sources, tmp)
            _learn_vocab(sources, options, build_vocab, min_frequency, do_lower_case, out_vocab, show_progress)
            vocab_source = f"built from the corpus (--build-vocab {build_vocab})"
            written_vocab = Vocab.from_file(out_vocab)
        else:
            spooled = []
            shutil.copyfile(vocab_path, out_vocab)
            vocab_source = str(vocab_path)
            written_vocab = given_vocab
        config = WorkerConfig(str(out_vocab), do_lower_case, whole_word_mask,
                              str(user_dict) if user_dict is not None else None)
        counts = _tokenize(sources, options, config, written_vocab.unk_token_id, tmp, num_proc, show_progress,
                           shard, stripe_documents)
        for path in spooled:
            path.unlink()
        manifest = {
            "kind": TOKENIZED_KIND,
            "version": __version__,
            "inputs": [str(i) for i in inputs],
            "vocab": vocab_source,
            "vocab_sha256": vocab_sha256(out_vocab),
            "vocab_size": written_vocab.vocab_size,
            "options": {
                "do_lower_case": do_lower_case,
                "whole_word_mask": whole_word_mask,
                "user_dict": str(user_dict) if user_dict is not None else None,
                **asdict(options),
            },
            "columns": ["doc_id", "input_ids"] + (["word_ids"] if whole_word_mask else []),
            "counts": counts,
            "stripe_documents": stripe_documents,
            "shard": shard.to_json(),
            "corpus": corpus_fingerprint([(s.name, s.size) for s in sources]),
        }
        write_json(tmp / MANIFEST_NAME, manifest)
    logger.info("tokenized %s lines (%s tokens, %s documents) into %s", f"{counts['rows']:,}",
                f"{counts['tokens']:,}", f"{counts['documents']:,}", output_dir)
    return output_dir


def _tokenize(sources: list[Source], options: ReadOptions, config: WorkerConfig, unk_id: int, out: Path,
              num_proc: int, show_progress: bool, shard: Shard = WHOLE,
              stripe_documents: int = STRIPE_DOCUMENTS) -> dict[str, Any]:
    from nezha_cli.console import make_progress

    columns = {"doc_id": "int64", "input_ids": "list[int32]"}
    if config.whole_word_mask:
        columns["word_ids"] = "list[int32]"
    writer = DatasetWriter(out, columns)
    reader = CorpusReader(sources, options)
    tokens = unk = 0
    documents = 0
    last_doc = -1
    done_bytes = 0
    with make_progress("bytes", disable=not show_progress) as progress:
        task = progress.add_task("tokenize", total=reader.total_bytes)
        chunks = _chunks(reader, shard=shard, stripe_documents=stripe_documents)
        results = ordered_map(_tokenize_chunk, chunks, num_proc, _init_worker, (config,))
        for (ids, word_ids, lengths), meta in results:
            batch = {"doc_id": pa.array(meta.doc_ids, pa.int64()),
                     "input_ids": list_array(ids, lengths, pa.int32())}
            if word_ids is not None:
                batch["word_ids"] = list_array(word_ids, lengths, pa.int32())
            writer.write(batch)
            tokens += len(ids)
            unk += int(np.count_nonzero(ids == unk_id))
            # Documents started in this chunk (doc ids increase, with gaps where another shard's documents are).
            documents += int(np.count_nonzero(np.diff(meta.doc_ids, prepend=last_doc)))
            last_doc = int(meta.doc_ids[-1])
            progress.update(task, advance=meta.bytes_read - done_bytes)
            done_bytes = meta.bytes_read
        progress.update(task, completed=reader.bytes_read)
    if writer.num_rows == 0:
        writer.abort()
        names = ", ".join(s.name for s in sources)
        if shard.count > 1:
            raise DataError(f"--shard {shard}: no documents of the input ({names}) are in this shard: shards take "
                            f"stripes of {stripe_documents:,} documents in turn, so use fewer shards (at most the "
                            "number of documents divided by that)")
        raise DataError(f"no text in the input ({names}): every line is blank"
                        + (f" or undecodable ({reader.skipped_lines:,} skipped)" if reader.skipped_lines else ""))
    writer.close()
    if reader.skipped_lines:
        logger.warning("skipped %s undecodable lines (--errors skip)", f"{reader.skipped_lines:,}")
    return {"rows": writer.num_rows, "documents": documents, "tokens": tokens, "unk_tokens": unk,
            "input_bytes": reader.bytes_read, "skipped_lines": reader.skipped_lines}


def _spool_stdin(sources: list[Source], tmp: Path) -> tuple[list[Source], list[Path]]:
    """--build-vocab reads the corpus twice, stdin only once: it is copied to a file first."""
    out, spooled = [], []
    for source in sources:
        if source.kind == "stdin":
            import sys

            fd, name = tempfile.mkstemp(prefix=".stdin-", suffix=".txt", dir=tmp)
            with open(fd, "wb") as f:
                shutil.copyfileobj(sys.stdin.buffer, f, 1 << 20)
            spooled.append(Path(name))
            source = Source(name, "text", spooled[-1].stat().st_size)
        out.append(source)
    return out, spooled


def _learn_vocab(sources: list[Source], options: ReadOptions, size: int, min_frequency: int, do_lower_case: bool,
                 out: Path, show_progress: bool) -> None:
    from nezha_cli.console import make_progress
    from nezha_cli.text.tokenizer import BasicTokenizer
    from nezha_cli.text.vocab import write_vocab

    reader = CorpusReader(sources, options)
    basic = BasicTokenizer(do_lower_case=do_lower_case)
    with make_progress("bytes", disable=not show_progress) as progress:
        task = progress.add_task("learn vocab", total=reader.total_bytes)

        def lines() -> Iterator[str]:
            for i, line in enumerate(reader):
                if line is not DOCUMENT_BREAK:
                    yield " ".join(basic.tokenize(line))
                if i % 1024 == 0:
                    progress.update(task, completed=reader.bytes_read)

        tokens = build_vocab(lines(), size, min_frequency=min_frequency)
    write_vocab(tokens, out)
    logger.info("learned a vocab of %s tokens", f"{len(tokens):,}")
