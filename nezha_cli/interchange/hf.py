"""``nezha export --format hf``: a transformers model directory with tokenizer files and a model card.

The weights and ``config.json`` are already in transformers' layout (same class, parameter and config names), so
``NezhaForX.from_pretrained(OUT)`` works in transformers' Nezha classes and here, and ``BertTokenizer`` /
``AutoTokenizer`` load ``vocab.txt`` with ``tokenizer_config.json``. ``--bin`` adds ``pytorch_model.bin`` (tensors
only) for transformers releases that predate safetensors. The card (``README.md``) says what made the model and,
when found, its recipe and metrics.
"""

from __future__ import annotations

import datetime
import json
import logging
from pathlib import Path
from typing import Any

import torch
import yaml

from nezha_cli import __version__
from nezha_cli.engine.checkpoints import STATE_NAME, checkpoint_candidates
from nezha_cli.errors import CheckpointError, DataError
from nezha_cli.interchange.base import ExportReport, check_vocab, copy_vocab, load_for_export, write_report
from nezha_cli.io import atomic_output_dir, check_output_path, read_json
from nezha_cli.modeling import NezhaPreTrainedModel
from nezha_cli.modeling.checkpoint import WEIGHTS_NAME, model_state_dict
from nezha_cli.text.vocab import VOCAB_NAME

logger = logging.getLogger(__name__)

CARD_NAME = "README.md"
RECIPE_NAMES = ("recipe.yaml",)
# Where `nezha finetune`/`pretrain` leave results, relative to the model directory (usually OUT/final).
METRICS_FILES = (("eval_results.json", "evaluation"), ("../test_results.json", "test split"))
METRICS_LOG = "../metrics.jsonl"

# transformers' Auto classes find Nezha through config.json's model_type, whichever module the classes live in.
AUTO_CLASSES = {
    "NezhaModel": "AutoModel", "NezhaForPreTraining": "AutoModelForPreTraining",
    "NezhaForMaskedLM": "AutoModelForMaskedLM", "NezhaForNextSentencePrediction": "AutoModelForNextSentencePrediction",
    "NezhaForSequenceClassification": "AutoModelForSequenceClassification",
    "NezhaForMultipleChoice": "AutoModelForMultipleChoice",
    "NezhaForTokenClassification": "AutoModelForTokenClassification",
    "NezhaForQuestionAnswering": "AutoModelForQuestionAnswering",
}
PIPELINE_TAGS = {
    "NezhaModel": "feature-extraction", "NezhaForPreTraining": "fill-mask", "NezhaForMaskedLM": "fill-mask",
    "NezhaForSequenceClassification": "text-classification", "NezhaForTokenClassification": "token-classification",
    "NezhaForQuestionAnswering": "question-answering", "NezhaForMultipleChoice": "multiple-choice",
    "NezhaForNextSentencePrediction": "text-classification",
}


def tokenizer_files(model: NezhaPreTrainedModel) -> dict[str, dict[str, Any]]:
    special = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
               "mask_token": "[MASK]"}
    config = {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "tokenize_chinese_chars": True,
              "strip_accents": None, "model_max_length": model.config.max_position_embeddings, **special}
    return {"tokenizer_config.json": config, "special_tokens_map.json": special}


# ------------------------------------------------------------------------------------------------ the card


def _numbers(data: Any) -> dict[str, float]:
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def evaluation_record(log: Path, step: int | None = None) -> tuple[Any, dict[str, float]] | None:
    """(step, scores) of the record with ``eval_*`` keys of a ``metrics.jsonl`` at ``step``, else of the last one;
    None when there is none. ``step`` and ``epoch`` are not scores and are left out."""
    chosen = None
    for line in Path(log).read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and any(k.startswith("eval_") for k in record):
            if step is None or record.get("step") == step:
                chosen = (record.get("step", "?"),
                          {k: v for k, v in _numbers(record).items() if k not in ("step", "epoch")})
    return chosen


def read_metrics_file(path: Path) -> dict[str, float]:
    """Numbers of a metrics JSON object, or of the last evaluation in a ``metrics.jsonl``."""
    path = Path(path)
    if path.suffix == ".jsonl":
        record = evaluation_record(path)
        return record[1] if record else {}
    numbers = _numbers(read_json(path, what="metrics file"))
    if not numbers:
        raise DataError(f"{path}: no numeric metrics (expected a JSON object such as {{\"accuracy\": 0.95}})")
    return numbers


def find_metrics(model_dir: Path, metrics: Path | None) -> list[tuple[str, dict[str, float]]]:
    if metrics is not None:
        return [(Path(metrics).name, read_metrics_file(metrics))]
    found = []
    for relative, label in METRICS_FILES:
        path = model_dir / relative
        if path.is_file():
            try:
                found.append((label, read_metrics_file(path)))
            except DataError:
                continue
    log = model_dir / METRICS_LOG
    if log.is_file():
        best = _best_step(model_dir)
        record = evaluation_record(log, best) if best is not None else None
        which = "best evaluation during training, the one this model was kept from"
        if record is None:
            record = evaluation_record(log)
            which = "last evaluation during training"
        if record is not None and record[1]:
            found.append((f"{which} (step {record[0]})", record[1]))
    return found


def _best_step(model_dir: Path) -> int | None:
    """The step of the evaluation that OUT/final was kept from, from the run's newest trainer state."""
    checkpoint = next((c for c in checkpoint_candidates(model_dir.parent) if (c / STATE_NAME).is_file()), None)
    if checkpoint is None:
        return None
    try:
        step = json.loads((checkpoint / STATE_NAME).read_text(encoding="utf-8")).get("best_step")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    return step if isinstance(step, int) else None


def find_recipe(model_dir: Path) -> str | None:
    for directory in (model_dir, model_dir.parent):
        for name in RECIPE_NAMES:
            if (directory / name).is_file():
                return (directory / name).read_text(encoding="utf-8")
    return None


def model_card(model: NezhaPreTrainedModel, model_dir: Path, name: str,
               metrics: list[tuple[str, dict[str, float]]], recipe: str | None) -> str:
    config = model.config
    architecture = type(model).__name__
    front = {"language": ["zh"], "library_name": "transformers", "tags": ["nezha", "nezha-cli"],
             "pipeline_tag": PIPELINE_TAGS.get(architecture, "feature-extraction")}
    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip(), "---", "", f"# {name}", ""]
    task = config.finetuning_task
    made = (f"NEZHA ({architecture}) exported by nezha-cli {__version__} from `{model_dir}` on "
            f"{datetime.date.today().isoformat()}")
    lines += [made + (f", fine-tuned on `{task}`." if task else "."), ""]
    lines += ["NEZHA is BERT with functional relative positional encoding (Wei et al., 2019, "
              "[arXiv:1909.00204](https://arxiv.org/abs/1909.00204)): no absolute position embeddings.", ""]
    lines += ["## Model", "", "| layers | hidden | heads | intermediate | K (max_relative_position) | vocab | "
              "parameters |", "|---|---|---|---|---|---|---|",
              f"| {config.num_hidden_layers} | {config.hidden_size} | {config.num_attention_heads} | "
              f"{config.intermediate_size} | {config.max_relative_position} | {config.vocab_size} | "
              f"{model.num_parameters():,} |", ""]
    if config.id2label is not None:
        lines += [f"Labels: {', '.join(config.labels)}", ""]
    lines += ["## Recipe", ""]
    if recipe:
        lines += ["```yaml", recipe.strip(), "```", ""]
    else:
        lines += ["Not recorded in the model directory.", ""]
    lines += ["## Metrics", ""]
    if metrics:
        for label, values in metrics:
            lines += [f"{label}:", "", "| metric | value |", "|---|---|"]
            lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in values.items()]
            lines.append("")
    else:
        lines += ["None found (pass `--metrics FILE` to `nezha export`).", ""]
    auto = AUTO_CLASSES.get(architecture, "AutoModel")
    lines += ["## Use", "", "```python", f"from transformers import AutoTokenizer, {auto}  # transformers < 5", "",
              'tokenizer = AutoTokenizer.from_pretrained("path/to/this/directory")',
              f'model = {auto}.from_pretrained("path/to/this/directory")  # {architecture}', "```", "",
              "transformers 5 has no Nezha: with nezha-cli installed, `from nezha_cli.modeling.transformers_classes "
              "import register; register()` first. Or with nezha-cli alone: "
              "`nezha_cli.modeling.load_model(\"path/to/this/directory\")`.", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- the export


def export_hf(model_dir: Path | str, output_dir: Path | str, *, metrics: Path | None = None,
              vocab: Path | None = None, write_bin: bool = False, overwrite: bool = False,
              progress=None) -> ExportReport:
    model_dir, output_dir = Path(model_dir), Path(output_dir)
    check_output_path(output_dir, overwrite, inputs=[model_dir, vocab, metrics])
    model = load_for_export(model_dir, word_feature_input=False)
    check_vocab(model_dir, vocab, model)
    if vocab is None and not (model_dir / VOCAB_NAME).is_file():
        raise CheckpointError(f"{model_dir}: no vocab.txt; pass --vocab with the vocab the model was trained with "
                              "(a transformers directory needs it for its tokenizer)")
    found_metrics = find_metrics(model_dir, metrics)
    recipe = find_recipe(model_dir)
    task = progress.add_task("export hf", total=1) if progress is not None else None
    report = ExportReport(format="hf", model_dir=str(model_dir), output_dir=str(output_dir),
                          architecture=type(model).__name__)
    with atomic_output_dir(output_dir, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, metadata={"source": "nezha export --format hf"})
        if write_bin:
            torch.save(model_state_dict(model), tmp / WEIGHTS_NAME)
        copy_vocab(model_dir, tmp, vocab)
        for name, content in tokenizer_files(model).items():
            (tmp / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (tmp / CARD_NAME).write_text(model_card(model, model_dir, output_dir.name, found_metrics, recipe),
                                     encoding="utf-8")
        report.details = {"metrics": dict(found_metrics), "recipe_found": recipe is not None}
        write_report(tmp, report)
        if task is not None:
            progress.advance(task)
    return report
