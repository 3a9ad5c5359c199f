"""``--num-processes N``: run the same command in N processes under torchrun (what ``accelerate launch`` uses).

Inside a launched process (``accelerate launch``, ``torchrun``, SLURM via accelerate) nothing is relaunched: the
Accelerator reads the environment. On CPUs the processes talk over gloo, on GPUs over NCCL.
"""

from __future__ import annotations

import os
import subprocess
import sys

from nezha_cli.errors import ConfigError

_DISTRIBUTED_ENV = ("LOCAL_RANK", "ACCELERATE_DYNAMO_BACKEND", "ACCELERATE_MIXED_PRECISION")


def in_launched_process() -> bool:
    return any(k in os.environ for k in _DISTRIBUTED_ENV) or int(os.environ.get("WORLD_SIZE", "1")) > 1


def launch_command(num_processes: int, args: list[str], module: str | None = "nezha_cli") -> list[str]:
    """torchrun's command line for ``python -m MODULE ARGS`` (or ``python ARGS`` when module is None)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={num_processes}"]
    return command + (["-m", module] if module else []) + list(args)


def launch_processes(num_processes: int, args: list[str], env: dict[str, str] | None = None) -> int:
    """Run ``nezha ARGS`` in ``num_processes`` processes on this machine; returns the exit code."""
    if num_processes < 1:
        raise ConfigError(f"--num-processes {num_processes}: must be >= 1")
    full_env = dict(os.environ if env is None else env)
    # torchrun sets 1 thread per process; spread the cores instead when the user did not choose.
    full_env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // num_processes)))
    return subprocess.call(launch_command(num_processes, args), env=full_env)
