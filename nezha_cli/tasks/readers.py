"""Reading task files: TSV with or without a header, CoNLL columns, SQuAD-style JSON, and CSV/JSON/JSONL through
``datasets``. Every problem is a :class:`DataError` naming the file, the line where there is one, and the fix."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nezha_cli.errors import DataError


@dataclass
class Row:
    line: int
    fields: list[str]


def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line without its newline), decoding UTF-8 (a BOM is dropped) with a clear error."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}:{number}: not UTF-8 ({exc.reason} at byte {exc.start}); convert the file "
                                "to UTF-8") from None
            yield number, line.rstrip("\r\n")


def read_tsv(path: Path) -> list[Row]:
    """Non-blank lines split on tabs (no quoting: Chinese text uses quote characters freely)."""
    return [Row(n, line.split("\t")) for n, line in read_lines(path) if line.strip()]


class Columns:
    """Maps the column names of a header (or a task's fixed headerless layout) to field indexes."""

    def __init__(self, path: Path, names: Sequence[str], header: bool) -> None:
        self.path = Path(path)
        self.names = [n.strip() for n in names]
        self.header = header
        self.index = {name.lower(): i for i, name in enumerate(self.names)}

    def find(self, candidates: Sequence[str], what: str, required: bool = True, hint: str = "") -> int | None:
        for name in candidates:
            if name.lower() in self.index:
                return self.index[name.lower()]
        if required:
            where = f"header has {', '.join(self.names)}" if self.header else f"layout is {', '.join(self.names)}"
            raise DataError(f"{self.path}: no {what} column (looked for {', '.join(candidates)}; the {where})"
                            + (f"; {hint}" if hint else ""))
        return None

    def check_width(self, row: Row) -> None:
        if len(row.fields) != len(self.names):
            raise DataError(
                f"{self.path}:{row.line}: expected {len(self.names)} tab-separated fields "
                f"({', '.join(self.names)}), found {len(row.fields)}"
            )


def split_header(path: Path, rows: list[Row], known_names: Sequence[str],
                 headerless: Sequence[str]) -> tuple[Columns, list[Row]]:
    """Use the first row as the header when it holds a known column name, else the task's headerless layout."""
    known = {n.lower() for n in known_names}
    if rows and any(f.strip().lower() in known for f in rows[0].fields):
        return Columns(path, rows[0].fields, header=True), rows[1:]
    return Columns(path, headerless, header=False), rows


def check_label(path: Path, line: int | str, label: str, allowed: Sequence[str]) -> None:
    if label not in allowed:
        shown = ", ".join(allowed) if len(allowed) <= 12 else ", ".join(list(allowed)[:12]) + ", ..."
        raise DataError(f"{path}:{line}: label {label!r} is not in the label set ({shown}); fix the data or "
                        "fine-tune on data that has this label")


# ------------------------------------------------------------------------------------------------------ CoNLL


def _is_tag(text: str) -> bool:
    return text == "O" or (len(text) > 2 and text[1] in "-_" and text[0].isalpha())


def looks_like_conll(path: Path) -> bool:
    """True when the first lines are ``token [extra columns] tag`` lines (one token per line), not sentences.

    A sentence-per-line TSV (``chars<TAB>tags``, both space-separated) has a tab field with spaces inside;
    a CoNLL line never does.
    """
    seen = 0
    for _, line in read_lines(path):
        parts = line.split()
        if not parts:
            continue
        if "\t" in line and any(" " in field.strip() for field in line.split("\t")):
            return False
        if not 2 <= len(parts) <= 4 or not _is_tag(parts[-1]):
            return False
        seen += 1
        if seen >= 5:
            break
    return seen > 0


def read_conll(path: Path) -> list[tuple[int, list[str], list[str]]]:
    """Sentences ``(first line, tokens, tags)`` from ``token tag`` lines with a blank line between sentences."""
    sentences: list[tuple[int, list[str], list[str]]] = []
    tokens: list[str] = []
    tags: list[str] = []
    start = 0
    for number, line in read_lines(path):
        if not line.strip() or line.startswith("-DOCSTART-"):
            if tokens:
                sentences.append((start, tokens, tags))
            tokens, tags = [], []
            continue
        parts = line.split()
        if len(parts) < 2:
            raise DataError(f"{path}:{number}: expected 'token tag' (CoNLL layout), found {line.strip()!r}")
        if not tokens:
            start = number
        # The token is the first column and the tag the last (extra middle columns, e.g. POS, are ignored).
        tokens.append(parts[0])
        tags.append(parts[-1])
    if tokens:
        sentences.append((start, tokens, tags))
    return sentences


# -------------------------------------------------------------------------------------- datasets-backed files


def load_table(path: Path, delimiter: str | None = None) -> tuple[list[str], list[dict[str, Any]]]:
    """Rows of a CSV/TSV/JSON/JSONL file through ``datasets`` (its column names, rows as dicts).

    CSV/TSV cells are read as the strings in the file: left to pandas, labels such as 01 and 002 and ids such as
    000123 would become the numbers 1, 2 and 123.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    suffix = path.suffix.lower()
    import datasets

    datasets.disable_progress_bars()
    if suffix in (".json", ".jsonl"):
        builder, kwargs = "json", {}
    elif suffix in (".csv", ".tsv", ".txt"):
        sep = delimiter or ("\t" if suffix in (".tsv", ".txt") else ",")
        # QUOTE_NONE for TSV: quotes are ordinary characters in Chinese text.
        quoting = csv.QUOTE_NONE if sep == "\t" else csv.QUOTE_MINIMAL
        header = _csv_header(path, sep, quoting)
        builder, kwargs = "csv", {"sep": sep, "quoting": quoting, "keep_default_na": False}
        if len(set(header)) == len(header):
            kwargs["features"] = datasets.Features({name: datasets.Value("string") for name in header})
    else:
        raise DataError(f"{path}: unknown file type {suffix or '(none)'}; use .csv, .tsv, .json or .jsonl")
    verbosity = datasets.logging.get_verbosity()
    # datasets logs the parser's message before it raises; the DataError below carries what the user needs.
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        dataset = datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
    except Exception as exc:  # datasets wraps pandas/pyarrow parse errors in several types
        if builder == "json":
            _raise_json_error(path)
        if builder == "csv" and "corresponds to no data" in str(exc):
            raise DataError(f"{path}: no rows below the header (empty split); check the file") from None
        raise DataError(f"{path}: cannot read as {builder.upper()} ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    finally:
        datasets.logging.set_verbosity(verbosity)
    return list(dataset.column_names), dataset.to_list()


def _csv_header(path: Path, sep: str, quoting: int) -> list[str]:
    for _, line in read_lines(path):
        if line.strip():
            return next(csv.reader([line], delimiter=sep, quoting=quoting))
    raise DataError(f"{path}: the file is empty (empty split); check the file")


def _raise_json_error(path: Path) -> None:
    """Find what datasets' JSON reader failed on (it names neither line nor problem) and say it; returns when the
    file parses here, for the caller's general message."""
    text = "".join(line + "\n" for _, line in read_lines(path))
    try:
        json.loads(text)
        return
    except json.JSONDecodeError as exc:
        document_error = exc
    lines = [(number, line) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not lines:
        raise DataError(f"{path}: the file is empty (empty split); check the file")
    try:
        json.loads(lines[0][1])
    except json.JSONDecodeError:
        # Not JSON Lines either (its first line is no JSON value): one document, with the error where it is.
        raise DataError(f"{path}:{document_error.lineno}: not valid JSON ({document_error.msg} at column "
                        f"{document_error.colno}); fix the file") from None
    for number, line in lines:
        try:
            json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno}); fix the line "
                            "(one JSON object per line in .jsonl)") from None


def require_column(path: Path, columns: Sequence[str], name: str, option: str) -> None:
    if name not in columns:
        raise DataError(f"{path}: no column {name!r} (columns: {', '.join(columns)}); rename it or pass {option}")
