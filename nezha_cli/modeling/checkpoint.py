"""Model directories in the transformers layout: ``config.json`` + ``model.safetensors`` (or ``pytorch_model.bin``).

Loading never unpickles code (safetensors, or ``torch.load(weights_only=True)``). Every tensor that does not fit is
reported by name: missing body weights and shape mismatches as warnings, a freshly initialised task head on a
pretrained body (the normal start of fine-tuning) as information.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from nezha_cli.errors import CheckpointError
from nezha_cli.io import give_default_mode
from nezha_cli.modeling.configuration import CONFIG_NAME, NezhaConfig

logger = logging.getLogger(__name__)

SAFE_WEIGHTS_NAME = "model.safetensors"
WEIGHTS_NAME = "pytorch_model.bin"

# Buffers that older writers stored but that are derived from the config here (transformers < 4.30 kept the
# [L, L, d] relative table and position/token-type id buffers in some checkpoints).
_DERIVED_SUFFIXES = ("relative_positions_encoding.positions_encoding", "embeddings.position_ids",
                     "embeddings.token_type_ids")

# Parameters that belong to task heads rather than the NEZHA body; missing ones are expected when fine-tuning
# (also how `nezha export` tells a head from the body in imported checkpoints).
HEAD_PREFIXES = ("cls.", "classifier.", "qa_outputs.", "crf.", "word_feature_embeddings.")


@dataclass
class LoadReport:
    """What happened to each tensor when a checkpoint was loaded into a model."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    newly_initialized: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.mismatched)

    def log(self, source: str) -> None:
        if self.newly_initialized:
            logger.info("%s: newly initialised (not in the checkpoint): %s", source, ", ".join(self.newly_initialized))
        if self.missing:
            logger.warning("%s: missing from the checkpoint, left at initial values: %s", source,
                           ", ".join(self.missing))
        for name, want, got in self.mismatched:
            logger.warning("%s: %s has shape %s in the checkpoint but %s in the model; left at initial values",
                           source, name, list(got), list(want))
        if self.unexpected:
            logger.info("%s: not used by %s: %s", source, "this model", ", ".join(self.unexpected))


def save_state_dict(state_dict: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    save_file(tensors, str(path), metadata={"format": "pt", **(metadata or {})})
    give_default_mode(path)


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read ``model.safetensors`` or a pickle-free ``pytorch_model.bin``."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: weights file not found") from None
    except Exception as exc:  # safetensors/pickle raise many types for a corrupt or unsafe file
        raise CheckpointError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from None


def find_weights(directory: Path) -> Path:
    for name in (SAFE_WEIGHTS_NAME, WEIGHTS_NAME):
        if (directory / name).is_file():
            return directory / name
    raise CheckpointError(
        f"{directory}: no {SAFE_WEIGHTS_NAME} or {WEIGHTS_NAME}; is this a model directory? "
        "(sharded checkpoints: merge them first; TensorFlow checkpoints: use `nezha import`)"
    )


def model_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict without tied aliases (they are restored by tying on load)."""
    tied = set(getattr(model, "_tied_weights_keys", ()))
    return {k: v for k, v in model.state_dict().items() if k not in tied}


def save_pretrained(model: nn.Module, directory: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write ``config.json`` (with ``architectures``) and ``model.safetensors`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config: NezhaConfig = model.config
    config.architectures = [type(model).__name__]
    config.save_pretrained(directory)
    save_state_dict(model_state_dict(model), directory / SAFE_WEIGHTS_NAME, metadata)


def _rename_for(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add or strip the ``nezha.`` prefix so that body-only and with-head checkpoints load into either kind."""
    prefix = model.base_model_prefix + "."
    model_keys = model.state_dict().keys()
    model_has_prefix = any(k.startswith(prefix) for k in model_keys)
    ckpt_has_prefix = any(k.startswith(prefix) for k in state_dict)
    if model_has_prefix and not ckpt_has_prefix:
        return {(k if k.startswith(HEAD_PREFIXES) else prefix + k): v for k, v in state_dict.items()}
    if not model_has_prefix and ckpt_has_prefix:
        return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state_dict.items()}
    return state_dict


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> LoadReport:
    """Copy matching tensors into ``model`` and report the rest; tied aliases are resolved by the model."""
    report = LoadReport()
    tied = set(getattr(model, "_tied_weights_keys", ()))
    expected = model.state_dict()
    usable: dict[str, torch.Tensor] = {}
    for name, tensor in _rename_for(model, state_dict).items():
        if name.endswith(_DERIVED_SUFFIXES):
            report.skipped.append(name)
        elif name not in expected:
            report.unexpected.append(name)
        elif tuple(tensor.shape) != tuple(expected[name].shape):
            report.mismatched.append((name, tuple(expected[name].shape), tuple(tensor.shape)))
        else:
            usable[name] = tensor
    # A tied alias in the checkpoint (e.g. cls.predictions.decoder.weight) must not overwrite its source.
    for name in tied:
        usable.pop(name, None)
    model.load_state_dict(usable, strict=False)
    mismatched = {m[0] for m in report.mismatched}
    for name in expected:
        if name in usable or name in tied or name in mismatched:
            continue
        (report.newly_initialized if name.startswith(HEAD_PREFIXES) else report.missing).append(name)
    model.tie_weights()
    return report


def from_pretrained(cls, directory: str | Path, config: NezhaConfig | None = None, output_loading_info: bool = False,
                    strict: bool = False, **config_overrides):
    """Build ``cls`` from a model directory; ``config_overrides`` (e.g. ``num_labels``) replace config fields."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: model directory not found")
    if not (directory / CONFIG_NAME).is_file() and config is None:
        raise CheckpointError(f"{directory}: no {CONFIG_NAME}; is this a model directory?")
    weights = find_weights(directory)
    if config is None:
        config = NezhaConfig.from_pretrained(directory)
    if config_overrides:
        import dataclasses

        if "num_labels" in config_overrides:
            config_overrides.setdefault("id2label", None)
        config = dataclasses.replace(config, **config_overrides)
    model = cls(config)
    report = load_weights(model, load_state_dict(weights))
    report.log(str(directory))
    if strict and not report.ok:
        names = report.missing + [m[0] for m in report.mismatched]
        raise CheckpointError(f"{directory}: checkpoint does not fit {cls.__name__}: {', '.join(names[:5])}"
                              + (" ..." if len(names) > 5 else ""))
    if output_loading_info:
        return model, report
    return model


def load_model(directory: str | Path, architecture: str | None = None, **kwargs):
    """Load a model directory as the class named by ``architecture`` or by its config's ``architectures``."""
    from nezha_cli.modeling.modeling_nezha import MODEL_CLASSES

    directory = Path(directory)
    config = NezhaConfig.from_pretrained(directory)
    name = architecture or (config.architectures or ["NezhaModel"])[0]
    if name not in MODEL_CLASSES:
        raise CheckpointError(f"{directory}: unknown architecture {name!r}; expected one of {', '.join(MODEL_CLASSES)}")
    return from_pretrained(MODEL_CLASSES[name], directory, config=config, **kwargs)
