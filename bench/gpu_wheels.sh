#!/usr/bin/env bash
# Fill bench/wheels/ with the wheels a CUDA machine without a package registry lacks for bench/gpu_check.py.
#
#   bash bench/gpu_wheels.sh [PYTHON]        # PYTHON: the interpreter whose pip is used (default .venv/bin/python)
#
# Run it on a machine that reaches PyPI. The target is CPython 3.12 on manylinux x86-64 (glibc >= 2.28), whose environment
# already has torch (CUDA), torchvision, numpy, scipy, scikit-learn, pillow, tqdm, matplotlib, onnx (with
# ml_dtypes), onnxruntime, tensorboard and pytest. What it lacks and what comes here:
#   hydra-core, omegaconf, PyYAML (omegaconf's), antlr4-python3-runtime (hydra's; published as a source
#   distribution only, so its wheel is built here), infomap, onnxscript with onnx-ir (torch's default ONNX
#   exporter), and timm (the ViT backbones; it imports without its optional huggingface_hub and safetensors,
#   which only fetch weights). Versions are the ones the project is developed with.
# Not included: faiss. A GPU build (faiss-gpu-cu12: a 48 MB wheel) needs the CUDA 12 runtime and cuBLAS
# wheels (hundreds of MB) beside the CUDA 13 torch, far beyond the 64 MiB the tree travels in; without faiss
# the kNN runs as blocked GEMM + top-k on the GPU (knn=torch), which is what knn=auto picks there anyway.
#
# On the CUDA machine, bench/gpu_check.py installs them itself when hydra does not import; by hand:
#   python -m pip install --no-index --no-deps --target /tmp/mqreid-wheels bench/wheels/*.whl
#   export PYTHONPATH=$PWD/src:/tmp/mqreid-wheels
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${1:-$REPO/.venv/bin/python}
OUT=$REPO/bench/wheels

HYDRA=1.3.8
OMEGACONF=2.3.1
ANTLR=4.9.3          # hydra-core 1.3 pins antlr4-python3-runtime==4.9.*
PYYAML=6.0.3
INFOMAP=2.16.0
ONNXSCRIPT=0.7.2
ONNX_IR=1.1.0
TIMM=1.0.31

rm -rf "$OUT"
mkdir -p "$OUT"
# manylinux 2.28 is what the CUDA torch wheels themselves need, so the target's glibc has it (infomap 2.16 ships
# only manylinux_2_28 wheels)
TARGET=(--only-binary=:all: --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64
        --python-version 3.12 --implementation cp --abi cp312 --no-deps)

# binary wheels for the target (pure-Python py3-none-any wheels match these filters too)
"$PYTHON" -m pip download "${TARGET[@]}" --dest "$OUT" --quiet \
    "hydra-core==$HYDRA" "omegaconf==$OMEGACONF" "PyYAML==$PYYAML" "infomap==$INFOMAP" \
    "onnxscript==$ONNXSCRIPT" "onnx-ir==$ONNX_IR" "timm==$TIMM"

# antlr4-python3-runtime exists only as a source distribution: build a (pure-Python) wheel from it
"$PYTHON" -m pip wheel --no-deps --wheel-dir "$OUT" --quiet "antlr4-python3-runtime==$ANTLR"

echo "bench/wheels:"
ls -l "$OUT"
du -sh "$OUT"
