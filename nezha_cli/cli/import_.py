"""``nezha import``: released NEZHA checkpoints (TensorFlow, NEZHA-PyTorch, transformers) -> a model directory."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("import")
@click.option("--from", "fmt", required=True, metavar="[tf|pytorch|hf]",
              help="tf: a TensorFlow checkpoint (DIR, PREFIX or PREFIX.index; TensorFlow not needed); "
                   "pytorch: NEZHA-PyTorch / pytorch-pretrained-bert weights (DIR or FILE); "
                   "hf: a local transformers model directory.")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Model directory to write.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="bert_config.json / config.json when it is not next to the checkpoint.")
@click.option("--vocab", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="vocab.txt when it is not next to the checkpoint.")
@click.option("--architecture", default=None, metavar="CLASS",
              help="Model class to build, e.g. NezhaModel [default: hf: config.architectures; else implied by "
                   "the checkpoint's heads: MLM + NSP -> NezhaForPreTraining, ...].")
@click.option("--json", "as_json", is_flag=True, help="Print the full import report as JSON.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output directory.")
@click.pass_context
def import_(ctx: click.Context, fmt: str, source: Path, output: Path, config_file: Path | None,
            vocab: Path | None, architecture: str | None, as_json: bool, overwrite: bool) -> None:
    """Convert a released NEZHA checkpoint SOURCE into a model directory.

    \b
    The config (bert_config.json) is translated, vocab.txt carried along, dense kernels transposed; optimizer
    slots (adam_m/adam_v, LAMB), global_step and absolute position embeddings are skipped. Every source
    tensor is listed in OUT/import_report.json as mapped (to which parameter) or skipped (and why). A tensor
    the model needs but the checkpoint lacks, or one whose shape does not fit the config, is an error and
    nothing is written. Nothing is downloaded: fetch hub models first.

    \b
    Examples:
      nezha import --from tf NEZHA-Base/ -o models/nezha-base
      nezha import --from tf NEZHA-Base/model.ckpt-900000 --config NEZHA-Base/bert_config.json -o models/nb
      nezha import --from pytorch nezha-cn-base/pytorch_model.bin -o models/nezha-cn-base
      nezha import --from hf ./nezha-cn-base -o models/nezha-cn-base --architecture NezhaForMaskedLM
    """
    from nezha_cli.console import make_progress
    from nezha_cli.interchange import import_checkpoint

    quiet = bool(ctx.obj and ctx.obj.get("quiet"))
    with make_progress("bytes", disable=quiet or as_json) as progress:
        report = import_checkpoint(source, output, fmt, config_file=config_file, vocab_file=vocab,
                                   architecture=architecture, overwrite=overwrite, progress=progress)
    if as_json:
        click.echo(json.dumps(report.to_dict(), ensure_ascii=False))
        return
    skipped = "; ".join(f"{reason}: {count}" for reason, count in report.skipped_by_reason().items())
    click.echo(f"imported {report.source} as {report.architecture} into {output}: {len(report.mapped)} tensors "
               f"mapped, {len(report.skipped)} skipped" + (f" ({skipped})" if skipped else "")
               + f"; details in {output / 'import_report.json'}")
