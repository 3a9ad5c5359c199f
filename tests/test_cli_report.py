import json
import math
import sys

import pytest
from click.testing import CliRunner

from nezha_cli.cli import cli
from nezha_cli.engine.report import build_panels, collect_series

pytest.importorskip("matplotlib")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_metrics(run_dir, records):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return run_dir


def pretraining_records(steps=300, logging_steps=10, eval_steps=1000):
    """A pretraining log as `nezha pretrain` writes it: long enough for the smoothed curves (> 200 points)."""
    records = []
    for step in range(logging_steps, steps * logging_steps + 1, logging_steps):
        records.append({"step": step, "epoch": 0, "loss": 10 / math.log(step + 2), "mlm_loss": 9 / math.log(step + 2),
                        "nsp_loss": 0.69, "mlm_acc": step / 1e4, "nsp_acc": 0.6, "lr": 1e-4 * min(1, step / 100),
                        "tokens_per_s": 4000.0, "overflow_steps": 0})
        if step % eval_steps == 0:
            records.append({"step": step, "epoch": 0, "eval_mlm_loss": 8 / math.log(step + 2),
                            "eval_mlm_acc": step / 1.2e4, "eval_perplexity": 900.0, "eval_nsp_acc": 0.58})
    return records


def finetuning_records():
    """A short fine-tuning log with a NaN loss (the log writes it as a string) and evaluations."""
    records = []
    for step in range(1, 21):
        records.append({"step": step, "epoch": step // 10, "loss": "nan" if step == 7 else 1 / step,
                        "accuracy": 0.5 + step / 50, "lr": 2e-5, "tokens_per_s": 900.0})
        if step % 5 == 0:
            records.append({"step": step, "epoch": step // 10, "eval_accuracy": 0.5 + step / 60, "eval_f1": 0.7,
                            "eval_AVERAGE": 80.0, "eval_TOTAL": 3219, "eval_examples": 1200})
    return records


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_png_of_a_pretraining_run(tmp_path):
    from matplotlib.image import imread

    out = write_metrics(tmp_path / "run", pretraining_records())
    result = run("report", out)
    assert result.exit_code == 0, result.output
    png = out / "report.png"
    assert result.output.strip() == str(png)
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    # Four panels (loss, metrics, lr, tokens/s) in two rows of two: 14 x 8.4 inches at 100 dpi.
    assert imread(png).shape[:2] == (840, 1400)


def test_svg_html_and_pdf_of_a_finetuning_run(tmp_path):
    out = write_metrics(tmp_path / "run", finetuning_records())
    result = run("report", out, "-o", tmp_path / "curves.svg")
    assert result.exit_code == 0, result.output
    svg = (tmp_path / "curves.svg").read_text(encoding="utf-8")
    assert "<svg" in svg and "eval_accuracy" in svg and "eval_AVERAGE" in svg and "eval_TOTAL" not in svg

    result = run("report", out, "--format", "html", "-o", tmp_path / "page.html")
    assert result.exit_code == 0, result.output
    html = (tmp_path / "page.html").read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and "<svg" in html and "eval_accuracy" in html
    assert "<?xml" not in html and "<script" not in html.lower() and "src=" not in html  # self-contained

    result = run("report", out, "-o", tmp_path / "curves.pdf")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "curves.pdf").read_bytes()[:5] == b"%PDF-"


def test_panels_group_the_keys():
    panels = {p.title: p for p in build_panels(collect_series(finetuning_records()))}
    assert list(panels) == ["Loss", "Accuracy and metrics", "Learning rate", "Throughput"]
    loss = panels["Loss"].series[0]
    assert loss.key == "loss" and math.isnan(loss.values[6]) and len(loss.values) == 20  # "nan": a gap
    metrics = {s.key: s.values for s in panels["Accuracy and metrics"].series}
    # Fractions in percent, the CMRC scorer's percents as they are; counts left out.
    assert list(metrics) == ["eval_AVERAGE", "accuracy", "eval_accuracy", "eval_f1"]
    assert metrics["eval_AVERAGE"] == [80.0] * 4 and metrics["eval_f1"] == [pytest.approx(70.0)] * 4
    # Losses spanning more than a factor of 10 go on a log scale; pretraining's MLM and NSP losses do.
    assert panels["Loss"].log_scale
    pretraining = build_panels(collect_series(pretraining_records(steps=30, eval_steps=100)))
    assert [s.key for s in pretraining[0].series] == ["loss", "mlm_loss", "eval_mlm_loss", "nsp_loss"]


def test_format_from_the_suffix_or_the_option(tmp_path):
    out = write_metrics(tmp_path / "run", finetuning_records())
    result = run("report", out, "-o", tmp_path / "curves.txt")
    assert result.exit_code == 2 and "cannot tell the format" in result.output
    result = run("report", out, "-o", tmp_path / "curves.png", "--format", "svg")
    assert result.exit_code == 2 and "a .png name for --format svg" in result.output
    assert not (tmp_path / "curves.png").exists()
    result = run("report", out, "--format", "svg")
    assert result.exit_code == 0 and (out / "report.svg").read_text(encoding="utf-8").find("<svg") >= 0


def test_missing_or_empty_metrics_are_one_line(tmp_path):
    result = run("report", tmp_path)
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert f"{tmp_path / 'metrics.jsonl'}: not found" in result.output and "nezha pretrain" in result.output
    result = run("report", tmp_path / "nowhere")
    assert result.exit_code == 2 and "is not a directory" in result.output
    (tmp_path / "metrics.jsonl").write_text("", encoding="utf-8")
    result = run("report", tmp_path)
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "no records yet" in result.output and "nezha finetune" in result.output
    assert not (tmp_path / "report.png").exists()


def test_existing_output_needs_overwrite(tmp_path):
    out = write_metrics(tmp_path / "run", finetuning_records())
    (out / "report.png").write_bytes(b"old")
    result = run("report", out)
    assert result.exit_code == 2 and "already exists" in result.output and "--overwrite" in result.output
    assert (out / "report.png").read_bytes() == b"old"
    result = run("report", out, "--overwrite")
    assert result.exit_code == 0 and (out / "report.png").read_bytes()[:8] == PNG_SIGNATURE
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl", "report.png"]  # no temporaries left
    # The metrics file itself is an input, never an output.
    result = run("report", out, "-o", out / "metrics.jsonl", "--format", "svg", "--overwrite")
    assert result.exit_code == 2 and "would replace the input" in result.output


def test_without_matplotlib_one_line(tmp_path, monkeypatch):
    out = write_metrics(tmp_path / "run", finetuning_records())
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    result = run("report", out)
    assert result.exit_code == 2
    assert result.output.strip() == "Error: --format png needs matplotlib: pip install 'nezha-cli[report]'"
    result = run("report", out, "-o", tmp_path / "page.html")
    assert result.output.strip() == "Error: --format html needs matplotlib: pip install 'nezha-cli[report]'"
