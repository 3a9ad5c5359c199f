"""Pretraining input for ``nezha pretrain``: a ``nezha mask`` output directory, checked before any training.

A ``nezha mask`` output (:mod:`nezha_cli.pretraining.instances`) is a ``datasets.load_from_disk`` directory with
``manifest.json`` (``"kind": "nezha-masked"``, ``"dynamic"``, ``"vocab_sha256"``, the options it was made with) and
``vocab.txt``. Static outputs hold masked instances (``input_ids``, ``token_type_ids``, ``masked_lm_positions``,
``masked_lm_ids``, ``next_sentence_label``); dynamic ones hold unmasked instances with an ``instance_id`` that
:class:`~nezha_cli.pretraining.collator.PretrainingCollator` masks anew every epoch.

Several outputs (the shards of a corpus prepared on several machines, or other corpora) train as one: see
:func:`load_pretraining_data`. (The ``instance_id`` of dynamic outputs is unique within a corpus; two corpora may
share ids, whose instances then draw their masks from the same random numbers: harmless, as the texts differ.)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nezha_cli.errors import CheckpointError, DataError
from nezha_cli.io import read_json
from nezha_cli.pretraining.instances import MASKED_KIND
from nezha_cli.text.dataset_files import load_saved_dataset
from nezha_cli.text.pipeline import MANIFEST_NAME, TOKENIZED_KIND
from nezha_cli.text.shards import Shard
from nezha_cli.text.vocab import VOCAB_NAME, Vocab, checked_vocab_sha256, vocab_sha256

logger = logging.getLogger(__name__)

STATIC_COLUMNS = ("input_ids", "token_type_ids", "masked_lm_positions", "masked_lm_ids", "next_sentence_label")
DYNAMIC_COLUMNS = ("input_ids", "token_type_ids", "next_sentence_label", "instance_id")


@dataclass
class PretrainingData:
    directory: Path  # the first of ``directories``: its manifest, vocab and masking options hold for all
    manifest: dict[str, Any]
    vocab_path: Path
    vocab_sha256: str
    vocab_size: int
    dynamic: bool
    train: Any  # datasets.Dataset
    eval: Any | None
    directories: list[Path] = field(default_factory=list)


def load_pretraining_data(directory: Path | Sequence[Path], eval_examples: int = 0) -> PretrainingData:
    """Open and check a ``nezha mask`` output, or several trained on as one; hold out the last ``eval_examples``
    instances for evaluation.

    Several directories must agree on the vocab, ``max_seq_length``, static or dynamic masks (and the dynamic
    masking options), and must not hold the same documents twice (the same directory, or overlapping shards of one
    corpus). Their instances are concatenated; shards of one corpus (`nezha mask --shard`) are put back in corpus
    order, so that all the shards of a corpus are row for row its unsharded output, and train as it would. The
    trainer's sampler gives each process its own part of the concatenation, as for one directory.
    """
    directories = [Path(directory)] if isinstance(directory, str | os.PathLike) else [Path(d) for d in directory]
    if not directories:
        raise DataError("no --data directory given")
    manifests = [_read_manifest(d) for d in directories]
    check_combinable(directories, manifests)
    dynamic = bool(manifests[0].get("dynamic", False))
    parts = [_open_dataset(d, m, single=len(directories) == 1) for d, m in zip(directories, manifests)]
    if len(parts) == 1:
        dataset, eval_split = parts[0]
    else:
        import datasets

        dataset = datasets.concatenate_datasets([train for train, _ in parts])
        order = corpus_order(manifests, [len(train) for train, _ in parts])
        if order is not None:
            dataset = dataset.select(order, keep_in_memory=True)  # in memory: no index file in a data directory
        eval_split = None
    train = dataset
    if eval_split is None and eval_examples:
        if eval_examples >= len(dataset):
            where = directories[0] if len(directories) == 1 else ", ".join(map(str, directories))
            raise DataError(f"{where}: data.eval_examples={eval_examples} leaves no training data "
                            f"({len(dataset)} instances); lower it")
        train, eval_split = hold_out(dataset, eval_examples)
    first = directories[0]
    sha = checked_vocab_sha256(first, manifests[0], "nezha mask", required=False)
    vocab_size = Vocab.from_file(first / VOCAB_NAME).vocab_size
    return PretrainingData(first, manifests[0], first / VOCAB_NAME, sha, vocab_size, dynamic, train, eval_split,
                           directories)


def _read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of a ``nezha mask`` output, after checking that ``directory`` is one."""
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
    checked_vocab_sha256(directory, manifest, "nezha mask", required=False)
    return manifest


def _open_dataset(directory: Path, manifest: dict[str, Any], single: bool):
    """(train, eval split or None) of a ``nezha mask`` output, its columns checked."""
    import datasets

    dynamic = bool(manifest.get("dynamic", False))
    dataset = load_saved_dataset(directory, hint="run `nezha mask` again")
    if isinstance(dataset, datasets.DatasetDict):
        if not single:
            raise DataError(f"{directory}: a dataset with splits ({', '.join(dataset)}); with several --data, give "
                            "`nezha mask` outputs")
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
    return dataset, eval_split


# Options of `nezha mask` that several --data must share: (manifest key, option to give them all); the masking
# options only for dynamic data, which the collator masks with one setting.
SHARED_OPTIONS = (("max_seq_length", "--max-seq-length"),)
DYNAMIC_SHARED_OPTIONS = (("masked_lm_prob", "--masked-lm-prob"),
                          ("max_predictions_per_seq", "--max-predictions-per-seq"),
                          ("whole_word_mask", "--whole-word-mask/--no-whole-word-mask"))


def check_combinable(directories: Sequence[Path], manifests: Sequence[dict[str, Any]]) -> None:
    """Several ``nezha mask`` outputs can be trained on as one (see :func:`load_pretraining_data`); else a
    :class:`DataError` naming the directory and what differs."""
    first, base = directories[0], manifests[0]
    seen: dict[Path, Path] = {}
    for directory in directories:
        resolved = directory.resolve()
        if resolved in seen:
            raise DataError(f"{directory}: given to --data twice (as {seen[resolved]}); give each directory once")
        seen[resolved] = directory
    for directory, manifest in zip(directories[1:], manifests[1:]):
        if manifest.get("vocab_sha256") != base.get("vocab_sha256"):
            raise DataError(f"{directory}: another vocab than {first} (vocab_sha256 in their manifest.json differs); "
                            "tokenize every --data with the same vocab (`nezha tokenize --vocab VOCAB`)")
        dynamic = bool(manifest.get("dynamic", False))
        if dynamic != bool(base.get("dynamic", False)):
            kinds = ("dynamic", "static") if dynamic else ("static", "dynamic")
            raise DataError(f"{directory}: {kinds[0]} masks, but {first} has {kinds[1]} ones; mask every --data the "
                            "same way (with or without `nezha mask --dynamic`)")
        options, base_options = manifest.get("options", {}), base.get("options", {})
        for key, option in SHARED_OPTIONS + (DYNAMIC_SHARED_OPTIONS if dynamic else ()):
            if options.get(key) != base_options.get(key):
                raise DataError(f"{directory}: {key} is {options.get(key)!r}, but {base_options.get(key)!r} in "
                                f"{first}; mask every --data with the same {option}")
    for i, (directory, manifest) in enumerate(zip(directories, manifests)):
        for other, other_manifest in zip(directories[:i], manifests[:i]):
            if _overlap(manifest, other_manifest):
                shard, other_shard = (Shard.from_json(m.get("shard")) for m in (manifest, other_manifest))
                raise DataError(f"{directory}: shard {shard} of the corpus overlaps shard {other_shard} in {other} "
                                "(the same documents twice); give each shard of a corpus once (0/N .. N-1/N), or "
                                "use `nezha mask --dupe-factor` for more passes")


def _overlap(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two outputs hold documents of one corpus in common (unknown corpora, e.g. stdin: no)."""
    if a.get("corpus") is None or a.get("corpus") != b.get("corpus"):
        return False
    if a.get("stripe_documents") != b.get("stripe_documents"):
        return True  # shards of other stripe sizes cut the corpus otherwise
    return Shard.from_json(a.get("shard")).overlaps(Shard.from_json(b.get("shard")))


def corpus_order(manifests: Sequence[dict[str, Any]], lengths: Sequence[int]):
    """The rows of concatenated shards of one corpus in corpus order, stripe by stripe, as its unsharded `nezha
    mask` output has them (an index of all rows); None when they are not shards of one corpus, or in order."""
    import numpy as np

    corpora = {m.get("corpus") for m in manifests}
    if len(corpora) != 1 or None in corpora or not all(m.get("stripes") for m in manifests):
        return None
    pieces = []  # (stripe, first row in the concatenation, rows)
    offset = 0
    for manifest, length in zip(manifests, lengths):
        start = offset
        for stripe, rows in manifest["stripes"]:
            pieces.append((int(stripe), start, int(rows)))
            start += int(rows)
        if start != offset + length:
            return None  # a manifest that does not describe its data: leave the rows as they are
        offset += length
    pieces.sort()
    if all(a[1] + a[2] == b[1] for a, b in zip(pieces, pieces[1:])):
        return None
    return np.concatenate([np.arange(start, start + rows) for _, start, rows in pieces])


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
