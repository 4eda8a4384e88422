#!/usr/bin/env bash
# Installs the peers of issue 3 (PyTorch + PEFT, llama.cpp via llama-cpp-python) into a venv
# outside the repository, for scripts/peers/*.py. Not part of CI.
#
#   scripts/peers/setup.sh [VENV]        # default: ~/.cache/tributary/peers-venv
#
# torch: PyPI has only the CUDA build of torch 2.15 for Linux x86_64 (the CPU-only wheels live
# on PyTorch's own index, which this machine cannot reach). Its shared libraries are linked
# against the CUDA libraries, so `import torch` needs them even on a CPU-only machine. We
# install torch with --no-deps and then only what `import torch` loads: the 13 nvidia-* wheels
# that torch/__init__.py preloads (cuBLAS, cuDNN, NCCL, ...; ~3 GB), pinned to the versions
# pip resolves for torch 2.15.0. Left out: triton (~0.5 GB, GPU compiler), cuda-bindings,
# cuda-toolkit (a meta package), nvtx, cccl. The whole venv is ~4.6 GB. pip then warns that
# torch "requires cuda-bindings, cuda-toolkit, triton, which is not installed": expected.
# pip also follows the dependencies of an installed torch whenever it resolves a package that
# needs torch, so peft and accelerate are installed with --no-deps too, their other
# dependencies by name.

# llama-cpp-python compiles llama.cpp from source (several minutes to tens of minutes on 2
# cores). It is built in the background while torch installs; its log goes to
# $VENV/llama-cpp-build.log. CMAKE_ARGS asks for a native CPU build (AVX-512 where the CPU has
# it), no BLAS, no GPU backend, no llava/mtmd library.
set -euo pipefail

VENV=${1:-${PEERS_VENV:-$HOME/.cache/tributary/peers-venv}}
JOBS=${JOBS:-$(nproc)}

echo "disk before:"; df -h "$(dirname "$VENV")" 2>/dev/null || df -h "$HOME"
mkdir -p "$(dirname "$VENV")"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check"
$PIP install -q --upgrade pip

# llama-cpp-python first, in the background: it is the slow part.
LLAMA_LOG="$VENV/llama-cpp-build.log"
if "$VENV/bin/python" -c 'import llama_cpp, sys; sys.exit(llama_cpp.__version__ != "0.3.36")' 2>/dev/null; then
  echo "llama-cpp-python 0.3.36 is already installed"
  LLAMA_PID=
else
(
  export CMAKE_ARGS="-DGGML_NATIVE=ON -DGGML_BLAS=OFF -DGGML_CUDA=OFF -DGGML_VULKAN=OFF \
-DLLAMA_CURL=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
  export CMAKE_BUILD_PARALLEL_LEVEL=$JOBS
  nice $PIP install --no-cache-dir -v "llama-cpp-python==0.3.36" >"$LLAMA_LOG" 2>&1
) &
LLAMA_PID=$!
echo "llama-cpp-python is building in the background (pid $LLAMA_PID), log: $LLAMA_LOG"
fi

# torch (CPU use) without the CUDA wheels, then its pure-Python dependencies.
$PIP install -q --no-deps "torch==2.15.*" \
  nvidia-cublas==13.4.1.3 nvidia-cudnn-cu13==9.26.0.51 nvidia-cuda-nvrtc==13.2.86 \
  nvidia-cuda-runtime==13.2.86 nvidia-cuda-cupti==13.2.86 nvidia-cufft==12.2.0.57 \
  nvidia-nvjitlink==13.5.37 nvidia-cusparse==12.7.10.12 nvidia-cusparselt-cu13==0.8.1 \
  nvidia-cusolver==12.2.0.11 nvidia-nccl-cu13==2.30.7 nvidia-nvshmem-cu13==3.7.2 \
  nvidia-cufile==1.17.1.22
$PIP install -q filelock typing-extensions sympy networkx jinja2 fsspec "setuptools>=77.0.3"
$PIP install -q numpy safetensors gguf transformers
$PIP install -q --no-deps "peft==0.21.*" accelerate
$PIP install -q psutil pyyaml tqdm packaging huggingface_hub

echo "waiting for llama-cpp-python ..."
if [ -n "$LLAMA_PID" ] && ! wait "$LLAMA_PID"; then
  echo "llama-cpp-python failed; the end of $LLAMA_LOG:" >&2
  tail -40 "$LLAMA_LOG" >&2
  exit 1
fi

"$VENV/bin/python" - <<'PY'
import torch, transformers, peft, llama_cpp, gguf, numpy
print("torch", torch.__version__, "cuda available:", torch.cuda.is_available())
print("transformers", transformers.__version__, "peft", peft.__version__)
from importlib.metadata import version
print("llama_cpp", llama_cpp.__version__, "gguf", version("gguf"))
PY
echo "venv size: $(du -sh "$VENV" | cut -f1)"
echo "disk after:"; df -h "$(dirname "$VENV")"
