"""Learning-rate schedules: linear warmup, then linear or polynomial decay (BERT, NEZHA), or constant."""

from __future__ import annotations

import functools

import torch


def lr_lambda(step: int, *, total_steps: int, warmup_steps: int, schedule: str, power: float = 1.0,
              end_ratio: float = 0.0) -> float:
    """The factor applied to the peak learning rate after ``step`` optimizer steps.

    ``polynomial`` is BERT's ``polynomial_decay`` towards ``end_ratio`` x peak; ``linear`` is its ``power=1`` case.
    """
    if warmup_steps and step < warmup_steps:
        # As transformers' get_linear_schedule_with_warmup: the first optimizer step runs at lr 0.
        return step / warmup_steps
    if schedule == "constant":
        return 1.0
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    exponent = 1.0 if schedule == "linear" else power
    return (1.0 - end_ratio) * (1.0 - progress) ** exponent + end_ratio


def build_lr_scheduler(optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_steps: int, schedule: str,
                       power: float = 1.0, end_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    fn = functools.partial(lr_lambda, total_steps=total_steps, warmup_steps=warmup_steps, schedule=schedule,
                           power=power, end_ratio=end_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
