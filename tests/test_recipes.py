"""Recipes: the shipped ones are valid and say what the paper says; overrides are checked."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from nezha_cli.cli import cli
from nezha_cli.errors import ConfigError
from nezha_cli.pretraining.recipes import apply_override, list_recipes, load_recipe


def test_shipped_recipes_are_valid():
    names = set(list_recipes())
    assert {"tiny", "nezha-base", "nezha-base-512", "nezha-large", "nezha-large-512"} <= names
    for name in names:
        load_recipe(name)  # validates model, data and training sections


def test_paper_settings():
    base, large = load_recipe("nezha-base"), load_recipe("nezha-large")
    assert (base.model["hidden_size"], base.model["num_hidden_layers"], base.model["num_attention_heads"]) == \
        (768, 12, 12)
    assert (large.model["hidden_size"], large.model["num_hidden_layers"], large.model["num_attention_heads"]) == \
        (1024, 24, 16)
    assert base.training["optimizer"] == large.training["optimizer"] == "lamb"
    assert base.training["learning_rate"] == 1.8e-4 and base.training["warmup_steps"] == 1800
    assert base.training["lr_schedule"] == "linear" and base.training["global_batch_size"] == 14400
    assert base.data["max_seq_length"] == 128
    assert large.training["learning_rate"] == 1e-4 and large.training["lr_schedule"] == "polynomial"
    assert large.training["global_batch_size"] == 5120
    for name in ("nezha-base-512", "nezha-large-512"):
        assert load_recipe(name).data["max_seq_length"] == 512
    # The recipes' batch sizes divide on one device.
    for name in list_recipes():
        load_recipe(name).training_arguments(output_dir=".").batch_layout(1)


def test_overrides():
    recipe = load_recipe("tiny", ["training.learning_rate=1e-4", "num_hidden_layers=3", "dynamic=true",
                                  "max_grad_norm=null", "warmup_steps=0"])
    assert recipe.training["learning_rate"] == 1e-4
    assert recipe.model["num_hidden_layers"] == 3
    assert recipe.data["dynamic"] is True
    assert recipe.training["max_grad_norm"] is None


@pytest.mark.parametrize(("override", "message"), [
    ("foo=1", "unknown recipe key 'foo'"),
    ("training.lerning_rate=1", "did you mean training.learning_rate"),
    ("optim.lr=1", "unknown section 'optim'"),
    ("max_steps=abc", "training.max_steps='abc' must be int"),
    ("learning_rate", "expected key=value"),
    ("model.num_attention_heads=3", "not a multiple"),
    ("training.optimizer=sgd", "optimizer='sgd'"),
    ("training.output_dir=x", "unknown recipe key training.output_dir"),
])
def test_bad_overrides(override, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe("tiny", [override])


def test_unknown_recipe_and_bad_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown recipe 'tinny'; did you mean 'tiny'"):
        load_recipe("tinny")
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  max_steps: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_recipe(bad)
    bad.write_text("trainin:\n  max_steps: 1\n")
    with pytest.raises(ConfigError, match="unknown section"):
        load_recipe(bad)
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_recipe(tmp_path / "missing.yaml")


def test_apply_override_ambiguity_is_reported():
    recipe = load_recipe("tiny")
    apply_override(recipe, "seed=7")
    assert recipe.training["seed"] == 7


def test_recipes_cli(tmp_path):
    runner = CliRunner()
    listed = runner.invoke(cli, ["recipes", "list"])
    assert listed.exit_code == 0 and "nezha-base" in listed.output and "tiny" in listed.output
    shown = runner.invoke(cli, ["recipes", "show", "tiny", "learning_rate=0.001"])
    assert shown.exit_code == 0 and "learning_rate: 0.001" in shown.output and "# Keys accepted" in shown.output
    copied = runner.invoke(cli, ["recipes", "copy", "nezha-base", str(tmp_path)])
    assert copied.exit_code == 0, copied.output
    mine = tmp_path / "nezha-base.yaml"
    assert load_recipe(mine).training["learning_rate"] == 1.8e-4
    again = runner.invoke(cli, ["recipes", "copy", "nezha-base", str(tmp_path)])
    assert again.exit_code == 2 and "--overwrite" in again.output
    unknown = runner.invoke(cli, ["recipes", "show", "nope"])
    assert unknown.exit_code == 2 and "Traceback" not in unknown.output
    broken = tmp_path / "broken.yaml"
    broken.write_text("training: [1, 2\n")
    refused = runner.invoke(cli, ["recipes", "copy", str(broken), str(tmp_path / "copy.yaml")])
    assert refused.exit_code == 2 and "broken.yaml" in refused.output and not (tmp_path / "copy.yaml").exists()


@pytest.mark.slow
def test_recipes_ship_inside_the_wheel(tmp_path):
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(repo), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("nezha_cli-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for recipe in list_recipes():
        assert f"nezha_cli/recipes/{recipe}.yaml" in names
    assert "nezha_cli/modeling/kernels/relative_cpu.c" in names  # compiled on first use (relative_kernels)


def test_one_default_dupe_factor():
    from nezha_cli.cli.mask import mask
    from nezha_cli.pretraining.instances import InstanceConfig
    from nezha_cli.pretraining.recipes import DataOptions

    cli_default = next(p.default for p in mask.params if p.name == "dupe_factor")
    assert cli_default == InstanceConfig.dupe_factor == DataOptions.dupe_factor == 1
