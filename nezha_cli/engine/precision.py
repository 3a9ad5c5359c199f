"""Choosing the mixed precision: ``auto`` picks bf16 where the hardware runs it fast, else full fp32.

bf16 autocast pays off on GPUs with native bf16 (Ampere and later) and on CPUs with AVX512-BF16 or AMX; on other
CPUs it is emulated and slower than fp32. fp16 needs dynamic loss scaling, which accelerate provides on GPUs only.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from nezha_cli.errors import ConfigError

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU feature flags (Linux); empty where /proc/cpuinfo does not exist."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def cpu_has_fast_bf16(flags: set[str] | None = None) -> bool:
    flags = cpu_flags() if flags is None else flags
    if any(f in flags for f in CPU_BF16_FLAGS):
        return True
    # Where there is no /proc/cpuinfo, torch's dispatch level still tells AMX apart.
    return not flags and torch.backends.cpu.get_cpu_capability().upper().startswith("AMX")


def resolve_mixed_precision(requested: str, device_type: str, cuda_bf16: bool = False,
                            flags: set[str] | None = None) -> str:
    """``auto|no|fp16|bf16`` -> the value given to accelerate (``no|fp16|bf16``) for a device of ``device_type``."""
    if requested == "auto":
        if device_type == "cuda":
            return "bf16" if cuda_bf16 else "no"
        if device_type == "cpu":
            return "bf16" if cpu_has_fast_bf16(flags) else "no"
        return "no"
    if requested == "fp16" and device_type == "cpu":
        raise ConfigError(
            "mixed_precision=fp16 needs a GPU (dynamic loss scaling is a GPU feature in accelerate); on CPU use "
            "--mixed-precision bf16 or no"
        )
    if requested == "bf16" and device_type == "cuda" and not cuda_bf16:
        raise ConfigError("mixed_precision=bf16: this GPU has no bf16 support; use --mixed-precision fp16 or no")
    return requested


def current_device_type() -> str:
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def cuda_supports_bf16() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(mixed_precision: str, device_type: str):
    """The autocast that accelerate wraps around a prepared model's forward for ``mixed_precision`` (``no|bf16|fp16``
    as resolved), for running a model outside the Trainer with the same numerics as inside it."""
    if mixed_precision == "no":
        return contextlib.nullcontext()
    if mixed_precision not in AUTOCAST_DTYPES:
        raise ConfigError(f"mixed precision {mixed_precision!r}: expected one of no, {', '.join(AUTOCAST_DTYPES)}")
    if mixed_precision == "bf16" and device_type == "cuda" and not cuda_supports_bf16():
        raise ConfigError("mixed_precision=bf16: this GPU has no bf16 support; use --mixed-precision fp16 or no")
    return torch.autocast(device_type, dtype=AUTOCAST_DTYPES[mixed_precision])
