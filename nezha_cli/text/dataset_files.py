"""``datasets.save_to_disk`` directories written and read batch by batch, in constant memory.

The layout is exactly what ``datasets`` writes (Arrow stream shards ``data-XXXXX-of-NNNNN.arrow``, ``state.json``,
``dataset_info.json``), so ``datasets.load_from_disk`` opens the result; but rows are appended as Arrow record
batches as they are produced, and read back with plain file reads rather than a memory map (whose touched pages
would count toward the reader's resident memory).

``state.json``'s keys are datasets' own file format, not a public API: datasets has no public way to write a
dataset row batch by row batch in constant memory (huggingface/datasets#4417, #3142 ask for one). The tests open
every directory written here with ``datasets.load_from_disk`` (tests/test_cli_tokenize.py, tests/test_cli_mask.py),
so a datasets release that changes the format fails there.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from nezha_cli.errors import DataError

STATE_NAME = "state.json"
INFO_NAME = "dataset_info.json"
MAX_SHARD_BYTES = 256 << 20


def list_array(values: np.ndarray, lengths: np.ndarray, value_type: pa.DataType) -> pa.ListArray:
    """A list column from the concatenated ``values`` of all rows and each row's length."""
    offsets = np.zeros(len(lengths) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, value_type))


def _feature(dtype: str, list_type: str) -> dict[str, Any]:
    if dtype.startswith("list[") and dtype.endswith("]"):
        return {"feature": {"dtype": dtype[5:-1], "_type": "Value"}, "_type": list_type}
    return {"dtype": dtype, "_type": "Value"}


def features_json(columns: dict[str, str]) -> dict[str, Any]:
    """``datasets`` Features, serialized, of ``{column: dtype}`` ("int64", "list[int32]"...).

    Written by hand rather than through ``datasets`` so that the commands need not import it (a second or more
    at start-up); the list type is named as the installed ``datasets`` names it ("List" since 4.0).
    """
    try:
        major = int(metadata.version("datasets").split(".")[0])
    except (metadata.PackageNotFoundError, ValueError):
        major = 4
    list_type = "List" if major >= 4 else "Sequence"
    return {name: _feature(dtype, list_type) for name, dtype in columns.items()}


def arrow_schema(columns: dict[str, str]) -> pa.Schema:
    fields = []
    for name, dtype in columns.items():
        if dtype.startswith("list["):
            fields.append(pa.field(name, pa.list_(pa.type_for_alias(dtype[5:-1]))))
        else:
            fields.append(pa.field(name, pa.type_for_alias(dtype)))
    metadata_json = json.dumps({"info": {"features": features_json(columns)}})
    return pa.schema(fields, metadata={"huggingface": metadata_json})


class DatasetWriter:
    """Append record batches to a new ``save_to_disk`` directory; :meth:`close` writes the metadata."""

    def __init__(self, directory: Path, columns: dict[str, str], max_shard_bytes: int = MAX_SHARD_BYTES):
        self.directory = Path(directory)
        self.columns = dict(columns)
        self.schema = arrow_schema(self.columns)
        self.max_shard_bytes = max_shard_bytes
        self.num_rows = 0
        self._shards: list[Path] = []
        self._sink: pa.OSFile | None = None
        self._writer: pa.ipc.RecordBatchStreamWriter | None = None
        self._digest = hashlib.sha256()

    def write(self, columns: dict[str, pa.Array]) -> None:
        batch = pa.RecordBatch.from_arrays([columns[name] for name in self.schema.names], schema=self.schema)
        if batch.num_rows == 0:
            return
        if self._writer is None or self._sink.tell() >= self.max_shard_bytes:
            self._open_shard()
        self._writer.write_batch(batch)
        self.num_rows += batch.num_rows
        for column in batch.columns:
            for buffer in column.buffers():
                if buffer is not None:
                    self._digest.update(buffer)

    def _open_shard(self) -> None:
        self._close_shard()
        path = self.directory / f"data-{len(self._shards):05d}.arrow.tmp"
        self._shards.append(path)
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_stream(self._sink, self.schema)

    def _close_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._sink.close()
            self._writer = self._sink = None

    def close(self) -> list[str]:
        """Finish the last shard, name the shards as datasets does and write state.json and dataset_info.json."""
        if not self._shards:
            self._open_shard()  # an empty dataset still needs one (empty) shard
        self._close_shard()
        names = []
        for i, path in enumerate(self._shards):
            name = f"data-{i:05d}-of-{len(self._shards):05d}.arrow"
            path.rename(self.directory / name)
            names.append(name)
        state = {
            "_data_files": [{"filename": name} for name in names],
            "_fingerprint": self._digest.hexdigest()[:16],
            "_format_columns": None,
            "_format_kwargs": {},
            "_format_type": None,
            "_output_all_columns": False,
            "_split": None,
        }
        with open(self.directory / STATE_NAME, "w", encoding="utf-8") as f:
            json.dump(state, f, indent=2, sort_keys=True)
        info = {"citation": "", "description": "", "features": features_json(self.columns), "homepage": "",
                "license": ""}
        with open(self.directory / INFO_NAME, "w", encoding="utf-8") as f:
            json.dump(info, f, indent=2)
        return names

    def abort(self) -> None:
        self._close_shard()


def data_files(directory: Path) -> list[Path]:
    """The Arrow shards of a ``save_to_disk`` directory, in order."""
    directory = Path(directory)
    state_path = directory / STATE_NAME
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
        return [directory / entry["filename"] for entry in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{state_path}: not a datasets directory written by save_to_disk ({exc})") from None


def iter_batches(directory: Path, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """Record batches of a ``save_to_disk`` directory, read sequentially without memory-mapping the files."""
    for path in data_files(directory):
        try:
            with pa.OSFile(str(path), "rb") as source:
                reader = pa.ipc.open_stream(source)
                for batch in reader:
                    yield batch.select(columns) if columns else batch
        except (OSError, pa.ArrowInvalid) as exc:
            raise DataError(f"{path}: cannot read ({exc})") from None


def load_saved_dataset(directory: Path | str, hint: str):
    """``datasets.load_from_disk(directory)``, with an error that names the damaged shard (a copy cut short, a
    disk that filled up) instead of pyarrow's bare "Expected to be able to read N bytes"; ``hint`` says what to
    do about it."""
    import datasets

    try:
        return datasets.load_from_disk(str(directory))
    except (FileNotFoundError, ValueError, OSError) as exc:
        # Only on failure: reading every shard through is what load_from_disk's memory maps spare us otherwise.
        for shard in sorted(Path(directory).rglob("*.arrow")):
            try:
                with pa.memory_map(str(shard)) as source:
                    pa.ipc.open_stream(source).read_all()
            except (OSError, pa.ArrowInvalid) as shard_exc:
                raise DataError(f"{shard}: cannot read ({shard_exc}); the file is damaged or cut short: "
                                f"{hint}") from None
        raise DataError(f"{directory}: cannot read the dataset ({exc}); {hint}") from None
