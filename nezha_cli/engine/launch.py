"""``--num-processes N``: run the same command in N processes under torchrun (what ``accelerate launch`` uses).

Inside a launched process (``accelerate launch``, ``torchrun``, SLURM via accelerate) nothing is relaunched: the
Accelerator reads the environment. On CPUs the processes talk over gloo, on GPUs over NCCL.

When a launched command fails, each process would print its own ``Error:`` line and torchrun a traceback of its
own. Instead the processes leave their one-line errors in a folder (``ERROR_DIR_ENV``) and the launching command
prints each distinct line once; torchrun runs under :mod:`nezha_cli.engine.torchrun`, which turns a failed
process into its exit code.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from nezha_cli.errors import ConfigError, Terminated

_DISTRIBUTED_ENV = ("LOCAL_RANK", "ACCELERATE_DYNAMO_BACKEND", "ACCELERATE_MIXED_PRECISION")
# Set by launch_processes: where each process writes its one-line error (rank-N.txt) instead of stderr.
ERROR_DIR_ENV = "NEZHA_CLI_ERROR_DIR"


def in_launched_process() -> bool:
    return any(k in os.environ for k in _DISTRIBUTED_ENV) or int(os.environ.get("WORLD_SIZE", "1")) > 1


def launch_command(num_processes: int, args: list[str], module: str | None = "nezha_cli") -> list[str]:
    """The command line running ``python -m MODULE ARGS`` (or ``python ARGS`` when module is None) under torchrun."""
    command = [sys.executable, "-m", "nezha_cli.engine.torchrun", "--standalone", f"--nproc-per-node={num_processes}"]
    return command + (["-m", module] if module else []) + list(args)


def launch_processes(num_processes: int, args: list[str], env: dict[str, str] | None = None) -> int:
    """Run ``nezha ARGS`` in ``num_processes`` processes on this machine; returns the exit code."""
    if num_processes < 1:
        raise ConfigError(f"--num-processes {num_processes}: must be >= 1")
    return _run_launcher(launch_command(num_processes, args), num_processes, env)


def check_accelerate_config(path: Path) -> dict:
    """The settings of an ``accelerate config`` file, or a ConfigError naming it and what to do."""
    import yaml

    hint = "write one with `accelerate config`, or start from examples/accelerate/ (DDP, FSDP, DeepSpeed)"
    if not path.is_file():
        raise ConfigError(f"--accelerate-config {path}: no such file; {hint}")
    try:
        settings = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--accelerate-config {path}: not YAML ({str(exc).splitlines()[0]}); {hint}") from None
    if not isinstance(settings, dict) or "distributed_type" not in settings:
        raise ConfigError(f"--accelerate-config {path}: not an accelerate config (no distributed_type); {hint}")
    return settings


def accelerate_command(config: Path, args: list[str], num_processes: int | None = None) -> list[str]:
    """``accelerate launch --config_file CONFIG -m nezha_cli ARGS`` (``--num_processes`` overriding the file's)."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
    command += ["--num_processes", str(num_processes)] if num_processes else []
    return command + ["-m", "nezha_cli", *args]


def launch_with_accelerate(config: Path, args: list[str], num_processes: int | None = None,
                           env: dict[str, str] | None = None) -> int:
    """Run ``nezha ARGS`` under ``accelerate launch`` with an accelerate config file (FSDP, DeepSpeed, several
    machines); returns the exit code. The file is checked first: a bad one is one line, and nothing starts."""
    settings = check_accelerate_config(config)
    count = num_processes or int(settings.get("num_processes") or 1)
    return _run_launcher(accelerate_command(config, args, num_processes), count, env)


def _run_launcher(command: list[str], num_processes: int, env: dict[str, str] | None) -> int:
    full_env = dict(os.environ if env is None else env)
    # torchrun sets 1 thread per process; spread the cores instead when the user did not choose.
    full_env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // num_processes)))
    with tempfile.TemporaryDirectory(prefix="nezha-errors-") as errors:
        full_env[ERROR_DIR_ENV] = errors
        process = subprocess.Popen(command, env=full_env)
        while True:
            try:
                code = process.wait()
                break
            except Terminated:
                # SIGTERM sent to this process alone (`kill PID`): pass it on, or torchrun and the processes would
                # run on without it; then wait for them to stop.
                process.terminate()
            except KeyboardInterrupt:
                # Ctrl-C reached torchrun and the processes too; wait for them to stop (--resume continues).
                continue
        lines = [p.read_text(encoding="utf-8").strip() for p in sorted(Path(errors).glob("rank-*.txt"),
                                                                        key=lambda p: int(p.stem[5:]))]
    for line in dict.fromkeys(line for line in lines if line):
        print(line, file=sys.stderr)
    return code


def _own_error_file() -> Path | None:
    """This process's error file in :func:`launch_processes`' folder; None outside such a process."""
    folder = os.environ.get(ERROR_DIR_ENV)
    if not folder or not os.path.isdir(folder):
        return None
    return Path(folder) / f"rank-{os.environ.get('RANK', '0')}.txt"


def report_error(line: str) -> bool:
    """In a process started by :func:`launch_processes`, leave ``line`` for it to print; False elsewhere."""
    path = _own_error_file()
    if path is None:
        return False
    path.write_text(line + "\n", encoding="utf-8")
    return True


def another_process_reported_error() -> bool:
    """In a process started by :func:`launch_processes`: whether another process has left an error line. Its
    failure then explains this one's (a barrier or collective whose peer is gone), whose traceback says nothing."""
    own = _own_error_file()
    return own is not None and any(path != own for path in own.parent.glob("rank-*.txt"))
