"""NezhaConfig: transformers' NezhaConfig, fields, defaults and general keyword arguments, without transformers.

A config is what transformers' ``PretrainedConfig`` is to its users: every keyword argument is kept as an attribute
(``NezhaConfig(is_decoder=True, output_attentions=True, num_choices=4)``), attributes can be set after construction
(``config.num_labels = 3`` renames the labels to ``LABEL_0..2``), and ``config.json`` files written here load in
transformers (4.21-4.57) and the other way round. Keys this class does not know (``transformers_version``, a
generation setting, ...) are kept as attributes and written back unchanged.

As in transformers, building a config checks nothing; the model checks its config when it is built
(:meth:`NezhaConfig.validate`), and so does reading a ``config.json``, with the file named in the message.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from nezha_cli.errors import ConfigError, ModelFileNotFoundError

CONFIG_NAME = "config.json"
MODEL_TYPE = "nezha"

# Activation names accepted by transformers' ACT2FN that a NEZHA checkpoint may carry.
ACTIVATION_NAMES = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu", "silu", "swish", "tanh", "mish")

# The model's own fields: transformers' NezhaConfig arguments and nezha's additions, with their types (which
# recipes check overrides against) and defaults.
MODEL_FIELDS: dict[str, tuple[Any, Any]] = {
    "vocab_size": (int, 21128),
    "hidden_size": (int, 768),
    "num_hidden_layers": (int, 12),
    "num_attention_heads": (int, 12),
    "intermediate_size": (int, 3072),
    "hidden_act": (str, "gelu"),
    "hidden_dropout_prob": (float, 0.1),
    "attention_probs_dropout_prob": (float, 0.1),
    # NEZHA has no absolute position embeddings: kept for transformers compatibility and as the default length of
    # tokenizers/recipes. It does not cap the input length of this implementation.
    "max_position_embeddings": (int, 512),
    # K in the paper: relative distances are clipped to [-K, K].
    "max_relative_position": (int, 64),
    "type_vocab_size": (int, 2),
    "initializer_range": (float, 0.02),
    "layer_norm_eps": (float, 1e-12),
    "classifier_dropout": (float | None, 0.1),
    "pad_token_id": (int, 0),
    "bos_token_id": (int | None, 2),
    "eos_token_id": (int | None, 3),
    "use_cache": (bool, True),
    # NezhaForTokenClassification with a CRF over its tags (not in transformers' config; written only when set).
    "use_crf": (bool, False),
    # NezhaForTokenClassification with word feature embeddings (nezha_cli.text.word_features; written when set).
    "word_features": (str | None, None),
}

# transformers' PretrainedConfig arguments that every model config takes, with their defaults. Those nezha does not
# act on (generation, TF, encoder-decoder settings) are stored and written back, never refused.
GENERAL_DEFAULTS: dict[str, Any] = {
    "return_dict": True,
    "output_hidden_states": False,
    "output_attentions": False,
    "torchscript": False,
    "torch_dtype": None,
    "use_bfloat16": False,
    "tf_legacy_loss": False,
    "pruned_heads": {},
    "tie_word_embeddings": True,
    "chunk_size_feed_forward": 0,
    "is_encoder_decoder": False,
    "is_decoder": False,
    "cross_attention_hidden_size": None,
    "add_cross_attention": False,
    "tie_encoder_decoder": False,
    "architectures": None,
    "finetuning_task": None,
    "tokenizer_class": None,
    "prefix": None,
    "sep_token_id": None,
    "decoder_start_token_id": None,
    "task_specific_params": None,
    "problem_type": None,
}

# transformers' from_pretrained options for the Hub: accepted so that transformers code runs, with no effect (nothing
# is downloaded; a name that is not a local directory is refused with LOCAL_ONLY).
HUB_OPTIONS = ("cache_dir", "force_download", "resume_download", "proxies", "local_files_only", "token",
               "use_auth_token", "revision", "mirror", "trust_remote_code")
LOCAL_ONLY = ("nezha reads local directories only and never downloads: fetch a Hub model first, e.g. with "
              "`huggingface-cli download`, and give its directory")

# config.attn_implementation (transformers' name): how the attention is computed, a run-time choice that is never
# written to config.json. None picks automatically; see nezha_cli.modeling.kernels.dispatch.attention_path.
ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa", "fused")

# Keys written only when they differ from their default, so that configs of models that never use them stay as
# transformers writes them.
_OMITTED_WHEN_DEFAULT = {"use_crf", "word_features", "architectures"}


class NezhaConfig:
    model_type = MODEL_TYPE
    is_composition = False  # transformers' flag for configs made of sub-configs
    _commit_hash = None  # the Hub revision a transformers config came from: none here (pipelines read it)

    def __init__(self, **kwargs: Any) -> None:
        for name, (_, default) in MODEL_FIELDS.items():
            setattr(self, name, kwargs.pop(name, copy.deepcopy(default)))
        for name, default in GENERAL_DEFAULTS.items():
            setattr(self, name, kwargs.pop(name, copy.deepcopy(default)))
        # transformers 4.56 renamed torch_dtype to dtype (and writes "dtype" in config.json): the same setting,
        # the new name winning where both are given, as there.
        dtype = kwargs.pop("dtype", None)
        if dtype is not None:
            self.torch_dtype = dtype
        if isinstance(self.torch_dtype, str):
            self.torch_dtype = _torch_dtype(self.torch_dtype)
        # transformers' old name for gradient checkpointing in a config; the model reads it when built.
        self.gradient_checkpointing = kwargs.pop("gradient_checkpointing", False)
        self.attn_implementation = kwargs.pop("attn_implementation", kwargs.pop("_attn_implementation", None))
        self.name_or_path = str(kwargs.pop("name_or_path", kwargs.pop("_name_or_path", "")))
        id2label = kwargs.pop("id2label", None)
        label2id = kwargs.pop("label2id", None)
        num_labels = kwargs.pop("num_labels", None)
        if id2label is not None:
            self.id2label = {int(k): str(v) for k, v in dict(id2label).items()}
            self.label2id = dict(label2id) if label2id is not None else {v: k for k, v in self.id2label.items()}
        elif label2id is not None:
            self.id2label = {int(i): str(name) for name, i in dict(label2id).items()}
            self.label2id = dict(label2id)
        else:
            self.id2label = {}
            self.num_labels = 2 if num_labels is None else int(num_labels)
        for key, value in kwargs.items():  # anything else, as transformers keeps it
            setattr(self, key, value)

    # -- labels (as transformers: num_labels is the length of id2label; setting it renames to LABEL_i) ---------------
    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, value: int) -> None:
        if self.id2label is None or len(self.id2label) != value:
            self.id2label = {i: f"LABEL_{i}" for i in range(value)}
            self.label2id = {name: i for i, name in self.id2label.items()}

    @property
    def labels(self) -> list[str]:
        """Label names in id order."""
        return [self.id2label[i] for i in range(self.num_labels)]

    @property
    def has_label_names(self) -> bool:
        """Whether the labels have names other than transformers' defaults ``LABEL_i``."""
        return any(name != f"LABEL_{i}" for i, name in self.id2label.items())

    def with_labels(self, names: list[str]) -> NezhaConfig:
        """A copy with the given label names (and ``num_labels`` to match)."""
        return self.replace(id2label=dict(enumerate(names)), label2id={name: i for i, name in enumerate(names)})

    def replace(self, **changes: Any) -> NezhaConfig:
        """A copy with ``changes`` applied (``num_labels`` alone renames the labels to ``LABEL_i``)."""
        new = copy.deepcopy(self)
        if "num_labels" in changes and "id2label" not in changes:
            new.id2label = None
        for key, value in changes.items():
            setattr(new, key, value)
        if "id2label" in changes and "label2id" not in changes and new.id2label is not None:
            new.id2label = {int(k): str(v) for k, v in new.id2label.items()}
            new.label2id = {v: k for k, v in new.id2label.items()}
        return new

    # -- the general settings ----------------------------------------------------------------------------------------
    @property
    def use_return_dict(self) -> bool:
        # A TorchScript trace needs tuples, as in transformers.
        return bool(self.return_dict) and not self.torchscript

    def update(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            setattr(self, key, value)

    def update_from_string(self, settings: str) -> None:
        """Set existing settings from ``"key=value,key=value"`` (transformers' form, as its example scripts'
        ``--config_overrides``), each value read as the type of the current one; booleans as true/false."""
        for item in settings.split(","):
            key, _, text = item.partition("=")
            if not hasattr(self, key):
                raise ValueError(f"config has no setting {key!r} (from {item!r})")
            current = getattr(self, key)
            if isinstance(current, bool):
                truth = {"true": True, "1": True, "yes": True, "y": True,
                         "false": False, "0": False, "no": False, "n": False}.get(text.lower())
                if truth is None:
                    raise ValueError(f"config setting {key}: {text!r} is not true or false")
                value = truth
            elif isinstance(current, (int, float, str)):
                value = type(current)(text)
            else:
                raise TypeError(f"config setting {key} is a {type(current).__name__}: set it in code, not from a "
                                "string")
            setattr(self, key, value)

    def get_text_config(self, *args, **kwargs) -> NezhaConfig:
        """The config of the text model: this one (transformers asks it of every config)."""
        return self

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NezhaConfig) and self.to_dict() == other.to_dict()

    __hash__ = None  # mutable

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string(use_diff=False)}"

    # -- validation ---------------------------------------------------------------------------------------------
    def validate(self, source: str | None = None) -> None:
        """Raise :class:`ConfigError` naming the first field that no NEZHA model can be built with.

        ``source`` (the config file) starts the message when given.
        """
        if source is not None:
            try:
                self.validate()
            except ConfigError as exc:
                raise ConfigError(f"{source}: {exc}") from None
            return
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
        if sorted(self.id2label) != list(range(len(self.id2label))):
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
        check_attn_implementation(self.attn_implementation)
        if self.problem_type not in (None, "regression", "single_label_classification", "multi_label_classification"):
            raise ConfigError(f"config field problem_type={self.problem_type!r}: unknown problem type")

    @property
    def dtype(self):
        """transformers 4.56's name for ``torch_dtype``."""
        return self.torch_dtype

    @dtype.setter
    def dtype(self, value) -> None:
        self.torch_dtype = _torch_dtype(value) if isinstance(value, str) else value

    @property
    def attention_head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    # -- serialisation ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Every setting, as ``config.json`` holds it (transformers' ``to_dict``)."""
        out: dict[str, Any] = {"model_type": MODEL_TYPE}
        for key, value in vars(self).items():
            if key.startswith("_") or key in ("name_or_path", "gradient_checkpointing", "attn_implementation"):
                continue
            if key in _OMITTED_WHEN_DEFAULT and value == MODEL_FIELDS.get(key, (None, None))[1]:
                continue
            out[key] = copy.deepcopy(value)
        if out.get("torch_dtype") is not None:
            out["torch_dtype"] = str(out["torch_dtype"]).removeprefix("torch.")
        # JSON object keys are strings; transformers reads the label count from id2label.
        out["id2label"] = {str(i): name for i, name in sorted(self.id2label.items())}
        out["label2id"] = dict(self.label2id)
        return out

    def to_diff_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` without the general settings left at their defaults (what ``save_pretrained`` writes)."""
        defaults = {**GENERAL_DEFAULTS, "torch_dtype": None}
        return {k: v for k, v in self.to_dict().items() if k not in defaults or v != defaults[k]}

    def to_json_string(self, use_diff: bool = True) -> str:
        data = self.to_diff_dict() if use_diff else self.to_dict()
        return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    def to_json_file(self, path: str | Path, use_diff: bool = True) -> None:
        Path(path).write_text(self.to_json_string(use_diff=use_diff), encoding="utf-8")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config", return_unused_kwargs: bool = False,
                  **kwargs: Any):
        """A config from a ``config.json`` mapping; ``kwargs`` replace its settings, as in transformers.

        Like a config built in code, it is checked when a model is built from it (or by :meth:`validate`).
        """
        data = dict(data)
        model_type = data.pop("model_type", None)
        if model_type not in (None, MODEL_TYPE):
            raise ConfigError(
                f"{source}: model_type is {model_type!r}, not {MODEL_TYPE!r}; convert other checkpoints with "
                "`nezha import`"
            )
        if "num_labels" in kwargs and "id2label" not in kwargs:
            data.pop("id2label", None)
            data.pop("label2id", None)
        if data.get("pruned_heads"):
            data["pruned_heads"] = {int(k): list(v) for k, v in data["pruned_heads"].items()}
        try:
            config = cls(**data)
            unused = {}
            for key, value in kwargs.items():
                if hasattr(config, key):
                    setattr(config, key, value)
                else:
                    unused[key] = value
            if not return_unused_kwargs:
                config.update(unused)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: {exc}") from None
        return (config, unused) if return_unused_kwargs else config

    @classmethod
    def from_json_file(cls, path: str | Path) -> NezhaConfig:
        from nezha_cli.io import read_json

        data = read_json(Path(path), what="model config")
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: model config must be a JSON object")
        return cls.from_dict(data, source=str(path))

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> None:
        """Write ``config.json`` into ``save_directory`` (``push_to_hub`` is refused: nezha never uploads)."""
        if kwargs.get("push_to_hub"):
            raise ConfigError("push_to_hub: nezha does not upload; use `huggingface-cli upload` on the directory")
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.to_json_file(directory / CONFIG_NAME)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, subfolder: str = "", **kwargs: Any):
        """Read a model directory's ``config.json`` (or the file itself); ``kwargs`` replace its settings."""
        for option in HUB_OPTIONS:
            kwargs.pop(option, None)
        directory = Path(pretrained_model_name_or_path) / subfolder
        path = directory / CONFIG_NAME if directory.is_dir() else directory
        if not path.exists():
            raise ModelFileNotFoundError(f"{directory}: no {CONFIG_NAME}; is this a model directory? ({LOCAL_ONLY})")
        from nezha_cli.io import read_json

        data = read_json(path, what="model config")
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: model config must be a JSON object")
        result = cls.from_dict(data, source=str(path), **kwargs)
        config = result[0] if isinstance(result, tuple) else result
        config.name_or_path = str(pretrained_model_name_or_path)
        return result


def check_attn_implementation(value: str | None) -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of ATTENTION_IMPLEMENTATIONS or None."""
    if value not in (None, *ATTENTION_IMPLEMENTATIONS):
        raise ConfigError(f"attn_implementation={value!r}: use one of {', '.join(ATTENTION_IMPLEMENTATIONS)} "
                          "(or leave it unset)")


def _torch_dtype(name: str):
    import torch

    dtype = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ConfigError(f"config field torch_dtype={name!r}: not a torch dtype, such as \"float32\"")
    return dtype
