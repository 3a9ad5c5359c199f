"""``nezha export``: a model directory as a transformers directory, an ONNX graph or a torch.export program."""

from __future__ import annotations

import json
import math
from pathlib import Path

import click


def _parity_table(report):
    from rich.table import Table

    table = Table(title=f"{report.architecture} vs PyTorch eager")
    for column in ("file", "length", "max |diff|", "argmax agreement"):
        table.add_column(column, justify="left" if column == "file" else "right")
    for p in report.parity:
        table.add_row(p.artifact, str(p.length), f"{p.max_abs_diff:.2e}", f"{p.argmax_agreement:.4f}")
    return table


@click.command("export")
@click.option("--model", "model_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Model directory: OUT/final of `nezha pretrain`/`finetune`, or a `nezha import` output.")
@click.option("-f", "--format", "fmt", required=True, metavar="[hf|onnx|torch-export]",
              help="hf: transformers directory with tokenizer files and model card; onnx: OUT/model.onnx "
                   "(extra nezha-cli[onnx]; a tagger's CRF goes to OUT/crf.json); torch-export: OUT/model.pt2.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Output directory.")
@click.option("--quantize", metavar="int8", default=None,
              help="onnx: also write model.int8.onnx (onnxruntime dynamic int8 quantization).")
@click.option("--fp16", is_flag=True, help="onnx: also write model.fp16.onnx (float16 inside, float32 outputs).")
@click.option("--opset", type=int, default=18, show_default=True, help="onnx: ONNX opset (18 or later).")
@click.option("--tolerance", type=float, default=1e-4, show_default=True,
              help="onnx/torch-export: largest |difference| from PyTorch accepted at lengths 7 and 600.")
@click.option("--metrics", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="hf: metrics JSON (or metrics.jsonl) for the model card [default: eval_results.json, "
                   "../test_results.json and ../metrics.jsonl next to the model].")
@click.option("--bin", "write_bin", is_flag=True,
              help="hf: also write pytorch_model.bin, for transformers releases that cannot read safetensors.")
@click.option("--vocab", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="vocab.txt to ship when the model directory has none.")
@click.option("--json", "as_json", is_flag=True, help="Print the export report as JSON.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output directory.")
@click.pass_context
def export(ctx: click.Context, model_dir: Path, fmt: str, output: Path, quantize: str | None, fp16: bool,
           opset: int, tolerance: float, metrics: Path | None, write_bin: bool, vocab: Path | None, as_json: bool,
           overwrite: bool) -> None:
    """Export a model directory for deployment or for transformers.

    \b
    onnx and torch-export graphs take input_ids, attention_mask and token_type_ids with dynamic batch and
    sequence axes (no length cap: NEZHA's relative positions have no 512 limit) and return the head's outputs,
    main output first (logits, start/end logits, or last_hidden_state). After export they are run against
    PyTorch at lengths 7 and 600 and the export fails if they differ by more than --tolerance; the int8/fp16
    variants' change (max |diff|, argmax agreement) is reported. OUT/export_report.json keeps the numbers.

    \b
    Examples:
      nezha export --model runs/chnsenti/final --format onnx -o deploy/chnsenti --quantize int8 --fp16
      nezha export --model runs/chnsenti/final --format hf -o hub/nezha-chnsenti
      nezha export --model models/nezha-base --format torch-export -o deploy/nezha-base-pt2
    """
    from nezha_cli.console import make_progress
    from nezha_cli.errors import ConfigError
    from nezha_cli.interchange import EXPORT_FORMATS, export_model

    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    if fmt != "hf" and (metrics is not None or write_bin):
        raise ConfigError("--metrics and --bin apply to --format hf only")
    given = {name for name in ("opset", "tolerance")
             if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT}
    if fmt != "onnx" and "opset" in given:
        raise ConfigError("--opset applies to --format onnx only")
    if fmt == "hf" and "tolerance" in given:
        raise ConfigError("--tolerance applies to --format onnx and torch-export only (hf writes the weights as "
                          "they are)")
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ConfigError(f"--tolerance {tolerance}: give a difference >= 0, such as 1e-4")
    options: dict = {"overwrite": overwrite, "vocab": vocab}
    if fmt == "hf":
        options.update(metrics=metrics, write_bin=write_bin)
    else:
        options["tolerance"] = tolerance
    if fmt == "onnx":
        options["opset"] = opset
    quiet = bool(ctx.obj and ctx.obj.get("quiet"))
    with make_progress("steps", disable=quiet or as_json) as progress:
        report = export_model(model_dir, output, fmt, quantize=quantize, fp16=fp16, progress=progress, **options)
    if as_json:
        click.echo(json.dumps(report.to_dict(), ensure_ascii=False))
        return
    from rich.console import Console

    if report.parity:
        Console().print(_parity_table(report))
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(f"wrote {output}: {', '.join(report.files)}")
