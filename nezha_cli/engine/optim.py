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

import functools

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
            # Multi-tensor (foreach) kernels over all parameters of a device and dtype: a per-parameter loop
            # launches a dozen small kernels for each of BERT-base's ~200 tensors.
            buckets: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Lamb does not support sparse gradients")
                dtype = _update_dtype(p.dtype)
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
                state["step"] += 1
                buckets.setdefault((p.device, p.dtype), []).append(p)
            for (_, param_dtype), params in buckets.items():
                self._update(group, params, _update_dtype(param_dtype))
        return loss

    def _update(self, group: dict, params: list[torch.Tensor], dtype: torch.dtype) -> None:
        beta1, beta2 = group["betas"]
        states = [self.state[p] for p in params]
        steps = [s["step"].item() for s in states]
        grads = [p.grad.to(dtype) for p in params]
        exp_avgs = [s["exp_avg"] for s in states]
        exp_avg_sqs = [s["exp_avg_sq"] for s in states]
        # Fewest passes over memory (what a CPU step costs): lerp is b1 m + (1 - b1) g in one pass, and
        # u = wd x + m / (sqrt(v_hat) + eps) / (1 - b1^t) in one addcdiv. torch's multi-tensor ops are still
        # underscore-named, as torch's own optimizers use them (pytorch/pytorch#58833 tracks making them public);
        # tests/test_engine_optim.py checks this step against a plain per-parameter LAMB.
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
        denominators = torch._foreach_div(exp_avg_sqs, [1 - beta2**t for t in steps])
        torch._foreach_sqrt_(denominators)
        torch._foreach_add_(denominators, group["eps"])
        values = [p.to(dtype) for p in params]
        inverse_bias_corrections = [1 / (1 - beta1**t) for t in steps]
        if group["weight_decay"] != 0:
            updates = torch._foreach_mul(values, group["weight_decay"])
            torch._foreach_addcdiv_(updates, exp_avgs, denominators, inverse_bias_corrections)
        else:
            updates = torch._foreach_div(exp_avgs, denominators)
            torch._foreach_mul_(updates, inverse_bias_corrections)
        if group["weight_decay"] != 0 or group["always_adapt"]:
            w_norms = torch.stack(torch._foreach_norm(values))
            u_norms = torch.stack(torch._foreach_norm(updates))
            trust_ratios = torch.where((w_norms > 0) & (u_norms > 0), w_norms / u_norms, torch.ones_like(w_norms))
            torch._foreach_mul_(updates, list(trust_ratios.unbind()))
        if params[0].dtype != dtype:  # bf16/fp16 parameters: their update was computed in fp32
            updates = [u.to(p.dtype) for u, p in zip(updates, params)]
        torch._foreach_add_(params, updates, alpha=-group["lr"])


def _update_dtype(param_dtype: torch.dtype) -> torch.dtype:
    # Moments and the update in fp32 at least (bf16/fp16 parameters), fp64 for fp64 parameters.
    return torch.float64 if param_dtype == torch.float64 else torch.float32


def _no_decay(name: str, param: nn.Parameter) -> bool:
    # BERT: no weight decay on LayerNorm and biases (1-D tensors); embeddings and matrices decay.
    return param.ndim < 2 or "LayerNorm" in name or "layer_norm" in name or name.endswith("bias")


def param_groups(model: nn.Module, weight_decay: float, learning_rates: dict[str, float] | None = None) -> list[dict]:
    """Two groups: decayed weights, and biases/LayerNorm without decay; the parameters named by a prefix of
    ``learning_rates`` form further groups with that peak learning rate. Tied parameters appear once."""
    learning_rates = learning_rates or {}
    groups: dict[tuple[str | None, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        prefix = next((p for p in learning_rates if name.startswith(p)), None)
        decayed = not _no_decay(name, param)
        group = groups.setdefault((prefix, decayed), {"params": [], "weight_decay": weight_decay if decayed else 0.0})
        if prefix is not None:
            group["lr"] = learning_rates[prefix]
        group["params"].append(param)
    # Decayed before undecayed, the plain groups first: the order the optimizer state of older checkpoints has.
    return [groups[key] for key in sorted(groups, key=lambda k: (k[0] is not None, k[0] or "", not k[1]))]


def build_optimizer(model: nn.Module, args: TrainingArguments, loss_scaling: bool = False) -> torch.optim.Optimizer:
    """LAMB or AdamW over BERT's weight-decay groups.

    ``loss_scaling``: fp16 with a dynamic loss scaler. accelerate tells a skipped (overflowed) step by the
    optimizer's ``step`` not having run, while a fused optimizer always runs and skips inside its kernel; so
    AdamW is fused only without a scaler.
    """
    groups = param_groups(model, args.weight_decay, args.learning_rates)
    betas = (args.adam_beta1, args.adam_beta2)
    if args.optimizer == "lamb":
        return Lamb(groups, lr=args.learning_rate, betas=betas, eps=args.adam_epsilon)
    # The fused kernel (CPU and CUDA since torch 2.4) is ~5x faster than the default per-parameter loop on CPU.
    return torch.optim.AdamW(groups, lr=args.learning_rate, betas=betas, eps=args.adam_epsilon,
                             fused=not loss_scaling and fused_supported(model))


def fused_supported(model: nn.Module) -> bool:
    """Whether torch's fused AdamW takes every trainable parameter (floating point, on a device that has it)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return all(p.is_floating_point() for p in params) and all(
        _fused_adamw_on(device) for device in {p.device.type for p in params})


@functools.cache
def _fused_adamw_on(device_type: str) -> bool:
    # Asked of torch's public constructor, which refuses fused=True where there is no kernel (torch has no public
    # list of those devices).
    try:
        torch.optim.AdamW([torch.zeros(1, device=device_type, requires_grad=True)], fused=True)
    except (RuntimeError, ValueError):
        return False
    return True
