"""``nezha export --format torch-export``: the ``torch.export`` program (``OUT/model.pt2``).

Load it with ``torch.export.load("OUT/model.pt2").module()`` and call it with ``input_ids, attention_mask,
token_type_ids`` (and ``word_feature_ids`` for a tagger with word features); it returns the same outputs as the
ONNX graph. It is the graph the ONNX export starts from, so it is checked the same way (reloaded, then compared
with PyTorch eager at a short length and past 512 tokens).
"""

from __future__ import annotations

from pathlib import Path

import torch

from nezha_cli.errors import NezhaError
from nezha_cli.interchange.base import (
    ExportReport,
    check_vocab,
    finish_program_export,
    load_for_export,
)
from nezha_cli.interchange.program import CHECK_LENGTHS, check_parity, export_program, input_names, output_names
from nezha_cli.io import atomic_output_dir, check_output_path

PROGRAM_NAME = "model.pt2"


def export_torch_program(model_dir: Path | str, output_dir: Path | str, *, tolerance: float = 1e-4,
                         check_lengths: tuple[int, ...] = CHECK_LENGTHS, vocab: Path | None = None,
                         overwrite: bool = False, progress=None) -> ExportReport:
    output_dir = Path(output_dir)
    check_output_path(output_dir, overwrite, inputs=[model_dir, vocab])
    model = load_for_export(model_dir)
    check_vocab(model_dir, vocab, model)
    task = progress.add_task("export torch.export program", total=2) if progress is not None else None
    report = ExportReport(format="torch-export", model_dir=str(model_dir), output_dir=str(output_dir),
                          architecture=type(model).__name__, inputs=list(input_names(model)),
                          outputs=list(output_names(model)), tolerance=tolerance)
    with atomic_output_dir(output_dir, overwrite=overwrite) as tmp:
        torch.export.save(export_program(model), tmp / PROGRAM_NAME)
        if task is not None:
            progress.advance(task)
        module = torch.export.load(tmp / PROGRAM_NAME).module()

        def run(feeds):
            with torch.no_grad():
                return [t.numpy() for t in module(*(torch.from_numpy(feeds[n]) for n in input_names(model)))]

        report.parity = check_parity(model, PROGRAM_NAME, run, check_lengths)
        worst = max(report.parity, key=lambda p: p.max_abs_diff, default=None)
        if worst is not None and worst.max_abs_diff > tolerance:
            raise NezhaError(f"{model_dir}: the exported program differs from PyTorch by {worst.max_abs_diff:.2e} "
                             f"at length {worst.length} (more than --tolerance {tolerance:g}); nothing was written")
        if task is not None:
            progress.advance(task)
        finish_program_export(model, Path(model_dir), tmp, vocab, report)
    return report
