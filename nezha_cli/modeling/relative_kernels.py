"""Triton kernels for the two memory-bound steps of the relative attention on a GPU.

:func:`~nezha_cli.modeling.relative_attention.expand_buckets` (bucket scores to [L, L]) and
:func:`~nezha_cli.modeling.relative_attention.sum_buckets` ([L, L] to bucket sums) each take several PyTorch ops:
a gather that also reads an [L, L] index, or a band read plus block, corner and row sums with their masks, each a
kernel launch and a pass over memory. Here each is one kernel and one pass. They compute the same values (the
clipped buckets' sums in fp32, as there) and are used for CUDA tensors when Triton is installed (it ships with
PyTorch's CUDA wheels), outside torch.compile and torch.export; everything else takes the PyTorch ops.
``NEZHA_TRITON=0`` in the environment turns them off.
"""

from __future__ import annotations

import functools
import os

import torch

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
ENABLED = os.environ.get("NEZHA_TRITON", "1") != "0"


def available(x: torch.Tensor) -> bool:
    """Whether the kernels serve ``x``: a CUDA tensor of fp32/bf16/fp16, eager mode, Triton installed, and no
    autograd graph to record (the attention's autograd functions call them with none; a direct caller that
    differentiates through them gets the PyTorch ops)."""
    return (ENABLED and x.is_cuda and x.dtype in _DTYPES and not (x.requires_grad and torch.is_grad_enabled())
            and not torch.compiler.is_compiling() and not torch.compiler.is_exporting()
            and not torch.jit.is_tracing() and _kernels() is not None)


@functools.cache
def _kernels():
    """The module of jit kernels, or None without Triton (CPU-only installs: the PyTorch ops serve)."""
    try:
        from nezha_cli.modeling import _relative_triton
    except ImportError:
        return None
    return _relative_triton


def _next_power_of_2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def expand_buckets(y: torch.Tensor, length: int, max_relative_position: int) -> torch.Tensor:
    """[..., L, W'] -> [..., L, L], out[i, j] = y[i, clip(j - i, -K, K) + K]; ``y`` may be a strided view (the
    heads of one [B, L, H, W'] product) as long as its last dimension is contiguous."""
    lead = y.shape[:-2]
    if y.stride(-1) != 1:
        y = y.contiguous()
    if y.dim() != 4:
        y = y.reshape(-1, 1, *y.shape[-2:])
    batch, heads = y.shape[:2]
    out = torch.empty(*lead, length, length, dtype=y.dtype, device=y.device)
    block_i, block_j = 16, min(128, _next_power_of_2(length))
    grid = (batch * heads, -(-length // block_i), -(-length // block_j))
    _kernels().expand_buckets_kernel[grid](y, out, heads, length, max_relative_position, y.stride(0),
                                           y.stride(1), y.stride(2), BLOCK_I=block_i, BLOCK_J=block_j)
    return out


def sum_buckets(x: torch.Tensor, max_relative_position: int, width: int) -> torch.Tensor:
    """[..., L, L] (contiguous) -> [..., L, W]: the keys of each query summed by bucket, zero past 2K."""
    length = x.shape[-1]
    out = torch.empty(*x.shape[:-1], width, dtype=x.dtype, device=x.device)
    rows = x.numel() // length
    _kernels().sum_buckets_kernel[(rows,)](x, out, length, max_relative_position, width,
                                           BLOCK_L=min(1024, _next_power_of_2(length)),
                                           BLOCK_W=_next_power_of_2(width))
    return out
