"""NEZHA models: config, functional relative attention, heads and HF-compatible checkpoints."""

from pathlib import Path

from nezha_cli.errors import CheckpointError
from nezha_cli.modeling.checkpoint import LoadReport, from_pretrained
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


def load_model(directory: str | Path, architecture: str | None = None, **kwargs):
    """Load a model directory as the class named by ``architecture`` or by its config's ``architectures``."""
    directory = Path(directory)
    config = NezhaConfig.from_pretrained(directory)
    name = architecture or (config.architectures or ["NezhaModel"])[0]
    if name not in MODEL_CLASSES:
        raise CheckpointError(f"{directory}: unknown architecture {name!r}; expected one of {', '.join(MODEL_CLASSES)}")
    return from_pretrained(MODEL_CLASSES[name], directory, config=config, **kwargs)
