"""Atomic outputs: every step writes to a temporary sibling and renames it into place at the end.

An interrupted or failed run therefore never leaves a half-written output behind, and an existing output is only
replaced when the user asked for it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nezha_cli.errors import NezhaError, OutputExistsError


def check_output_path(path: Path, overwrite: bool) -> None:
    """Fail early (before any work) when ``path`` exists and may not be replaced, or cannot be created."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path}: output already exists; pass --overwrite to replace it or choose another path")
    parent = path.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NezhaError(f"{parent}: cannot create output directory ({exc.strerror})") from None
    if not os.access(parent, os.W_OK):
        raise NezhaError(f"{parent}: output directory is not writable; choose another -o/--output")


@contextlib.contextmanager
def atomic_output_dir(path: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``path`` when the block finishes without error."""
    path = Path(path)
    check_output_path(path, overwrite)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.resolve().parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        # Move the old output aside first so that a crash between the two renames loses nothing.
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        os.replace(tmp, path)
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    else:
        os.replace(tmp, path)


@contextlib.contextmanager
def atomic_output_file(path: Path, overwrite: bool = True, mode: str = "w", encoding: str | None = "utf-8"):
    """Open a temporary file that replaces ``path`` when the block finishes without error."""
    path = Path(path)
    check_output_path(path, overwrite)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.resolve().parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: Path, obj: Any, overwrite: bool = True) -> None:
    """Write ``obj`` as indented UTF-8 JSON, atomically."""
    with atomic_output_file(path, overwrite=overwrite) as f:
        json.dump(obj, f, ensure_ascii=False, indent=2)
        f.write("\n")


def read_json(path: Path, what: str = "JSON file") -> Any:
    """Read JSON with an error that names the file and the position of the problem."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise NezhaError(f"{path}: {what} not found") from None
    except UnicodeDecodeError as exc:
        raise NezhaError(f"{path}: {what} is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise NezhaError(
            f"{path}: {what} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
        ) from None
