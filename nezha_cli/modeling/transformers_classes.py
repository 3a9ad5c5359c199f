"""The NEZHA classes as transformers models: subclasses of its ``PreTrainedModel`` and ``PretrainedConfig``.

:mod:`nezha_cli.modeling` behaves as transformers' Nezha did, but its classes are plain torch modules, so that
pretraining and fine-tuning never need transformers (importing it adds about 4 s to every command). Some code needs
transformers' own base classes: ``Trainer.save_model`` writes ``config.json`` only for a ``PreTrainedModel``, the
Auto classes and pipelines look models up by config class, transformers' test suite builds its models from the
config. For that code, this module gives the eight classes and the config on transformers' base classes, with
transformers 4.57 and 5.x::

    from nezha_cli.modeling.transformers_classes import NezhaForSequenceClassification, register

    model = NezhaForSequenceClassification.from_pretrained("path/to/nezha-cn-base", num_labels=2)
    register()  # AutoModel & co. build these for model_type "nezha" (transformers 5 has no Nezha of its own)

The modules, forward passes and weight names are nezha_cli.modeling's (the classes derive from them), the outputs
transformers' output classes; transformers provides loading (from local directories only, as all of nezha) and
saving, weight initialisation and tying, and vocabulary resizing. Checkpoints move freely between the two families.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import re
from pathlib import Path

try:
    import transformers
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("nezha_cli.modeling.transformers_classes needs transformers: pip install 'transformers>=4.57' "
                      "(nezha_cli.modeling has the same classes without it)") from exc
from transformers import PreTrainedModel, modeling_outputs
from transformers.utils import ModelOutput

from nezha_cli.errors import ModelFileNotFoundError
from nezha_cli.modeling import checkpoint, configuration
from nezha_cli.modeling import modeling_nezha as nezha

# transformers 5 renamed PretrainedConfig to PreTrainedConfig (keeping the old name as an alias).
_TransformersConfig = getattr(transformers, "PreTrainedConfig", None) or transformers.PretrainedConfig
# transformers 5 gives tied weights as {tied parameter: the parameter it is tied to}; 4.x as a list of the former.
_TIES_AS_MAPPING = int(transformers.__version__.split(".")[0]) >= 5


def _local_only(path, kwargs: dict) -> None:
    """nezha never downloads: a Hub id (which transformers would fetch) is refused as nezha_cli.modeling refuses it,
    and ``kwargs`` tell transformers to stay off the Hub for files a local directory lacks."""
    if path is not None and not Path(path).exists():
        raise ModelFileNotFoundError(f"{path}: model directory not found ({configuration.LOCAL_ONLY})")
    kwargs["local_files_only"] = True


class NezhaConfig(_TransformersConfig, configuration.NezhaConfig):
    """transformers' config with NEZHA's fields and defaults (as nezha_cli.modeling.NezhaConfig), and its checks.

    transformers' methods come first (serialisation, ``num_labels``, ``use_return_dict``, ...); nezha's add the
    checks (:meth:`validate`), ``attention_head_size``, ``labels``, ``with_labels`` and ``replace``.
    """

    model_type = configuration.MODEL_TYPE
    # A plain setting in transformers (``torch_dtype`` its alias), not nezha's alias property.
    dtype = None

    def __init__(self, **kwargs):
        fields = {name: kwargs.pop(name, copy.deepcopy(default))
                  for name, (_, default) in configuration.MODEL_FIELDS.items()}
        # Special tokens are general settings in transformers 4 and model fields in 5: given to both.
        super().__init__(**{name: fields[name] for name in ("pad_token_id", "bos_token_id", "eos_token_id")},
                         **kwargs)
        for name, value in fields.items():
            setattr(self, name, value)
        # transformers 5 moved the settings only some models use (is_decoder, tie_word_embeddings, ...) from its
        # base config into those models' configs; the modules read them.
        for name, default in configuration.GENERAL_DEFAULTS.items():
            if name not in vars(self) and not any(name in vars(base) for base in type(self).__mro__):
                setattr(self, name, copy.deepcopy(default))

    # transformers 5 deprecates its own (a warning per forward call); the same rule.
    use_return_dict = configuration.NezhaConfig.use_return_dict
    # transformers 5 makes configs dataclasses, whose generated equality would compare its base fields only.
    __eq__ = configuration.NezhaConfig.__eq__
    __hash__ = None

    @property
    def attn_implementation(self) -> str | None:
        """The attention implementation the modules use (nezha's names: eager, sdpa, fused), in transformers'
        setting, so that ``from_pretrained(..., attn_implementation=...)`` reaches them."""
        return self._attn_implementation

    @attn_implementation.setter
    def attn_implementation(self, value: str | None) -> None:
        self._attn_implementation = value

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        _local_only(pretrained_model_name_or_path, kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def validate(self, source: str | None = None) -> None:
        """nezha's checks (:meth:`nezha_cli.modeling.NezhaConfig.validate`), then transformers 5's own."""
        configuration.NezhaConfig.validate(self, source)
        transformers_checks = getattr(_TransformersConfig, "validate", None)
        if transformers_checks is not None:
            transformers_checks(self)


class NezhaPreTrainedModel(PreTrainedModel):
    """transformers' base class for the eight models below, for ``isinstance`` checks and subclassing."""

    config_class = NezhaConfig
    base_model_prefix = "nezha"
    supports_gradient_checkpointing = True


class _FromTransformers:
    """Put first in each class's bases: what transformers does rather than nezha_cli.modeling.

    The bases are (this, nezha's class, NezhaPreTrainedModel), so nezha's methods win over transformers' except
    the ones taken back here: loading, saving, initialisation and tying (transformers' ``from_pretrained`` builds
    the model without initialising it, then loads), and vocabulary resizing. nezha's stay for what its modules
    define: attention implementation, head pruning and masks, gradient checkpointing, embeddings access.
    """

    config_class = NezhaConfig
    # Buffers older checkpoints hold that are derived from the config here (the relative table, id buffers).
    _keys_to_ignore_on_load_unexpected = [re.escape(suffix) + "$" for suffix in checkpoint.DERIVED_SUFFIXES]
    _tied_weights_keys = None  # the two MLM classes set theirs
    _from_config = PreTrainedModel.__dict__["_from_config"]
    save_pretrained = PreTrainedModel.save_pretrained
    init_weights = PreTrainedModel.init_weights
    tie_weights = PreTrainedModel.tie_weights
    resize_token_embeddings = PreTrainedModel.resize_token_embeddings

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """transformers' ``from_pretrained``, from local directories only (as everywhere in nezha)."""
        _local_only(pretrained_model_name_or_path, kwargs)
        return PreTrainedModel.from_pretrained.__func__(cls, pretrained_model_name_or_path, *model_args, **kwargs)

    def _base_init_arguments(self, config: NezhaConfig) -> tuple:
        return (config,)

    def post_init(self) -> None:
        # transformers 5 no longer prunes the heads a config lists; nezha still does (4.x's post_init prunes them
        # itself, pruning is idempotent).
        if self.config.pruned_heads:
            self.prune_heads(self.config.pruned_heads)
        PreTrainedModel.post_init(self)

    def _check_and_adjust_attn_implementation(self, attn_implementation: str | None, *args, **kwargs) -> str:
        """transformers asks each model which attention implementations it has: nezha's, not transformers'."""
        configuration.check_attn_implementation(attn_implementation)  # a ValueError, as transformers raises
        return attn_implementation or "eager"


# transformers' output of NezhaForPreTraining (the class left with transformers 5's Nezha): nezha's fields.
NezhaForPreTrainingOutput = dataclasses.make_dataclass(
    "NezhaForPreTrainingOutput", [(f.name, f.type, None) for f in dataclasses.fields(nezha.NezhaForPreTrainingOutput)],
    bases=(ModelOutput,))
NezhaForPreTrainingOutput.__module__ = __name__


def _transformers_outputs(forward):
    """``forward`` returning transformers' output class of the same name and fields, as transformers' Nezha did
    (pipelines rebuild outputs they do not recognise as plain dicts). Signature kept (the Trainer reads it)."""

    @functools.wraps(forward)
    def wrapper(self, *args, **kwargs):
        output = forward(self, *args, **kwargs)
        if not isinstance(output, nezha.ModelOutput):  # return_dict=False: a tuple either way
            return output
        name = type(output).__name__
        output_class = NezhaForPreTrainingOutput if name == "NezhaForPreTrainingOutput" else \
            getattr(modeling_outputs, name)
        return output_class(**output)

    return wrapper


def _tied(prefix: str) -> dict[str, str] | list[str]:
    """The MLM decoder's weight is the word embeddings, its bias the head's bias (transformers' two forms)."""
    ties = {f"{prefix}.decoder.weight": "nezha.embeddings.word_embeddings.weight",
            f"{prefix}.decoder.bias": f"{prefix}.bias"}
    return ties if _TIES_AS_MAPPING else list(ties)


def _on_transformers(nezha_class: type, **attributes) -> type:
    """``nezha_class`` on transformers' base classes: bases (_FromTransformers, it, NezhaPreTrainedModel)."""
    namespace = {"__module__": __name__, "__qualname__": nezha_class.__name__, "__doc__": nezha_class.__doc__,
                 "forward": _transformers_outputs(nezha_class.forward), **attributes}
    return type(nezha_class.__name__, (_FromTransformers, nezha_class, NezhaPreTrainedModel), namespace)


NezhaModel = _on_transformers(nezha.NezhaModel)
NezhaForPreTraining = _on_transformers(nezha.NezhaForPreTraining, _tied_weights_keys=_tied("cls.predictions"))
NezhaForMaskedLM = _on_transformers(nezha.NezhaForMaskedLM, _tied_weights_keys=_tied("cls.predictions"))
NezhaForNextSentencePrediction = _on_transformers(nezha.NezhaForNextSentencePrediction)
NezhaForSequenceClassification = _on_transformers(nezha.NezhaForSequenceClassification)
NezhaForMultipleChoice = _on_transformers(nezha.NezhaForMultipleChoice)
NezhaForTokenClassification = _on_transformers(nezha.NezhaForTokenClassification)
NezhaForQuestionAnswering = _on_transformers(nezha.NezhaForQuestionAnswering)

MODEL_CLASSES = {cls.__name__: cls for cls in (
    NezhaModel, NezhaForPreTraining, NezhaForMaskedLM, NezhaForNextSentencePrediction,
    NezhaForSequenceClassification, NezhaForMultipleChoice, NezhaForTokenClassification, NezhaForQuestionAnswering,
)}

# The Auto class that builds each model, as transformers 4.x registered its own Nezha.
_AUTO_CLASSES = {
    "AutoModel": NezhaModel,
    "AutoModelForPreTraining": NezhaForPreTraining,
    "AutoModelForMaskedLM": NezhaForMaskedLM,
    "AutoModelForNextSentencePrediction": NezhaForNextSentencePrediction,
    "AutoModelForSequenceClassification": NezhaForSequenceClassification,
    "AutoModelForMultipleChoice": NezhaForMultipleChoice,
    "AutoModelForTokenClassification": NezhaForTokenClassification,
    "AutoModelForQuestionAnswering": NezhaForQuestionAnswering,
}


def register(exist_ok: bool = False) -> None:
    """Make ``AutoConfig`` and the ``AutoModel...`` classes build these for ``model_type`` "nezha" (and
    ``AutoTokenizer`` BERT's tokenizer, as transformers 4.x did for its Nezha).

    transformers 5 has no Nezha, so its Auto classes refuse NEZHA checkpoints until this is called. transformers 4.x
    has its own (deprecated) Nezha under that name: ``exist_ok=True`` replaces it there. Calling it again is a no-op.
    """
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if NezhaConfig.model_type in CONFIG_MAPPING:
        if CONFIG_MAPPING[NezhaConfig.model_type] is NezhaConfig:
            return
        if not exist_ok:
            raise ValueError(f"transformers {transformers.__version__} has its own (deprecated) Nezha under "
                             "model_type 'nezha': register(exist_ok=True) replaces it with these classes")
    AutoConfig.register(NezhaConfig.model_type, NezhaConfig, exist_ok=exist_ok)
    for auto_name, model_class in _AUTO_CLASSES.items():
        getattr(transformers, auto_name).register(NezhaConfig, model_class, exist_ok=exist_ok)
    # NEZHA checkpoints carry BERT-Chinese's vocab.txt, often without a tokenizer_config.json that names a class.
    transformers.AutoTokenizer.register(NezhaConfig, slow_tokenizer_class=transformers.BertTokenizer,
                                        fast_tokenizer_class=transformers.BertTokenizerFast, exist_ok=exist_ok)


__all__ = ["MODEL_CLASSES", "NezhaConfig", "NezhaForPreTrainingOutput", "NezhaPreTrainedModel", "register",
           *MODEL_CLASSES]
