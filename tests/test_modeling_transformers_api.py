"""Code written for transformers' Nezha classes runs unchanged on ours (issue 29's conformance list).

Written from transformers' documented behaviour (PreTrainedModel, PretrainedConfig, ModelOutput) and the intent of
its model test suite; where transformers 4.x is installed (the `parity` extra) the same calls are also checked
against its Nezha classes on the same weights.
"""

import copy
import inspect
import json
import math
import warnings

import pytest
import torch

from nezha_cli import modeling as ours
from nezha_cli.errors import CheckpointError
from nezha_cli.modeling import NezhaConfig

NAMES = ["NezhaModel", "NezhaForPreTraining", "NezhaForMaskedLM", "NezhaForNextSentencePrediction",
         "NezhaForSequenceClassification", "NezhaForMultipleChoice", "NezhaForTokenClassification",
         "NezhaForQuestionAnswering"]
TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64, max_relative_position=8)
B, L, CHOICES = 2, 12, 3


def inputs(name: str, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    x = {"input_ids": torch.randint(1, 99, (B, L), generator=g),
         "attention_mask": torch.ones(B, L, dtype=torch.long),
         "token_type_ids": torch.zeros(B, L, dtype=torch.long)}
    x["attention_mask"][1, L - 5:] = 0
    x["token_type_ids"][:, L // 2:] = 1
    if name == "NezhaForMultipleChoice":
        x = {k: v[:, None].repeat(1, CHOICES, 1) for k, v in x.items()}
    return x


def labels(name: str) -> dict:
    if name == "NezhaForPreTraining":
        return {"labels": torch.full((B, L), 4), "next_sentence_label": torch.tensor([0, 1])}
    if name == "NezhaForMaskedLM":
        return {"labels": torch.full((B, L), 4)}
    if name in ("NezhaForNextSentencePrediction", "NezhaForSequenceClassification"):
        return {"labels": torch.tensor([0, 1])}
    if name == "NezhaForMultipleChoice":
        return {"labels": torch.tensor([2, 0])}
    if name == "NezhaForTokenClassification":
        return {"labels": torch.ones(B, L, dtype=torch.long)}
    if name == "NezhaForQuestionAnswering":
        return {"start_positions": torch.tensor([1, 2]), "end_positions": torch.tensor([3, 4])}
    return {}


def build(name: str, **config) -> torch.nn.Module:
    torch.manual_seed(0)
    return getattr(ours, name)(NezhaConfig(**{**TINY, **config})).eval()


def first(out) -> torch.Tensor:
    return out[0]


# ---------------------------------------------------------------------------------- positional order and masks


@pytest.mark.parametrize("name", NAMES)
def test_positional_attention_mask_is_the_mask(name):
    """model(input_ids, attention_mask) uses the mask: labels are not the second positional argument."""
    model, x = build(name), inputs(name)
    with torch.no_grad():
        positional = first(model(x["input_ids"], x["attention_mask"]))
        keyword = first(model(input_ids=x["input_ids"], attention_mask=x["attention_mask"]))
        unmasked = first(model(x["input_ids"]))
        three = first(model(x["input_ids"], x["attention_mask"], x["token_type_ids"]))
        three_keyword = first(model(**x))
    torch.testing.assert_close(positional, keyword, rtol=0, atol=0)
    assert not torch.allclose(positional, unmasked)
    torch.testing.assert_close(three, three_keyword, rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_forward_parameter_order(name):
    params = list(inspect.signature(getattr(ours, name).forward).parameters)[1:]
    assert params[:5] == ["input_ids", "attention_mask", "token_type_ids", "head_mask", "inputs_embeds"]
    assert params[params.index("return_dict") - 2:params.index("return_dict") + 1] == [
        "output_attentions", "output_hidden_states", "return_dict"]
    assert getattr(ours, name).main_input_name == params[0]


# ------------------------------------------------------------------------------------------- outputs


@pytest.mark.parametrize("name", NAMES)
def test_return_dict_both_ways_and_model_output_access(name):
    model, x = build(name), {**inputs(name), **labels(name)}
    with torch.no_grad():
        out = model(**x, output_hidden_states=True)
        as_tuple = model(**x, output_hidden_states=True, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(out)
    for a, b in zip(out.to_tuple(), as_tuple):
        if isinstance(a, tuple):
            assert all(torch.equal(s, t) for s, t in zip(a, b))
        else:
            assert torch.equal(a, b)
    key = list(out.keys())[0]
    assert out[0] is out[key] is getattr(out, key)
    assert "attentions" not in out and out.attentions is None  # None fields are not keys
    assert list(out.keys()) == [k for k in out.keys() if getattr(out, k) is not None]
    if name != "NezhaModel":
        assert list(out.keys())[0] == "loss" and out.loss.dim() == 0
    assert dict(out)[key] is out[key]
    # A config switch gives the default of the call, as in transformers.
    model.config.return_dict = False
    with torch.no_grad():
        assert isinstance(model(**inputs(name)), tuple)


def test_model_output_is_a_dict_that_accelerate_can_rebuild():
    out = ours.modeling_nezha.SequenceClassifierOutput(logits=torch.ones(2))
    assert isinstance(out, dict) and len(out) == 1 and out.to_tuple()[0] is out.logits
    rebuilt = type(out)({"logits": torch.zeros(2)})  # how accelerate's fp32 conversion rebuilds a mapping
    assert list(rebuilt.keys()) == ["logits"] and torch.equal(rebuilt.logits, torch.zeros(2))
    out.loss = torch.tensor(1.0)  # setting a None field keeps keys as they were, as in transformers
    out["logits"] = torch.zeros(2)
    assert torch.equal(out.logits, torch.zeros(2))
    with pytest.raises(TypeError):
        del out["logits"]


def test_pretraining_output_holds_transformers_fields():
    name = "NezhaForPreTraining"
    model, x = build(name), {**inputs(name), **labels(name)}
    out = model(**x)
    assert list(out.keys()) == ["loss", "prediction_logits", "seq_relationship_logits"]
    only_mlm = model(**inputs(name), labels=x["labels"])
    assert only_mlm.loss is None and "loss" not in only_mlm  # the loss is the sum of both, as there


@pytest.mark.parametrize("name", NAMES)
def test_attention_and_hidden_state_outputs(name):
    model, x = build(name), inputs(name)
    rows = B * CHOICES if name == "NezhaForMultipleChoice" else B
    with torch.no_grad():
        out = model(**x, output_attentions=True, output_hidden_states=True)
    assert len(out.attentions) == TINY["num_hidden_layers"]
    assert len(out.hidden_states) == TINY["num_hidden_layers"] + 1
    assert all(a.shape == (rows, TINY["num_attention_heads"], L, L) for a in out.attentions)
    assert all(h.shape == (rows, L, TINY["hidden_size"]) for h in out.hidden_states)
    # Rows of attention probabilities sum to one and padding keys get none.
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(rows, 4, L))
    # The config's switches are the defaults of the call.
    model.config.output_attentions = True
    with torch.no_grad():
        assert len(model(**x).attentions) == TINY["num_hidden_layers"]


@pytest.mark.parametrize("name", NAMES)
def test_inputs_embeds_equal_input_ids(name):
    model, x = build(name), inputs(name)
    embeds = model.get_input_embeddings()(x["input_ids"])
    with torch.no_grad():
        by_ids = first(model(**x))
        by_embeds = first(model(inputs_embeds=embeds, attention_mask=x["attention_mask"],
                                token_type_ids=x["token_type_ids"]))
    torch.testing.assert_close(by_embeds, by_ids)


@pytest.mark.parametrize("name", NAMES)
def test_training_mode_is_deterministic_with_a_seed(name):
    model, x = build(name), {**inputs(name), **labels(name)}
    model.train()
    torch.manual_seed(7)
    a = model(**x)[0]
    torch.manual_seed(7)
    b = model(**x)[0]
    torch.manual_seed(8)
    c = model(**x)[0]
    assert torch.equal(a, b) and not torch.equal(a, c)


# ------------------------------------------------------------------------------------------------ config


GENERAL_KWARGS = {
    "return_dict": False, "output_hidden_states": True, "output_attentions": True, "torchscript": True,
    "use_bfloat16": True, "pruned_heads": {0: [1]}, "tie_word_embeddings": False, "is_decoder": True,
    "add_cross_attention": True, "chunk_size_feed_forward": 5, "architectures": ["NezhaForMaskedLM"],
    "finetuning_task": "lcqmc", "id2label": {0: "label"}, "label2id": {"label": 0}, "tokenizer_class": "BertTokenizer",
    "prefix": "p", "bos_token_id": 6, "pad_token_id": 7, "eos_token_id": 8, "sep_token_id": 9,
    "decoder_start_token_id": 10, "task_specific_params": {"x": 1}, "problem_type": "regression",
    # generation and other settings nezha does not use: kept, never refused
    "max_length": 50, "num_beams": 3, "temperature": 2.0, "my_own_key": [1, 2],
}


def test_config_accepts_and_round_trips_general_kwargs(tmp_path):
    config = NezhaConfig(hidden_size=37, torch_dtype="float16", **GENERAL_KWARGS)
    assert config.torch_dtype == torch.float16
    for key, value in GENERAL_KWARGS.items():
        assert getattr(config, key) == value, key
    assert config.num_labels == 1 and config.use_return_dict is False
    config.save_pretrained(tmp_path / "sub")
    back = NezhaConfig.from_pretrained(tmp_path, subfolder="sub")
    assert back.to_dict() == config.to_dict() and back == config
    path = tmp_path / "c.json"
    config.to_json_file(path)
    assert NezhaConfig.from_json_file(path) == config
    # Attributes set after construction behave as transformers': num_labels renames the labels.
    config.num_labels = 3
    assert config.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"} and len(config.label2id) == 3
    config.num_choices = 4
    assert NezhaConfig.from_dict(config.to_dict()).num_choices == 4
    copied = copy.deepcopy(config)
    assert copied == config and copied is not config


def test_config_from_pretrained_kwargs_and_unused():
    config = NezhaConfig(**TINY)
    merged, unused = NezhaConfig.from_dict(config.to_dict(), return_unused_kwargs=True, num_labels=5, foo=1)
    assert merged.num_labels == 5 and unused == {"foo": 1}
    assert NezhaConfig.from_dict(config.to_dict(), output_attentions=True).output_attentions is True


def test_config_defaults_stay_out_of_saved_files(tmp_path):
    NezhaConfig().save_pretrained(tmp_path)
    text = (tmp_path / "config.json").read_text()
    assert "torchscript" not in text and "return_dict" not in text and '"vocab_size": 21128' in text


# -------------------------------------------------------------------------------------- save and load


@pytest.mark.parametrize("safe", [True, False])
@pytest.mark.parametrize("name", NAMES)
def test_save_load_with_and_without_safetensors(name, safe, tmp_path):
    model, x = build(name), inputs(name)
    model.save_pretrained(tmp_path, safe_serialization=safe)
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["config.json", "model.safetensors" if safe else "pytorch_model.bin"]
    loaded, info = getattr(ours, name).from_pretrained(tmp_path, output_loading_info=True)
    assert isinstance(info, dict) and set(info) == {"missing_keys", "unexpected_keys", "mismatched_keys",
                                                    "error_msgs"}
    assert info["missing_keys"] == info["unexpected_keys"] == info["mismatched_keys"] == []
    assert not loaded.training  # loaded models start in eval mode, as in transformers
    with torch.no_grad():
        torch.testing.assert_close(first(loaded(**x)), first(model(**x)), rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES[1:])
def test_missing_keys_of_a_head_loaded_from_a_body(name, tmp_path):
    build("NezhaModel").save_pretrained(tmp_path)
    _, info = getattr(ours, name).from_pretrained(tmp_path, output_loading_info=True)
    assert len(info["missing_keys"]) > 0 and info["mismatched_keys"] == []


@pytest.mark.parametrize("name", NAMES)
def test_from_pretrained_none_with_config_and_state_dict(name):
    model, x = build(name), inputs(name)
    again = getattr(ours, name).from_pretrained(None, config=model.config, state_dict=model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(first(again(**x)), first(model(**x)), rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="config= and state_dict="):
        getattr(ours, name).from_pretrained(None, config=model.config)


def test_from_pretrained_names_a_hub_id_it_will_not_download(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="never downloads"):
        ours.NezhaModel.from_pretrained("sijunhe/nezha-cn-base")


# -------------------------------------------------------------------------- embeddings, heads, checkpointing


@pytest.mark.parametrize("name", NAMES)
def test_resize_token_embeddings(name):
    model, x = build(name), inputs(name)
    old = model.get_input_embeddings().weight.detach().clone()
    embeddings = model.resize_token_embeddings(109)
    assert embeddings is model.get_input_embeddings() and embeddings.weight.shape == (109, 32)
    assert model.config.vocab_size == 109 and torch.equal(embeddings.weight[:99], old)
    output = model.get_output_embeddings()
    if output is not None:
        assert output.weight is embeddings.weight and output.bias.shape == (109,)
    with torch.no_grad():
        out = first(model(**x))
    if name in ("NezhaForMaskedLM", "NezhaForPreTraining"):
        assert out.shape[-1] == 109
    model.resize_token_embeddings(90)
    assert model.config.vocab_size == 90 and torch.equal(model.get_input_embeddings().weight, old[:90])
    assert model.resize_token_embeddings(91, pad_to_multiple_of=8).weight.shape[0] == 96
    with pytest.raises(ValueError, match="pad_to_multiple_of"):
        model.resize_token_embeddings(91, pad_to_multiple_of=1.3)


def test_resize_untied_output_embeddings():
    model = build("NezhaForMaskedLM", tie_word_embeddings=False)
    assert model.get_output_embeddings().weight is not model.get_input_embeddings().weight
    decoder = model.get_output_embeddings().weight.detach().clone()
    model.resize_token_embeddings(120)
    assert model.get_output_embeddings().weight.shape == (120, 32)
    assert torch.equal(model.get_output_embeddings().weight[:99], decoder)


@pytest.mark.parametrize("name", NAMES)
def test_get_and_set_input_embeddings(name):
    model = build(name)
    assert isinstance(model.get_input_embeddings(), torch.nn.Embedding)
    new = torch.nn.Embedding(99, 32)
    model.set_input_embeddings(new)
    assert model.get_input_embeddings() is new
    head = model.get_output_embeddings()
    assert head is None or isinstance(head, torch.nn.Linear)


@pytest.mark.parametrize("name", NAMES)
def test_prune_heads_and_save_load(name, tmp_path):
    model, x = build(name), inputs(name)
    model.prune_heads({0: [0], 1: [1, 2]})
    with torch.no_grad():
        out = model(**x, output_attentions=True)
    assert out.attentions[0].shape[-3] == 3 and out.attentions[1].shape[-3] == 2
    assert model.config.pruned_heads == {0: [0], 1: [1, 2]}
    model.save_pretrained(tmp_path)
    loaded = getattr(ours, name).from_pretrained(tmp_path)
    with torch.no_grad():
        again = loaded(**x, output_attentions=True)
    assert again.attentions[0].shape[-3] == 3 and again.attentions[1].shape[-3] == 2
    torch.testing.assert_close(first(again), first(out), rtol=0, atol=0)
    # Pruned heads in the config are pruned when the model is built.
    built = getattr(ours, name)(NezhaConfig(**TINY, pruned_heads={0: [0], 1: [1, 2]}))
    assert built.base_model.encoder.layer[1].attention.self.num_attention_heads == 2


def test_pruning_equals_a_zero_head_mask():
    model, x = build("NezhaModel"), inputs("NezhaModel")
    head_mask = torch.ones(2, 4)
    head_mask[0, 0] = head_mask[1, 1] = head_mask[1, 2] = 0
    with torch.no_grad():
        masked = model(**x, head_mask=head_mask).last_hidden_state
        model.prune_heads({0: [0], 1: [1, 2]})
        pruned = model(**x).last_hidden_state
    torch.testing.assert_close(pruned, masked)


@pytest.mark.parametrize("name", NAMES)
def test_head_mask(name):
    model, x = build(name), inputs(name)
    head_mask = torch.ones(TINY["num_hidden_layers"], TINY["num_attention_heads"], requires_grad=True)
    with torch.no_grad():
        head_mask[0, 0] = 0
        head_mask[-1, :-1] = 0
    out = model(**x, head_mask=head_mask, output_attentions=True)
    first(out).sum().backward()
    assert head_mask.grad is not None
    assert out.attentions[0][:, 0].abs().sum() == 0 and out.attentions[0][:, 1].abs().sum() > 0
    assert out.attentions[-1][:, :-1].abs().sum() == 0 and out.attentions[-1][:, -1].abs().sum() > 0
    with torch.no_grad():
        plain = first(model(**x))
        ones = first(model(**x, head_mask=torch.ones(TINY["num_attention_heads"])))
    torch.testing.assert_close(ones, plain)


@pytest.mark.parametrize("name", NAMES)
def test_gradient_checkpointing_enable_disable(name):
    model, x = build(name), {**inputs(name), **labels(name)}
    assert model.supports_gradient_checkpointing and not model.is_gradient_checkpointing
    model.train()
    torch.manual_seed(1)
    plain = model(**x)[0]
    plain.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing
    torch.manual_seed(1)
    checkpointed = model(**x)[0]
    checkpointed.sum().backward()
    torch.testing.assert_close(checkpointed, plain, rtol=0, atol=1e-6)
    for n, p in model.named_parameters():
        if n in grads:
            torch.testing.assert_close(p.grad, grads[n], rtol=1e-5, atol=1e-6)
    model.gradient_checkpointing_disable()
    assert not model.is_gradient_checkpointing
    # The reentrant variant, as transformers' default of older releases.
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model.zero_grad()
    torch.manual_seed(1)
    model(**x)[0].sum().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if n in grads)
    assert build(name, gradient_checkpointing=True).is_gradient_checkpointing


# --------------------------------------------------------------------------------------------- as a decoder


def test_decoder_with_cross_attention():
    model = build("NezhaModel", is_decoder=True, add_cross_attention=True)
    x = inputs("NezhaModel")
    encoder = torch.randn(B, L, 32)
    with torch.no_grad():
        out = model(**x, encoder_hidden_states=encoder, encoder_attention_mask=x["attention_mask"],
                    output_attentions=True)
        without_mask = model(**x, encoder_hidden_states=encoder)
        alone = model(**x)
    assert out.last_hidden_state.shape == (B, L, 32) and out.pooler_output.shape == (B, 32)
    assert len(out.cross_attentions) == 2 and out.cross_attentions[0].shape == (B, 4, L, L)
    assert without_mask.last_hidden_state.shape == alone.last_hidden_state.shape == (B, L, 32)
    # A decoder's self-attention looks left only.
    assert out.attentions[0][0].triu(1).abs().sum() == 0
    with pytest.raises(ValueError, match="as long as the input"):
        model(**x, encoder_hidden_states=torch.randn(B, L + 1, 32))
    with pytest.raises(ValueError, match="is_decoder"):
        build("NezhaModel", add_cross_attention=True)


# ------------------------------------------------------------------------------ the same as transformers'


def _transformers():
    return (pytest.importorskip("transformers.models.deprecated.nezha.modeling_nezha"),
            pytest.importorskip("transformers.models.deprecated.nezha.configuration_nezha"))


@pytest.mark.parametrize("name", NAMES)
def test_same_signature_as_transformers(name):
    modeling, _ = _transformers()
    theirs = list(inspect.signature(getattr(modeling, name).forward).parameters)
    mine = list(inspect.signature(getattr(ours, name).forward).parameters)
    theirs = [p for p in theirs if p != "kwargs"]
    assert mine[:len(theirs)] == theirs


def _pair(name, tmp_path, **config):
    modeling, configuration = _transformers()
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = getattr(modeling, name)(configuration.NezhaConfig(**{**TINY, **config})).eval()
    reference.save_pretrained(tmp_path)
    return reference, getattr(ours, name).from_pretrained(tmp_path).eval()


def _assert_same(a, b):
    if isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for s, t in zip(a, b):
            _assert_same(s, t)
    else:
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_equals_transformers_positionally_with_every_output(name, tmp_path):
    reference, model = _pair(name, tmp_path)
    x = inputs(name)
    head_mask = torch.ones(2, 4)
    head_mask[1, 0] = 0
    args = (x["input_ids"], x["attention_mask"], x["token_type_ids"], head_mask)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = reference(*args, output_attentions=True, output_hidden_states=True, return_dict=False)
        mine = model(*args, output_attentions=True, output_hidden_states=True, return_dict=False)
        theirs_loss = reference(**x, **labels(name)).to_tuple()
        mine_loss = model(**x, **labels(name)).to_tuple()
    _assert_same(theirs, mine)
    _assert_same(theirs_loss, mine_loss)


def test_decoder_equals_transformers(tmp_path):
    reference, model = _pair("NezhaModel", tmp_path, is_decoder=True, add_cross_attention=True)
    x = inputs("NezhaModel")
    encoder = torch.randn(B, L, 32)
    kwargs = dict(encoder_hidden_states=encoder, encoder_attention_mask=x["attention_mask"], use_cache=False,
                  output_attentions=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = reference(**x, **kwargs)
        mine = model(**x, **kwargs)
    _assert_same(theirs.last_hidden_state, mine.last_hidden_state)
    _assert_same(theirs.cross_attentions, mine.cross_attentions)


def test_config_loads_in_transformers_and_back(tmp_path):
    _, configuration = _transformers()
    config = NezhaConfig(**TINY, **{k: v for k, v in GENERAL_KWARGS.items() if k != "my_own_key"})
    config.save_pretrained(tmp_path)
    theirs = configuration.NezhaConfig.from_pretrained(tmp_path)
    for key in ("return_dict", "is_decoder", "pruned_heads", "id2label", "finetuning_task", "max_relative_position"):
        assert getattr(theirs, key) == getattr(config, key), key
    theirs.save_pretrained(tmp_path / "back")
    back = NezhaConfig.from_pretrained(tmp_path / "back")
    for key in GENERAL_KWARGS:
        if key != "my_own_key":
            assert getattr(back, key) == getattr(config, key), key


@pytest.mark.parametrize("name", ["NezhaModel", "NezhaForMaskedLM", "NezhaForSequenceClassification"])
def test_torchscript_trace(name, tmp_path):
    """config.torchscript: tuples out, the decoder a copy of the embeddings, and the model traces."""
    model, x = build(name, torchscript=True), inputs(name)
    if model.get_output_embeddings() is not None:
        assert model.get_output_embeddings().weight is not model.get_input_embeddings().weight
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eager = model(x["input_ids"], x["attention_mask"])
        traced = torch.jit.trace(model, (x["input_ids"], x["attention_mask"]))
        torch.jit.save(traced, tmp_path / "model.pt")
        again = torch.jit.load(tmp_path / "model.pt")(x["input_ids"], x["attention_mask"])
    assert isinstance(eager, tuple)
    torch.testing.assert_close(again[0], eager[0])


class _PairDataset(torch.utils.data.Dataset):
    """16 padded id sequences with a binary label, as a transformers training script feeds its Trainer."""

    def __len__(self):
        return 16

    def __getitem__(self, i):
        x = {k: v[i % B] for k, v in inputs("NezhaForSequenceClassification", seed=i // B).items()}
        return {**x, "labels": torch.tensor(i % 2)}


@pytest.mark.slow
def test_transformers_trainer_trains_evaluates_saves_and_resumes_our_model(tmp_path):
    """transformers' Trainer with one of our heads: train with gradient checkpointing and evaluations, predict,
    save, resume from a checkpoint to the same weights. Its save_model writes only the weights of a model that is
    not transformers' own class: loading that directory says so, and loads with the config given."""
    transformers = pytest.importorskip("transformers")
    config = NezhaConfig(**TINY, num_labels=2)

    def trainer(name):
        torch.manual_seed(0)
        args = transformers.TrainingArguments(
            str(tmp_path / name), per_device_train_batch_size=4, num_train_epochs=2, learning_rate=1e-3,
            save_steps=2, eval_strategy="steps", eval_steps=2, gradient_checkpointing=True, report_to=[],
            use_cpu=True, disable_tqdm=True, seed=0)
        return transformers.Trainer(model=ours.NezhaForSequenceClassification(config), args=args,
                                    train_dataset=_PairDataset(), eval_dataset=_PairDataset())

    run = trainer("run")
    result = run.train()
    assert result.global_step == 8 and math.isfinite(result.training_loss)
    assert run.model.is_gradient_checkpointing
    assert [r["step"] for r in run.state.log_history if "eval_loss" in r] == [2, 4, 6, 8]
    assert run.predict(_PairDataset()).predictions.shape == (16, 2)

    run.save_model(str(tmp_path / "final"))
    with pytest.raises(FileNotFoundError, match="weights without config.json .*pass config="):
        ours.NezhaForSequenceClassification.from_pretrained(tmp_path / "final")
    loaded = ours.NezhaForSequenceClassification.from_pretrained(tmp_path / "final", config=config)
    final = run.model.state_dict()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in final.items())

    resumed = trainer("resumed")
    assert resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-4")).global_step == 8
    assert all(torch.equal(resumed.model.state_dict()[k], v) for k, v in final.items())


def test_dtype_is_transformers_4_56_name_for_torch_dtype(tmp_path):
    """transformers 4.56+ writes "dtype" in config.json and takes from_pretrained(dtype=...): the same setting as
    torch_dtype, never a silently stored extra."""
    config = NezhaConfig(**TINY, dtype="bfloat16")
    assert config.torch_dtype is torch.bfloat16 and config.dtype is torch.bfloat16
    assert NezhaConfig(**TINY, torch_dtype="float16", dtype="bfloat16").dtype is torch.bfloat16
    config.dtype = "float16"
    assert config.torch_dtype is torch.float16
    ours.NezhaForMaskedLM(NezhaConfig(**TINY)).save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    saved.pop("torch_dtype", None)
    saved["dtype"] = "bfloat16"  # as transformers 4.57 writes it
    (tmp_path / "m" / "config.json").write_text(json.dumps(saved))
    assert ours.NezhaForMaskedLM.from_pretrained(tmp_path / "m").dtype is torch.float32
    assert ours.NezhaForMaskedLM.from_pretrained(tmp_path / "m", torch_dtype="auto").dtype is torch.bfloat16
    assert ours.NezhaForMaskedLM.from_pretrained(tmp_path / "m", dtype="auto").dtype is torch.bfloat16
    assert ours.NezhaForMaskedLM.from_pretrained(tmp_path / "m", dtype=torch.float16).dtype is torch.float16
    with pytest.raises(TypeError, match="same option"):
        ours.NezhaForMaskedLM.from_pretrained(tmp_path / "m", dtype=torch.float16, torch_dtype=torch.bfloat16)
    reloaded = NezhaConfig.from_pretrained(tmp_path / "m")
    assert reloaded.torch_dtype is torch.bfloat16 and "dtype" not in reloaded.to_dict()


def test_config_update_from_string_and_text_config():
    """As transformers' example scripts use them (--config_overrides "n_embd=10,resid_pdrop=0.2,...")."""
    config = NezhaConfig(**TINY)
    config.update_from_string("hidden_dropout_prob=0.25,num_hidden_layers=3,output_attentions=true,hidden_act=relu")
    assert (config.hidden_dropout_prob, config.num_hidden_layers, config.output_attentions, config.hidden_act) == \
        (0.25, 3, True, "relu")
    assert type(config.num_hidden_layers) is int
    with pytest.raises(ValueError, match="no setting 'hidden_dims'"):
        config.update_from_string("hidden_dims=3")
    with pytest.raises(ValueError, match="not true or false"):
        config.update_from_string("output_attentions=maybe")
    with pytest.raises(ValueError):
        config.update_from_string("num_hidden_layers=three")
    assert config.get_text_config() is config
    transformers = pytest.importorskip("transformers")
    reference = transformers.BertConfig()
    reference.update_from_string("hidden_dropout_prob=0.25,num_hidden_layers=3,output_attentions=true,hidden_act=relu")
    assert (reference.hidden_dropout_prob, reference.num_hidden_layers, reference.output_attentions,
            reference.hidden_act) == (0.25, 3, True, "relu")


@pytest.mark.parametrize("task, name, text", [
    ("fill-mask", "NezhaForMaskedLM", "今天[MASK]气很好"),
    ("text-classification", "NezhaForSequenceClassification", "今天天气很好"),
    ("token-classification", "NezhaForTokenClassification", "华为在深圳"),
    ("question-answering", "NezhaForQuestionAnswering", {"question": "华为在哪里？", "context": "华为在深圳。"}),
])
def test_transformers_pipelines_take_our_heads(task, name, text, bert_vocab):
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(bert_vocab))
    torch.manual_seed(0)
    model = getattr(ours, name)(NezhaConfig(**{**TINY, "vocab_size": tokenizer.vocab_size}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = transformers.pipeline(task, model=model, tokenizer=tokenizer, device="cpu")
        result = pipe(text)
    if task == "fill-mask":
        assert len(result) == 5 and all(r["sequence"].startswith("今 天") for r in result)
    elif task == "text-classification":
        assert result[0]["label"] in ("LABEL_0", "LABEL_1") and 0 < result[0]["score"] < 1
    elif task == "token-classification":
        assert all(r["word"] in "华为在深圳" for r in result)
    else:
        assert result["answer"] and result["answer"] in text["context"]


@pytest.mark.slow
def test_transformers_trainer_pretrains_our_masked_lm_with_its_collators(tmp_path, bert_vocab):
    """Masked-LM training with transformers' tokenizer, whole-word-mask collator and Trainer, checkpoints included.
    The decoder shares the word embeddings, and for a model that is not its own class the Trainer writes the raw
    state dict, which safetensors refuses for shared tensors: save_safetensors=False (the documented way)."""
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(bert_vocab))
    texts = ["今天天气很好，我们去公园散步。", "华为诺亚方舟实验室提出了哪吒模型。", "这家餐厅的菜非常好吃。"] * 4
    dataset = [tokenizer(t) for t in texts]
    torch.manual_seed(0)
    model = ours.NezhaForMaskedLM(NezhaConfig(**{**TINY, "vocab_size": tokenizer.vocab_size}))
    args = transformers.TrainingArguments(str(tmp_path), per_device_train_batch_size=4, num_train_epochs=2,
                                          save_steps=3, save_safetensors=False, report_to=[], use_cpu=True,
                                          disable_tqdm=True, remove_unused_columns=False, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        collator = transformers.DataCollatorForWholeWordMask(tokenizer)
        result = transformers.Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator).train()
    assert result.global_step == 6 and math.isfinite(result.training_loss)
    assert model.cls.predictions.decoder.weight is model.nezha.embeddings.word_embeddings.weight  # still tied
    saved = torch.load(tmp_path / "checkpoint-6" / "pytorch_model.bin", weights_only=True)
    loaded = ours.NezhaForMaskedLM.from_pretrained(tmp_path / "checkpoint-6", config=model.config)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in saved.items())


@pytest.mark.parametrize("name", ["NezhaForSequenceClassification", "NezhaForPreTraining"])
def test_outputs_survive_data_parallel_gather(name, monkeypatch):
    """nn.DataParallel (transformers' Trainer on several GPUs in one process) rebuilds a dict output as
    type(out)((key, gathered) for key in out): torch's own gather, its device copy replaced by a CPU concat."""
    from torch.nn.parallel import scatter_gather

    class CpuGather:
        @staticmethod
        def apply(target_device, dim, *tensors):
            return torch.cat([t.reshape(1) if t.dim() == 0 else t for t in tensors], dim)

    monkeypatch.setattr(scatter_gather, "Gather", CpuGather)
    model = getattr(ours, name)(NezhaConfig(**TINY)).eval()
    outs = [model(**inputs(name, seed=s), **labels(name)) for s in (0, 1)]
    gathered = scatter_gather.gather(outs, "cpu")
    assert type(gathered) is type(outs[0]) and list(gathered.keys()) == list(outs[0].keys())
    for key in outs[0]:
        expected = torch.cat([o[key].reshape(1) if o[key].dim() == 0 else o[key] for o in outs])
        assert torch.equal(getattr(gathered, key), expected) and gathered[key] is getattr(gathered, key)
    assert gathered.loss.shape == (2,)  # one loss per replica, as the Trainer then averages
    with pytest.raises(TypeError, match="field name"):
        type(outs[0])(iter([1, 2]))
