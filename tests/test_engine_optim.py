"""LAMB against the published update rule on hand-computed steps; weight-decay groups; LR schedules; precision."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from nezha_cli.engine import Lamb, TrainingArguments, build_optimizer, lr_lambda, param_groups
from nezha_cli.engine.precision import cpu_flags, resolve_mixed_precision
from nezha_cli.errors import ConfigError
from nezha_cli.modeling import NezhaConfig, NezhaForPreTraining


def lamb_reference(w, grads, lr, b1, b2, eps, wd, adapt):
    """You et al. 2019, Algorithm 2, written out with numpy in float64."""
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        u = m_hat / (np.sqrt(v_hat) + eps) + wd * w
        ratio = np.linalg.norm(w) / np.linalg.norm(u) if adapt else 1.0
        w = w - lr * ratio * u
    return w


def test_lamb_first_step_by_hand():
    # One step from w = [3, 4] (norm 5), g = [1, -2]: m_hat = g, v_hat = g^2, so r = sign(g) (eps aside),
    # u = [1, -1] + 0.01 * [3, 4] = [1.03, -0.96]; trust ratio = 5 / |u|; w -= lr * ratio * u.
    w = nn.Parameter(torch.tensor([[3.0, 4.0]], dtype=torch.float64))
    w.grad = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    Lamb([w], lr=0.1, eps=0.0, weight_decay=0.01).step()
    u = np.array([1.03, -0.96])
    expected = np.array([3.0, 4.0]) - 0.1 * (5.0 / math.hypot(1.03, -0.96)) * u
    np.testing.assert_allclose(w.detach().numpy()[0], expected, rtol=1e-12)


def test_lamb_matches_reference_over_steps_with_and_without_decay():
    rng = np.random.default_rng(0)
    w0, b0 = rng.normal(size=(4, 3)), rng.normal(size=3)
    grads_w = [rng.normal(size=(4, 3)) for _ in range(3)]
    grads_b = [rng.normal(size=3) for _ in range(3)]
    w = nn.Parameter(torch.tensor(w0))
    b = nn.Parameter(torch.tensor(b0))
    opt = Lamb([{"params": [w], "weight_decay": 0.01}, {"params": [b], "weight_decay": 0.0}], lr=0.05,
               betas=(0.9, 0.999), eps=1e-6)
    for gw, gb in zip(grads_w, grads_b, strict=True):
        w.grad, b.grad = torch.tensor(gw), torch.tensor(gb)
        opt.step()
    np.testing.assert_allclose(w.detach().numpy(), lamb_reference(w0, grads_w, 0.05, 0.9, 0.999, 1e-6, 0.01, True),
                               rtol=1e-10)
    # No weight decay -> no trust ratio either (bias and LayerNorm, as Google's and NVIDIA's BERT).
    np.testing.assert_allclose(b.detach().numpy(), lamb_reference(b0, grads_b, 0.05, 0.9, 0.999, 1e-6, 0.0, False),
                               rtol=1e-10)


def test_global_clipping_then_lamb_step():
    # The training loop clips the global gradient norm to 1.0 before the optimizer step.
    w = nn.Parameter(torch.tensor([[3.0, 4.0]], dtype=torch.float64))
    b = nn.Parameter(torch.tensor([0.5], dtype=torch.float64))
    w.grad = torch.tensor([[6.0, -8.0]], dtype=torch.float64)  # norm 10
    b.grad = torch.tensor([0.0], dtype=torch.float64)
    norm = torch.nn.utils.clip_grad_norm_([w, b], 1.0)
    assert float(norm) == pytest.approx(10.0)
    np.testing.assert_allclose(w.grad.numpy(), [[0.6, -0.8]], rtol=1e-6)
    Lamb([w], lr=0.1, eps=0.0).step()
    expected = lamb_reference(np.array([3.0, 4.0]), [np.array([0.6, -0.8])], 0.1, 0.9, 0.999, 0.0, 0.01, True)
    np.testing.assert_allclose(w.detach().numpy()[0], expected, rtol=1e-6)


def test_zero_weights_take_an_unscaled_step():
    w = nn.Parameter(torch.zeros(2))
    w.grad = torch.tensor([1.0, -1.0])
    Lamb([w], lr=0.1, eps=0.0, weight_decay=0.01).step()
    torch.testing.assert_close(w.detach(), torch.tensor([-0.1, 0.1]))


def test_param_groups_exclude_bias_and_layernorm():
    model = NezhaForPreTraining(NezhaConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1,
                                            num_attention_heads=2, intermediate_size=32))
    decay, no_decay = param_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert all("LayerNorm" in names[id(p)] or names[id(p)].endswith("bias") for p in no_decay["params"])
    assert all(p.ndim == 2 for p in decay["params"])
    assert any(names[id(p)] == "nezha.embeddings.word_embeddings.weight" for p in decay["params"])
    # Tied decoder weight appears once.
    total = sum(p.numel() for g in (decay, no_decay) for p in g["params"])
    assert total == model.num_parameters()


def test_build_optimizer_choices(tmp_path, monkeypatch):
    model = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))
    args = TrainingArguments(output_dir=tmp_path, max_steps=1)
    assert isinstance(build_optimizer(model, args), Lamb)
    args.optimizer = "adamw"
    opt = build_optimizer(model, args)
    assert isinstance(opt, torch.optim.AdamW) and [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0]
    # torch's fused kernel where it takes every parameter (CPU and CUDA), the per-parameter loop otherwise.
    assert opt.defaults["fused"] is True
    model.append(nn.Embedding(3, 2).to(torch.float64).requires_grad_(False))
    assert build_optimizer(model, args).defaults["fused"] is True  # frozen parameters do not count
    # Under an fp16 loss scaler accelerate must see skipped steps: no fused kernel then.
    assert not build_optimizer(model, args, loss_scaling=True).defaults["fused"]
    # A device whose fused kernel torch's own constructor refuses: the per-parameter loop. (Asked through the
    # public constructor; torch has no public list of those devices.)
    from nezha_cli.engine import optim

    def refuses(params, **kwargs):
        if kwargs.get("fused"):
            raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")
        return real_adamw(params, **kwargs)

    real_adamw = torch.optim.AdamW
    optim._fused_adamw_on.cache_clear()
    with monkeypatch.context() as patched:
        patched.setattr(torch.optim, "AdamW", refuses)
        assert optim._fused_adamw_on("cpu") is False
    optim._fused_adamw_on.cache_clear()
    assert optim._fused_adamw_on("cpu") is True


def test_lamb_mixed_dtypes_and_parameters_without_gradients():
    # One group of fp32, bf16 and fp64 tensors (updated per dtype, moments in fp32 / fp64) and a tensor that got
    # no gradient this step (untouched, no state). Each must equal LAMB on its own.
    rng = np.random.default_rng(1)
    values = [rng.normal(size=(3, 4)), rng.normal(size=5), rng.normal(size=(2, 2)), rng.normal(size=3)]
    dtypes = [torch.float32, torch.bfloat16, torch.float64, torch.float32]
    params = [nn.Parameter(torch.tensor(v, dtype=d)) for v, d in zip(values, dtypes)]
    grads = [[rng.normal(size=v.shape) for v in values] for _ in range(2)]
    opt = Lamb(params, lr=0.05, weight_decay=0.01)
    for step in grads:
        for p, g in zip(params[:3], step):
            p.grad = torch.tensor(g, dtype=p.dtype)
        opt.step()
    assert params[3].grad is None and not opt.state[params[3]]
    np.testing.assert_array_equal(params[3].detach().numpy(), values[3].astype(np.float32))
    for i, rtol in ((0, 1e-5), (1, 2e-2), (2, 1e-10)):
        start = torch.tensor(values[i], dtype=dtypes[i]).double().numpy()
        seen = [torch.tensor(g[i], dtype=dtypes[i]).double().numpy() for g in grads]
        expected = lamb_reference(start, seen, 0.05, 0.9, 0.999, 1e-6, 0.01, True)
        np.testing.assert_allclose(params[i].detach().double().numpy(), expected, rtol=rtol, atol=rtol)
        assert opt.state[params[i]]["exp_avg"].dtype == (torch.float64 if i == 2 else torch.float32)


def test_lr_schedules():
    kw = dict(total_steps=110, warmup_steps=10)
    assert lr_lambda(0, schedule="linear", **kw) == 0.0
    assert lr_lambda(5, schedule="linear", **kw) == 0.5
    assert lr_lambda(10, schedule="linear", **kw) == 1.0
    assert lr_lambda(60, schedule="linear", **kw) == pytest.approx(0.5)
    assert lr_lambda(110, schedule="linear", **kw) == 0.0
    assert lr_lambda(60, schedule="polynomial", power=2.0, **kw) == pytest.approx(0.25)
    assert lr_lambda(110, schedule="polynomial", power=2.0, end_ratio=0.1, **kw) == pytest.approx(0.1)
    assert lr_lambda(100, schedule="constant", **kw) == 1.0


@pytest.mark.parametrize(("requested", "device", "cuda_bf16", "flags", "expected"), [
    ("auto", "cpu", False, {"avx2", "fma"}, "no"),
    ("auto", "cpu", False, {"avx2", "avx512f", "avx512_bf16"}, "bf16"),
    ("auto", "cpu", False, {"avx2", "amx_bf16", "amx_tile"}, "bf16"),
    ("auto", "cuda", True, set(), "bf16"),
    ("auto", "cuda", False, set(), "no"),
    ("bf16", "cpu", False, {"avx2"}, "bf16"),
    ("no", "cuda", True, set(), "no"),
    ("fp16", "cuda", False, set(), "fp16"),
])
def test_resolve_mixed_precision(requested, device, cuda_bf16, flags, expected):
    assert resolve_mixed_precision(requested, device, cuda_bf16, flags) == expected


def test_fp16_on_cpu_is_a_clear_error():
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        resolve_mixed_precision("fp16", "cpu", False, {"avx2"})


def test_cpu_flags_reads_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n")
    assert cpu_flags(info) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") == set()
