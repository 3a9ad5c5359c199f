"""benchmarks/bench_fused_kernel.py through Triton's interpreter: every configuration timed, outputs compared."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_fused_kernel.py"


@pytest.mark.slow
def test_tiny_interpreter_run_times_each_configuration_and_compares_outputs():
    pytest.importorskip("triton")
    result = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--configs", "64x64x8,32x16x4"],
                            capture_output=True, text=True, timeout=600, env={**os.environ, "TRITON_INTERPRET": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "sdpa (no relative terms)" in out
    rows = re.findall(r"fused (\S+)\s+([\d.]+) ms\s+([\d.]+)x sdpa\s+max \|out - first config's\| (\S+)", out)
    assert [r[0] for r in rows] == ["64x64x8", "32x16x4"]
    assert float(rows[0][3]) == 0.0
    assert float(rows[1][3]) < 1e-2  # other tiles, the same attention (bf16 rounding of another summation order)


def test_configurations_parse(load_benchmark):
    bench = load_benchmark("bench_fused_kernel")
    assert bench.parse_configs("64x64x8,128x32x4") == [{"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 8},
                                                       {"BLOCK_M": 128, "BLOCK_N": 32, "num_warps": 4}]
    assert bench.parse_lengths("128:256,512:32") == [(128, 256), (512, 32)]


def test_without_a_gpu_it_says_so_in_one_line(load_benchmark, monkeypatch):
    import torch

    bench = load_benchmark("bench_fused_kernel")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA device is visible: use --device cpu"):
        bench.main([])
