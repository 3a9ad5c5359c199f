"""The inference graph that every export format shares: inputs, outputs, dynamic axes, and parity checks.

A model is exported with three inputs (``input_ids``, ``attention_mask``, ``token_type_ids``; a tagger fine-tuned
with ``--word-features`` also takes ``word_feature_ids``), dynamic batch and sequence axes (plus ``num_choices``
for multiple choice), and its head's outputs in transformers' order, the main one first. ``torch.export`` traces
it once; the relative attention is the bucket form (index tensors built from ``arange(L)`` at run time), so the
graph holds no [L, L, head_size] table and runs at lengths it was not traced at.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from nezha_cli.modeling import (
    NezhaForMaskedLM,
    NezhaForMultipleChoice,
    NezhaForNextSentencePrediction,
    NezhaForPreTraining,
    NezhaForQuestionAnswering,
    NezhaForSequenceClassification,
    NezhaForTokenClassification,
    NezhaModel,
    NezhaPreTrainedModel,
)

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
WORD_FEATURE_INPUT = "word_feature_ids"

# The outputs of each head, main output first (as transformers orders them).
HEAD_OUTPUTS: dict[type[NezhaPreTrainedModel], tuple[str, ...]] = {
    NezhaModel: ("last_hidden_state", "pooler_output"),
    NezhaForPreTraining: ("prediction_logits", "seq_relationship_logits"),
    NezhaForMaskedLM: ("logits",),
    NezhaForNextSentencePrediction: ("logits",),
    NezhaForSequenceClassification: ("logits",),
    NezhaForMultipleChoice: ("logits",),
    NezhaForTokenClassification: ("logits",),
    NezhaForQuestionAnswering: ("start_logits", "end_logits"),
}

# The lengths the exported graph is checked at: a short one and one past BERT's 512-position cap. The graph is
# traced at a third length, so both checks run it at lengths it has not seen.
CHECK_LENGTHS = (7, 600)
TRACE_LENGTH = 32


class InferenceModule(nn.Module):
    """``model`` with positional tensor inputs and a tuple of tensor outputs, as exporters want them."""

    def __init__(self, model: NezhaPreTrainedModel):
        super().__init__()
        self.model = model
        self.output_names = output_names(model)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor,
                word_feature_ids: torch.Tensor | None = None):
        extra = {WORD_FEATURE_INPUT: word_feature_ids} if word_feature_ids is not None else {}
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, **extra)
        return tuple(getattr(out, name) for name in self.output_names)


def input_names(model: NezhaPreTrainedModel) -> tuple[str, ...]:
    """The graph's inputs, in order: :data:`INPUT_NAMES`, then ``word_feature_ids`` for a tagger with word
    features (``--word-features``)."""
    if model.config.word_features is not None:
        return (*INPUT_NAMES, WORD_FEATURE_INPUT)
    return INPUT_NAMES


def output_names(model: NezhaPreTrainedModel) -> tuple[str, ...]:
    names = HEAD_OUTPUTS[type(model)]
    if isinstance(model, NezhaModel) and model.pooler is None:
        names = ("last_hidden_state",)
    return names


def is_multiple_choice(model: NezhaPreTrainedModel) -> bool:
    return isinstance(model, NezhaForMultipleChoice)


def sample_inputs(model: NezhaPreTrainedModel, length: int, batch: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random ids with two segments, and padding on the last row, so that masks and segments are exercised."""
    generator = torch.Generator().manual_seed(seed + length)
    config = model.config
    shape = (batch, 2, length) if is_multiple_choice(model) else (batch, length)
    input_ids = torch.randint(1, config.vocab_size, shape, generator=generator)
    attention_mask = torch.ones(shape, dtype=torch.long)
    if batch > 1 and length > 2:
        attention_mask[-1, ..., length - length // 3:] = 0
    token_type_ids = torch.zeros(shape, dtype=torch.long)
    if config.type_vocab_size > 1:
        token_type_ids[..., length // 2:] = 1
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
    if config.word_features is not None:
        from nezha_cli.text.word_features import num_word_features

        ids = torch.randint(1, num_word_features(config.word_features), shape, generator=generator)
        inputs[WORD_FEATURE_INPUT] = ids * attention_mask  # 0 on padding, as the features are built
    return inputs


def dynamic_shapes(model: NezhaPreTrainedModel) -> dict[str, dict[int, torch.export.Dim]]:
    batch = torch.export.Dim("batch")
    sequence = torch.export.Dim("sequence")
    if is_multiple_choice(model):
        axes = {0: batch, 1: torch.export.Dim("num_choices"), 2: sequence}
    else:
        axes = {0: batch, 1: sequence}
    return {name: axes for name in input_names(model)}


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """The exporters print progress and warn about optional packages (torchvision); keep the CLI's output clean."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(None):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_program(model: NezhaPreTrainedModel) -> torch.export.ExportedProgram:
    """``torch.export`` of the inference graph with dynamic batch and sequence axes."""
    module = InferenceModule(model.eval()).eval()
    example = sample_inputs(model, TRACE_LENGTH)
    with torch.no_grad(), quiet_exporter():
        return torch.export.export(module, tuple(example[n] for n in input_names(model)),
                                   dynamic_shapes=dynamic_shapes(model))


# --------------------------------------------------------------------------------------------------- parity


@dataclass
class Parity:
    """How one exported artifact compares with PyTorch eager on one batch."""

    artifact: str
    length: int
    max_abs_diff: float  # over all outputs
    argmax_agreement: float  # of the main output, over its last axis

    def to_dict(self) -> dict:
        return {"artifact": self.artifact, "length": self.length, "max_abs_diff": self.max_abs_diff,
                "argmax_agreement": self.argmax_agreement}


def reference_outputs(model: NezhaPreTrainedModel, inputs: dict[str, torch.Tensor]) -> list[np.ndarray]:
    module = InferenceModule(model.eval()).eval()
    with torch.no_grad():
        return [t.float().numpy() for t in module(*(inputs[n] for n in input_names(model)))]


def compare(artifact: str, length: int, reference: list[np.ndarray], outputs: list[np.ndarray]) -> Parity:
    diff = max(float(np.max(np.abs(r - o.astype(np.float32)))) for r, o in zip(reference, outputs))
    agreement = float(np.mean(reference[0].argmax(-1) == outputs[0].argmax(-1)))
    return Parity(artifact, length, diff, agreement)


def check_parity(model: NezhaPreTrainedModel, artifact: str, run: Callable[[dict[str, np.ndarray]], list],
                 lengths: tuple[int, ...] = CHECK_LENGTHS) -> list[Parity]:
    """Run ``run`` (an exported artifact, numpy in and out) and PyTorch on the same inputs at each length."""
    results = []
    for length in lengths:
        inputs = sample_inputs(model, length)
        reference = reference_outputs(model, inputs)
        outputs = run({name: t.numpy() for name, t in inputs.items()})
        results.append(compare(artifact, length, reference, [np.asarray(o) for o in outputs]))
    return results
