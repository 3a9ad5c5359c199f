"""What every export format shares: loading the model strictly, the files written beside it, and the report."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nezha_cli.errors import CheckpointError
from nezha_cli.io import write_json
from nezha_cli.modeling import NezhaPreTrainedModel, load_model
from nezha_cli.modeling.configuration import CONFIG_NAME
from nezha_cli.modeling.crf import model_crf
from nezha_cli.text.vocab import VOCAB_NAME

logger = logging.getLogger(__name__)

REPORT_NAME = "export_report.json"
CRF_NAME = "crf.json"


@dataclass
class ExportReport:
    """What was written and how the exported artifacts compare with PyTorch (``OUT/export_report.json``)."""

    format: str
    model_dir: str
    output_dir: str
    architecture: str
    files: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    parity: list[Any] = field(default_factory=list)  # program.Parity
    tolerance: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["parity"] = [p.to_dict() for p in self.parity]
        return data


def load_for_export(model_dir: Path | str, crf_file: bool = False,
                    word_feature_input: bool = True) -> NezhaPreTrainedModel:
    """The model of ``model_dir``; anything that would be exported at random initial values is an error.

    A tagger with a CRF (``nezha finetune --crf``) decodes outside its network; ``crf_file``: the format writes
    :data:`CRF_NAME` beside it, else such a model is refused. A tagger with word features (``--word-features``)
    takes a further input; ``word_feature_input``: the format's graph has one, else such a model is refused."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise CheckpointError(f"{model_dir}: model directory not found")
    if not (model_dir / CONFIG_NAME).is_file():
        raise CheckpointError(f"{model_dir}: no {CONFIG_NAME}; is this a model directory? (released checkpoints: "
                              "convert them with `nezha import` first)")
    model, report = load_model(model_dir, output_loading_info=True, ignore_mismatched_sizes=True)
    problems = report.missing + [m[0] for m in report.mismatched] + report.newly_initialized
    if problems:
        raise CheckpointError(f"{model_dir}: the weights do not fit the config ({len(problems)} tensor(s) missing or "
                              f"mis-shaped: {', '.join(problems[:3])}{' ...' if len(problems) > 3 else ''})")
    if model_crf(model) is not None and not crf_file:
        raise CheckpointError(f"{model_dir}: a tagger with a CRF (fine-tuned with --crf), which this format cannot "
                              "carry (it would tag without the CRF); export it with --format onnx (the CRF's "
                              f"transitions go to {CRF_NAME}) or use `nezha evaluate` with this directory")
    if model.config.word_features is not None and not word_feature_input:
        raise CheckpointError(f"{model_dir}: a tagger with word features ({model.config.word_features}, fine-tuned "
                              "with --word-features), an input that transformers' Nezha classes do not take; "
                              "export it with --format onnx or torch-export (input word_feature_ids)")
    return model.eval()


def word_features_note(model: NezhaPreTrainedModel) -> str | None:
    """How to compute the ``word_feature_ids`` input of a tagger with word features, for the export report."""
    scheme = model.config.word_features
    if scheme is None:
        return None
    from nezha_cli.text.word_features import JIEBA_VERSION_KEY

    trained_with = getattr(model.config, JIEBA_VERSION_KEY, "unknown")
    return (f"input word_feature_ids: one id per token, from nezha_cli.text.word_features.WordFeaturizer"
            f"({scheme!r}) over the sentence's characters (a token takes its first character's id; 0 for [CLS], "
            f"[SEP] and padding); fine-tuned with jieba {trained_with}")


def write_crf(model: NezhaPreTrainedModel, directory: Path) -> str | None:
    """:data:`CRF_NAME` for a tagger with a CRF: its label names and transition scores, what Viterbi decoding
    of the exported emission scores needs; None for other models."""
    crf = model_crf(model)
    if crf is None:
        return None
    scores = crf.numpy_transitions()
    write_json(Path(directory) / CRF_NAME, {
        "labels": model.config.labels, "start_transitions": scores.start.tolist(),
        "transitions": scores.transitions.tolist(), "end_transitions": scores.end.tolist()})
    return (f"{CRF_NAME}: the CRF of this tagger; the graph's logits are its emission scores, to decode with "
            "Viterbi under these transitions (transitions[i][j]: tag i then tag j), as "
            "nezha_cli.tasks.token_classification.decode_tags does")


def check_vocab(model_dir: Path, vocab: Path | None, model: NezhaPreTrainedModel) -> None:
    """Fail before the export on a vocab the exported model cannot use: unreadable, without BERT's special tokens,
    or with ids past the model's embeddings (a tokenizer that produces them crashes the model)."""
    from nezha_cli.text.vocab import Vocab, check_vocab_fits

    source = Path(vocab) if vocab is not None else Path(model_dir) / VOCAB_NAME
    if vocab is None and not source.is_file():
        return
    check_vocab_fits(source, len(Vocab.from_file(source)), model.config.vocab_size)


def copy_vocab(model_dir: Path, destination: Path, vocab: Path | None = None) -> Path | None:
    """Copy ``vocab`` (or the model directory's vocab.txt) next to the export; None when there is none."""
    source = Path(vocab) if vocab is not None else Path(model_dir) / VOCAB_NAME
    if not source.is_file():
        if vocab is not None:
            raise CheckpointError(f"{vocab}: vocab file not found")
        return None
    shutil.copyfile(source, Path(destination) / VOCAB_NAME)
    return source


def finish_program_export(model: NezhaPreTrainedModel, model_dir: Path, directory: Path, vocab: Path | None,
                          report: ExportReport) -> None:
    """What an exported program (ONNX, torch.export) has beside it: config.json, the CRF's transitions, the vocab,
    notes on inputs to compute, and the report (written last: it lists the files)."""
    model.config.save_pretrained(directory)
    for note in (write_crf(model, directory), word_features_note(model)):
        if note is not None:
            report.notes.append(note)
    if copy_vocab(Path(model_dir), directory, vocab) is None:
        report.notes.append(f"{model_dir} has no vocab.txt; tokenize inputs with the model's vocab")
    write_report(directory, report)


def write_report(directory: Path, report: ExportReport) -> None:
    report.files = sorted(p.name for p in Path(directory).iterdir()) + [REPORT_NAME]
    write_json(Path(directory) / REPORT_NAME, report.to_dict())
