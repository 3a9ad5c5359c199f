"""TensorFlow checkpoints (the "tensor bundle" format) read without TensorFlow.

A checkpoint ``PREFIX`` is ``PREFIX.index`` plus ``PREFIX.data-00000-of-0000N``:

* ``.index`` is an immutable sorted table in the LevelDB format: data blocks of prefix-compressed key/value
  entries with restart points, an index block pointing at them, a metaindex block (empty here) and a 48-byte
  footer ending in a magic number. Every block carries a 5-byte trailer: compression type and the masked CRC-32C
  of the block. The key ``""`` holds a ``BundleHeaderProto``; every other key is a tensor name whose value is a
  ``BundleEntryProto`` (dtype, shape, shard, offset, size, masked CRC-32C of the tensor bytes).
* ``.data-*`` files hold the raw little-endian tensor bytes at those offsets.

Only the few protobuf fields these two messages use are decoded (varints and length-delimited fields); both
checksums are verified (CRC-32C by google-crc32c, a C extension; a TensorFlow checkpoint of NEZHA-large is 1.3 GB).
The tests write checkpoints in this format with their own writer (tests/tf_bundle_writer.py).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nezha_cli.errors import CheckpointError

TABLE_MAGIC = 0xDB4775248B80FB57
_MASK_DELTA = 0xA282EAD8
FOOTER_SIZE = 48  # two block handles padded to 40 bytes, then the 8-byte magic number
BLOCK_TRAILER_SIZE = 5
NO_COMPRESSION = 0

# tensorflow/core/framework/types.proto -> torch dtype (the types a model checkpoint holds).
TF_DTYPES: dict[int, torch.dtype] = {
    1: torch.float32, 2: torch.float64, 3: torch.int32, 4: torch.uint8, 5: torch.int16, 6: torch.int8,
    9: torch.int64, 10: torch.bool, 14: torch.bfloat16, 19: torch.float16,
}
TF_DTYPE_NAMES = {1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 7: "string",
                  9: "int64", 10: "bool", 14: "bfloat16", 19: "float16"}
DTYPE_CODES = {dtype: code for code, dtype in TF_DTYPES.items()}


# ------------------------------------------------------------------------------------------------- checksums


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``."""
    import google_crc32c

    return google_crc32c.value(bytes(data))


def mask(crc: int) -> int:
    """The "masked" CRC that LevelDB-style tables and TensorFlow store (a CRC of CRC-bearing data stays robust)."""
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def unmask(masked: int) -> int:
    rot = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


# ------------------------------------------------------------------------------------------- varints, protobuf


def read_varint(buf: bytes | memoryview, pos: int, where: str) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise CheckpointError(f"{where}: truncated or malformed varint; the file is corrupt")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def parse_message(buf: bytes, where: str) -> dict[int, list]:
    """field number -> values: ints for varint/fixed fields, bytes for length-delimited ones."""
    fields: dict[int, list] = {}
    pos = 0
    while pos < len(buf):
        key, pos = read_varint(buf, pos, where)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = read_varint(buf, pos, where)
        elif wire == 1:
            if pos + 8 > len(buf):
                raise CheckpointError(f"{where}: truncated protobuf field; the file is corrupt")
            value, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
        elif wire == 2:
            size, pos = read_varint(buf, pos, where)
            if pos + size > len(buf):
                raise CheckpointError(f"{where}: truncated protobuf field; the file is corrupt")
            value, pos = bytes(buf[pos:pos + size]), pos + size
        elif wire == 5:
            if pos + 4 > len(buf):
                raise CheckpointError(f"{where}: truncated protobuf field; the file is corrupt")
            value, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        else:
            raise CheckpointError(f"{where}: unsupported protobuf wire type {wire}; the file is corrupt")
        fields.setdefault(number, []).append(value)
    return fields


# ------------------------------------------------------------------------------------------- bundle messages


@dataclass(frozen=True)
class BundleEntry:
    """A ``BundleEntryProto``: where one tensor's bytes are and what they are."""

    name: str
    dtype: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int  # masked, as stored
    sliced: bool = False

    @property
    def dtype_name(self) -> str:
        return TF_DTYPE_NAMES.get(self.dtype, f"DataType {self.dtype}")

    @classmethod
    def parse(cls, name: str, buf: bytes, where: str) -> BundleEntry:
        f = parse_message(buf, where)
        shape: list[int] = []
        for shape_msg in f.get(2, []):
            for dim in parse_message(shape_msg, where).get(2, []):
                shape.append(_signed64(parse_message(dim, where).get(1, [0])[0]))
        return cls(name=name, dtype=f.get(1, [0])[0], shape=tuple(shape), shard_id=f.get(3, [0])[0],
                   offset=f.get(4, [0])[0], size=f.get(5, [0])[0], crc32c=f.get(6, [0])[0], sliced=7 in f)



# ------------------------------------------------------------------------------------------------ table reading


def _read_block(data: bytes, offset: int, size: int, where: str) -> bytes:
    end = offset + size
    if end + BLOCK_TRAILER_SIZE > len(data):
        raise CheckpointError(f"{where}: block at offset {offset} runs past the end of the file; the file is "
                              "truncated")
    contents = data[offset:end]
    kind = data[end]
    (stored,) = struct.unpack_from("<I", data, end + 1)
    if unmask(stored) != crc32c(data[offset:end + 1]):
        raise CheckpointError(f"{where}: checksum mismatch in the block at offset {offset}; the file is corrupt")
    if kind != NO_COMPRESSION:
        raise CheckpointError(f"{where}: block at offset {offset} is compressed (type {kind}); only uncompressed "
                              "tables (what TensorFlow writes for checkpoints) are supported")
    return contents


def _block_entries(block: bytes, where: str) -> Iterator[tuple[bytes, bytes]]:
    if len(block) < 4:
        raise CheckpointError(f"{where}: table block too short; the file is corrupt")
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    limit = len(block) - 4 * (num_restarts + 1)
    if limit < 0:
        raise CheckpointError(f"{where}: bad restart array in a table block; the file is corrupt")
    pos, key = 0, b""
    while pos < limit:
        shared, pos = read_varint(block, pos, where)
        unshared, pos = read_varint(block, pos, where)
        value_size, pos = read_varint(block, pos, where)
        if shared > len(key) or pos + unshared + value_size > limit:
            raise CheckpointError(f"{where}: bad entry in a table block; the file is corrupt")
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        yield key, block[pos:pos + value_size]
        pos += value_size


def _block_handle(buf: bytes, pos: int, where: str) -> tuple[int, int, int]:
    offset, pos = read_varint(buf, pos, where)
    size, pos = read_varint(buf, pos, where)
    return offset, size, pos


def read_table(path: Path) -> list[tuple[bytes, bytes]]:
    """All key/value pairs of a LevelDB-format table file, in key order."""
    where = str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint index not found") from None
    if len(data) < FOOTER_SIZE:
        raise CheckpointError(f"{path}: too short to be a TensorFlow checkpoint index")
    footer = data[-FOOTER_SIZE:]
    if struct.unpack_from("<Q", footer, 40)[0] != TABLE_MAGIC:
        raise CheckpointError(f"{path}: not a TensorFlow checkpoint index (bad magic number)")
    _, _, pos = _block_handle(footer, 0, where)  # the metaindex block (filters) is not needed
    index_offset, index_size, _ = _block_handle(footer, pos, where)
    entries: list[tuple[bytes, bytes]] = []
    for _, handle in _block_entries(_read_block(data, index_offset, index_size, where), where):
        offset, size, _ = _block_handle(handle, 0, where)
        entries.extend(_block_entries(_read_block(data, offset, size, where), where))
    return entries


# ----------------------------------------------------------------------------------------------- the bundle


def data_file(prefix: Path, shard: int, num_shards: int) -> Path:
    return Path(f"{prefix}.data-{shard:05d}-of-{num_shards:05d}")


class TensorBundle:
    """The tensors of a checkpoint ``PREFIX`` (``PREFIX.index`` + ``PREFIX.data-*``), read one at a time."""

    def __init__(self, prefix: Path | str):
        self.prefix = Path(prefix)
        self.index_path = Path(f"{self.prefix}.index")
        where = str(self.index_path)
        self.entries: dict[str, BundleEntry] = {}
        header = None
        for key, value in read_table(self.index_path):
            if key == b"":
                header = parse_message(value, where)
                continue
            name = key.decode("utf-8", errors="replace")
            self.entries[name] = BundleEntry.parse(name, value, f"{where} (entry {name})")
        if header is None:
            raise CheckpointError(f"{where}: no bundle header; not a TensorFlow V2 checkpoint index")
        if header.get(2, [0])[0] != 0:
            raise CheckpointError(f"{where}: big-endian checkpoint; only little-endian checkpoints are supported")
        self.num_shards = header.get(1, [1])[0]
        for shard in sorted({e.shard_id for e in self.entries.values()}):
            path = data_file(self.prefix, shard, self.num_shards)
            if not path.is_file():
                raise CheckpointError(f"{path}: data file of the checkpoint not found (next to {self.index_path.name})")

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def names(self) -> list[str]:
        return list(self.entries)

    def read(self, name: str) -> torch.Tensor:
        """The tensor ``name``, after checking its size and CRC-32C."""
        entry = self.entries[name]
        path = data_file(self.prefix, entry.shard_id, self.num_shards)
        if entry.sliced:
            raise CheckpointError(f"{self.index_path}: {name} is a partitioned variable (saved in slices); "
                                  "merge the partitions with TensorFlow first")
        if entry.dtype not in TF_DTYPES:
            raise CheckpointError(f"{self.index_path}: {name} has dtype {entry.dtype_name}, which a NEZHA "
                                  "checkpoint does not use")
        dtype = TF_DTYPES[entry.dtype]
        expected = int(np.prod(entry.shape, dtype=np.int64)) * torch.empty((), dtype=dtype).element_size()
        if expected != entry.size:
            raise CheckpointError(f"{self.index_path}: {name} has {entry.size} bytes for shape "
                                  f"{list(entry.shape)} {entry.dtype_name}; the index is corrupt")
        with open(path, "rb") as f:
            f.seek(entry.offset)
            raw = bytearray(f.read(entry.size))
        if len(raw) != entry.size:
            raise CheckpointError(f"{path}: ends inside tensor {name}; the file is truncated")
        if crc32c(raw) != unmask(entry.crc32c):
            raise CheckpointError(f"{path}: tensor {name} fails its CRC-32C check; the file is corrupt")
        if not raw:
            return torch.empty(entry.shape, dtype=dtype)
        return torch.frombuffer(raw, dtype=dtype).reshape(entry.shape)


# ------------------------------------------------------------------------------------------------ discovery

_CHECKPOINT_STATE = re.compile(r'^model_checkpoint_path:\s*"(.*)"\s*$', re.MULTILINE)


def resolve_prefix(path: Path) -> Path:
    """The checkpoint prefix named by ``path``: the prefix itself, its ``.index`` or ``.data-*`` file, or a
    directory holding one checkpoint (or a ``checkpoint`` state file naming the latest)."""
    path = Path(path)
    if path.is_dir():
        state = path / "checkpoint"
        if state.is_file():
            match = _CHECKPOINT_STATE.search(state.read_text(encoding="utf-8", errors="replace"))
            if match:
                named = Path(match.group(1))
                prefix = named if named.is_absolute() else path / named
                if Path(f"{prefix}.index").is_file():
                    return prefix
        indexes = sorted(path.glob("*.index"))
        if len(indexes) == 1:
            return indexes[0].with_suffix("")
        if not indexes:
            raise CheckpointError(f"{path}: no TensorFlow checkpoint (*.index) in this directory")
        raise CheckpointError(f"{path}: {len(indexes)} checkpoints ({', '.join(p.stem for p in indexes[:4])}); "
                              "pass the one to import as DIR/PREFIX")
    if path.suffix == ".index":
        return path.with_suffix("")
    match = re.match(r"^(.*)\.data-\d{5}-of-\d{5}$", str(path))
    if match:
        return Path(match.group(1))
    if Path(f"{path}.index").is_file():
        return path
    raise CheckpointError(f"{path}: no TensorFlow checkpoint here (expected {path.name}.index or a directory)")
