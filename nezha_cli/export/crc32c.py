"""CRC-32C (Castagnoli), the checksum of TensorFlow's checkpoint files, in numpy.

A byte-at-a-time loop in Python would take minutes on a NEZHA-large checkpoint. The CRC is linear over GF(2), so
the data is cut into N equal lanes whose CRCs are computed side by side (one numpy step per byte *position*, over
all lanes at once) and then merged pairwise: ``crc(A || B) = shift(crc(A), len(B)) ^ crc(B)``, where ``shift`` is
the linear map "feed this many zero bytes", kept as a 32 x 32 bit matrix. Zero bytes in front do not change a CRC
that starts from 0, which is how uneven lengths are padded (the usual initial value 0xFFFFFFFF is applied by
inverting the first four data bytes, which is equivalent).
"""

from __future__ import annotations

import functools
import math

import numpy as np

_POLY = 0x82F63B78  # reflected Castagnoli polynomial
_MASK_DELTA = 0xA282EAD8


@functools.cache
def _byte_table() -> np.ndarray:
    table = np.zeros(256, dtype=np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (_POLY if c & 1 else 0)
        table[i] = c
    return table


# A linear map on 32-bit CRC states is stored as the images of the 32 unit vectors (python ints).
def _apply(columns: tuple[int, ...], x: int) -> int:
    out = 0
    bit = 0
    while x:
        if x & 1:
            out ^= columns[bit]
        x >>= 1
        bit += 1
    return out


def _compose(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    """a after b."""
    return tuple(_apply(a, column) for column in b)


@functools.cache
def _zero_bytes_operator(n: int) -> tuple[int, ...]:
    """The map state -> CRC state after feeding ``n`` zero bytes."""
    table = _byte_table()
    one = tuple(int(table[(1 << i) & 0xFF]) ^ ((1 << i) >> 8) for i in range(32))
    result = tuple(1 << i for i in range(32))
    power = one
    while n:
        if n & 1:
            result = _compose(power, result)
        power = _compose(power, power)
        n >>= 1
    return result


@functools.cache
def _zero_bytes_tables(n: int) -> np.ndarray:
    """``_zero_bytes_operator(n)`` as four 256-entry lookup tables, one per input byte."""
    columns = np.array(_zero_bytes_operator(n), dtype=np.uint32)
    values = np.arange(256, dtype=np.uint32)
    tables = np.zeros((4, 256), dtype=np.uint32)
    for byte in range(4):
        for bit in range(8):
            tables[byte] ^= np.where((values >> np.uint32(bit)) & np.uint32(1), columns[8 * byte + bit], np.uint32(0))
    return tables


def _apply_vectorized(n: int, x: np.ndarray) -> np.ndarray:
    tables = _zero_bytes_tables(n)
    out = np.zeros_like(x)
    for byte in range(4):
        out ^= tables[byte][(x >> np.uint32(8 * byte)) & np.uint32(0xFF)]
    return out


def crc32c(data: bytes | bytearray | memoryview | np.ndarray) -> int:
    """The CRC-32C of ``data`` (crc32c(b"123456789") == 0xE3069283)."""
    buf = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    n = buf.size
    table = _byte_table()
    if n < 256:
        crc = 0xFFFFFFFF
        for byte in buf.tolist():
            crc = int(table[(crc ^ byte) & 0xFF]) ^ (crc >> 8)
        return crc ^ 0xFFFFFFFF
    # Lanes of a power-of-two length >= sqrt(n): few distinct merge operators over a whole checkpoint (cached).
    lane = 1 << max(4, math.isqrt(n).bit_length())
    lanes = -(-n // lane)
    padded = np.zeros(lanes * lane, dtype=np.uint8)
    start = lanes * lane - n
    padded[start:] = buf
    # Starting the register at 0xFFFFFFFF equals starting at 0 with the first four bytes inverted.
    padded[start:start + 4] ^= np.uint8(0xFF)
    columns = np.ascontiguousarray(padded.reshape(lanes, lane).T)  # row k = byte k of every lane
    state = np.zeros(lanes, dtype=np.uint32)
    for row in columns:
        state = table[(state ^ row) & np.uint32(0xFF)] ^ (state >> np.uint32(8))
    # Merge neighbours until one state is left; zero lanes in front keep the count a power of two.
    count = 1 << (lanes - 1).bit_length()
    state = np.concatenate([np.zeros(count - lanes, dtype=np.uint32), state])
    length = lane
    while state.size > 1:
        state = _apply_vectorized(length, state[0::2]) ^ state[1::2]
        length *= 2
    return int(state[0]) ^ 0xFFFFFFFF


def mask(crc: int) -> int:
    """The "masked" CRC that LevelDB-style tables and TensorFlow store (a CRC of CRC-bearing data stays robust)."""
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def unmask(masked: int) -> int:
    rot = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF
