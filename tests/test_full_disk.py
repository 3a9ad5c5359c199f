"""A full disk (or quota, or read-only file system) while writing any output of the CLI: one line naming the output,
exit code 2, no temporary left behind. The failures are injected into the writers (no real full disk in CI)."""

import errno

import pytest
from click.testing import CliRunner
from export_fixtures import model_dir
from safetensors import SafetensorError

from nezha_cli.cli import cli

NO_SPACE = SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space '
                           'left on device" })')


def one_line(result, expected: str) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert expected in lines[0], lines[0]
    return lines[0]


def no_temporaries(directory) -> None:
    assert [p.name for p in directory.iterdir() if ".tmp" in p.name] == []


def test_hf_export_on_a_full_disk(tmp_path, monkeypatch):
    import safetensors.torch

    source = model_dir(tmp_path / "src")
    monkeypatch.setattr(safetensors.torch, "save_file", lambda *a, **k: (_ for _ in ()).throw(NO_SPACE))
    out = tmp_path / "out" / "hf"
    result = CliRunner().invoke(cli, ["-q", "export", "--model", str(source), "-o", str(out), "--format", "hf"])
    line = one_line(result, f"{out}: cannot write it (no space left on the device; ")
    assert "free there" in line and "free some space or write elsewhere" in line
    assert not out.exists()
    no_temporaries(out.parent)


def test_onnx_export_on_a_read_only_file_system(tmp_path, monkeypatch):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    source = model_dir(tmp_path / "src")

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(onnx, "save", read_only)
    out = tmp_path / "onnx"
    result = CliRunner().invoke(cli, ["-q", "export", "--model", str(source), "-o", str(out), "--format", "onnx"])
    one_line(result, f"{out}: cannot write it (read-only file system")
    assert not out.exists()
    no_temporaries(tmp_path)


def test_data_preparation_on_a_full_disk(corpus_file, tmp_path, monkeypatch):
    from nezha_cli.text.dataset_files import DatasetWriter

    def full(self, columns):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(DatasetWriter, "write", full)
    out = tmp_path / "tokenized"
    result = CliRunner().invoke(cli, ["-q", "tokenize", str(corpus_file), "-o", str(out)])
    one_line(result, f"{out}: cannot write it (no space left on the device")
    assert not out.exists()
    no_temporaries(tmp_path)


def test_a_library_write_error_with_room_left_is_still_one_line(tmp_path, monkeypatch):
    import safetensors.torch

    # torch's zip writer says only that the write failed; with room left it is not called a full disk.
    source = model_dir(tmp_path / "src")
    monkeypatch.setattr(safetensors.torch, "save_file", lambda *a, **k: (_ for _ in ()).throw(
        RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file data/0: "
                     "file write failed")))
    out = tmp_path / "hf"
    result = CliRunner().invoke(cli, ["-q", "export", "--model", str(source), "-o", str(out), "--format", "hf"])
    one_line(result, f"{out}: cannot write it (the write failed; ")
    no_temporaries(tmp_path)
