"""``OUT/finetune.yaml``: every setting of a fine-tuning run, and the check that ``--resume`` keeps the run's.

The file has two sections. ``result`` holds what decides the trained weights and the reported numbers: the task and
its columns, the model directory and the data files (resolved paths with a fingerprint of their contents), and the
hyperparameters as the run used them (the task's defaults applied, ``auto`` precision resolved). ``other`` holds
what only changes how the run goes (logging, checkpointing, gradient checkpointing, compilation). ``--resume``
refuses any change under ``result`` with one line naming the setting, since the continued run would mix two
settings (the learning-rate schedule alone depends on the total steps, so even ``--epochs`` counts) and be neither;
changes under ``other`` are accepted. A run written before this file existed resumes unchecked, with a warning.

A file's fingerprint is its SHA-256 up to :data:`HASH_LIMIT` bytes, beyond that its size and modification time (a
base model's weights or a large corpus, which would take seconds to hash on every resume).
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from nezha_cli import __version__
from nezha_cli.errors import ConfigError
from nezha_cli.io import sha256_file

logger = logging.getLogger(__name__)

SETTINGS_NAME = "finetune.yaml"
HASH_LIMIT = 64 * 2**20

# The command-line option of each recorded setting, for messages.
FLAGS = {
    "task": "--task", "model": "--model", "from_scratch": "--from-scratch", "vocab": "--vocab",
    "train_files": "--train-file", "validation_file": "--validation-file", "test_file": "--test-file",
    "seed": "--seed", "batch_size": "--batch-size", "per_device_batch_size": "--per-device-batch-size",
    "learning_rate": "--learning-rate", "crf_learning_rate": "--crf-learning-rate", "epochs": "--epochs",
    "max_steps": "--max-steps", "max_seq_length": "--max-seq-length", "warmup_ratio": "--warmup-ratio",
    "weight_decay": "--weight-decay", "optimizer": "--optimizer", "mixed_precision": "--mixed-precision",
    "crf": "--crf", "word_features": "--word-features", "group_by_length": "--group-by-length",
}
FILE_SETTINGS = ("model", "vocab", "train_files", "validation_file", "test_file")


def file_fingerprint(path: Path) -> dict[str, Any]:
    """The resolved path, the size and the SHA-256 (or, above :data:`HASH_LIMIT`, the modification time)."""
    path = Path(path).resolve()
    stat = path.stat()
    record: dict[str, Any] = {"path": str(path), "size": stat.st_size}
    if stat.st_size <= HASH_LIMIT:
        record["sha256"] = sha256_file(path)
    else:
        record["mtime"] = datetime.fromtimestamp(stat.st_mtime, tz=timezone.utc).isoformat()
    return record


def model_fingerprint(model_dir: Path) -> dict[str, Any]:
    """The model directory: its resolved path and the fingerprints of its config.json and weights file."""
    from nezha_cli.modeling.checkpoint import SAFE_WEIGHTS_NAME, WEIGHTS_NAME

    model_dir = Path(model_dir).resolve()
    record: dict[str, Any] = {"path": str(model_dir)}
    for name in ("config.json", SAFE_WEIGHTS_NAME, WEIGHTS_NAME):
        if (model_dir / name).is_file():
            record[name] = {k: v for k, v in file_fingerprint(model_dir / name).items() if k != "path"}
    return record


def settings_text(result: dict[str, Any], other: dict[str, Any]) -> str:
    """OUT/finetune.yaml: a comment saying what it is, then the two sections."""
    head = (f"# Written by nezha finetune (nezha-cli {__version__}): the settings of this run. `--resume` refuses a\n"
            "# change to those under `result` (it would change the trained model) and accepts changes to `other`.\n")
    return head + yaml.safe_dump({"result": result, "other": other}, sort_keys=False, allow_unicode=True)


def _shown(value: Any) -> str:
    if value is None:
        return "not given"
    if isinstance(value, dict) and "path" in value:  # a file or the model directory
        digest = value.get("sha256") or value.get("config.json", {}).get("sha256")
        return f"{value['path']}" + (f" (sha256 {digest[:12]})" if digest else f" ({value.get('mtime')})")
    if isinstance(value, list):
        return " + ".join(_shown(item) for item in value) or "none"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items() if v is not None) or "none"
    return str(value)


def _paths(value: Any) -> list[str]:
    items = value if isinstance(value, list) else [value]
    return [item["path"] for item in items if isinstance(item, dict) and "path" in item]


def _rerun_hint(key: str, recorded: Any, now: Any) -> str:
    flag = FLAGS.get(key, "--" + key.replace("_", "-"))
    if key in FILE_SETTINGS:
        if recorded is not None and _paths(recorded) == _paths(now):
            return "restore the recorded contents"
        return f"rerun with {flag} as recorded" if recorded is not None else f"rerun without {flag}"
    if recorded is None or recorded is False:
        return f"rerun without {flag}"
    if recorded is True:
        return f"rerun with {flag}"
    if key == "task":
        return "rerun with the recorded --task and column options"
    return f"rerun with {flag} {recorded}"


def check_resume_settings(output_dir: Path, result: dict[str, Any]) -> None:
    """Refuse to resume the run in ``output_dir`` with ``result`` settings other than those it recorded.

    Without OUT/finetune.yaml (a run of an older nezha-cli) there is nothing to compare: a warning, and the run
    resumes as before.
    """
    path = Path(output_dir) / SETTINGS_NAME
    if not path.is_file():
        logger.warning("%s: no %s (a run of an older nezha-cli): its settings cannot be checked; resuming with "
                       "this command's", output_dir, SETTINGS_NAME)
        return
    try:
        recorded = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("result")
    except (OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError) as exc:
        raise ConfigError(f"{path}: cannot read the run's settings ({type(exc).__name__}); start over with "
                          "--overwrite") from None
    if not isinstance(recorded, dict):
        raise ConfigError(f"{path}: no `result` section; start over with --overwrite")
    for key in dict.fromkeys([*recorded, *result]):
        before, now = recorded.get(key), result.get(key)
        if before != now:
            raise ConfigError(
                f"{path} records {key} {_shown(before)}, this command gives {_shown(now)}: resuming would mix two "
                f"settings; {_rerun_hint(key, before, now)}, or start over with --overwrite")
