"""Functional relative positional encoding (NEZHA, section 3.2) without any [L, L, head_size] tensor.

With K = max_relative_position, a query at position i and a key at j have the relative index
``p(i, j) = clip(j - i, -K, K) + K`` and the relative vector ``a_ij = E[p(i, j)]``, where E is a fixed
``(2K + 1) x head_size`` sinusoid table. Attention is

    scores_ij = (q_i . k_j + q_i . a_ij) / sqrt(d)        z_i = sum_j P_ij (v_j + a_ij)

transformers (like the released TF code) gathers E into an [L, L, d] tensor per layer. There are only 2K + 1
distinct a_ij, so here the relative terms go through the 2K + 1 "buckets":

* key side: ``q @ E^T`` gives each query's 2K + 1 possible scores, which are gathered into [L, L]
  (:func:`expand_buckets`), and ``q @ k^T`` is accumulated onto them in place;
* value side: P is summed into buckets (:func:`sum_buckets`: a band gather for |j - i| < K and prefix/suffix sums
  for the two clipped buckets), then multiplied by E.

The backward of one is the other, so both directions cost one gather and one cumulative sum over [L, L] beyond
plain attention; custom autograd functions keep autograd from materialising anything larger. Extra memory is
O(B.H.L.(2K + 1)) and there is no length cap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


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
    max_relative_position: int
    bucket_index: torch.Tensor  # [L, L]: p(i, j)
    band_index: torch.Tensor  # [L, 2K-1]: j = i + p - K for the unclipped buckets p = 1 .. 2K-1 (clamped to [0, L))
    band_valid: torch.Tensor  # [L, 2K-1]: 1.0 where that j exists
    low_index: torch.Tensor  # [L, 1]: i - K (clamped), the last key of bucket 0
    low_valid: torch.Tensor  # [L, 1]: 1.0 where i - K >= 0
    high_index: torch.Tensor  # [L, 1]: min(i + K - 1, L - 1), the last key before bucket 2K

    @classmethod
    def build(cls, length: int, max_relative_position: int, device=None) -> RelativePositions:
        k = max_relative_position
        i = torch.arange(length, device=device)[:, None]
        band = i + torch.arange(1 - k, k, device=device)[None, :]
        return cls(
            length=length,
            max_relative_position=k,
            bucket_index=relative_position_index(length, k, device),
            band_index=band.clamp(0, length - 1),
            band_valid=((band >= 0) & (band < length)).float(),
            low_index=(i - k).clamp(min=0),
            low_valid=(i >= k).float(),
            high_index=(i + k - 1).clamp(max=length - 1),
        )


def expand_buckets(y: torch.Tensor, positions: RelativePositions) -> torch.Tensor:
    """[..., L, 2K+1] -> [..., L, L] with out[i, j] = y[i, p(i, j)]."""
    return y.gather(-1, positions.bucket_index.expand(*y.shape[:-1], positions.length))


def sum_buckets(x: torch.Tensor, positions: RelativePositions) -> torch.Tensor:
    """[..., L, L] -> [..., L, 2K+1] with out[i, p] = sum of x[i, j] over the j where p(i, j) = p."""
    shape = x.shape[:-1]
    band = x.gather(-1, positions.band_index.expand(*shape, positions.band_index.shape[-1]))
    band = band * positions.band_valid.to(x.dtype)
    # The clipped buckets 0 and 2K collect every key at distance >= K: a prefix and a suffix sum of the row
    # (accumulated in at least fp32: these are long sums).
    cum = x.cumsum(-1, dtype=torch.promote_types(x.dtype, torch.float32))
    low = cum.gather(-1, positions.low_index.expand(*shape, 1)) * positions.low_valid.to(cum.dtype)
    high = cum[..., -1:] - cum.gather(-1, positions.high_index.expand(*shape, 1))
    return torch.cat([low.to(x.dtype), band, high.to(x.dtype)], dim=-1)


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
        table = table.to(query.dtype)
        scores = expand_buckets(torch.matmul(query, table.t()), positions)
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
        table = table.to(value.dtype)
        context = torch.matmul(sum_buckets(probs, positions).to(value.dtype), table)
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
        grad_probs = expand_buckets(torch.matmul(grad, table.t()), ctx.positions)
        _baddbmm_(grad_probs, grad, value.transpose(-1, -2))
        grad_value = torch.matmul(probs.transpose(-1, -2), grad)
        return grad_probs.to(ctx.probs_dtype), grad_value, None, None


def relative_scores(query, key, table, positions: RelativePositions) -> torch.Tensor:
    """q_i . k_j + q_i . a_ij for all i, j: [..., L, d] x [..., L, d] -> [..., L, L]."""
    if torch.is_grad_enabled() and (query.requires_grad or key.requires_grad):
        return _RelativeScores.apply(query, key, table, positions)
    # Inference (and ONNX export) takes the plain ops: same math, nothing to save for backward.
    table = table.to(query.dtype)
    return torch.matmul(query, key.transpose(-1, -2)) + expand_buckets(torch.matmul(query, table.t()), positions)


def relative_context(probs, value, table, positions: RelativePositions) -> torch.Tensor:
    """sum_j P_ij (v_j + a_ij) for all i: [..., L, L] x [..., L, d] -> [..., L, d]."""
    if torch.is_grad_enabled() and (probs.requires_grad or value.requires_grad):
        return _RelativeContext.apply(probs, value, table, positions)
    by_bucket = sum_buckets(probs, positions).to(value.dtype)
    return torch.matmul(probs.to(value.dtype), value) + torch.matmul(by_bucket, table.to(value.dtype))
