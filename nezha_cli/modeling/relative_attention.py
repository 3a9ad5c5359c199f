"""Functional relative positional encoding (NEZHA, section 3.2) without any [L, L, head_size] tensor.

With K = max_relative_position, a query at position i and a key at j have the relative index
``p(i, j) = clip(j - i, -K, K) + K`` and the relative vector ``a_ij = E[p(i, j)]``, where E is a fixed
``(2K + 1) x head_size`` sinusoid table. Attention is

    scores_ij = (q_i . k_j + q_i . a_ij) / sqrt(d)        z_i = sum_j P_ij (v_j + a_ij)

transformers (like the released TF code) gathers E into an [L, L, d] tensor per layer. There are only 2K + 1
distinct a_ij, so here the relative terms go through the 2K + 1 "buckets":

* key side: ``q @ E^T`` gives each query's 2K + 1 possible scores, which are gathered into [L, L]
  (:func:`expand_buckets`), and ``q @ k^T`` is accumulated onto them in place;
* value side: P is summed into buckets (:func:`sum_buckets`: the band |j - i| < K read along the diagonals
  (:func:`diagonal_band`); the two clipped buckets as masked sums over two [L - K, L - K] corners when L <= 2K,
  else from block sums and the row sum), then multiplied by E.

A sequence of L <= K tokens clips nothing and uses only the 2L - 1 rows of E around p = K
(:meth:`RelativePositions.reachable`), so its bucket operands are 2L - 1 wide instead of 2K + 1.

The backward of one is the other, so both directions cost one [L, L] gather and one reading pass over [L, L] beyond
plain attention; custom autograd functions keep autograd from materialising anything larger. Bucket operands are
padded to a multiple of 8 columns (:func:`bucket_width`) for aligned GEMMs. Extra memory is O(B.H.L.(2K + 1)) and
there is no length cap. The gather and the bucket sums are one kernel each on CUDA (Triton) and on a Linux CPU
with a C compiler (:mod:`~nezha_cli.modeling.kernels.dispatch`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from nezha_cli.modeling.kernels import dispatch as relative_kernels
from nezha_cli.modeling.kernels import fast_paths


def relative_position_table(max_relative_position: int, depth: int, dtype=torch.float32) -> torch.Tensor:
    """The fixed table E: row p holds sin (even columns) and cos (odd columns) of p / 10000^(2c/depth).

    As in the released NEZHA code and checkpoints, the sinusoid runs over the shifted index p = (j - i) + K in
    [0, 2K], not over j - i itself.
    """
    num_buckets = 2 * max_relative_position + 1
    position = torch.arange(num_buckets, dtype=torch.float32).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, depth, 2, dtype=torch.float32) * (-math.log(10000.0) / depth))
    table = torch.zeros(num_buckets, depth)
    table[:, 0::2] = torch.sin(position * div_term)
    table[:, 1::2] = torch.cos(position * div_term)
    return table.to(dtype)


def relative_position_index(length: int, max_relative_position: int, device=None) -> torch.Tensor:
    """p(i, j) = clip(j - i, -K, K) + K as an [L, L] long tensor."""
    pos = torch.arange(length, device=device)
    distance = pos[None, :] - pos[:, None]
    return distance.clamp(-max_relative_position, max_relative_position) + max_relative_position


@dataclass
class RelativePositions:
    """Index tensors for one sequence length, built once per forward and shared by all layers (O(L^2) ints)."""

    length: int
    # K, the clipping distance, for the indices below; for L <= K the reach min(K, L - 1) instead (see build()).
    max_relative_position: int
    # Each table has one row per query i ([L, ...]; [B, 1, Q, ...] for a subset of queries, see rows()).
    bucket_index: torch.Tensor  # [L, L]: p(i, j)
    band_index: torch.Tensor  # [L, W]: j = i + p - K, the one key of bucket p when unclipped (clamped to [0, L))
    band_valid: torch.Tensor  # [L, W]: 1.0 where that key exists and 0 < p < 2K
    # Bucket 0 (keys j <= i - K) is summed as whole blocks of K keys plus a remainder of < K keys next to the band
    # (None under torch.export, which takes the shape-agnostic prefix sum: see sum_buckets).
    block_mask: torch.Tensor | None  # [L, L // K]: 1.0 for the whole blocks of K keys that lie in bucket 0
    remainder_index: torch.Tensor | None  # [L, K-1]: keys j = i - 2K + 2 + c, c = 0 .. K-2 (clamped to [0, L))
    remainder_valid: torch.Tensor | None  # [L, K-1]: 1.0 for the keys of the remainder
    # For K < L <= 2K (the usual fine-tuning lengths with K = 64): bucket 0 of query K + r holds the keys
    # 0 .. r and bucket 2K of query r the keys K + r .. L - 1, so both are masked row sums over an
    # [L - K, L - K] corner of the matrix (a quarter of it or less). None for other lengths, query rows and export.
    low_mask: torch.Tensor | None = None  # [L - K, L - K]: lower triangle (diagonal included) of ones
    # Its transpose, stored contiguous: multiplying by a transposed view was 0.15-0.25 ms slower per call on CPU.
    high_mask: torch.Tensor | None = None
    table_offset: int = 0  # the first row of the full (2K + 1)-row table E that some (i, j) uses
    query_positions: torch.Tensor | None = None  # [B, Q]: the queries' positions, for a subset of rows (rows())

    def reachable(self, table: torch.Tensor) -> torch.Tensor:
        """The rows of the full table E ([2K + 1, d]) that the buckets here index: all of them, or for a sequence
        shorter than K the 2L - 1 rows around p = K."""
        return table[self.table_offset: self.table_offset + 2 * self.max_relative_position + 1]

    @property
    def width(self) -> int:
        """W: the 2K + 1 buckets padded to a multiple of 8 (see :func:`padded_table`)."""
        return bucket_width(self.max_relative_position)

    def rows(self, index: torch.Tensor) -> RelativePositions:
        """The tables for the queries at ``index`` ([B, Q] positions) against all L keys.

        For a layer that computes only some query rows (the last layer under ``output_positions``): each table is
        per query row, so it is gathered by the query positions, with a heads dimension to broadcast over.
        """
        if self.block_mask is None:
            raise ValueError("query rows are not supported under torch.export")

        def take(table: torch.Tensor) -> torch.Tensor:
            return table[index].unsqueeze(1)  # [B, 1, Q, ...]

        return RelativePositions(
            length=self.length,
            max_relative_position=self.max_relative_position,
            bucket_index=take(self.bucket_index),
            band_index=take(self.band_index),
            band_valid=take(self.band_valid),
            block_mask=take(self.block_mask),
            remainder_index=take(self.remainder_index),
            remainder_valid=take(self.remainder_valid),
            table_offset=self.table_offset,
            query_positions=index,
        )

    @classmethod
    def build(cls, length: int, max_relative_position: int, device=None) -> RelativePositions:
        k = max_relative_position
        offset = 0
        if not torch.compiler.is_exporting():
            # In L tokens no distance exceeds L - 1, so for L <= K nothing is clipped and only the 2L - 1 rows of
            # E around p = K are used: the same indices with K' = L - 1 over those rows give the same attention
            # with narrower bucket GEMMs (at L = 48, K = 64: 96 columns instead of 136). (torch.export keeps K, so
            # that the exported graph does not depend on L.)
            offset = k - max(1, min(k, length - 1))
            k -= offset
        i = torch.arange(length, device=device)[:, None]
        p = torch.arange(bucket_width(k), device=device)[None, :]
        band = i + p - k
        block_mask = remainder_index = remainder_valid = low_mask = high_mask = None
        if not torch.compiler.is_exporting():
            if k < length <= 2 * k:
                low_mask = torch.ones(length - k, length - k, device=device).tril()
                high_mask = low_mask.t().contiguous()
            last = i - k  # the last key of bucket 0
            whole = torch.div(last + 1, k, rounding_mode="floor").clamp(0, length // k)
            # The K - 1 keys up to the last one, in increasing order (a diagonal band, see diagonal_band); those
            # past the whole blocks are the remainder.
            remainder = last - (k - 2) + torch.arange(k - 1, device=device)[None, :]
            block_mask = (torch.arange(length // k, device=device)[None, :] < whole).float()
            remainder_index = remainder.clamp(0, length - 1)
            remainder_valid = ((remainder >= whole * k) & (remainder >= 0)).float()
        return cls(
            length=length,
            max_relative_position=k,
            bucket_index=relative_position_index(length, k, device),
            band_index=band.clamp(0, length - 1),
            band_valid=((band >= 0) & (band < length) & (p > 0) & (p < 2 * k)).float(),
            block_mask=block_mask,
            remainder_index=remainder_index,
            remainder_valid=remainder_valid,
            low_mask=low_mask,
            high_mask=high_mask,
            table_offset=offset,
        )


def bucket_width(max_relative_position: int) -> int:
    """2K + 1 rounded up to a multiple of 8.

    Bucket-sized operands of this width keep GEMM operands aligned (129 columns for K = 64 are not): the kernels on
    CPU and GPU (tensor cores want multiples of 8) run markedly faster. The padding columns hold zeros.
    """
    return -(-(2 * max_relative_position + 1) // 8) * 8


def expand_buckets(y: torch.Tensor, positions: RelativePositions) -> torch.Tensor:
    """[..., L, W'] -> [..., L, L] with out[i, j] = y[i, p(i, j)] (W' >= 2K+1; columns past 2K are never read)."""
    kernels = relative_kernels.backend(y)
    if kernels is not None and positions.bucket_index.dim() == 2:
        return kernels.expand_buckets(y, positions.length, positions.max_relative_position)
    index = positions.bucket_index.expand(*y.shape[:-1], positions.length)
    return fast_paths.gather_last(y, index)


def sum_buckets(x: torch.Tensor, positions: RelativePositions, dtype: torch.dtype | None = None) -> torch.Tensor:
    """[..., L, L] -> [..., L, W] with out[i, p] = sum of x[i, j] over the j where p(i, j) = p (zero for p > 2K),
    in ``dtype`` (default: x's)."""
    dtype = dtype or x.dtype
    kernels = relative_kernels.backend(x)
    if (kernels is not None and positions.band_index.dim() == 2 and x.shape[-2] == positions.length
            and x.is_contiguous()):
        return kernels.sum_buckets(x, positions.max_relative_position, positions.width, dtype)
    return _sum_buckets(x, positions).to(dtype)


def _sum_buckets(x: torch.Tensor, positions: RelativePositions) -> torch.Tensor:
    shape = x.shape[:-1]
    k = positions.max_relative_position
    # Written in place into the one [..., L, W] result: on CPU every extra temporary of this size costs
    # page faults as well as memory traffic.
    out = diagonal_band(x, -k, positions.band_index, positions.band_valid, exact=positions.block_mask is None)
    # The clipped buckets 0 and 2K collect every key at distance >= K (accumulated in at least fp32: long sums).
    acc = torch.promote_types(x.dtype, torch.float32)
    if positions.block_mask is not None and positions.low_mask is not None:
        m = positions.low_mask.shape[0]
        out[..., :k, 0] = 0
        out[..., k:, 0] = _sum_last(x[..., k:, :m] * positions.low_mask.to(x.dtype), acc)  # keys j <= i - K
        out[..., m:, 2 * k] = 0
        out[..., :m, 2 * k] = _sum_last(x[..., :m, k:] * positions.high_mask.to(x.dtype), acc)  # keys j >= i + K
        return out
    if positions.block_mask is None:
        # Under torch.export: a prefix sum over the row, shape-agnostic, so the exported graph keeps L symbolic
        # (the block sums below would tie it to the multiples of K).
        cum = x.cumsum(-1, dtype=acc)
        i = torch.arange(x.shape[-1], device=x.device)[:, None]
        low = cum.gather(-1, (i - k).clamp(min=0).expand(*shape, 1)) * (i >= k).to(acc)  # keys 0 .. i - K
        high = cum[..., -1:] - low - out.sum(-1, keepdim=True, dtype=acc)
    else:
        # No [L, L] prefix sum (a temporary as large as x): bucket 0 is the sum of whole blocks of K keys plus the
        # < K keys left of the band, and bucket 2K is the rest of the row.
        num_blocks = x.shape[-1] // k
        blocks = _sum_last(x[..., : num_blocks * k].unflatten(-1, (num_blocks, k)), acc)  # [..., L, L // K]
        row = blocks.sum(-1, keepdim=True) + x[..., num_blocks * k:].sum(-1, keepdim=True, dtype=acc)
        low = diagonal_band(x, 2 - 2 * k, positions.remainder_index, positions.remainder_valid)
        low = low.sum(-1, keepdim=True, dtype=acc)
        # A masked sum over the few blocks, not a cumsum: CUDA's scan over a short innermost dimension is slow.
        low += (blocks * positions.block_mask).sum(-1, keepdim=True)
        high = row - low - out.sum(-1, keepdim=True, dtype=acc)
    out[..., :1] = low
    out[..., 2 * k:2 * k + 1] = high
    return out


def _sum_last(x: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """x.sum(-1) in ``acc`` (fp32 or wider).

    On CPU, sum(dtype=fp32) of a bf16/fp16 tensor first copies all of it to fp32; the plain sum accumulates in fp32
    too and rounds each result once.
    """
    if x.device.type == "cpu" and x.dtype != acc:
        return x.sum(-1).to(acc)
    return x.sum(-1, dtype=acc)


def diagonal_band(x: torch.Tensor, first: int, index: torch.Tensor, valid: torch.Tensor,
                   exact: bool = False) -> torch.Tensor:
    """[..., L, L] -> [..., L, w]: out[i, c] = x[i, i + first + c] where ``valid[i, c]``, else 0.

    ``index`` ([L, w], or [B, 1, Q, w] for query rows) holds those key positions clamped into [0, L). For a full
    contiguous [L, L] matrix the band is read through a strided view instead of a gather (stride L + 1 follows the
    diagonals; 3-4x faster on CPU): a column past a row's end reads the neighbouring row, which ``valid`` masks. Rows
    whose band would reach outside the tensor, query rows, ``exact`` (torch.export), a differentiated ``x`` (autograd
    cannot go through the strided writes), a TorchScript trace (one graph with or without grad) and torch.compile
    take the gather.
    """
    width = index.shape[-1]
    valid = valid.to(x.dtype)
    length = x.shape[-1]
    if (exact or index.dim() != 2 or x.shape[-2] != length or not x.is_contiguous() or x.numel() == 0
            or (x.requires_grad and torch.is_grad_enabled()) or _tracing()):
        return x.gather(-1, index.expand(*x.shape[:-1], width)).mul_(valid)
    n = x.numel() // (length * length)
    # Rows lo .. hi read only inside the tensor, from the first matrix to the last.
    lo = max(0, -(first // (length + 1)))
    hi = min(length - 1, (length * length - first - width) // (length + 1))
    x3 = x.view(n, length, length)
    out = x.new_empty(*x.shape[:-1], width)
    out3 = out.view(n, length, width)
    if lo <= hi:
        band = x3.as_strided((n, hi + 1 - lo, width), (length * length, length + 1, 1),
                             x3.storage_offset() + lo * (length + 1) + first)
        torch.mul(band, valid[lo:hi + 1], out=out3[:, lo:hi + 1])
    for rows in (slice(0, min(lo, length)), slice(max(hi + 1, lo), length)):
        if rows.start < rows.stop:
            edge = x3[:, rows].gather(-1, index[rows].expand(n, rows.stop - rows.start, width))
            torch.mul(edge, valid[rows], out=out3[:, rows])
    return out


def padded_table(table: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """E with zero rows appended up to :func:`bucket_width` rows, in ``dtype``."""
    rows = bucket_width((table.shape[0] - 1) // 2) - table.shape[0]
    table = table.to(dtype)
    return torch.nn.functional.pad(table, (0, 0, 0, rows)) if rows else table


def bucket_product(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """x @ E^T: [B, H, L, d] -> [B, H, L, W].

    The heads of q (and of the context's gradient) are a transposed view of one [B, L, H * d] projection; the
    product is taken in that layout, with no copy of x (CPU, B 8, H 12, L 128: 0.75 -> 0.55 ms in bf16, 1.48 -> 1.40
    ms in fp32), and the result is a view.
    """
    if x.dim() == 4 and x.transpose(1, 2).is_contiguous():
        # One GEMM over the [B * L * H, d] rows, folded by hand: torch.matmul folds by strides, and with one head
        # (or one token) it broadcasts E over the rows instead: a copy of E per row and a batch of 1-row GEMMs.
        batch, heads, length, depth = x.shape
        product = torch.mm(x.transpose(1, 2).reshape(-1, depth), table.t())
        return product.view(batch, length, heads, -1).transpose(1, 2)
    return torch.matmul(x, table.t())


def _baddbmm_(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """out += a @ b over the leading dimensions, in place (``out`` is contiguous)."""
    out.view(-1, *out.shape[-2:]).baddbmm_(a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:]))
    return out


# The two autograd functions below compute exactly what autograd would from the plain formulas, but write each
# [L, L] result once: the relative term is gathered into a fresh buffer and the q.k (or P.v) product accumulated
# onto it, and the backward of each side uses the other side's primitive. Dtypes follow the q/k/v projections,
# which under autocast are already in the low-precision type.


class _RelativeScores(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, key, table, positions):
        table = padded_table(table, query.dtype)
        scores = expand_buckets(bucket_product(query, table), positions)
        _baddbmm_(scores, query, key.transpose(-1, -2))
        ctx.save_for_backward(query, key, table)
        ctx.positions = positions
        return scores

    @staticmethod
    def backward(ctx, grad):
        query, key, table = ctx.saved_tensors
        grad = grad.to(query.dtype)
        grad_query = torch.matmul(sum_buckets(grad, ctx.positions), table)
        _baddbmm_(grad_query, grad, key)
        grad_key = torch.matmul(grad.transpose(-1, -2), query)
        return grad_query, grad_key, None, None


class _RelativeContext(torch.autograd.Function):
    @staticmethod
    def forward(ctx, probs, value, table, positions):
        table = padded_table(table, value.dtype)
        # The bucket sums read the fp32 probabilities, not their bf16 copy: on an AMX CPU the bf16 gathers and sums
        # were slower (17.7 vs 13.8 ms per core fwd+bwd at L = 128), on an H100 no faster.
        context = torch.matmul(sum_buckets(probs, positions, value.dtype), table)
        probs_lp = probs.to(value.dtype)
        _baddbmm_(context, probs_lp, value)
        ctx.save_for_backward(probs_lp, value, table)
        ctx.positions = positions
        ctx.probs_dtype = probs.dtype
        return context

    @staticmethod
    def backward(ctx, grad):
        probs, value, table = ctx.saved_tensors
        grad = grad.to(value.dtype)
        grad_probs = expand_buckets(bucket_product(grad, table), ctx.positions)
        _baddbmm_(grad_probs, grad, value.transpose(-1, -2))
        grad_value = torch.matmul(probs.transpose(-1, -2), grad)
        return grad_probs.to(ctx.probs_dtype), grad_value, None, None


def _tracing() -> bool:
    """Whether a graph is being recorded (TorchScript trace, torch.compile): the plain ops then, whose autograd the
    tracer derives itself; the autograd functions above exist to save eager memory and passes."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


def relative_scores(query, key, table, positions: RelativePositions) -> torch.Tensor:
    """q_i . k_j + q_i . a_ij for all i, j: [..., L, d] x [..., L, d] -> [..., L, L] (``table``: the full E)."""
    table = positions.reachable(table)
    if torch.is_grad_enabled() and (query.requires_grad or key.requires_grad) and not _tracing():
        return _RelativeScores.apply(query, key, table, positions)
    # Inference (and ONNX export) takes the plain ops: same math, nothing to save for backward.
    relative = expand_buckets(bucket_product(query, padded_table(table, query.dtype)), positions)
    return torch.matmul(query, key.transpose(-1, -2)) + relative


def relative_context(probs, value, table, positions: RelativePositions) -> torch.Tensor:
    """sum_j P_ij (v_j + a_ij) for all i: [..., L, L] x [..., L, d] -> [..., L, d] (``table``: the full E)."""
    table = positions.reachable(table)
    if torch.is_grad_enabled() and (probs.requires_grad or value.requires_grad) and not _tracing():
        return _RelativeContext.apply(probs, value, table, positions)
    by_bucket = sum_buckets(probs, positions, value.dtype)
    return torch.matmul(probs.to(value.dtype), value) + torch.matmul(by_bucket, padded_table(table, value.dtype))
