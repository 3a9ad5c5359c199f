"""Running a task's model over features: outputs per feature, for the task's post-processing.

Used in two places: inside fine-tuning (through the engine's ``Trainer.predict``, on every process) and by
``nezha evaluate`` (:func:`predict_batches`, a plain no-grad loop on one device under the same autocast); both feed
:func:`nezha_cli.tasks.evaluate.evaluate_features`, so that their numbers are one computation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from nezha_cli.engine.precision import autocast
from nezha_cli.engine.trainer import input_length

MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask", "word_feature_ids")


def forward_outputs(task, model: torch.nn.Module, batch: dict[str, torch.Tensor],
                    pad_across: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The task's output tensors for a batch, plus each row's length for per-token outputs.

    ``pad_across`` pads a [B, L, ...] tensor to the longest L of all processes, so that tensors from batches
    padded to different lengths can be gathered.
    """
    out = model(**{k: batch[k] for k in MODEL_INPUTS if k in batch})
    result: dict[str, torch.Tensor] = {}
    per_token = task.model_class_name in ("NezhaForTokenClassification", "NezhaForQuestionAnswering")
    for name in task.output_names:
        value = getattr(out, name).float()
        result[name] = pad_across(value) if per_token and pad_across is not None else value
    if per_token:
        result["length"] = batch["attention_mask"].sum(-1)
    return result


def split_outputs(gathered: Iterable[dict[str, torch.Tensor]], names: Sequence[str]) -> dict[str, list[np.ndarray]]:
    """Batches of outputs -> one array per feature (per-token outputs cut to the feature's length)."""
    outputs: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for batch in gathered:
        lengths = batch.get("length")
        for name in names:
            values = batch[name].numpy()
            for i, row in enumerate(values):
                outputs[name].append(row[: int(lengths[i])] if lengths is not None else row)
    return outputs


def length_order(features: Sequence[dict[str, Any]]) -> list[int]:
    """Feature indices from the longest input to the shortest.

    Batches of features of similar length are padded little: on the PD-NER dev set, batches of 64 taken in this
    order hold 121k tokens, in file order 298k (2.5x, and the attention shrinks more). Longest first, so that a
    batch that does not fit in memory fails at once.
    """
    return sorted(range(len(features)), key=lambda i: -input_length(features[i]))


def in_feature_order(outputs: dict[str, list[np.ndarray]], order: Sequence[int]) -> dict[str, list[np.ndarray]]:
    """Outputs computed for ``[features[i] for i in order]``, put back in the order of ``features``."""
    restored: dict[str, list[np.ndarray]] = {}
    for name, values in outputs.items():
        restored[name] = [None] * len(values)  # type: ignore[list-item]
        for value, index in zip(values, order):
            restored[name][index] = value
    return restored


def predict_batches(task, model: torch.nn.Module, features: Sequence[dict[str, Any]], batch_size: int,
                    device: torch.device | str = "cpu", mixed_precision: str = "no",
                    progress=None) -> Iterator[dict[str, torch.Tensor]]:
    """:func:`forward_outputs` of ``model`` for consecutive batches of ``features`` on one device, in eval mode,
    without gradients and under the autocast of ``mixed_precision`` (as the Trainer's prepared model runs)."""
    model.eval()
    model.to(device)
    device_type = torch.device(device).type
    task_id = progress.add_task("predict", total=len(features)) if progress is not None else None
    for start in range(0, len(features), batch_size):
        chunk = features[start:start + batch_size]
        batch = {k: v.to(device) for k, v in task.collate(chunk).items()}
        with torch.no_grad(), autocast(mixed_precision, device_type):
            out = forward_outputs(task, model, batch)
        if progress is not None:
            progress.update(task_id, advance=len(chunk))
        yield {k: v.cpu() for k, v in out.items()}


def predict(task, model: torch.nn.Module, features: Sequence[dict[str, Any]], batch_size: int,
            device: torch.device | str = "cpu", progress=None,
            mixed_precision: str = "no") -> dict[str, list[np.ndarray]]:
    """Outputs of ``model`` for ``features`` on one device, in feature order; the batches are formed in
    :func:`length_order`."""
    order = length_order(features)
    batches = predict_batches(task, model, [features[i] for i in order], batch_size, device, mixed_precision,
                              progress)
    return in_feature_order(split_outputs(batches, task.output_names), order)


def numeric_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The scores in a task's metrics (floats; counts such as TOTAL are left out): what the training log and
    best-model selection take."""
    return {k: v for k, v in metrics.items() if isinstance(v, float)}
