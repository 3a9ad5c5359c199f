"""The C kernels of :mod:`nezha_cli.modeling.kernels.dispatch` for CPU tensors: compiled once per machine, loaded
through ctypes.

``relative_cpu.c`` is built with the C compiler the machine has (``$CC``, else ``gcc``; about a quarter of a
second) into ``$XDG_CACHE_HOME/nezha-cli/kernels`` (``~/.cache/...``), under a name that hashes the source, the
compiler, the flags and the CPU's features (``-march=native``: a cache shared by different machines keeps one build
per kind; a new build removes the builds made more than 30 days before it). Nothing is compiled at install time,
so an install needs no compiler: without one, or on a platform where PyTorch's CPU threads are not GCC's OpenMP
(the library shares that thread pool), :func:`load` returns None and the PyTorch ops serve.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("relative_cpu.c")
FLAGS = ("-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-std=gnu11")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nezha-cli" / "kernels"


def compiler() -> list[str] | None:
    """``$CC`` (split like a shell: "ccache gcc" works) or gcc: GCC's -fopenmp links libgomp, the OpenMP runtime
    PyTorch's Linux wheels use."""
    if os.environ.get("CC", "").strip():
        return shlex.split(os.environ["CC"])
    gcc = shutil.which("gcc")
    return [gcc] if gcc else None


def _cpu_features() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return ""


def build(directory: Path | None = None) -> Path:
    """The compiled library, built into ``directory`` (default :func:`cache_dir`) unless already there.

    Raises OSError (no compiler, unwritable directory) or subprocess.CalledProcessError (compile errors).
    """
    cc = compiler()
    if cc is None:
        raise OSError("no C compiler (set CC or install gcc)")
    version = subprocess.run([*cc, "--version"], capture_output=True, text=True, check=True).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), version, *FLAGS, platform.machine(),
                                    _cpu_features()]).encode()).hexdigest()[:16]
    directory = Path(directory or cache_dir())
    target = directory / f"relative_cpu-{key}.so"
    if target.exists():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    # Built beside the target, then renamed: a process that loads it never sees half a file, and processes that
    # build at the same time (one per rank) each rename a whole one.
    fd, partial = tempfile.mkstemp(prefix=".relative_cpu-", suffix=".so", dir=directory)
    os.close(fd)
    try:
        subprocess.run([*cc, *FLAGS, str(SOURCE), "-o", partial], capture_output=True, text=True, check=True,
                       timeout=300)
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    _remove_stale_builds(directory, keep=target)
    return target


STALE_SECONDS = 30 * 24 * 3600


def _remove_stale_builds(directory: Path, keep: Path) -> None:
    """Remove the other builds in ``directory`` made more than 30 days ago (an older source or compiler; another
    kind of CPU sharing the cache rebuilds its own in a quarter of a second), when a new one has just been built.

    A process that was about to load one of them builds a private copy instead (see :func:`load`).
    """
    cutoff = time.time() - STALE_SECONDS
    for path in directory.glob("relative_cpu-*.so"):
        try:
            if path != keep and path.stat().st_mtime < cutoff:
                path.unlink()
        except OSError:
            pass  # gone already, or not ours to remove


def _mapped_openmp_runtimes() -> set[str]:
    with open("/proc/self/maps") as f:
        return {line.split()[-1] for line in f if "libgomp" in line or "libomp" in line or "libiomp" in line}


def unsupported() -> str | None:
    """Why the kernels cannot serve on this machine (a platform resource it lacks), or None where they can."""
    if not sys.platform.startswith("linux"):
        return "not Linux"
    if "ATen parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return "PyTorch's CPU threads are not OpenMP"
    if compiler() is None:
        return "no C compiler (set CC or install gcc)"
    return None


def load() -> ctypes.CDLL | None:
    """The kernels, built if need be; None where they cannot serve (why: a debug log line for what the machine
    lacks, a warning for a build or load that failed)."""
    reason = unsupported()
    if reason is not None:
        logger.debug(f"relative attention CPU kernels off: {reason}")
        return None
    try:
        return _open(build())
    except (OSError, subprocess.SubprocessError) as error:
        # An unwritable cache, or one whose libraries cannot be loaded (a noexec mount): build into a directory of
        # this process's own, removed once loaded (a temporary directory elsewhere, often on another mount).
        logger.debug(f"relative attention CPU kernels: {error}; building a private copy")
    own = Path(tempfile.mkdtemp(prefix="nezha-kernels-"))
    try:
        return _open(build(own))
    except (OSError, subprocess.SubprocessError) as error:
        detail = str(getattr(error, "stderr", None) or error).strip().splitlines() or [type(error).__name__]
        logger.warning(f"could not build or load {SOURCE.name} ({detail[-1][:200]}): the relative attention uses "
                       "the (slower) PyTorch ops; NEZHA_CPU_KERNELS=0 silences this")
        return None
    finally:
        shutil.rmtree(own, ignore_errors=True)  # a loaded library's mapping outlives its file


def _open(path: Path) -> ctypes.CDLL | None:
    """The library at ``path`` with its functions' signatures; None if it would bring a second OpenMP runtime.
    Raises OSError where it cannot be loaded."""
    before = _mapped_openmp_runtimes()
    library = ctypes.CDLL(str(path))
    if len(_mapped_openmp_runtimes()) > len(before) and before:
        # A second OpenMP runtime would keep a second pool of threads spinning against PyTorch's.
        logger.debug("relative attention CPU kernels off: they would load a second OpenMP runtime")
        return None
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    signatures = {"expand_buckets_2": 7, "expand_buckets_4": 7, "sum_buckets_f32": 4, "sum_buckets_f32_bf16": 4,
                  "sum_buckets_bf16": 4}
    for name, int_args in signatures.items():
        try:
            function = getattr(library, name)
        except AttributeError as error:  # a library that loads but is not this one (a damaged file)
            raise OSError(f"{path}: {error}") from error
        function.argtypes = [ptr, ptr] + [i64] * int_args
        function.restype = None
    return library
