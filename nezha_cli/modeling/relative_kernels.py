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

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the PyTorch ops serve
    triton = None

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
ENABLED = os.environ.get("NEZHA_TRITON", "1") != "0"


def available(x: torch.Tensor) -> bool:
    """Whether the kernels serve ``x``: a CUDA tensor of fp32/bf16/fp16, eager mode, Triton installed, and no
    autograd graph to record (the attention's autograd functions call them with none; a direct caller that
    differentiates through them gets the PyTorch ops)."""
    return (ENABLED and triton is not None and x.is_cuda and x.dtype in _DTYPES
            and not (x.requires_grad and torch.is_grad_enabled()) and not torch.compiler.is_compiling()
            and not torch.compiler.is_exporting() and not torch.jit.is_tracing())


if triton is not None:

    @triton.jit
    def _expand_buckets_kernel(y_ptr, out_ptr, heads, length, k, stride_b, stride_h, stride_l,
                               BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr):
        n = tl.program_id(0)
        i = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)[:, None]
        j = tl.program_id(2) * BLOCK_J + tl.arange(0, BLOCK_J)[None, :]
        inside = (i < length) & (j < length)
        p = tl.minimum(tl.maximum(j - i, -k), k) + k
        y = y_ptr + (n // heads).to(tl.int64) * stride_b + (n % heads).to(tl.int64) * stride_h
        value = tl.load(y + i * stride_l + p, mask=inside)
        tl.store(out_ptr + n.to(tl.int64) * length * length + i * length + j, value, mask=inside)

    @triton.jit
    def _sum_buckets_kernel(x_ptr, out_ptr, length, k, width, BLOCK_L: tl.constexpr, BLOCK_W: tl.constexpr):
        row = tl.program_id(0)  # n * L + i
        i = row % length
        x = x_ptr + row.to(tl.int64) * length
        low = tl.zeros([BLOCK_L], dtype=tl.float32)
        high = tl.zeros([BLOCK_L], dtype=tl.float32)
        for start in range(0, length, BLOCK_L):
            j = start + tl.arange(0, BLOCK_L)
            value = tl.load(x + j, mask=j < length, other=0.0).to(tl.float32)
            low += tl.where(j <= i - k, value, 0.0)  # bucket 0: keys at distance K or more to the left
            high += tl.where(j >= i + k, value, 0.0)  # bucket 2K: to the right
        p = tl.arange(0, BLOCK_W)
        j = i + p - k
        band = tl.load(x + j, mask=(p > 0) & (p < 2 * k) & (j >= 0) & (j < length), other=0.0).to(tl.float32)
        band = tl.where(p == 0, tl.sum(low, 0), band)
        band = tl.where(p == 2 * k, tl.sum(high, 0), band)
        tl.store(out_ptr + row.to(tl.int64) * width + p, band.to(out_ptr.dtype.element_ty), mask=p < width)


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
    block_i, block_j = 16, min(128, triton.next_power_of_2(length))
    grid = (batch * heads, triton.cdiv(length, block_i), triton.cdiv(length, block_j))
    _expand_buckets_kernel[grid](y, out, heads, length, max_relative_position, y.stride(0), y.stride(1),
                                 y.stride(2), BLOCK_I=block_i, BLOCK_J=block_j)
    return out


def sum_buckets(x: torch.Tensor, max_relative_position: int, width: int) -> torch.Tensor:
    """[..., L, L] (contiguous) -> [..., L, W]: the keys of each query summed by bucket, zero past 2K."""
    length = x.shape[-1]
    out = torch.empty(*x.shape[:-1], width, dtype=x.dtype, device=x.device)
    rows = x.numel() // length
    _sum_buckets_kernel[(rows,)](x, out, length, max_relative_position, width,
                                 BLOCK_L=min(1024, triton.next_power_of_2(length)),
                                 BLOCK_W=triton.next_power_of_2(width))
    return out
