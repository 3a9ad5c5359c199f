"""Atomic outputs: every step writes to a temporary sibling and renames it into place at the end.

An interrupted or failed run therefore never leaves a half-written output behind, and an existing output is only
replaced when the user asked for it.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from nezha_cli.errors import NezhaError, OutputExistsError, OutputWriteError


def check_output_path(path: Path, overwrite: bool, inputs: Iterable[Path | str | None] = (),
                      create_parent: bool = False) -> None:
    """Fail early (before any work) when ``path`` exists and may not be replaced, cannot be created, or is (or
    holds) one of the command's ``inputs``, which replacing it would delete.

    Missing parent directories are created only with ``create_parent`` (by the writers, when the output is
    ready): a command that fails after its early check leaves no empty directories behind.
    """
    path = Path(path)
    check_not_replacing(path, inputs)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path}: output already exists; pass --overwrite to replace it or choose another path")
    parent = path.resolve().parent
    existing = next(p for p in (parent, *parent.parents) if p.exists())
    if not existing.is_dir():
        raise NezhaError(f"{existing}: a file, where the output path needs a directory; choose another output path")
    if existing != parent and not os.access(existing, os.W_OK | os.X_OK):
        raise NezhaError(f"{parent}: cannot create output directory ({existing} is not writable); choose another "
                         "-o/--output")
    if create_parent:
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise NezhaError(f"{parent}: cannot create output directory ({exc.strerror})") from None
    if parent.exists() and not os.access(parent, os.W_OK):
        raise NezhaError(f"{parent}: output directory is not writable; choose another -o/--output")


def check_not_replacing(path: Path, inputs: Iterable[Path | str | None]) -> None:
    """Refuse an output that is one of the inputs or a directory above one: writing it replaces them."""
    target = Path(path).resolve()
    for source in inputs:
        if source is None:
            continue
        resolved = Path(source).resolve()
        if resolved == target or target in resolved.parents:
            raise NezhaError(f"{path}: the output would replace the input {source}; choose another output path")


@functools.cache
def _umask() -> int:
    # The umask can only be read by setting it; read once, when the first output is written.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def give_default_mode(path: Path | str, directory: bool = False) -> None:
    """Give a file (or directory) the mode of any new one, 0666 (0777) less the umask: mkstemp, mkdtemp and
    safetensors make theirs private (0600 / 0700)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def _temporary_prefix(path: Path) -> str:
    """The name prefix of ``path``'s temporaries: host and pid say whose they are (see :func:`_remove_stale`)."""
    return f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}-"


def _remove_stale(path: Path) -> None:
    """Remove the temporaries of ``path`` that processes of this host, now gone, left behind.

    A process killed outright (SIGKILL, the OOM killer, SIGTERM during a parallel step) cannot remove its
    temporary, which can hold gigabytes of half-written output. Those of live processes, and those of other hosts
    (a shared file system), are left alone.
    """
    pattern = re.compile(re.escape(f".{path.name}.tmp-{socket.gethostname()}-") + r"(\d+)-")
    for sibling in path.parent.iterdir():
        match = pattern.match(sibling.name)
        if match is None or _process_exists(int(match.group(1))):
            continue
        if sibling.is_dir() and not sibling.is_symlink():
            shutil.rmtree(sibling, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                sibling.unlink()


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: another user's process
        return True
    return True


# The write failures an operator can fix by freeing space or writing elsewhere, as the OS reports them, and as
# libraries that write files themselves put them in their messages (safetensors' SafetensorError and torch's zip
# writer's RuntimeError are not OSErrors; pyarrow's are, with the errno only in the text).
_WRITE_FAILURES = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                   errno.EROFS: "read-only file system", errno.EFBIG: "file too large"}
_WRITE_FAILURE_PHRASES = (
    ("no space left", errno.ENOSPC), ("storagefull", errno.ENOSPC), ("os error 28", errno.ENOSPC),
    ("quota", errno.EDQUOT), ("os error 122", errno.EDQUOT), ("read-only file system", errno.EROFS),
    ("os error 30", errno.EROFS), ("file too large", errno.EFBIG), ("file write failed", None),
    ("failed writing", None),
)


def write_failure(exc: BaseException) -> tuple[bool, int | None]:
    """Whether ``exc`` is a failed write, and its errno when it says which (ENOSPC, EDQUOT, EROFS, EFBIG)."""
    if isinstance(exc, OSError) and exc.errno in _WRITE_FAILURES:
        return True, exc.errno
    if isinstance(exc, (NezhaError, KeyboardInterrupt)):
        return False, None
    text = str(exc).lower().replace(" ", "")
    for phrase, code in _WRITE_FAILURE_PHRASES:
        if phrase.replace(" ", "") in text:
            return True, code
    return False, None


def _size(n: float) -> str:
    if n < 1024:
        return f"{n:,} bytes"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} TiB"


def write_failure_message(path: Path, code: int | None, bytes_needed: int | None = None) -> str:
    """One line: which output, why, how much room there is and is needed, what to do."""
    path = Path(path)
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    free = None
    if existing is not None:
        with contextlib.suppress(OSError):
            free = shutil.disk_usage(existing).free
    if code is None:  # a library's "write failed" without a reason: a full disk if there is (almost) no room
        code = errno.ENOSPC if free is not None and free < max(bytes_needed or 0, 1 << 20) else None
    reason = _WRITE_FAILURES.get(code, "the write failed")
    room = f"; {_size(free)} free there" if free is not None else ""
    needed = f", about {_size(bytes_needed)} needed" if bytes_needed else ""
    if code == errno.EROFS:
        hint = "write elsewhere (-o/--output, --cache-dir)"
    else:
        hint = "free some space or write elsewhere (-o/--output, --cache-dir), then run the command again"
    return f"{path}: cannot write it ({reason}{room}{needed}); nothing was left half-written; {hint}"


@contextlib.contextmanager
def write_errors(path: Path, bytes_needed: int | None = None) -> Iterator[None]:
    """Turn a failed write inside the block (full disk, quota, read-only file system, a library's write error)
    into one :class:`OutputWriteError` naming ``path``; every other exception passes unchanged."""
    try:
        yield
    except Exception as exc:
        failed, code = write_failure(exc)
        if not failed:
            raise
        raise OutputWriteError(write_failure_message(path, code, bytes_needed)) from exc


@contextlib.contextmanager
def atomic_output_dir(path: Path, overwrite: bool = False, bytes_needed: int | None = None) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``path`` when the block finishes without error.

    On any error the temporary is removed; a failed write (full disk, ...) becomes one :class:`OutputWriteError`
    naming ``path`` (with ``bytes_needed`` in its message when the caller knows it).
    """
    check_output_path(path, overwrite, create_parent=True)
    # Resolved: "-o ." and "-o .." have no name to put the temporary beside.
    path = Path(path).resolve()
    with write_errors(path, bytes_needed):
        _remove_stale(path)
        tmp = Path(tempfile.mkdtemp(prefix=_temporary_prefix(path), dir=path.parent))
        yield from _fill_and_rename(tmp, path)


def _fill_and_rename(tmp: Path, path: Path) -> Iterator[Path]:
    try:
        give_default_mode(tmp, directory=True)
        yield tmp
        if path.exists():
            # Move the old output aside first so that a crash between the two renames loses nothing.
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except OSError:
                os.replace(old, path)
                raise
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_output_file(path: Path, overwrite: bool = True, mode: str = "w", encoding: str | None = "utf-8"):
    """Open a temporary file that replaces ``path`` when the block finishes without error (a failed write: one
    :class:`OutputWriteError` naming ``path``, as :func:`atomic_output_dir`)."""
    path = Path(path)
    check_output_path(path, overwrite, create_parent=True)
    with write_errors(path):
        _remove_stale(path.resolve())
        fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(path), dir=path.resolve().parent)
        try:
            give_default_mode(tmp)
            with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
                yield f
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def sha256_file(path: Path | str) -> str:
    """The SHA-256 of a file's bytes, hex (vocab identity, checkpoint manifests, fine-tuning's data fingerprints)."""
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_json(path: Path, obj: Any, overwrite: bool = True) -> None:
    """Write ``obj`` as indented UTF-8 JSON, atomically."""
    with atomic_output_file(path, overwrite=overwrite) as f:
        json.dump(obj, f, ensure_ascii=False, indent=2)
        f.write("\n")


def read_json(path: Path, what: str = "JSON file") -> Any:
    """Read JSON with an error that names the file and the position of the problem."""
    path = Path(path)
    try:
        # utf-8-sig: editors on Windows start UTF-8 files with a byte order mark, which json refuses.
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f)
    except FileNotFoundError:
        raise NezhaError(f"{path}: {what} not found") from None
    except UnicodeDecodeError as exc:
        raise NezhaError(f"{path}: {what} is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise NezhaError(
            f"{path}: {what} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
        ) from None


RUN_LOCK_NAME = ".nezha-run.lock"


def holds_run_files(directory: Path) -> bool:
    """Whether a training OUT holds anything but its run lock (which a finished run leaves behind)."""
    return any(p.name != RUN_LOCK_NAME for p in Path(directory).iterdir())


class RunLock:
    """An exclusive lock on a training OUT for as long as the run writes to it, so that a second run on the same
    directory (--resume twice, --overwrite while the first one trains) is refused instead of interleaving
    checkpoints. ``flock``: released by the OS when the process ends, however it ends; where the file system or
    the platform has no such locks (Windows, some network file systems), runs go unlocked as before."""

    def __init__(self, directory: Path):
        self.path = Path(directory) / RUN_LOCK_NAME
        self._file = None
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return
        f = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held open until release()
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise OutputExistsError(f"{directory}: another run (process {holder}) is writing this directory; wait "
                                    "for it to end or choose another -o/--output") from None
        except OSError:  # no locks on this file system
            f.close()
            return
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the only descriptor drops the lock
            self._file = None
