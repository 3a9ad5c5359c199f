"""`nezha export --format hf`: a directory that this package and transformers both load, for every head."""

import json
import warnings

import pytest
import torch
from export_fixtures import batch, model_dir

from nezha_cli.errors import CheckpointError
from nezha_cli.interchange import export_model
from nezha_cli.interchange.hf import AUTO_CLASSES
from nezha_cli.modeling import MODEL_CLASSES, load_model

HEADS = list(MODEL_CLASSES)


def main_outputs(model, x):
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = model(**x)
    return [t for t in out.to_tuple()[:2] if isinstance(t, torch.Tensor)]


def head_batch(name):
    x = batch(20)
    if name == "NezhaForMultipleChoice":
        x = {k: v[None].repeat(2, 1, 1) for k, v in x.items()}
    return x


@pytest.mark.parametrize("name", HEADS)
def test_hf_export_round_trip(name, tmp_path):
    source_dir = model_dir(tmp_path, name)
    out = tmp_path / "hub"
    report = export_model(source_dir, out, "hf")
    assert report.architecture == name
    for file in ("config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json", "README.md",
                 "export_report.json"):
        assert (out / file).is_file(), file
    x = head_batch(name)
    source = load_model(source_dir).eval()
    reloaded = load_model(out).eval()
    assert type(reloaded).__name__ == name
    for a, b in zip(main_outputs(source, x), main_outputs(reloaded, x), strict=True):
        assert torch.equal(a, b)

    hf = pytest.importorskip("transformers.models.deprecated.nezha")
    reference = getattr(hf, name).from_pretrained(out).eval()
    for a, b in zip(main_outputs(source, x), main_outputs(reference, x), strict=True):
        assert (a - b).abs().max() <= 1e-5
    # The Auto class the model card shows finds the same class.
    import transformers

    auto = AUTO_CLASSES[name]
    assert f"{auto}.from_pretrained" in (out / "README.md").read_text()
    assert "nezha_cli.modeling.transformers_classes import register; register()" in (out / "README.md").read_text()
    assert type(getattr(transformers, auto).from_pretrained(out)).__name__ == name


def test_hf_tokenizer_and_legacy_weights(tmp_path):
    transformers = pytest.importorskip("transformers")
    out = tmp_path / "hub"
    export_model(model_dir(tmp_path), out, "hf", write_bin=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert tokenizer.convert_tokens_to_ids(["[CLS]", "t0"]) == [2, 5]
    state = torch.load(out / "pytorch_model.bin", weights_only=True)
    assert torch.equal(state["classifier.weight"], load_model(out).classifier.weight)


def test_model_card_names_its_source_and_metrics(tmp_path):
    run = tmp_path / "run"
    source_dir = model_dir(run, "NezhaForSequenceClassification")
    final = run / "final"
    source_dir.rename(final)
    (run / "test_results.json").write_text(json.dumps({"accuracy": 0.9512, "count": 1200}))
    (run / "recipe.yaml").write_text("training:\n  learning_rate: 3.0e-5\n")
    export_model(final, tmp_path / "hub", "hf")
    card = (tmp_path / "hub" / "README.md").read_text()
    assert card.startswith("---\n") and "pipeline_tag: text-classification" in card
    assert str(final) in card and "NezhaForSequenceClassification" in card
    assert "| accuracy | 0.9512 |" in card and "| count | 1200 |" in card
    assert "learning_rate: 3.0e-5" in card

    metrics = tmp_path / "dev.json"
    metrics.write_text(json.dumps({"f1": 0.8}))
    export_model(final, tmp_path / "hub2", "hf", metrics=metrics)
    assert "| f1 | 0.8000 |" in (tmp_path / "hub2" / "README.md").read_text()


def test_hf_export_refuses_incomplete_models(tmp_path):
    no_vocab = model_dir(tmp_path, vocab=False)
    with pytest.raises(CheckpointError, match="no vocab.txt"):
        export_model(no_vocab, tmp_path / "out", "hf")
    # A head that would be exported at random initial values.
    config = json.loads((no_vocab / "config.json").read_text())
    config["architectures"] = ["NezhaForQuestionAnswering"]
    (no_vocab / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="qa_outputs"):
        export_model(no_vocab, tmp_path / "out", "hf")
    assert not (tmp_path / "out").exists()


def test_model_card_reports_the_evaluation_the_model_was_kept_from(tmp_path):
    run = tmp_path / "run"
    model_dir(run, "NezhaForSequenceClassification").rename(run / "final")
    log = [{"step": 10, "loss": 0.7}, {"step": 10, "epoch": 1, "eval_accuracy": 0.81},
           {"step": 20, "epoch": 2, "eval_accuracy": 0.78}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    export_model(run / "final", tmp_path / "last", "hf")
    card = (tmp_path / "last" / "README.md").read_text()
    # No trainer state to say which evaluation OUT/final is: the last one, without step/epoch as scores.
    assert "last evaluation during training (step 20)" in card and "| eval_accuracy | 0.7800 |" in card
    assert "| epoch |" not in card and "| step |" not in card
    state = run / "checkpoints" / "step-00000020"
    state.mkdir(parents=True)
    (state / "trainer_state.json").write_text(json.dumps({"global_step": 20, "best_step": 10}))
    export_model(run / "final", tmp_path / "best", "hf")
    card = (tmp_path / "best" / "README.md").read_text()
    assert "best evaluation during training, the one this model was kept from (step 10)" in card
    assert "| eval_accuracy | 0.8100 |" in card and "0.7800" not in card
