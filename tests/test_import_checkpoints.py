"""`nezha import`: released TensorFlow, NEZHA-PyTorch and transformers checkpoints -> model directories."""

import json
import pickle

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from export_fixtures import (
    batch,
    bert_config,
    nezha_pytorch_state_dict,
    tf_tensors,
    tiny_model,
    write_tf_release,
    write_vocab,
)

from nezha_cli.cli import cli
from nezha_cli.errors import CheckpointError, ConfigError
from nezha_cli.interchange import import_checkpoint
from nezha_cli.interchange.convert import POSITION_REASON, tf_decision, tf_name, torch_decision
from nezha_cli.modeling import load_model


def outputs(model, x):
    with torch.no_grad():
        return [t for t in model(**x).to_tuple() if isinstance(t, torch.Tensor)]


def assert_same_outputs(a, b, length=12):
    x = batch(length)
    for left, right in zip(outputs(a, x), outputs(b, x), strict=True):
        assert torch.equal(left, right)


def tf_release(tmp_path, name="NezhaForPreTraining", **kw):
    model = tiny_model(name)
    tensors = tf_tensors(model)
    tensors["bert/embeddings/position_embeddings"] = np.zeros((512, 32), np.float32)
    return model, write_tf_release(tmp_path / "NEZHA-Base", tensors, bert_config(model), **kw), tensors


# ------------------------------------------------------------------------------------------------ tensorflow


def test_tf_checkpoint_imports_with_the_outputs_its_tensors_imply(tmp_path):
    source, release, tensors = tf_release(tmp_path)
    report = import_checkpoint(release, tmp_path / "out", "tf")
    assert report.architecture == "NezhaForPreTraining"
    imported = load_model(tmp_path / "out").eval()
    assert type(imported).__name__ == "NezhaForPreTraining"
    assert_same_outputs(source, imported)
    assert_same_outputs(source, imported, length=40)  # past 2K + 1: the clipped relative buckets too

    # Nothing silently dropped: every source tensor is mapped or skipped with its reason.
    written = json.loads((tmp_path / "out" / "import_report.json").read_text())
    listed = [m["source"] for m in written["mapped"]] + [s["source"] for s in written["skipped"]]
    assert sorted(listed) == sorted(tensors)
    reasons = {s["source"]: s["reason"] for s in written["skipped"]}
    assert reasons["global_step"] == "training state, not a model weight"
    assert reasons["bert/embeddings/position_embeddings"] == POSITION_REASON
    assert reasons["bert/encoder/layer_1/output/dense/kernel/adam_v"] == "optimizer slot"
    mapped = {m["source"]: m for m in written["mapped"]}
    assert mapped["bert/encoder/layer_0/attention/self/query/kernel"]["transposed"] is True
    assert mapped["cls/seq_relationship/output_weights"]["transposed"] is False
    assert mapped["cls/predictions/output_bias"]["target"] == "cls.predictions.bias"
    assert written["counts"]["missing"] == 0
    assert (tmp_path / "out" / "vocab.txt").read_text() == (release / "vocab.txt").read_text()
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == "nezha" and config["max_relative_position"] == 8


def test_tf_classifier_head_and_explicit_architecture(tmp_path):
    source = tiny_model("NezhaForSequenceClassification", num_labels=3)
    release = write_tf_release(tmp_path / "ft", tf_tensors(source), bert_config(source))
    import_checkpoint(release / "model.ckpt-900000.index", tmp_path / "cls", "tf")
    imported = load_model(tmp_path / "cls").eval()
    assert imported.config.num_labels == 3
    assert_same_outputs(source, imported)

    report = import_checkpoint(release, tmp_path / "body", "tf", architecture="NezhaModel")
    reasons = {s.source: s.reason for s in report.skipped}
    assert reasons["output_weights"] == "head not part of NezhaModel"
    body = load_model(tmp_path / "body").eval()
    x = batch()
    with torch.no_grad():
        assert torch.equal(body(**x).last_hidden_state, source.nezha(**x).last_hidden_state)


def test_tf_wrong_shape_is_one_clear_error_and_writes_nothing(tmp_path):
    model = tiny_model("NezhaForPreTraining")
    tensors = tf_tensors(model)
    tensors["bert/encoder/layer_1/attention/self/key/kernel"] = np.zeros((32, 16), np.float32)
    release = write_tf_release(tmp_path / "bad", tensors, bert_config(model))
    with pytest.raises(CheckpointError) as info:
        import_checkpoint(release, tmp_path / "out", "tf")
    message = str(info.value)
    assert "\n" not in message
    assert "bert/encoder/layer_1/attention/self/key/kernel has shape [32, 16]" in message
    assert "[32, 32]" in message
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == [tmp_path / "bad"]  # no temporary leftovers either


def test_tf_missing_tensor_is_one_clear_error_and_writes_nothing(tmp_path):
    model = tiny_model("NezhaForPreTraining")
    tensors = tf_tensors(model)
    del tensors["bert/encoder/layer_1/output/LayerNorm/gamma"]
    release = write_tf_release(tmp_path / "bad", tensors, bert_config(model))
    with pytest.raises(CheckpointError, match="lacks 1 tensor.*bert/encoder/layer_1/output/LayerNorm/gamma"):
        import_checkpoint(release, tmp_path / "out", "tf")
    assert not (tmp_path / "out").exists()


def test_tf_config_is_required_and_validated(tmp_path):
    _, release, _ = tf_release(tmp_path)
    (release / "bert_config.json").unlink()
    with pytest.raises(ConfigError, match="pass --config"):
        import_checkpoint(release, tmp_path / "out", "tf")
    config = tmp_path / "elsewhere.json"
    config.write_text(json.dumps({"hidden_size": 32}))
    with pytest.raises(ConfigError, match="no vocab_size"):
        import_checkpoint(release, tmp_path / "out", "tf", config_file=config)
    assert not (tmp_path / "out").exists()


def test_tf_vocab_larger_than_the_model_is_refused(tmp_path):
    _, release, _ = tf_release(tmp_path)
    write_vocab(release / "vocab.txt", 80)
    with pytest.raises(CheckpointError, match="80 tokens"):
        import_checkpoint(release, tmp_path / "out", "tf")


def test_name_mapping_rules():
    assert tf_decision("bert/encoder/layer_11/attention/self/query/kernel").target == \
        "nezha.encoder.layer.11.attention.self.query.weight"
    assert tf_decision("bert/embeddings/word_embeddings").target == "nezha.embeddings.word_embeddings.weight"
    assert tf_decision("bert/encoder/layer_0/output/LayerNorm/beta").target == \
        "nezha.encoder.layer.0.output.LayerNorm.bias"
    for slot in ("bert/pooler/dense/kernel/adam_m", "bert/pooler/dense/kernel/lamb_v",
                 "bert/pooler/dense/kernel/LAMB_1", "bert/pooler/dense/kernel/Adam"):
        assert tf_decision(slot).reason == "optimizer slot", slot
    assert tf_decision("beta1_power").target is None
    assert torch_decision("module.bert.encoder.layer.2.output.LayerNorm.gamma").target == \
        "nezha.encoder.layer.2.output.LayerNorm.weight"
    assert torch_decision("embeddings.LayerNorm.beta").target == "nezha.embeddings.LayerNorm.bias"  # bare body
    assert torch_decision("nezha.encoder.layer.0.attention.self.relative_positions_encoding.positions_encoding"
                          ).reason == "derived from the config (recomputed by the model)"
    assert torch_decision("classifier.weight").target == "classifier.weight"
    for name in ("nezha.encoder.layer.3.attention.output.LayerNorm.weight", "nezha.pooler.dense.weight",
                 "cls.predictions.transform.dense.bias", "nezha.embeddings.token_type_embeddings.weight",
                 "cls.seq_relationship.weight", "qa_outputs.bias"):
        assert tf_decision(tf_name(name)).target == name


# ------------------------------------------------------------------------------------------ pytorch and hf


def test_nezha_pytorch_file_imports(tmp_path):
    source = tiny_model("NezhaForPreTraining")
    release = tmp_path / "nezha-cn-base"
    release.mkdir()
    state = nezha_pytorch_state_dict(source)
    state["bert.embeddings.position_embeddings.weight"] = torch.zeros(512, 32)
    torch.save({"module." + k: v for k, v in state.items()}, release / "pytorch_model.bin")
    (release / "bert_config.json").write_text(json.dumps(bert_config(source)))
    write_vocab(release / "vocab.txt")
    report = import_checkpoint(release, tmp_path / "out", "pytorch")
    assert_same_outputs(source, load_model(tmp_path / "out").eval())
    reasons = {s.source: s.reason for s in report.skipped}
    assert reasons["module.cls.predictions.decoder.weight"] == "tied to the word embeddings (identical)"
    assert reasons["module.bert.embeddings.position_embeddings.weight"] == POSITION_REASON
    mapped = {m.source: m.target for m in report.mapped}
    assert mapped["module.bert.encoder.layer.0.attention.output.LayerNorm.gamma"] == \
        "nezha.encoder.layer.0.attention.output.LayerNorm.weight"


def test_pytorch_training_checkpoint_file(tmp_path):
    source = tiny_model("NezhaForSequenceClassification")
    file = tmp_path / "checkpoint.pt"
    torch.save({"model": nezha_pytorch_state_dict(source), "epoch": 3, "optimizer": {"lr": 1e-5}}, file)
    (tmp_path / "bert_config.json").write_text(json.dumps(bert_config(source)))
    report = import_checkpoint(file, tmp_path / "out", "pytorch")
    assert report.architecture == "NezhaForSequenceClassification"
    assert_same_outputs(source, load_model(tmp_path / "out").eval())
    assert {s.source for s in report.skipped} >= {"<epoch>", "<optimizer>"}
    assert any("vocab" in note for note in report.notes)


class Exploit:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_pickled_code_is_never_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    release = tmp_path / "evil"
    release.mkdir()
    with open(release / "pytorch_model.bin", "wb") as f:
        pickle.dump({"bert.embeddings.word_embeddings.weight": Exploit()}, f, protocol=2)
    (release / "bert_config.json").write_text(json.dumps(bert_config(tiny_model())))
    with pytest.raises(CheckpointError, match="cannot read weights safely"):
        import_checkpoint(release, tmp_path / "out", "pytorch")
    assert not (tmp_path / "PWNED").exists()


def test_hf_directory_of_this_package_and_hub_names(tmp_path):
    source = tiny_model("NezhaForTokenClassification", num_labels=5)
    source.save_pretrained(tmp_path / "hub")
    write_vocab(tmp_path / "hub" / "vocab.txt")
    report = import_checkpoint(tmp_path / "hub", tmp_path / "out", "hf")
    assert report.architecture == "NezhaForTokenClassification"  # from config.architectures
    assert_same_outputs(source, load_model(tmp_path / "out").eval())
    with pytest.raises(CheckpointError, match="never downloads"):
        import_checkpoint("sijunhe/nezha-cn-base", tmp_path / "out2", "hf")


def test_hf_directory_written_by_transformers(tmp_path):
    hf = pytest.importorskip("transformers.models.deprecated.nezha")
    torch.manual_seed(0)
    config = hf.NezhaConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, max_relative_position=8, max_position_embeddings=64)
    reference = hf.NezhaForMaskedLM(config).eval()
    reference.save_pretrained(tmp_path / "hub", safe_serialization=False)  # pytorch_model.bin
    import_checkpoint(tmp_path / "hub", tmp_path / "out", "hf")
    imported = load_model(tmp_path / "out").eval()
    x = batch()
    with torch.no_grad():
        assert (reference(**x).logits - imported(**x).logits).abs().max() <= 1e-5


# ---------------------------------------------------------------------------------------------------- CLI


def test_cli_import_and_its_errors(tmp_path):
    _, release, _ = tf_release(tmp_path)
    runner = CliRunner()
    result = runner.invoke(cli, ["-q", "import", "--from", "tf", str(release), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "as NezhaForPreTraining" in result.output and "optimizer slot" in result.output

    cases = {
        "output already exists": ["--from", "tf", str(release), "-o", str(tmp_path / "out")],
        "unknown checkpoint format 'keras'": ["--from", "keras", str(release), "-o", str(tmp_path / "o2")],
        "checkpoint not found": ["--from", "tf", str(tmp_path / "nope"), "-o", str(tmp_path / "o3")],
        "unknown architecture": ["--from", "tf", str(release), "-o", str(tmp_path / "o4"), "--architecture", "X"],
    }
    model = tiny_model("NezhaForPreTraining")
    tensors = tf_tensors(model)
    tensors["bert/pooler/dense/bias"] = np.zeros(31, np.float32)
    del tensors["cls/predictions/output_bias"]
    mis_shaped = write_tf_release(tmp_path / "mis-shaped", tensors, bert_config(model))
    cases["bert/pooler/dense/bias has shape [31]"] = ["--from", "tf", str(mis_shaped), "-o", str(tmp_path / "o5")]
    del tensors["bert/pooler/dense/bias"]
    missing = write_tf_release(tmp_path / "missing", tensors, bert_config(model))
    cases["lacks 2 tensor(s)"] = ["--from", "tf", str(missing), "-o", str(tmp_path / "o6")]
    for expected, args in cases.items():
        result = runner.invoke(cli, ["import", *args])
        assert result.exit_code == 2, (expected, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], (expected, result.output)
        assert "Traceback" not in result.output
    assert not any((tmp_path / name).exists() for name in ("o2", "o3", "o4", "o5", "o6"))
