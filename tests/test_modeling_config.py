import json

import pytest

from nezha_cli.errors import ConfigError
from nezha_cli.modeling import NezhaConfig, NezhaModel


def test_defaults_are_transformers_nezha_defaults():
    c = NezhaConfig()
    assert (c.vocab_size, c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size) == (
        21128, 768, 12, 12, 3072)
    assert (c.hidden_act, c.hidden_dropout_prob, c.attention_probs_dropout_prob) == ("gelu", 0.1, 0.1)
    assert (c.max_position_embeddings, c.max_relative_position, c.type_vocab_size) == (512, 64, 2)
    assert (c.initializer_range, c.layer_norm_eps, c.classifier_dropout, c.pad_token_id) == (0.02, 1e-12, 0.1, 0)
    assert c.num_labels == 2 and c.labels == ["LABEL_0", "LABEL_1"]


def test_json_round_trip(tmp_path):
    c = NezhaConfig(hidden_size=64, num_attention_heads=4, max_relative_position=16, classifier_dropout=None,
                    transformers_version="4.57.1").with_labels(["neg", "pos", "neutral"])
    c.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["model_type"] == "nezha"
    assert data["id2label"] == {"0": "neg", "1": "pos", "2": "neutral"}
    assert data["label2id"] == {"neg": 0, "pos": 1, "neutral": 2}
    assert data["transformers_version"] == "4.57.1"
    back = NezhaConfig.from_pretrained(tmp_path)
    assert back == c
    assert back.num_labels == 3 and back.label2id["pos"] == 1


def test_num_labels_without_names_round_trips(tmp_path):
    c = NezhaConfig(num_labels=5)
    c.save_pretrained(tmp_path)
    assert NezhaConfig.from_pretrained(tmp_path) == c


def test_reads_transformers_style_config():
    data = {"model_type": "nezha", "hidden_size": 32, "num_attention_heads": 2, "id2label": {"0": "A", "1": "B"},
            "architectures": ["NezhaForSequenceClassification"], "use_cache": True, "torch_dtype": "float32"}
    c = NezhaConfig.from_dict(data)
    assert c.labels == ["A", "B"] and c.architectures == ["NezhaForSequenceClassification"]
    assert c.use_cache is True and str(c.torch_dtype) == "torch.float32"
    assert c.to_dict()["use_cache"] is True and c.to_dict()["torch_dtype"] == "float32"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"hidden_size": 100, "num_attention_heads": 12}, "not a multiple of num_attention_heads"),
        ({"max_relative_position": 0}, "max_relative_position=0"),
        ({"hidden_act": "gelu_42"}, "unknown activation"),
        ({"hidden_size": 30, "num_attention_heads": 2}, "must be even"),
        ({"hidden_dropout_prob": 1.5}, "hidden_dropout_prob"),
        ({"num_hidden_layers": 0}, "num_hidden_layers"),
        ({"architectures": "NezhaForSequenceClassification"}, "architectures=.*must be a list of class names"),
    ],
)
def test_validation_messages(fields, message):
    # As in transformers, a config takes any values; the model built from it (or a config.json read) checks them.
    config = NezhaConfig(**fields)
    with pytest.raises(ConfigError, match=message):
        config.validate()
    with pytest.raises(ConfigError, match=message):
        NezhaModel(config)
    with pytest.raises(ConfigError, match=f"x/config.json: .*{message}"):
        NezhaConfig.from_dict(config.to_dict(), source="x/config.json").validate(source="x/config.json")


def test_foreign_model_type_points_to_import():
    with pytest.raises(ConfigError, match="nezha import"):
        NezhaConfig.from_dict({"model_type": "bert"}, source="x/config.json")


def test_bad_json_names_the_file(tmp_path):
    (tmp_path / "config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(Exception, match="config.json"):
        NezhaConfig.from_pretrained(tmp_path)
