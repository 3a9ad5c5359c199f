"""Fine-tuning a model directory on a task with the shared training engine (``nezha_cli.engine``).

Everything that can fail on the user's input (files, columns, labels, model directory, output directory) is
checked before the engine creates anything in OUT, so bad input leaves no partial output. The engine then trains
with evaluation on the dev split after every epoch and keeps the best model (by the task's main metric) as
``OUT/final/``: a model directory with its head, the label names in ``config.json`` and ``vocab.txt``. The run's
settings go to ``OUT/finetune.yaml`` (and ``OUT/final/``), against which ``--resume`` checks the command's
(:mod:`~nezha_cli.tasks.finetune_settings`).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nezha_cli.errors import CheckpointError, ConfigError, DataError
from nezha_cli.io import check_not_replacing, write_json
from nezha_cli.modeling.crf import model_crf
from nezha_cli.tasks.base import Task
from nezha_cli.tasks.evaluate import MIXED_PRECISION_KEY, EvalFeatures, evaluate_examples, evaluate_features
from nezha_cli.tasks.finetune_settings import (
    SETTINGS_NAME,
    check_resume_settings,
    file_fingerprint,
    model_fingerprint,
    settings_text,
)
from nezha_cli.tasks.inference import forward_outputs, numeric_metrics
from nezha_cli.tasks.tokenization import load_tokenizer
from nezha_cli.text.vocab import VOCAB_NAME, check_vocab_fits

logger = logging.getLogger(__name__)

TEST_RESULTS = "test_results.json"
# A CRF's transitions start at zero and must reach scores of a few units within the run's steps (a few hundred
# with the paper's settings), so they learn at a fixed rate far above the body's 3e-5 (BERT-CRF practice).
CRF_LEARNING_RATE = 1e-2


@dataclass
class DataFiles:
    train: tuple[Path, ...]  # one or more files, read as one training set
    dev: Path | None = None
    test: Path | None = None

    @property
    def train_name(self) -> str:
        """The training file(s), for messages."""
        return " + ".join(str(path) for path in self.train)

    @classmethod
    def resolve(cls, task: Task, data_dir: Path | None, train: Path | Sequence[Path] | None = None,
                dev: Path | None = None, test: Path | None = None) -> DataFiles:
        """Explicit files win; the rest are looked up in ``data_dir`` by the task's usual names."""
        if data_dir is None and not train:
            names = ", ".join(names[0] for names in task.split_files.values())
            source = f" {task.data_source}" if task.data_source else ""
            raise ConfigError(f"task {task.name} needs data: give --data-dir (a directory with {names}) or "
                              f"--train-file.{source}")
        if not train:
            train = task.split_file(data_dir, "train")
        train = (train,) if isinstance(train, (str, Path)) else tuple(train)
        for split, given in (("dev", dev), ("test", test)):
            if given is None and data_dir is not None:
                try:
                    given = task.split_file(data_dir, split)
                except DataError:
                    given = None
            if split == "dev":
                dev = given
            else:
                test = given
        for path in (*train, dev, test):
            if path is not None and not Path(path).is_file():
                raise DataError(f"{path}: file not found")
        return cls(tuple(Path(path) for path in train), Path(dev) if dev else None, Path(test) if test else None)


@dataclass
class FinetuneOptions:
    """What ``nezha finetune`` can change; None means the task's default (the paper's Table 3)."""

    epochs: float | None = None
    max_steps: int | None = None
    learning_rate: float | None = None
    batch_size: int | None = None
    per_device_batch_size: int | None = None
    max_seq_length: int | None = None
    warmup_ratio: float | None = None
    weight_decay: float | None = None
    optimizer: str = "adamw"
    seed: int = 42
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = False  # TrainingArguments.gradient_checkpointing
    compile: bool = False  # TrainingArguments.compile
    attention: str | None = None  # TrainingArguments.attention
    logging_steps: int = 10
    save_steps: int | None = None
    save_total_limit: int = 2
    resume: bool = False
    overwrite: bool = False
    from_scratch: bool = False
    crf: bool = False  # a CRF over the tags (token-classification tasks)
    crf_learning_rate: float | None = None  # None: CRF_LEARNING_RATE
    word_features: str | None = None  # a scheme of nezha_cli.text.word_features (token-classification tasks)
    vocab: Path | None = None
    eval_batch_size: int = 64
    group_by_length: bool = False
    progress: bool = True


@dataclass
class FinetuneResult:
    output_dir: Path
    final_dir: Path
    best_metric: float | None
    main_metric: str
    global_step: int
    dev_metrics: list[dict[str, Any]]
    test_metrics: dict[str, Any] | None
    # False in the other processes of a multi-process run (which should not print the same result again).
    main_process: bool = True


def crf_overrides(task: Task, crf: bool) -> dict[str, Any]:
    """The config field that adds a CRF to the task's head, or nothing; only tagging tasks have one."""
    if not crf:
        return {}
    if task.model_class_name != "NezhaForTokenClassification":
        raise ConfigError(f"--crf: task {task.name} has no tags to chain; a CRF is for tagging tasks (pd-ner, ner)")
    return {"use_crf": True}


def word_feature_overrides(task: Task, scheme: str | None) -> dict[str, Any]:
    """The config field that gives the task's tagger word feature embeddings, or nothing."""
    if scheme is None:
        return {}
    from nezha_cli.text.word_features import check_scheme

    check_scheme(scheme)
    if task.model_class_name != "NezhaForTokenClassification":
        raise ConfigError(f"--word-features: task {task.name} is not a tagging task; word features are for "
                          "character taggers (pd-ner, ner)")
    return {"word_features": scheme}


def load_task_model(task: Task, model_dir: Path, labels: list[str], from_scratch: bool = False, seed: int = 42,
                    crf: bool = False, word_features: str | None = None):
    """The task's model class on the body in ``model_dir`` (head sized for ``labels``, with a CRF over the tags
    when ``crf``, word feature embeddings with ``word_features``), or randomly initialised.

    The new weights (the head; everything with ``from_scratch``) are drawn from ``seed``, not from whatever state
    the global RNG is in, so that a run is reproducible and ``--resume`` continues the same run.
    """
    from nezha_cli.modeling import MODEL_CLASSES, NezhaConfig

    model_dir = Path(model_dir)
    cls = MODEL_CLASSES[task.model_class_name]
    overrides = {**task.model_overrides(labels), **crf_overrides(task, crf),
                 **word_feature_overrides(task, word_features)}
    torch.manual_seed(seed)
    if from_scratch:
        config = NezhaConfig.from_pretrained(model_dir).replace(**overrides)
        config.validate(source=str(model_dir / "config.json"))
        return cls(config)
    return cls.from_pretrained(model_dir, ignore_mismatched_sizes=True, **overrides)


def run_settings(task: Task, model_dir: Path, files: DataFiles,
                 options: FinetuneOptions) -> tuple[dict[str, Any], dict[str, Any]]:
    """The run's settings for OUT/finetune.yaml, as the run uses them (the task's defaults applied, ``auto``
    precision resolved): those that decide the result, and the others (see :mod:`~nezha_cli.tasks.finetune_settings`).
    """
    from nezha_cli.engine.precision import cuda_supports_bf16, current_device_type, resolve_mixed_precision

    defaults = task.defaults
    columns = {name: value for name, value in sorted(vars(task).items()) if name.endswith("_column")}
    result = {
        "task": {"name": task.name, **columns},
        "model": model_fingerprint(model_dir),
        "from_scratch": options.from_scratch,
        "vocab": file_fingerprint(options.vocab) if options.vocab else None,
        "train_files": [file_fingerprint(path) for path in files.train],
        "validation_file": file_fingerprint(files.dev) if files.dev else None,
        "test_file": file_fingerprint(files.test) if files.test else None,
        "seed": options.seed,
        "batch_size": options.batch_size or defaults.batch_size,
        "per_device_batch_size": options.per_device_batch_size,
        "learning_rate": options.learning_rate or defaults.learning_rate,
        "crf_learning_rate": (options.crf_learning_rate or CRF_LEARNING_RATE) if options.crf else None,
        # The schedule's length: max_steps when given, else epochs (which the engine then ignores).
        "max_steps": options.max_steps,
        "epochs": None if options.max_steps else (options.epochs if options.epochs is not None else defaults.epochs),
        "max_seq_length": options.max_seq_length or defaults.max_seq_length,
        "warmup_ratio": options.warmup_ratio if options.warmup_ratio is not None else defaults.warmup_ratio,
        "weight_decay": options.weight_decay if options.weight_decay is not None else defaults.weight_decay,
        "optimizer": options.optimizer,
        "mixed_precision": resolve_mixed_precision(options.mixed_precision, current_device_type(),
                                                   cuda_supports_bf16()),
        "crf": options.crf,
        "word_features": options.word_features,
        "group_by_length": options.group_by_length,
    }
    other = {"gradient_checkpointing": options.gradient_checkpointing, "compile": options.compile,
             "attention": options.attention,
             "logging_steps": options.logging_steps, "save_steps": options.save_steps,
             "save_total_limit": options.save_total_limit, "eval_batch_size": options.eval_batch_size}
    return result, other


def finetune(task: Task, model_dir: Path, output_dir: Path, files: DataFiles,
             options: FinetuneOptions | None = None) -> FinetuneResult:
    from nezha_cli.engine import StepOutput, Trainer, TrainingArguments
    from nezha_cli.engine.checkpoints import checkpoint_candidates
    from nezha_cli.engine.trainer import check_run_output

    options = options or FinetuneOptions()
    output_dir, model_dir = Path(output_dir), Path(model_dir)
    defaults = task.defaults
    max_seq_length = options.max_seq_length or defaults.max_seq_length
    batch_size = options.batch_size or defaults.batch_size
    check_run_output(output_dir, options.resume, options.overwrite)
    check_not_replacing(output_dir, [model_dir, *files.train, files.dev, files.test, options.vocab])
    crf_overrides(task, options.crf)  # before the data is read
    feature_options = word_feature_overrides(task, options.word_features)
    if not model_dir.is_dir():
        raise CheckpointError(f"{model_dir}: model directory not found")
    result_settings, other_settings = run_settings(task, model_dir, files, options)
    if options.resume and checkpoint_candidates(output_dir):
        check_resume_settings(output_dir, result_settings)
    settings = settings_text(result_settings, other_settings)

    # -- data: read and check everything before OUT is touched ------------------------------------------------
    train_examples = [example for path in files.train for example in task.read(path)]
    labels = task.labels(train_examples)
    if task.label_list is None and len(labels) < 2 and task.model_class_name != "NezhaForTokenClassification":
        raise DataError(f"{files.train_name}: only one label ({', '.join(labels)}); classification needs at least two")
    dev_examples = task.read(files.dev, labels=labels) if files.dev else None
    if dev_examples is None:
        logger.warning("no dev file: nothing is evaluated during training and OUT/final is the last epoch "
                       "(give --validation-file, or a dev file in --data-dir)")
    test_examples = task.read(files.test, labels=labels, require_labels=False) if files.test else None
    vocab = options.vocab or model_dir / VOCAB_NAME
    tokenizer = load_tokenizer(model_dir, options.vocab)
    label2id = {name: i for i, name in enumerate(labels)}
    train_features = task.build_features(train_examples, tokenizer, max_seq_length, label2id, training=True,
                                         **feature_options)
    if len(train_features) < batch_size:
        raise DataError(f"{files.train_name}: {len(train_features)} training features, fewer than one batch of "
                        f"{batch_size}; use more data or a smaller --batch-size")
    # Built as `nezha evaluate` builds them (EvalFeatures), from the same max_seq_length and word features.
    dev = (EvalFeatures.build(task, dev_examples, tokenizer, max_seq_length, labels, options.word_features)
           if dev_examples else None)
    model = load_task_model(task, model_dir, labels, options.from_scratch, options.seed, options.crf,
                            options.word_features)
    check_vocab_fits(vocab, len(tokenizer.vocab), model.config.vocab_size,
                     hint="use the vocab the model was pretrained with")
    # Recorded so that `nezha evaluate` feeds the model inputs like those it was trained on.
    model.config.update({"finetuning_task": task.name, "finetuning_max_seq_length": max_seq_length})
    if options.word_features is not None:
        from nezha_cli.text.word_features import JIEBA_VERSION_KEY, jieba_version

        setattr(model.config, JIEBA_VERSION_KEY, jieba_version())
    logger.info("%s: %d training examples (%d features), %d dev examples; labels: %s", task.name,
                len(train_examples), len(train_features), len(dev_examples or ()), ", ".join(labels) or "(spans)")

    # -- the engine -------------------------------------------------------------------------------------------
    steps_per_epoch = len(train_features) // batch_size
    epochs = options.epochs if options.epochs is not None else defaults.epochs
    args = TrainingArguments(
        output_dir=output_dir,
        global_batch_size=batch_size,
        per_device_batch_size=options.per_device_batch_size,
        max_steps=options.max_steps,
        num_epochs=None if options.max_steps else epochs,
        optimizer=options.optimizer,
        learning_rate=options.learning_rate or defaults.learning_rate,
        learning_rates={"crf.": options.crf_learning_rate or CRF_LEARNING_RATE} if model_crf(model) is not None else {},
        weight_decay=options.weight_decay if options.weight_decay is not None else defaults.weight_decay,
        warmup_ratio=options.warmup_ratio if options.warmup_ratio is not None else defaults.warmup_ratio,
        lr_schedule="linear",
        mixed_precision=options.mixed_precision,
        gradient_checkpointing=options.gradient_checkpointing,
        compile=options.compile,
        attention=options.attention,
        seed=options.seed,
        logging_steps=max(1, min(options.logging_steps, steps_per_epoch)),
        # A checkpoint per epoch by default, so that --resume loses at most one epoch.
        save_steps=options.save_steps if options.save_steps is not None else steps_per_epoch,
        save_total_limit=options.save_total_limit,
        eval_each_epoch=dev is not None,
        metric_for_best_model=task.main_metric if dev is not None else None,
        greater_is_better=True,
        resume=options.resume,
        overwrite=options.overwrite,
        group_by_length=options.group_by_length,
        progress=options.progress,
    )

    def step(model, batch) -> StepOutput:
        out = model(**batch)
        return StepOutput(loss=out.loss, num_tokens=batch["attention_mask"].sum())

    dev_history: list[dict[str, Any]] = []

    def evaluate(trainer) -> dict[str, float]:
        acc = trainer.accelerator

        def fn(model, batch):
            return forward_outputs(task, model, batch, pad_across=lambda t: acc.pad_across_processes(t, dim=1))

        # dev.ordered is one list for the whole run, as the engine keeps its loader per dataset.
        batches = trainer.predict(dev.ordered, task.collate, fn, batch_size=options.eval_batch_size)
        _, metrics = evaluate_features(task, acc.unwrap_model(trainer.model), labels, dev, batches)
        dev_history.append({"step": trainer.state["global_step"], **metrics})
        return numeric_metrics(metrics)

    def save_model(model, directory: Path) -> None:
        model.save_pretrained(directory)
        shutil.copyfile(vocab, Path(directory) / VOCAB_NAME)
        (Path(directory) / SETTINGS_NAME).write_text(settings, encoding="utf-8")

    trainer = Trainer(model, args, train_features, task.collate, step,
                      evaluate=evaluate if dev is not None else None, save_model=save_model,
                      output_files={SETTINGS_NAME: settings})
    # The dev metric is computed under the run's autocast rather than in fp32: accelerate replaces the prepared
    # model's forward with one under its autocast and has no public way to run the model without it (under FSDP the
    # sharded model is usable only through that wrapper); transformers' Trainer evaluates in its training precision
    # too. Recorded in the config, so that `nezha evaluate` runs OUT/final under the same autocast and reproduces the
    # logged number to the last digit (bf16 rounding flips near-tied predictions: 1 or 2 of the 1,200 ChnSentiCorp
    # dev examples between bf16 and fp32 with a tiny model).
    model.config.update({MIXED_PRECISION_KEY: trainer.mixed_precision})
    result = trainer.train()

    test_metrics = None
    if test_examples is not None and trainer.accelerator.is_main_process:
        test_metrics = evaluate_test(task, result.final_dir, test_examples, tokenizer, max_seq_length,
                                     options.eval_batch_size, output_dir)
    return FinetuneResult(output_dir=output_dir, final_dir=result.final_dir, best_metric=result.best_metric,
                          main_metric=task.main_metric, global_step=result.global_step, dev_metrics=dev_history,
                          test_metrics=test_metrics, main_process=trainer.accelerator.is_main_process)


def evaluate_test(task: Task, final_dir: Path, examples, tokenizer, max_seq_length: int, batch_size: int,
                  output_dir: Path) -> dict[str, Any] | None:
    """Predict the test split with the final model: OUT/test_predictions.* and, with labels, OUT/test_results.json."""
    from nezha_cli.tasks.evaluate import load_finetuned, write_predictions

    model, labels = load_finetuned(task, final_dir)
    predictions, metrics = evaluate_examples(task, model, labels, examples, tokenizer, max_seq_length, batch_size)
    write_predictions(task, output_dir / task_prediction_name(task, "test"), examples, predictions)
    if metrics is not None:
        write_json(output_dir / TEST_RESULTS, metrics)
    return metrics


def task_prediction_name(task: Task, split: str) -> str:
    return f"{split}_predictions.json" if task.model_class_name == "NezhaForQuestionAnswering" \
        else f"{split}_predictions.jsonl"

