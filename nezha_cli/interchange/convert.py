"""``nezha import``: released NEZHA checkpoints -> a model directory of this package.

Three sources:

* ``tf``: the original NEZHA TensorFlow checkpoints (``model.ckpt-N.index`` + ``.data-*``, ``bert_config.json``),
  read by :mod:`nezha_cli.interchange.tf_bundle` without TensorFlow. BERT names (``bert/encoder/layer_0/attention/
  self/query/kernel``), dense kernels stored [in, out] (transposed here), optimizer slots and ``global_step``.
* ``pytorch``: NEZHA-PyTorch / pytorch-pretrained-bert files: ``bert.`` prefix, LayerNorm ``gamma``/``beta``.
* ``hf``: transformers model directories (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``,
  also sharded); a hub name is refused with what to do, since nothing is ever downloaded.

Every source tensor ends up in the report as mapped (to which parameter, transposed or not) or skipped (with the
reason); a tensor the model needs and the checkpoint lacks, or one whose shape does not fit the config, is an
error before anything is written. PyTorch files are read with ``torch.load(weights_only=True)``: no pickled code
runs.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nezha_cli.errors import CheckpointError, ConfigError
from nezha_cli.io import atomic_output_dir, check_output_path, read_json, write_json
from nezha_cli.modeling import MODEL_CLASSES, NezhaConfig
from nezha_cli.modeling.checkpoint import (
    HEAD_PREFIXES,
    SAFE_WEIGHTS_NAME,
    WEIGHTS_NAME,
    load_state_dict,
    model_state_dict,
)
from nezha_cli.text.vocab import VOCAB_NAME

logger = logging.getLogger(__name__)

IMPORT_FORMATS = ("tf", "pytorch", "hf")
REPORT_NAME = "import_report.json"
BERT_CONFIG_NAME = "bert_config.json"

POSITION_REASON = "absolute position embeddings: NEZHA uses functional relative positions instead"
DERIVED_REASON = "derived from the config (recomputed by the model)"
OPTIMIZER_REASON = "optimizer slot"
TRAINING_STATE_REASON = "training state, not a model weight"
UNKNOWN_REASON = "not a parameter of any NEZHA model"

# Optimizer slots of BERT's AdamWeightDecay (adam_m/adam_v), LAMB implementations and tf.train optimizers.
_OPTIMIZER_PART = re.compile(r"(adam|lamb)_[mv]|(Adam|LAMB|AdamWeightDecayOptimizer|LAMBOptimizer|Momentum|Adagrad"
                             r"|RMSProp|ExponentialMovingAverage)(_\d+)?")
_TRAINING_STATE = {"global_step", "beta1_power", "beta2_power", "loss_scale", "good_steps", "current_loss_scale",
                   "learning_rate"}
_DERIVED_SUFFIXES = ("relative_positions_encoding.positions_encoding", "relative_positions_embeddings",
                     "embeddings.position_ids", "embeddings.token_type_ids", "encoder.relative_positions_table")
_BERT_CONFIG_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                       "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
                       "max_relative_position", "type_vocab_size", "initializer_range", "layer_norm_eps")
_REQUIRED_CONFIG_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                           "intermediate_size")
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# ------------------------------------------------------------------------------------------------- the report


@dataclass
class MappedTensor:
    source: str
    target: str
    shape: list[int]
    transposed: bool = False


@dataclass
class SkippedTensor:
    source: str
    shape: list[int]
    reason: str


@dataclass
class ImportReport:
    """What happened to every tensor of the source checkpoint (``OUT/import_report.json``)."""

    source: str
    format: str
    architecture: str = ""
    mapped: list[MappedTensor] = field(default_factory=list)
    skipped: list[SkippedTensor] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    vocab: str | None = None
    output_dir: str | None = None

    def skipped_by_reason(self) -> dict[str, int]:
        return dict(Counter(s.reason for s in self.skipped).most_common())

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source, "format": self.format, "architecture": self.architecture,
            "output_dir": self.output_dir, "vocab": self.vocab, "notes": self.notes,
            "counts": {"mapped": len(self.mapped), "skipped": len(self.skipped), "missing": 0},
            "skipped_by_reason": self.skipped_by_reason(),
            "mapped": [dataclasses.asdict(m) for m in self.mapped],
            "skipped": [dataclasses.asdict(s) for s in self.skipped],
        }


# ---------------------------------------------------------------------------------------------- name mapping


@dataclass(frozen=True)
class Decision:
    """Where one source tensor goes: a canonical target name (``NezhaForPreTraining`` names plus ``classifier.``
    and ``qa_outputs.``), or a reason to skip it."""

    target: str | None = None
    transposed: bool = False
    reason: str | None = None


def tf_decision(name: str) -> Decision:
    """Map a BERT/NEZHA TensorFlow variable name."""
    parts = name.split("/")
    if any(_OPTIMIZER_PART.fullmatch(p) for p in parts):
        return Decision(reason=OPTIMIZER_REASON)
    if parts[-1] in _TRAINING_STATE:
        return Decision(reason=TRAINING_STATE_REASON)
    if name == "bert/embeddings/position_embeddings":
        return Decision(reason=POSITION_REASON)
    special = {
        "cls/predictions/output_bias": "cls.predictions.bias",
        "cls/seq_relationship/output_weights": "cls.seq_relationship.weight",
        "cls/seq_relationship/output_bias": "cls.seq_relationship.bias",
        # BERT's run_classifier.py and run_squad.py heads.
        "output_weights": "classifier.weight",
        "output_bias": "classifier.bias",
        "cls/squad/output_weights": "qa_outputs.weight",
        "cls/squad/output_bias": "qa_outputs.bias",
    }
    if name in special:
        # output_weights are stored [out, in] already, unlike dense kernels.
        return Decision(target=special[name])
    out: list[str] = []
    last = len(parts) - 1
    for i, part in enumerate(parts):
        layer = re.fullmatch(r"layer_(\d+)", part)
        if i == 0 and part == "bert":
            out.append("nezha")
        elif layer:
            out += ["layer", layer.group(1)]
        elif i == last and part in ("kernel", "gamma"):
            out.append("weight")
        elif i == last and part == "beta":
            out.append("bias")
        elif i == last and part.endswith("_embeddings"):
            out += [part, "weight"]
        else:
            out.append(part)
    return Decision(target=".".join(out), transposed=parts[-1] == "kernel")


def torch_decision(name: str) -> Decision:
    """Map a NEZHA-PyTorch, pytorch-pretrained-bert or transformers parameter name."""
    target = name.removeprefix("module.")  # saved from DataParallel
    if target.startswith("bert."):
        target = "nezha." + target[len("bert."):]
    elif not target.startswith(("nezha.",) + HEAD_PREFIXES):
        target = "nezha." + target  # a bare NezhaModel / BertModel state dict
    target = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", target))
    if target.endswith(_DERIVED_SUFFIXES):
        return Decision(reason=DERIVED_REASON)
    if target == "nezha.embeddings.position_embeddings.weight":
        return Decision(reason=POSITION_REASON)
    if target == "cls.predictions.decoder.bias":
        return Decision(reason="alias of cls.predictions.bias")
    return Decision(target=target)


def tf_name(target: str) -> str:
    """The TensorFlow variable name of a canonical parameter (for messages about a TF checkpoint)."""
    special = {"cls.predictions.bias": "cls/predictions/output_bias",
               "cls.seq_relationship.weight": "cls/seq_relationship/output_weights",
               "cls.seq_relationship.bias": "cls/seq_relationship/output_bias",
               "classifier.weight": "output_weights", "classifier.bias": "output_bias",
               "qa_outputs.weight": "cls/squad/output_weights", "qa_outputs.bias": "cls/squad/output_bias"}
    if target in special:
        return special[target]
    parts = target.split(".")
    module, leaf = parts[-2], parts[-1]
    if module.endswith("_embeddings"):
        parts = parts[:-1]
    elif module == "LayerNorm":
        parts[-1] = "gamma" if leaf == "weight" else "beta"
    elif leaf == "weight":
        parts[-1] = "kernel"
    name = "/".join(parts)
    name = re.sub(r"layer/(\d+)", r"layer_\1", name)
    return re.sub(r"^nezha/", "bert/", name)


# ------------------------------------------------------------------------------------------------ the config


def translate_bert_config(data: dict[str, Any], source: str) -> tuple[NezhaConfig, list[str]]:
    """A NEZHA/BERT ``bert_config.json`` -> :class:`NezhaConfig`, with notes on what was assumed or left out."""
    notes: list[str] = []
    missing = [k for k in _REQUIRED_CONFIG_FIELDS if k not in data]
    if missing:
        raise ConfigError(f"{source}: no {', '.join(missing)}; a bert_config.json needs "
                          f"{', '.join(_REQUIRED_CONFIG_FIELDS)}")
    kwargs = {k: data[k] for k in _BERT_CONFIG_FIELDS if k in data}
    if "max_relative_position" not in data:
        notes.append(f"{source}: no max_relative_position; using 64 (the K of the NEZHA paper and releases)")
    if data.get("use_relative_position") is False:
        notes.append(f"{source}: use_relative_position is false: the source model used absolute positions; the "
                     "imported model uses NEZHA's relative positions, so its outputs differ until it is trained")
    unused = sorted(set(data) - set(_BERT_CONFIG_FIELDS) - {"use_relative_position", "model_type", "architectures"})
    if unused:
        notes.append(f"{source}: config keys not used by NEZHA: {', '.join(unused)}")
    try:
        config = NezhaConfig(**kwargs)
        config.validate()
        return config, notes
    except (ConfigError, TypeError) as exc:
        raise ConfigError(f"{source}: {exc}") from None


def config_from_file(path: Path) -> tuple[NezhaConfig, list[str]]:
    """``config.json`` of a transformers directory or a ``bert_config.json``."""
    data = read_json(path, what="model config")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: model config must be a JSON object")
    model_type = data.get("model_type")
    if model_type == "nezha":
        config = NezhaConfig.from_dict(data, source=str(path))
        config.validate(source=str(path))
        return config, []
    if model_type not in (None, "bert"):
        raise ConfigError(f"{path}: model_type is {model_type!r}; only NEZHA (and BERT-layout) checkpoints can be "
                          "imported")
    return translate_bert_config(data, str(path))


# ------------------------------------------------------------------------------------------------- the sources


@dataclass
class Source:
    """An opened checkpoint: tensor names and shapes, a loader, and the files found next to it."""

    path: Path
    format: str
    shapes: dict[str, tuple[int, ...]]
    load: Callable[[str], torch.Tensor]
    config_path: Path | None
    vocab_path: Path | None
    decide: Callable[[str], Decision]
    nbytes: dict[str, int] = field(default_factory=dict)
    extra_skipped: list[SkippedTensor] = field(default_factory=list)


def _first_file(directory: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        if (directory / name).is_file():
            return directory / name
    return None


def open_tf(path: Path) -> Source:
    from nezha_cli.interchange.tf_bundle import TensorBundle, resolve_prefix

    prefix = resolve_prefix(path)
    bundle = TensorBundle(prefix)
    directory = prefix.parent
    return Source(
        path=prefix, format="tf",
        shapes={n: e.shape for n, e in bundle.entries.items()},
        nbytes={n: e.size for n, e in bundle.entries.items()},
        load=bundle.read,
        config_path=_first_file(directory, (BERT_CONFIG_NAME, "config.json")),
        vocab_path=_first_file(directory, (VOCAB_NAME,)),
        decide=tf_decision,
    )


def _unwrap_state_dict(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], list[SkippedTensor]]:
    """A state dict, or a training checkpoint holding one under ``model``/``state_dict``."""
    skipped: list[SkippedTensor] = []
    if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("model", "state_dict", "model_state_dict", "module"):
            if isinstance(obj.get(key), dict):
                skipped = [SkippedTensor(f"<{k}>", [], f"not model weights (top-level key {k!r})")
                           for k in obj if k != key]
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path}: not a PyTorch state dict (expected a mapping of names to tensors)")
    tensors: dict[str, torch.Tensor] = {}
    for name, value in obj.items():
        if isinstance(value, torch.Tensor):
            tensors[str(name)] = value
        else:
            skipped.append(SkippedTensor(str(name), [], f"not a tensor ({type(value).__name__})"))
    return tensors, skipped


def _load_weights_files(files: list[Path]) -> tuple[dict[str, torch.Tensor], list[SkippedTensor]]:
    tensors: dict[str, torch.Tensor] = {}
    skipped: list[SkippedTensor] = []
    for file in files:
        if file.suffix == ".safetensors":
            part, more = load_state_dict(file), []
        else:
            try:
                obj = torch.load(file, map_location="cpu", weights_only=True)
            except FileNotFoundError:
                raise CheckpointError(f"{file}: weights file not found") from None
            except Exception as exc:  # an unsafe pickle or a corrupt file; nothing was executed
                raise CheckpointError(f"{file}: cannot read weights safely ({type(exc).__name__}: "
                                      f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
            part, more = _unwrap_state_dict(obj, file)
        tensors.update(part)
        skipped += more
    return tensors, skipped


def _sharded_files(index: Path) -> list[Path]:
    data = read_json(index, what="shard index")
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index}: no weight_map; not a sharded checkpoint index")
    return [index.parent / name for name in sorted(set(weight_map.values()))]


def _weights_in(directory: Path) -> list[Path]:
    for name in (SAFE_WEIGHTS_NAME, WEIGHTS_NAME):
        if (directory / name).is_file():
            return [directory / name]
    for name in (SAFE_WEIGHTS_NAME + ".index.json", WEIGHTS_NAME + ".index.json"):
        if (directory / name).is_file():
            return _sharded_files(directory / name)
    candidates = sorted(p for p in directory.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".safetensors"))
    if len(candidates) == 1:
        return candidates
    if candidates:
        listed = ", ".join(p.name for p in candidates[:4])
        raise CheckpointError(f"{directory}: {len(candidates)} weight files ({listed}); pass the one to import")
    hint = " (a TensorFlow checkpoint: use --from tf)" if any(directory.glob("*.index")) else ""
    raise CheckpointError(f"{directory}: no {SAFE_WEIGHTS_NAME}, {WEIGHTS_NAME} or other weights file{hint}")


def _in_memory_source(path: Path, fmt: str, files: list[Path], config_path: Path | None,
                      vocab_path: Path | None) -> Source:
    tensors, skipped = _load_weights_files(files)
    return Source(path=path, format=fmt, shapes={n: tuple(t.shape) for n, t in tensors.items()},
                  nbytes={n: t.numel() * t.element_size() for n, t in tensors.items()}, load=tensors.__getitem__,
                  config_path=config_path, vocab_path=vocab_path, decide=torch_decision, extra_skipped=skipped)


def open_pytorch(path: Path) -> Source:
    directory = path if path.is_dir() else path.parent
    files = _weights_in(path) if path.is_dir() else [path]
    return _in_memory_source(path, "pytorch", files, _first_file(directory, (BERT_CONFIG_NAME, "config.json")),
                             _first_file(directory, (VOCAB_NAME,)))


def open_hf(path: Path) -> Source:
    if not path.is_dir():
        raise CheckpointError(f"{path}: --from hf takes a transformers model directory (config.json + weights)")
    config = path / "config.json"
    if not config.is_file():
        raise CheckpointError(f"{path}: no config.json; is this a transformers model directory?")
    return _in_memory_source(path, "hf", _weights_in(path), config, _first_file(path, (VOCAB_NAME,)))


OPENERS: dict[str, Callable[[Path], Source]] = {"tf": open_tf, "pytorch": open_pytorch, "hf": open_hf}


def open_source(path: Path, fmt: str) -> Source:
    if fmt not in IMPORT_FORMATS:
        raise ConfigError(f"unknown checkpoint format {fmt!r}; --from takes one of {', '.join(IMPORT_FORMATS)}")
    path = Path(path)
    if not path.exists() and not (fmt == "tf" and Path(f"{path}.index").exists()):
        if _HUB_NAME.match(str(path)) and not str(path).startswith(("./", "../")):
            raise CheckpointError(f"{path}: not a local path, and nezha never downloads models; fetch it first "
                                  f"(e.g. `huggingface-cli download {path} --local-dir {path.name}`) and import "
                                  "that directory")
        raise CheckpointError(f"{path}: checkpoint not found")
    return OPENERS[fmt](path)


# ----------------------------------------------------------------------------------------------- the import


def infer_architecture(targets: set[str]) -> str:
    """The head that the checkpoint's tensors imply."""
    def has(prefix: str) -> bool:
        return any(t.startswith(prefix) for t in targets)

    if has("qa_outputs."):
        return "NezhaForQuestionAnswering"
    if has("classifier."):
        return "NezhaForSequenceClassification"
    mlm, nsp = has("cls.predictions."), has("cls.seq_relationship.")
    if mlm and nsp:
        return "NezhaForPreTraining"
    if mlm:
        return "NezhaForMaskedLM"
    if nsp:
        return "NezhaForNextSentencePrediction"
    return "NezhaModel"


def _not_in_model_reason(canonical: str, architecture: str) -> str:
    if canonical.startswith(HEAD_PREFIXES):
        return f"head not part of {architecture}"
    if canonical.startswith("nezha.pooler."):
        return f"pooler not part of {architecture}"
    return UNKNOWN_REASON


def _source_shape(shape: tuple[int, ...], transposed: bool) -> list[int]:
    return list(reversed(shape)) if transposed else list(shape)


def _plan(model: torch.nn.Module, decisions: dict[str, Decision], src: Source, report: ImportReport,
          config_name: str) -> dict[str, tuple[str, Decision]]:
    """model parameter -> (source tensor, decision), after checking placement, shapes and completeness."""
    expected = model_state_dict(model)
    architecture = type(model).__name__
    prefix = model.base_model_prefix + "."
    bare = not any(k.startswith(prefix) for k in expected)  # NezhaModel: no "nezha." prefix
    plan: dict[str, tuple[str, Decision]] = {}
    mismatched: list[str] = []
    for name, decision in decisions.items():
        target = decision.target[len(prefix):] if bare and decision.target.startswith(prefix) else decision.target
        shape = src.shapes[name]
        if target not in expected:
            report.skipped.append(SkippedTensor(name, list(shape), _not_in_model_reason(decision.target,
                                                                                        architecture)))
        elif target in plan:
            report.skipped.append(SkippedTensor(name, list(shape), f"duplicate of {plan[target][0]}"))
        elif _source_shape(shape, decision.transposed) != list(expected[target].shape):
            want = _source_shape(tuple(expected[target].shape), decision.transposed)
            mismatched.append(f"{name} has shape {list(shape)} but the config implies {want}")
        else:
            plan[target] = (name, decision)
    if mismatched:
        more = f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
        raise CheckpointError(f"{src.path}: {mismatched[0]}{more}; the checkpoint does not match {config_name}")
    missing = [t for t in expected if t not in plan]
    if missing:
        if src.format == "tf":
            missing = [tf_name(t if t.startswith(("nezha.",) + HEAD_PREFIXES) else prefix + t) for t in missing]
        raise CheckpointError(f"{src.path}: the checkpoint lacks {len(missing)} tensor(s) that {architecture} needs: "
                              f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
    return plan


def _check_vocab(vocab_path: Path | None, config: NezhaConfig, report: ImportReport) -> None:
    if vocab_path is None:
        report.notes.append("no vocab.txt found next to the checkpoint (pass --vocab); the model directory has none")
        return
    from nezha_cli.text.vocab import check_vocab_fits, load_vocab_tokens

    tokens = load_vocab_tokens(vocab_path)
    check_vocab_fits(vocab_path, len(tokens), config.vocab_size, owner="checkpoint",
                     hint="pass the vocab.txt released with the checkpoint")
    report.vocab = f"{vocab_path} ({len(tokens)} tokens)"


def _load(model: torch.nn.Module, plan: dict[str, tuple[str, Decision]], src: Source, report: ImportReport,
          progress=None) -> None:
    expected = model.state_dict()
    state: dict[str, torch.Tensor] = {}
    total = sum(src.nbytes.get(name, 0) for name, _ in plan.values())
    task = progress.add_task("reading tensors", total=total) if progress is not None else None
    for target, (name, decision) in plan.items():
        tensor = src.load(name)
        if decision.transposed:
            tensor = tensor.t()
        state[target] = tensor.to(expected[target].dtype).contiguous()
        report.mapped.append(MappedTensor(name, target, list(src.shapes[name]), decision.transposed))
        if task is not None:
            progress.advance(task, src.nbytes.get(name, 0))
    model.load_state_dict(state, strict=False)
    model.tie_weights()


def _report_tied_decoder(model: torch.nn.Module, names: list[str], src: Source, report: ImportReport) -> None:
    """A written-out MLM decoder weight is NEZHA's tied word embeddings: say whether it agreed with them."""
    for name in names:
        shape = list(src.shapes[name])
        if model.get_output_embeddings() is None:
            report.skipped.append(SkippedTensor(name, shape, f"head not part of {type(model).__name__}"))
            continue
        embeddings = model.get_input_embeddings().weight
        same = shape == list(embeddings.shape) and torch.equal(src.load(name).to(embeddings.dtype),
                                                               embeddings.detach())
        if same:
            report.skipped.append(SkippedTensor(name, shape, "tied to the word embeddings (identical)"))
        else:
            report.skipped.append(SkippedTensor(name, shape, "tied to the word embeddings in NEZHA but different in "
                                                             "this checkpoint; the word embeddings are used"))
            report.notes.append(f"{name} differs from the word embeddings; NEZHA ties them, so the imported MLM "
                                "head uses the word embeddings")


def import_checkpoint(source: Path | str, output_dir: Path | str, fmt: str, *, config_file: Path | None = None,
                      vocab_file: Path | None = None, architecture: str | None = None, overwrite: bool = False,
                      progress=None) -> ImportReport:
    """Convert a released checkpoint into a model directory; see the module docstring. Everything is checked
    before ``output_dir`` is created."""
    output_dir = Path(output_dir)
    if fmt not in IMPORT_FORMATS:
        raise ConfigError(f"unknown checkpoint format {fmt!r}; --from takes one of {', '.join(IMPORT_FORMATS)}")
    if architecture is not None and architecture not in MODEL_CLASSES:
        raise ConfigError(f"unknown architecture {architecture!r}; choose one of {', '.join(MODEL_CLASSES)}")
    check_output_path(output_dir, overwrite, inputs=[source, config_file, vocab_file])
    src = open_source(Path(source), fmt)
    report = ImportReport(source=str(src.path), format=fmt, skipped=list(src.extra_skipped))
    config_path = Path(config_file) if config_file is not None else src.config_path
    if config_path is None:
        raise ConfigError(f"{src.path}: no {BERT_CONFIG_NAME} or config.json next to the checkpoint; pass --config")
    config, notes = config_from_file(config_path)
    report.notes += notes

    decisions: dict[str, Decision] = {}
    for name in src.shapes:
        decision = src.decide(name)
        if decision.target is None:
            report.skipped.append(SkippedTensor(name, list(src.shapes[name]), decision.reason or UNKNOWN_REASON))
        else:
            decisions[name] = decision
    tied_decoder = [n for n, d in decisions.items() if d.target == "cls.predictions.decoder.weight"]
    for name in tied_decoder:
        del decisions[name]
    if architecture is None:
        named = config.architectures[0] if fmt == "hf" and config.architectures else None
        architecture = named if named in MODEL_CLASSES else infer_architecture({d.target for d in decisions.values()})
    report.architecture = architecture
    classifier = next((src.shapes[n] for n, d in decisions.items() if d.target == "classifier.weight"), None)
    if classifier is not None and not config.has_label_names and architecture in ("NezhaForSequenceClassification",
                                                                                "NezhaForTokenClassification"):
        config = config.replace(num_labels=int(classifier[0]))
    model = MODEL_CLASSES[architecture](config)

    plan = _plan(model, decisions, src, report, config_path.name)
    vocab_path = Path(vocab_file) if vocab_file is not None else src.vocab_path
    _check_vocab(vocab_path, config, report)
    _load(model, plan, src, report, progress)
    _report_tied_decoder(model, tied_decoder, src, report)
    unknown = [s.source for s in report.skipped if s.reason == UNKNOWN_REASON]
    if unknown:
        report.notes.append(f"{len(unknown)} tensor(s) are not NEZHA parameters and were skipped: "
                            f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")

    report.output_dir = str(output_dir)
    with atomic_output_dir(output_dir, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, metadata={"source": f"nezha import --from {fmt}"})
        if vocab_path is not None:
            shutil.copyfile(vocab_path, tmp / VOCAB_NAME)
        write_json(tmp / REPORT_NAME, report.to_dict())
    for note in report.notes:
        logger.warning("%s", note)
    return report
