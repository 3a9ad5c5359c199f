"""NEZHA models: config, functional relative attention, heads and HF-compatible checkpoints."""

from nezha_cli.modeling.checkpoint import LoadReport, load_model
from nezha_cli.modeling.configuration import NezhaConfig
from nezha_cli.modeling.modeling_nezha import (
    MODEL_CLASSES,
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

__all__ = [
    "MODEL_CLASSES",
    "LoadReport",
    "NezhaConfig",
    "NezhaForMaskedLM",
    "NezhaForMultipleChoice",
    "NezhaForNextSentencePrediction",
    "NezhaForPreTraining",
    "NezhaForQuestionAnswering",
    "NezhaForSequenceClassification",
    "NezhaForTokenClassification",
    "NezhaModel",
    "NezhaPreTrainedModel",
    "load_model",
]
