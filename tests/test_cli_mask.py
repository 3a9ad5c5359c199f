from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from task_fixtures import assert_one_line_error

from nezha_cli.cli import cli

datasets = pytest.importorskip("datasets")


def run(*args: str):
    return CliRunner().invoke(cli, ["--quiet", *args])


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory, real_documents, bert_vocab):
    from nezha_cli.text.corpora import write_documents

    root = tmp_path_factory.mktemp("cli-mask")
    corpus = write_documents(real_documents[:20] + real_documents[-50:], root / "corpus.txt")
    result = run("tokenize", str(corpus), "-o", str(root / "tok"), "--num-proc", "1")
    assert result.exit_code == 0, result.output
    return root / "tok"


def test_mask_static_and_dynamic(tokenized, tmp_path):
    result = run("mask", str(tokenized), "-o", str(tmp_path / "static"), "--num-proc", "2", "--seed", "7")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(tmp_path / "static")
    manifest = json.loads((tmp_path / "static" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["kind"] == "nezha-masked" and not manifest["dynamic"] and manifest["options"]["seed"] == 7
    assert "masked_lm_positions" in datasets.load_from_disk(str(tmp_path / "static")).column_names
    result = run("mask", str(tokenized), "-o", str(tmp_path / "dynamic"), "--dynamic", "--max-seq-length", "64",
                 "--num-proc", "1")
    assert result.exit_code == 0, result.output
    data = datasets.load_from_disk(str(tmp_path / "dynamic"))
    assert "instance_id" in data.column_names and max(len(r) for r in data["input_ids"]) <= 64


def test_help_shows_the_options():
    result = CliRunner().invoke(cli, ["mask", "--help"])
    for option in ("--max-seq-length", "--short-seq-prob", "--max-predictions-per-seq", "--masked-lm-prob",
                   "--dupe-factor", "--dynamic", "--seed", "--no-whole-word-mask", "[default: 128;"):
        assert option in result.output


def test_not_a_tokenize_output(tmp_path, tokenized):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "corpus.txt").write_text("你好。\n", encoding="utf-8")
    result = run("mask", str(tmp_path / "raw"), "-o", str(tmp_path / "out"))
    assert_one_line_error(result, "raw: no manifest.json", "`nezha tokenize`")
    result = run("mask", str(tmp_path / "raw" / "corpus.txt"), "-o", str(tmp_path / "out"))
    assert_one_line_error(result, "corpus.txt: not a directory")
    assert_one_line_error(run("mask", str(tmp_path / "nope"), "-o", str(tmp_path / "out")), "nope: DATA not found")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_existing_output(tokenized, tmp_path):
    (tmp_path / "out").mkdir()
    assert_one_line_error(run("mask", str(tokenized), "-o", str(tmp_path / "out")), "already exists", "--overwrite")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and not any((tmp_path / "out").iterdir())


def test_bad_option_values(tokenized, tmp_path):
    result = run("mask", str(tokenized), "-o", str(tmp_path / "out"), "--masked-lm-prob", "1.5")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
