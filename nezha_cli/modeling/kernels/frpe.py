"""NEZHA's relative attention without [L, L] tensors: the fused Triton kernel and the one-SDPA-call form.

Both compute exactly the attention of :mod:`nezha_cli.modeling.relative_attention` (``shared/design/
frpe-fused-attention.md`` derives them): the relative vector of query i and key j is a_ij = E[clip(j - i, -K, K)
+ K], a sinusoid, so inside the band it is a rotation of a per-key vector, a_ij = R(i) e_j with e_j = PE(j + K).

* :func:`sdpa_attention`: for L <= K + 1 (every pair in the band) one call of
  ``torch.nn.functional.scaled_dot_product_attention`` with head size 2d: queries [q, R^T q], keys [k, e], values
  [v, e]; the output's second half is turned back by R(i) and added. SDPA's dropout drops the same P on both halves.
* :func:`fused_attention`: any L, FlashAttention-2 style (:mod:`.frpe_triton`): forward and backward kernels with
  an online softmax, attention dropout from Philox counters regenerated in the backward, registered as the custom
  op ``nezha::frpe_attention`` (fake implementation and autograd) so that torch.compile treats it like any op.

Which one serves a call is decided in :mod:`.dispatch` (:func:`~.dispatch.attention_path`).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def frequencies(depth: int) -> torch.Tensor:
    """w_k = 10000^(-2k/d), k = 0 .. d/2 - 1, in float64 (the table's div_term)."""
    return torch.exp(torch.arange(0, depth, 2, dtype=torch.float64) * (-math.log(10000.0) / depth))


def sinusoid(positions: torch.Tensor, depth: int) -> torch.Tensor:
    """PE(x) for each position: [..., d] float64, sin in the even columns and cos in the odd ones."""
    angle = positions.to(torch.float64)[..., None] * frequencies(depth).to(positions.device)
    return torch.stack((torch.sin(angle), torch.cos(angle)), -1).flatten(-2)


def rotate(x: torch.Tensor, positions: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """R(i) x per row (R(i)^T x with ``inverse``), in fp32 at least: column pairs (2k, 2k + 1) turned by i w_k.

    ``positions``: [L] or [B, L] absolute positions of x's rows (x: [B, H, L, d]). R(i) PE(x) = PE(x - i).
    """
    angle = positions.to(torch.float64)[..., None] * frequencies(x.shape[-1]).to(positions.device)
    if positions.dim() == 2:
        angle = angle[:, None]  # over the heads
    dtype = torch.promote_types(x.dtype, torch.float32)
    cos, sin = torch.cos(angle).to(dtype), torch.sin(angle).to(dtype)
    if inverse:
        sin = -sin
    even, odd = x[..., 0::2].to(dtype), x[..., 1::2].to(dtype)
    return torch.stack((cos * even - sin * odd, sin * even + cos * odd), -1).flatten(-2)


def key_vectors(length: int, depth: int, max_relative_position: int, device=None, dtype=torch.float32) -> tuple:
    """(e [L, d], C_lo [d], C_hi [d]): e_j = PE(j + K), and the clipped rows E[0] = PE(0), E[2K] = PE(2K).

    Computed from integer positions in float64 (the angles reach L + K radians), rounded once to ``dtype``; in
    eager mode kept for the next call of the same shape (every layer, forward and backward, uses the same ones).
    """
    if torch.compiler.is_compiling():
        return _key_vectors(length, depth, max_relative_position, device, dtype)
    return _cached_key_vectors(length, depth, max_relative_position, torch.device(device or "cpu"), dtype)


@functools.lru_cache(maxsize=16)
def _cached_key_vectors(length, depth, max_relative_position, device, dtype) -> tuple:
    return _key_vectors(length, depth, max_relative_position, device, dtype)


def _key_vectors(length, depth, max_relative_position, device, dtype) -> tuple:
    k = max_relative_position
    e = sinusoid(torch.arange(length, device=device) + k, depth)
    ends = sinusoid(torch.tensor([0, 2 * k], device=device), depth)
    return e.to(dtype), ends[0].to(dtype), ends[1].to(dtype)


# ------------------------------------------------------------------------------------------ one SDPA call


def sdpa_attention(query, key, value, attention_mask, max_relative_position: int, dropout_p: float = 0.0,
                   scale: float = 1.0, query_positions: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(scale (q.k + q.a) + mask) (v + a) for L <= K + 1 keys, as one SDPA call of head size 2d.

    ``attention_mask``: additive, broadcastable to [B, H, Q, L] (the model's extended mask), or None.
    ``query_positions`` ([B, Q]): the positions of the query rows when they are some rows of the sequence
    (default: all of them, 0 .. L - 1).
    """
    length, depth = key.shape[-2:]
    if length > max_relative_position + 1:
        raise ValueError(f"the one-call form needs L <= K + 1 (L = {length}, K = {max_relative_position})")
    positions = torch.arange(length, device=query.device) if query_positions is None else query_positions
    e = key_vectors(length, depth, max_relative_position, query.device, query.dtype)[0]
    e = e.expand(*key.shape[:-2], length, depth)
    query = torch.cat([query, rotate(query, positions, inverse=True).to(query.dtype)], -1)
    with _sdpa_backends(query):
        out = F.scaled_dot_product_attention(query, torch.cat([key, e], -1), torch.cat([value, e], -1),
                                             attn_mask=attention_mask, dropout_p=dropout_p, scale=scale)
    return (out[..., :depth] + rotate(out[..., depth:], positions)).to(value.dtype)


def _sdpa_backends(x: torch.Tensor):
    """On the CPU the math backend: the fused CPU backend's backward is wrong on a row with no valid key under the
    finite finfo.min mask (its stored log-sum-exp loses log L; ``shared/design/frpe-fused-attention.md``, 7)."""
    if x.device.type == "cpu":
        return torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH)
    return contextlib.nullcontext()


# ----------------------------------------------------------------------------------------- fused kernel


def _kernels():
    """The Triton kernels, refused where the installed Triton would abort the process compiling them."""
    if not interpreted():
        from nezha_cli.modeling.kernels.dispatch import triton_too_old

        reason = triton_too_old()
        if reason is not None:
            raise RuntimeError(f"fused attention: {reason}")
    from nezha_cli.modeling.kernels import frpe_triton

    return frpe_triton


def interpreted() -> bool:
    """Whether Triton runs its kernels on the CPU through its interpreter (``TRITON_INTERPRET=1``: tests)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


# Tile sizes and warps of the three kernels (benchmarks/bench_fused_kernel.py times others). Twice FlashAttention's
# live tiles (q and q', two accumulators, the region masks): with 4 warps ptxas spills 0.8-1.5 KB per thread on
# sm_90, with 8 warps 0.15-0.4 KB (benchmarks/bench_kernel_resources.py).
LAUNCH = {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 8}


@dataclass
class _Launch:
    """The kernels' shared arguments for one call: inputs, side tensors, sizes and compile-time flags."""

    query: torch.Tensor
    positions: torch.Tensor  # [B, Q] int32
    c_lo: torch.Tensor
    c_hi: torch.Tensor
    inputs: tuple  # Q, QR, K, V, E, CLO, CHI, QPOS, KEYOK, DEAD, SEED, KEEP_IN
    record: torch.Tensor  # KEEP_OUT
    sizes: tuple
    options: dict

    @classmethod
    def build(cls, query, key, value, key_valid, query_positions, seed, max_relative_position, scale, dropout_p,
              keep, record) -> _Launch:
        query, key, value = (x if x.stride(-1) == 1 else x.contiguous() for x in (query, key, value))
        batch, heads, length_q, depth = query.shape
        length_k = key.shape[-2]
        # e_j, the constants and the rotations depend on positions only: fp32, from float64 angles.
        e, c_lo, c_hi = key_vectors(length_k, depth, max_relative_position, query.device)
        if query_positions is None:
            query_positions = torch.arange(length_q, device=query.device).expand(batch, length_q)
        positions = query_positions.to(torch.int32).contiguous()
        if key_valid is None:
            key_valid = torch.ones(batch, length_k, dtype=torch.bool, device=query.device)
        dead = ~key_valid.any(-1)
        keyok = (key_valid | dead[:, None]).to(torch.int8).contiguous()  # no valid key: uniform over all of them
        query_rot = rotate(query, positions, inverse=True).to(query.dtype).contiguous()  # q' = R(i)^T q
        keep_in = keep.to(torch.int8).contiguous() if keep is not None else keyok
        strides = [s for t in (query, key, value) for s in t.stride()[:3]]
        block_d = max(16, 1 << (depth - 1).bit_length())
        options = {**LAUNCH, "BLOCK_D": block_d,
                   "DROP": 0 if dropout_p == 0.0 else (2 if keep is not None else 1),
                   # The interpreter multiplies 16-bit blocks wrongly (see frpe_triton._dot).
                   "DOT_F32": interpreted(), "IEEE": query.dtype == torch.float32,
                   # Multiply-adds fused, as FlashAttention's kernels assume, whatever Triton's default
                   # (3.10 turns it off).
                   "enable_fp_fusion": True}
        return cls(query, positions, c_lo, c_hi,
                   (query, query_rot, key, value, e, c_lo, c_hi, positions, keyok, dead.to(torch.int8), seed, keep_in),
                   record if record is not None else keyok,
                   (*strides, heads, length_q, length_k, depth, max_relative_position, scale, dropout_p,
                    1.0 / (1.0 - dropout_p)),
                   options)

    def grid(self, length: int, block: str) -> tuple[int, int]:
        """Programs of a kernel over ``length`` rows in blocks of option ``block`` (BLOCK_M, BLOCK_N), per head."""
        return -(-length // self.options[block]), self.query.shape[0] * self.query.shape[1]


def _launch(kernel, grid, *args, **options):
    kernel[grid](*args, **options)


def _forward(query, key, value, key_valid, query_positions, seed, max_relative_position, scale, dropout_p,
             keep=None, record=None, launch=_launch):
    """(out, lse): out in the inputs' dtype, lse ([B, H, Q] fp32) for the backward.

    ``keep`` ([B, H, Q, L] uint8/bool): a given dropout keep mask instead of Philox (tests); ``record``: an int8
    tensor of that shape to write the mask used into (tests). ``launch``: what runs a kernel (see
    :func:`compile_ahead`).
    """
    run = _Launch.build(query, key, value, key_valid, query_positions, seed, max_relative_position, scale,
                        dropout_p, keep, record)
    u = torch.empty(query.shape, dtype=torch.float32, device=query.device)
    w = torch.empty_like(u)
    lse = torch.empty(query.shape[:-1], dtype=torch.float32, device=query.device)
    launch(_kernels().frpe_forward_kernel, run.grid(query.shape[-2], "BLOCK_M"),
           *run.inputs, run.record, u, w, lse, *run.sizes, RECORD=record is not None, **run.options)
    out = u + rotate(w, run.positions)  # O = U + R(i) W
    return out.to(query.dtype), lse


def _backward(grad, query, key, value, key_valid, query_positions, seed, out, lse, max_relative_position, scale,
              dropout_p, keep=None, record=None, launch=_launch):
    """(dq, dk, dv) in the inputs' dtypes."""
    run = _Launch.build(query, key, value, key_valid, query_positions, seed, max_relative_position, scale,
                        dropout_p, keep, record)
    grad32 = grad.float()
    delta = (grad32 * out.float()).sum(-1).contiguous()  # D_i = dO_i . O_i
    grad_rot = rotate(grad32, run.positions, inverse=True).to(query.dtype).contiguous()  # dO' = R(i)^T dO
    g_lo, g_hi = ((grad32 @ c).contiguous() for c in (run.c_lo, run.c_hi))
    rows = (grad.to(query.dtype).contiguous(), grad_rot, lse, delta, g_lo, g_hi)
    dk = torch.empty(key.shape, dtype=torch.float32, device=query.device)
    dv = torch.empty_like(dk)
    dq = torch.empty(query.shape, dtype=torch.float32, device=query.device)
    dqr = torch.empty_like(dq)
    kernels = _kernels()
    launch(kernels.frpe_backward_kv_kernel, run.grid(key.shape[-2], "BLOCK_N"),
           *run.inputs, run.record, *rows, dk, dv, *run.sizes, RECORD=record is not None, **run.options)
    launch(kernels.frpe_backward_q_kernel, run.grid(query.shape[-2], "BLOCK_M"),
           *run.inputs, *rows, dq, dqr, *run.sizes, **run.options)
    dq = dq + rotate(dqr, run.positions)  # dq_i += R(i) dq'_i
    return dq.to(query.dtype), dk.to(key.dtype), dv.to(value.dtype)


_TRITON_TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.int8: "i8",
                 torch.int32: "i32", torch.int64: "i64"}
_COMPILE_OPTIONS = ("num_warps", "num_stages", "enable_fp_fusion")


def compile_ahead(capability: int, dtype: torch.dtype = torch.bfloat16, dropout_p: float = 0.1,
                  head_size: int = 64, num_warps: int | None = None) -> dict:
    """Compile the forward and backward kernels for CUDA compute capability ``capability`` (80: A100, 90: H100)
    on a machine without a GPU: Triton's CUDA backend and the ptxas that ships with it.

    The kernels get the argument types and compile-time options of a real launch (traced on tiny CPU tensors
    through :func:`_forward` and :func:`_backward`), so this finds what the interpreter cannot: code that does not
    compile for the GPU, or shared memory beyond the device's. Returns {kernel name: Triton's compiled kernel}
    (``.asm["ptx"]``, ``.metadata.shared``). The JIT adds alignment hints of its own at run time, so the GPU's
    binary can differ a little from this one. ``num_warps``: instead of the launch's own (to compare).
    """
    if interpreted():
        raise RuntimeError("compile_ahead needs Triton's compiler; unset TRITON_INTERPRET")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    # Triton 3.3 renamed ASTSource's compile-time constants argument.
    constants_argument = "constexprs" if "constexprs" in inspect.signature(ASTSource).parameters else "constants"

    calls = []

    def record(kernel, grid, *args, **options):
        calls.append((kernel, args, options))

    query = torch.zeros(1, 1, 2, head_size, dtype=dtype)
    seed = torch.zeros(1, dtype=torch.int64)
    out, lse = _forward(query, query, query, None, None, seed, 64, 1.0, dropout_p, launch=record)
    _backward(query, query, query, query, None, None, seed, out, lse, 64, 1.0, dropout_p, launch=record)
    compiled = {}
    for kernel, args, options in calls:
        if num_warps is not None:
            options = {**options, "num_warps": num_warps}
        constants = {k: v for k, v in options.items() if k not in _COMPILE_OPTIONS}
        names = [n for n in kernel.arg_names if n not in constants]
        signature = {n: ("*" + _TRITON_TYPES[a.dtype] if isinstance(a, torch.Tensor)
                         else "fp32" if isinstance(a, float) else "i32") for n, a in zip(names, args, strict=True)}
        signature.update(dict.fromkeys(constants, "constexpr"))
        compiled[kernel.__name__] = triton.compile(
            ASTSource(kernel, signature, **{constants_argument: constants}), target=GPUTarget("cuda", capability, 32),
            options={k: v for k, v in options.items() if k in _COMPILE_OPTIONS})
    return compiled


# The custom op (None for key_valid / query_positions: all keys valid / queries 0 .. Q - 1, see _Launch.build).


@torch.library.custom_op("nezha::frpe_attention", mutates_args=())
def _frpe_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_valid: torch.Tensor | None,
                    query_positions: torch.Tensor | None, seed: torch.Tensor, max_relative_position: int, scale: float,
                    dropout_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    return _forward(query, key, value, key_valid, query_positions, seed, max_relative_position, scale, dropout_p)


@_frpe_attention.register_fake
def _(query, key, value, key_valid, query_positions, seed, max_relative_position, scale, dropout_p):
    return torch.empty_like(query, memory_format=torch.contiguous_format), \
        query.new_empty(query.shape[:-1], dtype=torch.float32)


@torch.library.custom_op("nezha::frpe_attention_backward", mutates_args=())
def _frpe_attention_backward(grad: torch.Tensor, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             key_valid: torch.Tensor | None, query_positions: torch.Tensor | None, seed: torch.Tensor,
                             out: torch.Tensor, lse: torch.Tensor, max_relative_position: int, scale: float,
                             dropout_p: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward(grad, query, key, value, key_valid, query_positions, seed, out, lse, max_relative_position,
                     scale, dropout_p)


@_frpe_attention_backward.register_fake
def _(grad, query, key, value, key_valid, query_positions, seed, out, lse, max_relative_position, scale, dropout_p):
    return (torch.empty_like(query, memory_format=torch.contiguous_format),
            torch.empty_like(key, memory_format=torch.contiguous_format),
            torch.empty_like(value, memory_format=torch.contiguous_format))


def _setup_context(ctx, inputs, output):
    query, key, value, key_valid, query_positions, seed, max_relative_position, scale, dropout_p = inputs
    ctx.save_for_backward(query, key, value, key_valid, query_positions, seed, *output)
    ctx.arguments = (max_relative_position, scale, dropout_p)


def _autograd_backward(ctx, grad_out, grad_lse):
    query, key, value, key_valid, query_positions, seed, out, lse = ctx.saved_tensors
    grads = _frpe_attention_backward(grad_out, query, key, value, key_valid, query_positions, seed, out, lse,
                                     *ctx.arguments)
    return (*grads, None, None, None, None, None, None)


_frpe_attention.register_autograd(_autograd_backward, setup_context=_setup_context)


def fused_attention(query, key, value, key_valid=None, query_positions=None, max_relative_position: int = 64,
                    scale: float = 1.0, dropout_p: float = 0.0) -> torch.Tensor:
    """softmax(scale (q.k + q.a) + padding) (v + a) by the fused kernel: [B, H, Q, d] from [B, H, L, d] k and v.

    ``key_valid``: [B, L] bool (True = a real token), or None; ``query_positions``: [B, Q] absolute positions of the
    query rows (a subset of the sequence), default 0 .. Q - 1. A sequence with no valid key attends uniformly to all
    keys (the additive-mask definition). ``dropout_p``: attention dropout, drawn from Philox with a seed taken from
    torch's generator on the device (seeded runs repeat; gradient checkpointing regenerates the same mask).
    """
    if dropout_p > 0.0:
        seed = torch.randint(0, 2**30, (1,), device=query.device, dtype=torch.int64)
    else:
        seed = torch.zeros(1, dtype=torch.int64, device=query.device)
    return _frpe_attention(query, key, value, None if key_valid is None else key_valid.to(torch.bool),
                           query_positions, seed, max_relative_position, float(scale), float(dropout_p))[0]
