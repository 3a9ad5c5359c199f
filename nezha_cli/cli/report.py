"""``nezha report``: a training run's metrics.jsonl as curves (PNG, SVG, PDF or a self-contained HTML page)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("report")
@click.argument("run_dir", metavar="OUT", type=click.Path(file_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the figure; the suffix picks the format [default: OUT/report.png].")
@click.option("-f", "--format", "fmt", type=click.Choice(["png", "svg", "pdf", "html"], case_sensitive=False),
              default=None, help="png, svg, pdf, or html (a page with the figure as inline SVG) [default: from "
                                 "--output's suffix, else png].")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
def report(run_dir: Path, output: Path | None, fmt: str | None, overwrite: bool) -> None:
    """Draw the curves of a `nezha pretrain` or `nezha finetune` run from OUT/metrics.jsonl.

    \b
    Panels, each when the run logged it: training and evaluation losses, accuracies and metrics (train and
    eval_*, in percent), learning rate, tokens/s; all against the step. Needs matplotlib:
    pip install 'nezha-cli[report]'.

    \b
    Examples:
      nezha report runs/pretrain-tiny                       (writes runs/pretrain-tiny/report.png)
      nezha report runs/chnsenti -o chnsenti.html           (one HTML file, no JavaScript, no network)
    """
    from nezha_cli.engine.report import render_report

    click.echo(render_report(run_dir, output, fmt, overwrite=overwrite))
