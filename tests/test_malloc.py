"""glibc malloc tuning: large freed blocks stay in the process (no mmap per allocation), with opt-outs."""

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

import nezha_cli.cli.malloc as malloc
from nezha_cli.cli import cli


def _glibc() -> bool:
    # The probe reads mallinfo2 (glibc >= 2.33).
    libc = malloc.glibc()
    return sys.platform.startswith("linux") and libc is not None and hasattr(libc, "mallinfo2")


# In a fresh interpreter: tune (or not), then allocate 16 MiB with malloc() and report whether glibc mapped it with
# mmap (mallinfo2's hblkhd counts the bytes of mmapped blocks).
PROBE = """
import ctypes, json
from nezha_cli.cli.malloc import glibc, tune_malloc
tuned = tune_malloc()
libc = glibc()
class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]
libc.mallinfo2.restype = Mallinfo2
libc.malloc.restype = ctypes.c_void_p
before = libc.mallinfo2().hblkhd
block = libc.malloc(16 * 2**20)
mapped = libc.mallinfo2().hblkhd - before
libc.free(ctypes.c_void_p(block))
print(json.dumps({"tuned": tuned, "mmapped": mapped}))
"""


def _probe(**env) -> dict:
    # Without any allocator setting of the calling environment, then with ``env``.
    ignored = ("GLIBC_TUNABLES", "LD_PRELOAD", *malloc.USER_VARIABLES, malloc.OPT_OUT)
    full_env = {k: v for k, v in os.environ.items() if k not in ignored}
    full_env.update(env)
    out = subprocess.run([sys.executable, "-c", PROBE], env=full_env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not _glibc(), reason="glibc (Linux) only")
def test_tuned_process_serves_large_blocks_from_the_heap():
    tuned = _probe()
    assert tuned == {"tuned": True, "mmapped": 0}
    # Without the tuning glibc maps a 16 MiB block of its own (the default threshold is 128 KiB).
    plain = _probe(**{malloc.OPT_OUT: "0"})
    assert plain["tuned"] is False and plain["mmapped"] >= 16 * 2**20


@pytest.mark.skipif(not _glibc(), reason="glibc (Linux) only")
def test_users_own_malloc_settings_win():
    assert _probe(GLIBC_TUNABLES="glibc.malloc.mmap_threshold=65536")["tuned"] is False
    assert _probe(MALLOC_TRIM_THRESHOLD_="1000000")["tuned"] is False


def test_preloaded_allocator_is_left_alone(monkeypatch):
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    assert malloc._user_chose_allocator()
    monkeypatch.setenv("LD_PRELOAD", "")
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    for name in malloc.USER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert not malloc._user_chose_allocator()


def test_every_command_tunes_malloc(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(malloc, "tune_malloc", lambda: calls.append(1) or True)
    result = CliRunner().invoke(cli, ["evaluate", "cmrc", "--dataset", str(tmp_path / "missing.json"),
                                      "--predictions", str(tmp_path / "p.json")])
    assert result.exit_code == 2 and calls == [1]
    assert "NEZHA_MALLOC_TUNING=0" in CliRunner().invoke(cli, ["--help"]).output
