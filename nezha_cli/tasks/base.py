"""What every fine-tuning task is made of: examples, default hyperparameters and the :class:`Task` interface.

A task reads its files into examples, turns examples into model features with a tokenizer, batches features,
turns model outputs back into one prediction per example, and scores predictions with its official metric. The
four kinds of head (sequence classification, token classification, span extraction, multiple choice) implement
the middle steps once in their own modules; a concrete task (``lcqmc``, ``pd-ner``, ...) only adds its reader,
label set, file names and the paper's hyperparameters.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from nezha_cli.errors import DataError

logger = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class Hyperparameters:
    """Fine-tuning defaults of a task; the CLI options override them.

    The NEZHA paper (Table 3) fine-tunes every task with learning rate 3e-5 and gives per task the maximum sequence
    length and the number of epochs. Batch size, warmup and weight decay are BERT's fine-tuning defaults.
    """

    learning_rate: float = 3e-5
    max_seq_length: int = 128
    epochs: int = 3
    batch_size: int = 32
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01


# -------------------------------------------------------------------------------------------------- examples


@dataclass
class ClassificationExample:
    guid: str
    text_a: str
    text_b: str | None = None
    label: str | None = None


@dataclass
class NerExample:
    """One sentence: ``tokens`` are the characters (or words) as given, ``tags`` their BIO labels."""

    guid: str
    tokens: list[str]
    tags: list[str] | None = None


@dataclass
class QAExample:
    """One question. ``answers`` are (text, answer_start) as in the file; ``train_answer`` is the span used for
    training, (start, end) in characters of ``context``, or None when no gold answer could be located there."""

    qid: str
    question: str
    context: str
    answers: list[tuple[str, int]] = field(default_factory=list)
    train_answer: tuple[int, int] | None = None


@dataclass
class MultipleChoiceExample:
    guid: str
    context: str
    question: str
    choices: list[str]
    label: int | None = None


Example = ClassificationExample | NerExample | QAExample | MultipleChoiceExample


# ------------------------------------------------------------------------------------------------------ task

if TYPE_CHECKING:
    import torch


class Task:
    """Base class of all tasks. Subclasses of the four kinds fill in the tokenizer-dependent steps."""

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""
    # Where a public data set of this task comes from and what its files hold (for the message without data).
    data_source: ClassVar[str] = ""
    # The nezha_cli.modeling class that carries this task's head.
    model_class_name: ClassVar[str] = ""
    # Key of compute_metrics' result that selects the best epoch (higher is better).
    main_metric: ClassVar[str] = "accuracy"
    defaults: ClassVar[Hyperparameters] = Hyperparameters()
    # File names looked up in --data-dir per split, first match wins.
    split_files: ClassVar[dict[str, tuple[str, ...]]] = {
        "train": ("train.tsv",), "dev": ("dev.tsv",), "test": ("test.tsv",),
    }
    # None: the label set is learned from the training data (generic tasks).
    label_list: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, **options: Any) -> None:
        if options:
            raise TypeError(f"task {self.name} takes no options, got {', '.join(options)}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    # -- files ------------------------------------------------------------------------------------------------
    def split_file(self, data_dir: Path, split: str) -> Path:
        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            raise DataError(f"{data_dir}: data directory not found")
        names = self.split_files[split]
        for name in names:
            if (data_dir / name).is_file():
                return data_dir / name
        raise DataError(f"{data_dir}: no {split} file for task {self.name} (looked for {', '.join(names)})")

    def read(self, path: Path, labels: Sequence[str] | None = None, require_labels: bool = True) -> list:
        """Examples of one file. Labels are checked against ``labels`` (or the task's own label set)."""
        raise NotImplementedError

    def labels(self, examples: Sequence) -> list[str]:
        """The label names, in id order, for a model trained on ``examples``."""
        if self.label_list is not None:
            return list(self.label_list)
        return self.labels_from_examples(examples)

    def labels_from_examples(self, examples: Sequence) -> list[str]:
        raise NotImplementedError

    def model_overrides(self, labels: Sequence[str]) -> dict[str, Any]:
        """Config fields passed to ``from_pretrained`` to size the head."""
        return {"id2label": dict(enumerate(labels))}

    # -- features ---------------------------------------------------------------------------------------------
    def build_features(self, examples: Sequence, tokenizer, max_seq_length: int, label2id: dict[str, int],
                       training: bool) -> list[dict[str, Any]]:
        raise NotImplementedError

    def collate(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    # -- predictions and metrics ------------------------------------------------------------------------------
    output_names: ClassVar[tuple[str, ...]] = ("logits",)

    def postprocess(self, examples: Sequence, features: Sequence[dict[str, Any]], outputs: dict[str, np.ndarray],
                    id2label: dict[int, str], **decoding: Any) -> list:
        """One prediction per example from the model outputs of all features (in feature order); ``decoding`` is
        what :meth:`decoding` took from the model."""
        raise NotImplementedError

    def decoding(self, model: torch.nn.Module) -> dict[str, Any]:
        """Keyword arguments of :meth:`postprocess` that come from the model's weights rather than its outputs
        (a tagger's CRF transitions); none by default."""
        return {}

    def has_references(self, examples: Sequence) -> bool:
        raise NotImplementedError

    def compute_metrics(self, examples: Sequence, predictions: Sequence) -> dict[str, Any]:
        raise NotImplementedError

    def prediction_records(self, examples: Sequence, predictions: Sequence) -> list[dict[str, Any]] | dict:
        """What ``--predictions-out`` writes: a JSON object, or a list of rows written as JSON Lines."""
        raise NotImplementedError


def pad_batch(features: Sequence[dict[str, Any]], keys_and_pads: dict[str, int]) -> dict[str, torch.Tensor]:
    """Stack list-valued feature columns into [B, L] tensors padded to the longest row of the batch."""
    import torch

    batch: dict[str, torch.Tensor] = {}
    length = max(len(f["input_ids"]) for f in features)
    for key, pad in keys_and_pads.items():
        if key not in features[0]:
            continue
        rows = [list(f[key]) + [pad] * (length - len(f[key])) for f in features]
        batch[key] = torch.tensor(rows, dtype=torch.long)
    return batch


def check_not_empty(examples: Sequence, path: Path) -> None:
    if not examples:
        raise DataError(f"{path}: no examples found (empty split); check the file and its layout")
