"""The Triton kernels of the relative attention (nezha_cli.modeling.relative_kernels) on the CPU, through Triton's
interpreter: their index arithmetic against the PyTorch ops they replace. tests/test_cuda.py runs them compiled,
with the same checks (:func:`check_kernels_against_pytorch_ops`)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from nezha_cli.modeling import relative_kernels
from nezha_cli.modeling.relative_attention import (
    RelativePositions,
    expand_buckets,
    relative_context,
    relative_position_table,
    relative_scores,
    sum_buckets,
)

# K = 8: lengths below K (2L - 1 reachable buckets), between K and 2K (corner sums) and beyond 2K (block sums).
LENGTHS = (1, 7, 12, 40, 130)


def _with_kernels(use: bool, fn):
    """fn() with the kernels forced on (also for CPU tensors, which Triton's interpreter runs) or off."""
    saved = relative_kernels.available
    relative_kernels.available = (lambda t: t.dtype in relative_kernels._DTYPES) if use else (lambda t: False)
    try:
        return fn()
    finally:
        relative_kernels.available = saved


def check_kernels_against_pytorch_ops(length: int, dtype: torch.dtype, device: str) -> None:
    torch.manual_seed(length)
    pos = RelativePositions.build(length, 8, device=device)
    x = torch.randn(2, 3, length, length, device=device).to(dtype)
    # Bucket scores as the model makes them (the heads a view of one [B, L, H, W] product), and contiguous.
    y = torch.randn(2, length, 3, pos.width, device=device).to(dtype).transpose(1, 2)
    y3 = torch.randn(6, length, pos.width, device=device).to(dtype)
    kernel, reference = (_with_kernels(use, lambda: (sum_buckets(x, pos), expand_buckets(y, pos),
                                                      expand_buckets(y3, pos))) for use in (True, False))
    assert torch.equal(kernel[1], reference[1]) and torch.equal(kernel[2], reference[2])
    exact = sum_buckets(x.double(), pos)
    # Both accumulate the clipped buckets in fp32 and round once, in different orders.
    tol = 1e-5 if dtype == torch.float32 else torch.finfo(dtype).eps * exact.abs().max().item()
    assert kernel[0].dtype == dtype and kernel[0].shape == exact.shape
    assert (kernel[0].double() - exact).abs().max() <= tol
    assert (reference[0].double() - exact).abs().max() <= tol
    if dtype != torch.float32:
        return
    # The attention core, forward and backward, with the kernels and without.
    table = relative_position_table(8, 16).to(device)
    q, k, v = (torch.randn(2, 3, length, 16, device=device, requires_grad=True) for _ in range(3))

    def core():
        out = relative_context(torch.softmax(relative_scores(q, k, table, pos), -1), v, table, pos)
        return (out, *torch.autograd.grad((out * out).sum(), (q, k, v)))

    for a, b in zip(_with_kernels(True, core), _with_kernels(False, core)):
        assert (a - b).abs().max() <= 1e-6 * (1 + b.abs().max())  # fp32 sums in other orders


# TRITON_INTERPRET is read when a kernel is defined, so the interpreted kernels run in a fresh interpreter.
SCRIPT = textwrap.dedent(f"""
    import sys, torch
    sys.path.insert(0, {str(Path(__file__).parent)!r})
    from test_relative_kernels import LENGTHS, check_kernels_against_pytorch_ops
    for length in LENGTHS:
        for dtype in (torch.float32, torch.bfloat16):
            check_kernels_against_pytorch_ops(length, dtype, "cpu")
    print("kernels ok")
""")


def test_kernels_match_the_pytorch_ops_in_the_triton_interpreter():
    pytest.importorskip("triton")
    result = subprocess.run([sys.executable, "-c", SCRIPT], env={**os.environ, "TRITON_INTERPRET": "1"},
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "kernels ok" in result.stdout


def test_kernels_serve_cuda_tensors_only_and_can_be_turned_off():
    assert not relative_kernels.available(torch.zeros(2))
    if relative_kernels.ENABLED and relative_kernels._kernels() is not None:
        # The rules past the device (a stand-in for a CUDA tensor: CI has none).
        cuda = SimpleNamespace(is_cuda=True, dtype=torch.bfloat16, requires_grad=False)
        assert relative_kernels.available(cuda)
        assert not relative_kernels.available(SimpleNamespace(**{**vars(cuda), "dtype": torch.float64}))
        differentiated = SimpleNamespace(**{**vars(cuda), "requires_grad": True})
        assert not relative_kernels.available(differentiated)  # no graph would be recorded
        with torch.no_grad():
            assert relative_kernels.available(differentiated)  # as inside the attention's autograd functions
    result = subprocess.run([sys.executable, "-c", "from nezha_cli.modeling import relative_kernels as k; "
                             "print(k.ENABLED)"], env={**os.environ, "NEZHA_TRITON": "0"},
                            capture_output=True, text=True)
    assert result.stdout.strip() == "False"
    from click.testing import CliRunner

    from nezha_cli.cli import cli

    assert "NEZHA_TRITON=0" in CliRunner().invoke(cli, ["--help"]).output


def test_cpu_runs_do_not_import_the_kernels():
    # Importing Triton takes a few tenths of a second: only the first CUDA tensor pays it.
    script = textwrap.dedent("""
        import sys, torch
        from nezha_cli.modeling import NezhaConfig, NezhaModel
        model = NezhaModel(NezhaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=64, max_relative_position=4))
        model(torch.randint(1, 50, (2, 12))).last_hidden_state.sum().backward()
        print(sorted(m for m in sys.modules if m.endswith("_relative_triton")))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
