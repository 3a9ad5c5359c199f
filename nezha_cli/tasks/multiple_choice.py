"""Multiple choice through ``NezhaForMultipleChoice``: each choice is scored as ``[CLS] context [SEP] question
choice [SEP]`` and the highest-scoring choice is the answer. Accuracy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from nezha_cli.errors import DataError
from nezha_cli.tasks.base import Task
from nezha_cli.tasks.metrics import accuracy, majority_accuracy
from nezha_cli.tasks.sequence_classification import encode_pair

if TYPE_CHECKING:
    import torch


class MultipleChoiceTask(Task):
    model_class_name = "NezhaForMultipleChoice"
    main_metric = "accuracy"
    label_list = ()  # choice indexes, no label names

    def model_overrides(self, labels: Sequence[str]) -> dict[str, Any]:
        return {}

    def build_features(self, examples: Sequence, tokenizer, max_seq_length: int, label2id: dict[str, int],
                       training: bool) -> list[dict[str, Any]]:
        num_choices = {len(e.choices) for e in examples}
        if len(num_choices) > 1:
            raise DataError(f"examples have different numbers of choices ({sorted(num_choices)}); a batch needs the "
                            "same number: pad the choice lists or split the data")
        features = []
        for example in examples:
            encoded = []
            for choice in example.choices:
                second = f"{example.question} {choice}".strip() if example.question else choice
                first = example.context if example.context else second
                pair, _ = encode_pair(tokenizer, first, second if example.context else None, max_seq_length)
                encoded.append(pair)
            feature = {key: [e[key] for e in encoded] for key in ("input_ids", "token_type_ids", "attention_mask")}
            if example.label is not None:
                feature["labels"] = example.label
            features.append(feature)
        return features

    def collate(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        import torch

        length = max(len(ids) for f in features for ids in f["input_ids"])
        batch = {
            key: torch.tensor([[row + [0] * (length - len(row)) for row in f[key]] for f in features], dtype=torch.long)
            for key in ("input_ids", "token_type_ids", "attention_mask")
        }
        if "labels" in features[0]:
            batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)
        return batch

    def postprocess(self, examples, features, outputs: dict[str, list[np.ndarray]], id2label: dict[int, str]) -> list:
        return [int(np.argmax(logits)) for logits in outputs["logits"]]

    def has_references(self, examples: Sequence) -> bool:
        return all(e.label is not None for e in examples)

    def compute_metrics(self, examples: Sequence, predictions: Sequence) -> dict[str, Any]:
        references = [e.label for e in examples]
        return {"accuracy": accuracy(list(predictions), references), "majority_accuracy": majority_accuracy(references),
                "examples": len(examples)}

    def prediction_records(self, examples: Sequence, predictions: Sequence) -> list[dict[str, Any]]:
        return [{"id": e.guid, "prediction": p, "answer": e.choices[p],
                 **({"label": e.label} if e.label is not None else {})} for e, p in zip(examples, predictions)]
