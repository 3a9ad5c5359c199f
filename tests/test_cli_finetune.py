"""`nezha finetune` end to end on tiny models: the paper's tasks on a handful of real examples, the generic tasks,
learning, resume, and bad input (one line, exit code 2, no partial OUT)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
from click.testing import CliRunner
from task_fixtures import DATA, assert_one_line_error, head_lines, make_model_dir, needs_data, squad_subset, write_vocab

from nezha_cli.cli import cli

FAST = ["--logging-steps", "1", "--mixed-precision", "no"]


def run(*args):
    return CliRunner().invoke(cli, ["-q", *[str(a) for a in args]])


def ok(result):
    assert result.exit_code == 0, result.output
    return result


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def model_for(tmp_path: Path, *files: Path, **config) -> Path:
    vocab = write_vocab(tmp_path / "vocab.txt", [f.read_text(encoding="utf-8") for f in files])
    return make_model_dir(tmp_path / "pretrained", vocab, **config)


# ------------------------------------------------------------------------------------- the paper's tasks


@needs_data
@pytest.mark.slow
def test_chnsenti_finetune_then_evaluate(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    head_lines(DATA / "chnsenticorp" / "train.tsv", data / "train.tsv", 64)
    head_lines(DATA / "chnsenticorp" / "dev.tsv", data / "dev.tsv", 32)
    head_lines(DATA / "chnsenticorp" / "dev.tsv", data / "test.tsv", 12)
    model = model_for(tmp_path, data / "train.tsv", data / "dev.tsv")
    out = tmp_path / "out"
    result = ok(run("finetune", "--task", "chnsenti", "--model", model, "--data-dir", data, "-o", out,
                    "--epochs", "2", "--batch-size", "16", "--max-seq-length", "64", *FAST))
    assert "best dev accuracy" in result.stdout and "test accuracy" in result.stdout
    # test.tsv of --data-dir is predicted with the final model.
    assert len((out / "test_predictions.jsonl").read_text(encoding="utf-8").splitlines()) == 12
    assert "accuracy" in json.loads((out / "test_results.json").read_text(encoding="utf-8"))
    final = out / "final"
    config = json.loads((final / "config.json").read_text(encoding="utf-8"))
    assert config["architectures"] == ["NezhaForSequenceClassification"]
    assert config["id2label"] == {"0": "0", "1": "1"} and config["finetuning_task"] == "chnsenti"
    assert (final / "vocab.txt").read_bytes() == (model / "vocab.txt").read_bytes()
    evals = [r for r in read_metrics(out) if "eval_accuracy" in r]
    assert len(evals) == 2  # one per epoch
    assert any("loss" in r for r in read_metrics(out))

    metrics, predictions = tmp_path / "m.json", tmp_path / "p.jsonl"
    ok(run("evaluate", "chnsenti", "--model", final, "--data-dir", data, "--output", metrics,
           "--predictions-out", predictions))
    scores = json.loads(metrics.read_text(encoding="utf-8"))
    # OUT/final is the best epoch; evaluating it again gives the accuracy logged for that epoch.
    assert scores["accuracy"] == pytest.approx(max(r["eval_accuracy"] for r in evals))
    rows = [json.loads(line) for line in predictions.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 32 and {r["prediction"] for r in rows} <= {"0", "1"}


@needs_data
@pytest.mark.slow
def test_pd_ner_finetune_then_evaluate_with_windows(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    head_lines(DATA / "peoples_daily_ner" / "train.tsv", data / "train.tsv", 48)
    head_lines(DATA / "peoples_daily_ner" / "dev.tsv", data / "dev.tsv", 24)
    model = model_for(tmp_path, data / "train.tsv", data / "dev.tsv")
    out = tmp_path / "out"
    # 32 tokens per input: the longer sentences of the sample go through several windows.
    ok(run("finetune", "--task", "msra-ner", "--model", model, "--data-dir", data, "-o", out, "--epochs", "1",
           "--batch-size", "8", "--max-seq-length", "32", "--learning-rate", "1e-3", *FAST))
    config = json.loads((out / "final" / "config.json").read_text(encoding="utf-8"))
    assert list(config["id2label"].values()) == ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
    (logged,) = [r for r in read_metrics(out) if "eval_f1" in r]

    metrics, predictions = tmp_path / "m.json", tmp_path / "p.jsonl"
    ok(run("evaluate", "peoples-daily-ner", "--model", out / "final", "--file", data / "dev.tsv", "--output",
           metrics, "--predictions-out", predictions))
    scores = json.loads(metrics.read_text(encoding="utf-8"))
    assert set(scores) >= {"precision", "recall", "f1", "per_type"}
    assert scores["f1"] == pytest.approx(logged["eval_f1"])
    rows = [json.loads(line) for line in predictions.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 24
    assert all(len(r["prediction"]) == len(r["tokens"]) == len(r["tags"]) for r in rows)  # every character


@needs_data
@pytest.mark.slow
def test_cmrc_finetune_then_score_predictions(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    squad_subset(DATA / "cmrc2018" / "trial.json", data / "train.json", slice(0, 6))
    squad_subset(DATA / "cmrc2018" / "trial.json", data / "dev.json", slice(6, 9))
    model = model_for(tmp_path, data / "train.json", data / "dev.json")
    out = tmp_path / "out"
    ok(run("finetune", "--task", "cmrc", "--model", model, "--data-dir", data, "-o", out, "--epochs", "1",
           "--batch-size", "8", "--max-seq-length", "96", *FAST))
    (logged,) = [r for r in read_metrics(out) if "eval_AVERAGE" in r]
    predictions, metrics = tmp_path / "predictions.json", tmp_path / "m.json"
    ok(run("evaluate", "cmrc", "--model", out / "final", "--data-dir", data, "--predictions-out", predictions,
           "--output", metrics))
    scores = json.loads(metrics.read_text(encoding="utf-8"))
    assert scores["AVERAGE"] == pytest.approx(logged["eval_AVERAGE"])
    answers = json.loads(predictions.read_text(encoding="utf-8"))
    dev = json.loads((data / "dev.json").read_text(encoding="utf-8"))
    contexts = {qa["id"]: p["context"] for a in dev["data"] for p in a["paragraphs"] for qa in p["qas"]}
    assert set(answers) == set(contexts)
    assert all(answer in contexts[qid] for qid, answer in answers.items())  # spans of the original context
    # Scoring the written predictions with the official-script path gives the same numbers.
    rescored = tmp_path / "rescored.json"
    ok(run("evaluate", "cmrc", "--dataset", data / "dev.json", "--predictions", predictions, "--output", rescored))
    again = json.loads(rescored.read_text(encoding="utf-8"))
    assert (again["EM"], again["F1"], again["TOTAL"]) == (scores["EM"], scores["F1"], scores["TOTAL"])


# ---------------------------------------------------------------------------------------- generic tasks


def _write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _sentiment_rows(n: int, seed: int) -> list[dict]:
    """Reviews whose label is whether they are mostly 好 or mostly 坏 (a few filler characters mixed in)."""
    rng = random.Random(seed)
    filler = "天地日月山水火木金土"
    rows = []
    for _ in range(n):
        label = rng.randint(0, 1)
        text = ["好" if label else "坏"] * rng.randint(3, 6) + [rng.choice(filler) for _ in range(rng.randint(0, 3))]
        rng.shuffle(text)
        rows.append({"review": "".join(text), "stars": ["bad", "good"][label]})
    return rows


@pytest.mark.slow
def test_generic_classification_learns(tmp_path):
    # Mostly 好 or mostly 坏: a tiny model must get the dev set right after a few epochs, its loss falling.
    train = _write_rows(tmp_path / "train.jsonl", _sentiment_rows(48, 0))
    dev = _write_rows(tmp_path / "dev.jsonl", _sentiment_rows(32, 1))
    model = model_for(tmp_path, train, dev)
    out = tmp_path / "out"
    ok(run("finetune", "--task", "classification", "--model", model, "--train-file", train, "--validation-file",
           dev, "--text-column", "review", "--label-column", "stars", "-o", out, "--epochs", "8",
           "--batch-size", "16", "--learning-rate", "5e-3", "--warmup-ratio", "0", "--max-seq-length", "16", *FAST))
    records = read_metrics(out)
    losses = [r["loss"] for r in records if "loss" in r]
    assert sum(losses[-3:]) / 3 < 0.8 * losses[0]
    assert max(r["eval_accuracy"] for r in records if "eval_accuracy" in r) == 1.0
    # One dev evaluation per epoch, numbered by the epochs completed (the last one too).
    assert [r["epoch"] for r in records if "eval_accuracy" in r] == list(range(1, 9))
    config = json.loads((out / "final" / "config.json").read_text(encoding="utf-8"))
    assert config["id2label"] == {"0": "bad", "1": "good"}


def _generic_cases(tmp_path: Path) -> dict[str, tuple[list[str], list[Path]]]:
    pair = [{"sentence1": "天上", "sentence2": "地下", "label": i % 2} for i in range(8)]
    ner = "".join("张 B-PER\n三 I-PER\n在 O\n北 B-LOC\n京 I-LOC\n\n" for _ in range(8))
    qa = [{"id": f"q{i}", "question": "谁来了", "context": "今天张三来了。", "answers": {"text": ["张三"],
           "answer_start": [2]}} for i in range(8)]
    mc = [{"question": "天上有什么", "choices": ["日", "水", "土"], "label": i % 3} for i in range(8)]
    (tmp_path / "train.conll").write_text(ner, encoding="utf-8")
    return {
        "pair-classification": ([], [_write_rows(tmp_path / "pair.jsonl", pair)]),
        "ner": ([], [tmp_path / "train.conll"]),
        "qa": ([], [_write_rows(tmp_path / "qa.jsonl", qa)]),
        "multiple-choice": ([], [_write_rows(tmp_path / "mc.jsonl", mc)]),
    }


@pytest.mark.slow
@pytest.mark.parametrize("task,architecture", [
    ("pair-classification", "NezhaForSequenceClassification"), ("ner", "NezhaForTokenClassification"),
    ("qa", "NezhaForQuestionAnswering"), ("multiple-choice", "NezhaForMultipleChoice"),
])
def test_generic_tasks_run_end_to_end(tmp_path, task, architecture):
    options, (train,) = _generic_cases(tmp_path)[task]
    model = model_for(tmp_path, train)
    out = tmp_path / "out"
    ok(run("finetune", "--task", task, "--model", model, "--train-file", train, "--validation-file", train,
           *options, "-o", out, "--epochs", "1", "--batch-size", "4", "--max-seq-length", "32", *FAST))
    config = json.loads((out / "final" / "config.json").read_text(encoding="utf-8"))
    assert config["architectures"] == [architecture]
    predictions = tmp_path / "predictions.out"
    ok(run("evaluate", task, "--model", out / "final", "--file", train, "--predictions-out", predictions,
           "--json", *options))
    assert predictions.read_text(encoding="utf-8").strip()


# ----------------------------------------------------------------------------------------------- resume


@pytest.mark.slow
@pytest.mark.parametrize("batching", [[], ["--group-by-length"]], ids=["random", "group-by-length"])
def test_interrupted_run_resumes_to_the_same_weights(tmp_path, monkeypatch, batching):
    from safetensors.torch import load_file

    from nezha_cli.engine.trainer import Trainer
    from nezha_cli.tasks.sequence_classification import SequenceClassificationTask

    train = _write_rows(tmp_path / "train.jsonl", _sentiment_rows(32, 0))
    dev = _write_rows(tmp_path / "dev.jsonl", _sentiment_rows(8, 1))
    model = model_for(tmp_path, train, dev)
    args = ["finetune", "--task", "classification", "--model", model, "--train-file", train, "--validation-file",
            dev, "--text-column", "review", "--label-column", "stars", "--epochs", "3", "--batch-size", "8",
            "--max-seq-length", "16", "--learning-rate", "1e-3", *batching, *FAST]
    ok(run(*args, "-o", tmp_path / "whole"))

    original = SequenceClassificationTask.compute_metrics
    calls = {"n": 0}

    def interrupt_at_second_evaluation(self, examples, predictions):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, examples, predictions)

    original_step = Trainer._micro_step
    steps = {"n": 0}

    def interrupt_in_third_epoch(self, batch):
        steps["n"] += 1
        if steps["n"] == 10:  # 4 steps per epoch: after epoch 2 was evaluated and checkpointed
            raise KeyboardInterrupt
        return original_step(self, batch)

    # Interrupted while evaluating (the epoch's checkpoint is not written yet), then while training the epoch after
    # an evaluated one: each resume must log every evaluation once, and end with the same weights.
    for target, name, interrupt in ((SequenceClassificationTask, "compute_metrics", interrupt_at_second_evaluation),
                                    (Trainer, "_micro_step", interrupt_in_third_epoch)):
        out = tmp_path / f"resumed-{name}"
        monkeypatch.setattr(target, name, interrupt)
        interrupted = run(*args, "-o", out)
        assert interrupted.exit_code == 130 and not (out / "final").exists()
        monkeypatch.undo()
        ok(run(*args, "-o", out, "--resume"))

        whole = load_file(tmp_path / "whole" / "final" / "model.safetensors")
        resumed = load_file(out / "final" / "model.safetensors")
        assert whole.keys() == resumed.keys()
        assert all((whole[k] == resumed[k]).all() for k in whole)
        evals = [(r["epoch"], r["eval_accuracy"]) for r in read_metrics(out) if "eval_accuracy" in r]
        assert evals == [(r["epoch"], r["eval_accuracy"]) for r in read_metrics(tmp_path / "whole")
                         if "eval_accuracy" in r]
        assert [epoch for epoch, _ in evals] == [1, 2, 3]


def _settings_run(tmp_path: Path) -> tuple[list, Path, Path]:
    """A finished 4-step run with a checkpoint every 2 steps: (its arguments less -o, OUT, the training file)."""
    train = _write_rows(tmp_path / "train.jsonl", _sentiment_rows(16, 0))
    dev = _write_rows(tmp_path / "dev.jsonl", _sentiment_rows(4, 1))
    model = model_for(tmp_path, train, dev)
    args = ["finetune", "--task", "classification", "--model", model, "--train-file", train, "--validation-file",
            dev, "--text-column", "review", "--label-column", "stars", "--max-steps", "4", "--save-steps", "2",
            "--batch-size", "4", "--max-seq-length", "16", "--learning-rate", "1e-3", *FAST]
    out = tmp_path / "out"
    ok(run(*args, "-o", out))
    return args, out, train


def _snapshot(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*")}


def test_finetune_yaml_records_the_run_settings(tmp_path):
    import yaml

    args, out, train = _settings_run(tmp_path)
    text = (out / "finetune.yaml").read_text(encoding="utf-8")
    assert (out / "final" / "finetune.yaml").read_text(encoding="utf-8") == text
    settings = yaml.safe_load(text)
    result, other = settings["result"], settings["other"]
    assert result["task"] == {"name": "classification", "id_column": None, "label_column": "stars",
                              "text_column": "review", "text_pair_column": None}
    assert result["model"]["path"] == str((tmp_path / "pretrained").resolve())
    assert len(result["model"]["config.json"]["sha256"]) == len(result["model"]["model.safetensors"]["sha256"]) == 64
    (recorded_train,) = result["train_files"]
    assert recorded_train["path"] == str(train.resolve()) and recorded_train["size"] == train.stat().st_size
    assert result["validation_file"]["path"].endswith("dev.jsonl") and result["test_file"] is None
    assert {k: result[k] for k in ("seed", "batch_size", "learning_rate", "max_steps", "epochs", "max_seq_length",
                                   "warmup_ratio", "weight_decay", "optimizer", "mixed_precision", "crf")} == {
        "seed": 42, "batch_size": 4, "learning_rate": 1e-3, "max_steps": 4, "epochs": None, "max_seq_length": 16,
        "warmup_ratio": 0.1, "weight_decay": 0.01, "optimizer": "adamw", "mixed_precision": "no", "crf": False}
    assert other["logging_steps"] == 1 and other["save_steps"] == 2 and other["gradient_checkpointing"] is False


def test_resume_refuses_settings_that_change_the_result(tmp_path):
    args, out, train = _settings_run(tmp_path)
    before = _snapshot(out)
    for change, fragments in (
        (["--learning-rate", "2e-3"], ("records learning_rate 0.001", "gives 0.002", "--learning-rate 0.001")),
        (["--seed", "7"], ("records seed 42", "gives 7", "rerun with --seed 42")),
        (["--max-seq-length", "24"], ("records max_seq_length 16", "gives 24", "--max-seq-length 16")),
        (["--max-steps", "6"], ("records max_steps 4", "gives 6", "--max-steps 4")),
        (["--group-by-length"], ("records group_by_length False", "rerun without --group-by-length")),
    ):
        result = run(*args, "-o", out, "--resume", *change)
        assert_one_line_error(result, "finetune.yaml", *fragments, "or start over with --overwrite")
    # The training file changed since the run began: same path, other contents.
    _write_rows(train, _sentiment_rows(16, 1))
    result = run(*args, "-o", out, "--resume")
    assert_one_line_error(result, "records train_files", str(train.resolve()), "restore the recorded contents",
                          "--overwrite")
    assert _snapshot(out) == before  # nothing written, nothing removed


def test_resume_accepts_the_same_settings_and_those_that_do_not_change_the_result(tmp_path, monkeypatch):
    from nezha_cli.engine.trainer import Trainer

    args, whole, _ = _settings_run(tmp_path)
    ok(run(*args, "-o", whole, "--resume"))  # a finished run, unchanged: reported as complete
    out = tmp_path / "interrupted"
    original_step = Trainer._micro_step
    steps = {"n": 0}

    def interrupt_at_third_step(self, batch):
        steps["n"] += 1
        if steps["n"] == 3:  # after the checkpoint of step 2
            raise KeyboardInterrupt
        return original_step(self, batch)

    monkeypatch.setattr(Trainer, "_micro_step", interrupt_at_third_step)
    assert run(*args, "-o", out).exit_code == 130
    monkeypatch.undo()
    ok(run(*args, "-o", out, "--resume", "--logging-steps", "2", "--gradient-checkpointing"))
    assert max(r["step"] for r in read_metrics(out)) == 4
    assert "logging_steps: 2" in (out / "finetune.yaml").read_text(encoding="utf-8")

    # A run of an older nezha-cli (no finetune.yaml) resumes unchecked, with a warning.
    (whole / "finetune.yaml").unlink()
    result = ok(run(*args, "-o", whole, "--resume", "--learning-rate", "2e-3"))
    assert "settings cannot be checked" in result.stderr


# ---------------------------------------------------------------------------------- gradient checkpointing


def test_gradient_checkpointing_gives_the_same_run(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from nezha_cli.modeling import NezhaForSequenceClassification

    enabled = []
    original = NezhaForSequenceClassification.gradient_checkpointing_enable

    def spy(self):
        enabled.append(type(self).__name__)
        original(self)

    monkeypatch.setattr(NezhaForSequenceClassification, "gradient_checkpointing_enable", spy)
    train = _write_rows(tmp_path / "train.jsonl", _sentiment_rows(16, 0))
    # Two layers, and the config's dropout of 0.1: the layers computed again in the backward pass must draw the
    # masks of their forward.
    model = model_for(tmp_path, train, num_hidden_layers=2)
    args = ["finetune", "--task", "classification", "--model", model, "--train-file", train, "--text-column",
            "review", "--label-column", "stars", "--max-steps", "4", "--batch-size", "4", "--max-seq-length", "16",
            "--learning-rate", "1e-3", *FAST]
    ok(run(*args, "-o", tmp_path / "plain"))
    assert enabled == []
    ok(run(*args, "-o", tmp_path / "checkpointed", "--gradient-checkpointing"))
    assert enabled == ["NezhaForSequenceClassification"]

    plain = load_file(tmp_path / "plain" / "final" / "model.safetensors")
    checkpointed = load_file(tmp_path / "checkpointed" / "final" / "model.safetensors")
    assert plain.keys() == checkpointed.keys()
    for key in plain:
        assert (plain[key] - checkpointed[key]).abs().max() <= 1e-5, key
    losses = [[r["loss"] for r in read_metrics(tmp_path / name) if "loss" in r] for name in ("plain", "checkpointed")]
    assert len(losses[0]) == 4 and losses[0] == pytest.approx(losses[1], abs=1e-5)


def test_attention_flag_runs_the_sdpa_form(tmp_path, monkeypatch):
    # K = 16 here: batches of up to 17 tokens take the one-SDPA-call form (its math is tested in
    # test_modeling_fused_attention.py), longer ones the eager path.
    from nezha_cli.modeling.kernels import frpe

    calls = []
    original = frpe.sdpa_attention
    monkeypatch.setattr("nezha_cli.modeling.modeling_nezha.sdpa_attention",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    train = _write_rows(tmp_path / "train.jsonl", _sentiment_rows(8, 0))
    model = model_for(tmp_path, train, num_hidden_layers=2, max_relative_position=16)
    args = ["finetune", "--task", "classification", "--model", model,
            "--train-file", train, "--text-column", "review", "--label-column", "stars", "--max-steps", "2",
            "--batch-size", "4", "--max-seq-length", "16", *FAST]
    ok(run(*args, "-o", tmp_path / "sdpa", "--attention", "sdpa"))
    assert len(calls) == 2 * 2  # every layer (the last on [CLS] alone) of both steps
    losses = [r["loss"] for r in read_metrics(tmp_path / "sdpa") if "loss" in r]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)


def test_compile_flag_compiles_the_model_once(tmp_path, monkeypatch):
    # The compilation itself is tested on the model (tests/test_modeling_compile.py); here, that the flag reaches it.
    from nezha_cli.engine import trainer

    compiled = []
    monkeypatch.setattr(trainer, "compile_model", lambda model: compiled.append(type(model).__name__))
    train = _write_rows(tmp_path / "train.jsonl", _sentiment_rows(8, 0))
    args = ["finetune", "--task", "classification", "--model", model_for(tmp_path, train), "--train-file", train,
            "--text-column", "review", "--label-column", "stars", "--max-steps", "1", "--batch-size", "4",
            "--max-seq-length", "16", *FAST]
    ok(run(*args, "-o", tmp_path / "plain"))
    assert compiled == []
    ok(run(*args, "-o", tmp_path / "compiled", "--compile"))
    assert compiled == ["NezhaForSequenceClassification"]


# -------------------------------------------------------------------------------------------- bad input


@pytest.fixture
def senti(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.tsv").write_text("label\ttext_a\n" + "1\t好\n0\t坏\n" * 20, encoding="utf-8")
    (data / "dev.tsv").write_text("label\ttext_a\n1\t好\n", encoding="utf-8")
    return data


def _refused(tmp_path, *args, fragments=()):
    out = tmp_path / "out"
    result = run("finetune", *args, "-o", out, "--epochs", "1", *FAST)
    assert_one_line_error(result, *fragments)
    assert not out.exists()


def test_bad_labels_columns_and_splits(tmp_path, senti):
    model = model_for(tmp_path, senti / "train.tsv")
    (senti / "dev.tsv").write_text("label\ttext_a\n1\t好\n2\t坏\n", encoding="utf-8")
    _refused(tmp_path, "--task", "chnsenti", "--model", model, "--data-dir", senti,
             fragments=("dev.tsv:3: label '2' is not in the label set (0, 1)",))
    (senti / "dev.tsv").write_text("label\ttext_a\n", encoding="utf-8")
    _refused(tmp_path, "--task", "chnsenti", "--model", model, "--data-dir", senti,
             fragments=("dev.tsv: no examples found (empty split)",))
    lcqmc = tmp_path / "lcqmc.tsv"
    lcqmc.write_text("sentence_a\ttext_b\tlabel\n好\t坏\t1\n", encoding="utf-8")
    _refused(tmp_path, "--task", "lcqmc", "--model", model, "--train-file", lcqmc,
             fragments=("lcqmc.tsv: no text_a column", "sentence_a, text_b, label"))
    csv = tmp_path / "train.csv"
    csv.write_text("review,label\n好,1\n", encoding="utf-8")
    _refused(tmp_path, "--task", "classification", "--model", model, "--train-file", csv,
             fragments=("no column 'text' (columns: review, label); rename it or pass --text-column",))
    _refused(tmp_path, "--task", "xnli", "--model", model, "--data-dir", tmp_path / "pretrained",
             fragments=("no train file for task xnli (looked for train.tsv, multinli.train.zh.tsv)",))


def test_cmrc_answers_that_never_match_their_context(tmp_path):
    data = tmp_path / "train.json"
    qas = [{"id": "Q1", "question": "?", "answers": [{"text": "不存在", "answer_start": 2}]}]
    data.write_text(json.dumps({"data": [{"paragraphs": [{"context": "这里什么都没有", "qas": qas}]}]},
                               ensure_ascii=False), encoding="utf-8")
    model = model_for(tmp_path, data)
    _refused(tmp_path, "--task", "cmrc", "--model", model, "--train-file", data,
             fragments=("no answer_start matches its context",))


def test_model_and_output_problems(tmp_path, senti):
    model = model_for(tmp_path, senti / "train.tsv")
    small = make_model_dir(tmp_path / "small", write_vocab(tmp_path / "small_vocab.txt", ["好"]))
    (small / "vocab.txt").write_text((model / "vocab.txt").read_text(encoding="utf-8") + "多\n余\n",
                                     encoding="utf-8")
    _refused(tmp_path, "--task", "chnsenti", "--model", small, "--data-dir", senti,
             fragments=("more than the model's vocab_size",))
    no_vocab = tmp_path / "no_vocab"
    make_model_dir(no_vocab, model / "vocab.txt")
    (no_vocab / "vocab.txt").unlink()
    _refused(tmp_path, "--task", "chnsenti", "--model", no_vocab, "--data-dir", senti,
             fragments=("no vocab.txt in the model directory; pass --vocab",))
    _refused(tmp_path, "--task", "lcqmc", "--model", model, "--data-dir", senti, "--tags-column", "x",
             fragments=("task lcqmc does not take --tags-column",))

    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine", encoding="utf-8")
    result = run("finetune", "--task", "chnsenti", "--model", model, "--data-dir", senti, "-o", out, *FAST)
    assert_one_line_error(result, "output directory is not empty", "--resume", "--overwrite")
    result = run("finetune", "--task", "chnsenti", "--model", model, "--data-dir", senti, "-o", out, "--resume",
                 "--overwrite", *FAST)
    assert result.exit_code == 2 and "give one of them" in result.output
    result = run("finetune", "--task", "chnsenti", "--model", model, "--data-dir", senti, "-o", model.parent,
                 "--overwrite", *FAST)
    assert_one_line_error(result, "would replace the input")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


# ------------------------------------------------------------------------------------ several training files


def _ner_tsv(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("text_a\tlabel\n" + "".join(f"{' '.join(chars)}\t{tags}\n" for chars, tags in rows),
                    encoding="utf-8")
    return path


def test_repeated_train_file_trains_on_the_union(tmp_path):
    gold = _ner_tsv(tmp_path / "gold.tsv", [("张三去北京", "B-PER I-PER O B-LOC I-LOC")] * 4)
    silver = _ner_tsv(tmp_path / "silver.tsv", [("新华社报道", "B-ORG I-ORG I-ORG O O")] * 4)
    model = model_for(tmp_path, gold, silver)
    out = tmp_path / "out"
    ok(run("finetune", "--task", "pd-ner", "--model", model, "--train-file", silver, "--train-file", gold,
           "--validation-file", gold, "-o", out, "--epochs", "1", "--batch-size", "8", "--max-seq-length", "16",
           *FAST))
    config = json.loads((out / "final" / "config.json").read_text(encoding="utf-8"))
    # ORG comes from the first file only, PER/LOC from the second; 8 examples make one batch of 8.
    assert set(config["id2label"].values()) == {"O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"}
    assert any("loss" in r for r in read_metrics(out))

    bad = tmp_path / "bad.tsv"
    bad.write_text("text_a\tlabel\n张 三\tB-PER\n", encoding="utf-8")  # two characters, one tag
    _refused(tmp_path / "refused", "--task", "pd-ner", "--model", model, "--train-file", gold, "--train-file", bad,
             "--validation-file", gold, fragments=("bad.tsv:2",))
    # Both files together still make fewer features than one batch: the message names both.
    _refused(tmp_path / "refused", "--task", "pd-ner", "--model", model, "--train-file", gold, "--train-file",
             silver, "--validation-file", gold, "--batch-size", "32",
             fragments=("gold.tsv + ", "silver.tsv", "fewer than one batch"))


def finetune_crf_tagger(tmp_path: Path, *options) -> tuple[Path, Path, Path]:
    """`nezha finetune --task pd-ner --crf` on 16 sentences, also its dev set: (OUT, that file, the model)."""
    gold = _ner_tsv(tmp_path / "gold.tsv", [("张三去北京", "B-PER I-PER O B-LOC I-LOC"),
                                            ("李四在上海", "B-PER I-PER O B-LOC I-LOC")] * 8)
    model = model_for(tmp_path, gold)
    out = tmp_path / "out"
    ok(run("finetune", "--task", "pd-ner", "--model", model, "--train-file", gold, "--validation-file", gold,
           "-o", out, "--batch-size", "8", "--max-seq-length", "16", "--crf", *options))
    return out, gold, model


def test_crf_head_trains_decodes_and_evaluates_alike(tmp_path, senti):
    out, gold, model = finetune_crf_tagger(tmp_path, "--epochs", "2", "--crf-learning-rate", "0.05", *FAST)
    config = json.loads((out / "final" / "config.json").read_text(encoding="utf-8"))
    assert config["use_crf"] is True
    from safetensors.torch import load_file

    transitions = load_file(out / "final" / "model.safetensors")["crf.transitions"]
    # 4 steps at up to 0.05 each (Adam): the transitions moved by far more than the body's 1e-3 would allow.
    assert transitions.abs().max() > 0.05
    logged = [r["eval_f1"] for r in read_metrics(out) if "eval_f1" in r]
    metrics = tmp_path / "m.json"
    ok(run("evaluate", "pd-ner", "--model", out / "final", "--file", gold, "--output", metrics))
    # `nezha evaluate` decodes with the saved transitions, as the dev evaluation during training did.
    assert json.loads(metrics.read_text(encoding="utf-8"))["f1"] == pytest.approx(max(logged))

    _refused(tmp_path / "refused", "--task", "chnsenti", "--model", model, "--data-dir", senti, "--crf",
             fragments=("--crf: task chnsenti has no tags",))


def test_word_features_train_save_and_evaluate_alike(tmp_path, senti):
    out, gold, model = finetune_crf_tagger(tmp_path, "--epochs", "2", "--word-features", "jieba-pos", *FAST)
    final = out / "final"
    config = json.loads((final / "config.json").read_text(encoding="utf-8"))
    assert config["word_features"] == "jieba-pos" and config["use_crf"] is True
    from nezha_cli.text.word_features import jieba_version, num_word_features

    assert config["word_features_jieba_version"] == jieba_version()
    from safetensors.torch import load_file

    table = load_file(final / "model.safetensors")["word_feature_embeddings.weight"]
    assert table.shape == (num_word_features("jieba-pos"), 32) and table[0].abs().max() == 0
    logged = [r["eval_f1"] for r in read_metrics(out) if "eval_f1" in r]
    metrics = tmp_path / "m.json"
    ok(run("evaluate", "pd-ner", "--model", final, "--file", gold, "--output", metrics))
    # `nezha evaluate` computes the same features again: the same F1 as the dev evaluation during training.
    assert json.loads(metrics.read_text(encoding="utf-8"))["f1"] == pytest.approx(max(logged))

    _refused(tmp_path / "refused", "--task", "chnsenti", "--model", model, "--data-dir", senti,
             "--word-features", "jieba-pos", fragments=("--word-features: task chnsenti is not a tagging task",))


def test_relaunch_args_repeat_multiple_options():
    from nezha_cli.cli.finetune import finetune, relaunch_args

    ctx = finetune.make_context("finetune", ["--task", "pd-ner", "--model", ".", "--train-file", "pyproject.toml",
                                             "--train-file", "README.md", "-o", "out", "--num-processes", "2",
                                             "--gradient-checkpointing", "--compile"])
    args = relaunch_args(ctx)
    assert "--gradient-checkpointing" in args and "--compile" in args
    assert args[args.index("--train-file") + 1] == "pyproject.toml"
    assert args.count("--train-file") == 2
    assert "README.md" in args and "--num-processes" not in args


@pytest.mark.parametrize(("task", "names", "source"), [
    ("lcqmc", "train.tsv, dev.tsv, test.tsv", "LCQMC (Liu et al., COLING 2018)"),
    ("xnli", "train.tsv", "XNLI-1.0"),
    ("chnsenti", "train.tsv", "label<TAB>text_a"),
    ("cmrc", "train.json, dev.json, test.json", "ymcui/cmrc2018"),
    ("pd-ner", "train.tsv", "nezha corpus pd1998-ner"),
])
def test_a_task_without_data_says_where_its_data_comes_from(tmp_path, task, names, source):
    model = tmp_path / "model"
    model.mkdir()
    _refused(tmp_path, "--task", task, "--model", model,
             fragments=(f"task {task} needs data: give --data-dir (a directory with {names}", source))
