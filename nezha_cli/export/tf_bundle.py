"""TensorFlow checkpoints (the "tensor bundle" format) read and written without TensorFlow.

A checkpoint ``PREFIX`` is ``PREFIX.index`` plus ``PREFIX.data-00000-of-0000N``:

* ``.index`` is an immutable sorted table in the LevelDB format: data blocks of prefix-compressed key/value
  entries with restart points, an index block pointing at them, a metaindex block (empty here) and a 48-byte
  footer ending in a magic number. Every block carries a 5-byte trailer: compression type and the masked CRC-32C
  of the block. The key ``""`` holds a ``BundleHeaderProto``; every other key is a tensor name whose value is a
  ``BundleEntryProto`` (dtype, shape, shard, offset, size, masked CRC-32C of the tensor bytes).
* ``.data-*`` files hold the raw little-endian tensor bytes at those offsets.

Only the few protobuf fields these two messages use are decoded (varints and length-delimited fields); both
checksums are verified. :func:`write_bundle` writes the same format; the tests create checkpoints with it.
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
from nezha_cli.export.crc32c import crc32c, mask, unmask

TABLE_MAGIC = 0xDB4775248B80FB57
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


def _field_varint(number: int, value: int) -> bytes:
    return encode_varint(number << 3) + encode_varint(value)


def _field_bytes(number: int, value: bytes) -> bytes:
    return encode_varint(number << 3 | 2) + encode_varint(len(value)) + value


def _field_fixed32(number: int, value: int) -> bytes:
    return encode_varint(number << 3 | 5) + struct.pack("<I", value)


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

    def encode(self) -> bytes:
        dims = b"".join(_field_bytes(2, _field_varint(1, d) if d else b"") for d in self.shape)
        out = _field_varint(1, self.dtype) + _field_bytes(2, dims)
        if self.shard_id:
            out += _field_varint(3, self.shard_id)
        if self.offset:
            out += _field_varint(4, self.offset)
        if self.size:
            out += _field_varint(5, self.size)
        return out + _field_fixed32(6, self.crc32c)


def _encode_header(num_shards: int) -> bytes:
    # BundleHeaderProto: num_shards, endianness LITTLE (the default, omitted), VersionDef{producer: 1}.
    return _field_varint(1, num_shards) + _field_bytes(3, _field_varint(1, 1))


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


# ---------------------------------------------------------------------------------------------- table writing


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
            entries.append((name.encode("utf-8"), entry.encode()))
            offset += len(raw)
    write_table(Path(f"{prefix}.index"), entries, block_size=block_size)


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
