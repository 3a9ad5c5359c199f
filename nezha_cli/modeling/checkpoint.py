"""Model directories in the transformers layout: ``config.json`` + ``model.safetensors`` (or ``pytorch_model.bin``).

Loading never unpickles code (safetensors, or ``torch.load(weights_only=True)``). Every tensor that does not fit is
reported by name: missing body weights and shape mismatches as warnings, a freshly initialised task head on a
pretrained body (the normal start of fine-tuning) as information.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from torch import nn

from nezha_cli.errors import CheckpointError, ModelFileNotFoundError
from nezha_cli.io import give_default_mode
from nezha_cli.modeling.configuration import CONFIG_NAME, HUB_OPTIONS, LOCAL_ONLY, NezhaConfig

logger = logging.getLogger(__name__)

SAFE_WEIGHTS_NAME = "model.safetensors"
WEIGHTS_NAME = "pytorch_model.bin"
WEIGHTS_NAMES = (SAFE_WEIGHTS_NAME, WEIGHTS_NAME)  # in the order they are looked for

# Buffers that older writers stored but that are derived from the config here (transformers < 4.30 kept the
# [L, L, d] relative table and position/token-type id buffers in some checkpoints).
DERIVED_SUFFIXES = ("relative_positions_encoding.positions_encoding", "embeddings.position_ids",
                    "embeddings.token_type_ids")

# Parameters that belong to task heads rather than the NEZHA body; missing ones are expected when fine-tuning
# (also how `nezha export` tells a head from the body in imported checkpoints).
HEAD_PREFIXES = ("cls.", "classifier.", "qa_outputs.", "crf.", "word_feature_embeddings.")


class LoadReport(dict):
    """What happened to each tensor when a checkpoint was loaded into a model.

    As a dict it is the loading info transformers returns for ``output_loading_info=True``: ``missing_keys`` (every
    weight the checkpoint did not give, head or body), ``unexpected_keys``, ``mismatched_keys`` as ``(name,
    checkpoint shape, model shape)`` and ``error_msgs``. Its attributes say more: ``missing`` (body weights, a
    warning), ``newly_initialized`` (task-head weights, the normal start of fine-tuning), ``mismatched`` as ``(name,
    model shape, checkpoint shape)``, ``skipped`` (derived buffers older writers stored).
    """

    def __init__(self) -> None:
        super().__init__(missing_keys=[], unexpected_keys=[], mismatched_keys=[], error_msgs=[])
        self.missing: list[str] = []
        self.newly_initialized: list[str] = []
        self.mismatched: list[tuple[str, tuple, tuple]] = []
        self.skipped: list[str] = []

    @property
    def unexpected(self) -> list[str]:
        return self["unexpected_keys"]

    @property
    def ok(self) -> bool:
        return not (self.missing or self.mismatched)

    def finish(self, model_order: list[str], strip_prefix: str = "") -> None:
        """Fill the transformers keys from the attributes, in the model's parameter order."""
        absent = {name.removeprefix(strip_prefix) for name in self.missing + self.newly_initialized}
        self["missing_keys"] = [name for name in model_order if name in absent]
        self["mismatched_keys"] = [(name, got, want) for name, want, got in self.mismatched]

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
    for name in WEIGHTS_NAMES:
        if (directory / name).is_file():
            return directory / name
    raise ModelFileNotFoundError(
        f"{directory}: no {SAFE_WEIGHTS_NAME} or {WEIGHTS_NAME}; is this a model directory? "
        "(sharded checkpoints: merge them first; TensorFlow checkpoints: use `nezha import`)"
    )


def tied_aliases(model: nn.Module) -> set[str]:
    """Names of the model's parameters that are aliases of others: never written, restored by tying on load.

    The MLM decoder's bias is always ``cls.predictions.bias``; its weight is the word embeddings' only while
    ``tie_word_embeddings`` holds.
    """
    names = set(getattr(model, "_tied_weights_keys", ()))
    if not model.config.tie_word_embeddings:
        names = {name for name in names if not name.endswith(".weight")}
    return names


def model_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict without tied aliases (they are restored by tying on load)."""
    tied = tied_aliases(model)
    return {k: v for k, v in model.state_dict().items() if k not in tied}


def save_pretrained(model: nn.Module, save_directory: str | Path, metadata: dict[str, str] | None = None, *,
                    is_main_process: bool = True, state_dict: dict[str, torch.Tensor] | None = None,
                    safe_serialization: bool = True, push_to_hub: bool = False, **kwargs) -> None:
    """Write ``config.json`` (with ``architectures``) and the weights into ``save_directory``, as transformers.

    ``model.safetensors``, or ``pytorch_model.bin`` with ``safe_serialization=False``; ``state_dict`` replaces the
    model's own (tied aliases are left out of either). Only the main process writes (``is_main_process``).
    ``max_shard_size``/``variant`` are accepted, and one file is written.
    """
    if push_to_hub:
        raise CheckpointError("push_to_hub: nezha does not upload; use `huggingface-cli upload` on the directory")
    unknown = set(kwargs) - {"max_shard_size", "variant", "save_function", "token", "save_peft_format"}
    if unknown:
        raise TypeError(f"save_pretrained() got unexpected keyword arguments: {', '.join(sorted(unknown))}")
    if not is_main_process:
        return
    directory = Path(save_directory)
    if directory.is_file():
        raise CheckpointError(f"{directory}: is a file; save_pretrained needs a directory")
    directory.mkdir(parents=True, exist_ok=True)
    config: NezhaConfig = model.config
    config.architectures = [type(model).__name__]
    config.save_pretrained(directory)
    tied = tied_aliases(model)
    tensors = model_state_dict(model) if state_dict is None else {k: v for k, v in state_dict.items()
                                                                 if k not in tied}
    # The other format's file would be read first (or instead) on load: never leave a stale one beside.
    stale = directory / (WEIGHTS_NAME if safe_serialization else SAFE_WEIGHTS_NAME)
    if stale.exists():
        stale.unlink()
    if safe_serialization:
        save_state_dict(tensors, directory / SAFE_WEIGHTS_NAME, metadata)
    else:
        path = directory / WEIGHTS_NAME
        torch.save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, path)
        give_default_mode(path)


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
    tied = tied_aliases(model)
    expected = model.state_dict()
    usable: dict[str, torch.Tensor] = {}
    for name, tensor in _rename_for(model, state_dict).items():
        if name.endswith(DERIVED_SUFFIXES):
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
    prefix = model.base_model_prefix + "."
    # As transformers: names are reported without the body's prefix when the checkpoint has none.
    strip = any(k.startswith(prefix) for k in expected) and not any(k.startswith(prefix) for k in state_dict)
    report.finish([name.removeprefix(prefix) if strip else name for name in expected],
                  strip_prefix=prefix if strip else "")
    model.tie_weights()
    return report


# from_pretrained options that concern the Hub, devices or loading speed: accepted so that transformers code runs,
# with no effect here (nothing is downloaded; the model is built on the CPU and moved by the caller).
_IGNORED_LOAD_OPTIONS = (*HUB_OPTIONS, "low_cpu_mem_usage", "_fast_init", "from_tf", "from_flax", "offload_folder",
                         "offload_state_dict", "variant", "use_safetensors")


def from_pretrained(cls, pretrained_model_name_or_path: str | Path | None, *model_args,
                    config: NezhaConfig | str | Path | None = None, state_dict: dict[str, torch.Tensor] | None = None,
                    output_loading_info: bool = False, ignore_mismatched_sizes: bool = False, strict: bool = False,
                    torch_dtype=None, subfolder: str = "", device_map=None, dtype=None, **kwargs):
    """Build ``cls`` from a model directory, as transformers' ``from_pretrained`` does.

    ``pretrained_model_name_or_path`` may be None when ``config`` and ``state_dict`` are given. ``kwargs`` that
    are config settings (``num_labels=3``, ``output_attentions=True``) replace the config's. A weight whose shape
    differs from the model's is an error unless ``ignore_mismatched_sizes`` (then it is left at its initial value
    with a warning); ``strict`` also refuses missing body weights. ``output_loading_info`` returns ``(model,
    LoadReport)``, the report being transformers' dict of missing/unexpected/mismatched keys. ``dtype`` is
    transformers 4.56's name for ``torch_dtype`` ("auto": the config's).
    """
    if dtype is not None:
        if torch_dtype is not None and torch_dtype != dtype:
            raise TypeError(f"from_pretrained(): torch_dtype={torch_dtype!r} and dtype={dtype!r} are the same "
                            "option; give one")
        torch_dtype = dtype
    for option in _IGNORED_LOAD_OPTIONS:
        kwargs.pop(option, None)
    if device_map not in (None, "cpu"):
        raise CheckpointError(f"device_map={device_map!r}: not supported; load on the CPU and move the model "
                              "with .to(device), or let accelerate place it")
    source = "state_dict" if pretrained_model_name_or_path is None else str(pretrained_model_name_or_path)
    directory = None
    if pretrained_model_name_or_path is not None:
        directory = Path(pretrained_model_name_or_path) / subfolder
        if not directory.is_dir():
            raise ModelFileNotFoundError(f"{directory}: model directory not found ({LOCAL_ONLY})")
    elif config is None or state_dict is None:
        raise CheckpointError("from_pretrained(None, ...) needs both config= and state_dict=")
    if isinstance(config, (str, Path)):
        config = NezhaConfig.from_pretrained(config)
    if config is None:
        if not (directory / CONFIG_NAME).is_file():
            if any((directory / name).is_file() for name in WEIGHTS_NAMES):
                # transformers' Trainer.save_model writes only the weights of a model that is not its own class.
                raise ModelFileNotFoundError(
                    f"{directory}: weights without {CONFIG_NAME} (as transformers' Trainer saves models of other "
                    "libraries); pass config= (the config of the model you trained), or save with "
                    "model.save_pretrained(directory)")
            raise ModelFileNotFoundError(f"{directory}: no {CONFIG_NAME}; is this a model directory?")
        config = NezhaConfig.from_pretrained(directory)
    else:
        config = copy.deepcopy(config)
    if kwargs:
        unknown = [key for key in kwargs if not hasattr(config, key) and key not in ("id2label", "label2id")]
        if unknown:
            raise TypeError(f"from_pretrained() got keyword arguments that are neither loading options nor config "
                            f"settings: {', '.join(unknown)}")
        config = config.replace(**kwargs)
    if directory is not None:
        config.name_or_path = str(pretrained_model_name_or_path)
    config.validate(source=str(directory / CONFIG_NAME) if directory is not None else "config")
    if state_dict is None:
        state_dict = load_state_dict(find_weights(directory))
    model = cls(config, *model_args)
    report = load_weights(model, state_dict)
    report.log(source)
    if report.mismatched and not (ignore_mismatched_sizes or strict):
        shown = "; ".join(f"{name}: {list(got)} in the checkpoint, {list(want)} in the model"
                          for name, want, got in report.mismatched[:3])
        raise CheckpointError(f"{source}: weights of another shape ({shown}); pass ignore_mismatched_sizes=True "
                              "to start those from initial values")
    if strict and not report.ok:
        names = report.missing + [m[0] for m in report.mismatched]
        raise CheckpointError(f"{source}: checkpoint does not fit {cls.__name__}: {', '.join(names[:5])}"
                              + (" ..." if len(names) > 5 else ""))
    if torch_dtype is not None:
        if torch_dtype == "auto":
            torch_dtype = config.torch_dtype
        if isinstance(torch_dtype, str):
            torch_dtype = getattr(torch, torch_dtype)
        if torch_dtype is not None:
            model.to(torch_dtype)
    model.eval()  # as transformers: a loaded model starts in evaluation mode
    if output_loading_info:
        return model, report
    return model
