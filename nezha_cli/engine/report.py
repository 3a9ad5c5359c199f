"""``OUT/metrics.jsonl`` as curves: one figure (PNG, SVG, PDF, or an HTML page with the SVG inline).

Panels, each drawn only when the run logged its keys, all against the optimizer step:

- **Loss**: every ``*loss`` key, training (lines) and ``eval_*`` (markers on a dashed line) in the same colour per
  quantity (``mlm_loss`` and ``eval_mlm_loss``). Log scale when the curves span more than a factor of 10 (an MLM
  loss near 9 beside an NSP loss near 0.7).
- **Accuracy and metrics**, in percent: ``*acc``, ``accuracy``, ``precision``, ``recall``, ``f1`` (fractions, times
  100) and the CMRC 2018 scorer's ``EM``, ``F1``, ``AVERAGE`` (percent already; upper case, as ``nezha evaluate``
  prints them). Counts (``eval_TOTAL``, ``eval_support``, ``eval_examples``) and ``eval_perplexity`` (the exponent
  of ``eval_mlm_loss``, which the loss panel shows) are left out, like any key this module does not know.
- **Learning rate** and **tokens/s** (training throughput).

Long runs stay readable: markers only on series of at most 50 points; a series of more than 200 points is drawn
faint with its moving average (1% of its length) on top. Values the log wrote as ``"nan"``/``"inf"`` are gaps.

Drawn with matplotlib's object API (``Figure``, the Agg canvas), never pyplot: no display, no global state, so that
it runs on servers and inside other programs. matplotlib is the optional extra ``nezha-cli[report]``.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from nezha_cli.engine.metrics_log import METRICS_NAME, read_metrics
from nezha_cli.errors import ConfigError, DataError

REPORT_FORMATS = ("png", "svg", "pdf", "html")
REPORT_NAME = "report"
WRITTEN_BY = "`nezha pretrain` and `nezha finetune` write it as they train"

_PERCENT_KEYS = {"EM", "F1", "AVERAGE"}  # the CMRC 2018 scorer's, in percent
_FRACTION_KEYS = {"accuracy", "precision", "recall", "f1"}
_MARKERS_UP_TO = 50
_SMOOTH_FROM = 200


@dataclass
class Series:
    key: str
    steps: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    @property
    def is_eval(self) -> bool:
        return self.key.startswith("eval_")

    @property
    def quantity(self) -> str:
        """The key without ``eval_``: what a training and an evaluation curve share (their colour)."""
        return self.key.removeprefix("eval_")


@dataclass
class Panel:
    title: str
    ylabel: str
    series: list[Series]
    log_scale: bool = False
    smooth: bool = True  # noisy measurements; not the learning rate, which is exact


def _number(value: Any) -> float | None:
    """A record's value as a float; NaN for the log's ``"nan"``/``"inf"`` strings; None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else math.nan
    if isinstance(value, str) and value.lower() in ("nan", "inf", "-inf", "infinity", "-infinity"):
        return math.nan
    return None


def collect_series(records: list[dict[str, Any]]) -> dict[str, Series]:
    """Every numeric key of the records (but ``step`` and ``epoch``) as a series against ``step``."""
    series: dict[str, Series] = {}
    for record in records:
        step = _number(record.get("step"))
        if step is None or math.isnan(step):
            continue
        for key, value in record.items():
            number = _number(value)
            if key in ("step", "epoch") or number is None:
                continue
            s = series.setdefault(key, Series(key))
            s.steps.append(step)
            s.values.append(number)
    return series


def _metric_scale(quantity: str) -> float | None:
    """100 for a fraction, 1 for a percent, None for a key that is not an accuracy-like metric."""
    if quantity in _PERCENT_KEYS:
        return 1.0
    if quantity in _FRACTION_KEYS or re.search(r"(^|_)acc$", quantity):
        return 100.0
    return None


def build_panels(series: dict[str, Series]) -> list[Panel]:
    """The panels that have data, in reading order: losses, metrics, learning rate, throughput."""
    ordered = sorted(series.values(), key=lambda s: (s.quantity, s.is_eval))  # train before eval, by quantity
    losses = [s for s in ordered if s.quantity.endswith("loss")]
    metrics = []
    for s in ordered:
        scale = _metric_scale(s.quantity)
        if scale is not None:
            metrics.append(Series(s.key, s.steps, [v * scale for v in s.values]))
    panels = []
    if losses:
        positive = [v for s in losses for v in s.values if v > 0 and math.isfinite(v)]
        spread = max(positive) / min(positive) if positive else 1.0
        nonpositive = any(v <= 0 for s in losses for v in s.values)
        panels.append(Panel("Loss", "loss", losses, log_scale=spread > 10 and not nonpositive))
    if metrics:
        panels.append(Panel("Accuracy and metrics", "%", metrics))
    if "lr" in series:
        panels.append(Panel("Learning rate", "learning rate", [series["lr"]], smooth=False))
    if "tokens_per_s" in series:
        panels.append(Panel("Throughput", "tokens/s", [series["tokens_per_s"]]))
    return panels


def _moving_average(values: list[float], window: int) -> list[float]:
    """A centred moving average that skips NaN (a gap stays a gap where the window holds nothing else)."""
    half = window // 2
    out = []
    for i in range(len(values)):
        chunk = [v for v in values[max(0, i - half):i + half + 1] if not math.isnan(v)]
        out.append(sum(chunk) / len(chunk) if chunk else math.nan)
    return out


def _last(values: list[float]) -> float | None:
    return next((v for v in reversed(values) if not math.isnan(v)), None)


def _format_value(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if value == 0 or abs(value) >= 1e-3:
        return f"{value:.4g}"
    return f"{value:.2e}"


def _draw_panel(ax, panel: Panel, colors: list[str]) -> None:
    from matplotlib.ticker import FuncFormatter, LogFormatter, ScalarFormatter

    quantities = list(dict.fromkeys(s.quantity for s in panel.series))
    for s in panel.series:
        color = colors[quantities.index(s.quantity) % len(colors)]
        n = len(s.values)
        smoothed = _moving_average(s.values, max(3, n // 100)) if panel.smooth and n > _SMOOTH_FROM else None
        last = _last(smoothed or s.values)  # the legend's value: where the curve drawn ends
        label = s.key if last is None else f"{s.key} ({_format_value(last)})"
        if s.is_eval:
            # Hollow markers on top: an evaluation stays visible where it lies on its training curve.
            ax.plot(s.steps, s.values, color=color, linestyle="--", linewidth=1, marker="o",
                    markersize=6 if n <= _MARKERS_UP_TO else 3, markerfacecolor="white", markeredgewidth=1.5,
                    label=label, zorder=3)
        elif smoothed is not None:
            ax.plot(s.steps, s.values, color=color, linewidth=0.6, alpha=0.3)
            ax.plot(s.steps, smoothed, color=color, linewidth=1.5, label=label)
        else:
            ax.plot(s.steps, s.values, color=color, linewidth=1.5, marker="." if n <= _MARKERS_UP_TO else None,
                    label=label)
    ax.set_title(panel.title)
    ax.set_xlabel("step")
    ax.set_ylabel(panel.ylabel)
    ax.grid(True, alpha=0.3)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))
    if panel.log_scale:
        ax.set_yscale("log")
        # Plain numbers (0.6, 2, 9), on the minor ticks too while the axis spans less than 2 decades (matplotlib
        # picks which so that they do not collide): a loss from 9 to 6 has no power of 10 in between.
        class PlainLogFormatter(LogFormatter):
            def __call__(self, y, pos=None):
                return f"{y:g}" if super().__call__(y, pos) else ""  # 0.6, not LogFormatter's 6e-01

        formatter = PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5))
        ax.yaxis.set_major_formatter(formatter)
        ax.yaxis.set_minor_formatter(formatter)
    elif panel.series[0].key == "lr":
        formatter = ScalarFormatter(useMathText=True)  # 1.75 and a x10^-4 above the axis
        formatter.set_powerlimits((-2, 3))
        ax.yaxis.set_major_formatter(formatter)
    else:
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:,.0f}" if abs(y) >= 1000 else f"{y:.6g}"))
    ax.legend(fontsize="small", loc="best")


def build_figure(panels: list[Panel], title: str):
    """A matplotlib ``Figure`` (with an Agg canvas) of the panels: two columns, the first panel across both when
    their number is odd."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(panels)
    ncols = 1 if n == 1 else 2
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(7 * ncols, 4.2 * nrows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(nrows, ncols)
    slots = [grid[0, :]] if n % 2 == 1 and n > 1 else []
    first_row = len(slots)
    slots += [grid[first_row + i // ncols, i % ncols] for i in range(n - len(slots))]
    colors = [c["color"] for c in matplotlib.rcParams["axes.prop_cycle"]]
    for panel, slot in zip(panels, slots):
        _draw_panel(fig.add_subplot(slot), panel, colors)
    fig.suptitle(title, fontsize="x-large")
    return fig


def _resolve_output(run_dir: Path, output: Path | None, fmt: str | None) -> tuple[Path, str]:
    if fmt is not None:
        fmt = fmt.lower()
        if fmt not in REPORT_FORMATS:
            raise ConfigError(f"unknown report format {fmt!r}; choose one of {', '.join(REPORT_FORMATS)}")
    if output is None:
        fmt = fmt or "png"
        return run_dir / f"{REPORT_NAME}.{fmt}", fmt
    suffix = output.suffix.lower().lstrip(".")
    if fmt is None:
        if suffix not in REPORT_FORMATS:
            raise ConfigError(f"{output}: cannot tell the format from the suffix; end the name in "
                              f"{', '.join('.' + f for f in REPORT_FORMATS)} or give --format")
        return output, suffix
    if suffix in REPORT_FORMATS and suffix != fmt:
        raise ConfigError(f"{output}: a .{suffix} name for --format {fmt}; change the name or the format")
    return output, fmt


def _html(svg: str, title: str, source: Path) -> str:
    svg = svg[svg.index("<svg"):]  # without the XML declaration and DOCTYPE, which do not belong inside HTML
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{escape(title)}</title>\n'
            "<style>body{font-family:sans-serif;margin:1em}svg{max-width:100%;height:auto}</style>\n</head>\n<body>\n"
            f"<h1>{escape(title)}</h1>\n<p>From <code>{escape(str(source))}</code>.</p>\n{svg}\n</body>\n</html>\n")


def render_report(run_dir: Path, output: Path | None = None, fmt: str | None = None, overwrite: bool = False) -> Path:
    """Draw ``run_dir/metrics.jsonl`` to ``output`` (default ``run_dir/report.png``; the format from ``fmt`` or
    the suffix: png, svg, pdf, html) atomically, and return the path written."""
    from nezha_cli.io import atomic_output_file, check_output_path

    run_dir = Path(run_dir)
    output, fmt = _resolve_output(run_dir, Path(output) if output is not None else None, fmt)
    metrics_path = run_dir / METRICS_NAME
    if not metrics_path.is_file():
        where = "" if run_dir.is_dir() else f" ({run_dir} is not a directory)"
        raise DataError(f"{metrics_path}: not found{where}; {WRITTEN_BY} (give their -o/--output directory)")
    records = read_metrics(metrics_path)
    if not records:
        raise DataError(f"{metrics_path}: no records yet; {WRITTEN_BY}, every logging_steps steps")
    panels = build_panels(collect_series(records))
    if not panels:
        raise DataError(f"{metrics_path}: no losses, metrics, lr or tokens_per_s to draw; {WRITTEN_BY}")
    check_output_path(output, overwrite, inputs=[metrics_path])
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError(f"--format {fmt} needs matplotlib: pip install 'nezha-cli[report]'") from None

    title = run_dir.resolve().name or str(run_dir)
    last_step = max(int(step) for panel in panels for s in panel.series for step in s.steps)
    fig = build_figure(panels, f"{title}: step {last_step:,}")
    if fmt == "html":
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg", metadata={"Date": None})
        with atomic_output_file(output, overwrite=overwrite) as f:
            f.write(_html(buffer.getvalue(), title, metrics_path))
    else:
        with atomic_output_file(output, overwrite=overwrite, mode="wb") as f:
            fig.savefig(f, format=fmt)
    return output
