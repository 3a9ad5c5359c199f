"""The fused forms of the relative attention (nezha_cli.modeling.kernels.frpe) against the definition in float64.

* the one-SDPA-call form (L <= K + 1): here, on the CPU;
* the Triton kernel (any L): through Triton's interpreter (``TRITON_INTERPRET=1``, read when a kernel is defined,
  so in a fresh interpreter); tests/test_cuda.py runs the same checks compiled on a GPU.

The oracle is the definition with an [L, L, d] table, as transformers computes it, with the project's additive
finfo.min mask (a sequence with no valid key attends uniformly to every key) and an optional dropout keep mask.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from nezha_cli.modeling import NezhaConfig, NezhaForPreTraining
from nezha_cli.modeling.kernels import dispatch, frpe
from nezha_cli.modeling.modeling_nezha import extended_attention_mask

F64 = torch.float64
# The grid: 65 and 66 put a 64-wide tile edge on the clip boundary j - i = -K (and at -K + 1).
LENGTHS = (1, 7, 64, 65, 66, 130, 200)
CLIPS = (8, 64, 65, 66)
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def sinusoid(x: torch.Tensor, depth: int) -> torch.Tensor:
    """PE(x) in float64: sin in even columns, cos in odd ones, frequencies 10000^(-2k/d)."""
    w = torch.exp(torch.arange(0, depth, 2, dtype=F64) * (-math.log(10000.0) / depth))
    angle = x.to(F64)[..., None] * w
    out = torch.empty(*x.shape, depth, dtype=F64)
    out[..., 0::2], out[..., 1::2] = torch.sin(angle), torch.cos(angle)
    return out


def definition(q, k, v, valid, K, drop=None, query_positions=None):
    """softmax((q.k + q.a) / sqrt(d) + mask) (v + a), a_ij = PE(clip(j - i, -K, K) + K); drop: P's multiplier."""
    batch, _, rows, depth = q.shape
    length = k.shape[-2]
    i = torch.arange(rows).expand(batch, rows) if query_positions is None else query_positions
    a = sinusoid((torch.arange(length)[None, None, :] - i[:, :, None]).clamp(-K, K) + K, depth)  # [B, Q, L, d]
    scores = (q @ k.transpose(-1, -2) + torch.einsum("bhid,bijd->bhij", q, a)) / math.sqrt(depth)
    scores = scores + (~valid).to(F64)[:, None, None, :] * torch.finfo(F64).min
    p = torch.softmax(scores, -1)
    if drop is not None:
        p = p * drop
    return p @ v + torch.einsum("bhij,bijd->bhid", p, a)


def inputs(length: int, heads: int = 1, depth: int = 16, seed: int = 0):
    """q, k, v, an output gradient and a key mask: batch 0 complete, 1 padded, 2 all padding."""
    generator = torch.Generator().manual_seed(seed)
    q, k, v, grad = (torch.randn(3, heads, length, depth, dtype=F64, generator=generator) for _ in range(4))
    valid = torch.ones(3, length, dtype=torch.bool)
    valid[1, length - length // 3:] = False
    valid[2] = False
    return q, k, v, grad, valid


def relative_error(x: torch.Tensor, reference: torch.Tensor, floor: float = 0.0) -> float:
    """||x - ref|| / max(||ref||, floor)."""
    scale = max(reference.norm().item(), floor)
    diff = (x.to(F64) - reference).norm().item()
    return diff / scale if scale > 0 else diff


def compare(fn, q, k, v, grad, reference_fn, dtype):
    """Relative errors of fn's output and q, k, v gradients against reference_fn's (float64 on dtype-rounded
    inputs). The gradients' errors are taken relative to the largest of the three: at L = 1 the q and k gradients
    are exactly 0 (a softmax over one key), and what a kernel gives there is the rounding of D = dO.O."""
    low = [x.to(dtype).requires_grad_() for x in (q, k, v)]
    out = fn(*low)
    got = (out, *torch.autograd.grad((out.to(F64) * grad).sum(), low))
    exact = [x.to(dtype).to(F64).requires_grad_() for x in (q, k, v)]
    ref = reference_fn(*exact)
    want = (ref, *torch.autograd.grad((ref * grad).sum(), exact))
    floor = max(g.norm().item() for g in want[1:])
    return [relative_error(got[0], want[0])] + [relative_error(a, b, floor) for a, b in zip(got[1:], want[1:])]


# ------------------------------------------------------------------------------------------ one SDPA call


@pytest.mark.parametrize(("length", "K"), [(1, 8), (7, 8), (9, 8), (40, 64), (65, 64)])
def test_sdpa_form_equals_the_definition(length, K):
    q, k, v, grad, valid = inputs(length, heads=2)
    mask = extended_attention_mask(valid, F64)
    errors = compare(lambda q, k, v: frpe.sdpa_attention(q / math.sqrt(q.shape[-1]), k, v, mask, K), q, k, v, grad,
                     lambda q, k, v: definition(q, k, v, valid, K), F64)
    assert max(errors) < 1e-12, errors


def test_sdpa_form_with_dropout_replays_the_definition():
    """SDPA's own dropout: its keep mask, recovered by replaying the call's RNG with identity values, gives the
    definition with that mask on both halves (values and relative vectors)."""
    length, K, p = 30, 32, 0.3
    q, k, v, grad, valid = inputs(length, heads=2)
    mask = extended_attention_mask(valid, F64)
    scaled = q / math.sqrt(q.shape[-1])
    torch.manual_seed(7)
    out = frpe.sdpa_attention(scaled, k, v, mask, K, dropout_p=p)
    # The same call on values = identity returns P~ itself (the draw depends on the [B, H, L, L] shape only).
    eye = torch.eye(length, dtype=F64).expand(3, 2, length, length)
    positions = torch.arange(length)
    wide_q = torch.cat([scaled, frpe.rotate(scaled, positions, inverse=True)], -1)
    e = frpe.key_vectors(length, q.shape[-1], K, dtype=F64)[0].expand(3, 2, length, q.shape[-1])
    torch.manual_seed(7)
    with frpe._sdpa_backends(q):
        dropped = torch.nn.functional.scaled_dot_product_attention(
            wide_q, torch.cat([k, e], -1), eye, attn_mask=mask, dropout_p=p, scale=1.0)
    keep = (dropped != 0).to(F64) / (1 - p)
    assert 0.6 < (dropped != 0)[0].float().mean() < 0.8
    assert relative_error(out, definition(q, k, v, valid, K, drop=keep)) < 1e-12
    torch.manual_seed(7)
    assert torch.equal(frpe.sdpa_attention(scaled, k, v, mask, K, dropout_p=p), out)  # seeded: repeats


def test_sdpa_form_refuses_clipped_lengths():
    q = torch.zeros(1, 1, 10, 8)
    with pytest.raises(ValueError, match="L <= K \\+ 1"):
        frpe.sdpa_attention(q, q, q, None, 8)


def test_sdpa_form_on_a_query_subset_equals_the_definition():
    length, K = 40, 64
    q, k, v, grad, valid = inputs(length, heads=2)
    positions = torch.tensor([[0, 5, 39], [3, 3, 20], [1, 2, 3]])
    rows = torch.stack([q[b][:, positions[b]] for b in range(3)])
    mask = extended_attention_mask(valid, F64)
    errors = compare(lambda q, k, v: frpe.sdpa_attention(q / math.sqrt(q.shape[-1]), k, v, mask, K,
                                                         query_positions=positions),
                     rows, k, v, grad[:, :, :3],
                     lambda q, k, v: definition(q, k, v, valid, K, query_positions=positions), F64)
    assert max(errors) < 1e-12, errors


# ------------------------------------------------------------------------------------------ dispatch


def test_attention_path_takes_the_eager_path_where_a_fused_form_does_not_apply():
    q = torch.zeros(2, 4, 20, 8)
    path = dict(plain_mask=True, output_attentions=False, head_mask=None)
    assert dispatch.attention_path(None, q, 20, 64, **path) == "eager"  # automatic: eager until measured on a GPU
    assert dispatch.attention_path("eager", q, 20, 64, **path) == "eager"
    assert dispatch.attention_path("sdpa", q, 20, 64, **path) == "sdpa"
    assert dispatch.attention_path("sdpa", q, 20, 8, **path) == "eager"  # L > K + 1: pairs are clipped
    assert dispatch.attention_path("sdpa", q, 20, 19, **path) == "sdpa"  # L = K + 1: every pair in the band
    assert dispatch.attention_path("sdpa", q[:, :, :3], 20, 64, **path) == "sdpa"  # a query subset
    for other in ({"plain_mask": False}, {"output_attentions": True}, {"head_mask": torch.ones(4)}):
        assert dispatch.attention_path("sdpa", q, 20, 64, **{**path, **other}) == "eager"
    # The Triton kernel runs on CUDA, or on the CPU only through the interpreter.
    assert dispatch.attention_path("fused", q, 20, 64, **path) == ("fused" if frpe.interpreted() else "eager")


def tiny_config(**overrides) -> NezhaConfig:
    return NezhaConfig(**{"vocab_size": 99, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                          "intermediate_size": 37, "max_relative_position": 16, "hidden_dropout_prob": 0.0,
                          "attention_probs_dropout_prob": 0.0, **overrides})


def model_outputs(model, length: int, **extra):
    """Pretraining loss, logits and every parameter's gradient on a padded batch with an all-padding row."""
    torch.manual_seed(1)
    ids = torch.randint(5, 99, (3, length))
    mask = torch.ones_like(ids)
    mask[1, length // 2:] = 0
    mask[2] = 0
    model.zero_grad()
    out = model(ids, mask, masked_lm_positions=torch.tensor([[1, 2], [3, 0], [1, 4]]),
                labels=torch.tensor([[7, 8], [9, -100], [10, 11]]), next_sentence_label=torch.tensor([0, 1, 0]),
                **extra)
    out.loss.backward()
    return out.loss.detach(), out.prediction_logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_model_on_the_sdpa_path_equals_the_eager_path():
    torch.manual_seed(0)
    model = NezhaForPreTraining(tiny_config()).train()
    eager = model_outputs(model, 17)
    model.set_attn_implementation("sdpa")
    assert model.config.attn_implementation == "sdpa"
    sdpa = model_outputs(model, 17)
    torch.testing.assert_close(sdpa[0], eager[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sdpa[1], eager[1], rtol=1e-5, atol=1e-5)
    for name, g in eager[2].items():
        torch.testing.assert_close(sdpa[2][name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_attn_implementation_is_validated_and_not_written(tmp_path):
    from nezha_cli.errors import ConfigError

    config = tiny_config(attn_implementation="sdpa")
    assert "attn_implementation" not in config.to_dict()  # a run-time choice, as in transformers
    with pytest.raises(ConfigError, match="attn_implementation='flash'"):
        tiny_config(attn_implementation="flash").validate()
    model = NezhaForPreTraining(config)
    model.save_pretrained(tmp_path)
    loaded = NezhaForPreTraining.from_pretrained(tmp_path, attn_implementation="fused")
    assert loaded.config.attn_implementation == "fused"
    assert {m.attn_implementation for m in loaded.modules() if hasattr(m, "attn_implementation")} == {"fused"}
    with pytest.raises(ConfigError, match="attn_implementation='flash_attention_2'"):
        loaded.set_attn_implementation("flash_attention_2")
    assert loaded.config.attn_implementation == "fused"  # left as it was


# ------------------------------------------------------------------------ the Triton kernel, interpreted


def kernel_errors(length: int, K: int, dtype: torch.dtype, device: str = "cpu", depth: int = 16) -> list[float]:
    """Relative errors of the kernel's output and gradients, with padding and an all-padding sequence."""
    q, k, v, grad, valid = inputs(length, depth=depth, seed=length + K)

    def fused(q, k, v):
        return frpe.fused_attention(q.to(device), k.to(device), v.to(device), valid.to(device), None, K,
                                    scale=1 / math.sqrt(q.shape[-1])).cpu()

    return compare(fused, q, k, v, grad, lambda q, k, v: definition(q, k, v, valid, K), dtype)


def query_subset_errors(dtype: torch.dtype, device: str = "cpu") -> list[float]:
    """Five queries at scattered positions per sequence (the last layer under output_positions)."""
    length, K = 130, 64
    q, k, v, grad, valid = inputs(length, seed=3)
    positions = torch.stack([torch.randperm(length, generator=torch.Generator().manual_seed(b))[:5]
                             for b in range(3)])
    rows = torch.stack([q[b][:, positions[b]] for b in range(3)])

    def fused(q, k, v):
        return frpe.fused_attention(q.to(device), k.to(device), v.to(device), valid.to(device), positions.to(device),
                                    K, scale=1 / math.sqrt(q.shape[-1])).cpu()

    return compare(fused, rows, k, v, grad[:, :, :5], lambda q, k, v: definition(q, k, v, valid, K,
                                                                                   query_positions=positions), dtype)


class _GivenMask(torch.autograd.Function):
    """The kernel's forward and backward with a given keep mask (or recording the Philox one)."""

    @staticmethod
    def forward(ctx, q, k, v, valid, K, p, keep, seed, record):
        out, lse = frpe._forward(q, k, v, valid, None, seed, K, 1 / math.sqrt(q.shape[-1]), p, keep=keep,
                                 record=None if record is None else record[0])
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.args = (valid, K, p, keep, seed, record)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, out, lse = ctx.saved_tensors
        valid, K, p, keep, seed, record = ctx.args
        grads = frpe._backward(grad, q, k, v, valid, None, seed, out, lse, K, 1 / math.sqrt(q.shape[-1]), p,
                               keep=keep, record=None if record is None else record[1])
        return (*grads, None, None, None, None, None, None)


def dropout_errors(length: int, K: int, dtype: torch.dtype, device: str = "cpu") -> dict:
    """With an injected keep mask the kernel equals the definition; with Philox, forward and backward draw the
    same mask (recorded by both passes), and the definition with that mask equals the kernel's result."""
    p = 0.2
    q, k, v, grad, valid = inputs(length, heads=2, seed=11)
    keep = torch.rand(3, 2, length, length, generator=torch.Generator().manual_seed(5)) >= p
    result = {}
    result["given"] = compare(
        lambda q, k, v: _GivenMask.apply(q.to(device), k.to(device), v.to(device), valid.to(device), K, p,
                                         keep.to(device), torch.zeros(1, dtype=torch.int64, device=device),
                                         None).cpu(),
        q, k, v, grad, lambda q, k, v: definition(q, k, v, valid, K, drop=keep.to(F64) / (1 - p)), dtype)
    record = torch.zeros(2, 3, 2, length, length, dtype=torch.int8, device=device)
    seed = torch.tensor([1234], device=device)
    errors = compare(
        lambda q, k, v: _GivenMask.apply(q.to(device), k.to(device), v.to(device), valid.to(device), K, p, None,
                                         seed, record).cpu(),
        q, k, v, grad, lambda q, k, v: definition(q, k, v, valid, K, drop=record[0].cpu().to(F64) / (1 - p)), dtype)
    result["philox"] = errors
    result["same_mask"] = bool(torch.equal(record[0], record[1]))
    result["kept"] = record[0].float().mean().item()
    return result


SCRIPT = textwrap.dedent(f"""
    import json, sys, torch
    sys.path.insert(0, {str(Path(__file__).parent)!r})
    import test_modeling_fused_attention as t
    group = sys.argv[1]
    out = {{}}
    if group in ("float32", "bfloat16"):
        dtype = getattr(torch, group)
        for K in t.CLIPS:
            for length in t.LENGTHS:
                out[f"L={{length}} K={{K}}"] = t.kernel_errors(length, K, dtype)
        out["query subset"] = t.query_subset_errors(dtype)
        for depth in (8, 24):  # head sizes below the 16-wide blocks and between powers of 2 (masked columns)
            out[f"d={{depth}}"] = t.kernel_errors(70, 16, dtype, depth=depth)
    elif group == "dropout":
        for length, K in ((66, 8), (130, 64)):
            out[f"L={{length}} K={{K}}"] = t.dropout_errors(length, K, torch.float32)
    else:
        out = getattr(t, group)()
    print("RESULT " + json.dumps(out))
""")


def interpreted(group: str) -> dict:
    pytest.importorskip("triton")
    result = subprocess.run([sys.executable, "-c", SCRIPT, group], env={**os.environ, "TRITON_INTERPRET": "1"},
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_kernel_equals_the_definition_in_the_triton_interpreter(dtype):
    tolerance = TOLERANCE[getattr(torch, dtype)]
    results = interpreted(dtype)
    assert len(results) == len(LENGTHS) * len(CLIPS) + 3
    bad = {case: errors for case, errors in results.items() if max(errors) > tolerance}
    assert not bad, f"out/dq/dk/dv relative errors above {tolerance}: {bad}"


# Shared memory a block may use (CUDA's opt-in maximum): A100, H100.
SHARED_MEMORY = {80: 166912, 90: 232448}


@pytest.mark.slow
@pytest.mark.parametrize("capability", sorted(SHARED_MEMORY))
def test_kernels_compile_for_the_gpu_without_one(capability):
    """The interpreter accepts code the compiler refuses: compile for the GPU here (Triton's CUDA backend, ptxas)."""
    pytest.importorskip("triton")
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        get_ptxas(capability)
    except Exception as error:  # a Triton build without its CUDA backend
        pytest.skip(f"Triton's CUDA backend is not available: {error}")
    kernels = frpe.compile_ahead(capability, torch.bfloat16, dropout_p=0.1)
    assert sorted(kernels) == ["frpe_backward_kv_kernel", "frpe_backward_q_kernel", "frpe_forward_kernel"]
    for name, kernel in kernels.items():
        assert ".entry " + name in kernel.asm["ptx"]
        assert kernel.asm["cubin"], name  # ptxas assembled it
        assert 0 < kernel.metadata.shared <= SHARED_MEMORY[capability], (name, kernel.metadata.shared)


def test_compile_ahead_refuses_the_interpreter_and_an_old_triton(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        frpe.compile_ahead(90)
    monkeypatch.delenv("TRITON_INTERPRET")
    monkeypatch.setattr(dispatch, "ENABLED", True)
    monkeypatch.setattr(dispatch, "_TRITON", (3, 1))
    with pytest.raises(RuntimeError, match="needs Triton 3.2 or newer"):
        frpe.compile_ahead(90)


@pytest.mark.slow
def test_kernel_dropout_in_the_triton_interpreter():
    for case, result in interpreted("dropout").items():
        assert max(result["given"]) < 1e-5, (case, result)
        assert max(result["philox"]) < 1e-5, (case, result)
        assert result["same_mask"], case  # the backward regenerated the forward's mask
        assert 0.78 < result["kept"] < 0.82, (case, result)  # p = 0.2, tens of thousands of draws


def custom_op_checks() -> dict:
    """torch.library's own checks of the op's registration (schema, fake tensor, autograd), and the model
    compiled with fullgraph=True on the fused path against eager."""
    length, K = 40, 16
    q, k, v, _, valid = inputs(length, heads=2)
    q, k, v = (x.float().requires_grad_() for x in (q, k, v))
    positions = torch.arange(length).expand(3, -1)
    seed = torch.zeros(1, dtype=torch.int64)
    torch.library.opcheck(torch.ops.nezha.frpe_attention.default, (q, k, v, valid, positions, seed, K, 0.25, 0.0),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
    models = {}
    for implementation in ("fused", "eager"):
        torch.manual_seed(0)
        models[implementation] = NezhaForPreTraining(tiny_config(attn_implementation=implementation)).train()
    eager = model_outputs(models["fused"], length)
    buckets = model_outputs(models["eager"], length)
    torch.compiler.reset()
    models["fused"].compile(fullgraph=True, backend="aot_eager")  # as training.compile does; a graph break raises
    got = model_outputs(models["fused"], length)
    # Gradients that are 0 in exact arithmetic (the key bias: a softmax ignores a per-row constant) compare at
    # a floor of 1e-6 instead of their own ~1e-11 rounding.
    return {"compiled": [relative_error(got[0], eager[0].double()), relative_error(got[1], eager[1].double())]
            + [relative_error(got[2][n], g.double(), 1e-6) for n, g in eager[2].items()],
            "buckets": [relative_error(eager[0], buckets[0].double()), relative_error(eager[1], buckets[1].double())]
            + [relative_error(eager[2][n], g.double(), 1e-6) for n, g in buckets[2].items()]}


@pytest.mark.slow
def test_custom_op_registration_compile_and_model_parity_in_the_triton_interpreter():
    result = interpreted("custom_op_checks")
    assert max(result["compiled"]) < 1e-5, result  # fullgraph compile == eager on the fused path
    assert max(result["buckets"]) < 1e-4, result  # fused path == bucket path: loss, logits, every gradient


def pretraining_curves(steps: int = 50) -> dict:
    """Loss curves of 50 bf16-autocast LAMB steps on the bucket path and on the fused path: the same model, seed
    and one padded batch (learnt by heart, so that the loss falls far), no dropout (the paths draw differently)."""
    from nezha_cli.engine.optim import Lamb

    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 99, (2, 24), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 18:] = 0
    positions = torch.randint(1, 18, (2, 3), generator=generator)
    curves = {}
    for implementation in ("eager", "fused"):
        torch.manual_seed(0)
        config = tiny_config(attn_implementation=implementation, max_relative_position=8, num_attention_heads=1)
        model = NezhaForPreTraining(config).train()
        optimizer = Lamb(model.parameters(), lr=5e-3)
        losses = []
        for _ in range(steps):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(ids, mask, masked_lm_positions=positions, labels=ids.gather(1, positions),
                            next_sentence_label=torch.tensor([0, 1]))
            out.loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(out.loss.item())
        curves[implementation] = losses
    return curves


@pytest.mark.slow
def test_pretraining_loss_curve_of_the_fused_path_follows_the_bucket_path():
    curves = interpreted("pretraining_curves")
    eager, fused = curves["eager"], curves["fused"]
    assert len(eager) == len(fused) == 50
    assert eager[-1] < eager[0] - 0.5  # it learns
    # bf16 autocast: both round their operands to bf16, in other places.
    assert max(abs(a - b) / abs(b) for a, b in zip(fused, eager)) < 1e-2, (eager, fused)


def checkpointing_with_dropout() -> dict:
    """Attention dropout on the fused path: seeded runs repeat, and gradient checkpointing (which recomputes each
    layer with the RNG state of its forward) gives the same gradients: the kernel's Philox seed comes from torch's
    generator, so the recomputation draws the same mask."""
    runs = []
    for checkpointing in (False, False, True):
        torch.manual_seed(0)
        model = NezhaForPreTraining(tiny_config(attn_implementation="fused", attention_probs_dropout_prob=0.3,
                                                hidden_dropout_prob=0.1)).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        runs.append(model_outputs(model, 40))
    seeded, checkpointed = runs[0], runs[2]
    torch.manual_seed(0)
    model = NezhaForPreTraining(tiny_config(attn_implementation="fused", hidden_dropout_prob=0.1)).train()
    undropped = model_outputs(model, 40)  # the same run without attention dropout
    return {"dropped": relative_error(undropped[1], seeded[1].double()),
            "repeat": [relative_error(runs[1][0], seeded[0].double())]
            + [relative_error(runs[1][2][n], g.double(), 1e-6) for n, g in seeded[2].items()],
            "checkpointed": [relative_error(checkpointed[0], seeded[0].double())]
            + [relative_error(checkpointed[2][n], g.double(), 1e-6) for n, g in seeded[2].items()]}


@pytest.mark.slow
def test_fused_dropout_repeats_and_survives_gradient_checkpointing_in_the_triton_interpreter():
    result = interpreted("checkpointing_with_dropout")
    assert result["dropped"] > 1e-3, result  # attention dropout does act on the fused path
    assert max(result["repeat"]) == 0.0, result
    assert max(result["checkpointed"]) < 1e-6, result


def test_cli_offers_the_model_attention_implementations():
    from nezha_cli import cli
    from nezha_cli.modeling.configuration import ATTENTION_IMPLEMENTATIONS

    assert cli.ATTENTION_IMPLEMENTATIONS == ATTENTION_IMPLEMENTATIONS  # spelled out there to keep torch out of --help


def test_training_attention_is_validated_and_set_on_the_model():
    from nezha_cli.engine import TrainingArguments
    from nezha_cli.engine.trainer import set_attention
    from nezha_cli.errors import ConfigError

    with pytest.raises(ConfigError, match="attention='flash': use one of eager, sdpa, fused"):
        TrainingArguments(output_dir="x", max_steps=1, attention="flash")
    model = NezhaForPreTraining(tiny_config())
    set_attention(model, "sdpa")
    assert {m.attn_implementation for m in model.modules() if hasattr(m, "attn_implementation")} == {"sdpa"}
    with pytest.raises(ConfigError, match="has no set_attn_implementation"):
        set_attention(torch.nn.Linear(2, 2), "sdpa")


def test_fused_attention_where_it_cannot_run_says_so_once(caplog):
    from nezha_cli.engine.trainer import set_attention

    model = NezhaForPreTraining(tiny_config())
    with caplog.at_level("WARNING", logger="nezha_cli"):
        set_attention(model, "fused", torch.device("cpu"))
    runs_here = frpe.interpreted() and dispatch._HAS_TRITON
    assert ("needs a CUDA GPU with Triton; this is a cpu; the eager attention runs instead" in caplog.text) \
        != runs_here


def test_fused_attention_on_cuda_needs_triton_3_2(monkeypatch):
    """Triton 3.0 and 3.1 abort compiling the kernels for Hopper: the eager path serves there, and says why."""
    cuda = torch.device("cuda")
    monkeypatch.setattr(dispatch, "ENABLED", True)
    for version, runs in (((3, 1), False), ((3, 2), True), ((3, 6), True), (None, False)):
        monkeypatch.setattr(dispatch, "_TRITON", version)
        monkeypatch.setattr(dispatch, "_HAS_TRITON", version is not None)
        assert dispatch.fused_attention_runs_on(cuda) == runs, version
    monkeypatch.setattr(dispatch, "_TRITON", (3, 1))
    assert "needs Triton 3.2 or newer" in dispatch.fused_attention_unavailable(cuda)
    assert "Triton 3.1 is installed" in dispatch.fused_attention_unavailable(cuda)
    q = torch.randn(1, 1, 4, 8)
    with pytest.raises(RuntimeError, match="needs Triton 3.2 or newer"):  # called directly: refused, not compiled
        frpe.fused_attention(q, q, q, max_relative_position=8)
    monkeypatch.setattr(dispatch, "_TRITON", (3, 6))
    monkeypatch.setattr(dispatch, "ENABLED", False)
    assert "NEZHA_TRITON=0" in dispatch.fused_attention_unavailable(cuda)


def test_triton_version_is_read_without_importing_it():
    version = dispatch._triton_version()
    if importlib.util.find_spec("triton") is None:
        assert version is None
    else:
        assert version >= (3, 0)
        assert version[:2] == tuple(int(x) for x in importlib.metadata.version("triton").split(".")[:2])
