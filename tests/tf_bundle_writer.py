"""A TensorFlow checkpoint writer for the tests: ``PREFIX.index`` (a LevelDB-format table) plus
``PREFIX.data-00000-of-00001``, the format :mod:`nezha_cli.interchange.tf_bundle` reads. Test-only: nezha never writes
TensorFlow checkpoints."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch

from nezha_cli.errors import CheckpointError
from nezha_cli.interchange.tf_bundle import (
    DTYPE_CODES,
    FOOTER_SIZE,
    NO_COMPRESSION,
    TABLE_MAGIC,
    BundleEntry,
    crc32c,
    data_file,
    mask,
)


def encode_varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 values take ten bytes, as protobuf writes them
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)



def _field_varint(number: int, value: int) -> bytes:
    return encode_varint(number << 3) + encode_varint(value)


def _field_bytes(number: int, value: bytes) -> bytes:
    return encode_varint(number << 3 | 2) + encode_varint(len(value)) + value


def _field_fixed32(number: int, value: int) -> bytes:
    return encode_varint(number << 3 | 5) + struct.pack("<I", value)



def encode_entry(entry: BundleEntry) -> bytes:
    dims = b"".join(_field_bytes(2, _field_varint(1, d) if d else b"") for d in entry.shape)
    out = _field_varint(1, entry.dtype) + _field_bytes(2, dims)
    if entry.shard_id:
        out += _field_varint(3, entry.shard_id)
    if entry.offset:
        out += _field_varint(4, entry.offset)
    if entry.size:
        out += _field_varint(5, entry.size)
    return out + _field_fixed32(6, entry.crc32c)


def _encode_header(num_shards: int) -> bytes:
    # BundleHeaderProto: num_shards, endianness LITTLE (the default, omitted), VersionDef{producer: 1}.
    return _field_varint(1, num_shards) + _field_bytes(3, _field_varint(1, 1))


def _build_block(items: list[tuple[bytes, bytes]], restart_interval: int) -> bytes:
    out = bytearray()
    restarts: list[int] = []
    previous = b""
    for i, (key, value) in enumerate(items):
        if i % restart_interval == 0:
            restarts.append(len(out))
            shared = 0
        else:
            shared = 0
            while shared < min(len(key), len(previous)) and key[shared] == previous[shared]:
                shared += 1
        out += encode_varint(shared) + encode_varint(len(key) - shared) + encode_varint(len(value))
        out += key[shared:] + value
        previous = key
    restarts = restarts or [0]
    out += b"".join(struct.pack("<I", r) for r in restarts) + struct.pack("<I", len(restarts))
    return bytes(out)


def _append_block(out: bytearray, block: bytes) -> bytes:
    """Append a block with its trailer; return its encoded handle."""
    handle = encode_varint(len(out)) + encode_varint(len(block))
    trailer_type = bytes([NO_COMPRESSION])
    out += block + trailer_type + struct.pack("<I", mask(crc32c(block + trailer_type)))
    return handle


def write_table(path: Path, items: list[tuple[bytes, bytes]], block_size: int = 4096,
                restart_interval: int = 16) -> None:
    """A LevelDB-format table of ``items`` (sorted by key); data blocks are cut after ``block_size`` bytes."""
    out = bytearray()
    index: list[tuple[bytes, bytes]] = []
    pending: list[tuple[bytes, bytes]] = []
    pending_size = 0
    for key, value in sorted(items):
        pending.append((key, value))
        pending_size += len(key) + len(value)
        if pending_size >= block_size:
            # The last key of a block is a valid separator: >= every key in it, < the first key of the next.
            index.append((pending[-1][0], _append_block(out, _build_block(pending, restart_interval))))
            pending, pending_size = [], 0
    if pending:
        index.append((pending[-1][0], _append_block(out, _build_block(pending, restart_interval))))
    metaindex = _append_block(out, _build_block([], restart_interval))
    index_handle = _append_block(out, _build_block(index, 1))
    footer = (metaindex + index_handle).ljust(FOOTER_SIZE - 8, b"\0") + struct.pack("<Q", TABLE_MAGIC)
    out += footer
    Path(path).write_bytes(bytes(out))


def write_bundle(prefix: Path | str, tensors: dict[str, torch.Tensor | np.ndarray], block_size: int = 4096) -> None:
    """Write ``tensors`` as a single-shard TensorFlow checkpoint ``PREFIX.index`` + ``PREFIX.data-00000-of-00001``."""
    prefix = Path(prefix)
    entries: list[tuple[bytes, bytes]] = [(b"", _encode_header(1))]
    offset = 0
    with open(data_file(prefix, 0, 1), "wb") as f:
        for name in sorted(tensors):
            tensor = torch.as_tensor(tensors[name]).contiguous().cpu()
            if tensor.dtype not in DTYPE_CODES:
                raise CheckpointError(f"{name}: dtype {tensor.dtype} cannot be written to a TensorFlow checkpoint")
            raw = tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
            f.write(raw)
            entry = BundleEntry(name=name, dtype=DTYPE_CODES[tensor.dtype], shape=tuple(tensor.shape), shard_id=0,
                                offset=offset, size=len(raw), crc32c=mask(crc32c(raw)))
            entries.append((name.encode("utf-8"), encode_entry(entry)))
            offset += len(raw)
    write_table(Path(f"{prefix}.index"), entries, block_size=block_size)


