"""``nezha pretrain`` as a library call: recipe + data -> a pretrained NEZHA in OUT/final/.

MLM + NSP with :class:`~nezha_cli.modeling.NezhaForPreTraining`, scoring the vocabulary only at the masked
positions (as NVIDIA's BERT does), on the shared :class:`~nezha_cli.engine.Trainer`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from nezha_cli.engine.pretraining_data import (
    VOCAB_NAME,
    PretrainingData,
    StaticPretrainingCollate,
    check_model_vocab,
    load_pretraining_data,
)
from nezha_cli.engine.recipes import Recipe
from nezha_cli.engine.trainer import StepOutput, Trainer, TrainResult, check_output_dir
from nezha_cli.errors import DataError
from nezha_cli.modeling import NezhaConfig, NezhaForPreTraining

logger = logging.getLogger(__name__)


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
    return StepOutput(
        loss=out.loss,
        metrics={"mlm_loss": out.mlm_loss.detach(), "nsp_loss": out.nsp_loss.detach(), "mlm_acc": mlm_acc,
                 "nsp_acc": nsp_acc},
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
    }


def mlm_evaluator(dataset, collate_fn: Callable, batch_size: int | None = None) -> Callable[[Trainer], dict]:
    """Held-out MLM accuracy and perplexity (exp of the mean loss per masked token), and NSP accuracy."""

    def evaluate(trainer: Trainer) -> dict[str, float]:
        loss = correct = count = nsp = examples = 0
        for out in trainer.predict(dataset, collate_fn, _eval_outputs, batch_size=batch_size):
            loss += float(out["mlm_loss_sum"].double().sum())
            correct += int(out["mlm_correct"].sum())
            count += int(out["mlm_count"].sum())
            nsp += int(out["nsp_correct"].sum())
            examples += out["nsp_correct"].numel()
        mean = loss / max(count, 1)
        return {"mlm_loss": mean, "mlm_acc": correct / max(count, 1), "perplexity": math.exp(min(mean, 700.0)),
                "nsp_acc": nsp / max(examples, 1)}

    return evaluate


def make_collator(data: PretrainingData, seed: int, pad_token_id: int = 0) -> Callable:
    """The batching for ``data``: padding of static masks, or masking anew each epoch for dynamic data."""
    if not data.dynamic:
        return StaticPretrainingCollate(pad_token_id)
    try:
        from nezha_cli.pretraining.collator import PretrainingCollator
    except ImportError:
        raise DataError(f"{data.directory}: dynamic masking needs nezha_cli.pretraining.collator, which this "
                        "installation lacks; write static masks with `nezha mask` (without --dynamic)") from None
    return PretrainingCollator.from_manifest(data.directory, seed=seed)


def save_with_vocab(vocab_path: Path) -> Callable[[torch.nn.Module, Path], None]:
    def save(model: torch.nn.Module, directory: Path) -> None:
        model.save_pretrained(directory)
        shutil.copyfile(vocab_path, directory / VOCAB_NAME)

    return save


def pretrain(recipe: Recipe, output_dir: Path, data: Path | None = None, *, init_from: Path | None = None,
             max_steps: int | None = None, save_steps: int | None = None, seed: int | None = None,
             mixed_precision: str | None = None, resume: bool = False, overwrite: bool = False,
             progress: bool = True, cache_dir: Path | None = None) -> TrainResult:
    """Pretrain per ``recipe`` on ``data`` (a `nezha mask` output, or a raw text corpus file; None: the embedded
    default corpus) and write ``output_dir``: checkpoints/, metrics.jsonl and final/."""
    from accelerate.utils import set_seed

    options = recipe.data_options()
    fixed: dict = {"resume": resume, "overwrite": overwrite, "progress": progress}
    for key, value in (("max_steps", max_steps), ("save_steps", save_steps), ("seed", seed),
                       ("mixed_precision", mixed_precision)):
        if value is not None:
            fixed[key] = value
    if max_steps is not None:
        fixed["num_epochs"] = None
    args = recipe.training_arguments(Path(output_dir), **fixed)
    check_output_dir(args)  # before any data preparation, which can take a while

    data_dir = resolve_data(data, options, seed=args.seed, cache_dir=cache_dir)
    pdata = load_pretraining_data(data_dir, options.eval_examples)
    set_seed(args.seed)
    if init_from is not None:
        config = NezhaConfig.from_pretrained(init_from)
        check_model_vocab(pdata, init_from, config.vocab_size)
        model = NezhaForPreTraining.from_pretrained(init_from, config=config)
        logger.info("continuing pretraining from %s (the recipe's model section is not used)", init_from)
    else:
        model = NezhaForPreTraining(recipe.model_config(vocab_size=pdata.vocab_size))
    logger.info("model: %s parameters; %d training instances%s", f"{model.num_parameters():,}", len(pdata.train),
                f", {len(pdata.eval)} held out" if pdata.eval is not None else "")

    collate = make_collator(pdata, args.seed, model.config.pad_token_id)
    evaluate = None
    if pdata.eval is not None and len(pdata.eval):
        evaluate = mlm_evaluator(pdata.eval, collate, options.eval_batch_size)
    else:
        args = dataclasses.replace(args, eval_steps=None, eval_each_epoch=False, metric_for_best_model=None)
    trainer = Trainer(model, args, pdata.train, collate, pretraining_step, evaluate=evaluate,
                      save_model=save_with_vocab(pdata.vocab_path))
    return trainer.train()


def resolve_data(data: Path | None, options, seed: int, cache_dir: Path | None = None) -> Path:
    """A `nezha mask` output directory for ``data``: itself, or prepared (and cached) from a raw corpus."""
    if data is not None and Path(data).is_dir():
        return Path(data)
    from nezha_cli.engine.corpus import prepare_corpus, prepare_default_corpus

    if data is None:
        return prepare_default_corpus(options, seed=seed, cache_dir=cache_dir)
    if not Path(data).exists():
        raise DataError(f"{data}: --data not found")
    return prepare_corpus([Path(data)], options, seed=seed, cache_dir=cache_dir)
