"""benchmarks/bench_kernel_resources.py: the three kernels' registers, spills and shared memory from ptxas."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest


@pytest.mark.slow
def test_prints_a_row_per_kernel_with_ptxas_figures(load_benchmark, capsys):
    pytest.importorskip("triton")
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        get_ptxas(90)
    except Exception as error:  # a Triton build without its CUDA backend
        pytest.skip(f"Triton's CUDA backend is not available: {error}")
    bench = load_benchmark("bench_kernel_resources")
    assert bench.main(["--capabilities", "90", "--dtypes", "bf16", "--warps", "8"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert [row[3] for row in rows] == ["frpe_forward_kernel", "frpe_backward_kv_kernel", "frpe_backward_q_kernel"]
    for target, dtype, warps, _, registers, spill, shared in rows:
        assert (target, dtype, warps) == ("sm_90", "bf16", "8")
        assert 0 < int(registers) <= 255 and int(spill) >= 0 and int(shared) > 0


def test_ptxas_report_reads_registers_and_spills(load_benchmark, monkeypatch):
    bench = load_benchmark("bench_kernel_resources")
    stderr = ("ptxas info    : Compiling entry function 'k' for 'sm_90a'\n"
              "ptxas info    :     176 bytes stack frame, 176 bytes spill stores, 152 bytes spill loads\n"
              "ptxas info    : Used 255 registers, used 1 barriers, 176 bytes cumulative stack size\n")
    calls = []
    monkeypatch.setattr(bench.subprocess, "run", lambda command, **_: calls.append(command) or SimpleNamespace(
        stderr=stderr))
    monkeypatch.setitem(sys.modules, "triton.backends.nvidia.compiler",
                        SimpleNamespace(get_ptxas=lambda capability: SimpleNamespace(path="/bin/ptxas")))
    assert bench.ptxas_report(".version 8.0", 90) == {"registers": 255, "spill_bytes": 176}
    assert calls[0][:3] == ["/bin/ptxas", "-v", "--gpu-name=sm_90a"]
