"""Training checkpoints under ``OUT/checkpoints/step-NNNNNNNN/``: complete or absent, the last k kept.

A checkpoint is accelerate's ``save_state`` (model, optimizer, scheduler, grad scaler, the RNG states of every
process) plus ``trainer_state.json`` (the loop's own position and counters). All processes write into one hidden
temporary directory; the main process renames it into place only once everything is on disk, so a run killed while
saving leaves the previous checkpoints untouched and the half-written one is ignored (and removed on resume).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from nezha_cli.errors import CheckpointError, NezhaError
from nezha_cli.io import give_default_mode, read_json, write_json

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
BEST_DIR = "best"
STATE_NAME = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


class _TiedWeightsNotice(logging.Filter):
    # accelerate warns that it dropped the tied decoder weight when saving; the model re-ties it on load.
    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in record.getMessage()


logging.getLogger("accelerate.utils.other").addFilter(_TiedWeightsNotice())


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest first."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        m = _STEP_DIR.match(path.name)
        if m and (path / STATE_NAME).is_file():
            found.append((int(m.group(1)), path))
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def remove_incomplete(output_dir: Path) -> None:
    """Remove temporary directories left by a run killed while saving."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    if root.is_dir():
        for path in root.iterdir():
            if path.name.startswith(".") and ".tmp" in path.name:
                shutil.rmtree(path, ignore_errors=True)


def save_checkpoint(accelerator, output_dir: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write a checkpoint for ``step`` (all processes call this); returns its path."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    final = root / checkpoint_name(step)
    # One name every process agrees on, hidden so that resume never mistakes it for a checkpoint.
    tmp = root / f".{final.name}.tmp"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(tmp / STATE_NAME, state)
        for path in tmp.rglob("*.safetensors"):
            give_default_mode(path)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: Path) -> dict[str, Any]:
    """Restore everything ``save_checkpoint`` wrote; returns the loop's state."""
    state = read_json(Path(path) / STATE_NAME, what="trainer state")
    try:
        accelerator.load_state(str(path))
    except Exception as exc:  # safetensors, torch.load and accelerate each raise their own types
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(f"{path}: cannot restore the checkpoint ({type(exc).__name__}: {message}); "
                              "was it written with the same model and optimizer?") from None
    return state


def load_newest_checkpoint(accelerator, output_dir: Path) -> tuple[dict[str, Any], Path] | None:
    """Restore the newest checkpoint in ``output_dir`` that loads, as (state, path); None when there is none.

    A damaged one (a disk that filled up, a copy cut short) is skipped with a warning, so that a resume loses the
    steps since the checkpoint before it rather than stopping; when none loads, the error says so and why the newest
    did not.
    """
    first_error = None
    for path in reversed(list_checkpoints(output_dir)):
        try:
            return load_checkpoint(accelerator, path), path
        except NezhaError as exc:  # CheckpointError, or an unreadable trainer state
            first_error = first_error or exc
            logger.warning("%s; trying the checkpoint before it", exc)
    if first_error is not None:
        raise CheckpointError(f"no checkpoint in {Path(output_dir) / CHECKPOINTS_DIR} can be restored; the newest: "
                              f"{first_error}")
    return None
