"""Pretraining input for ``nezha pretrain``: a ``nezha mask`` output directory, checked before any training.

A ``nezha mask`` output is a ``datasets.load_from_disk`` directory with ``manifest.json`` (``"kind":
"nezha-masked"``, ``"dynamic"``, ``"vocab_sha256"``) and ``vocab.txt``. Static outputs hold masked instances
(``input_ids``, ``token_type_ids``, ``masked_lm_positions``, ``masked_lm_ids``, ``next_sentence_label``);
dynamic ones hold unmasked instances with an ``instance_id`` that the collator masks anew every epoch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nezha_cli.errors import CheckpointError, DataError
from nezha_cli.io import read_json
from nezha_cli.text.vocab import vocab_sha256

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
VOCAB_NAME = "vocab.txt"
MASKED_KIND = "nezha-masked"
STATIC_COLUMNS = ("input_ids", "token_type_ids", "masked_lm_positions", "masked_lm_ids", "next_sentence_label")
DYNAMIC_COLUMNS = ("input_ids", "token_type_ids", "word_ids", "next_sentence_label", "instance_id")


@dataclass
class PretrainingData:
    directory: Path
    manifest: dict[str, Any]
    vocab_path: Path
    vocab_sha256: str
    vocab_size: int
    dynamic: bool
    train: Any  # datasets.Dataset
    eval: Any | None


def count_vocab(path: Path) -> int:
    with open(path, encoding="utf-8") as f:
        return sum(1 for _ in f)


def load_pretraining_data(directory: Path, eval_examples: int = 0) -> PretrainingData:
    """Open and check a ``nezha mask`` output; hold out its last ``eval_examples`` instances for evaluation."""
    directory = Path(directory)
    if not directory.exists():
        raise DataError(f"{directory}: --data not found")
    if not directory.is_dir():
        raise DataError(f"{directory}: --data must be a `nezha mask` output directory or a text corpus file")
    manifest_path = directory / MANIFEST_NAME
    if not manifest_path.is_file():
        raise DataError(f"{directory}: not a `nezha mask` output (no {MANIFEST_NAME}); run `nezha tokenize` and "
                        "`nezha mask` first, or pass a raw text corpus file as --data")
    manifest = read_json(manifest_path, what="data manifest")
    kind = manifest.get("kind") if isinstance(manifest, dict) else None
    if kind != MASKED_KIND:
        hint = " (a `nezha tokenize` output: run `nezha mask` on it first)" if kind == "nezha-tokenized" else ""
        raise DataError(f"{manifest_path}: kind is {kind!r}, not {MASKED_KIND!r}{hint}; --data must be a "
                        "`nezha mask` output")
    vocab_path = directory / VOCAB_NAME
    if not vocab_path.is_file():
        raise DataError(f"{directory}: no {VOCAB_NAME}; re-run `nezha mask` to write a complete output")
    sha = vocab_sha256(vocab_path)
    if manifest.get("vocab_sha256") not in (None, sha):
        raise DataError(f"{vocab_path}: sha256 does not match vocab_sha256 in {MANIFEST_NAME}; the directory was "
                        "modified after `nezha mask` wrote it")
    dynamic = bool(manifest.get("dynamic", False))
    try:
        import datasets

        dataset = datasets.load_from_disk(str(directory))
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(f"{directory}: cannot read the dataset ({exc})") from None
    if isinstance(dataset, datasets.DatasetDict):
        if "train" not in dataset:
            raise DataError(f"{directory}: dataset has splits {', '.join(dataset)} but no 'train'")
        eval_split = next((dataset[s] for s in ("validation", "eval", "test") if s in dataset), None)
        dataset = dataset["train"]
    else:
        eval_split = None
    needed = DYNAMIC_COLUMNS if dynamic else STATIC_COLUMNS
    missing = [c for c in needed if c not in dataset.column_names]
    if missing:
        raise DataError(f"{directory}: missing column(s) {', '.join(missing)} for a "
                        f"{'dynamic' if dynamic else 'static'} `nezha mask` output")
    train = dataset
    if eval_split is None and eval_examples:
        if eval_examples >= len(dataset):
            raise DataError(f"{directory}: data.eval_examples={eval_examples} leaves no training data "
                            f"({len(dataset)} instances); lower it")
        cut = len(dataset) - eval_examples
        train, eval_split = dataset.select(range(cut)), dataset.select(range(cut, len(dataset)))
    return PretrainingData(directory, manifest, vocab_path, sha, count_vocab(vocab_path), dynamic, train, eval_split)


def check_model_vocab(data: PretrainingData, model_dir: Path, vocab_size: int) -> None:
    """The data and an ``--init-from`` model must use the same vocab (same sha256 when the model has vocab.txt)."""
    model_vocab = Path(model_dir) / VOCAB_NAME
    if model_vocab.is_file():
        if vocab_sha256(model_vocab) != data.vocab_sha256:
            raise DataError(f"vocab mismatch: {model_vocab} differs from {data.vocab_path} (sha256); tokenize the "
                            f"corpus with the model's vocab (`nezha tokenize --vocab {model_vocab}`)")
    else:
        logger.warning("%s has no %s; cannot check that it matches the data's vocab", model_dir, VOCAB_NAME)
    if data.vocab_size > vocab_size:
        raise CheckpointError(f"vocab mismatch: {data.vocab_path} has {data.vocab_size} tokens but the model in "
                              f"{model_dir} has vocab_size={vocab_size}")


class StaticPretrainingCollate:
    """Pads statically masked instances into the batch the model takes.

    Returns input_ids, attention_mask, token_type_ids, masked_lm_positions (0-padded), masked_lm_labels (-100
    padded) and next_sentence_label. Padding goes to the longest sequence of the batch.
    """

    def __init__(self, pad_token_id: int = 0):
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch_size = len(examples)
        length = max(len(e["input_ids"]) for e in examples)
        predictions = max(1, max(len(e["masked_lm_positions"]) for e in examples))
        input_ids = torch.full((batch_size, length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((batch_size, length), dtype=torch.long)
        token_type_ids = torch.zeros((batch_size, length), dtype=torch.long)
        positions = torch.zeros((batch_size, predictions), dtype=torch.long)
        labels = torch.full((batch_size, predictions), -100, dtype=torch.long)
        for i, e in enumerate(examples):
            n, p = len(e["input_ids"]), len(e["masked_lm_positions"])
            input_ids[i, :n] = torch.as_tensor(e["input_ids"])
            attention_mask[i, :n] = 1
            token_type_ids[i, :n] = torch.as_tensor(e["token_type_ids"])
            if p:
                positions[i, :p] = torch.as_tensor(e["masked_lm_positions"])
                labels[i, :p] = torch.as_tensor(e["masked_lm_ids"])
        nsp = torch.as_tensor([int(e["next_sentence_label"]) for e in examples], dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids,
                "masked_lm_positions": positions, "masked_lm_labels": labels, "next_sentence_label": nsp}
