"""Evaluating a fine-tuned model directory on a task's file, and scoring CMRC 2018 prediction files.

``evaluate_model`` predicts every example (features, model, post-processing back to the input) and applies the
task's official metric through :func:`evaluate_features`, as the dev evaluation of ``nezha finetune`` does;
``score_cmrc_predictions`` is the official CMRC 2018 script on existing files.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nezha_cli.errors import CheckpointError, DataError
from nezha_cli.io import atomic_output_file, read_json
from nezha_cli.tasks.base import Task
from nezha_cli.tasks.inference import in_feature_order, length_order, predict_batches, split_outputs
from nezha_cli.tasks.metrics import cmrc_gold_answers, cmrc_prediction_text, cmrc_score
from nezha_cli.tasks.tokenization import load_tokenizer

logger = logging.getLogger(__name__)

# Config key of a fine-tuned model: the autocast precision (no, bf16, fp16) of its training and dev evaluation.
MIXED_PRECISION_KEY = "finetuning_mixed_precision"


@dataclass
class EvaluationResult:
    metrics: dict[str, Any] | None  # None when the file has no gold labels (predictions only)
    predictions: list
    examples: list
    file: Path


def load_finetuned(task: Task, model_dir: Path):
    """The model of a fine-tuned directory and its label names; it must carry this task's kind of head."""
    from nezha_cli.modeling import MODEL_CLASSES, NezhaConfig

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise CheckpointError(f"{model_dir}: model directory not found")
    config = NezhaConfig.from_pretrained(model_dir)
    architecture = (config.architectures or ["NezhaModel"])[0]
    if architecture != task.model_class_name:
        raise CheckpointError(
            f"{model_dir}: a {architecture}, but task {task.name} needs a {task.model_class_name}; fine-tune it "
            f"first: nezha finetune --task {task.name} --model {model_dir} ..."
        )
    labels = config.labels
    if task.label_list:
        expected = list(task.label_list)
        if config.id2label is None and config.num_labels == len(expected):
            logger.warning("%s: config has no label names; assuming the task's order %s", model_dir,
                           ", ".join(expected))
            labels = expected
        elif labels != expected:
            raise CheckpointError(f"{model_dir}: labels {', '.join(labels)} do not match task {task.name} "
                                  f"({', '.join(expected)})")
    trained_for = config.finetuning_task
    if trained_for and trained_for != task.name:
        logger.warning("%s: fine-tuned for task %s, evaluated as %s", model_dir, trained_for, task.name)
    if config.word_features is not None:
        from nezha_cli.text.word_features import JIEBA_VERSION_KEY, jieba_version

        trained_with = getattr(config, JIEBA_VERSION_KEY, None)
        if trained_with and trained_with != jieba_version():
            logger.warning("%s: fine-tuned with the word features of jieba %s, evaluated with jieba %s: the "
                           "features may differ", model_dir, trained_with, jieba_version())
    model = MODEL_CLASSES[task.model_class_name].from_pretrained(model_dir, config=config, strict=True)
    return model, labels


@dataclass
class EvalFeatures:
    """A file's examples as the model sees them for prediction, and the order in which they are batched."""

    examples: list
    features: list[dict[str, Any]]
    order: list[int]  # length_order(features)
    ordered: list[dict[str, Any]]  # [features[i] for i in order]: each batch is a consecutive slice of it

    @classmethod
    def build(cls, task: Task, examples: Sequence, tokenizer, max_seq_length: int, labels: Sequence[str],
              word_features: str | None = None) -> EvalFeatures:
        label2id = {name: i for i, name in enumerate(labels)}
        features = task.build_features(examples, tokenizer, max_seq_length, label2id, training=False,
                                       **({"word_features": word_features} if word_features else {}))
        order = length_order(features)
        return cls(list(examples), features, order, [features[i] for i in order])


def evaluate_features(task: Task, model, labels: Sequence[str], data: EvalFeatures,
                      batches: Iterable[dict[str, torch.Tensor]]) -> tuple[list, dict[str, Any] | None]:
    """Predictions for ``data.examples`` and their metric (None without gold labels), from ``batches``: the
    :func:`~nezha_cli.tasks.inference.forward_outputs` of ``data.ordered``, batch by batch.

    The one computation behind the dev metric of ``nezha finetune`` (batches from ``Trainer.predict``, on every
    process, under the run's autocast) and the numbers of ``nezha evaluate`` (batches from ``predict_batches`` under
    the autocast recorded in the model's config): the same features in the same batches, the same post-processing
    and metric, so that evaluating OUT/final gives the best dev number to the last digit.
    """
    outputs = in_feature_order(split_outputs(batches, task.output_names), data.order)
    predictions = task.postprocess(data.examples, data.features, outputs, dict(enumerate(labels)),
                                   **task.decoding(model))
    metrics = task.compute_metrics(data.examples, predictions) if task.has_references(data.examples) else None
    return predictions, metrics


def model_mixed_precision(model, requested: str | None = None) -> str:
    """``requested``, or the autocast precision the model was fine-tuned (and dev-evaluated) with, else ``no``."""
    return requested or getattr(model.config, MIXED_PRECISION_KEY, None) or "no"


def evaluate_examples(task: Task, model, labels: Sequence[str], examples: Sequence, tokenizer, max_seq_length: int,
                      batch_size: int, mixed_precision: str | None = None, device: str | torch.device | None = None,
                      progress=None) -> tuple[list, dict[str, Any] | None]:
    """:func:`evaluate_features` of ``examples`` with ``model`` on one device (the GPU when there is one)."""
    data = EvalFeatures.build(task, examples, tokenizer, max_seq_length, labels, model.config.word_features)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    precision = model_mixed_precision(model, mixed_precision)
    logger.info("%s: %d features, forward pass in %s", task.name, len(data.features),
                "fp32" if precision == "no" else f"{precision} autocast")
    batches = predict_batches(task, model, data.ordered, batch_size, device, precision, progress)
    return evaluate_features(task, model, labels, data, batches)


def evaluate_model(task: Task, model_dir: Path, file: Path, max_seq_length: int | None = None, batch_size: int = 64,
                   vocab: Path | None = None, progress=None, mixed_precision: str | None = None) -> EvaluationResult:
    """``mixed_precision``: ``no|bf16|fp16``, or None for the one the model was fine-tuned with."""
    model, labels = load_finetuned(task, model_dir)
    examples = task.read(Path(file), labels=labels or None, require_labels=False)
    tokenizer = load_tokenizer(model_dir, vocab)
    max_seq_length = (max_seq_length or getattr(model.config, "finetuning_max_seq_length", None)
                      or task.defaults.max_seq_length)
    predictions, metrics = evaluate_examples(task, model, labels, examples, tokenizer, max_seq_length, batch_size,
                                             mixed_precision, progress=progress)
    return EvaluationResult(metrics=metrics, predictions=predictions, examples=list(examples), file=Path(file))


def write_predictions(task: Task, path: Path, examples: Sequence, predictions: Sequence,
                      overwrite: bool = True) -> None:
    """A JSON object ({id: answer}, span tasks) or JSON Lines (one row per example, the other tasks)."""
    records = task.prediction_records(examples, predictions)
    with atomic_output_file(Path(path), overwrite=overwrite) as f:
        if isinstance(records, dict):
            json.dump(records, f, ensure_ascii=False, indent=1)
            f.write("\n")
        else:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")


# ------------------------------------------------------------------------------------ CMRC prediction files


def read_cmrc_predictions(path: Path, known_ids: set[str]) -> dict[str, str]:
    """A ``{question id: answer text}`` JSON file, each answer as the official script reads it.

    As in the official script, ``null`` is the text "None" and a number its digits (:func:`cmrc_prediction_text`),
    and ids that the dataset does not have are ignored (with a warning, since the file may be for another dataset).
    """
    predictions = read_json(Path(path), what="predictions file")
    if not isinstance(predictions, dict):
        raise DataError(f"{path}: predictions must be a JSON object {{question id: answer text}}, "
                        f"not a {type(predictions).__name__}")
    unknown = [qid for qid in predictions if qid not in known_ids]
    if unknown:
        shown = ", ".join(unknown[:3]) + (" ..." if len(unknown) > 3 else "")
        logger.warning("%s: %d prediction id(s) are not in the dataset and are ignored (%s)", path, len(unknown),
                       shown)
    answers: dict[str, str] = {}
    for qid, answer in predictions.items():
        if qid not in known_ids:
            continue
        if isinstance(answer, (list, dict)):
            raise DataError(f"{path}: the prediction for {qid!r} must be a string, a number or null, not "
                            f"{'a list' if isinstance(answer, list) else 'an object'}")
        answers[qid] = cmrc_prediction_text(answer)
    return answers


def score_cmrc_predictions(dataset: Path, predictions: Path) -> tuple[dict[str, Any], list[str]]:
    """The official CMRC 2018 numbers for a prediction file, and the ids of unanswered questions."""
    golds = cmrc_gold_answers(read_json(Path(dataset), what="CMRC 2018 dataset"), source=str(dataset))
    answers = read_cmrc_predictions(predictions, {qid for qid, _ in golds})
    unanswered = [qid for qid, _ in golds if qid not in answers]
    return cmrc_score(golds, answers), unanswered
