"""Automatic restart: `torchrun --max-restarts` restarts the workers after one of them is SIGKILLed, and with
`--resume` passed from the first start the run goes on from its newest whole checkpoint, ending bit-identical to the
uninterrupted run (weights and metrics.jsonl), with no manual step in between.

Two CPU processes (gloo over loopback), dropout on, dynamic masking. One worker is killed after the first
checkpoint (rank 1, wherever it is) or while the second checkpoint is being written (rank 0, the one that renames it
into place): a checkpoint cut short must never be taken as complete (the manifest rule of
nezha_cli/engine/checkpoints.py), so the restart goes back to the first one.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil  # an accelerate dependency
import pytest
import torch
import torch.distributed
from pretrain_fixtures import TINY_MODEL, write_masked_data
from safetensors.torch import load_file
from test_engine_multinode import kill_tree, node_env

from nezha_cli.engine.checkpoints import checkpoint_name, checkpoint_problem, list_checkpoints
from nezha_cli.engine.metrics_log import read_metrics

# A whole 2-process run takes about 10 s on 2 shared cores, most of it starting Python and torch; a launcher that
# hangs is killed.
TIMEOUT_S = 120
MAX_STEPS, SAVE_STEPS = 12, 3
# 32 instances, global batch 8: 4 steps an epoch; the checkpoints (steps 3, 6, 9) all fall inside an epoch, so a
# resume skips into the middle of one. Dropout on, so each rank's RNG state must be restored too.
TINY = [f"model.{k}={v}" for k, v in {**TINY_MODEL, "hidden_dropout_prob": 0.1,
                                          "attention_probs_dropout_prob": 0.1}.items()] + [
    "global_batch_size=8", "per_device_batch_size=4", "logging_steps=1", "eval_examples=16", "eval_steps=4",
    "optimizer=adamw", "learning_rate=0.01", "warmup_steps=1", "lr_schedule=constant"]
NO_CHECKPOINT = "no checkpoint to resume from; starting from scratch"


def restartable_command(data: Path, out: Path) -> list[str]:
    """What a user runs on a preemptible machine: torchrun restarts the workers once, --resume from the start."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "--max-restarts", "1", "-m", "nezha_cli", "--quiet", "pretrain", "--data", str(data), "-o", str(out),
            "--resume", "--max-steps", str(MAX_STEPS), "--save-steps", str(SAVE_STEPS), "--seed", "1",
            "--mixed-precision", "no", "--cache-dir", str(out.parent / "cache"), *TINY]


def workers(launcher: subprocess.Popen) -> dict[int, psutil.Process]:
    """The launcher's worker processes by rank (torchrun's direct children, each in a session of its own)."""
    found = {}
    for child in psutil.Process(launcher.pid).children():
        try:
            env = child.environ()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if "RANK" in env:
            found[int(env["RANK"])] = child
    return found


def wait_for(condition, deadline: float, what: str, launcher: subprocess.Popen, poll_s: float = 0.002):
    while True:
        value = condition()
        if value:
            return value
        if launcher.poll() is not None:
            raise AssertionError(f"the launcher ended (exit code {launcher.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(poll_s)


def both_workers(launcher: subprocess.Popen, deadline: float) -> dict[int, psutil.Process]:
    def found():
        ranks = workers(launcher)
        return ranks if len(ranks) == 2 else None

    return wait_for(found, deadline, "both workers", launcher)


def restart_env() -> dict[str, str]:
    # torchrun's agent shares its rendezvous TCPStore with the workers, and the keys of a restarted worker group
    # are not told apart from the previous group's: the restarted ranks read the dead ones' gloo addresses and fail
    # in init_process_group ("Gloo connectFullMesh failed ... Connection refused"; NCCL the same way), so the one
    # restart is spent and the run fails (torch 2.13; pytorch/pytorch#135712). torch's own opt-out gives each
    # rendezvous round a store of its own; docs/pretraining.md tells users to set it.
    return {**node_env(), "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


def run(data: Path, out: Path, log: Path, kill=None) -> tuple[int, str, object]:
    """Run the command to its end (bounded); ``kill(launcher, deadline)`` runs alongside and returns a note.
    Returns the exit code, the launcher's output and the note; kills every process left at the end."""
    note = None
    with open(log, "wb") as f:
        launcher = subprocess.Popen(restartable_command(data, out), env=restart_env(), stdout=f,
                                    stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        if kill is not None:
            note = kill(launcher, deadline)
        code = launcher.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        code = None
    finally:
        kill_tree(launcher)  # the launcher if it is still there, and any worker it left behind
    return code, log.read_text(encoding="utf-8", errors="replace"), note


def outcome(out: Path) -> tuple[dict[str, torch.Tensor], list[dict]]:
    weights = load_file(str(out / "final" / "model.safetensors"))
    metrics = [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in read_metrics(out / "metrics.jsonl")]
    return weights, metrics


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_masked_data(tmp_path_factory.mktemp("restart") / "data", n=32, dynamic=True)


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    root = tmp_path_factory.mktemp("uninterrupted")
    code, output, _ = run(data, root / "run", root / "log.txt")
    assert code == 0, output[-3000:]
    return (*outcome(root / "run"), output.count(NO_CHECKPOINT))


def kill_after_first_checkpoint(launcher: subprocess.Popen, out: Path, deadline: float) -> str:
    first = out / "checkpoints" / checkpoint_name(SAVE_STEPS)
    wait_for(first.is_dir, deadline, f"{first}", launcher)  # renamed into place whole, or not there
    victim = wait_for(lambda: workers(launcher).get(1), deadline, "worker rank 1", launcher)
    victim.send_signal(signal.SIGKILL)
    return f"rank 1 killed after {first.name}"


def kill_during_second_save(launcher: subprocess.Popen, out: Path, deadline: float) -> str:
    ranks = both_workers(launcher, deadline)
    second = out / "checkpoints" / checkpoint_name(2 * SAVE_STEPS)
    temporary = second.parent / f".{second.name}.tmp"
    wait_for(lambda: temporary.exists() or second.exists(), deadline, f"{temporary}", launcher, poll_s=0.0005)
    ranks[0].send_signal(signal.SIGKILL)
    ranks[0].wait(timeout=30)
    # Rank 0 is gone: nothing renames the temporary any more. It is there unless the save ended before the kill.
    return "rank 0 killed during the save of " + second.name if not second.exists() else (
        "rank 0 killed just after the save of " + second.name)


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="torch built without gloo")
@pytest.mark.skipif(not hasattr(psutil.Process, "environ"), reason="psutil cannot read a worker's RANK here")
@pytest.mark.parametrize("kill", [kill_after_first_checkpoint, kill_during_second_save], ids=lambda f: f.__name__)
def test_torchrun_restarts_a_killed_worker_and_the_run_resumes_exactly(kill, data, uninterrupted, tmp_path):
    out = tmp_path / "run"
    first_workers: set[int] = set()

    def killer(launcher: subprocess.Popen, deadline: float) -> tuple[str, set[int]]:
        first_workers.update(p.pid for p in both_workers(launcher, deadline).values())
        note = kill(launcher, out, deadline)
        # torchrun stops the other worker and starts two new ones (their own pids), which resume.
        restarted = wait_for(lambda: (pids := {p.pid for p in workers(launcher).values()} - first_workers)
                             and pids, deadline, "the restarted workers", launcher, poll_s=0.05)
        return note, restarted

    code, output, (note, restarted) = run(data, out, tmp_path / "log.txt", killer)
    assert code == 0, f"{note}\n{output[-3000:]}"
    assert len(restarted) >= 1, note

    expected_weights, expected_metrics, fresh_starts = uninterrupted
    # The first start found no checkpoint and said so (once a process); the restart found one, or it would have
    # said so again.
    assert output.count(NO_CHECKPOINT) == fresh_starts == 2, f"{note}\n{output[-3000:]}"
    # Whole checkpoints only, no temporary left behind.
    for checkpoint in list_checkpoints(out):
        assert checkpoint_problem(checkpoint) is None, checkpoint
    assert [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(".")] == []

    weights, metrics = outcome(out)
    assert weights.keys() == expected_weights.keys()
    assert all(torch.equal(weights[name], expected_weights[name]) for name in weights), note
    assert metrics == expected_metrics, note
