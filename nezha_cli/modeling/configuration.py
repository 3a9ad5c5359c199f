"""NezhaConfig: the field names and defaults of transformers' NezhaConfig, as a validated dataclass.

``config.json`` files written here load in transformers (4.21-4.57) and the other way round; keys this class does
not know (``transformers_version``, ``torch_dtype``, ...) are kept in ``extra`` and written back unchanged.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nezha_cli.errors import ConfigError

CONFIG_NAME = "config.json"
MODEL_TYPE = "nezha"

# Activation names accepted by transformers' ACT2FN that a NEZHA checkpoint may carry.
ACTIVATION_NAMES = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu", "silu", "swish", "tanh", "mish")

# Keys of a HF config.json that are derived from our fields (or describe the file) and are rewritten on save.
_DERIVED_KEYS = {"model_type", "id2label", "label2id", "num_labels"}


@dataclass
class NezhaConfig:
    vocab_size: int = 21128
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    # NEZHA has no absolute position embeddings: this is kept for transformers compatibility and as the default
    # length of tokenizers/recipes. It does not cap the input length of this implementation.
    max_position_embeddings: int = 512
    # K in the paper: relative distances are clipped to [-K, K].
    max_relative_position: int = 64
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    classifier_dropout: float | None = 0.1
    pad_token_id: int = 0
    bos_token_id: int | None = 2
    eos_token_id: int | None = 3
    num_labels: int = 2
    id2label: dict[int, str] | None = None
    problem_type: str | None = None
    architectures: list[str] | None = None
    # NezhaForTokenClassification with a CRF over its tags (not in transformers' config; written only when set).
    use_crf: bool = False
    # NezhaForTokenClassification with word feature embeddings (nezha_cli.text.word_features; written when set).
    word_features: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.id2label is not None:
            self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
            self.num_labels = len(self.id2label)
            # Default LABEL_i names carry no information: store them as "no names" so round trips are exact.
            if all(v == f"LABEL_{k}" for k, v in self.id2label.items()):
                self.id2label = None
        self.validate()

    # -- validation ---------------------------------------------------------------------------------------------
    def validate(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "type_vocab_size", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"config field {name}={value!r}: must be a positive integer")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"config field hidden_size={self.hidden_size} is not a multiple of "
                f"num_attention_heads={self.num_attention_heads}; pick sizes that divide"
            )
        if self.attention_head_size % 2:
            raise ConfigError(
                f"config: head size hidden_size/num_attention_heads={self.attention_head_size} must be even "
                "(the sinusoidal relative position table pairs sin and cos columns)"
            )
        if not isinstance(self.max_relative_position, int) or self.max_relative_position < 1:
            raise ConfigError(
                f"config field max_relative_position={self.max_relative_position!r}: must be an integer >= 1 "
                "(the paper uses 64)"
            )
        if self.hidden_act not in ACTIVATION_NAMES:
            raise ConfigError(
                f"config field hidden_act={self.hidden_act!r}: unknown activation; use one of "
                f"{', '.join(ACTIVATION_NAMES)}"
            )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
            value = getattr(self, name)
            if value is not None and not (0.0 <= float(value) < 1.0):
                raise ConfigError(f"config field {name}={value!r}: must be in [0, 1)")
        if self.num_labels < 1:
            raise ConfigError(f"config field num_labels={self.num_labels}: must be >= 1")
        if self.id2label is not None and sorted(self.id2label) != list(range(len(self.id2label))):
            raise ConfigError(
                f"config field id2label: ids must be 0..{len(self.id2label) - 1}, got {sorted(self.id2label)}"
            )
        if not (0 <= self.pad_token_id < self.vocab_size):
            raise ConfigError(f"config field pad_token_id={self.pad_token_id}: must be in [0, vocab_size)")
        if self.architectures is not None and not (isinstance(self.architectures, list)
                                                   and all(isinstance(a, str) for a in self.architectures)):
            raise ConfigError(f"config field architectures={self.architectures!r}: must be a list of class names, "
                              'such as ["NezhaForSequenceClassification"]')
        if not isinstance(self.use_crf, bool):
            raise ConfigError(f"config field use_crf={self.use_crf!r}: must be true or false")
        if self.word_features is not None:
            from nezha_cli.text.word_features import check_scheme

            check_scheme(self.word_features, what="config field word_features")
        if self.problem_type not in (None, "regression", "single_label_classification", "multi_label_classification"):
            raise ConfigError(f"config field problem_type={self.problem_type!r}: unknown problem type")

    # -- derived ------------------------------------------------------------------------------------------------
    @property
    def attention_head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def labels(self) -> list[str]:
        """Label names in id order (``LABEL_i`` when the config has none, as transformers does)."""
        if self.id2label is not None:
            return [self.id2label[i] for i in range(self.num_labels)]
        return [f"LABEL_{i}" for i in range(self.num_labels)]

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.labels)}

    def with_labels(self, names: list[str]) -> NezhaConfig:
        """A copy with the given label names (and ``num_labels`` to match)."""
        return dataclasses.replace(self, num_labels=len(names), id2label=dict(enumerate(names)))

    # -- serialisation ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model_type": MODEL_TYPE}
        for f in dataclasses.fields(self):
            if f.name in ("extra", "num_labels", "id2label"):
                continue
            value = getattr(self, f.name)
            if (f.name in ("architectures", "word_features") and value is None) or (f.name == "use_crf" and not value):
                continue
            out[f.name] = value
        # transformers reads the label count from id2label; JSON object keys are strings.
        out["id2label"] = {str(i): name for i, name in enumerate(self.labels)}
        out["label2id"] = self.label2id
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return out

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> NezhaConfig:
        data = dict(data)
        model_type = data.get("model_type")
        if model_type not in (None, MODEL_TYPE):
            raise ConfigError(
                f"{source}: model_type is {model_type!r}, not {MODEL_TYPE!r}; convert other checkpoints with "
                "`nezha import`"
            )
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in data.items():
            if key in names:
                kwargs[key] = value
            elif key not in _DERIVED_KEYS:
                extra[key] = value
        if "id2label" in data:
            kwargs["id2label"] = data["id2label"]
        elif "label2id" in data:
            kwargs["id2label"] = {int(i): name for name, i in data["label2id"].items()}
        elif "num_labels" in data:
            kwargs["num_labels"] = int(data["num_labels"])
        try:
            return cls(**kwargs, extra=extra)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        except TypeError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    @classmethod
    def from_json_file(cls, path: str | Path) -> NezhaConfig:
        from nezha_cli.io import read_json

        data = read_json(Path(path), what="model config")
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: model config must be a JSON object")
        return cls.from_dict(data, source=str(path))

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_NAME).write_text(self.to_json_string(), encoding="utf-8")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> NezhaConfig:
        directory = Path(directory)
        path = directory / CONFIG_NAME if directory.is_dir() else directory
        if not path.exists():
            raise ConfigError(f"{directory}: no {CONFIG_NAME}; is this a model directory?")
        return cls.from_json_file(path)
