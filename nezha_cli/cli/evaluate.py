"""``nezha evaluate``: a fine-tuned model's predictions and official metric on a task file, or the official CMRC
2018 score of an existing prediction file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from nezha_cli.cli.finetune import TaskListCommand, column_options, columns_from


def _metrics_table(title: str, metrics: dict[str, Any]):
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        if isinstance(value, float):
            table.add_row(key, f"{value:.3f}" if key.isupper() else f"{value:.4f}")
        elif isinstance(value, int):
            table.add_row(key, str(value))
    per_type = metrics.get("per_type")
    if per_type:
        for entity_type, scores in per_type.items():
            table.add_row(f"{entity_type} P/R/F1",
                          f"{scores['precision']:.4f} / {scores['recall']:.4f} / {scores['f1']:.4f}")
    return table


def _show(metrics: dict[str, Any], title: str, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(metrics, ensure_ascii=False))
        return
    from rich.console import Console

    Console().print(_metrics_table(title, metrics))


@click.command("evaluate", cls=TaskListCommand)
@click.argument("task_name", metavar="TASK")
@click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Fine-tuned model directory (OUT/final of `nezha finetune`).")
@click.option("--data-dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Directory with the task's files by their usual names; --split picks one.")
@click.option("--split", type=click.Choice(["dev", "test"]), default="dev", show_default=True,
              help="Which file of --data-dir to evaluate (not with --file).")
@click.option("--file", "file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The file to evaluate (instead of --data-dir).")
@click.option("--dataset", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="cmrc only: the gold SQuAD-style JSON, scored against --predictions without a model.")
@click.option("--predictions", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="cmrc only: a {question id: answer} JSON file to score against --dataset.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="Write the metrics JSON here.")
@click.option("--predictions-out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the predictions here ({id: answer} JSON for cmrc/qa, JSON Lines otherwise).")
@click.option("--max-seq-length", type=click.IntRange(min=8), default=None,
              help="Maximum tokens per input [default: the task's].")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--mixed-precision", type=click.Choice(["no", "bf16", "fp16"]), default=None,
              help="Autocast of the forward pass [default: the one the model was fine-tuned with, recorded in its "
                   "config, which reproduces the dev metric of `nezha finetune` exactly; no (fp32) for other models].")
@click.option("--vocab", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="vocab.txt when the model directory has none.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON instead of a table.")
@click.option("--overwrite", is_flag=True, help="Replace existing --output/--predictions-out files.")
@column_options
@click.pass_context
def evaluate(ctx: click.Context, task_name: str, model_dir: Path | None, data_dir: Path | None, split: str,
             file: Path | None, dataset: Path | None, predictions: Path | None, output: Path | None,
             predictions_out: Path | None, max_seq_length: int | None, batch_size: int, mixed_precision: str | None,
             vocab: Path | None, as_json: bool, overwrite: bool, **kwargs) -> None:
    """Score a fine-tuned model on a task file with the task's official metric.

    \b
    Metrics JSON keys: accuracy (classification), precision/recall/f1 (NER, entity level as conlleval),
    EM/F1/AVERAGE/TOTAL/SKIP (cmrc, the official CMRC 2018 script).

    \b
    Examples:
      nezha evaluate chnsenti --model runs/chnsenti/final --data-dir data/chnsenticorp --output dev.json
      nezha evaluate pd-ner --model runs/ner/final --file test.tsv --predictions-out tags.jsonl
      nezha evaluate cmrc --dataset dev.json --predictions predictions.json      (no model needed)
    """
    from nezha_cli.io import check_output_path, write_json
    from nezha_cli.tasks import get_task_class

    if output is not None and predictions_out is not None and output.resolve() == predictions_out.resolve():
        raise click.UsageError("--output and --predictions-out name the same file; give them different paths")
    # The files read (the model's and the data directory's too), which --overwrite must not write over.
    inputs = [p for p in (file, dataset, predictions) if p is not None]
    for directory in (model_dir, data_dir):
        if directory is not None and directory.is_dir():
            inputs += [directory, *directory.iterdir()]
    for path in (output, predictions_out):
        if path is not None:
            check_output_path(path, overwrite, inputs=inputs)
    task_cls = get_task_class(task_name)
    if dataset is not None or predictions is not None:
        if task_cls.name != "cmrc":
            raise click.UsageError("--dataset/--predictions score CMRC 2018 prediction files; use them with cmrc")
        if dataset is None or predictions is None:
            raise click.UsageError("give both --dataset and --predictions")
        if model_dir is not None or file is not None or data_dir is not None:
            raise click.UsageError("--dataset/--predictions score a prediction file; leave out --model, --file and "
                                   "--data-dir")
        from nezha_cli.tasks.evaluate import score_cmrc_predictions

        metrics, unanswered = score_cmrc_predictions(dataset, predictions)
        if unanswered:
            click.echo(f"{len(unanswered)} unanswered question(s), scored 0: {', '.join(unanswered[:5])}"
                       + (" ..." if len(unanswered) > 5 else ""), err=True)
        metrics["FILE"] = str(predictions)
        if output is not None:
            write_json(output, metrics, overwrite=overwrite)
        _show(metrics, f"CMRC 2018: {predictions.name}", as_json)
        return

    if model_dir is None:
        raise click.UsageError("give --model (a fine-tuned model directory)"
                               + (", or --dataset and --predictions" if task_cls.name == "cmrc" else ""))
    if (file is None) == (data_dir is None):
        raise click.UsageError("give exactly one of --file and --data-dir")
    if file is not None and ctx.get_parameter_source("split") is not click.core.ParameterSource.DEFAULT:
        raise click.UsageError("--split picks a file of --data-dir; with --file, leave it out")
    from nezha_cli.console import make_progress
    from nezha_cli.tasks import get_task
    from nezha_cli.tasks.evaluate import evaluate_model, write_predictions

    task = get_task(task_name, **columns_from(kwargs))
    path = file if file is not None else task.split_file(data_dir, split)
    quiet = bool(ctx.obj and ctx.obj.get("quiet"))
    with make_progress("features", disable=quiet) as progress:
        result = evaluate_model(task, model_dir, path, max_seq_length=max_seq_length, batch_size=batch_size,
                                vocab=vocab, progress=progress, mixed_precision=mixed_precision)
    if predictions_out is not None:
        write_predictions(task, predictions_out, result.examples, result.predictions, overwrite=overwrite)
    if result.metrics is None:
        click.echo(f"{path}: no gold labels; predictions only"
                   + (f" (written to {predictions_out})" if predictions_out else " (pass --predictions-out)"),
                   err=True)
        return
    metrics = {**result.metrics, "FILE": str(path)}
    if output is not None:
        write_json(output, metrics, overwrite=overwrite)
    _show(metrics, f"{task.name}: {path.name}", as_json)
