"""The TensorFlow checkpoint format without TensorFlow: CRC-32C, the LevelDB table, the bundle reader/writer."""

from pathlib import Path

import numpy as np
import pytest
import torch
from tf_bundle_writer import write_bundle

from nezha_cli.errors import CheckpointError
from nezha_cli.interchange.tf_bundle import TensorBundle, crc32c, mask, read_table, resolve_prefix, unmask

LEVELDB_TABLE = Path(__file__).parent / "data" / "leveldb-table.ldb"


def reference_crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def test_crc32c_known_value_and_reference():
    assert crc32c(b"123456789") == 0xE3069283  # the check value of CRC-32C
    assert crc32c(b"") == 0
    rng = np.random.default_rng(0)
    for n in (1, 2, 15, 16, 17, 255, 1000, 4097):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert crc32c(data) == reference_crc32c(data), n


def test_crc_mask_round_trip():
    for value in (0, 1, 0xE3069283, 0xFFFFFFFF):
        assert unmask(mask(value)) == value
        assert mask(value) != value


def test_reads_a_table_written_by_leveldb():
    # Written by LevelDB itself (plyvel, no compression, 256-byte blocks, restart interval 4): an independent
    # writer with shortest-separator index keys. LevelDB appends an 8-byte sequence/type tag to each key.
    entries = read_table(LEVELDB_TABLE)
    got = {key[:-8]: value for key, value in entries}
    expected = {}
    for i in range(300):
        key = f"bert/encoder/layer_{i % 17}/w_{i:04d}".encode()
        expected[key] = key[::-1] * (i % 3)
    assert got == expected
    assert [k for k, _ in entries] == sorted(k for k, _ in entries)


def test_bundle_round_trip_across_blocks_and_dtypes(tmp_path):
    rng = np.random.default_rng(1)
    tensors = {f"bert/encoder/layer_{i}/attention/self/query/kernel": rng.standard_normal((5, 7)).astype(np.float32)
               for i in range(40)}
    tensors["global_step"] = np.array(123, dtype=np.int64)
    tensors["half"] = torch.randn(3, 4, dtype=torch.float16)
    tensors["bf16"] = torch.randn(6, dtype=torch.bfloat16)
    tensors["mask"] = np.array([True, False, True])
    tensors["empty"] = np.zeros((0, 4), dtype=np.float32)
    write_bundle(tmp_path / "model.ckpt-1", tensors, block_size=128)  # many data blocks
    bundle = TensorBundle(tmp_path / "model.ckpt-1")
    assert sorted(bundle.names()) == sorted(tensors)
    for name, value in tensors.items():
        got = bundle.read(name)
        assert torch.equal(got, torch.as_tensor(value)), name


def test_corruption_is_detected(tmp_path):
    write_bundle(tmp_path / "ckpt", {"a": np.arange(100, dtype=np.float32)})
    data = tmp_path / "ckpt.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[10] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="CRC-32C"):
        TensorBundle(tmp_path / "ckpt").read("a")

    index = tmp_path / "ckpt.index"
    raw = bytearray(index.read_bytes())
    raw[3] ^= 0xFF  # inside the first data block
    index.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        TensorBundle(tmp_path / "ckpt")

    index.write_bytes(b"\0" * 64)
    with pytest.raises(CheckpointError, match="bad magic"):
        TensorBundle(tmp_path / "ckpt")


def test_truncated_data_file(tmp_path):
    write_bundle(tmp_path / "ckpt", {"a": np.arange(100, dtype=np.float32)})
    data = tmp_path / "ckpt.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="truncated"):
        TensorBundle(tmp_path / "ckpt").read("a")


def test_resolve_prefix(tmp_path):
    write_bundle(tmp_path / "model.ckpt-5", {"a": np.zeros(2, np.float32)})
    prefix = tmp_path / "model.ckpt-5"
    assert resolve_prefix(tmp_path) == prefix
    assert resolve_prefix(Path(f"{prefix}.index")) == prefix
    assert resolve_prefix(Path(f"{prefix}.data-00000-of-00001")) == prefix
    assert resolve_prefix(prefix) == prefix
    write_bundle(tmp_path / "model.ckpt-9", {"a": np.zeros(2, np.float32)})
    with pytest.raises(CheckpointError, match="2 checkpoints"):
        resolve_prefix(tmp_path)
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-9"\n')
    assert resolve_prefix(tmp_path) == tmp_path / "model.ckpt-9"
    with pytest.raises(CheckpointError, match="no TensorFlow checkpoint"):
        resolve_prefix(tmp_path / "nothing-here")
