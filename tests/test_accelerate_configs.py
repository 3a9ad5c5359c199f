"""The accelerate config files in examples/accelerate/ (DDP, FSDP 2, DeepSpeed ZeRO-2/3): each loads with accelerate's
own loader and names the intended distributed type; the FSDP one wraps a class nezha has and keeps the MLM decoder's
tie to the word embeddings in one unit; the DeepSpeed ones build DeepSpeed's config dict (no deepspeed needed) and
leave nezha's gradient accumulation alone. And FSDP on CPU against DDP, where accelerate runs FSDP on CPU at all.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.utils import DeepSpeedPlugin, DistributedType, FullyShardedDataParallelPlugin
from pretrain_fixtures import TINY_MODEL, write_masked_data
from test_engine_multinode import assert_same_curve, free_port, kill_tree, node_env

from nezha_cli.engine.metrics_log import read_metrics
from nezha_cli.modeling import NezhaConfig, NezhaForPreTraining, modeling_nezha

CONFIGS = Path(__file__).resolve().parents[1] / "examples" / "accelerate"
EXPECTED = {"ddp.yaml": DistributedType.MULTI_GPU, "fsdp.yaml": DistributedType.FSDP,
            "deepspeed-zero2.yaml": DistributedType.DEEPSPEED, "deepspeed-zero3.yaml": DistributedType.DEEPSPEED}


def test_the_examples_are_the_four_configs():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_loads_with_accelerates_loader(name):
    config = load_config_from_file(str(CONFIGS / name))  # raises on keys this accelerate does not know
    assert isinstance(config, ClusterConfig)
    assert config.distributed_type == EXPECTED[name]
    assert config.num_machines == 1 and not config.use_cpu
    # nezha's --mixed-precision decides for DDP and FSDP; DeepSpeed writes its own precision section from this key.
    assert config.mixed_precision == ("bf16" if "deepspeed" in name else "no")
    # Every file says when to use it, in its opening comment.
    assert (CONFIGS / name).read_text(encoding="utf-8").startswith("# ")


def test_fsdp_config_wraps_nezha_layers_and_keeps_the_tie_in_the_root_unit():
    fsdp = load_config_from_file(str(CONFIGS / "fsdp.yaml")).fsdp_config
    assert fsdp["fsdp_version"] == 2
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
    layer_class = getattr(modeling_nezha, fsdp["fsdp_transformer_layer_cls_to_wrap"])
    # The plugin accelerate builds from these keys (as `accelerate launch` passes them on).
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=fsdp["fsdp_version"], auto_wrap_policy=fsdp["fsdp_auto_wrap_policy"],
        transformer_cls_names_to_wrap=[fsdp["fsdp_transformer_layer_cls_to_wrap"]],
        state_dict_type=fsdp["fsdp_state_dict_type"], reshard_after_forward=fsdp["fsdp_reshard_after_forward"])
    assert plugin.fsdp_version == 2
    # The wrapped units hold no tied parameter: the decoder and the word embeddings are outside every NezhaLayer,
    # so both stay in the root unit and FSDP shards them as one parameter.
    model = NezhaForPreTraining(NezhaConfig(vocab_size=40, **TINY_MODEL))
    assert model.cls.predictions.decoder.weight is model.nezha.embeddings.word_embeddings.weight
    layers = [m for m in model.modules() if isinstance(m, layer_class)]
    assert len(layers) == TINY_MODEL["num_hidden_layers"]
    in_layers = {id(p) for layer in layers for p in layer.parameters()}
    assert id(model.nezha.embeddings.word_embeddings.weight) not in in_layers


@pytest.mark.parametrize("name, stage", [("deepspeed-zero2.yaml", 2), ("deepspeed-zero3.yaml", 3)])
def test_deepspeed_config_builds_a_deepspeed_config_dict(name, stage):
    ds = load_config_from_file(str(CONFIGS / name)).deepspeed_config
    assert ds["zero_stage"] == stage
    # Not set here, because `accelerate launch` exports it and it then overrides the accumulation nezha derives
    # from the recipe (Accelerator reads ACCELERATE_GRADIENT_ACCUMULATION_STEPS before its own argument).
    assert "gradient_accumulation_steps" not in ds
    # DeepSpeedPlugin builds DeepSpeed's JSON config without importing deepspeed (a GPU-only extra).
    plugin = DeepSpeedPlugin(zero_stage=ds["zero_stage"], offload_optimizer_device=ds["offload_optimizer_device"],
                             offload_param_device=ds["offload_param_device"], zero3_init_flag=ds["zero3_init_flag"],
                             zero3_save_16bit_model=ds.get("zero3_save_16bit_model", False))
    config = plugin.deepspeed_config
    assert config["zero_optimization"]["stage"] == stage
    # "auto": filled from the Accelerator nezha builds (batch layout from the recipe).
    assert config["gradient_accumulation_steps"] == config["train_micro_batch_size_per_gpu"] == "auto"
    if stage == 3:
        assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


# ---------------------------------------------------------------------------------------------- FSDP on CPU
TINY = [f"model.{k}={v}" for k, v in {**TINY_MODEL, "num_hidden_layers": 2}.items()] + [
    "global_batch_size=8", "per_device_batch_size=4", "logging_steps=1", "eval_examples=16", "eval_steps=2",
    "optimizer=adamw", "learning_rate=0.01", "warmup_steps=1", "lr_schedule=constant"]
_PROBE = ("from accelerate import Accelerator; from nezha_cli.engine.precision import current_device_type; "
          "print(Accelerator(cpu=current_device_type() == 'cpu').distributed_type)")


def distributed_type_under_fsdp(port: int) -> str:
    """What accelerate makes of `accelerate launch --config_file fsdp.yaml` in one process, built as nezha's
    Trainer builds its Accelerator (cpu=True on a host without an accelerator)."""
    env = {**node_env(), "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "RANK": "0", "LOCAL_RANK": "0",
           "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    done = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def launch(config: Path | None, data: Path, out: Path) -> None:
    head = ["--config_file", str(config)] if config else ["--multi_gpu", "--mixed_precision", "no",
                                                          "--dynamo_backend", "no"]
    command = [sys.executable, "-m", "accelerate.commands.launch", *head, "--num_processes", "2",
               "--main_process_port", str(free_port()), "-m", "nezha_cli", "--quiet", "pretrain", "--data", str(data),
               "-o", str(out), "--max-steps", "4", "--save-steps", "2", "--seed", "1", "--mixed-precision", "no",
               "--cache-dir", str(out.parent / "cache"), *TINY]
    process = subprocess.Popen(command, env=node_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = process.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        kill_tree(process)
        raise
    assert process.returncode == 0, output[-3000:]


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="torch built without gloo")
def test_fsdp_on_cpu_follows_ddp(tmp_path):
    kind = distributed_type_under_fsdp(free_port())
    if kind != str(DistributedType.FSDP):
        # accelerate 1.16: AcceleratorState turns ACCELERATE_USE_FSDP into DistributedType.FSDP only on top of
        # MULTI_GPU/NPU/XPU/HPU/MLU/MUSA/SDAA/NEURON (accelerate/state.py), never MULTI_CPU, and `accelerate launch`
        # takes its FSDP path only without --cpu. torch's own fully_shard does run on CPU over gloo; accelerate
        # does not route to it, and a 2-process CPU run with fsdp.yaml silently trains as DDP.
        pytest.skip(f"accelerate runs FSDP only on an accelerator: with fsdp.yaml a CPU process is {kind}, not FSDP "
                    "(accelerate/state.py maps ACCELERATE_USE_FSDP to FSDP only on GPU/NPU/XPU/... processes)")
    data = write_masked_data(tmp_path / "data", n=80)
    launch(None, data, tmp_path / "ddp")
    launch(CONFIGS / "fsdp.yaml", data, tmp_path / "fsdp")
    ddp, fsdp = (read_metrics(tmp_path / run / "metrics.jsonl") for run in ("ddp", "fsdp"))
    assert [r["step"] for r in fsdp if "loss" in r] == [1, 2, 3, 4]
    assert_same_curve(fsdp, ddp)
    # The checkpoints are FSDP's sharded ones, and the final model loads in one process.
    assert any(p.name.startswith("pytorch_model_fsdp") for p in (tmp_path / "fsdp" / "checkpoints").rglob("*"))
    NezhaForPreTraining.from_pretrained(tmp_path / "fsdp" / "final")
