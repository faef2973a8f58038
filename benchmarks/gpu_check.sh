#!/usr/bin/env bash
# One call on a CUDA machine: demo data -> short AMP training on the GPU -> CUDA exports (aoti for
# cuda, onnx for the CUDA execution provider, tensorrt where installed) -> validate -> benchmark
# --device cuda -> every report copied into $OUT (the device tool's output folder; default ./gpu_out).
#
#   bash benchmarks/gpu_check.sh            # from the repository root
#
# Python: $PYTHON if set; else a python3 that already has torch with CUDA (the device machines'
# image: it cannot reach a package index, so nothing is installed there and the package runs from
# this checkout); else a venv .venv-gpu with '.[gpu,dev]' (onnxruntime-gpu, never next to the CPU
# onnxruntime wheel: both install the same module). Sized to finish in about 5 minutes on one H100.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$REPO/gpu_out}"
WORK="${WORK:-$(mktemp -d /tmp/gpu_check.XXXXXX)}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
exec > >(tee "$LOG") 2>&1
cd "$REPO"

step() { echo; echo "== $(date +%T) $*"; }

has_cuda_torch() {
    "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null
}

# -- Python ----------------------------------------------------------------------------------
step "python"
if [[ -z "${PYTHON:-}" ]]; then
    if has_cuda_torch python3; then
        PYTHON=python3
    else
        python3 -m venv "$REPO/.venv-gpu"
        PYTHON="$REPO/.venv-gpu/bin/python"
        "$PYTHON" -m pip install -q --upgrade pip
        "$PYTHON" -m pip install -q -e "$REPO[gpu,dev]"
        # a CPU onnxruntime pulled in by anything else would shadow onnxruntime-gpu's module
        if "$PYTHON" -m pip show -q onnxruntime >/dev/null 2>&1; then
            "$PYTHON" -m pip uninstall -q -y onnxruntime
            "$PYTHON" -m pip install -q --force-reinstall --no-deps onnxruntime-gpu
        fi
    fi
fi
has_cuda_torch "$PYTHON" || { echo "error: $PYTHON has no CUDA-enabled torch or sees no GPU"; exit 2; }
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"  # the checkout, installed or not
ad() { "$PYTHON" -m alexnet_deploy "$@"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$PYTHON" - <<'EOF'
import importlib.util, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())
for m in ("onnxruntime", "tensorrt", "openvino"):
    print(m, "installed" if importlib.util.find_spec(m) else "not installed")
if importlib.util.find_spec("onnxruntime"):
    import onnxruntime as ort
    print("onnxruntime providers:", ort.get_available_providers())
EOF

# -- data and a short AMP training run on the GPU ----------------------------------------------
step "demo data"
ad data demo --out "$WORK/data" --classes 10 --per-class 64 --size 256
step "train (AMP, cuda)"
ad train --data "$WORK/data" --out "$WORK/run" --epochs 3 --batch-size 64 --image-size 224 \
    --device cuda --amp --workers 4

# -- CUDA exports -----------------------------------------------------------------------------
FORMATS="onnx,aoti,torchscript,torch-export"
if "$PYTHON" -c 'import tensorrt' 2>/dev/null; then FORMATS="$FORMATS,tensorrt"; fi
step "export --device cuda: $FORMATS"
ad export "$WORK/run/weights.safetensors" --out "$WORK/export" --formats "$FORMATS" \
    --device cuda --max-batch 64 --force

# -- validate (a failed check is a finding, not a reason to stop before the benchmark) ----------
step "validate"
validate_status=0
ad validate "$WORK/export" --images 64 --report "$WORK/export/validation.json" || validate_status=$?
echo "validate exit status: $validate_status"

# -- benchmark on the GPU -------------------------------------------------------------------------
step "benchmark --device cuda"
ad benchmark "$WORK/export" --device cuda --batch-sizes 1,8,32,64 --warmup-s 1 --duration-s 4 \
    --report "$WORK/export/benchmark-cuda.json" --plot "$WORK/export/benchmark-cuda.png"

# -- requests in flight on CUDA streams (one stream per request; TensorRT: an engine each) -------
step "benchmark --device cuda --concurrency 2,4"
ad benchmark "$WORK/export" --device cuda --batch-sizes 1,8 --concurrency 2,4 --warmup-s 0.5 --duration-s 2 \
    --report "$WORK/export/benchmark-cuda-streams.json" || echo "streams benchmark exit status: $?"

# -- reports into $OUT -------------------------------------------------------------------------
step "collect"
cp "$WORK/export/benchmark-cuda."{json,md,png} "$WORK/export/benchmark-cuda-streams."{json,md} "$WORK/export/validation."{json,md} "$OUT/" 2>/dev/null || true
cp "$WORK/export/manifest.json" "$OUT/manifest.json"
cp "$WORK/run/metrics.jsonl" "$OUT/train-metrics.jsonl" 2>/dev/null || true
ls -la "$OUT"
echo "gpu_check done (validate exit $validate_status)"
exit "$validate_status"
