#!/usr/bin/env bash
# Issue 28's GPU checks and benchmarks in one call, for a short device session, in order of value: the CUDA tests
# (kernels against their definitions, the model on the fused paths, mixed precision, compile), the kernel alone per
# tile configuration against SDPA (bench_fused_kernel.py: which frpe.LAUNCH to keep), then the pretraining step
# against transformers' Nezha and SDPA BERT (bench_gpu.py: tokens/s, memory, MFU). Each step has its own time
# limit (they add up to 8.5 minutes) and its log in $OUT (default gpu-results/); a failed step does not stop the
# others; $OUT/steps.txt has each step's exit status and seconds.
#
# The device image has transformers 5 (no Nezha) and no jieba; the transformers rows need transformers 4.57. Fetch
# their wheels (Python 3.12, manylinux) here first, into .whl/ (kept out of git), then carry .whl to the device:
#
#     bash benchmarks/gpu_checks.sh --fetch-wheels      # here
#     bash benchmarks/gpu_checks.sh                     # on the device (run's carry: [".whl"])
#
# PYTHON picks the interpreter (default python3).
set -u
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-python3}

if [ "${1:-}" = --fetch-wheels ]; then
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl transformers==4.57.6 huggingface_hub==0.36.0 tokenizers==0.22.1 || exit
    "$PY" -m pip wheel --quiet --no-deps -w .whl jieba==0.42.1 || exit  # an sdist only: built here, pure Python
    ls -l .whl
    exit 0
fi

OUT=${OUT:-gpu-results}
mkdir -p "$OUT" || exit 2
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # nezha_cli from this working tree (not installed there)

: >"$OUT/steps.txt"
step() {
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name: exit $rc in $((SECONDS - start)) s (limit $limit s)" | tee -a "$OUT/steps.txt"
}

step environment 30 "$PY" -c "import subprocess, torch, transformers
print(torch.__version__, torch.version.cuda, transformers.__version__)
import triton; print('triton', triton.__version__)
print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')
subprocess.run(['nvidia-smi'])"
step test_cuda 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py
step bench_fused_kernel 90 "$PY" benchmarks/bench_fused_kernel.py --steps 10
step bench_gpu 240 "$PY" benchmarks/bench_gpu.py --quick --json "$OUT/bench_gpu.json"
