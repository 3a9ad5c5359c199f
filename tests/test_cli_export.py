"""`nezha export` on the command line: bad input is one line with exit code 2 and leaves nothing behind."""

import json
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from export_fixtures import batch, model_dir

from nezha_cli.cli import cli
from nezha_cli.modeling import load_model


def invoke(*args):
    return CliRunner().invoke(cli, ["-q", "export", *map(str, args)])


def assert_one_line_error(result, expected):
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.output
    assert "Traceback" not in result.output


def test_bad_input_is_one_line_exit_2_and_no_output(tmp_path):
    good = model_dir(tmp_path)
    no_config = tmp_path / "no-config"
    no_config.mkdir()
    (no_config / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes())
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((good / "config.json").read_text())
    existing = tmp_path / "existing"
    existing.mkdir()
    crf = model_dir(tmp_path, "NezhaForTokenClassification", use_crf=True)
    word_features = model_dir(tmp_path / "wf", "NezhaForTokenClassification", word_features="jieba-pos")
    out = tmp_path / "out"
    empty_vocab = tmp_path / "empty-vocab.txt"
    empty_vocab.write_text("")
    big_vocab = tmp_path / "big-vocab.txt"
    tokens = (good / "vocab.txt").read_text(encoding="utf-8").splitlines()
    big_vocab.write_text("\n".join(tokens + [f"extra{i}" for i in range(json.loads(
        (good / "config.json").read_text())["vocab_size"] - len(tokens) + 1)]) + "\n", encoding="utf-8")
    before = sorted(p.name for p in good.iterdir())
    cases = [
        *[(["--model", crf, "--format", fmt, "-o", out], "a tagger with a CRF") for fmt in ("hf", "torch-export")],
        (["--model", word_features, "--format", "hf", "-o", out], "a tagger with word features (jieba-pos"),
        (["--model", no_config, "--format", "hf", "-o", out], "no config.json"),
        (["--model", no_weights, "--format", "hf", "-o", out], "no model.safetensors or pytorch_model.bin"),
        (["--model", tmp_path / "missing", "--format", "hf", "-o", out], "model directory not found"),
        (["--model", good, "--format", "tflite", "-o", out], "unknown export format 'tflite'"),
        (["--model", good, "--format", "hf", "-o", existing], "output already exists"),
        (["--model", good, "--format", "hf", "-o", out, "--quantize", "int8"], "apply to --format onnx only"),
        (["--model", good, "--format", "onnx", "-o", out, "--quantize", "int4"], "unknown --quantize 'int4'"),
        (["--model", good, "--format", "onnx", "-o", out, "--opset", "17"], "opset 18 or later"),
        (["--model", good, "--format", "hf", "-o", out, "--opset", "18"], "--opset applies to --format onnx only"),
        (["--model", good, "--format", "hf", "-o", out, "--tolerance", "1e-3"], "--tolerance applies to"),
        (["--model", good, "--format", "torch-export", "-o", out, "--tolerance", "nan"], "give a difference >= 0"),
        (["--model", good, "--format", "torch-export", "-o", out, "--tolerance", "-1"], "give a difference >= 0"),
        (["--model", good, "--format", "hf", "-o", good, "--overwrite"], "would replace the input"),
        (["--model", good, "--format", "hf", "-o", tmp_path, "--overwrite"], "would replace the input"),
        (["--model", good, "--format", "hf", "-o", out, "--vocab", empty_vocab], "vocab file is empty"),
        (["--model", good, "--format", "hf", "-o", out, "--vocab", big_vocab], "more than the model's vocab_size"),
        (["--model", good, "--format", "onnx", "-o", out, "--metrics", good / "config.json"], "--format hf only"),
    ]
    for args, expected in cases:
        assert_one_line_error(invoke(*args), expected)
    assert not out.exists()
    assert list(existing.iterdir()) == []
    assert sorted(p.name for p in good.iterdir()) == before  # -o over the model itself deleted nothing
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directories left


def test_missing_onnx_extra_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    result = invoke("--model", model_dir(tmp_path), "--format", "onnx", "-o", tmp_path / "out")
    assert_one_line_error(result, "pip install 'nezha-cli[onnx]'")


def test_hf_export_on_the_command_line(tmp_path):
    result = invoke("--model", model_dir(tmp_path), "--format", "hf", "-o", tmp_path / "hub")
    assert result.exit_code == 0, result.output
    assert "README.md" in result.output and "vocab.txt" in result.output
    assert type(load_model(tmp_path / "hub")).__name__ == "NezhaForSequenceClassification"


@pytest.mark.slow
def test_torch_export_program_runs_past_512_tokens(tmp_path):
    source = model_dir(tmp_path, "NezhaForQuestionAnswering")
    result = invoke("--model", source, "--format", "torch-export", "-o", tmp_path / "pt2", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["outputs"] == ["start_logits", "end_logits"]
    assert [p["length"] for p in report["parity"]] == [7, 600]
    program = torch.export.load(tmp_path / "pt2" / "model.pt2").module()
    x = batch(700)
    with torch.no_grad():
        start, end = program(x["input_ids"], x["attention_mask"], x["token_type_ids"])
        expected = load_model(source).eval()(**x)
    assert np.allclose(start, expected.start_logits, atol=1e-5) and np.allclose(end, expected.end_logits, atol=1e-5)


@pytest.mark.slow
def test_torch_export_of_a_word_feature_tagger_takes_the_feature_ids(tmp_path):
    source = model_dir(tmp_path, "NezhaForTokenClassification", word_features="jieba-pos")
    result = invoke("--model", source, "--format", "torch-export", "-o", tmp_path / "pt2", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["inputs"] == ["input_ids", "attention_mask", "token_type_ids", "word_feature_ids"]
    assert any("WordFeaturizer('jieba-pos')" in note for note in report["notes"])
    assert json.loads((tmp_path / "pt2" / "config.json").read_text())["word_features"] == "jieba-pos"
    program = torch.export.load(tmp_path / "pt2" / "model.pt2").module()
    x = batch(20)
    features = torch.randint(1, 37, x["input_ids"].shape, generator=torch.Generator().manual_seed(1))
    model = load_model(source).eval()
    with torch.no_grad():
        (logits,) = program(x["input_ids"], x["attention_mask"], x["token_type_ids"], features)
        expected = model(**x, word_feature_ids=features).logits
        other = model(**x, word_feature_ids=features.flip(-1)).logits
    assert np.allclose(logits, expected, atol=1e-5) and not np.allclose(logits, other, atol=1e-3)


def test_a_failed_parity_check_writes_nothing(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from nezha_cli.interchange import onnx as onnx_export
    from nezha_cli.interchange.program import Parity

    # Stand-ins for the (slow) trace and onnxruntime run: a graph whose outputs are off by 0.5 at L = 600.
    monkeypatch.setattr(onnx_export, "write_onnx", lambda model, path, opset: path.write_bytes(b"graph"))
    monkeypatch.setattr(onnx_export, "dynamic_input_axes", lambda path: {})
    monkeypatch.setattr(onnx_export, "large_constants", lambda path, model, length: [])
    monkeypatch.setattr(onnx_export, "runner", lambda path: None)
    monkeypatch.setattr(onnx_export, "check_parity",
                        lambda model, artifact, run, lengths: [Parity(artifact, 7, 0.0, 1.0),
                                                               Parity(artifact, 600, 0.5, 0.9)])
    out = tmp_path / "out"
    result = invoke("--model", model_dir(tmp_path), "--format", "onnx", "-o", out)
    assert_one_line_error(result, "differs from PyTorch by 5.00e-01 at length 600")
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
