"""The Trainer: accelerate's loop (prepare, accumulate, backward, clip, step) with checkpoints and exact resume.

Exact resume rests on three things: accelerate saves every RNG state with the checkpoint; the data order is a pure
function of (seed, epoch) and the position is a step count, so resuming skips exactly the batches already seen
(``skip_first_batches``); and nothing outside training draws from the global RNG (data loaders get their own
generator, evaluation runs without dropout, saving draws nothing).
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from nezha_cli.engine.args import TrainingArguments
from nezha_cli.engine.checkpoints import (
    BEST_DIR,
    CHECKPOINTS_DIR,
    checkpoint_candidates,
    latest_checkpoint,
    load_newest_checkpoint,
    remove_incomplete,
    save_checkpoint,
)
from nezha_cli.engine.metrics_log import METRICS_NAME, LiveDisplay, MetricsLog, read_metrics
from nezha_cli.engine.optim import build_optimizer
from nezha_cli.engine.precision import cuda_supports_bf16, current_device_type, resolve_mixed_precision
from nezha_cli.engine.schedules import build_lr_scheduler
from nezha_cli.errors import ConfigError, DataError, NezhaError, OutputExistsError
from nezha_cli.io import RunLock, atomic_output_dir, atomic_output_file, holds_run_files

logger = logging.getLogger(__name__)

FINAL_DIR = "final"


@dataclass
class StepOutput:
    """What a step function returns for one micro-batch."""

    loss: torch.Tensor
    # Scalar tensors to log (detached), averaged over micro-batches and processes at each logging step.
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    # Non-padding tokens in the micro-batch, for tokens_per_s.
    num_tokens: torch.Tensor | int | None = None


@dataclass
class TrainResult:
    global_step: int
    epoch: int
    final_dir: Path | None
    best_metric: float | None
    last_metrics: dict[str, float]
    overflow_steps: int
    nonfinite_steps: int
    resumed_from: Path | None
    mixed_precision: str


class TrainingDiverged(NezhaError):
    """The loss stayed NaN/inf for too many consecutive steps."""


StepFn = Callable[[torch.nn.Module, dict], StepOutput]
EvalFn = Callable[["Trainer"], dict[str, float]]
SaveFn = Callable[[torch.nn.Module, Path], None]


class EpochSampler(Sampler[int]):
    """A permutation of the dataset that is a pure function of (seed, epoch), cut to whole global batches.

    With ``lengths``, batches of similar length (like transformers' ``group_by_length``): the permutation is cut into
    megabatches of ``MEGABATCH`` global batches, each sorted by length and cut into global batches, and the order
    of all the batches is shuffled. A batch is padded to its longest input, so on inputs of mixed length this
    computes far fewer padding tokens (half as many tokens in all for People's Daily NER at batch 16), while
    every batch is still drawn at random from the whole dataset.

    No ``generator`` attribute on purpose: accelerate would otherwise synchronise it, drawing from the global RNG.
    """

    MEGABATCH = 50

    def __init__(self, num_examples: int, seed: int, multiple: int, shuffle: bool = True,
                 lengths: Sequence[int] | None = None):
        self.num_examples = num_examples
        self.seed = seed
        self.multiple = multiple
        self.length = num_examples // multiple * multiple
        self.shuffle = shuffle
        self.lengths = np.asarray(lengths) if lengths is not None else None
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.length))
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.num_examples)[: self.length]
        if self.lengths is not None:
            size = self.MEGABATCH * self.multiple
            # A stable sort, longest first, within each megabatch; then whole global batches in random order.
            grouped = np.concatenate([chunk[np.argsort(-self.lengths[chunk], kind="stable")]
                                      for chunk in np.split(order, range(size, self.length, size))])
            batches = grouped.reshape(-1, self.multiple)
            order = batches[rng.permutation(len(batches))].reshape(-1)
        return iter(order.tolist())

    def __len__(self) -> int:
        return self.length


def input_length(example: dict) -> int:
    """Tokens in an example's ``input_ids`` (for multiple choice, [choices, L]: its longest choice)."""
    ids = example["input_ids"]
    return max(map(len, ids)) if len(ids) and isinstance(ids[0], (list, tuple)) else len(ids)


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Turn on the model's gradient checkpointing (``training.gradient_checkpointing``), before accelerate wraps it.

    The layers run again in the backward pass with the RNG state of their forward (torch.utils.checkpoint's
    ``preserve_rng_state``), so dropout draws the same masks and the run is the same, in less memory.
    """
    enable = getattr(model, "gradient_checkpointing_enable", None)
    if not callable(enable):
        raise ConfigError(f"gradient_checkpointing: {type(model).__name__} has no gradient_checkpointing_enable(); "
                          "turn the option off for this model")
    enable()


def set_attention(model: torch.nn.Module, attention: str, device: torch.device | None = None) -> None:
    """Choose the model's attention implementation (``training.attention``), before accelerate wraps it.

    The fused kernel needs a CUDA GPU with Triton 3.2 or newer: elsewhere the eager path runs, which the log says
    once, with the reason.
    """
    choose = getattr(model, "set_attn_implementation", None)
    if not callable(choose):
        raise ConfigError(f"attention: {type(model).__name__} has no set_attn_implementation(); leave the option "
                          "unset for this model")
    choose(attention)
    if attention == "fused" and device is not None:
        from nezha_cli.modeling.kernels.dispatch import fused_attention_unavailable

        reason = fused_attention_unavailable(device)
        if reason is not None:
            logger.warning("attention=fused: %s; the eager attention runs instead", reason)


def compile_model(model: torch.nn.Module) -> None:
    """torch.compile the model in place (``training.compile``), before accelerate wraps it.

    ``nn.Module.compile`` rather than ``torch.compile(model)`` or accelerate's dynamo plugin: the module stays the
    same object with the same parameter names, so checkpoints of compiled and eager runs are interchangeable and a
    run may be resumed either way. The NEZHA model compiles as one graph (``fullgraph=True`` is tested); other
    models may fall back to eager code where dynamo cannot trace them.
    """
    model.compile()


def _default_save(model: torch.nn.Module, directory: Path) -> None:
    model.save_pretrained(directory)


def _sharded(accelerator) -> bool:
    """Whether each process holds only part of the weights (FSDP, DeepSpeed ZeRO-3): a model directory is then
    written from a gathered copy (:func:`_gathered_copy`)."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return accelerator.distributed_type == DistributedType.DEEPSPEED and getattr(plugin, "zero_stage", 0) == 3


def _gathered_copy(accelerator, wrapped: torch.nn.Module, model: torch.nn.Module) -> torch.nn.Module | None:
    """On the main process, an unsharded CPU copy of ``model`` with the full weights; None on the others.

    ``accelerator.get_state_dict`` gathers the shards (every process must call it). The copy is built from the
    model's config, so that the save functions see a plain model whatever the sharding (needs ``config``, as the
    NEZHA models have)."""
    state_dict = accelerator.get_state_dict(wrapped)
    if not accelerator.is_main_process:
        return None
    config = getattr(model, "config", None)
    if config is None:
        raise ConfigError(f"{type(model).__name__} has no config: a sharded (FSDP / ZeRO-3) run cannot write its "
                          "model directory; train it without sharding")
    with torch.device("cpu"):
        copy = type(model)(config)
    loaded = copy.load_state_dict({k: v.to("cpu") for k, v in state_dict.items()}, strict=False)
    # A gathered state dict may leave out weights tied to others (the MLM decoder to the word embeddings).
    missing = set(loaded.missing_keys) - set(getattr(copy, "_tied_weights_keys", None) or ())
    if missing or loaded.unexpected_keys:
        raise ConfigError(f"the gathered weights do not fit {type(model).__name__}: missing "
                          f"{sorted(missing) or 'none'}, unexpected {sorted(loaded.unexpected_keys) or 'none'}")
    if hasattr(copy, "tie_weights"):
        copy.tie_weights()
    return copy.eval()


def _private_generator(seed: int) -> torch.Generator:
    # DataLoader iterators draw a base seed from their generator, or from the global RNG when they have none.
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def pin_memory_for(device: torch.device) -> bool:
    """Whether the DataLoaders pin their batches: on a CUDA host. The pin-memory thread then takes each batch from
    the workers (on the CPU the training loop itself waits about a millisecond per batch for that: see
    benchmarks/bench_loader.py) while the GPU computes, and the copy to the GPU reads pinned memory."""
    return device.type == "cuda"


def check_run_output(out: Path, resume: bool, overwrite: bool) -> None:
    """The rule of a training OUT, checkable before any work: a directory, new, empty, or an earlier run's with
    resume/overwrite."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out}: exists and is not a directory; choose another -o/--output")
    if not resume and not overwrite and out.is_dir() and holds_run_files(out):
        raise OutputExistsError(
            f"{out}: output directory is not empty; pass --resume to continue its run, --overwrite to start "
            "over, or choose another -o/--output"
        )


def check_output_dir(args: TrainingArguments) -> None:
    """OUT may be used (:func:`check_run_output`) and it is writable."""
    out = args.output_dir
    check_run_output(out, args.resume, args.overwrite)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise NezhaError(f"{out}: cannot write the output directory ({exc.strerror}); choose another "
                         "-o/--output") from None


class Trainer:
    def __init__(self, model: torch.nn.Module, args: TrainingArguments, train_dataset, collate_fn: Callable,
                 step_fn: StepFn, evaluate: EvalFn | None = None, save_model: SaveFn | None = None,
                 output_files: dict[str, str] | None = None):
        """``output_files``: ``{name: text}`` written to OUT once it is checked (e.g. the run's recipe.yaml)."""
        self.args = args
        self.output_files = dict(output_files or {})
        self.train_dataset = train_dataset
        self.collate_fn = collate_fn
        self.step_fn = step_fn
        self.evaluate_fn = evaluate
        self.save_model = save_model or _default_save
        if (args.eval_steps or args.eval_each_epoch or args.metric_for_best_model) and evaluate is None:
            raise ConfigError("eval_steps/eval_each_epoch/metric_for_best_model need an evaluate function")
        self.accelerator, self.mixed_precision = self._make_accelerator()
        self.per_device_batch_size, self.gradient_accumulation_steps = args.batch_layout(
            self.accelerator.num_processes)
        self.model = model
        if args.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        if args.attention is not None:
            set_attention(model, args.attention, self.accelerator.device)
        if args.compile:
            compile_model(model)
        self.state: dict[str, Any] = {}
        self._eval_loaders: dict[int, DataLoader] = {}
        self._run_lock: RunLock | None = None

    # ------------------------------------------------------------------------------------------------- setup
    def _make_accelerator(self):
        from accelerate import Accelerator, DataLoaderConfiguration, PartialState
        from accelerate.state import AcceleratorState, GradientState

        device_type = current_device_type()
        mixed_precision = resolve_mixed_precision(self.args.mixed_precision, device_type, cuda_supports_bf16())
        # accelerate keeps its state in process-wide singletons; a second run in the same process (tests, notebooks)
        # may use another precision or accumulation. The distributed part (PartialState) is kept. accelerate has no
        # public way to do this (huggingface/accelerate#2463); transformers' TrainingArguments calls the same
        # private reset. tests/test_engine_trainer.py::test_two_trainers_in_one_process_use_their_own_settings
        # checks the behaviour we rely on, so that an accelerate release that changes it fails there.
        AcceleratorState._reset_state()
        GradientState._reset_state()
        num_processes = PartialState(cpu=device_type == "cpu").num_processes
        _, accumulation = self.args.batch_layout(num_processes)
        accelerator = Accelerator(
            mixed_precision=mixed_precision,
            gradient_accumulation_steps=accumulation,
            cpu=device_type == "cpu",
            # The loader yields whole global-step slices split across processes: the same batches whatever the
            # number of processes, and one scheduler step per optimizer step.
            dataloader_config=DataLoaderConfiguration(split_batches=True),
        )
        return accelerator, mixed_precision

    def _prepare_output_dir(self) -> Path | None:
        """Check OUT and return the checkpoint to resume from, if any."""
        out = self.args.output_dir
        acc = self.accelerator
        # Whole or not: load_newest_checkpoint skips (and names) those that do not match their manifest.
        candidates = checkpoint_candidates(out) if self.args.resume else []
        resume_from = candidates[0] if candidates else None
        if self.args.resume and resume_from is None:
            logger.warning("%s: no checkpoint to resume from; starting from scratch", out)
        acc.wait_for_everyone()
        if acc.is_main_process:
            check_output_dir(self.args)
            self._run_lock = RunLock(out)  # before anything in OUT is removed or written
            if not self.args.resume and self.args.overwrite:
                for name in (CHECKPOINTS_DIR, FINAL_DIR, "tensorboard"):
                    shutil.rmtree(out / name, ignore_errors=True)
                (out / METRICS_NAME).unlink(missing_ok=True)
            remove_incomplete(out)
            for name, text in self.output_files.items():
                with atomic_output_file(out / name) as f:
                    f.write(text)
        acc.wait_for_everyone()
        return resume_from

    # -------------------------------------------------------------------------------------------------- train
    def train(self) -> TrainResult:
        args = self.args
        global_batch = args.global_batch_size
        steps_per_epoch = len(self.train_dataset) // global_batch
        if steps_per_epoch == 0:
            raise DataError(f"the training data has {len(self.train_dataset)} examples, fewer than one global batch "
                            f"of {global_batch}; use more data or a smaller global_batch_size")
        total_steps = args.max_steps or math.ceil(args.num_epochs * steps_per_epoch)
        warmup = args.warmup_steps if args.warmup_steps is not None else int(args.warmup_ratio * total_steps)
        resume_from = self._prepare_output_dir()
        try:
            return self._run(resume_from, total_steps, warmup, steps_per_epoch)
        finally:
            if self._run_lock is not None:
                self._run_lock.release()
                self._run_lock = None

    def _run(self, resume_from: Path | None, total_steps: int, warmup: int, steps_per_epoch: int) -> TrainResult:
        from accelerate.utils import set_seed

        args, acc = self.args, self.accelerator
        global_batch = args.global_batch_size
        set_seed(args.seed)
        optimizer = build_optimizer(self.model, args, loss_scaling=acc.scaler is not None)
        scheduler = build_lr_scheduler(optimizer, total_steps=total_steps, warmup_steps=warmup,
                                       schedule=args.lr_schedule, power=args.lr_power,
                                       end_ratio=args.lr_end / args.learning_rate)
        lengths = ([input_length(self.train_dataset[i]) for i in range(len(self.train_dataset))]
                   if args.group_by_length else None)
        self._sampler = EpochSampler(len(self.train_dataset), args.seed, multiple=global_batch, lengths=lengths)
        loader = DataLoader(self.train_dataset, batch_size=self.per_device_batch_size * acc.num_processes,
                            sampler=self._sampler, collate_fn=self.collate_fn, drop_last=True,
                            num_workers=args.num_workers, generator=_private_generator(args.seed),
                            pin_memory=pin_memory_for(acc.device))
        model, optimizer, loader, scheduler = acc.prepare(self.model, optimizer, loader, scheduler)
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler

        self.state = {"global_step": 0, "epoch": 0, "step_in_epoch": 0, "overflow_steps": 0,
                      "nonfinite_steps": 0, "consecutive_nonfinite": 0, "best_metric": None, "best_step": None,
                      "last_eval_step": None, "total_steps": total_steps, "global_batch_size": global_batch}
        loaded = load_newest_checkpoint(acc, args.output_dir) if resume_from is not None else None
        if loaded is not None:
            saved, resume_from = loaded
            if saved.get("global_batch_size") != global_batch:
                raise ConfigError(f"{resume_from}: written with global_batch_size={saved.get('global_batch_size')}, "
                                  f"now {global_batch}; resume with the same batch size")
            self.state.update({k: v for k, v in saved.items() if k in self.state and k != "total_steps"})
            logger.info("resuming from %s (step %d)", resume_from, self.state["global_step"])
        st = self.state
        log = MetricsLog(args.output_dir, enabled=acc.is_main_process,
                         resume_step=st["global_step"] if resume_from else None,
                         tensorboard=args.tensorboard)
        logger.info("training %d steps: global batch %d = %d per device x %d process(es) x %d accumulation; "
                    "mixed precision %s; %s%s%s%s", total_steps, global_batch, self.per_device_batch_size,
                    acc.num_processes, self.gradient_accumulation_steps, self.mixed_precision, args.optimizer,
                    "; gradient checkpointing" if args.gradient_checkpointing else "",
                    f"; {args.attention} attention" if args.attention else "",
                    "; torch.compile" if args.compile else "")

        self._reset_window()
        last_record: dict[str, float] = {}
        last_saved = st["global_step"] if resume_from else -1
        save_after_epoch = False
        if resume_from is not None and st["global_step"] >= total_steps:
            logger.info("%s: the run is complete (step %d of %d); pass --overwrite to start over, or --resume with "
                        "a larger max_steps to go on", args.output_dir, st["global_step"], total_steps)
        model.train()
        try:
            with LiveDisplay(total_steps, st["global_step"], enabled=args.progress and acc.is_main_process) as shown:
                while st["global_step"] < total_steps:
                    if hasattr(self.collate_fn, "set_epoch"):
                        self.collate_fn.set_epoch(st["epoch"])  # dynamic masking: a new mask each epoch
                    skip = st["step_in_epoch"] * self.gradient_accumulation_steps
                    batches = acc.skip_first_batches(loader, skip) if skip else loader
                    # accelerate's loaders pass their own iteration count to the sampler on each pass: set it.
                    batches.set_epoch(st["epoch"])
                    # And set the sampler's own: accelerate's set_epoch looks two wrappers deep, and a resumed
                    # epoch under several processes has three (SkipBatchSampler, BatchSamplerShard, BatchSampler),
                    # so the sampler kept epoch 0's order and the run drifted (test_engine_distributed.py).
                    self._sampler.set_epoch(st["epoch"])
                    for batch in batches:
                        if not self._micro_step(batch):
                            continue
                        st["global_step"] += 1
                        st["step_in_epoch"] += 1
                        step = st["global_step"]
                        shown.advance(step)
                        if step % args.logging_steps == 0 or step == total_steps:
                            last_record = self._log(log, shown)
                        if args.eval_steps and step % args.eval_steps == 0:
                            self._evaluate(log)
                        if args.save_steps and step % args.save_steps == 0 and step < total_steps:
                            # (The last step's checkpoint is written after the final evaluation, below, so that
                            # resuming a finished run does not evaluate and log it again.)
                            if st["step_in_epoch"] == steps_per_epoch:
                                # The epoch's last step: save once the epoch is closed (and evaluated, below), so
                                # that a resume neither re-runs nor re-logs that evaluation.
                                save_after_epoch = True
                            else:
                                self._save(step)
                                last_saved = step
                        if step >= total_steps:
                            if st["step_in_epoch"] == steps_per_epoch:
                                # The last step ended an epoch: count it like the else branch counts the others
                                # (the final evaluation would otherwise carry the previous epoch's number).
                                st["epoch"] += 1
                                st["step_in_epoch"] = 0
                            break
                    else:
                        st["epoch"] += 1
                        st["step_in_epoch"] = 0
                        if args.eval_each_epoch:
                            self._evaluate(log)
                        if save_after_epoch:
                            self._save(st["global_step"])
                            last_saved = st["global_step"]
                            save_after_epoch = False
                if self.evaluate_fn is not None and st["last_eval_step"] != st["global_step"]:
                    self._evaluate(log)
                if last_saved != st["global_step"]:
                    self._save(st["global_step"])
                final_dir = self._write_final()
        finally:
            log.close()
        if not last_record and acc.is_main_process:
            # Nothing trained in this call (a finished run resumed): report the run's last logged step.
            last_record = next((r for r in reversed(read_metrics(log.path)) if "loss" in r), {})
        return TrainResult(
            global_step=st["global_step"], epoch=st["epoch"], final_dir=final_dir, best_metric=st["best_metric"],
            last_metrics=last_record, overflow_steps=st["overflow_steps"], nonfinite_steps=st["nonfinite_steps"],
            resumed_from=resume_from, mixed_precision=self.mixed_precision,
        )

    def _micro_step(self, batch: dict) -> bool:
        """Forward and backward one micro-batch; returns True when an optimizer step (or a skipped one) ended."""
        acc, args, st = self.accelerator, self.args, self.state
        with acc.accumulate(self.model):
            out = self.step_fn(self.model, batch)
            acc.backward(out.loss)
            self._accumulate_metrics(out)
            if not acc.sync_gradients:
                return False
            # All processes must agree to step or to skip, so the check is reduced across them.
            nonfinite = acc.reduce(self._window_nonfinite.clone(), reduction="sum").item() > 0
            self._window_nonfinite.zero_()
            if nonfinite:
                self.optimizer.zero_grad(set_to_none=True)
                st["nonfinite_steps"] += 1
                st["consecutive_nonfinite"] += 1
                if st["consecutive_nonfinite"] >= args.max_nonfinite_steps:
                    last = latest_checkpoint(args.output_dir)
                    raise TrainingDiverged(
                        f"the loss was NaN/inf for {st['consecutive_nonfinite']} consecutive steps (up to step "
                        f"{st['global_step'] + 1}); stopped. The last good checkpoint is "
                        f"{last if last else '(none yet)'}: lower learning_rate or use mixed_precision=bf16/no, "
                        "then --resume"
                    )
                logger.warning("step %d: loss is NaN/inf; step skipped", st["global_step"] + 1)
                return True
            st["consecutive_nonfinite"] = 0
            if args.max_grad_norm is not None:
                acc.clip_grad_norm_(self.model.parameters(), args.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            if acc.optimizer_step_was_skipped:
                # fp16: the grad scaler found inf/NaN gradients, skipped the update and lowered the scale.
                st["overflow_steps"] += 1
        return True

    # ---------------------------------------------------------------------------------------------- metrics
    def _reset_window(self) -> None:
        device = self.accelerator.device
        self._window_sums: dict[str, torch.Tensor] = {}
        self._window_micro = 0
        self._window_tokens = torch.zeros((), dtype=torch.float64, device=device)
        self._window_start = time.perf_counter()
        if not hasattr(self, "_window_nonfinite"):
            self._window_nonfinite = torch.zeros((), device=device)

    def _accumulate_metrics(self, out: StepOutput) -> None:
        loss = out.loss.detach().float()
        finite = torch.isfinite(loss)
        self._window_nonfinite += (~finite).float()
        values = {"loss": loss, **{k: v.detach().float() for k, v in out.metrics.items()}}
        for key, value in values.items():
            value = torch.where(torch.isfinite(value), value, torch.zeros_like(value)) if key != "loss" else value
            self._window_sums[key] = self._window_sums.get(key, 0) + value
        self._window_micro += 1
        if out.num_tokens is not None:
            self._window_tokens += out.num_tokens if isinstance(out.num_tokens, int) else out.num_tokens.detach()

    def _log(self, log: MetricsLog, shown: LiveDisplay) -> dict[str, float]:
        acc = self.accelerator
        keys = sorted(self._window_sums)
        means = torch.stack([self._window_sums[k] for k in keys]) / max(1, self._window_micro)
        means = acc.reduce(means, reduction="mean")
        tokens = acc.reduce(self._window_tokens.clone(), reduction="sum").item()
        elapsed = max(time.perf_counter() - self._window_start, 1e-9)
        record: dict[str, Any] = {"step": self.state["global_step"], "epoch": self.state["epoch"]}
        record.update({k: float(v) for k, v in zip(keys, means.tolist())})
        record["lr"] = float(self.scheduler.get_last_lr()[0])
        record["tokens_per_s"] = tokens / elapsed
        record["overflow_steps"] = self.state["overflow_steps"]
        log.write(record)
        shown.show(record)
        self._reset_window()
        return record

    # ---------------------------------------------------------------------------------------------- evaluation
    def predict(self, dataset, collate_fn: Callable, fn: Callable[[torch.nn.Module, dict], dict[str, torch.Tensor]],
                batch_size: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """Run ``fn(model, batch)`` over ``dataset`` without gradients on all processes; yield its per-example
        tensors gathered from every process (accelerate's padding of the last batch removed), on CPU."""
        acc = self.accelerator
        loader = self._eval_loaders.get(id(dataset))
        if loader is None:
            per_device = batch_size or self.per_device_batch_size
            loader = acc.prepare_data_loader(DataLoader(
                dataset, batch_size=per_device * acc.num_processes, shuffle=False, collate_fn=collate_fn,
                num_workers=self.args.num_workers, generator=_private_generator(0),
                pin_memory=pin_memory_for(acc.device)))
            self._eval_loaders[id(dataset)] = loader
        was_training = self.model.training
        self.model.eval()
        try:
            for batch in loader:
                with torch.no_grad():
                    out = fn(self.model, batch)
                gathered = acc.gather_for_metrics(out)
                yield {k: v.cpu() for k, v in gathered.items()}
        finally:
            self.model.train(was_training)

    def _evaluate(self, log: MetricsLog) -> dict[str, float]:
        if self.evaluate_fn is None:
            return {}
        args, st = self.args, self.state
        results = self.evaluate_fn(self)
        st["last_eval_step"] = st["global_step"]
        record = {"step": st["global_step"], "epoch": st["epoch"],
                  **{f"eval_{k}": float(v) for k, v in results.items()}}
        log.write(record)
        logger.info("step %d: %s", st["global_step"],
                    ", ".join(f"{k} {v:.4f}" for k, v in results.items()))
        key = args.metric_for_best_model
        if key is not None:
            if key not in results:
                raise ConfigError(f"metric_for_best_model={key!r} is not among the evaluation metrics "
                                  f"({', '.join(results)})")
            value = float(results[key])
            best = st["best_metric"]
            better = best is None or (value > best if args.greater_is_better else value < best)
            if better:
                st["best_metric"], st["best_step"] = value, st["global_step"]
                self._save_model_dir(args.output_dir / CHECKPOINTS_DIR / BEST_DIR)
        return results

    # ------------------------------------------------------------------------------------------------ saving
    def _save(self, step: int) -> None:
        save_checkpoint(self.accelerator, self.args.output_dir, step, dict(self.state), self.args.save_total_limit)

    def _save_model_dir(self, directory: Path) -> None:
        acc = self.accelerator
        acc.wait_for_everyone()
        model = acc.unwrap_model(self.model)
        if _sharded(acc):
            model = _gathered_copy(acc, self.model, model)  # a collective: every process takes part
        if acc.is_main_process:
            with atomic_output_dir(directory, overwrite=True) as tmp:
                self.save_model(model, tmp)
        acc.wait_for_everyone()

    def _write_final(self) -> Path:
        acc = self.accelerator
        final = self.args.output_dir / FINAL_DIR
        best = self.args.output_dir / CHECKPOINTS_DIR / BEST_DIR
        if self.args.metric_for_best_model and best.is_dir():
            acc.wait_for_everyone()
            if acc.is_main_process:
                with atomic_output_dir(final, overwrite=True) as tmp:
                    shutil.copytree(best, tmp, dirs_exist_ok=True)
            acc.wait_for_everyone()
        else:
            self._save_model_dir(final)
        return final
