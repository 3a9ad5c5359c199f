"""Dropout whose CPU masks are drawn in parallel.

PyTorch draws a CPU dropout mask with one serial Bernoulli draw per element (about 7-10 ns each, whatever the
number of threads): on a 16-core CPU under bf16 autocast, the dropout of the [B, H, L, L] attention probabilities
and of the hidden states took 57% of a training step at 512 tokens (2 layers of BERT-base width). Here a large CPU
mask comes from 64-bit random words, four 16-bit uniforms per word, filled in fixed chunks of words on a thread
pool, each chunk by its own generator seeded from torch's global one:

* seeded runs repeat, and an exact ``--resume`` stays exact (the global RNG state is checkpointed as before);
* the mask depends on the seed only, not on the number of threads (the chunks are fixed);
* an element is dropped with probability p' = round(p * 65536) / 65536 (|p' - p| <= 2^-17) and the kept ones are
  scaled by 1 / (1 - p'), so the expectation is exact.

Other devices (CUDA draws its masks in parallel already), small tensors, torch.compile and in-place dropout take
``torch.nn.functional.dropout``.
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn

# 64-bit words per chunk: each chunk costs a generator and a task (tens of microseconds in all); 2^16 words
# (256k uniforms) keep that small and still split an attention-sized mask over many threads.
CHUNK_WORDS = 1 << 16
# Below this many elements the serial draw is cheap and the thread pool's overhead is not worth it.
MIN_ELEMENTS = 1 << 16
_RESOLUTION = 1 << 16

_pool: ThreadPoolExecutor | None = None
_pool_key: tuple[int, int] | None = None
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    """One pool per process (a forked child makes its own) with torch's intra-op thread count."""
    global _pool, _pool_key
    key = (os.getpid(), torch.get_num_threads())
    with _pool_lock:
        if _pool_key != key:
            _pool = ThreadPoolExecutor(max_workers=key[1], thread_name_prefix="nezha-dropout")
            _pool_key = key
        return _pool


def random_words(count: int) -> torch.Tensor:
    """``count`` uniformly random int64 words (all 64 bits), drawn chunk by chunk on the thread pool."""
    words = torch.empty(count, dtype=torch.int64)
    chunks = -(-count // CHUNK_WORDS)
    seeds = torch.randint(0, 2**62, (chunks,)).tolist()  # from the global generator: seeded, checkpointed

    def fill(i: int) -> None:
        generator = torch.Generator().manual_seed(seeds[i])
        words[i * CHUNK_WORDS:(i + 1) * CHUNK_WORDS].random_(-(2**63), None, generator=generator)

    if chunks == 1 or torch.get_num_threads() == 1:
        for i in range(chunks):
            fill(i)
    else:
        for _ in _executor().map(fill, range(chunks)):
            pass
    return words


def keep_mask(shape: torch.Size, threshold: int) -> torch.Tensor:
    """A bool mask of ``shape``, each element False with probability threshold / 65536, independently."""
    n = math.prod(shape)
    uniforms = random_words(-(-n // 4)).view(torch.int16)[:n]  # uniform on [-32768, 32767]
    return torch.ge(uniforms, threshold - _RESOLUTION // 2).view(shape)


class _MaskedScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, keep, scale):
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.where(keep, x, 0).mul_(scale)

    @staticmethod
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad, 0).mul_(ctx.scale), None, None


class Dropout(nn.Dropout):
    """``nn.Dropout`` with the parallel CPU mask of this module (same arguments, same state dict: none)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        threshold = round(self.p * _RESOLUTION)
        if (x.device.type != "cpu" or self.inplace or not x.is_floating_point() or x.numel() < MIN_ELEMENTS
                or not 0 < threshold < _RESOLUTION or torch.compiler.is_compiling()):
            return super().forward(x)
        return _MaskedScale.apply(x, keep_mask(x.shape, threshold), _RESOLUTION / (_RESOLUTION - threshold))
