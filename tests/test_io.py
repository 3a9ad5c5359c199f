"""Atomic outputs (nezha_cli.io): permissions and JSON reading."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from nezha_cli import io
from nezha_cli.errors import NezhaError


@pytest.fixture
def umask_027():
    io._umask.cache_clear()
    old = os.umask(0o027)
    yield
    os.umask(old)
    io._umask.cache_clear()


def test_outputs_get_the_permissions_of_new_files(tmp_path, umask_027):
    # mkdtemp/mkstemp make private temporaries; a model directory written for a serving user must not stay 0700.
    with io.atomic_output_dir(tmp_path / "model") as tmp:
        (tmp / "config.json").write_text("{}")
    io.write_json(tmp_path / "metrics.json", {"f1": 1.0})
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o750
    assert stat.S_IMODE((tmp_path / "metrics.json").stat().st_mode) == 0o640


def test_read_json_accepts_a_byte_order_mark_and_names_errors(tmp_path):
    path = tmp_path / "preds.json"
    path.write_bytes("\ufeff{\"q1\": \"答案\"}".encode())
    assert io.read_json(path) == {"q1": "答案"}
    path.write_text('{"q1": }', encoding="utf-8")
    with pytest.raises(NezhaError, match=r"preds\.json: predictions file is not valid JSON \(Expecting value"):
        io.read_json(path, what="predictions file")


def test_the_current_directory_can_be_the_output(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("x")
    monkeypatch.chdir(out)
    with io.atomic_output_dir(Path("."), overwrite=True) as tmp:
        (tmp / "new.txt").write_text("y")
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_the_early_check_creates_no_directories_the_writer_does(tmp_path):
    out = tmp_path / "a" / "b" / "metrics.json"
    io.check_output_path(out, overwrite=False)
    assert not (tmp_path / "a").exists()  # a command failing after its check leaves nothing behind
    io.write_json(out, {"f1": 1.0})
    assert io.read_json(out) == {"f1": 1.0}
    (tmp_path / "file").write_text("x")
    with pytest.raises(NezhaError, match="a file, where the output path needs a directory"):
        io.check_output_path(tmp_path / "file" / "sub" / "out.json", overwrite=False)


def test_the_early_check_refuses_a_parent_it_could_not_create(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    # os.access as for a user without write permission there (the tests may run as root, who may write anywhere)
    real_access = os.access
    monkeypatch.setattr(io.os, "access", lambda p, mode: Path(p) != locked and real_access(p, mode))
    with pytest.raises(NezhaError, match=r"locked/new: cannot create output directory \(.*locked is not writable"):
        io.check_output_path(locked / "new" / "out.json", overwrite=False)
    with pytest.raises(NezhaError, match="output directory is not writable"):
        io.check_output_path(locked / "out.json", overwrite=False)


def test_a_failed_rename_keeps_the_old_output_and_no_temporary(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("x")
    replace = os.replace

    def failing_replace(src, dst):
        if Path(src).name.startswith(".out.tmp-"):
            raise OSError(16, "Device or resource busy")
        replace(src, dst)

    monkeypatch.setattr(io.os, "replace", failing_replace)
    with pytest.raises(OSError), io.atomic_output_dir(out, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("y")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in out.iterdir()] == ["old.txt"]


def test_an_output_may_not_replace_an_input(tmp_path):
    model = tmp_path / "run" / "final"
    model.mkdir(parents=True)
    for output in (model, tmp_path / "run", tmp_path):
        with pytest.raises(NezhaError, match="would replace the input"):
            io.check_output_path(output, overwrite=True, inputs=[None, model])
    io.check_output_path(tmp_path / "run" / "export", overwrite=True, inputs=[model])


def test_temporaries_of_processes_that_are_gone_are_removed(tmp_path):
    # A run killed outright leaves its temporary; the next run to the same output removes it, and only it.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    host = socket.gethostname()
    stale = tmp_path / f".out.tmp-{host}-{gone.pid}-abc"
    stale.mkdir()
    (stale / "shard-00000.arrow").write_text("half written")
    stale_file = tmp_path / f".out.tmp-{host}-{gone.pid}-def"
    stale_file.write_text("")
    kept = [tmp_path / f".out.tmp-{host}-{os.getpid()}-abc",  # a live process's
            tmp_path / f".out.tmp-{host}x-{gone.pid}-abc",  # another host's (a shared file system)
            tmp_path / f".other.tmp-{host}-{gone.pid}-abc"]  # another output's
    for path in kept:
        path.mkdir()
    with io.atomic_output_dir(tmp_path / "out") as tmp:
        (tmp / "done").write_text("")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([p.name for p in kept] + ["out"])
