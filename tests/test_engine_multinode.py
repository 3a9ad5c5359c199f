"""Two nodes simulated on localhost: two machine ranks of one CPU process each (gloo over 127.0.0.1), launched as a
cluster would, by `torchrun --nnodes 2` or `accelerate launch --num_machines 2`, writing one OUT on a shared disk.

What a cluster run relies on: the loss curve equals one process's with the same global batch; OUT is written once,
by global rank 0, although both nodes see it (one metrics.jsonl without duplicated or torn records, one final/
model, whole checkpoints holding both ranks' RNG states, the run lock released); and a checkpoint written by the
two nodes resumes in a single process (a requeued job on fewer machines) on the same curve.

Also: the SLURM example in examples/slurm/ is valid bash, and the torchrun and nezha command lines of the script and
its README parse.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil  # an accelerate dependency
import pytest
import torch.distributed
from click.testing import CliRunner
from pretrain_fixtures import TINY_MODEL, write_masked_data
from test_readme import code_lines, nezha_args, parse, shell_commands

from nezha_cli.cli import cli
from nezha_cli.engine.checkpoints import checkpoint_problem, list_checkpoints
from nezha_cli.engine.metrics_log import read_metrics
from nezha_cli.io import RUN_LOCK_NAME, RunLock
from nezha_cli.modeling import NezhaForPreTraining

REPO = Path(__file__).resolve().parents[1]
SBATCH = REPO / "examples" / "slurm" / "pretrain.sbatch"
# A node's whole run takes about 12 s on 2 shared cores; a launcher that hangs (a node that never joins) is killed.
TIMEOUT_S = 180

# Every run below uses this command line; only the launcher and --max-steps differ. One layer, no dropout, static
# masks (the same number per instance, so per-process mean losses average to the global one), fp32, constant
# learning rate (so that a 6-step run resumed to 8 steps follows an 8-step run), one log record per step.
TINY = [f"model.{k}={v}" for k, v in TINY_MODEL.items()] + [
    "global_batch_size=8", "per_device_batch_size=4", "logging_steps=1", "eval_examples=16", "eval_steps=3",
    "optimizer=adamw", "learning_rate=0.01", "warmup_steps=1", "lr_schedule=constant"]
COMPARED = ("loss", "mlm_loss", "nsp_loss", "mlm_acc", "nsp_acc", "lr", "eval_mlm_loss", "eval_mlm_acc")


def pretrain_args(data: Path, out: Path, max_steps: int, *extra: str) -> list[str]:
    return ["--quiet", "pretrain", "--data", str(data), "-o", str(out), "--max-steps", str(max_steps),
            "--save-steps", "3", "--seed", "1", "--mixed-precision", "no", "--cache-dir", str(out.parent / "cache"),
            *extra, *TINY]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_command(launcher: str, rank: int, port: int, args: list[str]) -> list[str]:
    """What a user runs on machine RANK of 2 (one process per machine), as a module of this Python."""
    if launcher == "torchrun":
        # `torchrun` is torch.distributed.run's console script.
        head = ["torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank), "--nproc_per_node", "1",
                "--master_addr", "127.0.0.1", "--master_port", str(port)]
    else:
        # --num_processes counts all machines' processes. --multi_gpu (not --cpu, with which accelerate launch
        # runs one plain process per machine) makes accelerate start torchrun, which uses gloo where there is no GPU.
        head = ["accelerate.commands.launch", "--multi_gpu", "--num_machines", "2", "--machine_rank", str(rank),
                "--num_processes", "2", "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
                "--mixed_precision", "no", "--dynamo_backend", "no"]
    return [sys.executable, "-m", *head, "-m", "nezha_cli", *args]


def node_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "NEZHA_CLI_ERROR_DIR")}
    env["OMP_NUM_THREADS"] = "1"
    if Path("/sys/class/net/lo").exists():
        env["GLOO_SOCKET_IFNAME"] = "lo"  # loopback only, whatever the host name resolves to
    return env


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL a launcher and the processes it started (torchrun starts each in a session of its own, out of
    reach of a signal to the launcher's process group; a worker left behind waits in a collective for 30 min)."""
    try:
        family = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    process.kill()
    for member in family:
        try:
            member.kill()
        except psutil.NoSuchProcess:
            pass
    process.wait(timeout=30)
    psutil.wait_procs(family, timeout=30)


def run_two_nodes(launcher: str, args: list[str], logs: Path) -> list[str]:
    """Start both machine ranks at once, wait for both (bounded), kill what is left; returns their outputs."""
    port = free_port()
    logs.mkdir(parents=True, exist_ok=True)
    nodes = []
    try:
        for rank in (0, 1):
            with open(logs / f"node{rank}.log", "wb") as log:
                nodes.append(subprocess.Popen(node_command(launcher, rank, port, args), env=node_env(), stdout=log,
                                              stderr=subprocess.STDOUT))
        deadline = time.monotonic() + TIMEOUT_S
        for node in nodes:
            node.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for node in nodes:
            if node.poll() is None:
                kill_tree(node)
    outputs = [(logs / f"node{rank}.log").read_text(encoding="utf-8", errors="replace") for rank in (0, 1)]
    codes = [node.returncode for node in nodes]
    assert codes == [0, 0], f"exit codes {codes}\n" + "\n".join(f"--- node {r}:\n{o[-3000:]}"
                                                               for r, o in enumerate(outputs))
    return outputs


def run_one_process(args: list[str]) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output


def assert_same_curve(a: list[dict], b: list[dict]) -> None:
    """Every record (step, train or eval) of A is in B with the same numbers within 1e-4."""
    by_key = {(r["step"], "eval_mlm_loss" in r): r for r in b}
    for record in a:
        other = by_key[(record["step"], "eval_mlm_loss" in record)]
        for key in COMPARED:
            if key in record:
                assert abs(record[key] - other[key]) <= 1e-4, (record["step"], key, record[key], other[key])


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_masked_data(tmp_path_factory.mktemp("multinode") / "data", n=80)


@pytest.fixture(scope="module")
def one_process(data, tmp_path_factory) -> list[dict]:
    """The 8-step curve of one process (accumulating two micro-batches of 4 to the global batch of 8)."""
    out = tmp_path_factory.mktemp("one") / "run"
    run_one_process(pretrain_args(data, out, 8))
    return read_metrics(out / "metrics.jsonl")


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="torch built without gloo")
@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_nodes_match_one_process_and_write_out_once(launcher, data, one_process, tmp_path):
    out = tmp_path / "run"
    outputs = run_two_nodes(launcher, pretrain_args(data, out, 6), tmp_path / "logs")

    # The loss curve of the two nodes is the single process's.
    two = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in two if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in two if "eval_mlm_loss" in r] == [3, 6]
    assert_same_curve(two, one_process)

    # OUT written once, by rank 0: every line a whole JSON record, none twice; one final model; two whole
    # checkpoints (each with both ranks' RNG states), no temporaries left; only rank 0 reports the result.
    lines = (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    keys = [(r["step"], "eval_mlm_loss" in r) for r in records]
    assert len(keys) == len(set(keys)) == 8, keys
    assert {p.name for p in out.iterdir()} == {"recipe.yaml", "metrics.jsonl", "checkpoints", "final", RUN_LOCK_NAME}
    assert {"config.json", "model.safetensors", "vocab.txt"} <= {p.name for p in (out / "final").iterdir()}
    checkpoints = list_checkpoints(out)
    assert [p.name for p in checkpoints] == ["step-00000003", "step-00000006"]
    assert [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(".")] == []
    for checkpoint in checkpoints:
        assert checkpoint_problem(checkpoint) is None
        assert {"random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in checkpoint.iterdir()}
    assert str(out / "final") in outputs[0] and str(out / "final") not in outputs[1]
    # The lock names one process (rank 0's) and was released at the end: another run may take it.
    assert re.fullmatch(r"\d+ on \S+\n", (out / RUN_LOCK_NAME).read_text(encoding="utf-8"))
    RunLock(out).release()

    # Readable by either side: the final model loads in this process, and a single process resumes the two nodes'
    # step-6 checkpoint and goes on the single process's curve.
    model = NezhaForPreTraining.from_pretrained(out / "final")
    assert model.config.hidden_size == TINY_MODEL["hidden_size"]
    run_one_process(pretrain_args(data, out, 8, "--resume"))
    resumed = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in resumed if "loss" in r] == list(range(1, 9))
    assert_same_curve([r for r in resumed if r["step"] > 6], one_process)


def script_commands(path: Path) -> list[list[str]]:
    """The simple commands of a shell script, continuations joined, ``$VAR`` and ``${VAR}`` read as ``1``."""
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    text = re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", "1", text)
    return [argv for line in text.splitlines() for argv in shell_commands(line)]


def test_the_slurm_example_is_valid():
    done = subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    commands = script_commands(SBATCH)
    launches = [argv for argv in commands if "torchrun" in argv]
    assert len(launches) == 1, commands
    argv = launches[0]
    from torch.distributed.run import parse_args

    launch = parse_args(argv[argv.index("torchrun") + 1:])  # an unknown torchrun option fails here
    assert launch.module and launch.training_script == "nezha_cli"
    args = nezha_args(argv)
    assert args is not None and args[0] == "pretrain" and "--resume" in args
    parse(args)  # an unknown nezha option or a bad value fails here


def test_the_slurm_readme_commands_parse():
    # examples/ is not among the documents tests/test_readme.py checks.
    found = [args for line in code_lines(SBATCH.parent / "README.md") for argv in shell_commands(line)
             if (args := nezha_args(argv)) is not None]
    assert [args[0] for args in found] == ["tokenize", "mask"]
    for args in found:
        parse(args)
