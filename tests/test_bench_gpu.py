"""benchmarks/bench_gpu.py on the CPU (--device cpu --tiny): every row and ratio line, the JSON, the batch halving on
out-of-memory and a failing row, so that the short GPU run has nothing left to find out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPT = BENCHMARKS / "bench_gpu.py"


@pytest.fixture
def bench_gpu(load_benchmark):
    return load_benchmark("bench_gpu")


def test_tiny_cpu_run_prints_every_row_and_ratio_and_writes_json(tmp_path):
    out_json = tmp_path / "rows.json"
    # The "eager" compile backend runs the compiled rows' path in seconds (inductor takes a minute on a CPU).
    result = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--compile-backend", "eager",
                             "--json", str(out_json)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "device: CPU" in out and "FLOPs/step = 6 x matmul parameters" in out and "LAMB" in out
    assert "MFU: n/a" in out

    data = json.loads(out_json.read_text())
    assert data["device"] == "CPU" and data["peak_tflops"] is None and data["compile_backend"] == "eager"
    expected = {(length, model, compiled) for length in (32, 64)
                for model, compiled in [("nezha-fused", True), ("nezha-fused", False), ("nezha-eager", True),
                                        ("nezha-eager", False), ("transformers-nezha", False),
                                        ("bert-sdpa", True), ("bert-sdpa", False)]}
    rows = data["rows"]
    assert {(r["length"], r["model"], r["compiled"]) for r in rows} == expected and len(rows) == len(expected)
    for row in rows:
        assert row["error"] is None and row["batch"] == row["target_batch"] == 2
        assert row["step_ms"] > 0 and row["tokens_per_s"] > 0 and row["flops_per_step"] > 0
        assert row["mfu"] is None and row["peak_mib"] is None  # the CPU: no peak FLOP/s, no CUDA allocator
        assert f"{row['length']:>5}     2      2  {row['label']:<27} {row['step_ms']:9.1f}" in out

    # One ratio line per nezha row: over transformers' Nezha and over BERT with the same compile setting.
    ratios = data["ratios"]
    assert len(ratios) == 8
    for entry in ratios:
        assert entry["vs_transformers_nezha"] > 0 and entry["relative_cost"] > -1
        assert entry["bert"] == "bert-sdpa" + (" +compile" if "+compile" in entry["nezha"] else "")
        assert f"L={entry['length']:<4} {entry['nezha']:<20} {entry['vs_transformers_nezha']:.2f}x transformers' " \
               f"Nezha; relative terms {entry['relative_cost']:+.1%}" in out


def test_out_of_memory_halves_the_batch(bench_gpu, monkeypatch):
    tried = []

    def measure(row, batch, config, args, device):
        tried.append(batch)
        if batch > 64:
            try:
                raise torch.OutOfMemoryError("CUDA out of memory")
            except torch.OutOfMemoryError as error:  # as compiled code may raise it: wrapped in another error
                raise RuntimeError("compiled graph failed") from error
        row.batch, row.tokens_per_s = batch, 1.0

    monkeypatch.setattr(bench_gpu, "measure", measure)
    row = bench_gpu.Row(model="nezha-fused", compiled=True, length=128, target_batch=256)
    bench_gpu.run_row(row, None, None, torch.device("cpu"))
    assert tried == [256, 128, 64] and row.batch == 64 and row.ok


def test_a_failing_row_is_reported_and_the_run_goes_on(bench_gpu, monkeypatch, capsys):
    build = bench_gpu.build

    def failing_build(name, config, length, device):
        if name == "bert-sdpa":
            raise RuntimeError("no kernel for this shape")
        return build(name, config, length, device)

    monkeypatch.setattr(bench_gpu, "build", failing_build)
    rows = bench_gpu.main(["--device", "cpu", "--tiny", "--lengths", "32:2", "--models", "nezha-eager,bert-sdpa"])
    out = capsys.readouterr().out
    assert [(r.model, r.ok) for r in rows] == [("nezha-eager", True), ("bert-sdpa", False)]
    assert "bert-sdpa                   error: RuntimeError: no kernel for this shape" in out
    assert "transformers' Nezha n/a; relative terms vs BERT n/a" in out


def test_bad_options_stop_with_a_message(bench_gpu, capsys):
    for bad in (["--lengths", "128"], ["--models", "nezha,bert"], ["--steps", "0"]):
        with pytest.raises(SystemExit) as exit_info:
            bench_gpu.parse_args(["--device", "cpu", *bad])
        assert exit_info.value.code == 2 and "error:" in capsys.readouterr().err
