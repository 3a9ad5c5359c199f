"""benchmarks/gpu_checks.sh without a GPU: every step runs under its limit, logs to OUT and says how it ended."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU behaviour; on a GPU it runs the real thing")
@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils' timeout")
def test_each_step_logs_and_reports_its_end_without_a_gpu(tmp_path):
    if (ROOT / ".whl").is_dir():
        pytest.skip(".whl/ is here: the script would install those wheels into /tmp/site")
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_checks.sh")], capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    steps = re.findall(r"^(\w+): exit (\d+) in \d+ s \(limit (\d+) s\)$", (tmp_path / "steps.txt").read_text(), re.M)
    assert [s[0] for s in steps] == ["environment", "test_cuda", "bench_fused_kernel", "bench_gpu"]
    assert sum(int(s[2]) for s in steps) <= 540  # leaves a 10-minute device call room for start-up and transfers
    ended = {name: int(rc) for name, rc, _ in steps}
    assert ended["test_cuda"] == 0 and "skipped" in (tmp_path / "test_cuda.log").read_text()  # skips, no errors
    for bench in ("bench_fused_kernel", "bench_gpu"):  # one line each, no traceback
        assert ended[bench] == 1
        assert (tmp_path / f"{bench}.log").read_text().strip() == \
            "no CUDA device is visible: use --device cpu (with --tiny for a quick check)"
