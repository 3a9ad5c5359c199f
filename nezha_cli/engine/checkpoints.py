"""Training checkpoints under ``OUT/checkpoints/step-NNNNNNNN/``: complete or absent, the last k kept.

A checkpoint is accelerate's ``save_state`` (model, optimizer, scheduler, grad scaler, the RNG states of every
process) plus ``trainer_state.json`` (the loop's own position and counters) plus ``manifest.json``, written last,
which lists every other file with its size and SHA-256. All processes write into one hidden temporary directory;
the main process renames it into place only once everything is on disk, so a run killed while saving leaves the
previous checkpoints untouched and the half-written one is ignored (and removed on resume). A full disk while
saving is one error naming the checkpoint, and its temporary is removed.

One rule decides whether a checkpoint may be resumed from: its manifest matches what is on disk
(:func:`checkpoint_problem`). A file deleted, cut short or altered since (a missing RNG state included, which would
make the resumed run differ silently) makes ``--resume`` skip that checkpoint with a warning naming the file.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from nezha_cli.errors import CheckpointError, NezhaError
from nezha_cli.io import give_default_mode, read_json, sha256_file, write_errors, write_json

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
BEST_DIR = "best"
STATE_NAME = "trainer_state.json"
MANIFEST_NAME = "manifest.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


class _TiedWeightsNotice(logging.Filter):
    # accelerate warns that it dropped the tied decoder weight when saving; the model re-ties it on load.
    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in record.getMessage()


logging.getLogger("accelerate.utils.other").addFilter(_TiedWeightsNotice())


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def checkpoint_candidates(output_dir: Path) -> list[Path]:
    """Every ``step-N`` directory in ``output_dir``, newest first, whole or not."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found, reverse=True)]


def list_checkpoints(output_dir: Path) -> list[Path]:
    """The checkpoints in ``output_dir`` that have a manifest, oldest first; :func:`checkpoint_problem` says
    whether one is still whole."""
    return [p for p in reversed(checkpoint_candidates(output_dir)) if (p / MANIFEST_NAME).is_file()]


def write_manifest(directory: Path) -> None:
    """List every file of ``directory`` with its size and SHA-256 in ``manifest.json`` (the last file written)."""
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST_NAME):
        files[path.relative_to(directory).as_posix()] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    write_json(directory / MANIFEST_NAME, {"files": files})


def checkpoint_problem(path: Path, checksums: bool = True) -> str | None:
    """What is wrong with the checkpoint at ``path`` (a file missing, of another size or checksum than its
    manifest says), or None when it is whole."""
    manifest_path = Path(path) / MANIFEST_NAME
    if not manifest_path.is_file():
        return f"no {MANIFEST_NAME} (the run stopped while writing it, or it was deleted)"
    try:
        files = read_json(manifest_path, what="checkpoint manifest")["files"]
        items = [(name, int(entry["size"]), str(entry["sha256"])) for name, entry in files.items()]
    except (NezhaError, KeyError, TypeError, ValueError, AttributeError):
        return f"{MANIFEST_NAME} cannot be read"
    for name, size, digest in items:
        file = Path(path) / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} has {file.stat().st_size:,} bytes, its manifest says {size:,}"
        if checksums and sha256_file(file) != digest:
            return f"{name} does not match its checksum"
    return None


def _disk_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


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
    previous = list_checkpoints(output_dir)
    # What a checkpoint needs is about what the last one took (known from the second on).
    needed = _disk_size(previous[-1]) if previous else None
    try:
        with write_errors(final, needed):
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
                write_manifest(tmp)
                if final.exists():
                    shutil.rmtree(final)
                os.replace(tmp, final)
                for old in list_checkpoints(output_dir)[:-keep]:
                    shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
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
    """Restore the newest whole checkpoint in ``output_dir`` that loads, as (state, path); None when there is none.

    One that does not match its manifest (a file deleted or cut short, a disk that filled up) or does not load is
    skipped with a warning naming it and the file, so that a resume loses the steps since the checkpoint before it
    rather than stopping or silently resuming from half a state; when none is usable, the error says why the newest
    is not and how to start over.
    """
    first_error = None
    for path in checkpoint_candidates(output_dir):
        problem = checkpoint_problem(path)
        try:
            if problem is not None:
                raise CheckpointError(f"{path}: incomplete checkpoint: {problem}")
            return load_checkpoint(accelerator, path), path
        except NezhaError as exc:  # CheckpointError, or an unreadable trainer state
            first_error = first_error or exc
            logger.warning("%s; trying the checkpoint before it", exc)
    if first_error is not None:
        raise CheckpointError(f"no checkpoint in {Path(output_dir) / CHECKPOINTS_DIR} can be restored (the newest: "
                              f"{first_error}); pass --overwrite instead of --resume to start over")
    return None
