"""Parity with transformers' Nezha classes (the optional `parity` extra), in both load directions."""

import warnings

import pytest
import torch

from nezha_cli import modeling as ours

hf = pytest.importorskip("transformers.models.deprecated.nezha.modeling_nezha")
hf_config = pytest.importorskip("transformers.models.deprecated.nezha.configuration_nezha")

NAMES = ["NezhaModel", "NezhaForPreTraining", "NezhaForMaskedLM", "NezhaForNextSentencePrediction",
         "NezhaForSequenceClassification", "NezhaForMultipleChoice", "NezhaForTokenClassification",
         "NezhaForQuestionAnswering"]
KW = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
          max_position_embeddings=64, max_relative_position=8)


def batch(name, length=24):
    torch.manual_seed(3)
    ids = torch.randint(1, 99, (2, length))
    mask = torch.ones(2, length, dtype=torch.long)
    mask[1, length - 7:] = 0
    types = torch.zeros(2, length, dtype=torch.long)
    types[:, length // 2:] = 1
    x = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    if name == "NezhaForMultipleChoice":
        x = {k: v[None].repeat(3, 1, 1) for k, v in x.items()}
    return x


def outputs(model, x):
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = model(**x)
    return [t for t in out.to_tuple()[:2] if isinstance(t, torch.Tensor)]


@pytest.mark.parametrize("name", NAMES)
def test_transformers_checkpoint_loads_here(name, tmp_path):
    torch.manual_seed(0)
    reference = getattr(hf, name)(hf_config.NezhaConfig(**KW)).eval()
    reference.save_pretrained(tmp_path)
    model, report = getattr(ours, name).from_pretrained(tmp_path, output_loading_info=True)
    assert report.missing == report.unexpected == report.mismatched == report.newly_initialized == []
    for a, b in zip(outputs(reference, batch(name)), outputs(model.eval(), batch(name))):
        assert (a - b).abs().max() <= 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_our_checkpoint_loads_in_transformers(name, tmp_path):
    torch.manual_seed(0)
    model = getattr(ours, name)(ours.NezhaConfig(**KW)).eval()
    model.save_pretrained(tmp_path)
    reference, info = getattr(hf, name).from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == []
    for a, b in zip(outputs(reference.eval(), batch(name)), outputs(model, batch(name))):
        assert (a - b).abs().max() <= 1e-5


def test_training_step_gradients_match_transformers(tmp_path):
    torch.manual_seed(0)
    reference = hf.NezhaForPreTraining(hf_config.NezhaConfig(**KW, hidden_dropout_prob=0.0,
                                                             attention_probs_dropout_prob=0.0))
    reference.save_pretrained(tmp_path)
    model = ours.NezhaForPreTraining.from_pretrained(tmp_path, hidden_dropout_prob=0.0,
                                                     attention_probs_dropout_prob=0.0)
    x = batch("NezhaForPreTraining", length=60)  # longer than 2K + 1: the clipped buckets are exercised
    labels = torch.full((2, 60), -100)
    labels[:, ::7] = 5
    nsp = torch.tensor([0, 1])
    reference(**x, labels=labels, next_sentence_label=nsp).loss.backward()
    model(**x, labels=labels, next_sentence_label=nsp).loss.backward()
    ours_grads = dict(model.named_parameters())
    for name, p in reference.named_parameters():
        assert (p.grad - ours_grads[name].grad).abs().max() <= 1e-5, name


@pytest.mark.parametrize("is_decoder", [False, True])
def test_module_helpers_equal_transformers(is_decoder):
    """get_extended_attention_mask, invert_attention_mask, get_memory_footprint, estimate_tokens and
    floating_point_ops, which code built around a transformers model calls."""
    torch.manual_seed(0)
    reference = hf.NezhaModel(hf_config.NezhaConfig(**KW, is_decoder=is_decoder)).eval()
    model = ours.NezhaModel(ours.NezhaConfig(**KW, is_decoder=is_decoder)).eval()
    x = batch("NezhaModel")
    mask2, mask3 = x["attention_mask"], x["attention_mask"][:, None, :].repeat(1, 24, 1)
    for mask in (mask2, mask3):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = reference.get_extended_attention_mask(mask, mask2.shape)
        torch.testing.assert_close(model.get_extended_attention_mask(mask, mask2.shape), expected, rtol=0, atol=0)
        torch.testing.assert_close(model.invert_attention_mask(mask), reference.invert_attention_mask(mask),
                                   rtol=0, atol=0)
    assert model.get_memory_footprint(return_buffers=False) == reference.get_memory_footprint(return_buffers=False)
    # transformers' layers each hold an [L, L, d] table of relative vectors as a buffer; ours build them per call.
    buffers = sum(b.nelement() * b.element_size() for b in model.buffers())
    assert model.get_memory_footprint() == model.get_memory_footprint(return_buffers=False) + buffers
    assert model.estimate_tokens(x) == reference.estimate_tokens(x) == 48
    assert model.floating_point_ops(x) == reference.floating_point_ops(x)
    assert model.floating_point_ops(x, exclude_embeddings=False) == reference.floating_point_ops(x, False)
