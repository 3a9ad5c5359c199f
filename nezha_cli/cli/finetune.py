"""``nezha finetune``: fine-tune a model directory on one of the paper's tasks or on your own data."""

from __future__ import annotations

from pathlib import Path

import click

from nezha_cli.cli import (
    ACCELERATE_CONFIG_HELP,
    ATTENTION_HELP,
    ATTENTION_IMPLEMENTATIONS,
    check_resume_or_overwrite,
)
from nezha_cli.engine.args import MIXED_PRECISIONS, OPTIMIZERS
from nezha_cli.text.word_features import SCHEMES as WORD_FEATURE_SCHEMES

# Column options of the generic tasks (the paper's tasks have fixed layouts), shared with `nezha evaluate`.
COLUMN_OPTIONS = (
    ("text_column", "Text column (classification; default: text/sentence/text_a)."),
    ("text_pair_column", "Second text column (pair-classification; default: text_pair/text_b/sentence2)."),
    ("label_column", "Label column (classification, multiple-choice; default: label)."),
    ("tokens_column", "Tokens column, a list or space-separated (ner; default: tokens/text_a)."),
    ("tags_column", "Tags column, a list or space-separated (ner; default: ner_tags/tags/label)."),
    ("question_column", "Question column (qa, multiple-choice; default: question)."),
    ("context_column", "Context column (qa, multiple-choice; default: context)."),
    ("answers_column", "Answers column {text: [...], answer_start: [...]} (qa; default: answers)."),
    ("choices_column", "Choices: a list column, or several columns a,b,c (multiple-choice; default: choices)."),
    ("id_column", "Example id column (default: id when present)."),
)


def column_options(f):
    for name, help_text in reversed(COLUMN_OPTIONS):
        f = click.option("--" + name.replace("_", "-"), name, default=None, metavar="NAME", help=help_text)(f)
    return f


def task_epilog() -> str:
    from nezha_cli.tasks.registry import TASKS

    lines = ["\b", "Tasks:"]
    for name, cls in TASKS.items():
        aliases = f" (also {', '.join(cls.aliases)})" if cls.aliases else ""
        lines.append(f"  {name:<20} {cls.description}{aliases}")
    return "\n".join(lines)


class TaskListCommand(click.Command):
    """A command whose help ends with the list of tasks, built only when that help is shown: the task modules
    import torch, which ``nezha --help`` (and every other command) should not pay for."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self.epilog = task_epilog()
        super().format_epilog(ctx, formatter)


def columns_from(kwargs: dict) -> dict:
    return {name: kwargs.pop(name) for name, _ in COLUMN_OPTIONS}


def relaunch_args(ctx: click.Context) -> list[str]:
    """This command's arguments as given (less --num-processes and --accelerate-config), for the processes that
    those start."""
    obj = ctx.obj or {}
    args = ["--debug"] if obj.get("debug") else []
    args += ["--quiet"] if obj.get("quiet") else []
    args.append(ctx.command.name)
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.name in ("num_processes", "accelerate_config") or value is None or value is False or value == ():
            continue
        flag = param.opts[-1] if param.opts[-1].startswith("--") else param.opts[0]
        if value is True:
            args.append(flag)
        else:
            for item in value if isinstance(value, (tuple, list)) else (value,):  # multiple=True options
                args += [flag, str(item)]
    return args


@click.command("finetune", cls=TaskListCommand)
@click.option("--task", "task_name", required=True, metavar="TASK", help="Task name (see the list below).")
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Pretrained model directory (config.json, model.safetensors, vocab.txt), e.g. OUT/final of "
                   "`nezha pretrain`.")
@click.option("--data-dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Directory with train/dev/test files by their usual names (train.tsv, dev.tsv, test.tsv; "
                   "train.json, dev.json, trial.json for cmrc).")
@click.option("--train-file", "train_files", multiple=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Training file; repeat it to train on several files as one set (e.g. a large silver-labelled "
                   "corpus and a small gold one; the label set is the union).")
@click.option("--validation-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Dev file, evaluated after every epoch; the best epoch becomes OUT/final.")
@click.option("--test-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Test file, predicted with the final model (OUT/test_predictions.*, OUT/test_results.json).")
@click.option("-o", "--output", "output_dir", required=True, type=click.Path(path_type=Path),
              help="Output directory (checkpoints/, metrics.jsonl, final/).")
@click.option("--epochs", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Epochs [default: the task's, from the paper's Table 3].")
@click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Stop after this many steps instead.")
@click.option("--learning-rate", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Peak learning rate [default: 3e-5, the paper's].")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Global batch size [default: the task's, 32 for the paper's tasks].")
@click.option("--per-device-batch-size", type=click.IntRange(min=1), default=None,
              help="Per-device batch; the rest is gradient accumulation [default: batch size / processes].")
@click.option("--max-seq-length", type=click.IntRange(min=8), default=None,
              help="Maximum tokens per input [default: the task's, from the paper's Table 3].")
@click.option("--warmup-ratio", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="Share of steps with linear warmup [default: 0.1].")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=None, help="Weight decay [default: 0.01].")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default="adamw", show_default=True)
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--mixed-precision", type=click.Choice(MIXED_PRECISIONS), default="auto", show_default=True,
              help="auto: bf16 where the hardware runs it fast, else fp32.")
@click.option("--gradient-checkpointing", is_flag=True,
              help="Compute each encoder layer again in the backward pass instead of keeping its activations: "
                   "longer inputs or larger batches in the same memory, for one more encoder forward per step; same "
                   "results.")
@click.option("--compile", is_flag=True,
              help="torch.compile the model: faster steps on GPUs after about a minute of compilation (again when "
                   "input lengths change).")
@click.option("--attention", type=click.Choice(ATTENTION_IMPLEMENTATIONS), default=None,
              help=ATTENTION_HELP + " [default: automatic, eager]")
@click.option("--group-by-length", is_flag=True,
              help="Form training batches of inputs of similar length (drawn at random from the whole data, like "
                   "transformers' option): less padding, so faster training on inputs of mixed length.")
@click.option("--logging-steps", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--save-steps", type=click.IntRange(min=0), default=None,
              help="Checkpoint every N steps [default: every epoch].")
@click.option("--num-processes", type=click.IntRange(min=1), default=1, show_default=True,
              help="Run N processes on this machine (GPUs, or CPU over gloo); or start with `accelerate launch`.")
@click.option("--accelerate-config", type=click.Path(path_type=Path), default=None, help=ACCELERATE_CONFIG_HELP)
@click.option("--from-scratch", is_flag=True,
              help="Randomly initialise the model (same architecture as --model) instead of loading its weights: "
                   "the baseline that shows what pretraining is worth.")
@click.option("--crf", is_flag=True,
              help="Tagging tasks (pd-ner, ner): a linear-chain CRF over the tags (trained on whole-sentence "
                   "likelihood, Viterbi decoding), as UER-py's --crf_target; kept in OUT/final.")
@click.option("--crf-learning-rate", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Peak learning rate of the CRF's transitions, which start at zero [default: 1e-2].")
@click.option("--word-features", type=click.Choice(WORD_FEATURE_SCHEMES), default=None,
              help="Tagging tasks: add to each character's embedding a learnt vector for its place in its jieba "
                   "word (B/M/E/S) and that word's part-of-speech class (person, place, organisation, noun, ...); "
                   "kept in OUT/final, computed again by `nezha evaluate`.")
@click.option("--vocab", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="vocab.txt when the model directory has none.")
@click.option("--resume", is_flag=True,
              help="Continue the run in OUT from its newest checkpoint, with the settings recorded in "
                   "OUT/finetune.yaml (a change that would alter the result is refused).")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty OUT.")
@column_options
@click.pass_context
def finetune(ctx: click.Context, task_name: str, model_dir: Path, data_dir: Path | None, train_files: tuple[Path, ...],
             validation_file: Path | None, test_file: Path | None, output_dir: Path, num_processes: int,
             accelerate_config: Path | None, **kwargs) -> None:
    """Fine-tune a pretrained model on a task, evaluating on the dev split every epoch.

    \b
    The best epoch (by accuracy, entity F1 or CMRC's AVERAGE) is kept as OUT/final/, a model directory with
    its task head, label names and vocab.txt, ready for `nezha evaluate`. OUT/metrics.jsonl logs the loss and
    the dev metrics; --resume continues an interrupted run.

    \b
    Examples:
      nezha finetune --task chnsenti --model pretrained/final --data-dir data/chnsenticorp -o runs/chnsenti
      nezha finetune --task classification --model M --train-file train.csv --validation-file dev.csv \\
          --text-column review --label-column stars -o runs/reviews
      nezha finetune --task pd-ner --model M --train-file silver.tsv --train-file train.tsv \\
          --validation-file dev.tsv -o runs/ner --crf --word-features jieba-pos
    """
    check_resume_or_overwrite(kwargs.get("resume", False), kwargs.get("overwrite", False))
    from nezha_cli.engine.launch import in_launched_process, launch_processes, launch_with_accelerate

    if accelerate_config is not None and not in_launched_process():
        ctx.exit(launch_with_accelerate(accelerate_config, relaunch_args(ctx), num_processes if num_processes > 1
                                        else None))
    if num_processes > 1 and not in_launched_process():
        ctx.exit(launch_processes(num_processes, relaunch_args(ctx)))

    from nezha_cli.tasks import get_task
    from nezha_cli.tasks.finetune import DataFiles, FinetuneOptions
    from nezha_cli.tasks.finetune import finetune as run_finetune

    task = get_task(task_name, **columns_from(kwargs))
    files = DataFiles.resolve(task, data_dir, train_files, validation_file, test_file)
    quiet = bool(ctx.obj and ctx.obj.get("quiet"))
    options = FinetuneOptions(**kwargs, progress=not quiet)
    result = run_finetune(task, model_dir, output_dir, files, options)
    if not result.main_process:
        return
    if result.best_metric is not None:
        click.echo(f"best dev {result.main_metric}: {result.best_metric:.4f}")
    if result.test_metrics is not None:
        click.echo(f"test {result.main_metric}: {result.test_metrics[result.main_metric]:.4f}")
    click.echo(f"model: {result.final_dir}")
