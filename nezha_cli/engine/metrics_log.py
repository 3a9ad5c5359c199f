"""Where training metrics go: ``OUT/metrics.jsonl`` (always), TensorBoard (when installed), the live display."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from nezha_cli.console import make_progress

logger = logging.getLogger(__name__)

METRICS_NAME = "metrics.jsonl"


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl; a torn last line (a killed run) is skipped."""
    records = []
    if not Path(path).is_file():
        return records
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep the file valid and the value visible
    return value


class MetricsLog:
    """Appends one JSON object per record. On resume, records after the checkpoint's step are dropped first, so the
    file of a resumed run reads like that of a run that was never interrupted."""

    def __init__(self, output_dir: Path, enabled: bool, resume_step: int | None, tensorboard: bool):
        self.path = Path(output_dir) / METRICS_NAME
        self.enabled = enabled
        self._tb = None
        if not enabled:
            return
        if resume_step is None:
            self.path.unlink(missing_ok=True)
        else:
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            self.path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept), encoding="utf-8")
        self._file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                logger.debug("tensorboard is not installed; metrics go to %s only", self.path)
            else:
                self._tb = SummaryWriter(log_dir=str(Path(output_dir) / "tensorboard"), purge_step=resume_step)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps({k: _jsonable(v) for k, v in record.items()}, ensure_ascii=False) + "\n")
        self._file.flush()
        if self._tb is not None:
            step = record["step"]
            for key, value in record.items():
                if key not in ("step", "epoch") and isinstance(value, (int, float)):
                    self._tb.add_scalar(key.replace("eval_", "eval/", 1) if key.startswith("eval_") else f"train/{key}",
                                        value, step)

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()


_SHOWN = ("loss", "mlm_loss", "nsp_loss", "mlm_acc", "nsp_acc", "accuracy")


class LiveDisplay:
    """step/total, rate and ETA from the shared progress bar; the latest losses, accuracies, lr and tokens/s in its
    description."""

    def __init__(self, total_steps: int, start_step: int, enabled: bool, what: str = "train"):
        self.what = what
        self.progress = make_progress("steps", disable=not enabled)
        self.task = self.progress.add_task(what, total=total_steps, completed=start_step)

    def __enter__(self) -> LiveDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def advance(self, step: int) -> None:
        self.progress.update(self.task, completed=step)

    def show(self, record: dict[str, Any]) -> None:
        parts = [self.what]
        for key in _SHOWN:
            if key in record and isinstance(record[key], float):
                parts.append(f"{key} {record[key]:.4f}")
        if "lr" in record:
            parts.append(f"lr {record['lr']:.2e}")
        if "tokens_per_s" in record:
            parts.append(f"{record['tokens_per_s']:,.0f} tok/s")
        self.progress.update(self.task, description=" ".join(parts))
