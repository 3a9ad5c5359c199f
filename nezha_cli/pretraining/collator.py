"""Batches for ``NezhaForPreTraining`` from `nezha mask` instances, with static or dynamic masking.

Static data carries its masks; the collator pads them. Dynamic data (``nezha mask --dynamic``) is masked here with
the same rules as `nezha mask` (:mod:`~nezha_cli.pretraining.masking`), anew each epoch: the mask of an instance
depends only on ``(seed, epoch, instance_id)``, so it is the same whatever the batch it lands in, the number of
DataLoader workers or of training processes, and after resuming from a checkpoint.

The batch::

    input_ids, attention_mask, token_type_ids   [B, L]  padded to the longest instance (or pad_to_multiple_of)
    masked_lm_positions, masked_lm_labels       [B, P]  P = most predictions in the batch; padding: position 0,
                                                        label -100
    next_sentence_label                         [B]

which the model takes as ``model(input_ids, attention_mask=..., token_type_ids=...,
masked_lm_positions=..., labels=masked_lm_labels, next_sentence_label=...)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nezha_cli.errors import DataError
from nezha_cli.modeling.crf import IGNORE_INDEX
from nezha_cli.pretraining.masking import MaskingConfig, instance_keys, mask_instances
from nezha_cli.text.vocab import VOCAB_NAME, SpecialIds, Vocab


def special_ids_of(source: Any) -> SpecialIds:
    """SpecialIds from a SpecialIds, a Vocab, a tokenizer, a mapping (pad, unk, cls, sep, mask, vocab_size), or a
    path to a vocab.txt or to a directory holding one."""
    if isinstance(source, SpecialIds):
        return source
    if hasattr(source, "special_ids"):  # a Vocab or a tokenizer
        return source.special_ids
    if isinstance(source, Mapping):
        return SpecialIds(**{k: int(source[k]) for k in ("pad", "unk", "cls", "sep", "mask", "vocab_size")})
    if isinstance(source, str | Path):
        path = Path(source)
        return Vocab.from_file(path / VOCAB_NAME if path.is_dir() else path).special_ids
    raise TypeError(f"cannot get special token ids from {type(source).__name__}")


class PretrainingCollator:
    """Collate `nezha mask` instances into model inputs (see the module doc).

    ``vocab_or_special_ids``: anything :func:`special_ids_of` takes. ``dynamic``: mask here (instances need
    ``instance_id`` and, for whole word masking, ``word_ids``); otherwise pad the masks the instances carry.
    """

    def __init__(
        self,
        vocab_or_special_ids: Any,
        max_predictions_per_seq: int = 20,
        masked_lm_prob: float = 0.15,
        whole_word_mask: bool = True,
        dynamic: bool = False,
        seed: int = 12345,
        pad_to_multiple_of: int | None = None,
    ):
        self.special = special_ids_of(vocab_or_special_ids)
        self.masking = MaskingConfig(masked_lm_prob, max_predictions_per_seq, whole_word_mask)
        self.dynamic = dynamic
        self.seed = seed
        self.pad_to_multiple_of = pad_to_multiple_of
        self.epoch = 0

    @classmethod
    def from_manifest(cls, data_dir: Path | str, seed: int | None = None, **overrides: Any) -> PretrainingCollator:
        """The collator for a `nezha mask` output: its vocab, masking options and static/dynamic mode. ``seed``
        (e.g. the training seed) defaults to the one `nezha mask` used."""
        from nezha_cli.io import read_json

        data_dir = Path(data_dir)
        manifest = read_json(data_dir / "manifest.json", what="manifest")
        options = manifest.get("options", {})
        kwargs: dict[str, Any] = {
            "max_predictions_per_seq": options.get("max_predictions_per_seq", 20),
            "masked_lm_prob": options.get("masked_lm_prob", 0.15),
            "whole_word_mask": options.get("whole_word_mask", True),
            "dynamic": bool(manifest.get("dynamic", False)),
            "seed": seed if seed is not None else options.get("seed", 12345),
        }
        kwargs.update(overrides)
        return cls(data_dir / VOCAB_NAME, **kwargs)

    def set_epoch(self, epoch: int) -> None:
        """Dynamic masking draws new masks for each epoch; call before iterating over an epoch."""
        self.epoch = int(epoch)

    def mask(self, examples: list[dict[str, Any]]) -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
        """The dynamic masks of ``examples`` in the current epoch: masked ids, positions and labels of each."""
        if any("instance_id" not in e for e in examples):
            raise DataError("dynamic masking needs the instance_id column of a `nezha mask --dynamic` output")
        rows = [_as_list(e["input_ids"]) for e in examples]
        lengths = np.fromiter(map(len, rows), np.int64, len(rows))
        ids = np.fromiter((t for r in rows for t in r), np.int64, int(lengths.sum()))
        words = None
        if all(e.get("word_ids") is not None for e in examples):
            words = np.fromiter((w for e in examples for w in _as_list(e["word_ids"])), np.int64, len(ids))
        keys = instance_keys(self.seed, self.epoch, [int(e["instance_id"]) for e in examples])
        out = mask_instances(ids, words, lengths, keys, self.special, self.masking)
        bounds = np.r_[0, np.cumsum(lengths)]
        masked = [out.input_ids[a:b].tolist() for a, b in zip(bounds[:-1], bounds[1:])]
        cuts = np.cumsum(out.predictions)[:-1]
        positions = [p.tolist() for p in np.split(out.positions, cuts)]
        labels = [p.tolist() for p in np.split(out.labels, cuts)]
        return masked, positions, labels

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("cannot collate an empty batch")
        if self.dynamic:
            rows, positions, labels = self.mask(examples)
        else:
            rows = [_as_list(e["input_ids"]) for e in examples]
            positions = [_as_list(e["masked_lm_positions"]) for e in examples]
            labels = [_as_list(e["masked_lm_ids"]) for e in examples]
        batch_size = len(rows)
        length = max(len(r) for r in rows)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        predictions = max(1, max(len(p) for p in positions))
        # Every field is a view of one buffer: a DataLoader worker then hands the main process one shared-memory
        # block per batch instead of six (each costs a file descriptor sent and mapped; benchmarks/bench_loader.py).
        shapes = [(batch_size, length)] * 3 + [(batch_size, predictions)] * 2 + [(batch_size,)]
        sizes = [int(np.prod(shape)) for shape in shapes]
        buffer = torch.empty(sum(sizes), dtype=torch.int64)
        tensors = [part.view(shape) for part, shape in zip(buffer.split(sizes), shapes)]
        input_ids, attention_mask, token_type_ids, masked_positions, masked_labels, next_sentence_label = (
            t.numpy() for t in tensors)
        input_ids.fill(self.special.pad)
        attention_mask.fill(0)
        token_type_ids.fill(0)
        masked_positions.fill(0)
        masked_labels.fill(IGNORE_INDEX)
        for i, (row, example) in enumerate(zip(rows, examples)):
            n = len(row)
            input_ids[i, :n] = row
            attention_mask[i, :n] = 1
            token_type_ids[i, :n] = _as_list(example["token_type_ids"])
            p = len(positions[i])
            masked_positions[i, :p] = positions[i]
            masked_labels[i, :p] = labels[i]
        next_sentence_label[:] = [int(e["next_sentence_label"]) for e in examples]
        keys = ("input_ids", "attention_mask", "token_type_ids", "masked_lm_positions", "masked_lm_labels",
                "next_sentence_label")
        return dict(zip(keys, tensors))


def _as_list(values: Any) -> list[int]:
    if isinstance(values, list):
        return values
    if isinstance(values, torch.Tensor | np.ndarray):
        return values.tolist()
    return list(values)
