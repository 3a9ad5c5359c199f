"""What `nezha pretrain --data` may be, and the cache of prepared data (keys, reuse, location)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pretrain_fixtures import write_masked_data

from nezha_cli.errors import ConfigError, DataError
from nezha_cli.pretraining.prepare import data_kind, default_cache_dir, first_documents, prepare_text, resolve_data
from nezha_cli.pretraining.recipes import DataOptions


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("NEZHA_CLI_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "nezha-cli"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "nezha-cli"
    monkeypatch.setenv("NEZHA_CLI_CACHE", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"


def test_data_kind(tmp_path):
    masked = write_masked_data(tmp_path / "masked", n=8)
    assert data_kind(masked) == "masked"
    tokenized = tmp_path / "tokenized"
    tokenized.mkdir()
    (tokenized / "manifest.json").write_text(json.dumps({"kind": "nezha-tokenized"}))
    assert data_kind(tokenized) == "tokenized"
    (tmp_path / "corpus.txt").write_text("今天天气很好。\n")
    assert data_kind(tmp_path / "corpus.txt") == "text"
    with pytest.raises(DataError, match="--data not found"):
        data_kind(tmp_path / "missing")
    (tokenized / "manifest.json").write_text(json.dumps({"kind": "nezha-model"}))
    with pytest.raises(DataError, match="kind is 'nezha-model'"):
        data_kind(tokenized)


def test_a_masked_data_directory_keeps_its_own_settings(tmp_path, caplog):
    masked = write_masked_data(tmp_path / "masked", n=8)
    manifest = json.loads((masked / "manifest.json").read_text())
    # What the recipe says and the data do not agree on is said (recipe.yaml records the recipe's settings).
    with caplog.at_level("INFO", logger="nezha_cli"):
        assert resolve_data(masked, DataOptions(masked_lm_prob=0.2), seed=1, cache_dir=tmp_path / "c") == masked
    assert ("masked_lm_prob=0.2 (the data's: 0.15), max_predictions_per_seq=20 (the data's: 3) do not apply"
            in caplog.text)
    caplog.clear()
    with caplog.at_level("INFO", logger="nezha_cli"):
        resolve_data(masked, DataOptions(**manifest["options"]), seed=1, cache_dir=tmp_path / "c")
    assert "do not apply" not in caplog.text


def test_first_documents(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("一。\n二。\n\n三。\n\n\n四。\n\n五。\n", encoding="utf-8")
    first = first_documents([corpus], 3, tmp_path / "cache")
    assert first.read_text(encoding="utf-8") == "一。\n二。\n\n三。\n\n四。\n"
    assert first_documents([corpus], 3, tmp_path / "cache") == first


def test_data_options_vocab_choices():
    with pytest.raises(ConfigError, match="data.vocab and data.build_vocab"):
        DataOptions(vocab="vocab.txt", build_vocab=1000)
    with pytest.raises(ConfigError, match="data.max_documents=0"):
        DataOptions(max_documents=0)


def test_cache_keys(corpus_file, tmp_path):
    """One tokenized entry per corpus and vocab; one masked entry per mask settings and seed; a changed corpus is
    prepared again."""
    cache = tmp_path / "cache"
    options = DataOptions(build_vocab=3000, max_seq_length=32, dupe_factor=1)
    first = prepare_text([corpus_file], options, seed=1, cache=cache, show_progress=False)
    assert prepare_text([corpus_file], options, seed=1, cache=cache, show_progress=False) == first
    other_seed = prepare_text([corpus_file], options, seed=2, cache=cache, show_progress=False)
    longer = DataOptions(build_vocab=3000, max_seq_length=48, dupe_factor=1)
    other_length = prepare_text([corpus_file], longer, seed=1, cache=cache, show_progress=False)
    assert len({first, other_seed, other_length}) == 3
    assert len(list((cache / "tokenized").iterdir())) == 1
    manifest = json.loads((other_length / "manifest.json").read_text())
    assert manifest["options"]["max_seq_length"] == 48 and manifest["options"]["seed"] == 1
    with open(corpus_file, "a", encoding="utf-8") as f:
        f.write("\n新的一篇文章。\n")
    assert prepare_text([corpus_file], options, seed=1, cache=cache, show_progress=False) != first
    assert len(list((cache / "tokenized").iterdir())) == 2
    assert not [p for p in Path(cache).rglob(".*tmp*")]
