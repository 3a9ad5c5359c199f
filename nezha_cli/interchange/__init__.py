"""Export a model directory (HF directory, ONNX, torch.export program) and import released checkpoints.

::

    from nezha_cli.interchange import export_model, import_checkpoint

    export_model("runs/chnsenti/final", "deploy/chnsenti-onnx", "onnx", quantize="int8")
    import_checkpoint("NEZHA-Base/", "models/nezha-base", "tf")      # no TensorFlow needed

Each writes its output atomically and a JSON report beside it (``export_report.json`` / ``import_report.json``).
"""

from __future__ import annotations

from pathlib import Path

from nezha_cli.errors import ConfigError
from nezha_cli.interchange.base import ExportReport
from nezha_cli.interchange.convert import IMPORT_FORMATS, ImportReport, import_checkpoint

EXPORT_FORMATS = ("hf", "onnx", "torch-export")


def export_model(model_dir: Path | str, output_dir: Path | str, fmt: str, *, quantize: str | None = None,
                 fp16: bool = False, **options) -> ExportReport:
    """Export ``model_dir`` in format ``fmt``; ``options`` are those of the format's function (``overwrite``,
    ``vocab``, ``progress``, and ``metrics``/``write_bin`` for hf, ``opset``/``tolerance``/``check_lengths``
    for onnx, ``tolerance``/``check_lengths`` for torch-export)."""
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    if fmt != "onnx" and (quantize is not None or fp16):
        raise ConfigError("--quantize and --fp16 apply to --format onnx only")
    if fmt == "hf":
        from nezha_cli.interchange.hf import export_hf

        return export_hf(model_dir, output_dir, **options)
    if fmt == "onnx":
        from nezha_cli.interchange.onnx import export_onnx

        return export_onnx(model_dir, output_dir, quantize=quantize, fp16=fp16, **options)
    from nezha_cli.interchange.pt2 import export_torch_program

    return export_torch_program(model_dir, output_dir, **options)


__all__ = ["EXPORT_FORMATS", "IMPORT_FORMATS", "ExportReport", "ImportReport", "export_model", "import_checkpoint"]
