"""Two CPU processes (gloo, launched by torchrun as `--num-processes` does) follow the loss curve of one process."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch.distributed
from pretrain_fixtures import TINY_MODEL, write_masked_data
from safetensors.torch import load_file

from nezha_cli.engine.checkpoints import list_checkpoints
from nezha_cli.engine.launch import launch_command, launch_processes
from nezha_cli.engine.metrics_log import read_metrics
from nezha_cli.errors import Terminated

REPO = Path(__file__).resolve().parents[1]

_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from test_engine_trainer import train
    # Same global batch (8) either way: 8 per device in 1 process, 4 per device in 2.
    train(Path({data!r}), Path(sys.argv[1]), per_device_batch_size=int(sys.argv[2]), max_steps=12,
          logging_steps=1, save_steps=6, eval_examples=16, eval_steps=6)
""")


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="torch built without gloo")
def test_two_processes_match_one(tmp_path):
    data = write_masked_data(tmp_path / "data", n=80)
    script = tmp_path / "run.py"
    script.write_text(_SCRIPT.format(tests=str(REPO / "tests"), data=str(data)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(script), str(tmp_path / "one"), "8"], check=True, env=env,
                   capture_output=True)
    command = launch_command(2, [str(script), str(tmp_path / "two"), "4"], module=None)
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    one = read_metrics(tmp_path / "one" / "metrics.jsonl")
    two = read_metrics(tmp_path / "two" / "metrics.jsonl")
    assert [r["step"] for r in one] == [r["step"] for r in two]
    assert len([r for r in two if "loss" in r]) == 12
    for a, b in zip(one, two, strict=True):
        for key in ("loss", "mlm_loss", "nsp_loss", "mlm_acc", "nsp_acc", "lr", "eval_mlm_loss", "eval_mlm_acc"):
            if key in a:
                assert abs(a[key] - b[key]) <= 1e-4, (a["step"], key, a[key], b[key])
    # Both wrote one final model, from the main process.
    assert (tmp_path / "two" / "final" / "model.safetensors").is_file()


_KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from test_engine_trainer import train
    from nezha_cli.pretraining.run import pretraining_step

    kill_in_step = int(sys.argv[2])
    calls = {{"n": 0}}

    def step(model, batch):
        # SIGKILL the whole job in the forward pass of step `kill_in_step`, as a preempted machine: torchrun first
        # (so that it restarts nothing), then each process itself (torchrun starts each in its own session).
        calls["n"] += 1
        if calls["n"] == kill_in_step:
            if os.environ["RANK"] == "0":
                os.kill(os.getppid(), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)
        return pretraining_step(model, batch)

    # 32 instances, global batch 8: 4 steps an epoch; checkpoints at steps 3, 6 and 9.
    train(Path({data!r}), Path(sys.argv[1]), step_fn=step, per_device_batch_size=4, max_steps=10, save_steps=3,
          save_total_limit=1, logging_steps=1, dropout=0.1, resume=kill_in_step < 0)
""")


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="torch built without gloo")
def test_kill_9_then_resume_is_bit_identical_under_two_processes(tmp_path):
    """SIGKILL after a checkpoint inside epoch 1 or 2 of a 2-process run with dropout and dynamic masking, then
    --resume: the same weights and metrics as the uninterrupted 2-process run.

    Before the fix, the resumed epoch's skipped-into loader did not pass the epoch on to the EpochSampler (three
    wrappers under several processes), which drew epoch 0's order: the run drifted from the first resumed step."""
    data = write_masked_data(tmp_path / "data", n=32, dynamic=True)
    script = tmp_path / "run.py"
    script.write_text(_KILL_SCRIPT.format(tests=str(REPO / "tests"), data=str(data)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def launch(out: Path, kill_in_step: int) -> subprocess.CompletedProcess:
        command = launch_command(2, [str(script), str(out), str(kill_in_step)], module=None)
        return subprocess.run(command, env=env, capture_output=True, text=True)

    done = launch(tmp_path / "full", 0)
    assert done.returncode == 0, done.stderr[-3000:]
    cut = tmp_path / "cut"
    # Killed in step 7, 8 (resumed from step 6: epoch 1 after 2 of its 4 steps), 9 or 10 (from step 9: epoch 2).
    kill_in_step = random.Random().randint(7, 10)
    killed = launch(cut, kill_in_step)
    assert killed.returncode != 0 and not (cut / "final").exists(), (kill_in_step, killed.stderr[-3000:])
    assert list_checkpoints(cut)[-1].name == f"step-{(kill_in_step - 1) // 3 * 3:08d}"
    done = launch(cut, -1)
    assert done.returncode == 0, done.stderr[-3000:]
    full, resumed = (load_file(str(out / "final" / "model.safetensors")) for out in (tmp_path / "full", cut))
    assert full.keys() == resumed.keys()
    assert all(torch.equal(full[name], resumed[name]) for name in full), kill_in_step
    strip = [[{k: v for k, v in r.items() if k != "tokens_per_s"} for r in read_metrics(out / "metrics.jsonl")]
             for out in (tmp_path / "full", cut)]
    assert strip[0] == strip[1], kill_in_step


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="torch built without gloo")
def test_a_failed_launch_says_it_in_one_line(tmp_path, capfd):
    # Both processes refuse the batch layout: one `Error:` line in all (not one per process), no traceback of
    # torchrun's, the processes' exit code, and no OUT.
    data = write_masked_data(tmp_path / "data", n=16)
    overrides = [f"model.{k}={v}" for k, v in TINY_MODEL.items()] + ["global_batch_size=6", "per_device_batch_size=4",
                                                                   "eval_examples=4"]
    capfd.readouterr()
    code = launch_processes(2, ["--quiet", "pretrain", "--data", str(data), "-o", str(tmp_path / "o"), *overrides],
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    err = capfd.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and "ChildFailedError" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "is not a multiple of per_device_batch_size=4 x 2 process(es)" in errors[0], err
    assert not (tmp_path / "o").exists()


def test_sigterm_to_the_launching_process_reaches_the_processes(monkeypatch):
    # `kill PID` of the nezha that launched torchrun: without passing it on, torchrun and its processes ran on.
    class FakeTorchrun:
        def __init__(self, *args, **kwargs):
            self.calls = []

        def wait(self):
            self.calls.append("wait")
            if len(self.calls) == 1:
                raise Terminated()
            return 143

        def terminate(self):
            self.calls.append("terminate")

    started = []
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: started.append(FakeTorchrun()) or started[-1])
    assert launch_processes(2, ["pretrain"]) == 143
    assert started[0].calls == ["wait", "terminate", "wait"]


def test_torchrun_reports_the_signal_that_stopped_it(monkeypatch):
    import signal

    from torch.distributed import run as torch_run
    from torch.distributed.elastic.multiprocessing.api import SignalException

    from nezha_cli.engine import torchrun

    def stopped(args):
        raise SignalException("Process got signal: 15", sigval=signal.SIGTERM)

    monkeypatch.setattr(torch_run, "run", stopped)
    assert torchrun.main(["--standalone", "--nproc-per-node=2", "-m", "nezha_cli", "pretrain"]) == 143
