"""``nezha export --format onnx``: ``OUT/model.onnx`` checked in onnxruntime, optionally int8 and fp16 variants.

The graph comes from ``torch.export`` (see :mod:`nezha_cli.interchange.program`) through the dynamo ONNX exporter.
After export it is checked in onnxruntime against PyTorch at a short length and past 512 tokens (max |diff| must
stay within the tolerance), and its constants are checked: no tensor of rank 3 or more (an [L, L, head_size]
relative table would be one) and nothing with L x L x head_size elements or more unless it is a model parameter.
``--quantize int8`` (onnxruntime dynamic quantization) and ``--fp16`` write ``model.int8.onnx`` and
``model.fp16.onnx``; their change against PyTorch (max |diff|, argmax agreement) is reported, not enforced.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from nezha_cli.errors import ConfigError, NezhaError
from nezha_cli.interchange.base import (
    ExportReport,
    check_vocab,
    finish_program_export,
    load_for_export,
)
from nezha_cli.interchange.program import (
    CHECK_LENGTHS,
    TRACE_LENGTH,
    InferenceModule,
    check_parity,
    dynamic_shapes,
    input_names,
    output_names,
    quiet_exporter,
    sample_inputs,
)
from nezha_cli.io import atomic_output_dir, check_output_path
from nezha_cli.modeling import NezhaPreTrainedModel

ONNX_NAME = "model.onnx"
INT8_NAME = "model.int8.onnx"
FP16_NAME = "model.fp16.onnx"
DEFAULT_OPSET = 18
# torch's exporter builds opset-18 graphs; its conversion down to 17 fails on NEZHA's (checked after export).
MIN_OPSET = 18
QUANTIZE_SCHEMES = ("int8",)


def require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"--format onnx needs the onnx extra ({exc.name} is not installed): "
                          "pip install 'nezha-cli[onnx]'") from None


def write_onnx(model: NezhaPreTrainedModel, path: Path, opset: int = DEFAULT_OPSET) -> None:
    import torch

    module = InferenceModule(model.eval()).eval()
    example = sample_inputs(model, TRACE_LENGTH)
    # Exporting the module (not a saved ExportedProgram) keeps the axis names (batch, sequence) in the graph.
    with torch.no_grad(), quiet_exporter():
        names = input_names(model)
        onnx_program = torch.onnx.export(module, tuple(example[n] for n in names), input_names=list(names),
                                         output_names=list(output_names(model)), dynamic_shapes=dynamic_shapes(model),
                                         opset_version=opset, dynamo=True, verbose=False)
        onnx_program.save(str(path))
    written = graph_opset(path)
    if written != opset:
        # The exporter builds opset 18 and converts other opsets afterwards; where that fails it keeps 18.
        raise ConfigError(f"--opset {opset}: the exporter could not convert this model's graph to it (it wrote "
                          f"opset {written}); use --opset {written}")


def graph_opset(path: Path) -> int:
    """The default-domain (ai.onnx) opset of the graph in ``path``."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))


def session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def runner(path: Path):
    try:
        sess = session(path)
    except Exception as exc:  # onnxruntime raises its own exception types for graphs it cannot run
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NezhaError(f"{path.name}: onnxruntime cannot load the exported graph ({first_line}); try another "
                         "--opset (18 is the default)") from None
    return lambda feeds: sess.run(None, feeds)


def _constants(graph) -> Iterator[tuple[str, list[int]]]:
    for init in graph.initializer:
        yield init.name, list(init.dims)
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    yield node.output[0], list(attr.t.dims)


def large_constants(path: Path, model: NezhaPreTrainedModel, length: int) -> list[tuple[str, list[int]]]:
    """Constants of the graph that look like a materialised [L, L, d] relative table at ``length`` or worse."""
    import math

    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    limit = length * length * model.config.attention_head_size
    parameter_shapes = {tuple(sorted(p.shape)) for p in model.parameters()}
    found = []
    for name, dims in _constants(graph):
        if len(dims) >= 3 or (math.prod(dims) >= limit and tuple(sorted(dims)) not in parameter_shapes):
            found.append((name, dims))
    return found


def dynamic_input_axes(path: Path) -> dict[str, list[str | int]]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    # onnxruntime.quantization logs advice to the root logger; the report says what matters.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_int8(source: Path, destination: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_root_logger(), quiet_exporter():
        quantize_dynamic(str(source), str(destination), weight_type=QuantType.QInt8)


def convert_fp16(source: Path, destination: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with _quiet_root_logger(), quiet_exporter():
        # keep_io_types: ids and masks stay int64 and the outputs float32, so callers need not change.
        converted = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.save(converted, str(destination))


def export_onnx(model_dir: Path | str, output_dir: Path | str, *, quantize: str | None = None, fp16: bool = False,
                opset: int = DEFAULT_OPSET, tolerance: float = 1e-4, check_lengths: tuple[int, ...] = CHECK_LENGTHS,
                vocab: Path | None = None, overwrite: bool = False, progress=None) -> ExportReport:
    """Export ``model_dir`` to ``output_dir/model.onnx`` (+ int8/fp16 variants), checked against PyTorch."""
    if quantize is not None and quantize not in QUANTIZE_SCHEMES:
        raise ConfigError(f"unknown --quantize {quantize!r}; the supported scheme is int8 (dynamic quantization)")
    if opset < MIN_OPSET:
        raise ConfigError(f"--opset {opset}: NEZHA exports need opset {MIN_OPSET} or later")
    require_onnx()
    import onnx

    if opset > onnx.defs.onnx_opset_version():
        raise ConfigError(f"--opset {opset}: the installed onnx {onnx.__version__} knows opsets up to "
                          f"{onnx.defs.onnx_opset_version()}")
    output_dir = Path(output_dir)
    check_output_path(output_dir, overwrite, inputs=[model_dir, vocab])
    model = load_for_export(model_dir, crf_file=True)
    check_vocab(model_dir, vocab, model)
    steps = 2 + (quantize is not None) + fp16
    task = progress.add_task("export onnx", total=steps) if progress is not None else None

    def advance(description: str) -> None:
        if task is not None:
            progress.update(task, advance=1, description=description)

    report = ExportReport(format="onnx", model_dir=str(model_dir), output_dir=str(output_dir),
                          architecture=type(model).__name__, inputs=list(input_names(model)),
                          outputs=list(output_names(model)), tolerance=tolerance)
    with atomic_output_dir(output_dir, overwrite=overwrite) as tmp:
        fp32 = tmp / ONNX_NAME
        if task is not None:
            progress.update(task, description="export onnx: tracing")
        write_onnx(model, fp32, opset)
        advance("export onnx: checking in onnxruntime")
        axes = dynamic_input_axes(fp32)
        longest = max(check_lengths) if check_lengths else TRACE_LENGTH
        constants = large_constants(fp32, model, longest)
        if constants:
            name, dims = constants[0]
            raise NezhaError(f"{model_dir}: the exported graph holds a constant {name} of shape {dims} (a "
                             "materialised relative-position table?); the export would not scale with length")
        parity = check_parity(model, ONNX_NAME, runner(fp32), check_lengths)
        worst = max(parity, key=lambda p: p.max_abs_diff, default=None)
        if worst is not None and worst.max_abs_diff > tolerance:
            raise NezhaError(f"{model_dir}: onnxruntime output differs from PyTorch by {worst.max_abs_diff:.2e} at "
                             f"length {worst.length} (more than --tolerance {tolerance:g}); nothing was written")
        report.parity += parity
        advance("export onnx")
        if quantize == "int8":
            quantize_int8(fp32, tmp / INT8_NAME)
            report.parity += check_parity(model, INT8_NAME, runner(tmp / INT8_NAME), check_lengths)
            advance("export onnx: int8")
        if fp16:
            convert_fp16(fp32, tmp / FP16_NAME)
            report.parity += check_parity(model, FP16_NAME, runner(tmp / FP16_NAME), check_lengths)
            advance("export onnx: fp16")
        report.details = {"opset": opset, "trace_length": TRACE_LENGTH, "input_axes": axes,
                          "largest_constant_check_length": longest}
        finish_program_export(model, Path(model_dir), tmp, vocab, report)
    return report
