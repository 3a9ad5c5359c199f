"""Single-sentence and sentence-pair classification (ChnSentiCorp, LCQMC, XNLI, generic): [CLS] a [SEP] b [SEP]
through ``NezhaForSequenceClassification``, scored by accuracy."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nezha_cli.tasks.base import ClassificationExample, Task, check_not_empty, pad_batch
from nezha_cli.tasks.metrics import accuracy, majority_accuracy
from nezha_cli.tasks.readers import Columns, check_label, read_tsv, split_header
from nezha_cli.tasks.tokenization import encode_prefix

logger = logging.getLogger(__name__)

# Header names seen in the public releases of the classification tasks, by role.
TEXT_A_NAMES = ("text_a", "sentence1", "premise", "query1", "text", "sentence", "review", "q1")
TEXT_B_NAMES = ("text_b", "sentence2", "hypothesis", "hypo", "query2", "q2")
LABEL_NAMES = ("label", "gold_label")
ID_NAMES = ("id", "qid", "guid", "index")
KNOWN_NAMES = TEXT_A_NAMES + TEXT_B_NAMES + LABEL_NAMES + ID_NAMES + ("language",)

if TYPE_CHECKING:
    import torch


def truncate_pair(tokens_a: list, tokens_b: list | None, max_tokens: int) -> bool:
    """Trim the longer sequence one token at a time until both fit (BERT's ``_truncate_seq_pair``)."""
    truncated = False
    while len(tokens_a) + len(tokens_b or ()) > max_tokens:
        truncated = True
        if tokens_b and len(tokens_b) > len(tokens_a):
            tokens_b.pop()
        else:
            tokens_a.pop()
    return truncated


def encode_pair(tokenizer, text_a: str, text_b: str | None, max_seq_length: int) -> tuple[dict[str, list[int]], bool]:
    """input_ids/token_type_ids/attention_mask of ``[CLS] a [SEP] (b [SEP])`` and whether anything was cut."""
    budget = max_seq_length - (3 if text_b is not None else 2)
    ids_a = encode_prefix(tokenizer, text_a, budget + 1)
    ids_b = encode_prefix(tokenizer, text_b, budget + 1) if text_b is not None else None
    truncated = truncate_pair(ids_a, ids_b, budget)
    input_ids = tokenizer.build_inputs_with_special_tokens(ids_a, ids_b)
    token_type_ids = tokenizer.create_token_type_ids(ids_a, ids_b)
    return {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": [1] * len(input_ids)}, truncated


class SequenceClassificationTask(Task):
    model_class_name = "NezhaForSequenceClassification"
    main_metric = "accuracy"
    # Headerless layout of the task's TSV files (column names in order).
    headerless_columns: tuple[str, ...] = ("text_a", "label")
    pair: bool = False

    # -- reading ----------------------------------------------------------------------------------------------
    def normalize_label(self, label: str) -> str:
        return label.strip()

    def keep_row(self, columns: Columns, fields: list[str]) -> bool:
        return True

    def read(self, path: Path, labels: Sequence[str] | None = None, require_labels: bool = True) -> list:
        path = Path(path)
        allowed = list(labels) if labels is not None else self.label_list
        columns, rows = split_header(path, read_tsv(path), KNOWN_NAMES, self.headerless_columns)
        a = columns.find(TEXT_A_NAMES, "text_a")
        b = columns.find(TEXT_B_NAMES, "text_b") if self.pair else None
        label_hint = "test files without labels can only be predicted, not scored"
        y = columns.find(LABEL_NAMES, "label", required=require_labels, hint=label_hint)
        guid = columns.find(ID_NAMES, "id", required=False)
        examples = []
        for row in rows:
            columns.check_width(row)
            if not self.keep_row(columns, row.fields):
                continue
            label = None
            if y is not None:
                label = self.normalize_label(row.fields[y])
                if allowed is not None:
                    check_label(path, row.line, label, allowed)
            examples.append(ClassificationExample(
                guid=row.fields[guid] if guid is not None else f"{path.stem}-{len(examples)}",
                text_a=row.fields[a], text_b=row.fields[b] if b is not None else None, label=label,
            ))
        check_not_empty(examples, path)
        return examples

    def labels_from_examples(self, examples: Sequence) -> list[str]:
        return sorted({e.label for e in examples if e.label is not None})

    # -- features ---------------------------------------------------------------------------------------------
    def build_features(self, examples: Sequence, tokenizer, max_seq_length: int, label2id: dict[str, int],
                       training: bool) -> list[dict[str, Any]]:
        features = []
        truncated = 0
        for example in examples:
            feature, cut = encode_pair(tokenizer, example.text_a, example.text_b, max_seq_length)
            truncated += cut
            if example.label is not None:
                feature["labels"] = label2id[example.label]
            features.append(feature)
        if truncated:
            logger.info("%d of %d examples were longer than max_seq_length=%d tokens and were truncated",
                        truncated, len(examples), max_seq_length)
        return features

    def collate(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        import torch

        batch = pad_batch(features, {"input_ids": 0, "token_type_ids": 0, "attention_mask": 0})
        if "labels" in features[0]:
            batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)
        return batch

    # -- predictions ------------------------------------------------------------------------------------------
    def postprocess(self, examples, features, outputs: dict[str, list[np.ndarray]], id2label: dict[int, str]) -> list:
        return [id2label[int(np.argmax(logits))] for logits in outputs["logits"]]

    def has_references(self, examples: Sequence) -> bool:
        return all(e.label is not None for e in examples)

    def compute_metrics(self, examples: Sequence, predictions: Sequence) -> dict[str, Any]:
        references = [e.label for e in examples]
        return {"accuracy": accuracy(list(predictions), references), "majority_accuracy": majority_accuracy(references),
                "examples": len(examples)}

    def prediction_records(self, examples: Sequence, predictions: Sequence) -> list[dict[str, Any]]:
        return [{"id": e.guid, "prediction": p, **({"label": e.label} if e.label is not None else {})}
                for e, p in zip(examples, predictions)]
