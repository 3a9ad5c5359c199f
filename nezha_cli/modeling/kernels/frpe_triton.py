"""FlashAttention-2-style Triton kernels of NEZHA's relative attention (imported by :mod:`.frpe` at first use).

The algebra is in ``shared/design/frpe-fused-attention.md``: inside the band |j - i| < K the relative vector is a
rotation of a per-key vector, a_ij = R(i) e_j, so q_i.a_ij = q'_i.e_j with q' = R(i)^T q; outside it a_ij is one of
two constants, a per-row score bias and a per-row multiple of a constant on the value side. Each program holds one
block of queries (forward, dq) or keys (dk, dv) and streams the other side through an online softmax, so nothing of
size [L, L] is ever in memory. The rotations of q, of the output and of the gradients are elementwise and done by
the caller in fp32; the kernels see q' (and dO') as an extra input and return R's argument (W, dq') separately.

Regions, per element: lo where j - i <= -K, hi where j - i >= K (the constants; at exactly +-K both forms are exact
since clip(+-K) = +-K), band in between. A key tile with no band element skips the extra d dimensions.

Rows whose sequence has no valid key (an all-padding sequence) follow the project's additive finfo.min mask: all
scores equal, P = 1/L over every key, gradients passed on as if unmasked.
"""

import triton
import triton.language as tl


@triton.jit
def _dot(a, b, DOT_F32: tl.constexpr, IEEE: tl.constexpr):
    # The Triton interpreter (CPU tests) multiplies 16-bit blocks wrongly: there they go in as fp32.
    if DOT_F32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32))
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _program(H):
    """(block index, batch x head, batch, head) of this program: grid (blocks, batch x heads)."""
    bh = tl.program_id(1)
    return tl.program_id(0), bh, bh // H, bh % H


@triton.jit
def _keep(seed, keep_in, keep_out, rows, cols, ok, n_cols, p_drop, DROP: tl.constexpr, RECORD: tl.constexpr):
    """The dropout keep mask of a tile: Philox (DROP 1) from (seed, row * n_cols + col), or given (DROP 2)."""
    offsets = rows[:, None] * n_cols + cols[None, :]
    if DROP == 1:
        keep = tl.rand(seed, offsets) >= p_drop
    else:
        keep = tl.load(keep_in + offsets, mask=ok, other=0) != 0
    if RECORD:
        tl.store(keep_out + offsets, keep.to(tl.int8), mask=ok)
    return keep


@triton.jit
def _scores(q, qr, k_ptrs, e_ptrs, kv_ok, i_pos, j_pos, b_lo, b_hi, i_min, i_max, j0, keyok, dead, scale, K,
            BLOCK_N: tl.constexpr, DOT_F32: tl.constexpr, IEEE: tl.constexpr):
    """S = scale (q.k + q.a) of one tile with -inf at invalid keys, and its lo / hi masks (shared by all passes)."""
    k = tl.load(k_ptrs, mask=kv_ok, other=0.0)
    s = _dot(q, tl.trans(k), DOT_F32, IEEE)
    rel = j_pos[None, :] - i_pos[:, None]
    lo = rel <= -K
    hi = rel >= K
    x = tl.where(lo, b_lo[:, None], tl.where(hi, b_hi[:, None], 0.0))
    if (j0 + BLOCK_N - 1 - i_min > -K) & (j0 - i_max < K):  # some pair of the tile lies in the band
        e = tl.load(e_ptrs, mask=kv_ok, other=0.0).to(qr.dtype)
        x += tl.where(lo | hi, 0.0, _dot(qr, tl.trans(e), DOT_F32, IEEE))
    s = scale * (s + x)
    s = tl.where(dead, 0.0, s)
    s = tl.where(keyok[None, :], s, float("-inf"))
    return s, lo, hi


@triton.jit
def frpe_forward_kernel(Q, QR, Kp, V, E, CLO, CHI, QPOS, KEYOK, DEAD, SEED, KEEP_IN, KEEP_OUT, U, W, LSE,
                        sq_b, sq_h, sq_l, sk_b, sk_h, sk_l, sv_b, sv_h, sv_l,
                        H, LQ, LK, D, K, scale, p_drop, inv_keep,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                        DROP: tl.constexpr, RECORD: tl.constexpr, DOT_F32: tl.constexpr, IEEE: tl.constexpr):
    pid, bh, b, h = _program(H)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < D
    q, qr, i_pos, b_lo, b_hi, i_min, i_max, row_ok, c_lo, c_hi = _query_block(
        Q, QR, QPOS, CLO, CHI, b, h, bh, rows, cols, col_ok, sq_b, sq_h, sq_l, LQ, D)
    q_ok = row_ok[:, None] & col_ok[None, :]
    bhq = bh.to(tl.int64) * LQ
    dead = tl.load(DEAD + b) != 0
    seed = tl.load(SEED) + bh
    keep_in = KEEP_IN + bh.to(tl.int64) * LQ * LK
    keep_out = KEEP_OUT + bh.to(tl.int64) * LQ * LK

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    n_lo = tl.zeros([BLOCK_M], tl.float32)
    n_hi = tl.zeros([BLOCK_M], tl.float32)
    acc_v = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    acc_e = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for j0 in range(0, LK, BLOCK_N):
        j_pos = j0 + tl.arange(0, BLOCK_N)
        j_ok = j_pos < LK
        kv_ok = j_ok[:, None] & col_ok[None, :]
        keyok = tl.load(KEYOK + b.to(tl.int64) * LK + j_pos, mask=j_ok, other=0) != 0
        e_ptrs = E + j_pos[:, None] * D + cols[None, :]
        s, lo, hi = _scores(q, qr, Kp + b.to(tl.int64) * sk_b + h * sk_h + j_pos[:, None] * sk_l + cols[None, :],
                            e_ptrs, kv_ok, i_pos, j_pos, b_lo, b_hi, i_min, i_max, j0, keyok, dead, scale, K,
                            BLOCK_N, DOT_F32, IEEE)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # every key so far invalid
        alpha = tl.exp(m_i - m_safe)
        p = tl.exp(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)  # the normaliser takes P before dropout
        if DROP != 0:
            keep = _keep(seed, keep_in, keep_out, rows, j_pos, row_ok[:, None] & j_ok[None, :], LK, p_drop,
                         DROP, RECORD)
            p = tl.where(keep, p * inv_keep, 0.0)  # one P~ for the values, the band and the constants
        v = tl.load(V + b.to(tl.int64) * sv_b + h * sv_h + j_pos[:, None] * sv_l + cols[None, :], mask=kv_ok,
                    other=0.0)
        acc_v = acc_v * alpha[:, None] + _dot(p.to(v.dtype), v, DOT_F32, IEEE)
        acc_e = acc_e * alpha[:, None]
        n_lo = n_lo * alpha + tl.sum(tl.where(lo, p, 0.0), 1)
        n_hi = n_hi * alpha + tl.sum(tl.where(hi, p, 0.0), 1)
        if (j0 + BLOCK_N - 1 - i_min > -K) & (j0 - i_max < K):
            e = tl.load(e_ptrs, mask=kv_ok, other=0.0).to(v.dtype)
            acc_e += _dot(tl.where(lo | hi, 0.0, p).to(v.dtype), e, DOT_F32, IEEE)
        m_i = m_new
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    u = (acc_v + n_lo[:, None] * c_lo[None, :] + n_hi[:, None] * c_hi[None, :]) / l_safe[:, None]
    out = (bhq + rows[:, None]) * D + cols[None, :]
    tl.store(U + out, u, mask=q_ok)
    tl.store(W + out, acc_e / l_safe[:, None], mask=q_ok)
    tl.store(LSE + bhq + rows, m_i + tl.log(l_safe), mask=row_ok)


@triton.jit
def _query_block(Q, QR, QPOS, CLO, CHI, b, h, bh, rows, cols, col_ok, sq_b, sq_h, sq_l, LQ, D):
    """One block of query rows: q, q', their positions (and extremes), the constant regions' score terms."""
    row_ok = rows < LQ
    q_ok = row_ok[:, None] & col_ok[None, :]
    q = tl.load(Q + b.to(tl.int64) * sq_b + h * sq_h + rows[:, None] * sq_l + cols[None, :], mask=q_ok, other=0.0)
    qr = tl.load(QR + (bh.to(tl.int64) * LQ + rows[:, None]) * D + cols[None, :], mask=q_ok, other=0.0)
    i_pos = tl.load(QPOS + b.to(tl.int64) * LQ + rows, mask=row_ok, other=0)
    i_min = tl.min(tl.where(row_ok, i_pos, 2147483647), 0)
    i_max = tl.max(tl.where(row_ok, i_pos, -2147483647), 0)
    c_lo = tl.load(CLO + cols, mask=col_ok, other=0.0)
    c_hi = tl.load(CHI + cols, mask=col_ok, other=0.0)
    b_lo = tl.sum(q.to(tl.float32) * c_lo[None, :], 1)
    b_hi = tl.sum(q.to(tl.float32) * c_hi[None, :], 1)
    return q, qr, i_pos, b_lo, b_hi, i_min, i_max, row_ok, c_lo, c_hi


@triton.jit
def _row_block(Q, QR, DO, DOR, QPOS, LSE, DELTA, G_LO, G_HI, CLO, CHI, b, h, bh, rows, cols, col_ok,
               sq_b, sq_h, sq_l, LQ, D):
    """What the backward needs of one block of query rows."""
    q, qr, i_pos, b_lo, b_hi, i_min, i_max, row_ok, c_lo, c_hi = _query_block(
        Q, QR, QPOS, CLO, CHI, b, h, bh, rows, cols, col_ok, sq_b, sq_h, sq_l, LQ, D)
    bhq = bh.to(tl.int64) * LQ
    flat = (bhq + rows[:, None]) * D + cols[None, :]
    q_ok = row_ok[:, None] & col_ok[None, :]
    do = tl.load(DO + flat, mask=q_ok, other=0.0)
    dor = tl.load(DOR + flat, mask=q_ok, other=0.0)
    lse = tl.load(LSE + bhq + rows, mask=row_ok, other=0.0)
    delta = tl.load(DELTA + bhq + rows, mask=row_ok, other=0.0)
    g_lo = tl.load(G_LO + bhq + rows, mask=row_ok, other=0.0)
    g_hi = tl.load(G_HI + bhq + rows, mask=row_ok, other=0.0)
    return q, qr, do, dor, i_pos, lse, delta, g_lo, g_hi, b_lo, b_hi, i_min, i_max, row_ok


@triton.jit
def _probabilities(s, lse, lo, hi, do, dor, v, e_ptrs, kv_ok, row_ok, g_lo, g_hi, i_min, i_max, j0, K,
                   BLOCK_N: tl.constexpr, DOT_F32: tl.constexpr, IEEE: tl.constexpr):
    """P = exp(S - lse) and dP~ = dO.(v + a) of one tile."""
    p = tl.where(row_ok[:, None], tl.exp(s - lse[:, None]), 0.0)
    dp = _dot(do, tl.trans(v), DOT_F32, IEEE)
    x = tl.where(lo, g_lo[:, None], tl.where(hi, g_hi[:, None], 0.0))
    if (j0 + BLOCK_N - 1 - i_min > -K) & (j0 - i_max < K):
        e = tl.load(e_ptrs, mask=kv_ok, other=0.0).to(dor.dtype)
        x += tl.where(lo | hi, 0.0, _dot(dor, tl.trans(e), DOT_F32, IEEE))
    return p, dp + x


@triton.jit
def frpe_backward_kv_kernel(Q, QR, Kp, V, E, CLO, CHI, QPOS, KEYOK, DEAD, SEED, KEEP_IN, KEEP_OUT,
                            DO, DOR, LSE, DELTA, G_LO, G_HI, DK, DV,
                            sq_b, sq_h, sq_l, sk_b, sk_h, sk_l, sv_b, sv_h, sv_l,
                            H, LQ, LK, D, K, scale, p_drop, inv_keep,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                            DROP: tl.constexpr, RECORD: tl.constexpr, DOT_F32: tl.constexpr, IEEE: tl.constexpr):
    # One program per block of keys: dk and dv summed over every query block.
    pid, bh, b, h = _program(H)
    j0 = pid * BLOCK_N
    j_pos = j0 + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_D)
    j_ok = j_pos < LK
    col_ok = cols < D
    kv_ok = j_ok[:, None] & col_ok[None, :]
    k_ptrs = Kp + b.to(tl.int64) * sk_b + h * sk_h + j_pos[:, None] * sk_l + cols[None, :]
    v = tl.load(V + b.to(tl.int64) * sv_b + h * sv_h + j_pos[:, None] * sv_l + cols[None, :], mask=kv_ok, other=0.0)
    e_ptrs = E + j_pos[:, None] * D + cols[None, :]
    keyok = tl.load(KEYOK + b.to(tl.int64) * LK + j_pos, mask=j_ok, other=0) != 0
    dead = tl.load(DEAD + b) != 0
    seed = tl.load(SEED) + bh
    keep_in = KEEP_IN + bh.to(tl.int64) * LQ * LK
    keep_out = KEEP_OUT + bh.to(tl.int64) * LQ * LK
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for i0 in range(0, LQ, BLOCK_M):
        rows = i0 + tl.arange(0, BLOCK_M)
        q, qr, do, dor, i_pos, lse, delta, g_lo, g_hi, b_lo, b_hi, i_min, i_max, row_ok = _row_block(
            Q, QR, DO, DOR, QPOS, LSE, DELTA, G_LO, G_HI, CLO, CHI, b, h, bh, rows, cols, col_ok,
            sq_b, sq_h, sq_l, LQ, D)
        s, lo, hi = _scores(q, qr, k_ptrs, e_ptrs, kv_ok, i_pos, j_pos, b_lo, b_hi, i_min, i_max, j0, keyok, dead,
                            scale, K, BLOCK_N, DOT_F32, IEEE)
        p, dp = _probabilities(s, lse, lo, hi, do, dor, v, e_ptrs, kv_ok, row_ok, g_lo, g_hi, i_min, i_max, j0, K,
                               BLOCK_N, DOT_F32, IEEE)
        pd = p
        if DROP != 0:
            keep = _keep(seed, keep_in, keep_out, rows, j_pos, row_ok[:, None] & j_ok[None, :], LK, p_drop,
                         DROP, RECORD)
            pd = tl.where(keep, p * inv_keep, 0.0)
            dp = tl.where(keep, dp * inv_keep, 0.0)
        dv += _dot(tl.trans(pd).to(do.dtype), do, DOT_F32, IEEE)
        ds = p * (dp - delta[:, None])
        dk += _dot(tl.trans(ds).to(q.dtype), q, DOT_F32, IEEE)
    out = (bh.to(tl.int64) * LK + j_pos[:, None]) * D + cols[None, :]
    tl.store(DK + out, dk * scale, mask=kv_ok)
    tl.store(DV + out, dv, mask=kv_ok)


@triton.jit
def frpe_backward_q_kernel(Q, QR, Kp, V, E, CLO, CHI, QPOS, KEYOK, DEAD, SEED, KEEP_IN,
                           DO, DOR, LSE, DELTA, G_LO, G_HI, DQ, DQR,
                           sq_b, sq_h, sq_l, sk_b, sk_h, sk_l, sv_b, sv_h, sv_l,
                           H, LQ, LK, D, K, scale, p_drop, inv_keep,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                           DROP: tl.constexpr, DOT_F32: tl.constexpr, IEEE: tl.constexpr):
    # One program per block of queries: dq (with the constants' part) and dq', the gradient of q' = R(i)^T q.
    pid, bh, b, h = _program(H)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < D
    q, qr, do, dor, i_pos, lse, delta, g_lo, g_hi, b_lo, b_hi, i_min, i_max, row_ok = _row_block(
        Q, QR, DO, DOR, QPOS, LSE, DELTA, G_LO, G_HI, CLO, CHI, b, h, bh, rows, cols, col_ok, sq_b, sq_h, sq_l, LQ, D)
    dead = tl.load(DEAD + b) != 0
    seed = tl.load(SEED) + bh
    keep_in = KEEP_IN + bh.to(tl.int64) * LQ * LK
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    dqr = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    r_lo = tl.zeros([BLOCK_M], tl.float32)
    r_hi = tl.zeros([BLOCK_M], tl.float32)
    for j0 in range(0, LK, BLOCK_N):
        j_pos = j0 + tl.arange(0, BLOCK_N)
        j_ok = j_pos < LK
        kv_ok = j_ok[:, None] & col_ok[None, :]
        k_ptrs = Kp + b.to(tl.int64) * sk_b + h * sk_h + j_pos[:, None] * sk_l + cols[None, :]
        v = tl.load(V + b.to(tl.int64) * sv_b + h * sv_h + j_pos[:, None] * sv_l + cols[None, :], mask=kv_ok,
                    other=0.0)
        e_ptrs = E + j_pos[:, None] * D + cols[None, :]
        keyok = tl.load(KEYOK + b.to(tl.int64) * LK + j_pos, mask=j_ok, other=0) != 0
        s, lo, hi = _scores(q, qr, k_ptrs, e_ptrs, kv_ok, i_pos, j_pos, b_lo, b_hi, i_min, i_max, j0, keyok, dead,
                            scale, K, BLOCK_N, DOT_F32, IEEE)
        p, dp = _probabilities(s, lse, lo, hi, do, dor, v, e_ptrs, kv_ok, row_ok, g_lo, g_hi, i_min, i_max, j0, K,
                               BLOCK_N, DOT_F32, IEEE)
        if DROP != 0:
            keep = _keep(seed, keep_in, keep_in, rows, j_pos, row_ok[:, None] & j_ok[None, :], LK, p_drop, DROP,
                         False)
            dp = tl.where(keep, dp * inv_keep, 0.0)
        ds = p * (dp - delta[:, None])
        k = tl.load(k_ptrs, mask=kv_ok, other=0.0)
        dq += _dot(ds.to(k.dtype), k, DOT_F32, IEEE)
        r_lo += tl.sum(tl.where(lo, ds, 0.0), 1)
        r_hi += tl.sum(tl.where(hi, ds, 0.0), 1)
        if (j0 + BLOCK_N - 1 - i_min > -K) & (j0 - i_max < K):
            e = tl.load(e_ptrs, mask=kv_ok, other=0.0).to(k.dtype)
            dqr += _dot(tl.where(lo | hi, 0.0, ds).to(k.dtype), e, DOT_F32, IEEE)
    c_lo = tl.load(CLO + cols, mask=col_ok, other=0.0)
    c_hi = tl.load(CHI + cols, mask=col_ok, other=0.0)
    dq += r_lo[:, None] * c_lo[None, :] + r_hi[:, None] * c_hi[None, :]
    out = (bh.to(tl.int64) * LQ + rows[:, None]) * D + cols[None, :]
    q_ok = row_ok[:, None] & col_ok[None, :]
    tl.store(DQ + out, dq * scale, mask=q_ok)
    tl.store(DQR + out, dqr * scale, mask=q_ok)
