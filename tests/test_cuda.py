"""CUDA paths: the same model, attention and engine on a GPU. CI has no GPU, so these skip there; run them on one.

    pytest tests/test_cuda.py
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from pretrain_fixtures import TINY_MODEL, write_masked_data
from test_modeling_relative_attention import reference_attention, reference_relations
from test_relative_kernels import LENGTHS, check_kernels_against_pytorch_ops

from nezha_cli.engine.metrics_log import read_metrics
from nezha_cli.modeling import NezhaConfig, NezhaForPreTraining, NezhaModel
from nezha_cli.modeling.relative_attention import (
    RelativePositions,
    relative_context,
    relative_position_table,
    relative_scores,
)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

KW = dict(vocab_size=99, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
          max_position_embeddings=64, max_relative_position=8, hidden_dropout_prob=0.0,
          attention_probs_dropout_prob=0.0)


@pytest.fixture(autouse=True)
def _no_tf32():
    # fp32 comparisons must not run through TF32 tensor cores (10-bit mantissa).
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = saved


def pretraining_batch(length: int, batch: int = 2, device: str = "cuda") -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(length)
    ids = torch.randint(5, 99, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[-1, length - length // 4:] = 0
    types = (torch.arange(length) >= length // 2).long().expand(batch, -1).contiguous()
    labels = torch.full_like(ids, -100)
    labels[:, 1:length:7] = ids[:, 1:length:7]
    x = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "labels": labels,
         "next_sentence_label": torch.tensor([0, 1] * (batch // 2))}
    return {k: v.to(device) for k, v in x.items()}


# K = 8: below K (only the reachable buckets), between K and 2K (corner sums), beyond 2K (block sums).
@pytest.mark.parametrize("length", [7, 12, 40])
def test_attention_core_on_cuda_matches_the_paper_formulas(length):
    torch.manual_seed(0)
    k, d = 8, 16
    table = relative_position_table(k, d).cuda()
    pos = RelativePositions.build(length, k, device="cuda")
    q, key, v = (torch.randn(2, 3, length, d, device="cuda", requires_grad=True) for _ in range(3))
    mask = torch.zeros(2, 1, 1, length, device="cuda")
    mask[1, ..., length - 3:] = torch.finfo(torch.float32).min
    scale = 1 / math.sqrt(d)
    ours = relative_context(torch.softmax(relative_scores(q * scale, key, table, pos) + mask, -1), v, table, pos)
    a = reference_relations(length, k, d).float().cuda()
    ref = reference_attention(q, key, v, a, mask, scale)
    assert (ours - ref).abs().max() <= 1e-5
    g = torch.randn_like(ref)
    ours_grads = torch.autograd.grad((ours * g).sum(), (q, key, v))
    for x, y in zip(ours_grads, torch.autograd.grad((ref * g).sum(), (q, key, v))):
        assert (x - y).abs().max() <= 1e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("length", LENGTHS)
def test_bucket_kernels_on_cuda_match_the_pytorch_ops(length, dtype):
    """The Triton gather and bucket sums against the PyTorch ops they replace, and the attention core with them."""
    pytest.importorskip("triton")
    from nezha_cli.modeling.kernels import dispatch as relative_kernels

    assert relative_kernels.available(torch.zeros(1, device="cuda", dtype=dtype))
    check_kernels_against_pytorch_ops(length, dtype, "cuda")


def test_parity_with_transformers_on_cuda():
    hf = pytest.importorskip("transformers.models.deprecated.nezha.modeling_nezha")
    hf_config = pytest.importorskip("transformers.models.deprecated.nezha.configuration_nezha")
    torch.manual_seed(0)
    ours = NezhaForPreTraining(NezhaConfig(**KW)).cuda().eval()
    reference = hf.NezhaForPreTraining(hf_config.NezhaConfig(**KW))
    reference.load_state_dict(ours.state_dict(), strict=False)
    reference = reference.cuda().eval()
    x = pretraining_batch(24)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a, b = ours(**x), reference(**x)
    for name in ("prediction_logits", "seq_relationship_logits", "loss"):
        assert (getattr(a, name) - getattr(b, name)).abs().max() <= 1e-5, name


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_training_step_on_cuda_tracks_fp32(dtype):
    torch.manual_seed(0)
    model = NezhaForPreTraining(NezhaConfig(**KW)).cuda().train()
    x = pretraining_batch(48, batch=4)
    reference = model(**x)
    reference.loss.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=dtype):
        out = model(**x)
    assert out.prediction_logits.dtype == dtype
    out.loss.backward()
    assert abs(out.loss.item() - reference.loss.item()) <= 2e-2 * reference.loss.item()
    for name, p in model.named_parameters():
        if name in ref_grads:
            assert torch.isfinite(p.grad).all(), name
    # All gradients as one vector: the key bias's gradient is zero in exact arithmetic, noise in any other.
    ours = torch.cat([p.grad.float().flatten() for n, p in model.named_parameters() if n in ref_grads])
    expected = torch.cat([g.flatten() for g in ref_grads.values()])
    assert (ours - expected).norm() <= 0.05 * expected.norm()


def test_three_times_max_position_embeddings_on_cuda():
    """Training (custom autograd) and inference (plain ops) paths agree at 3 x max_position_embeddings."""
    torch.manual_seed(0)
    model = NezhaModel(NezhaConfig(**KW)).cuda().eval()
    length = 3 * KW["max_position_embeddings"]
    x = pretraining_batch(length)
    args = {k: x[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        inference = model(**args).last_hidden_state
    training = model(**args).last_hidden_state
    assert inference.shape == (2, length, KW["hidden_size"])
    assert (inference - training).abs().max() <= 1e-5


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_trainer_mixed_precision_on_cuda(tmp_path, precision):
    """The engine through accelerate on a GPU: the precision asked for, loss falling, fp16 loss scaling counted."""
    from nezha_cli.engine import Trainer, TrainingArguments
    from nezha_cli.pretraining.data import load_pretraining_data, make_collators
    from nezha_cli.pretraining.run import pretraining_step

    data = load_pretraining_data(write_masked_data(tmp_path / "data", n=96))
    args = TrainingArguments(output_dir=tmp_path / "run", global_batch_size=8, per_device_batch_size=8,
                             max_steps=40, optimizer="adamw", learning_rate=1e-2, warmup_steps=2, logging_steps=5,
                             save_steps=20, progress=False, tensorboard=False, seed=1, mixed_precision=precision)
    collate, _ = make_collators(data, args.seed)
    torch.manual_seed(0)
    model = NezhaForPreTraining(NezhaConfig(vocab_size=40, **TINY_MODEL))
    result = Trainer(model, args, data.train, collate, pretraining_step).train()
    assert result.mixed_precision == precision
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert records[-1]["mlm_loss"] < 0.92 * records[0]["mlm_loss"]
    assert all(math.isfinite(r["loss"]) for r in records)
    assert next(model.parameters()).device.type == "cuda"
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
    if precision == "bf16":
        assert result.overflow_steps == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_crf_tagger_on_cuda_matches_cpu(dtype):
    """The CRF's likelihood on a GPU (fp32, and under autocast: it computes in fp32 from the low-precision
    emissions) against the same model on the CPU; its transitions get gradients and decode after leaving the GPU."""
    from nezha_cli.modeling import NezhaForTokenClassification
    from nezha_cli.tasks.token_classification import decode_tags

    labels_names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    torch.manual_seed(0)
    config = NezhaConfig(**KW, id2label=dict(enumerate(labels_names)), use_crf=True)
    model = NezhaForTokenClassification(config).eval()  # no classifier dropout: the same function on both
    with torch.no_grad():
        for p in model.crf.parameters():
            p.normal_()
    ids = torch.randint(5, 99, (3, 30))
    labels = torch.randint(0, 5, (3, 30))
    labels[:, 0] = -100
    labels[1, 20:] = -100
    labels[2, 3::4] = -100
    cpu = model(ids, labels=labels)
    gpu_model = model.cuda()
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        out = gpu_model(ids.cuda(), labels=labels.cuda())
    out.loss.backward()
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    assert abs(out.loss.item() - cpu.loss.item()) <= tolerance * cpu.loss.item()
    assert all(torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in gpu_model.crf.parameters())
    tags = decode_tags(out.logits[0].float().detach().cpu().numpy(), model.config.id2label,
                       gpu_model.crf.numpy_transitions())
    assert len(tags) == 30 and set(tags) <= set(labels_names)


def test_finetune_with_crf_on_cuda(tmp_path):
    """`nezha finetune --crf` through accelerate on a GPU in bf16, then `nezha evaluate` of the result."""
    import json

    from test_cli_finetune import finetune_crf_tagger, ok, read_metrics, run

    out, gold, _ = finetune_crf_tagger(tmp_path, "--epochs", "3", "--learning-rate", "1e-2",
                                       "--mixed-precision", "bf16")
    logged = [r["eval_f1"] for r in read_metrics(out) if "eval_f1" in r]
    assert len(logged) == 3
    metrics = tmp_path / "m.json"
    ok(run("evaluate", "pd-ner", "--model", out / "final", "--file", gold, "--output", metrics))
    assert json.loads(metrics.read_text(encoding="utf-8"))["f1"] == pytest.approx(max(logged))


# -- the fused forms of the attention (nezha_cli.modeling.kernels.frpe), compiled: the interpreter's checks ------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fused_kernel_on_cuda_equals_the_definition(dtype):
    from test_modeling_fused_attention import CLIPS, kernel_errors, query_subset_errors
    from test_modeling_fused_attention import LENGTHS as FUSED_LENGTHS

    tolerance = 1e-5 if dtype == torch.float32 else 1e-2
    for K in CLIPS:
        for length in FUSED_LENGTHS:
            errors = kernel_errors(length, K, dtype, "cuda")
            assert max(errors) < tolerance, (length, K, errors)
    assert max(query_subset_errors(dtype, "cuda")) < tolerance


def test_fused_kernel_dropout_on_cuda():
    from test_modeling_fused_attention import dropout_errors

    for length, K in ((66, 8), (130, 64), (600, 64)):
        result = dropout_errors(length, K, torch.float32, "cuda")
        assert max(result["given"]) < 1e-5 and max(result["philox"]) < 1e-5, (length, K, result)
        assert result["same_mask"] and 0.78 < result["kept"] < 0.82, (length, K, result)


@pytest.mark.parametrize("length", [1, 9, 40, 65])
def test_sdpa_form_on_cuda_equals_the_definition(length):
    from test_modeling_fused_attention import compare, definition, inputs

    from nezha_cli.modeling.kernels import frpe
    from nezha_cli.modeling.modeling_nezha import extended_attention_mask

    q, k, v, grad, valid = inputs(length, heads=2)
    for dtype, tolerance in ((torch.float32, 1e-5), (torch.bfloat16, 1e-2)):
        mask = extended_attention_mask(valid.cuda(), dtype)
        errors = compare(lambda q, k, v, mask=mask: frpe.sdpa_attention(q.cuda() / math.sqrt(q.shape[-1]), k.cuda(),
                                                                        v.cuda(), mask, 64).cpu(),
                         q, k, v, grad, lambda q, k, v: definition(q, k, v, valid, 64), dtype)
        assert max(errors) < tolerance, (dtype, errors)


@pytest.mark.parametrize("implementation", ["fused", "sdpa"])
def test_model_on_the_fused_paths_on_cuda_equals_eager(implementation):
    from test_modeling_fused_attention import model_outputs, relative_error, tiny_config

    results = {}
    for name in ("eager", implementation):
        torch.manual_seed(0)
        model = NezhaForPreTraining(tiny_config(attn_implementation=name)).cuda().train()
        results[name] = model_outputs(_OnDevice(model), 17 if implementation == "sdpa" else 40)
    eager, got = results["eager"], results[implementation]
    assert relative_error(got[0].cpu(), eager[0].cpu().double()) < 1e-5
    assert relative_error(got[1].cpu(), eager[1].cpu().double()) < 1e-4
    for n, g in eager[2].items():
        assert relative_error(got[2][n].cpu(), g.cpu().double(), 1e-6) < 1e-4, n


class _OnDevice(torch.nn.Module):
    """The model with its (CPU-built) inputs moved to its device."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, *args, **kwargs):
        move = lambda x: x.cuda() if isinstance(x, torch.Tensor) else x  # noqa: E731
        return self.model(*map(move, args), **{k: move(v) for k, v in kwargs.items()})

    def named_parameters(self, *args, **kwargs):
        return self.model.named_parameters(*args, **kwargs)


def test_fused_model_compiles_with_inductor_on_cuda():
    from test_modeling_fused_attention import model_outputs, relative_error, tiny_config

    torch.manual_seed(0)
    model = NezhaForPreTraining(tiny_config(attn_implementation="fused")).cuda().train()
    eager = model_outputs(_OnDevice(model), 40)
    model.compile(fullgraph=True)
    got = model_outputs(_OnDevice(model), 40)
    assert relative_error(got[1].cpu(), eager[1].cpu().double()) < 1e-4
    for n, g in eager[2].items():
        assert relative_error(got[2][n].cpu(), g.cpu().double(), 1e-6) < 1e-3, n
