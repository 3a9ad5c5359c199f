"""The Triton kernels of :mod:`nezha_cli.modeling.kernels.dispatch` (imported there at the first CUDA tensor:
importing Triton takes a few tenths of a second that CPU runs need not pay)."""

import triton
import triton.language as tl


@triton.jit
def expand_buckets_kernel(y_ptr, out_ptr, heads, length, k, stride_b, stride_h, stride_l,
                          BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr):
    # One program per (batch x head, block of BLOCK_I queries, block of BLOCK_J keys).
    n = tl.program_id(0)
    i = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)[:, None]
    j = tl.program_id(2) * BLOCK_J + tl.arange(0, BLOCK_J)[None, :]
    inside = (i < length) & (j < length)
    p = tl.minimum(tl.maximum(j - i, -k), k) + k
    y = y_ptr + (n // heads).to(tl.int64) * stride_b + (n % heads).to(tl.int64) * stride_h
    value = tl.load(y + i * stride_l + p, mask=inside)
    tl.store(out_ptr + n.to(tl.int64) * length * length + i * length + j, value, mask=inside)


@triton.jit
def sum_buckets_kernel(x_ptr, out_ptr, length, k, width, BLOCK_L: tl.constexpr, BLOCK_W: tl.constexpr):
    # One program per query row: the row is read once for the two clipped sums, the band again (from cache).
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
