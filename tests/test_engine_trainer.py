"""The shared training loop on tiny NEZHA pretraining runs: learning, checkpoints, exact resume, NaN handling."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from pretrain_fixtures import TINY_MODEL, write_masked_data
from safetensors.torch import load_file

from nezha_cli.engine import StepOutput, Trainer, TrainingArguments, TrainingDiverged
from nezha_cli.engine.checkpoints import list_checkpoints
from nezha_cli.engine.metrics_log import read_metrics
from nezha_cli.errors import CheckpointError, ConfigError, OutputExistsError
from nezha_cli.modeling import NezhaConfig, NezhaForPreTraining
from nezha_cli.pretraining.collator import PretrainingCollator
from nezha_cli.pretraining.data import load_pretraining_data, make_collators
from nezha_cli.pretraining.run import mlm_evaluator, pretraining_step

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_masked_data(tmp_path_factory.mktemp("data") / "masked", n=96)


@pytest.fixture(scope="module")
def dynamic_dir(tmp_path_factory) -> Path:
    return write_masked_data(tmp_path_factory.mktemp("data") / "dynamic", n=96, dynamic=True)


def make_model(dropout: float = 0.0, seed: int = 0, layers: int = 1) -> NezhaForPreTraining:
    torch.manual_seed(seed)
    cfg = {**TINY_MODEL, "hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout,
           "num_hidden_layers": layers}
    return NezhaForPreTraining(NezhaConfig(vocab_size=40, **cfg))


def make_args(out: Path, **kw) -> TrainingArguments:
    # fp32 unless a test asks for more: `auto` would pick bf16 on CPUs with AVX512-BF16 or AMX, and the curves
    # compared across runs and process counts would then differ by bf16 rounding from machine to machine.
    base = dict(global_batch_size=8, per_device_batch_size=4, max_steps=12, optimizer="adamw", learning_rate=1e-2,
                warmup_steps=2, logging_steps=2, save_steps=4, save_total_limit=2, progress=False,
                tensorboard=False, seed=1, mixed_precision="no")
    base.update(kw)
    return TrainingArguments(output_dir=out, **base)


def train(data_dir: Path, out: Path, step_fn=pretraining_step, dropout: float = 0.0, eval_examples: int = 0,
          layers: int = 1, **kw):
    data = load_pretraining_data(data_dir, eval_examples=eval_examples)
    args = make_args(out, **kw)
    collate, eval_collate = make_collators(data, args.seed)
    evaluate = mlm_evaluator(data.eval, eval_collate) if data.eval is not None else None
    trainer = Trainer(make_model(dropout, layers=layers), args, data.train, collate, step_fn, evaluate=evaluate)
    return trainer.train()


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_two_trainers_in_one_process_use_their_own_settings(data_dir, tmp_path):
    # accelerate's state is a process-wide singleton; the Trainer resets it (a private call, see _make_accelerator).
    data = load_pretraining_data(data_dir)
    collate, _ = make_collators(data, 1)
    first = Trainer(make_model(), make_args(tmp_path / "a", per_device_batch_size=2), data.train, collate,
                    pretraining_step)
    assert (first.accelerator.mixed_precision, first.accelerator.gradient_accumulation_steps) == ("no", 4)
    second = Trainer(make_model(), make_args(tmp_path / "b", mixed_precision="bf16", per_device_batch_size=8),
                     data.train, collate, pretraining_step)
    assert (second.accelerator.mixed_precision, second.accelerator.gradient_accumulation_steps) == ("bf16", 1)


def test_loss_falls_and_outputs(data_dir, tmp_path):
    out = tmp_path / "run"
    result = train(data_dir, out, max_steps=40, logging_steps=5, eval_examples=16, eval_steps=20,
                   metric_for_best_model=None)
    records = read_metrics(out / "metrics.jsonl")
    train_records = [r for r in records if "loss" in r]
    assert [r["step"] for r in train_records] == list(range(5, 41, 5))
    for key in ("step", "loss", "mlm_loss", "nsp_loss", "mlm_acc", "nsp_acc", "lr", "tokens_per_s"):
        assert key in train_records[0]
    # Fresh masks every epoch leave nothing to memorise: the drop is slower than with static masks.
    assert train_records[-1]["mlm_loss"] < 0.92 * train_records[0]["mlm_loss"]
    evals = [r for r in records if "eval_mlm_acc" in r]
    assert [r["step"] for r in evals] == [20, 40]
    assert evals[-1]["eval_perplexity"] == pytest.approx(float(torch.tensor(evals[-1]["eval_mlm_loss"]).exp()))
    # The NSP baseline beside NSP accuracy: the share of the more frequent label among the 16 held-out pairs.
    assert 0.5 <= evals[-1]["eval_nsp_majority"] <= 1 and (evals[-1]["eval_nsp_majority"] * 16).is_integer()
    assert result.global_step == 40 and result.final_dir == out / "final"
    # final/ is a model directory; checkpoints keep the last two
    reloaded = NezhaForPreTraining.from_pretrained(out / "final")
    assert reloaded.config.hidden_size == TINY_MODEL["hidden_size"]
    assert [p.name for p in list_checkpoints(out)] == ["step-00000036", "step-00000040"]
    state = json.loads((out / "checkpoints" / "step-00000040" / "trainer_state.json").read_text())
    # Written after the final step closed the fourth epoch (and after the final evaluation).
    assert state["global_step"] == 40 and state["epoch"] == 4 and state["step_in_epoch"] == 0


class Crash(Exception):
    pass


def crashing_step(after_micro_batches: int):
    calls = {"n": 0}

    def step(model, batch):
        calls["n"] += 1
        if calls["n"] > after_micro_batches:
            raise Crash()
        return pretraining_step(model, batch)

    return step


@pytest.mark.parametrize(("accumulation", "dynamic"), [(1, False), (2, False), (2, True)])
def test_resume_is_bit_identical_in_process(data_dir, dynamic_dir, tmp_path, accumulation, dynamic):
    # Dropout on: the RNG states must come back too. 96 examples / 8 = 12 steps per epoch; 15 steps cross an epoch
    # (dynamic data: into the masks of epoch 1, which the resumed run must draw the same).
    data_dir = dynamic_dir if dynamic else data_dir
    kw = dict(max_steps=15, per_device_batch_size=8 // accumulation, dropout=0.1, eval_examples=16, eval_steps=5)
    full = train(data_dir, tmp_path / "full", **kw)
    # Crash in step 11 (after the checkpoint at step 8), then resume.
    with pytest.raises(Crash):
        train(data_dir, tmp_path / "cut", step_fn=crashing_step(10 * accumulation + 1), **kw)
    assert list_checkpoints(tmp_path / "cut")[-1].name == "step-00000008"
    resumed = train(data_dir, tmp_path / "cut", resume=True, **kw)
    assert resumed.resumed_from.name == "step-00000008"
    assert_bit_identical(weights(full.final_dir), weights(resumed.final_dir))
    drop = ("tokens_per_s",)
    strip = [{k: v for k, v in r.items() if k not in drop} for r in read_metrics(tmp_path / "full" / "metrics.jsonl")]
    strip2 = [{k: v for k, v in r.items() if k not in drop} for r in read_metrics(tmp_path / "cut" / "metrics.jsonl")]
    assert strip == strip2


def test_resume_skips_a_damaged_checkpoint(data_dir, tmp_path, caplog):
    import shutil

    kw = dict(max_steps=15, per_device_batch_size=8, save_steps=4, dropout=0.1)
    full = train(data_dir, tmp_path / "full", **kw)
    with pytest.raises(Crash):
        train(data_dir, tmp_path / "cut", step_fn=crashing_step(10), **kw)
    older, newest = list_checkpoints(tmp_path / "cut")[-2:]
    names = sorted(p.name for p in newest.iterdir())
    assert {"manifest.json", "trainer_state.json", "model.safetensors", "random_states_0.pkl"} <= set(names)
    # Any one file gone (the RNG state included, which would make the run differ silently), or one cut short: the
    # checkpoint is skipped by name, and the run from the one before it is the uninterrupted run.
    damages = [(name, "delete") for name in names] + [("model.safetensors", "truncate")]
    for name, damage in damages:
        case = tmp_path / f"{damage}-{name}"
        shutil.copytree(tmp_path / "cut", case)
        target = case / "checkpoints" / newest.name / name
        if damage == "delete":
            target.unlink()
        else:
            with open(target, "r+b") as f:
                f.truncate(100)
        caplog.clear()
        resumed = train(data_dir, case, resume=True, **kw)
        assert resumed.resumed_from.name == older.name, name
        warning = f"{case / 'checkpoints' / newest.name}: incomplete checkpoint: "
        assert warning in caplog.text and name in caplog.text.split(warning)[1], (name, caplog.text)
        assert_bit_identical(weights(full.final_dir), weights(resumed.final_dir))
    for checkpoint in list_checkpoints(tmp_path / "cut"):
        (checkpoint / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="can be restored .*model.safetensors has 0 bytes.*--overwrite"):
        train(data_dir, tmp_path / "cut", resume=True, **kw)


def test_full_disk_while_saving_a_checkpoint(data_dir, tmp_path, monkeypatch):
    """A full disk (injected into the weights' writer) is one error naming the checkpoint; no temporary is left,
    and resuming afterwards gives the uninterrupted run."""
    import errno

    from safetensors import SafetensorError

    from nezha_cli.errors import OutputWriteError

    kw = dict(max_steps=12, per_device_batch_size=8, save_steps=4, dropout=0.1)
    full = train(data_dir, tmp_path / "full", **kw)
    from accelerate import Accelerator

    real = Accelerator.save_state
    calls = {"n": 0}

    def full_disk(self, *args, **kwargs):
        # accelerate's writer fails the second time (step 8) after writing part of the checkpoint, as on a disk
        # that fills up: safetensors reports it in its own exception type, which is no OSError.
        calls["n"] += 1
        result = real(self, *args, **kwargs)
        if calls["n"] == 2:
            raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                                  "\"No space left on device\" })")
        return result

    monkeypatch.setattr(Accelerator, "save_state", full_disk)
    with pytest.raises(OutputWriteError, match=r"step-00000008: cannot write it \(no space left on the device; .* "
                                               r"free there, about .* needed\)"):
        train(data_dir, tmp_path / "cut", **kw)
    root = tmp_path / "cut" / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step-00000004"]  # no temporary left
    monkeypatch.setattr(Accelerator, "save_state", real)
    resumed = train(data_dir, tmp_path / "cut", resume=True, **kw)
    assert resumed.resumed_from.name == "step-00000004"
    assert_bit_identical(weights(full.final_dir), weights(resumed.final_dir))
    import safetensors.torch

    # The operating system's own errors, through the same path.
    monkeypatch.setattr(safetensors.torch, "save_file",
                        lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EDQUOT, "Disk quota exceeded")))
    with pytest.raises(OutputWriteError, match="final: cannot write it \\(disk quota exceeded"):
        train(data_dir, tmp_path / "quota", **{**kw, "save_steps": 0})
    assert not any(p.name.startswith(".") for p in (tmp_path / "quota").iterdir() if p.name != ".nezha-run.lock")


_KILL_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from test_engine_trainer import train
    train(Path({data!r}), Path(sys.argv[1]), max_steps=40, save_steps=3, logging_steps=1, dropout=0.1,
          resume=len(sys.argv) > 2)
""")


@pytest.mark.slow
def test_kill_9_then_resume_is_bit_identical(data_dir, tmp_path):
    script = tmp_path / "run.py"
    script.write_text(_KILL_SCRIPT.format(tests=str(REPO / "tests"), data=str(data_dir)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(script), str(tmp_path / "full")], check=True, env=env,
                   capture_output=True)
    cut = tmp_path / "cut"
    kill_at = random.Random().randint(5, 30)
    proc = subprocess.Popen([sys.executable, str(script), str(cut)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None:
            steps = [r.get("step", 0) for r in read_metrics(cut / "metrics.jsonl")]
            if steps and max(steps) >= kill_at:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.01)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (cut / "final").exists()
    subprocess.run([sys.executable, str(script), str(cut), "--resume"], check=True, env=env, capture_output=True)
    assert_bit_identical(weights(tmp_path / "full" / "final"), weights(cut / "final"))


def test_nonfinite_loss_stops_and_keeps_last_checkpoint(data_dir, tmp_path):
    calls = {"n": 0}

    def step(model, batch):
        calls["n"] += 1
        out = pretraining_step(model, batch)
        if calls["n"] > 5 * 2:  # from step 6 on (2 micro-batches per step)
            out.loss = out.loss * float("nan")
        return out

    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="NaN/inf for 3 consecutive steps.*step-00000004"):
        train(data_dir, out, step_fn=step, per_device_batch_size=4, gradient_accumulation_steps=None,
              max_nonfinite_steps=3, global_batch_size=8, max_steps=20)
    # Nothing was written after the NaNs: the checkpoint of step 4 is the last and loads.
    assert [p.name for p in list_checkpoints(out)] == ["step-00000004"]
    assert not (out / "final").exists()
    assert all(torch.isfinite(t).all() for t in weights(list_checkpoints(out)[-1]).values())


def test_isolated_nonfinite_step_is_skipped(data_dir, tmp_path):
    calls = {"n": 0}

    def step(model, batch):
        calls["n"] += 1
        out = pretraining_step(model, batch)
        if calls["n"] == 5:
            out.loss = out.loss * float("inf")
        return out

    result = train(data_dir, tmp_path / "run", step_fn=step, per_device_batch_size=8, max_steps=6)
    assert result.nonfinite_steps == 1 and result.global_step == 6
    assert all(torch.isfinite(t).all() for t in weights(result.final_dir).values())


def test_global_batch_must_divide(data_dir, tmp_path):
    with pytest.raises(ConfigError, match="global_batch_size=10 is not a multiple of per_device_batch_size=4"):
        make_args(tmp_path, global_batch_size=10).batch_layout(1)
    assert make_args(tmp_path, global_batch_size=32, per_device_batch_size=4).batch_layout(2) == (4, 4)
    # Worded for both commands: finetune calls it --batch-size.
    with pytest.raises(ConfigError, match=r"the global batch of 9 \(pretrain: global_batch_size; finetune: "
                                          r"--batch-size\) does not divide into 2 process\(es\)"):
        make_args(tmp_path, global_batch_size=9, per_device_batch_size=None).batch_layout(2)
    assert make_args(tmp_path, global_batch_size=32, per_device_batch_size=None,
                     gradient_accumulation_steps=2).batch_layout(4) == (4, 2)


def test_existing_output_is_refused(data_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "something").write_text("x")
    with pytest.raises(OutputExistsError, match="--resume"):
        train(data_dir, out, max_steps=1)


def test_a_second_run_on_the_same_output_is_refused(data_dir, tmp_path):
    from nezha_cli.io import RUN_LOCK_NAME, RunLock

    out = tmp_path / "run"
    train(data_dir, out, max_steps=2)  # leaves its lock file, unlocked
    before = weights(out / "final")
    running = RunLock(out)  # another process training into OUT, as far as flock can tell
    try:
        with pytest.raises(OutputExistsError, match=rf"run: another run \(process {os.getpid()} on .*\) is writing"):
            train(data_dir, out, max_steps=4, overwrite=True)
        assert_bit_identical(weights(out / "final"), before)  # nothing removed or written
    finally:
        running.release()
    train(data_dir, out, max_steps=4, resume=True)  # released: the run goes on
    assert read_metrics(out / "metrics.jsonl")[-1]["step"] == 4
    # A directory that holds only a finished run's lock is empty for the rules of OUT.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / RUN_LOCK_NAME).write_text("")
    train(data_dir, fresh, max_steps=1)


def test_best_model_selection(data_dir, tmp_path):
    # A made-up dev metric that peaks at step 4: final/ must be the model of step 4.
    values = iter([0.5, 0.9, 0.7])
    snapshots = {}

    def evaluate(trainer):
        snapshots[trainer.state["global_step"]] = {
            k: v.clone() for k, v in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()}
        return {"score": next(values)}

    data = load_pretraining_data(data_dir)
    args = make_args(tmp_path / "run", max_steps=6, eval_steps=2, metric_for_best_model="score")
    collate, _ = make_collators(data, args.seed)
    trainer = Trainer(make_model(), args, data.train, collate, pretraining_step, evaluate=evaluate)
    result = trainer.train()
    assert result.best_metric == 0.9
    final = weights(result.final_dir)
    assert torch.equal(final["nezha.embeddings.word_embeddings.weight"],
                       snapshots[4]["nezha.embeddings.word_embeddings.weight"])


def test_bf16_runs_on_cpu(data_dir, tmp_path):
    result = train(data_dir, tmp_path / "run", mixed_precision="bf16", max_steps=2, save_steps=0)
    assert result.mixed_precision == "bf16"
    assert all(torch.isfinite(t).all() for t in weights(result.final_dir).values())


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=0, atol=atol), (name, (a[name] - b[name]).abs().max())


def test_gradient_checkpointing_gives_the_same_run(data_dir, tmp_path):
    # Dropout on: the layers computed again in the backward pass must draw the masks of their forward.
    kw = dict(max_steps=6, dropout=0.1, layers=2, eval_examples=16, eval_steps=3)
    plain = train(data_dir, tmp_path / "plain", **kw)
    checkpointed = train(data_dir, tmp_path / "checkpointed", gradient_checkpointing=True, **kw)
    assert_close(weights(plain.final_dir), weights(checkpointed.final_dir))
    records = [read_metrics(tmp_path / name / "metrics.jsonl") for name in ("plain", "checkpointed")]
    assert [sorted(r) for r in records[0]] == [sorted(r) for r in records[1]]
    for a, b in zip(*records):
        for key in a:
            if key != "tokens_per_s":
                assert a[key] == pytest.approx(b[key], abs=1e-5), key


def saved_activation_bytes(model: torch.nn.Module, batch: dict) -> int:
    """Bytes of the tensors a training forward keeps for the backward pass (parameters left out)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        pretraining_step(model, batch).loss.backward()
    return sum(storages.values())


def test_gradient_checkpointing_option_turns_it_on(data_dir, tmp_path):
    data = load_pretraining_data(data_dir, eval_examples=0)
    collate, _ = make_collators(data, seed=0)
    batch = collate([data.train[i] for i in range(8)])
    plain, model = make_model(layers=4), make_model(layers=4)
    Trainer(model, make_args(tmp_path / "run", gradient_checkpointing=True), data.train, collate, pretraining_step)
    # Between forward and backward only each layer's input is kept instead of every layer's activations.
    assert saved_activation_bytes(model, batch) < 0.6 * saved_activation_bytes(plain, batch)
    Trainer(plain, make_args(tmp_path / "run"), data.train, collate, pretraining_step)  # off: left alone
    assert saved_activation_bytes(plain, batch) == saved_activation_bytes(make_model(layers=4), batch)

    with pytest.raises(ConfigError, match="Linear has no gradient_checkpointing_enable"):
        Trainer(torch.nn.Linear(2, 2), make_args(tmp_path / "run", gradient_checkpointing=True), data.train, collate,
                pretraining_step)


def test_fp16_overflow_steps_are_skipped_and_counted(data_dir, tmp_path):
    """accelerate scales fp16 losses on GPUs only; emulate its GPU path on CPU with torch's CPU GradScaler."""
    from accelerate import Accelerator

    class FP16OnCPU(Trainer):
        def _make_accelerator(self):
            accelerator, _ = super()._make_accelerator()
            # What accelerate sets up for fp16 on a GPU: fp16 autocast and a dynamic grad scaler. It starts at
            # 2**30, so the first fp16 gradients overflow: those steps are skipped and the scale drops.
            accelerator.state._mixed_precision = "fp16"
            accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**30)
            accelerator.native_amp = True
            return accelerator, "fp16"

    data = load_pretraining_data(data_dir)
    args = make_args(tmp_path / "run", max_steps=30, save_steps=0, mixed_precision="no", logging_steps=10)
    collate, _ = make_collators(data, args.seed)
    trainer = FP16OnCPU(make_model(), args, data.train, collate, pretraining_step)
    assert isinstance(trainer.accelerator, Accelerator)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    result = trainer.train()
    assert result.overflow_steps >= 1
    assert result.nonfinite_steps == 0
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert records[-1]["overflow_steps"] == result.overflow_steps
    # Once the scale has come down, steps go through and the model learns.
    assert result.overflow_steps < 30
    assert records[-1]["mlm_loss"] < records[0]["mlm_loss"]
    after = weights(result.final_dir)
    assert all(torch.isfinite(t).all() for t in after.values())
    assert not torch.equal(after["nezha.embeddings.word_embeddings.weight"],
                           before["nezha.embeddings.word_embeddings.weight"])


def test_mlm_at_masked_positions_equals_full_computation():
    model = make_model()
    model.eval()
    special = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4, "vocab_size": 40}
    batch = PretrainingCollator(special)([
        {"input_ids": [2, 5, 4, 7, 4, 3], "token_type_ids": [0, 0, 0, 1, 1, 1], "masked_lm_positions": [2, 4],
         "masked_lm_ids": [6, 8], "next_sentence_label": 0},
        {"input_ids": [2, 9, 4, 3], "token_type_ids": [0, 0, 1, 1], "masked_lm_positions": [2],
         "masked_lm_ids": [10], "next_sentence_label": 1},
    ])
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    gathered = model(**inputs, masked_lm_positions=batch["masked_lm_positions"], labels=batch["masked_lm_labels"],
                     next_sentence_label=batch["next_sentence_label"])
    # The full computation: every position scored, labels spread over the sequence.
    full_labels = torch.full_like(batch["input_ids"], -100)
    for b in range(2):
        for p, label in zip(batch["masked_lm_positions"][b], batch["masked_lm_labels"][b], strict=True):
            if label != -100:
                full_labels[b, p] = label
    full = model(**inputs, labels=full_labels, next_sentence_label=batch["next_sentence_label"])
    assert full.prediction_logits.shape[1] == 6 and gathered.prediction_logits.shape[1] == 2
    torch.testing.assert_close(gathered.loss, full.loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gathered.prediction_logits[0, 1], full.prediction_logits[0, 4])
    torch.testing.assert_close(gathered.prediction_logits[1, 0], full.prediction_logits[1, 2])


def test_step_output_metrics_are_averaged(tmp_path):
    # A toy regression: the engine works for any model and step function (the fine-tuning use).
    torch.manual_seed(0)
    x = torch.randn(32, 4)
    dataset = [{"x": x[i], "y": x[i].sum()} for i in range(32)]

    def collate(examples):
        return {"x": torch.stack([e["x"] for e in examples]), "y": torch.stack([e["y"] for e in examples])}

    def step(model, batch):
        loss = ((model(batch["x"]).squeeze(-1) - batch["y"]) ** 2).mean()
        return StepOutput(loss, {"constant": torch.tensor(3.0)}, num_tokens=len(batch["x"]))

    args = make_args(tmp_path / "toy", max_steps=8, logging_steps=4, save_steps=0, optimizer="lamb")
    result = Trainer(torch.nn.Linear(4, 1), args, dataset, collate, step,
                     save_model=lambda m, d: torch.save(m.state_dict(), d / "w.pt")).train()
    assert (result.final_dir / "w.pt").is_file()
    records = read_metrics(tmp_path / "toy" / "metrics.jsonl")
    assert [r["constant"] for r in records] == [3.0, 3.0]
    assert records[-1]["loss"] < records[0]["loss"]


class RecordingCollator:
    """Wraps the dynamic collator: which positions each instance had masked, per epoch."""

    def __init__(self, inner: PretrainingCollator):
        self.inner = inner
        self.masks: dict[int, dict[int, list[int]]] = {}

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def __call__(self, examples):
        batch = self.inner(examples)
        for example, positions, labels in zip(examples, batch["masked_lm_positions"], batch["masked_lm_labels"]):
            kept = [int(p) for p, label in zip(positions, labels) if label != -100]
            self.masks.setdefault(int(example["instance_id"]), {})[self.inner.epoch] = kept
        return batch


def test_dynamic_masking_through_the_trainer(dynamic_dir, tmp_path):
    data = load_pretraining_data(dynamic_dir, eval_examples=16)
    assert data.dynamic and "masked_lm_positions" not in data.train.column_names
    args = make_args(tmp_path / "run", max_steps=30, logging_steps=10, eval_steps=10, save_steps=0)
    collate, eval_collate = make_collators(data, args.seed)
    recording = RecordingCollator(collate)
    trainer = Trainer(make_model(), args, data.train, recording, pretraining_step,
                      evaluate=mlm_evaluator(data.eval, eval_collate))
    trainer.train()
    # 80 training instances / 8 = 10 steps per epoch: three epochs, each instance masked anew in each.
    assert len(recording.masks) == 80 and all(sorted(m) == [0, 1, 2] for m in recording.masks.values())
    changed = sum(m[0] != m[1] or m[1] != m[2] for m in recording.masks.values())
    assert changed >= 60
    # Each mask is the pure function of (seed, epoch, instance_id) that a fresh collator computes.
    fresh = PretrainingCollator.from_manifest(dynamic_dir, seed=args.seed)
    for epoch in (0, 2):
        fresh.set_epoch(epoch)
        _, positions, _ = fresh.mask([data.train[i] for i in range(5)])
        assert positions == [recording.masks[int(data.train[i]["instance_id"])][epoch] for i in range(5)]
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    train_records = [r for r in records if "mlm_loss" in r]
    # Fresh masks every epoch leave nothing to memorise: the drop is slower than with static masks.
    assert train_records[-1]["mlm_loss"] < 0.92 * train_records[0]["mlm_loss"]
    # Evaluation scores the same masks every time (epoch 0), so its numbers are comparable across steps.
    assert eval_collate is not collate and eval_collate.epoch == 0
    assert [r["step"] for r in records if "eval_mlm_acc" in r] == [10, 20, 30]


def test_group_by_length_batches_similar_lengths_at_random():
    from nezha_cli.engine.trainer import EpochSampler

    rng = random.Random(0)
    lengths = [rng.randint(5, 120) for _ in range(1003)]
    batch = 16
    grouped = EpochSampler(len(lengths), seed=3, multiple=batch, lengths=lengths)
    plain = EpochSampler(len(lengths), seed=3, multiple=batch)

    def padded_tokens(order):
        return sum(max(lengths[i] for i in order[s:s + batch]) * batch for s in range(0, len(order), batch))

    epochs = []
    for epoch in range(2):
        grouped.set_epoch(epoch)
        plain.set_epoch(epoch)
        order = list(grouped)
        # Whole global batches of distinct examples; the same order for the same (seed, epoch): exact resume.
        assert len(order) == len(grouped) == 1003 // batch * batch and len(set(order)) == len(order)
        assert order == list(grouped)
        assert padded_tokens(order) < 0.7 * padded_tokens(list(plain))
        epochs.append(order)
    assert epochs[0] != epochs[1]
    # Batches are still drawn from the whole data: the first batches of an epoch are not all the longest.
    firsts = [max(lengths[i] for i in epochs[0][s:s + batch]) for s in range(0, 10 * batch, batch)]
    assert min(firsts) < 100


def test_input_length_of_single_and_multiple_choice_examples():
    from nezha_cli.engine.trainer import input_length

    assert input_length({"input_ids": [1, 2, 3]}) == 3
    assert input_length({"input_ids": [[1, 2], [1, 2, 3, 4]]}) == 4


def test_resuming_a_finished_run_changes_nothing(data_dir, tmp_path):
    # The last step is a save step but not an evaluation step: its checkpoint must come after the final evaluation,
    # else a resume of the finished run evaluates (and logs) the last step again.
    kw = dict(max_steps=8, save_steps=4, eval_examples=16, eval_steps=3)
    train(data_dir, tmp_path / "run", **kw)
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert sum('"eval_mlm_loss"' in line for line in before.splitlines()) == 3  # steps 3, 6 and the final 8
    again = train(data_dir, tmp_path / "run", resume=True, **kw)
    assert again.global_step == 8 and (tmp_path / "run" / "metrics.jsonl").read_text() == before


def test_loaders_pin_memory_on_cuda_hosts_only():
    from nezha_cli.engine.trainer import pin_memory_for

    assert pin_memory_for(torch.device("cuda", 0)) and not pin_memory_for(torch.device("cpu"))


def test_sharded_runs_write_their_model_from_a_gathered_copy(data_dir, tmp_path, monkeypatch):
    """FSDP / ZeRO-3 hold a part of the weights per process: the model directory is written from the weights
    accelerate gathers, into a plain copy of the model. Here one process plays the sharded case (the gathering
    itself is accelerate's): the saved model is the one the plain path saves, tied decoder included."""
    from nezha_cli.engine import trainer as trainer_module

    plain = train(data_dir, tmp_path / "plain", max_steps=2)
    gathered = []
    original = trainer_module._gathered_copy
    monkeypatch.setattr(trainer_module, "_sharded", lambda accelerator: True)
    monkeypatch.setattr(trainer_module, "_gathered_copy",
                        lambda *a: gathered.append(1) or original(*a))
    sharded = train(data_dir, tmp_path / "sharded", max_steps=2)
    assert gathered
    assert_bit_identical(weights(plain.final_dir), weights(sharded.final_dir))
    model = NezhaForPreTraining.from_pretrained(sharded.final_dir)
    assert model.cls.predictions.decoder.weight is model.nezha.embeddings.word_embeddings.weight


def test_a_gathered_state_dict_that_does_not_fit_is_refused(monkeypatch):
    from nezha_cli.engine import trainer as trainer_module

    model = make_model()
    fake = SimpleNamespace(is_main_process=True, get_state_dict=lambda wrapped: {"bogus.weight": torch.zeros(1)})
    with pytest.raises(ConfigError, match="do not fit NezhaForPreTraining: missing .*unexpected \\['bogus.weight'\\]"):
        trainer_module._gathered_copy(fake, model, model)
