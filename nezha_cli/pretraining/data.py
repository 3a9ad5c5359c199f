"""Pretraining input for ``nezha pretrain``: a ``nezha mask`` output directory, checked before any training.

A ``nezha mask`` output (:mod:`nezha_cli.pretraining.instances`) is a ``datasets.load_from_disk`` directory with
``manifest.json`` (``"kind": "nezha-masked"``, ``"dynamic"``, ``"vocab_sha256"``, the options it was made with) and
``vocab.txt``. Static outputs hold masked instances (``input_ids``, ``token_type_ids``, ``masked_lm_positions``,
``masked_lm_ids``, ``next_sentence_label``); dynamic ones hold unmasked instances with an ``instance_id`` that
:class:`~nezha_cli.pretraining.collator.PretrainingCollator` masks anew every epoch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nezha_cli.errors import CheckpointError, DataError
from nezha_cli.io import read_json
from nezha_cli.pretraining.instances import MASKED_KIND
from nezha_cli.text.dataset_files import load_saved_dataset
from nezha_cli.text.pipeline import MANIFEST_NAME, TOKENIZED_KIND
from nezha_cli.text.vocab import VOCAB_NAME, Vocab, checked_vocab_sha256, vocab_sha256

logger = logging.getLogger(__name__)

STATIC_COLUMNS = ("input_ids", "token_type_ids", "masked_lm_positions", "masked_lm_ids", "next_sentence_label")
DYNAMIC_COLUMNS = ("input_ids", "token_type_ids", "next_sentence_label", "instance_id")


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


def load_pretraining_data(directory: Path, eval_examples: int = 0) -> PretrainingData:
    """Open and check a ``nezha mask`` output; hold out its last ``eval_examples`` instances for evaluation."""
    directory = Path(directory)
    if not directory.exists():
        raise DataError(f"{directory}: --data not found")
    if not directory.is_dir():
        raise DataError(f"{directory}: not a `nezha mask` output directory")
    manifest_path = directory / MANIFEST_NAME
    if not manifest_path.is_file():
        raise DataError(f"{directory}: not a `nezha mask` output (no {MANIFEST_NAME}); run `nezha tokenize` and "
                        "`nezha mask` first")
    manifest = read_json(manifest_path, what="data manifest")
    kind = manifest.get("kind") if isinstance(manifest, dict) else None
    if kind != MASKED_KIND:
        hint = " (a `nezha tokenize` output: run `nezha mask` on it first)" if kind == TOKENIZED_KIND else ""
        raise DataError(f"{manifest_path}: kind is {kind!r}, not {MASKED_KIND!r}{hint}; --data must be a "
                        "`nezha mask` output")
    vocab_path = directory / VOCAB_NAME
    sha = checked_vocab_sha256(directory, manifest, "nezha mask", required=False)
    dynamic = bool(manifest.get("dynamic", False))
    import datasets

    dataset = load_saved_dataset(directory, hint="run `nezha mask` again")
    if isinstance(dataset, datasets.DatasetDict):
        if "train" not in dataset:
            raise DataError(f"{directory}: dataset has splits {', '.join(dataset)} but no 'train'")
        eval_split = next((dataset[s] for s in ("validation", "eval", "test") if s in dataset), None)
        dataset = dataset["train"]
    else:
        eval_split = None
    needed = DYNAMIC_COLUMNS if dynamic else STATIC_COLUMNS
    if dynamic and manifest.get("options", {}).get("whole_word_mask", True):
        needed += ("word_ids",)
    missing = [c for c in needed if c not in dataset.column_names]
    if missing:
        raise DataError(f"{directory}: missing column(s) {', '.join(missing)} for a "
                        f"{'dynamic' if dynamic else 'static'} `nezha mask` output")
    train = dataset
    if eval_split is None and eval_examples:
        if eval_examples >= len(dataset):
            raise DataError(f"{directory}: data.eval_examples={eval_examples} leaves no training data "
                            f"({len(dataset)} instances); lower it")
        train, eval_split = hold_out(dataset, eval_examples)
    vocab_size = Vocab.from_file(vocab_path).vocab_size
    return PretrainingData(directory, manifest, vocab_path, sha, vocab_size, dynamic, train, eval_split)


def hold_out(dataset, count: int):
    """(train, eval): ``count`` instances drawn evenly from the whole dataset (a fixed choice for the data, whatever
    the training seed), so that the held-out set covers every part of the corpus; the rest, in order, to train on.

    Instances are held out, not documents: with ``dupe_factor`` > 1 the held-out text also appears, masked and cut
    otherwise, among the training instances.
    """
    import numpy as np

    held = np.sort(np.random.default_rng(0).choice(len(dataset), size=count, replace=False))
    rest = np.setdiff1d(np.arange(len(dataset)), held)
    # In memory: ``select`` would otherwise write an index file into the data directory.
    return dataset.select(rest, keep_in_memory=True), dataset.select(held, keep_in_memory=True)


def check_model_vocab(data: PretrainingData, model_dir: Path, vocab_size: int) -> None:
    """The data and an ``--init-from`` model must use the same vocab: the sha256 of the model's vocab.txt must be the
    data manifest's ``vocab_sha256``."""
    model_vocab = Path(model_dir) / VOCAB_NAME
    if model_vocab.is_file():
        if vocab_sha256(model_vocab) != data.vocab_sha256:
            raise DataError(f"vocab mismatch: {model_vocab} is not the vocab of {data.directory} (sha256 differs from "
                            f"its manifest's vocab_sha256); tokenize the corpus with the model's vocab (`nezha "
                            f"tokenize --vocab {model_vocab}`), or pass the raw corpus as --data")
    else:
        logger.warning("%s has no %s; cannot check that it matches the data's vocab", model_dir, VOCAB_NAME)
    if data.vocab_size > vocab_size:
        raise CheckpointError(f"vocab mismatch: {data.vocab_path} has {data.vocab_size} tokens but the model in "
                              f"{model_dir} has vocab_size={vocab_size}")


def make_collators(data: PretrainingData, seed: int) -> tuple[Callable, Callable]:
    """(training, evaluation) collators for ``data``, with the masking options its manifest records.

    Dynamic masks depend on (seed, epoch, instance_id) only. The trainer moves the training collator to each new
    epoch; the evaluation one stays at epoch 0, so that every evaluation scores the same masks.
    """
    from nezha_cli.pretraining.collator import PretrainingCollator

    train = PretrainingCollator.from_manifest(data.directory, seed=seed)
    return train, (PretrainingCollator.from_manifest(data.directory, seed=seed) if data.dynamic else train)
