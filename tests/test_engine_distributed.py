"""Two CPU processes (gloo, launched by torchrun as `--num-processes` does) follow the loss curve of one process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch.distributed
from pretrain_fixtures import TINY_MODEL, write_masked_data

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
