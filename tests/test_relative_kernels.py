"""The kernels of the relative attention (nezha_cli.modeling.kernels.dispatch) against the PyTorch ops they replace:
the C kernels compiled for this CPU, and the Triton kernels through Triton's interpreter (their index arithmetic).
tests/test_cuda.py runs the Triton kernels compiled, with the same checks
(:func:`check_kernels_against_pytorch_ops`)."""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from nezha_cli.modeling.kernels import dispatch as relative_kernels
from nezha_cli.modeling.kernels import relative_cpu as _relative_cpu
from nezha_cli.modeling.relative_attention import (
    RelativePositions,
    expand_buckets,
    relative_context,
    relative_position_table,
    relative_scores,
    sum_buckets,
)

# K = 8: lengths below K (2L - 1 reachable buckets), between K and 2K (corner sums) and beyond 2K (block sums).
LENGTHS = (1, 7, 12, 40, 130)


def _with_kernels(kernels: relative_kernels.Backend | None, fn):
    """fn() with ``kernels`` serving every tensor of a dtype they take (CPU tensors too: Triton's interpreter runs
    those), or with none."""
    dtypes = relative_kernels._DTYPES if kernels is relative_kernels.TRITON else relative_kernels._CPU_DTYPES
    saved = relative_kernels.backend
    relative_kernels.backend = lambda t: (kernels if kernels is not None and t.dtype in dtypes
                                          and not (t.requires_grad and torch.is_grad_enabled()) else None)
    try:
        return fn()
    finally:
        relative_kernels.backend = saved


def check_kernels_against_pytorch_ops(length: int, dtype: torch.dtype, device: str, kernels: str = "triton") -> None:
    kernels = {"triton": relative_kernels.TRITON, "cpu": relative_kernels.CPU}[kernels]
    torch.manual_seed(length)
    pos = RelativePositions.build(length, 8, device=device)
    x = torch.randn(2, 3, length, length, device=device).to(dtype)
    # Bucket scores as the model makes them (the heads a view of one [B, L, H, W] product), and contiguous.
    y = torch.randn(2, length, 3, pos.width, device=device).to(dtype).transpose(1, 2)
    y3 = torch.randn(6, length, pos.width, device=device).to(dtype)
    kernel, reference = (_with_kernels(use, lambda: (sum_buckets(x, pos), expand_buckets(y, pos),
                                                      expand_buckets(y3, pos), sum_buckets(x.float(), pos, dtype)))
                         for use in (kernels, None))
    assert torch.equal(kernel[1], reference[1]) and torch.equal(kernel[2], reference[2])
    exact = sum_buckets(x.double(), pos)
    # Both accumulate the clipped buckets in fp32 and round once, in different orders.
    tol = 1e-5 if dtype == torch.float32 else torch.finfo(dtype).eps * exact.abs().max().item()
    for sums in (kernel[0], reference[0], kernel[3], reference[3]):  # from x, and from its fp32 copy into dtype
        assert sums.dtype == dtype and sums.shape == exact.shape
        assert (sums.double() - exact).abs().max() <= tol
    if dtype != torch.float32:
        return
    # The attention core, forward and backward, with the kernels and without.
    table = relative_position_table(8, 16).to(device)
    q, k, v = (torch.randn(2, 3, length, 16, device=device, requires_grad=True) for _ in range(3))

    def core():
        out = relative_context(torch.softmax(relative_scores(q, k, table, pos), -1), v, table, pos)
        return (out, *torch.autograd.grad((out * out).sum(), (q, k, v)))

    for a, b in zip(_with_kernels(kernels, core), _with_kernels(None, core)):
        assert (a - b).abs().max() <= 1e-6 * (1 + b.abs().max())  # fp32 sums in other orders


# TRITON_INTERPRET is read when a kernel is defined, so the interpreted kernels run in a fresh interpreter.
SCRIPT = textwrap.dedent(f"""
    import sys, torch
    sys.path.insert(0, {str(Path(__file__).parent)!r})
    from test_relative_kernels import LENGTHS, check_kernels_against_pytorch_ops
    for length in LENGTHS:
        for dtype in (torch.float32, torch.bfloat16):
            check_kernels_against_pytorch_ops(length, dtype, "cpu")
    print("kernels ok")
""")


def test_kernels_match_the_pytorch_ops_in_the_triton_interpreter():
    pytest.importorskip("triton")
    result = subprocess.run([sys.executable, "-c", SCRIPT], env={**os.environ, "TRITON_INTERPRET": "1"},
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "kernels ok" in result.stdout


def _compiler_or_skip() -> list[str]:
    cc = _relative_cpu.compiler()
    if cc is None:
        pytest.skip("no C compiler")
    return cc


def _cpu_kernels_or_skip():
    reason = _relative_cpu.unsupported()
    if reason is not None:
        pytest.skip(f"the CPU kernels are off here: {reason}")
    assert relative_kernels._cpu() is not None  # the machine has what they need: the build must work


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("length", LENGTHS)
def test_cpu_kernels_match_the_pytorch_ops(length, dtype):
    _cpu_kernels_or_skip()
    check_kernels_against_pytorch_ops(length, dtype, "cpu", kernels="cpu")


def test_cpu_kernels_at_bert_shapes_and_in_threads():
    """K = 64 at the usual lengths (2L - 1 buckets, corners, blocks), split over the thread pool, and on one thread."""
    _cpu_kernels_or_skip()
    threads = torch.get_num_threads()
    try:
        for length, num_threads in ((48, threads), (128, threads), (300, threads), (128, 1)):
            torch.set_num_threads(num_threads)
            pos = RelativePositions.build(length, 64)
            x = torch.rand(2, 4, length, length)
            y = torch.randn(2, length, 4, pos.width).to(torch.bfloat16).transpose(1, 2)
            both = functools.partial(lambda x, y, pos: (sum_buckets(x, pos), expand_buckets(y, pos)), x, y, pos)
            kernel, reference = (_with_kernels(use, both) for use in (relative_kernels.CPU, None))
            assert torch.equal(kernel[1], reference[1])
            assert (kernel[0] - reference[0]).abs().max() <= 1e-5 * (1 + x.shape[-1])
            assert torch.allclose(kernel[0].sum(-1), x.sum(-1), atol=1e-4)  # every key in one bucket
    finally:
        torch.set_num_threads(threads)


def test_kernel_dispatch_rules():
    cpu_kernels = _relative_cpu.unsupported() is None
    for dtype in (torch.float32, torch.bfloat16):
        assert relative_kernels.backend(torch.zeros(2, dtype=dtype)) is (relative_kernels.CPU if cpu_kernels else None)
    assert relative_kernels.backend(torch.zeros(2, dtype=torch.float16)) is None  # no fp16 sums on the CPU
    assert relative_kernels.backend(torch.zeros(2, dtype=torch.float64)) is None
    assert relative_kernels.backend(torch.zeros(2, requires_grad=True)) is None  # no graph would be recorded
    with torch.no_grad():  # as inside the attention's autograd functions
        assert relative_kernels.available(torch.zeros(2, requires_grad=True)) is cpu_kernels
    if relative_kernels.ENABLED and relative_kernels._triton() is not None:
        # The rules past the device (a stand-in for a CUDA tensor: CI has none).
        cuda = SimpleNamespace(is_cuda=True, dtype=torch.float16, requires_grad=False)
        assert relative_kernels.backend(cuda) is relative_kernels.TRITON
        assert relative_kernels.backend(SimpleNamespace(**{**vars(cuda), "dtype": torch.float64})) is None
        differentiated = SimpleNamespace(**{**vars(cuda), "requires_grad": True})
        assert relative_kernels.backend(differentiated) is None
        with torch.no_grad():
            assert relative_kernels.backend(differentiated) is relative_kernels.TRITON


def test_kernels_can_be_turned_off():
    script = "from nezha_cli.modeling.kernels import dispatch as k; print(k.ENABLED, k.CPU_ENABLED)"
    for variable, expected in (("NEZHA_TRITON", "False True"), ("NEZHA_CPU_KERNELS", "True False")):
        result = subprocess.run([sys.executable, "-c", script], env={**os.environ, variable: "0"},
                                capture_output=True, text=True)
        assert result.stdout.strip() == expected
    from click.testing import CliRunner

    from nezha_cli.cli import cli

    help_text = CliRunner().invoke(cli, ["--help"]).output
    assert "NEZHA_TRITON=0" in help_text and "NEZHA_CPU_KERNELS=0" in help_text


def test_the_compiler_is_cc_split_like_a_shell_or_gcc(monkeypatch):
    monkeypatch.setenv("CC", "ccache  gcc-12")
    assert _relative_cpu.compiler() == ["ccache", "gcc-12"]
    monkeypatch.setenv("CC", "")
    monkeypatch.setattr(_relative_cpu.shutil, "which", lambda name: f"/usr/bin/{name}")
    assert _relative_cpu.compiler() == ["/usr/bin/gcc"]


def test_cpu_kernels_build_once_into_the_cache(tmp_path):
    _compiler_or_skip()
    first = _relative_cpu.build(tmp_path)
    assert first.parent == tmp_path and first.name.startswith("relative_cpu-")
    modified = first.stat().st_mtime_ns
    assert _relative_cpu.build(tmp_path) == first and first.stat().st_mtime_ns == modified  # reused, not rebuilt
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name]  # no partial files left


def test_an_unwritable_cache_builds_into_a_directory_of_its_own(monkeypatch, tmp_path):
    _cpu_kernels_or_skip()
    (tmp_path / "cache").write_text("a file where the cache directory would go")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    library = _relative_cpu.load()
    assert library is not None and library.sum_buckets_f32 is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # its own directory removed once loaded


def test_without_a_compiler_the_pytorch_ops_serve(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(_relative_cpu, "compiler", lambda: None)
    with caplog.at_level(logging.INFO, logger="nezha_cli"):
        assert _relative_cpu.load() is None
    assert not caplog.records  # quietly: most laptops have no compiler
    monkeypatch.setattr(_relative_cpu, "compiler", lambda: [str(tmp_path / "no-such-cc")])
    with caplog.at_level(logging.INFO, logger="nezha_cli"):
        assert _relative_cpu.load() is None
    # A compiler was named but failed: one warning says what happens and how to silence it.
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "no-such-cc" in caplog.text and "NEZHA_CPU_KERNELS=0" in caplog.text


def test_cpu_runs_do_not_import_the_kernels():
    # Importing Triton takes a few tenths of a second: only the first CUDA tensor pays it.
    script = textwrap.dedent("""
        import sys, torch
        from nezha_cli.modeling import NezhaConfig, NezhaModel
        model = NezhaModel(NezhaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=64, max_relative_position=4))
        model(torch.randint(1, 50, (2, 12))).last_hidden_state.sum().backward()
        print(sorted(m for m in sys.modules if m.endswith("_relative_triton")))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_a_cache_that_cannot_load_libraries_builds_a_private_copy(monkeypatch, tmp_path, caplog):
    _cpu_kernels_or_skip()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    cached = _relative_cpu.build()
    modified = cached.stat().st_mtime_ns
    open_ = _relative_cpu._open

    def noexec(path):  # as a cache on a noexec mount: nothing there loads
        if Path(path).parent == cached.parent:
            raise OSError(f"{path}: failed to map segment from shared object")
        return open_(path)

    monkeypatch.setattr(_relative_cpu, "_open", noexec)
    with caplog.at_level(logging.INFO, logger="nezha_cli"):
        library = _relative_cpu.load()
    assert library is not None and library.sum_buckets_f32 is not None and not caplog.records  # served, quietly
    assert cached.stat().st_mtime_ns == modified and not any((tmp_path / "tmp").iterdir())  # own copy removed


def test_a_library_without_the_kernels_does_not_load(tmp_path):
    cc = _compiler_or_skip()
    source = tmp_path / "other.c"
    source.write_text("int other(void) { return 1; }\n")
    library = tmp_path / "other.so"
    subprocess.run([*cc, "-shared", "-fPIC", str(source), "-o", str(library)], check=True)
    with pytest.raises(OSError, match="expand_buckets_2"):
        _relative_cpu._open(library)


def test_a_new_build_removes_builds_older_than_30_days(tmp_path):
    _compiler_or_skip()
    old, recent, other = (tmp_path / name for name in ("relative_cpu-0old.so", "relative_cpu-1recent.so", "notes.txt"))
    for path in (old, recent, other):
        path.write_text("x")
    month = time.time() - 31 * 24 * 3600
    os.utime(old, (month, month))
    os.utime(other, (month, month))
    built = _relative_cpu.build(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([built.name, recent.name, other.name])
    os.utime(recent, (month, month))
    assert _relative_cpu.build(tmp_path) == built and recent.exists()  # only a new build cleans up
