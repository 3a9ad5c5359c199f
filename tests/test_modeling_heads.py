
import pytest
import torch

from nezha_cli.errors import CheckpointError
from nezha_cli.modeling import (
    MODEL_CLASSES,
    NezhaConfig,
    NezhaForMaskedLM,
    NezhaForPreTraining,
    NezhaForQuestionAnswering,
    NezhaForSequenceClassification,
    NezhaForTokenClassification,
    NezhaModel,
    load_model,
)

B, L, V = 2, 11, 60


def tiny_config(**kw):
    return NezhaConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                       max_position_embeddings=32, max_relative_position=4, **kw)


def inputs(choices=None):
    torch.manual_seed(1)
    shape = (B, L) if choices is None else (B, choices, L)
    ids = torch.randint(1, V, shape)
    mask = torch.ones(shape, dtype=torch.long)
    mask[..., 1, 8:] = 0  # padding in the second row
    types = torch.zeros(shape, dtype=torch.long)
    types[..., 6:] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


CASES = {
    "NezhaModel": ({}, lambda o: o.last_hidden_state.shape == (B, L, 32) and o.pooler_output.shape == (B, 32)),
    "NezhaForPreTraining": (
        {"labels": torch.full((B, L), -100).index_fill_(1, torch.tensor([2, 5]), 7),
         "next_sentence_label": torch.tensor([0, 1])},
        lambda o: o.prediction_logits.shape == (B, L, V) and o.seq_relationship_logits.shape == (B, 2),
    ),
    "NezhaForMaskedLM": ({"labels": torch.full((B, L), -100).index_fill_(1, torch.tensor([3]), 4)},
                         lambda o: o.logits.shape == (B, L, V)),
    "NezhaForNextSentencePrediction": ({"labels": torch.tensor([1, 0])}, lambda o: o.logits.shape == (B, 2)),
    "NezhaForSequenceClassification": ({"labels": torch.tensor([1, 0])}, lambda o: o.logits.shape == (B, 2)),
    "NezhaForTokenClassification": ({"labels": torch.randint(0, 2, (B, L))}, lambda o: o.logits.shape == (B, L, 2)),
    "NezhaForQuestionAnswering": (
        {"start_positions": torch.tensor([1, 3]), "end_positions": torch.tensor([2, 50])},  # 50: outside, ignored
        lambda o: o.start_logits.shape == (B, L) and o.end_logits.shape == (B, L),
    ),
    "NezhaForMultipleChoice": ({"labels": torch.tensor([2, 0])}, lambda o: o.logits.shape == (B, 3)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_head_shapes_loss_and_gradients(name):
    torch.manual_seed(0)
    model = MODEL_CLASSES[name](tiny_config())
    extra, check = CASES[name]
    out = model(**inputs(3 if name == "NezhaForMultipleChoice" else None), **extra)
    assert check(out)
    if name == "NezhaModel":
        loss = out.last_hidden_state.pow(2).mean() + out.pooler_output.sum()
    else:
        loss = out.loss
        assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    if name == "NezhaForMultipleChoice":
        # One bias shared by all choices shifts every logit alike: the softmax loss's gradient for it is zero
        # (up to rounding), so only require that it has a gradient at all.
        assert model.classifier.bias.grad is not None
        no_grad = [n for n in no_grad if n != "classifier.bias"]
    # token_type row 1 is used; every parameter (including the tied decoder and pooler) gets a gradient.
    assert no_grad == []


def test_output_tuple_access_like_transformers():
    model = NezhaForSequenceClassification(tiny_config()).eval()
    out = model(**inputs(), labels=torch.tensor([1, 0]))
    assert out[0] is out.loss and out[1] is out.logits and out["logits"] is out.logits
    assert len(out.to_tuple()) == 2


def test_sequence_classification_losses():
    torch.manual_seed(0)
    x = inputs()
    reg = NezhaForSequenceClassification(tiny_config(num_labels=1)).eval()
    out = reg(**x, labels=torch.tensor([0.5, -1.0]))
    assert torch.allclose(out.loss, torch.nn.functional.mse_loss(out.logits.squeeze(), torch.tensor([0.5, -1.0])))
    multi = NezhaForSequenceClassification(tiny_config(num_labels=3)).eval()
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    out = multi(**x, labels=targets)
    assert torch.allclose(out.loss, torch.nn.functional.binary_cross_entropy_with_logits(out.logits, targets))
    out = multi(**x, labels=torch.tensor([2, 0]))
    assert torch.allclose(out.loss, torch.nn.functional.cross_entropy(out.logits, torch.tensor([2, 0])))


def test_masked_positions_equal_full_computation():
    torch.manual_seed(0)
    model = NezhaForPreTraining(tiny_config()).eval()
    x = inputs()
    positions = torch.tensor([[1, 4, 7], [2, 3, 0]])
    labels = torch.tensor([[5, 6, 7], [8, 9, -100]])  # the last one is padding
    full_labels = torch.full((B, L), -100)
    full_labels[0, [1, 4, 7]] = torch.tensor([5, 6, 7])
    full_labels[1, [2, 3]] = torch.tensor([8, 9])
    nsp = torch.tensor([0, 1])
    sparse = model(**x, masked_lm_positions=positions, labels=labels, next_sentence_label=nsp)
    full = model(**x, labels=full_labels, next_sentence_label=nsp)
    assert sparse.prediction_logits.shape == (B, 3, V)
    assert torch.allclose(sparse.prediction_logits[0], full.prediction_logits[0, [1, 4, 7]], atol=1e-6)
    assert torch.allclose(sparse.loss, full.loss, atol=1e-6)


def test_mlm_decoder_is_tied_to_word_embeddings():
    model = NezhaForMaskedLM(tiny_config())
    assert model.cls.predictions.decoder.weight is model.nezha.embeddings.word_embeddings.weight
    assert model.cls.predictions.decoder.bias is model.cls.predictions.bias


@pytest.mark.parametrize("name", list(MODEL_CLASSES))
def test_save_load_round_trip_is_bit_exact(name, tmp_path):
    torch.manual_seed(0)
    model = MODEL_CLASSES[name](tiny_config()).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").is_file() and (tmp_path / "model.safetensors").is_file()
    loaded, report = MODEL_CLASSES[name].from_pretrained(tmp_path, output_loading_info=True)
    assert report.missing == report.unexpected == report.mismatched == report.newly_initialized == []
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2), n1
    assert type(load_model(tmp_path)) is MODEL_CLASSES[name]
    x = inputs(3 if name == "NezhaForMultipleChoice" else None)
    with torch.no_grad():
        assert torch.equal(model(**x)[0], loaded.eval()(**x)[0])


def test_state_dict_has_no_relative_table():
    keys = NezhaForPreTraining(tiny_config()).state_dict().keys()
    assert not any("relative" in k or "position" in k for k in keys)


def test_new_head_on_pretrained_body_is_reported_as_info(tmp_path, caplog):
    NezhaForPreTraining(tiny_config()).save_pretrained(tmp_path)
    with caplog.at_level("INFO", logger="nezha_cli"):
        model, report = NezhaForSequenceClassification.from_pretrained(tmp_path, num_labels=3,
                                                                       output_loading_info=True)
    assert model.classifier.out_features == 3
    assert report.newly_initialized == ["classifier.weight", "classifier.bias"]
    assert report.missing == [] and "cls.seq_relationship.weight" in report.unexpected
    assert any("newly initialised" in r.message and r.levelname == "INFO" for r in caplog.records)


def test_body_checkpoint_loads_into_head_and_back(tmp_path):
    torch.manual_seed(0)
    body = NezhaModel(tiny_config())
    body.save_pretrained(tmp_path / "body")
    tc = NezhaForTokenClassification.from_pretrained(tmp_path / "body")
    assert torch.equal(tc.nezha.embeddings.word_embeddings.weight, body.embeddings.word_embeddings.weight)
    tc.save_pretrained(tmp_path / "tc")
    body2, report = NezhaModel.from_pretrained(tmp_path / "tc", output_loading_info=True)
    assert torch.equal(body2.encoder.layer[1].output.dense.weight, body.encoder.layer[1].output.dense.weight)
    assert "classifier.weight" in report.unexpected
    assert report.missing == ["pooler.dense.weight", "pooler.dense.bias"]  # token classification has no pooler


def test_mismatched_shapes_are_reported(tmp_path, caplog):
    NezhaForSequenceClassification(tiny_config(num_labels=3)).save_pretrained(tmp_path)
    with caplog.at_level("WARNING", logger="nezha_cli"):
        _, report = NezhaForSequenceClassification.from_pretrained(
            tmp_path, config=tiny_config().replace(num_labels=2), output_loading_info=True,
            ignore_mismatched_sizes=True)
    assert sorted(m[0] for m in report.mismatched) == ["classifier.bias", "classifier.weight"]
    assert sorted(report["mismatched_keys"]) == [("classifier.bias", (3,), (2,)),
                                                 ("classifier.weight", (3, 32), (2, 32))]
    assert any("classifier.weight has shape [3, 32]" in r.message for r in caplog.records)
    # Without ignore_mismatched_sizes, as in transformers, a shape that does not fit is an error.
    with pytest.raises(CheckpointError, match="ignore_mismatched_sizes=True"):
        NezhaForSequenceClassification.from_pretrained(tmp_path, num_labels=2)
    with pytest.raises(CheckpointError, match="does not fit"):
        NezhaForSequenceClassification.from_pretrained(
            tmp_path, config=tiny_config().replace(num_labels=2), strict=True)


def test_pytorch_model_bin_is_loaded_without_unpickling_code(tmp_path):
    model = NezhaForQuestionAnswering(tiny_config())
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    loaded = NezhaForQuestionAnswering.from_pretrained(tmp_path)
    assert torch.equal(loaded.qa_outputs.weight, model.qa_outputs.weight)

    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    torch.save({"x": Evil()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="cannot read weights"):
        NezhaForQuestionAnswering.from_pretrained(tmp_path)


@pytest.mark.parametrize("missing, message", [("config.json", "weights without config.json .* pass config="),
                                              ("model.safetensors", "model directory")])
def test_incomplete_model_directory(tmp_path, missing, message):
    NezhaModel(tiny_config()).save_pretrained(tmp_path)
    (tmp_path / missing).unlink()
    with pytest.raises(CheckpointError, match=message):
        NezhaModel.from_pretrained(tmp_path)


def test_input_of_three_times_max_position_embeddings():
    config = tiny_config()
    model = NezhaForMaskedLM(config).eval()
    ids = torch.randint(1, V, (1, 3 * config.max_position_embeddings))
    with torch.no_grad():
        assert model(ids).logits.shape == (1, 96, V)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_on_cpu_runs_forward_and_backward(dtype):
    torch.manual_seed(0)
    model = NezhaForPreTraining(tiny_config())
    x = inputs()
    with torch.autocast("cpu", dtype=dtype):
        out = model(**x, masked_lm_positions=torch.tensor([[1, 2], [3, 4]]), labels=torch.tensor([[5, 6], [7, -100]]),
                    next_sentence_label=torch.tensor([0, 1]))
    assert out.prediction_logits.dtype == dtype
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_half_precision_weights_run():
    model = NezhaForSequenceClassification(tiny_config()).eval().to(torch.bfloat16)
    with torch.no_grad():
        logits = model(**inputs()).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    config = tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    a = NezhaForMaskedLM(config)
    b = NezhaForMaskedLM(config)
    b.load_state_dict(a.state_dict())
    b.gradient_checkpointing_enable()
    labels = torch.randint(0, V, (B, L))
    for m in (a, b):
        m(**inputs(), labels=labels).loss.backward()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), n


def no_dropout_config():
    return tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0)


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("length", [11, 29])  # 29 > 6K: whole blocks and remainders of the clipped buckets
def test_output_positions_equal_the_full_last_layer_gathered(length):
    torch.manual_seed(0)
    model = NezhaModel(no_dropout_config())
    ids = torch.randint(1, V, (B, length))
    mask = torch.ones(B, length, dtype=torch.long)
    mask[1, length - 3:] = 0
    positions = torch.tensor([[1, 4, length - 1], [length - 5, 2, 2]])  # unsorted, repeated: any rows work

    full = model(ids, attention_mask=mask)
    (full.last_hidden_state.gather(1, positions[..., None].expand(-1, -1, 32)).pow(2).sum()
     + full.pooler_output.sum()).backward()
    full_grads = _grads(model)
    model.zero_grad(set_to_none=True)
    rows = model(ids, attention_mask=mask, output_positions=positions)
    (rows.last_hidden_state.pow(2).sum() + rows.pooler_output.sum()).backward()

    assert rows.last_hidden_state.shape == (B, 3, 32)
    torch.testing.assert_close(rows.last_hidden_state,
                               full.last_hidden_state.gather(1, positions[..., None].expand(-1, -1, 32)))
    torch.testing.assert_close(rows.pooler_output, full.pooler_output)
    rows_grads = _grads(model)
    assert rows_grads.keys() == full_grads.keys()
    for name, grad in full_grads.items():
        # Same math, other summation order: rounding relative to the largest entry.
        torch.testing.assert_close(rows_grads[name], grad, rtol=1e-5, atol=1e-6 + 1e-5 * grad.abs().max().item())


def test_output_positions_with_a_per_query_mask_and_gradient_checkpointing():
    torch.manual_seed(0)
    model = NezhaModel(no_dropout_config()).train()
    model.gradient_checkpointing_enable()
    ids = torch.randint(1, V, (B, L))
    causal = torch.tril(torch.ones(L, L, dtype=torch.long)).expand(B, -1, -1)  # a [B, L, L] mask
    positions = torch.tensor([[3, 7], [10, 0]])
    full = model(ids, attention_mask=causal).last_hidden_state
    rows = model(ids, attention_mask=causal, output_positions=positions).last_hidden_state
    torch.testing.assert_close(rows, full.gather(1, positions[..., None].expand(-1, -1, 32)))


def test_pooled_heads_compute_only_cls_in_the_last_layer():
    """Classification reads [CLS] alone; its logits and gradients equal the full computation's."""
    torch.manual_seed(0)
    model = NezhaForSequenceClassification(no_dropout_config())
    calls = []
    model.nezha.encoder.layer[-1].intermediate.register_forward_hook(lambda m, i, o: calls.append(o.shape))
    out = model(**inputs(), labels=torch.tensor([1, 0]))
    out.loss.backward()
    sparse_grads = _grads(model)
    model.zero_grad(set_to_none=True)
    # Per-layer outputs keep the full shape, as in transformers, so they take the full last layer.
    full = model(**inputs(), labels=torch.tensor([1, 0]), output_hidden_states=True)
    full.loss.backward()
    assert calls == [(B, 1, 48), (B, L, 48)]
    torch.testing.assert_close(out.logits, full.logits)
    for name, grad in _grads(model).items():
        torch.testing.assert_close(sparse_grads[name], grad, rtol=1e-5, atol=1e-6 + 1e-5 * grad.abs().max().item())


def test_pretraining_at_masked_positions_runs_the_last_layer_on_those_rows():
    torch.manual_seed(0)
    model = NezhaForPreTraining(no_dropout_config())
    calls = []
    model.nezha.encoder.layer[-1].output.register_forward_hook(lambda m, i, o: calls.append(o.shape))
    positions = torch.tensor([[2, 5, 0], [1, 3, 0]])  # padded with 0, label -100
    labels = torch.tensor([[7, 9, -100], [4, 11, -100]])
    data = inputs()
    out = model(**data, masked_lm_positions=positions, labels=labels, next_sentence_label=torch.tensor([0, 1]))
    full_labels = torch.full((B, L), -100).scatter(1, positions[:, :2], labels[:, :2])
    full = model(**data, labels=full_labels, next_sentence_label=torch.tensor([0, 1]))
    assert calls == [(B, 4, 32), (B, L, 32)]
    torch.testing.assert_close(out.loss, full.loss)
    torch.testing.assert_close(out.seq_relationship_logits, full.seq_relationship_logits)


def test_pooled_heads_take_inputs_embeds_and_name_missing_or_empty_inputs():
    torch.manual_seed(0)
    model = NezhaForSequenceClassification(no_dropout_config()).eval()
    data = inputs()
    embeds = model.nezha.embeddings.word_embeddings(data["input_ids"])
    by_ids = model(**data).logits
    by_embeds = model(inputs_embeds=embeds, attention_mask=data["attention_mask"],
                      token_type_ids=data["token_type_ids"]).logits
    torch.testing.assert_close(by_embeds, by_ids)
    with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds"):
        model(attention_mask=data["attention_mask"])
    for empty in ({"input_ids": data["input_ids"][:, :0]}, {"inputs_embeds": embeds[:, :0]}):
        with pytest.raises(ValueError, match="no tokens"):
            model(**empty)


@pytest.mark.parametrize("head,mlm_loss,bf16", [("pretraining", True, False), ("pretraining", False, False),
                                              ("masked-lm", True, False), ("pretraining", True, True)])
def test_sparse_word_gradient_gives_the_dense_gradient(head, mlm_loss, bf16, monkeypatch):
    # With a tied decoder the lookup sends back only the batch's rows, added into the decoder's gradient in place;
    # the gradient that reaches .grad is dense and equal to the plain lookup's, also when the decoder is not in the
    # backward (NSP loss alone).
    from torch.profiler import ProfilerActivity, profile

    from nezha_cli.modeling.kernels import fast_paths

    config = tiny_config()
    ids = torch.randint(1, V, (B, L))
    grads, ops = {}, {}
    for sparse in (False, True):
        monkeypatch.setattr(fast_paths, "sparse_word_gradient", lambda weight, sparse=sparse: sparse)
        torch.manual_seed(0)
        # Under autocast the decoder's gradient reaches the alias through a dtype cast (a fresh fp32 tensor too).
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if head == "pretraining":
                model = NezhaForPreTraining(config).train()
                out = model(ids, labels=ids, next_sentence_label=torch.zeros(B, dtype=torch.long))
            else:
                model = NezhaForMaskedLM(config).train()
                out = model(ids, labels=ids)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            (out.loss if mlm_loss else out.seq_relationship_logits.sum()).backward()
        # The ops that read a [V, H] tensor during the backward.
        ops[sparse] = {e.name for e in prof.events() if [V, config.hidden_size] in e.input_shapes}
        weight = model.nezha.embeddings.word_embeddings.weight
        assert weight is model.cls.predictions.decoder.weight and not weight.grad.is_sparse
        grads[sparse] = weight.grad
        torch.optim.AdamW(model.parameters(), fused=True).step()  # fused kernels take dense gradients only
    torch.testing.assert_close(grads[True], grads[False], rtol=1e-5, atol=1e-7)
    if mlm_loss and not bf16:  # (under autocast the dtype casts read [V, H] tensors on both paths)
        # No zero-filled [V, H] lookup gradient, no out-of-place [V, H] sum: only the in-place add of the rows.
        assert {"aten::zero_", "aten::add"} <= ops[False]
        assert "aten::index_add_" in ops[True]
        assert not {"aten::zero_", "aten::fill_", "aten::add", "aten::copy_"} & ops[True]


def test_a_mask_without_padding_is_not_added():
    # An all-ones attention mask adds zeros to every layer's scores: it is skipped (CPU, eager); a mask with
    # padding is added, in place in fp32.
    from torch.profiler import ProfilerActivity, profile

    model = NezhaModel(tiny_config()).eval()
    ids = torch.randint(1, V, (B, L))
    padded = torch.ones(B, L, dtype=torch.long)
    padded[0, -3:] = 0
    ops, outputs = {}, {}
    for name, mask in (("none", None), ("ones", torch.ones(B, L, dtype=torch.long)), ("padded", padded)):
        with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            outputs[name] = model(ids, attention_mask=mask).last_hidden_state
        ops[name] = [e.name for e in prof.events() if [B, 1, 1, L] in e.input_shapes and e.name.startswith("aten::add")]
    torch.testing.assert_close(outputs["ones"], outputs["none"], rtol=0, atol=0)
    assert ops["ones"] == [] and ops["padded"] == ["aten::add_"] * model.config.num_hidden_layers
    torch.testing.assert_close(outputs["padded"][1], outputs["none"][1])  # row 1 has no padding
    assert not torch.allclose(outputs["padded"][0, :-3], outputs["none"][0, :-3])


def test_attention_softmax_runs_in_fp32_under_autocast_with_or_without_a_mask():
    # CPU autocast would run the softmax of bf16 scores in bf16; a mask (fp32) used to promote them. The
    # probabilities are fp32 whether or not a mask is given, and an all-ones mask changes nothing.
    model = NezhaModel(tiny_config()).eval()
    ids = torch.randint(1, V, (B, L))
    padded = torch.ones(B, L, dtype=torch.long)
    padded[0, -3:] = 0
    outputs = {}
    for name, mask in (("none", None), ("ones", torch.ones(B, L, dtype=torch.long)), ("padded", padded)):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            outputs[name] = model(ids, attention_mask=mask, output_attentions=True)
        assert all(a.dtype == torch.float32 for a in outputs[name].attentions), name
    torch.testing.assert_close(outputs["ones"].last_hidden_state, outputs["none"].last_hidden_state, rtol=0, atol=0)
