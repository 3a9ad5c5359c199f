"""Synthetic `nezha mask` outputs for the engine and `nezha pretrain` tests (same format, tiny and learnable)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CLS, SEP, MASK = 2, 3, 4

TINY_MODEL = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                  max_relative_position=8, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def write_vocab(path: Path, size: int) -> Path:
    words = SPECIAL + [f"t{i}" for i in range(size - len(SPECIAL))]
    path.write_text("".join(w + "\n" for w in words), encoding="utf-8")
    return path


def write_masked_data(path: Path, n: int = 64, vocab_size: int = 40, min_len: int = 10, max_len: int = 16,
                      predictions: int = 3, seed: int = 0, kind: str = "nezha-masked",
                      vocab: Path | None = None, dynamic: bool = False) -> Path:
    """Instances that repeat one token (a different one per instance): learnable in a few steps.

    Static: every instance has exactly ``predictions`` masked positions (per-batch mean losses then equal the
    global mean, which the 1-vs-2-process test relies on). ``dynamic``: the same instances unmasked, with
    ``instance_id``, as `nezha mask --dynamic` writes them; the collator masks ``predictions`` tokens of each.
    """
    import datasets

    rng = np.random.default_rng(seed)
    rows = {k: [] for k in ("input_ids", "token_type_ids", "word_ids", "masked_lm_positions", "masked_lm_ids",
                            "next_sentence_label")}
    first, span = len(SPECIAL), vocab_size - len(SPECIAL)
    for _ in range(n):
        length = int(rng.integers(min_len, max_len + 1))
        start = int(rng.integers(0, span))
        body = [first + start] * length
        ids = [CLS] + body + [SEP]
        half = len(ids) // 2
        positions = sorted(int(p) for p in rng.choice(np.arange(1, len(ids) - 1), predictions, replace=False))
        labels = [ids[p] for p in positions]
        for p in positions:
            ids[p] = MASK
        rows["input_ids"].append(ids)
        rows["token_type_ids"].append([0] * half + [1] * (len(ids) - half))
        rows["word_ids"].append([-1] + list(range(length)) + [-1])
        rows["masked_lm_positions"].append(positions)
        rows["masked_lm_ids"].append(labels)
        rows["next_sentence_label"].append(int(rng.integers(0, 2)))
    if dynamic:
        for ids, positions, labels in zip(rows["input_ids"], rows.pop("masked_lm_positions"),
                                          rows.pop("masked_lm_ids")):
            for p, label in zip(positions, labels):
                ids[p] = label
        rows["instance_id"] = list(range(n))
    datasets.Dataset.from_dict(rows).save_to_disk(str(path))
    vocab_path = path / "vocab.txt"
    if vocab is not None:
        vocab_path.write_bytes(Path(vocab).read_bytes())
    else:
        write_vocab(vocab_path, vocab_size)
    # The options `nezha mask` records; with 15% of 12-18 tokens, the collator masks 2-3 per instance.
    options = {"max_predictions_per_seq": predictions, "masked_lm_prob": 0.15, "whole_word_mask": True}
    manifest = {"kind": kind, "dynamic": dynamic, "vocab_sha256": hashlib.sha256(vocab_path.read_bytes()).hexdigest(),
                "instances": n, "options": options}
    (path / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return path
