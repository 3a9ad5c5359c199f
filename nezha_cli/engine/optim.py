"""Optimizers: LAMB (the paper's) and AdamW, with BERT's weight-decay exclusions.

Why our own LAMB: apex's FusedLAMB and DeepSpeed's are CUDA-only, torch-optimizer is archived, and timm's ``Lamb``
would bring torchvision along for one class. The update below is Algorithm 2 of You et al. 2019 ("Large Batch
Optimization for Deep Learning: Training BERT in 76 minutes") as in Google's and NVIDIA's BERT code:

    m = b1 m + (1 - b1) g                 v = b2 v + (1 - b2) g^2
    m_hat = m / (1 - b1^t)                v_hat = v / (1 - b2^t)          (bias correction)
    u = m_hat / (sqrt(v_hat) + eps) + wd x                               (decoupled weight decay)
    x = x - lr * (||x|| / ||u||) * u                                     (trust ratio; 1 if either norm is 0)

Parameters without weight decay (biases, LayerNorm) take no trust ratio either, like Google's
``exclude_from_layer_adaptation`` default and apex's ``use_nvlamb=False``. Global gradient clipping (1.0 in the
paper) happens before ``step`` in the training loop (``accelerator.clip_grad_norm_``), for LAMB and AdamW alike.
"""

from __future__ import annotations

import torch
from torch import nn

from nezha_cli.engine.args import TrainingArguments


class Lamb(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.01, always_adapt: bool = False):
        if lr <= 0:
            raise ValueError(f"invalid learning rate {lr}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"invalid betas {betas}")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, always_adapt=always_adapt)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Lamb does not support sparse gradients")
                # Moments and the update in fp32 at least (bf16/fp16 parameters), fp64 for fp64 parameters.
                dtype = torch.float64 if p.dtype == torch.float64 else torch.float32
                grad = p.grad.to(dtype)
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
                state["step"] += 1
                t = state["step"].item()
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                m_hat = exp_avg / (1 - beta1**t)
                v_hat = exp_avg_sq / (1 - beta2**t)
                param = p.to(dtype)
                update = m_hat / (v_hat.sqrt() + group["eps"])
                if group["weight_decay"] != 0:
                    update.add_(param, alpha=group["weight_decay"])
                if group["weight_decay"] != 0 or group["always_adapt"]:
                    w_norm = param.norm()
                    u_norm = update.norm()
                    trust_ratio = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
                    update.mul_(trust_ratio)
                p.add_(update.to(p.dtype), alpha=-group["lr"])
        return loss


def _no_decay(name: str, param: nn.Parameter) -> bool:
    # BERT: no weight decay on LayerNorm and biases (1-D tensors); embeddings and matrices decay.
    return param.ndim < 2 or "LayerNorm" in name or "layer_norm" in name or name.endswith("bias")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed weights, and biases/LayerNorm without decay. Tied parameters appear once."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if _no_decay(name, param) else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, args: TrainingArguments) -> torch.optim.Optimizer:
    groups = param_groups(model, args.weight_decay)
    betas = (args.adam_beta1, args.adam_beta2)
    if args.optimizer == "lamb":
        return Lamb(groups, lr=args.learning_rate, betas=betas, eps=args.adam_epsilon)
    # foreach is the default on CPU and CUDA; fused only where supported.
    return torch.optim.AdamW(groups, lr=args.learning_rate, betas=betas, eps=args.adam_epsilon)
