"""Registers, spills and shared memory of the fused relative-attention kernels, compiled for a GPU without one.

The kernels are compiled ahead of time by Triton's CUDA backend (``frpe.compile_ahead``) and their PTX assembled
by the ptxas that ships with Triton, whose ``-v`` report gives registers per thread and the bytes spilled to local
memory. Spills are the first thing that makes such a kernel slow, and they can be seen on any machine; time on the
GPU itself is what ``bench_gpu.py`` measures.

    python benchmarks/bench_kernel_resources.py                       # sm_80 and sm_90, bf16, the launch's warps
    python benchmarks/bench_kernel_resources.py --warps 4,8 --dtypes bf16,fp16 --capabilities 90
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

DTYPES = ("bf16", "fp16", "fp32")


def ptxas_report(ptx: str, capability: int) -> dict:
    """{registers, spill_bytes} of one kernel's PTX, from ptxas -v."""
    from triton.backends.nvidia.compiler import get_ptxas

    arch = f"sm_{capability}a" if capability >= 90 else f"sm_{capability}"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        done = subprocess.run([get_ptxas(capability).path, "-v", f"--gpu-name={arch}", path, "-o", os.devnull],
                              capture_output=True, text=True, check=True)
    registers = re.search(r"Used (\d+) registers", done.stderr)
    spills = re.search(r"(\d+) bytes spill stores", done.stderr)
    return {"registers": int(registers.group(1)) if registers else None,
            "spill_bytes": int(spills.group(1)) if spills else 0}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--capabilities", default="80,90", help="CUDA compute capabilities (80 = A100, 90 = H100)")
    parser.add_argument("--dtypes", default="bf16", help=f"comma list of {', '.join(DTYPES)}")
    parser.add_argument("--warps", default="", help="comma list of num_warps to compare (default: the launch's)")
    parser.add_argument("--dropout", type=float, default=0.1, help="attention dropout compiled in (0 = none)")
    args = parser.parse_args(argv)
    import torch

    from nezha_cli.modeling.kernels import frpe

    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    warps = [int(w) for w in args.warps.split(",") if w] or [None]
    print(f"{'target':7} {'dtype':5} {'warps':>5}  {'kernel':26} {'registers':>9} {'spill B':>8} {'shared B':>9}")
    for capability in (int(c) for c in args.capabilities.split(",")):
        for name in args.dtypes.split(","):
            for num_warps in warps:
                kernels = frpe.compile_ahead(capability, dtypes[name], args.dropout, num_warps=num_warps)
                for kernel_name, kernel in kernels.items():
                    report = ptxas_report(kernel.asm["ptx"], capability)
                    shown = num_warps or kernel.metadata.num_warps
                    print(f"sm_{capability:<4} {name:5} {shown:>5}  {kernel_name:26} {report['registers']:>9} "
                          f"{report['spill_bytes']:>8} {kernel.metadata.shared:>9}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
