"""TrainingArguments: everything the training loop needs to know, validated up front."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from nezha_cli.errors import ConfigError

OPTIMIZERS = ("lamb", "adamw")
LR_SCHEDULES = ("linear", "polynomial", "constant")
MIXED_PRECISIONS = ("auto", "no", "fp16", "bf16")


@dataclass
class TrainingArguments:
    output_dir: Path
    # Global batch = per_device_batch_size x processes x gradient_accumulation_steps. Give the global size and
    # either the per-device size or the accumulation steps (neither: accumulation 1).
    global_batch_size: int = 32
    per_device_batch_size: int | None = None
    gradient_accumulation_steps: int | None = None
    # Stop after max_steps optimizer steps, or after num_epochs passes over the data (one of them).
    max_steps: int | None = None
    num_epochs: float | None = None

    optimizer: str = "lamb"
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-6
    max_grad_norm: float | None = 1.0
    # Linear warmup over warmup_steps (or warmup_ratio of all steps), then decay to lr_end.
    warmup_steps: int | None = None
    warmup_ratio: float = 0.0
    lr_schedule: str = "linear"
    lr_power: float = 1.0
    lr_end: float = 0.0
    # Peak learning rate of the parameters whose name starts with a key, instead of learning_rate (a few head
    # parameters that start from nothing, such as a CRF's transitions, next to a pretrained body). Same schedule.
    learning_rates: dict[str, float] = dataclasses.field(default_factory=dict)

    mixed_precision: str = "auto"
    # Keep only each encoder layer's input for the backward pass and compute the layer again there: the activation
    # memory of one layer instead of all (long sequences on small GPUs), for one more encoder forward per step.
    gradient_checkpointing: bool = False
    # torch.compile the model (nn.Module.compile: checkpoints keep their parameter names): fused kernels on GPUs,
    # for a compilation of about a minute at the start and whenever the input shapes change much.
    compile: bool = False
    # How the attention is computed: "eager" (relative buckets), "sdpa" (one SDPA call where L <= K + 1) or "fused"
    # (the Triton kernel, CUDA); None leaves the model's own setting (automatic). Each falls back to eager where
    # it does not apply (NezhaPreTrainedModel.set_attn_implementation).
    attention: str | None = None
    seed: int = 42
    logging_steps: int = 10
    # Checkpoint every save_steps optimizer steps (0: only at the end); keep the last save_total_limit.
    save_steps: int = 500
    save_total_limit: int = 2
    eval_steps: int | None = None
    eval_each_epoch: bool = False
    metric_for_best_model: str | None = None
    greater_is_better: bool = True
    # Consecutive optimizer steps with a NaN/inf loss before the run stops (they are skipped until then).
    max_nonfinite_steps: int = 5
    resume: bool = False
    overwrite: bool = False
    num_workers: int = 0
    # Batches of inputs of similar length (see EpochSampler): less padding, same random draw of batches.
    group_by_length: bool = False
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir)
        self.validate()

    def validate(self) -> None:
        def positive(name: str, allow_none: bool = False, allow_zero: bool = False) -> None:
            value = getattr(self, name)
            if value is None and allow_none:
                return
            low = 0 if allow_zero else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"{name}={value!r}: must be an integer >= {low}")

        positive("global_batch_size")
        positive("per_device_batch_size", allow_none=True)
        positive("gradient_accumulation_steps", allow_none=True)
        positive("max_steps", allow_none=True)
        positive("logging_steps")
        positive("save_steps", allow_zero=True)
        positive("save_total_limit")
        positive("eval_steps", allow_none=True)
        positive("max_nonfinite_steps")
        positive("num_workers", allow_zero=True)
        positive("warmup_steps", allow_none=True, allow_zero=True)
        if (self.max_steps is None) == (self.num_epochs is None):
            raise ConfigError("give exactly one of max_steps and num_epochs")
        if self.num_epochs is not None and not self.num_epochs > 0:
            raise ConfigError(f"num_epochs={self.num_epochs!r}: must be > 0")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer={self.optimizer!r}: use one of {', '.join(OPTIMIZERS)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule={self.lr_schedule!r}: use one of {', '.join(LR_SCHEDULES)}")
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise ConfigError(f"mixed_precision={self.mixed_precision!r}: use one of {', '.join(MIXED_PRECISIONS)}")
        from nezha_cli.modeling.configuration import ATTENTION_IMPLEMENTATIONS

        if self.attention not in (None, *ATTENTION_IMPLEMENTATIONS):
            raise ConfigError(f"attention={self.attention!r}: use one of {', '.join(ATTENTION_IMPLEMENTATIONS)} "
                              "(or leave it unset: automatic)")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate={self.learning_rate!r}: must be > 0")
        for prefix, rate in self.learning_rates.items():
            if not rate > 0:
                raise ConfigError(f"learning rate of {prefix}*={rate!r}: must be > 0")
        if not 0 <= self.lr_end < self.learning_rate:
            raise ConfigError(f"lr_end={self.lr_end!r}: must be in [0, learning_rate)")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio={self.warmup_ratio!r}: must be in [0, 1)")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay={self.weight_decay!r}: must be >= 0")
        if not (0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1):
            raise ConfigError(f"adam_beta1/adam_beta2=({self.adam_beta1}, {self.adam_beta2}): must be in [0, 1)")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ConfigError(f"max_grad_norm={self.max_grad_norm!r}: must be > 0 (or null for no clipping)")
        if self.lr_power <= 0:
            raise ConfigError(f"lr_power={self.lr_power!r}: must be > 0")

    def batch_layout(self, num_processes: int) -> tuple[int, int]:
        """(per-device batch, accumulation steps) for ``num_processes``; ConfigError when the batch does not divide."""
        g = self.global_batch_size
        if self.per_device_batch_size is not None:
            per_step = self.per_device_batch_size * num_processes
            if g % per_step:
                raise ConfigError(
                    f"global_batch_size={g} is not a multiple of per_device_batch_size={self.per_device_batch_size} "
                    f"x {num_processes} process(es); change one of them"
                )
            accumulation = g // per_step
            if self.gradient_accumulation_steps not in (None, accumulation):
                raise ConfigError(
                    f"gradient_accumulation_steps={self.gradient_accumulation_steps} does not fit global_batch_size="
                    f"{g} = per_device_batch_size={self.per_device_batch_size} x {num_processes} process(es) x "
                    f"{accumulation}; give only two of the three"
                )
            return self.per_device_batch_size, accumulation
        accumulation = self.gradient_accumulation_steps or 1
        if g % (accumulation * num_processes):
            raise ConfigError(
                f"the global batch of {g} (pretrain: global_batch_size; finetune: --batch-size) does not divide "
                f"into {num_processes} process(es) x {accumulation} accumulation step(s); change one of them"
            )
        return g // (accumulation * num_processes), accumulation

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]
