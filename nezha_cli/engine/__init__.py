"""The training loop shared by ``nezha pretrain`` and ``nezha finetune``, built on accelerate.

A caller brings a model, a map-style dataset, a collate function and a *step function* that turns a batch into a
loss (plus anything worth logging); the :class:`Trainer` does the rest: devices and processes, mixed precision,
gradient accumulation, LAMB/AdamW with warmup and decay, global gradient clipping, checkpoints with exact resume,
``metrics.jsonl`` (and TensorBoard when installed), a live display, periodic evaluation and the final model
directory::

    from nezha_cli.engine import StepOutput, Trainer, TrainingArguments

    def step(model, batch) -> StepOutput:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        # ``metrics`` are scalar tensors averaged over micro-batches and processes at each logging step;
        # ``num_tokens`` feeds tokens_per_s.
        return StepOutput(loss=out.loss, metrics={"task_loss": out.loss.detach()},
                          num_tokens=batch["attention_mask"].sum())

    def evaluate(trainer: Trainer) -> dict[str, float]:
        # Runs on every process (all of them must take part); ``predict`` gathers per-example tensors from all
        # processes (without the padding accelerate adds to even out the last batch), on CPU.
        correct = total = 0
        for out in trainer.predict(dev_dataset, collate, lambda m, b: {"ok": m(**b).logits.argmax(-1) == b["labels"]}):
            correct += int(out["ok"].sum()); total += out["ok"].numel()
        return {"accuracy": correct / total}

    args = TrainingArguments(
        output_dir=out_dir, global_batch_size=32, per_device_batch_size=16,   # accumulation = 32 / (16 x processes)
        max_steps=1000,                  # or num_epochs=3
        learning_rate=2e-5, warmup_steps=100, lr_schedule="linear", optimizer="adamw",
        mixed_precision="auto", seed=42, logging_steps=10,
        save_steps=500, save_total_limit=2, eval_steps=200,   # eval_steps=None + eval_each_epoch=True also works
        metric_for_best_model="accuracy", greater_is_better=True,   # OUT/final/ = the best model on the dev set
        resume=False, overwrite=False,
    )
    trainer = Trainer(model, args, train_dataset, collate, step, evaluate=evaluate,
                      save_model=lambda model, directory: (model.save_pretrained(directory),
                                                           shutil.copy(vocab, directory / "vocab.txt")),
                      output_files={"recipe.yaml": recipe_text})   # written to OUT once it is checked
    result = trainer.train()            # TrainResult: global_step, final_dir, best_metric, last_metrics, ...

What the output directory holds (``OUT`` = ``args.output_dir``):

- ``OUT/checkpoints/step-00000500/``: accelerate's ``save_state`` (model, optimizer, scheduler, scaler, RNG states
  of every process) + ``trainer_state.json`` (step, epoch, data position, counters, best metric). Each is written
  to a hidden temporary directory and renamed, so a checkpoint directory is always complete; the last
  ``save_total_limit`` are kept. ``resume=True`` continues from the newest one, bit-identically on CPU.
- ``OUT/checkpoints/best/``: the model with the best ``metric_for_best_model`` so far (when set).
- ``OUT/metrics.jsonl``: one JSON object per logging step (``step``, ``epoch``, ``loss``, the step function's
  metrics, ``lr``, ``tokens_per_s``, ``overflow_steps``) and per evaluation (``eval_*`` keys).
- ``OUT/final/``: the model directory written by ``save_model`` (default: ``model.save_pretrained``) at the end —
  the best model when ``metric_for_best_model`` is set, else the last.

Global batch size = per-device batch x processes x accumulation steps, whatever the number of processes; a batch
that does not divide is a :class:`~nezha_cli.errors.ConfigError`. Data order is a pure function of
``(seed, epoch)``: every global batch is the same whether it is computed by 1 process or 8 (accelerate's
``split_batches``), so a run's loss curve does not depend on the number of processes (with dropout 0).

Building blocks usable on their own: :class:`Lamb`, :func:`build_optimizer`, :func:`build_lr_scheduler`,
:func:`resolve_mixed_precision`, :func:`launch_processes`.
"""

import importlib

# Imported on first use (PEP 562), so that importing a light submodule such as ``nezha_cli.engine.args`` (the CLI's
# option lists) does not import torch: ``nezha --help`` stays fast.
_EXPORTS = {
    "TrainingArguments": "nezha_cli.engine.args",
    "launch_processes": "nezha_cli.engine.launch",
    "Lamb": "nezha_cli.engine.optim",
    "build_optimizer": "nezha_cli.engine.optim",
    "param_groups": "nezha_cli.engine.optim",
    "resolve_mixed_precision": "nezha_cli.engine.precision",
    "build_lr_scheduler": "nezha_cli.engine.schedules",
    "lr_lambda": "nezha_cli.engine.schedules",
    "StepOutput": "nezha_cli.engine.trainer",
    "Trainer": "nezha_cli.engine.trainer",
    "TrainingDiverged": "nezha_cli.engine.trainer",
    "TrainResult": "nezha_cli.engine.trainer",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Lamb",
    "StepOutput",
    "TrainResult",
    "Trainer",
    "TrainingArguments",
    "TrainingDiverged",
    "build_lr_scheduler",
    "build_optimizer",
    "launch_processes",
    "lr_lambda",
    "param_groups",
    "resolve_mixed_precision",
]
