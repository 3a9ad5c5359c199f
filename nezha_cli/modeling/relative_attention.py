"""Functional relative positional encoding (NEZHA, section 3.2) without any [L, L, head_size] tensor.

With K = max_relative_position and a query at position i, a key at j has relative index
``p(i, j) = clip(j - i, -K, K) + K`` and relative vector ``a_ij = E[p(i, j)]``, where E is a fixed
``(2K + 1) x head_size`` sinusoid table. Attention is

    scores_ij = (q_i . k_j + q_i . a_ij) / sqrt(d)        z_i = sum_j P_ij (v_j + a_ij)

transformers (and the released TF code) gather E into an [L, L, d] tensor per layer. There are only 2K + 1
distinct a_ij, so here:

* key side: ``q @ E^T`` gives the 2K + 1 possible scores of each query; they are laid out by relative offset
  and *skewed* (a reshape of a padded buffer) so that entry (i, j) lands on offset j - i;
* value side: P is un-skewed the same way and its columns summed into the 2K + 1 buckets, then ``@ E``.

Both are views, pads and sums (no scatter), so the backward pass is as cheap as the forward; memory is
O(B.H.L.(2L + 2K)), never O(L^2.d), and there is no length cap.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def relative_position_table(max_relative_position: int, depth: int, dtype=torch.float32) -> torch.Tensor:
    """The fixed table E: row p holds sin (even columns) and cos (odd columns) of p / 10000^(2c/depth).

    As in the released NEZHA code and checkpoints the sinusoid runs over the shifted index p = (j - i) + K in
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
    """p(i, j) = clip(j - i, -K, K) + K as an [L, L] long tensor (for references and tests; not used in forward)."""
    pos = torch.arange(length, device=device)
    distance = pos[None, :] - pos[:, None]
    return distance.clamp(-max_relative_position, max_relative_position) + max_relative_position


def _skew(x: torch.Tensor) -> torch.Tensor:
    """[..., L, 2L-1] indexed by offset o = c - (L-1)  ->  [..., L, L] with out[i, j] = x[i, (j - i) + L - 1].

    Row i of the result starts L-1-i columns into row i of x; reading the flat buffer with a row stride of 2L-2
    instead of 2L-1 shifts each row one column left of the previous one.
    """
    length = x.shape[-2]
    if length == 1:
        return x
    flat = x.flatten(-2)[..., length - 1 : length - 1 + length * (2 * length - 2)]
    return flat.unflatten(-1, (length, 2 * length - 2))[..., :length]


def _unskew(p: torch.Tensor) -> torch.Tensor:
    """Inverse layout of :func:`_skew`: [..., L, L] -> [..., L, 2L-1] with out[i, (j - i) + L - 1] = p[i, j]."""
    length = p.shape[-1]
    if length == 1:
        return p
    # Pad each row to 2L-1 and read the flat buffer, shifted right by L-1, with a row stride of 2L: each row
    # lands one column further right than the previous one, so p[i, j] reaches column (j - i) + L - 1, and the
    # padding supplies the zeros wherever j falls outside [0, L).
    shifted = F.pad(F.pad(p, (0, length - 1)).flatten(-2), (length - 1, 1))
    return shifted.unflatten(-1, (length, 2 * length))[..., : 2 * length - 1]


def relative_key_scores(query: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """q_i . a_ij for all i, j: [..., L, d] x [2K+1, d] -> [..., L, L]."""
    length = query.shape[-2]
    k = (table.shape[0] - 1) // 2
    by_bucket = torch.matmul(query, table.transpose(0, 1).to(query.dtype))  # [..., L, 2K+1]
    if length - 1 <= k:
        by_offset = by_bucket[..., k - length + 1 : k + length]
    else:
        # Offsets beyond +-K reuse the edge buckets (the clip).
        edge = length - 1 - k
        first = by_bucket[..., :1].expand(*by_bucket.shape[:-1], edge)
        last = by_bucket[..., -1:].expand(*by_bucket.shape[:-1], edge)
        by_offset = torch.cat([first, by_bucket, last], dim=-1)
    return _skew(by_offset)


def relative_value_context(probs: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """sum_j P_ij a_ij for all i: [..., L, L] x [2K+1, d] -> [..., L, d]."""
    length = probs.shape[-1]
    k = (table.shape[0] - 1) // 2
    by_offset = _unskew(probs)  # [..., L, 2L-1]
    if length - 1 <= k:
        by_bucket = F.pad(by_offset, (k - length + 1, k - length + 1))
    else:
        by_bucket = torch.cat(
            [
                by_offset[..., : length - k].sum(-1, keepdim=True),  # offsets <= -K
                by_offset[..., length - k : length - 1 + k],
                by_offset[..., length - 1 + k :].sum(-1, keepdim=True),  # offsets >= +K
            ],
            dim=-1,
        )
    return torch.matmul(by_bucket, table.to(by_bucket.dtype))
