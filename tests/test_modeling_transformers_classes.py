"""nezha_cli.modeling.transformers_classes: the NEZHA classes on transformers' PreTrainedModel/PretrainedConfig.

Runs against whichever transformers is installed: `make test` runs it with the test extra's 4.57 and again with
transformers 5 (which has no Nezha of its own). transformers' own Nezha test file, run against these classes,
passes wherever it passes on transformers' classes (Hub and torch.fx tests aside; see docs/model.md).
"""

import json
import math
import subprocess
import sys
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

from test_modeling_transformers_api import TINY, B, inputs  # noqa: E402  (the tiny config and batches of nezha's tests)

from nezha_cli import modeling as ours  # noqa: E402
from nezha_cli.errors import ConfigError  # noqa: E402
from nezha_cli.modeling import transformers_classes as tc  # noqa: E402
from nezha_cli.modeling.modeling_nezha import NezhaSelfAttention  # noqa: E402

NAMES = list(tc.MODEL_CLASSES)
MLM = ["NezhaForPreTraining", "NezhaForMaskedLM"]
V5 = int(transformers.__version__.split(".")[0]) >= 5


def build(name: str, **config) -> torch.nn.Module:
    torch.manual_seed(0)
    model = tc.MODEL_CLASSES[name](tc.NezhaConfig(**{**TINY, **config})).eval()
    head = getattr(getattr(model, "cls", None), "predictions", None)
    if head is not None:
        with torch.no_grad():
            head.bias.normal_()  # a trained decoder bias: a broken tie would change the logits
    return model


def same_outputs(a, b, name, seed=0):
    x = inputs(name, seed)
    with torch.no_grad():
        # Not bitwise: transformers loads into memory laid out otherwise (kernels may round 1 ulp apart).
        torch.testing.assert_close(a(*x.values())[0], b(*x.values())[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_transformers_models_that_compute_as_ours(name):
    model = build(name)
    assert isinstance(model, transformers.PreTrainedModel) and isinstance(model, tc.NezhaPreTrainedModel)
    assert isinstance(model, getattr(ours, name))  # and everything nezha's classes offer
    assert isinstance(model.config, transformers.PretrainedConfig) and isinstance(model.config, ours.NezhaConfig)
    mine = getattr(ours, name)(ours.NezhaConfig(**TINY)).eval()
    mine.load_state_dict(model.state_dict())
    same_outputs(model, mine, name)
    x = inputs(name)
    output = model(**x)
    assert isinstance(output, transformers.utils.ModelOutput) and type(output).__name__ == \
        type(mine(**x)).__name__  # transformers' output class of the same name, as its Nezha returned
    assert isinstance(model(**x, return_dict=False), tuple)
    unmasked = model(x["input_ids"])[0]
    assert not torch.equal(model(x["input_ids"], x["attention_mask"])[0], unmasked)  # positional = the mask


def test_config_keeps_nezha_fields_checks_and_transformers_settings(tmp_path):
    config = tc.NezhaConfig(**TINY, num_labels=3, output_hidden_states=True, is_decoder=False, some_setting=5)
    assert (config.max_relative_position, config.attention_head_size, config.num_labels, config.some_setting) == \
        (8, 8, 3, 5)
    assert config.use_crf is False and config.tie_word_embeddings is True and config.use_return_dict is True
    config.save_pretrained(tmp_path)
    again = tc.NezhaConfig.from_pretrained(tmp_path)
    assert again == config and again.to_dict()["model_type"] == "nezha"
    mine = ours.NezhaConfig.from_pretrained(tmp_path)  # the two families read each other's config.json
    assert (mine.max_relative_position, mine.num_labels, mine.output_hidden_states) == (8, 3, True)
    mine.with_labels(["负面", "正面"]).save_pretrained(tmp_path / "mine")
    assert tc.NezhaConfig.from_pretrained(tmp_path / "mine").labels == ["负面", "正面"]
    assert config.replace(hidden_size=64).hidden_size == 64 and config.hidden_size == 32
    with pytest.raises(ConfigError, match="hidden_size=30 is not a multiple of num_attention_heads=4"):
        tc.NezhaModel(tc.NezhaConfig(**{**TINY, "hidden_size": 30}))


@pytest.mark.parametrize("safe", [True, False])
@pytest.mark.parametrize("name", NAMES)
def test_checkpoints_move_between_the_two_families(name, safe, tmp_path):
    model = build(name)
    model.save_pretrained(tmp_path / "tc", safe_serialization=safe)
    assert json.loads((tmp_path / "tc" / "config.json").read_text())["architectures"] == [name]
    loaded = tc.MODEL_CLASSES[name].from_pretrained(tmp_path / "tc")
    same_outputs(loaded, model, name)
    if name in MLM:  # tied as when built: the decoder is the word embeddings, its bias the head's
        head = loaded.cls.predictions
        assert head.decoder.weight is loaded.nezha.embeddings.word_embeddings.weight
        assert head.decoder.bias is head.bias
    mine = getattr(ours, name).from_pretrained(tmp_path / "tc")
    same_outputs(mine, model, name)
    mine.save_pretrained(tmp_path / "ours", safe_serialization=safe)
    same_outputs(tc.MODEL_CLASSES[name].from_pretrained(tmp_path / "ours"), model, name)


def test_hub_ids_are_refused_not_downloaded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for load in (tc.NezhaModel.from_pretrained, tc.NezhaConfig.from_pretrained):
        with pytest.raises(OSError, match="sijunhe/nezha-cn-base: model directory not found .*never downloads"):
            load("sijunhe/nezha-cn-base")


def test_a_head_loads_from_a_body_and_the_body_from_a_head(tmp_path):
    build("NezhaForSequenceClassification").save_pretrained(tmp_path / "head")
    body = tc.NezhaModel.from_pretrained(tmp_path / "head")
    assert body.embeddings.word_embeddings.weight.shape == (99, 32)
    build("NezhaModel").save_pretrained(tmp_path / "body")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, info = tc.NezhaForSequenceClassification.from_pretrained(tmp_path / "body", output_loading_info=True)
    assert sorted(info["missing_keys"]) == ["classifier.bias", "classifier.weight"]


def test_buffers_of_older_checkpoints_are_not_unexpected(tmp_path):
    """transformers < 4.30 wrote the relative table and id buffers, derived from the config here."""
    from safetensors.torch import load_file, save_file

    model = build("NezhaModel")
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    weights["embeddings.position_ids"] = torch.arange(64)[None]
    weights["encoder.layer.0.attention.self.relative_positions_encoding.positions_encoding"] = torch.zeros(64, 64, 8)
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded, info = tc.NezhaModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["unexpected_keys"] and not info["missing_keys"]  # lists in 4.x, sets in 5
    same_outputs(loaded, model, "NezhaModel")


def test_head_parts_a_body_lacks_are_initialised(tmp_path):
    """transformers builds the model without running constructors' init (meta device, or init skipped) and
    initialises what the checkpoint lacks through the model's weight init: the CRF and word features included."""
    build("NezhaModel").save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = tc.NezhaForTokenClassification.from_pretrained(tmp_path, num_labels=5, use_crf=True,
                                                               word_features="jieba-pos")
    crf = model.crf
    assert all(torch.equal(p, torch.zeros_like(p)) for p in (crf.transitions, crf.start_transitions,
                                                             crf.end_transitions))
    words = model.word_feature_embeddings.weight
    assert torch.equal(words[0], torch.zeros(32)) and 0.01 < words[1:].std() < 0.03  # padding row, N(0, 0.02)
    assert torch.equal(model.classifier.bias, torch.zeros(5)) and torch.isfinite(model.classifier.weight).all()


def test_dtype_and_attention_implementation_reach_the_model(tmp_path):
    build("NezhaForMaskedLM").save_pretrained(tmp_path)
    assert tc.NezhaForMaskedLM.from_pretrained(tmp_path, dtype=torch.bfloat16).dtype is torch.bfloat16
    eager = tc.NezhaForMaskedLM.from_pretrained(tmp_path)
    sdpa = tc.NezhaForMaskedLM.from_pretrained(tmp_path, attn_implementation="sdpa")
    kinds = {m.attn_implementation for m in sdpa.modules() if isinstance(m, NezhaSelfAttention)}
    assert kinds == {"sdpa"} and sdpa.config.attn_implementation == "sdpa"
    x = inputs("NezhaForMaskedLM")
    with torch.no_grad():
        torch.testing.assert_close(sdpa(**x).logits, eager(**x).logits, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="attn_implementation='flash_attention_2'"):
        tc.NezhaForMaskedLM.from_pretrained(tmp_path, attn_implementation="flash_attention_2")


def test_resizing_is_transformers_own(tmp_path):
    model = build("NezhaForMaskedLM")
    old = model.get_input_embeddings().weight.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.resize_token_embeddings(105, mean_resizing=False)
    head = model.cls.predictions
    assert model.config.vocab_size == 105 and torch.equal(model.get_input_embeddings().weight[:99], old)
    assert head.decoder.weight is model.get_input_embeddings().weight and head.bias.shape == (105,)
    assert head.decoder.bias is head.bias
    assert model(**inputs("NezhaForMaskedLM")).logits.shape[-1] == 105
    with pytest.raises(ValueError, match="1.3"):
        model.resize_token_embeddings(105, pad_to_multiple_of=1.3)


def test_pruned_heads_are_pruned_when_built_and_loaded(tmp_path):
    model = build("NezhaForSequenceClassification")
    model.prune_heads({0: [1, 2]})
    model.save_pretrained(tmp_path)
    loaded = tc.NezhaForSequenceClassification.from_pretrained(tmp_path)
    assert loaded.nezha.encoder.layer[0].attention.self.num_attention_heads == 2
    assert loaded.nezha.encoder.layer[1].attention.self.num_attention_heads == 4
    same_outputs(loaded, model, "NezhaForSequenceClassification")


def test_gradient_checkpointing_gives_the_same_gradients():
    def gradients(checkpointing):
        model = build("NezhaForSequenceClassification", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        if checkpointing:
            model.gradient_checkpointing_enable()
        model.train()
        model(**inputs("NezhaForSequenceClassification"), labels=torch.tensor([0, 1])).loss.backward()
        return [p.grad for p in model.parameters()]

    for a, b in zip(gradients(True), gradients(False)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_register_makes_the_auto_classes_build_them(tmp_path):
    """In a child process: the Auto classes' registry is process-wide."""
    build("NezhaForSequenceClassification").save_pretrained(tmp_path)
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "华", "为"]) + "\n")
    script = f"""
import transformers
from nezha_cli.modeling import transformers_classes as tc
if {not V5}:  # transformers 4.x has its own deprecated Nezha under the name
    try:
        tc.register()
        raise AssertionError("registered over transformers' own Nezha without exist_ok")
    except ValueError as exc:
        assert "register(exist_ok=True) replaces it" in str(exc), exc
tc.register(exist_ok={not V5})
tc.register()  # again: nothing to do
model = transformers.AutoModelForSequenceClassification.from_pretrained({str(tmp_path)!r})
body = transformers.AutoModel.from_pretrained({str(tmp_path)!r})
config = transformers.AutoConfig.from_pretrained({str(tmp_path)!r})
print(type(model).__name__, type(body).__name__, type(config).__module__)
assert type(model) is tc.NezhaForSequenceClassification and type(body) is tc.NezhaModel
assert type(config) is tc.NezhaConfig
tokenizer = transformers.AutoTokenizer.from_pretrained({str(tmp_path)!r})  # vocab.txt alone: BERT's, as in 4.x
assert tokenizer("华为")["input_ids"] == [2, 5, 6, 3], tokenizer("华为")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.skipif(V5, reason="transformers 5 has no Nezha of its own")
def test_transformers_own_nezha_builds_from_this_config(tmp_path):
    """What transformers' test suite does with a model's config: build its own base model from it, save, and load
    that into the head (test_save_load_fast_init_from_base)."""
    from transformers.models.deprecated.nezha import modeling_nezha as theirs

    config = tc.NezhaConfig(**TINY)
    torch.manual_seed(0)
    theirs.NezhaModel(config).save_pretrained(tmp_path)
    loaded = tc.NezhaModel.from_pretrained(tmp_path)
    reference = theirs.NezhaModel.from_pretrained(tmp_path).eval()
    x = inputs("NezhaModel")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**x).last_hidden_state, reference(**x).last_hidden_state,
                                   rtol=1e-5, atol=1e-5)


def test_feature_extraction_pipeline(bert_vocab):
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(bert_vocab))
    torch.manual_seed(0)
    model = tc.NezhaModel(tc.NezhaConfig(**{**TINY, "vocab_size": tokenizer.vocab_size}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = transformers.pipeline("feature-extraction", model=model, tokenizer=tokenizer, device="cpu")
        features = pipe("华为在深圳")
    assert len(features[0]) == 7 and len(features[0][0]) == 32  # [CLS] 5 characters [SEP], hidden size


class _PairDataset(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        x = {k: v[i % B] for k, v in inputs("NezhaForMaskedLM", seed=i // B).items()}
        return {**x, "labels": x["input_ids"].clone()}


@pytest.mark.slow
def test_trainer_saves_a_complete_model_directory(tmp_path):
    """transformers' Trainer writes config.json and safetensors weights (the tied decoder included) for these
    classes, and resumes to the same weights."""
    def trainer(name):
        torch.manual_seed(0)
        args = transformers.TrainingArguments(str(tmp_path / name), per_device_train_batch_size=4, num_train_epochs=2,
                                              learning_rate=1e-3, save_steps=2, report_to=[], use_cpu=True,
                                              disable_tqdm=True, seed=0)
        return transformers.Trainer(model=build("NezhaForMaskedLM").train(), args=args, train_dataset=_PairDataset())

    run = trainer("run")
    result = run.train()
    assert result.global_step == 4 and math.isfinite(result.training_loss)
    run.save_model(str(tmp_path / "final"))
    assert {p.name for p in (tmp_path / "final").iterdir()} >= {"config.json", "model.safetensors"}
    final = run.model.state_dict()
    for family in (tc, ours):
        loaded = family.NezhaForMaskedLM.from_pretrained(tmp_path / "final")
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in final.items())
    resumed = trainer("resumed")
    assert resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2")).global_step == 4
    assert all(torch.equal(resumed.model.state_dict()[k], v) for k, v in final.items())


def test_nezha_cli_modeling_does_not_import_transformers():
    """transformers stays optional: only this module imports it."""
    script = "import sys, nezha_cli.modeling, nezha_cli.cli; print('transformers' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr[-2000:]
