"""An ordered, bounded-memory parallel map over worker processes (the engine of `nezha tokenize` and `nezha mask`).

``multiprocessing.Pool.imap`` reads its whole input ahead of the workers, which defeats streaming a corpus larger
than memory; here at most ``max_pending`` items are in flight, and results come back in input order, so the output
is the same whatever the number of processes.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")
M = TypeVar("M")


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def resolve_num_proc(num_proc: int | None) -> int:
    from nezha_cli.errors import ConfigError

    if num_proc is None:
        return available_cpus()
    if num_proc < 1:
        raise ConfigError(f"--num-proc {num_proc}: must be at least 1")
    return num_proc


def _start_method() -> str:
    # fork shares what the parent already loaded (jieba's dictionary, the tokenizer's tables) with the workers for
    # free; elsewhere (macOS, Windows) the initializer loads them in each worker.
    return "fork" if sys.platform.startswith("linux") else "spawn"


def _worker_init(initializer: Callable[..., Any] | None, initargs: tuple) -> None:
    # Ctrl-C reaches every process of the group; only the parent handles it (and terminates the workers).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if initializer is not None:
        initializer(*initargs)


def ordered_map(
    func: Callable[[T], R],
    items: Iterable[tuple[T, M]],
    num_proc: int,
    initializer: Callable[..., Any] | None = None,
    initargs: tuple = (),
    max_pending: int | None = None,
) -> Iterator[tuple[R, M]]:
    """Yield ``(func(payload), meta)`` for each ``(payload, meta)`` of ``items``, in order.

    Only ``payload`` goes to a worker; ``meta`` stays here. ``initializer(*initargs)`` runs once per worker (and
    once here first: with fork the workers inherit its result).
    """
    if initializer is not None:
        initializer(*initargs)
    if num_proc <= 1:
        for payload, meta in items:
            yield func(payload), meta
        return
    context = multiprocessing.get_context(_start_method())
    max_pending = max_pending or 4 * num_proc
    # SIGTERM (which `timeout` and Slurm send to the whole process group) ends the workers wherever they are,
    # possibly holding the lock of the queue their results go through; a parent that went on to clean up would
    # then wait for that lock forever in Pool.terminate. While the pool lives, SIGTERM ends this process too, as
    # by default; what it leaves behind the next run to the same output removes (nezha_cli.io).
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL) if in_main_thread else None
    pool = context.Pool(num_proc, initializer=_worker_init, initargs=(initializer, initargs))
    try:
        pending: deque = deque()
        for payload, meta in items:
            pending.append((pool.apply_async(func, (payload,)), meta))
            if len(pending) >= max_pending:
                result, meta_done = pending.popleft()
                yield result.get(), meta_done
        while pending:
            result, meta_done = pending.popleft()
            yield result.get(), meta_done
        pool.close()
        pool.join()
    finally:
        pool.terminate()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
