"""Kernels for the two memory-bound steps of the relative attention, on the GPU (Triton) and the CPU (C).

:func:`~nezha_cli.modeling.relative_attention.expand_buckets` (bucket scores to [L, L]) and
:func:`~nezha_cli.modeling.relative_attention.sum_buckets` ([L, L] to bucket sums) each take several PyTorch ops:
a gather that also reads an [L, L] index, or a band read plus block, corner and row sums with their masks, each a
kernel launch (or a pass of the CPU's thread pool) and a pass over memory. Here each is one kernel and one pass.
They compute the same values (the clipped buckets' sums in fp32, rounded once) and serve in eager mode, outside
torch.compile, torch.export and tracing; everything else takes the PyTorch ops.

* CUDA tensors (fp32/bf16/fp16) where Triton is installed (it ships with PyTorch's CUDA wheels): ``relative_triton``,
  imported at the first CUDA tensor. ``NEZHA_TRITON=0`` in the environment turns them off.
* CPU tensors (fp32/bf16) on Linux with a C compiler: ``relative_cpu.c``, compiled at the first CPU tensor
  (a quarter of a second, then cached; see :mod:`~nezha_cli.modeling.kernels.relative_cpu`). ``NEZHA_CPU_KERNELS=0``
  turns them off.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.metadata
import importlib.util
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

ENABLED = os.environ.get("NEZHA_TRITON", "1") != "0"
CPU_ENABLED = os.environ.get("NEZHA_CPU_KERNELS", "1") != "0"
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_CPU_DTYPES = (torch.float32, torch.bfloat16)


@dataclass(frozen=True)
class Backend:
    """One device's kernels.

    ``expand_buckets(y, length, K)``: [..., L, W'] -> [..., L, L], out[i, j] = y[i, clip(j - i, -K, K) + K]; ``y``
    may be a strided view (the heads of one [B, L, H, W'] product) as long as its last dimension is contiguous.
    ``sum_buckets(x, K, width, dtype)``: [..., L, L] (contiguous) -> [..., L, width] in ``dtype``: the keys of each
    query summed by bucket, zero past 2K.
    """

    name: str
    expand_buckets: Callable[[torch.Tensor, int, int], torch.Tensor]
    sum_buckets: Callable[[torch.Tensor, int, int, torch.dtype], torch.Tensor]


def backend(x: torch.Tensor) -> Backend | None:
    """The kernels that serve ``x``, or None (the PyTorch ops).

    Only where no autograd graph is to be recorded (the attention's autograd functions call them with none; a direct
    caller that differentiates through them gets the PyTorch ops).
    """
    if (x.requires_grad and torch.is_grad_enabled()) or torch.compiler.is_compiling() \
            or torch.compiler.is_exporting() or torch.jit.is_tracing():
        return None
    if x.is_cuda:
        return TRITON if ENABLED and x.dtype in _DTYPES and _triton() is not None else None
    if x.device.type == "cpu":
        return CPU if CPU_ENABLED and x.dtype in _CPU_DTYPES and _cpu() is not None else None
    return None


def available(x: torch.Tensor) -> bool:
    """Whether some kernels serve ``x`` (see :func:`backend`)."""
    return backend(x) is not None


@functools.cache
def _triton():
    """The module of jit kernels, or None without Triton (CPU-only installs)."""
    try:
        from nezha_cli.modeling.kernels import relative_triton as _relative_triton
    except ImportError:
        return None
    return _relative_triton


@functools.cache
def _cpu() -> ctypes.CDLL | None:
    from nezha_cli.modeling.kernels import relative_cpu as _relative_cpu

    return _relative_cpu.load()


def _next_power_of_2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def _as_heads(y: torch.Tensor) -> torch.Tensor:
    """y as [B, H, L, W'] with a contiguous last dimension, without a copy where it has one."""
    if y.stride(-1) != 1:
        y = y.contiguous()
    return y if y.dim() == 4 else y.reshape(-1, 1, *y.shape[-2:])


def _triton_expand_buckets(y: torch.Tensor, length: int, max_relative_position: int) -> torch.Tensor:
    lead = y.shape[:-2]
    y = _as_heads(y)
    batch, heads = y.shape[:2]
    out = torch.empty(*lead, length, length, dtype=y.dtype, device=y.device)
    block_i, block_j = 16, min(128, _next_power_of_2(length))
    grid = (batch * heads, -(-length // block_i), -(-length // block_j))
    _triton().expand_buckets_kernel[grid](y, out, heads, length, max_relative_position, y.stride(0),
                                          y.stride(1), y.stride(2), BLOCK_I=block_i, BLOCK_J=block_j)
    return out


def _triton_sum_buckets(x: torch.Tensor, max_relative_position: int, width: int, dtype: torch.dtype) -> torch.Tensor:
    length = x.shape[-1]
    out = torch.empty(*x.shape[:-1], width, dtype=x.dtype, device=x.device)
    rows = x.numel() // length
    _triton().sum_buckets_kernel[(rows,)](x, out, length, max_relative_position, width,
                                          BLOCK_L=min(1024, _next_power_of_2(length)),
                                          BLOCK_W=_next_power_of_2(width))
    return out.to(dtype)


def _cpu_expand_buckets(y: torch.Tensor, length: int, max_relative_position: int) -> torch.Tensor:
    lead = y.shape[:-2]
    y = _as_heads(y)
    out = torch.empty(*lead, length, length, dtype=y.dtype)
    kernel = _cpu().expand_buckets_2 if y.element_size() == 2 else _cpu().expand_buckets_4
    kernel(y.data_ptr(), out.data_ptr(), y.shape[0], y.shape[1], length, max_relative_position, *y.stride()[:3])
    return out


def _cpu_sum_buckets(x: torch.Tensor, max_relative_position: int, width: int, dtype: torch.dtype) -> torch.Tensor:
    length = x.shape[-1]
    if x.dtype == torch.float32 and dtype == torch.bfloat16:
        # The bf16 operand of the bucket GEMM from fp32 probabilities, with no fp32 copy in between.
        kernel, out_dtype = _cpu().sum_buckets_f32_bf16, torch.bfloat16
    else:
        kernel = _cpu().sum_buckets_f32 if x.dtype == torch.float32 else _cpu().sum_buckets_bf16
        out_dtype = x.dtype
    out = torch.empty(*x.shape[:-1], width, dtype=out_dtype)
    kernel(x.data_ptr(), out.data_ptr(), x.numel() // length, length, max_relative_position, width)
    return out.to(dtype)


TRITON = Backend("triton", _triton_expand_buckets, _triton_sum_buckets)


# -- the attention as a whole ---------------------------------------------------------------------------------------

# What each config.attn_implementation (configuration.ATTENTION_IMPLEMENTATIONS; None: automatic, today "eager")
# computes with:
#
# * "eager": the bucket path of relative_attention (with the kernels above where they serve);
# * "sdpa": one scaled_dot_product_attention call of head size 2d where every pair is in the band (L <= K + 1),
#   else eager (frpe.sdpa_attention);
# * "fused": the FlashAttention-style Triton kernel (frpe.fused_attention) on CUDA where Triton is installed (and
#   on the CPU under TRITON_INTERPRET=1, for tests), else eager.
#
# The automatic choice stays eager until the fused kernel has been measured on a GPU (benchmarks/bench_gpu.py): on
# the CPU the one-call form was slower than the buckets (benchmarks/RESULTS.md).


def attention_path(requested: str | None, query: torch.Tensor, key_length: int, max_relative_position: int, *,
                   plain_mask: bool, output_attentions: bool, head_mask) -> str:
    """Which implementation computes one attention call: "eager", "sdpa" or "fused".

    ``plain_mask``: the mask is None or a key padding mask given as ``key_valid`` (3-D, causal or cross-attention
    masks, and float masks with values other than 0/1, stay eager). Both fused forms take query subsets (the last
    layer under ``output_positions``). Probabilities asked for (``output_attentions``), a head mask, tracing and
    export always take the eager path, which has them.
    """
    if (requested in (None, "eager") or output_attentions or head_mask is not None or not plain_mask
            or torch.jit.is_tracing() or torch.compiler.is_exporting()):
        return "eager"
    if requested == "sdpa":
        return "sdpa" if key_length <= max_relative_position + 1 else "eager"
    if requested == "fused" and fused_attention_runs_on(query.device) and query.dtype in _DTYPES:
        return "fused"
    return "eager"


def _triton_version() -> tuple[int, int] | None:
    """(major, minor) of the installed Triton, read from its metadata without importing it; None if absent."""
    if importlib.util.find_spec("triton") is None:
        return None
    for name in ("triton", "pytorch-triton"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found = re.match(r"(\d+)\.(\d+)", importlib.metadata.version(name))
            if found:
                return int(found.group(1)), int(found.group(2))
    return (99, 0)  # importable, version unknown (a source build): assume a recent one


# Looked up once, not imported: under torch.compile the check must be a plain constant.
_TRITON = _triton_version()
_HAS_TRITON = _TRITON is not None
# Triton 3.0 and 3.1 (torch 2.4, 2.5) abort with an assertion when they compile the fused kernels for Hopper
# (sm_90: "mma -> mma layout conversion is only supported on Ampere"); 3.2 to 3.9 compile them for sm_80 and sm_90.
FUSED_MIN_TRITON = (3, 2)


def triton_too_old() -> str | None:
    """Why the installed Triton cannot compile the fused kernels (see FUSED_MIN_TRITON), or None."""
    if _TRITON is None or _TRITON >= FUSED_MIN_TRITON:
        return None
    return (f"the kernel needs Triton {'.'.join(map(str, FUSED_MIN_TRITON))} or newer (torch 2.6 or newer brings "
            f"it); Triton {_TRITON[0]}.{_TRITON[1]} is installed")


def fused_attention_unavailable(device: torch.device) -> str | None:
    """Why the fused Triton kernel cannot serve tensors on ``device``, or None where it can: CUDA with Triton 3.2 or
    newer (``NEZHA_TRITON`` not 0), or the CPU through Triton's interpreter (``TRITON_INTERPRET=1``: tests)."""
    from nezha_cli.modeling.kernels import frpe

    if device.type == "cuda":
        if not ENABLED:
            return "NEZHA_TRITON=0 turns the Triton kernels off"
        if _TRITON is None:
            return "the kernel needs Triton, which is not installed"
        return triton_too_old()
    if device.type == "cpu" and frpe.interpreted() and _HAS_TRITON:
        return None
    return f"the kernel needs a CUDA GPU with Triton; this is a {device.type}"


def fused_attention_runs_on(device: torch.device) -> bool:
    """Whether the fused Triton kernel serves tensors on ``device`` (see :func:`fused_attention_unavailable`)."""
    return fused_attention_unavailable(device) is None


CPU = Backend("cpu", _cpu_expand_buckets, _cpu_sum_buckets)
