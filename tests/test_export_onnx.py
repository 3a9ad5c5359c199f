"""`nezha export --format onnx`: parity in onnxruntime, dynamic axes, no length cap, int8 and fp16 variants."""

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from export_fixtures import model_dir

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from nezha_cli.cli import cli  # noqa: E402
from nezha_cli.interchange import export_model  # noqa: E402
from nezha_cli.interchange.onnx import large_constants  # noqa: E402
from nezha_cli.modeling import load_model  # noqa: E402

pytestmark = pytest.mark.slow  # each export traces the model with torch.export (seconds)


@pytest.fixture(scope="module")
def classifier_export(tmp_path_factory):
    """One export through the CLI, shared by the tests below; yields the parsed --json report."""
    tmp = tmp_path_factory.mktemp("onnx")
    source = model_dir(tmp, "NezhaForSequenceClassification")
    out = tmp / "deploy"
    result = CliRunner().invoke(cli, ["-q", "export", "--model", str(source), "--format", "onnx", "-o", str(out),
                                      "--quantize", "int8", "--fp16", "--json"])
    assert result.exit_code == 0, result.output
    return source, out, json.loads(result.output)


def run(path, feeds):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {k: v.numpy() for k, v in feeds.items()})


def inputs(length, batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 60, (batch, length), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}


def test_onnx_matches_pytorch_at_short_and_long_lengths(classifier_export):
    source, out, report = classifier_export
    fp32 = [p for p in report["parity"] if p["artifact"] == "model.onnx"]
    assert [p["length"] for p in fp32] == [7, 600]
    assert all(p["max_abs_diff"] <= 1e-4 and p["argmax_agreement"] == 1.0 for p in fp32)
    # Independently of the report: batch 1 and a length neither traced (32) nor checked (7, 600).
    model = load_model(source).eval()
    x = inputs(1030)
    with torch.no_grad():
        expected = model(**x).logits.numpy()
    assert np.abs(run(out / "model.onnx", x)[0] - expected).max() <= 1e-4
    assert json.loads((out / "export_report.json").read_text())["parity"] == report["parity"]


def test_onnx_graph_interface_and_constants(classifier_export):
    source, out, _ = classifier_export
    model = onnx.load(str(out / "model.onnx"))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    axes = {i.name: [d.dim_param for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert axes == {name: ["batch", "sequence"] for name in ("input_ids", "attention_mask", "token_type_ids")}
    assert [o.name for o in model.graph.output] == ["logits"]
    head_size = 16
    for init in model.graph.initializer:
        assert len(init.dims) <= 2, init.name
        assert math.prod(init.dims) < 600 * 600 * head_size, init.name
    for file in ("config.json", "vocab.txt"):
        assert (out / file).is_file()


def test_int8_and_fp16_variants_are_reported(classifier_export):
    _, out, report = classifier_export
    by_file = {}
    for p in report["parity"]:
        by_file.setdefault(p["artifact"], []).append(p)
    assert set(by_file) == {"model.onnx", "model.int8.onnx", "model.fp16.onnx"}
    for artifact in ("model.int8.onnx", "model.fp16.onnx"):
        assert [p["length"] for p in by_file[artifact]] == [7, 600]
        assert all(0 <= p["argmax_agreement"] <= 1 and np.isfinite(p["max_abs_diff"]) for p in by_file[artifact])
    int8_ops = {n.op_type for n in onnx.load(str(out / "model.int8.onnx")).graph.node}
    assert int8_ops & {"MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul"}
    fp16 = onnx.load(str(out / "model.fp16.onnx"))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in fp16.graph.initializer)
    assert fp16.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # callers see float32


def test_multiple_choice_exports_with_a_choices_axis(tmp_path):
    source = model_dir(tmp_path, "NezhaForMultipleChoice")
    report = export_model(source, tmp_path / "mc", "onnx", check_lengths=(7, 520))
    assert all(p.max_abs_diff <= 1e-4 for p in report.parity)
    graph = onnx.load(str(tmp_path / "mc" / "model.onnx")).graph
    assert [d.dim_param for d in graph.input[0].type.tensor_type.shape.dim] == ["batch", "num_choices", "sequence"]
    x = {k: v[None].repeat(1, 3, 1) for k, v in inputs(9).items()}  # 1 example, 3 choices
    with torch.no_grad():
        expected = load_model(source).eval()(**x).logits.numpy()
    assert np.abs(run(tmp_path / "mc" / "model.onnx", x)[0] - expected).max() <= 1e-4


def test_crf_tagger_exports_its_transitions_beside_the_graph(tmp_path):
    from nezha_cli.modeling.crf import CrfTransitions
    from nezha_cli.tasks.token_classification import decode_tags

    source = model_dir(tmp_path, "NezhaForTokenClassification", use_crf=True,
                       id2label=dict(enumerate(["O", "B-PER", "I-PER"])))
    model = load_model(source).eval()
    with torch.no_grad():
        for param in model.crf.parameters():
            param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(3)))
    model.save_pretrained(source)
    report = export_model(source, tmp_path / "ner", "onnx", check_lengths=(7,))
    assert any("crf.json" in note for note in report.notes)
    crf = json.loads((tmp_path / "ner" / "crf.json").read_text())
    assert crf["labels"] == ["O", "B-PER", "I-PER"]
    assert torch.equal(torch.tensor(crf["transitions"]), model.crf.transitions)
    # The graph's logits and the file decode to the tags PyTorch's model and its CRF give.
    x = inputs(11)
    logits = run(tmp_path / "ner" / "model.onnx", x)[0][0]
    exported = CrfTransitions(*(np.array(crf[k], dtype=np.float32)
                                for k in ("start_transitions", "transitions", "end_transitions")))
    id2label = dict(enumerate(crf["labels"]))
    with torch.no_grad():
        expected = decode_tags(model(**x).logits[0].numpy(), id2label, model.crf.numpy_transitions())
    assert decode_tags(logits, id2label, exported) == expected


def test_word_feature_tagger_exports_with_a_feature_input(tmp_path):
    from nezha_cli.text.word_features import num_word_features

    source = model_dir(tmp_path, "NezhaForTokenClassification", word_features="jieba-pos")
    report = export_model(source, tmp_path / "ner", "onnx", check_lengths=(7, 600))
    assert all(p.max_abs_diff <= 1e-4 for p in report.parity)
    graph = onnx.load(str(tmp_path / "ner" / "model.onnx")).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask", "token_type_ids", "word_feature_ids"]
    x = inputs(13)
    x["word_feature_ids"] = torch.randint(1, num_word_features("jieba-pos"), (1, 13),
                                          generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = load_model(source).eval()(**x).logits.numpy()
    assert np.abs(run(tmp_path / "ner" / "model.onnx", x)[0] - expected).max() <= 1e-4


def test_large_constant_check_flags_a_relative_table(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    model = load_model(model_dir(tmp_path)).eval()
    table = numpy_helper.from_array(np.zeros((10, 10, 16), np.float32), name="relative_table")
    graph = helper.make_graph([helper.make_node("Identity", ["relative_table"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [10, 10, 16])], [table])
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph), str(path))
    assert large_constants(path, model, 600) == [("relative_table", [10, 10, 16])]
