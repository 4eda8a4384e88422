#!/usr/bin/env bash
# The Python side of the GGUF checks, in a venv outside the repository (cached):
#   scripts/gguf/setup.sh            # numpy, gguf (llama.cpp's gguf-py), safetensors: make_test_data.py
#   scripts/gguf/setup.sh --llama    # + llama-cpp-python 0.3.36, built from source (native CPU,
#                                    #   no BLAS/GPU; 10-20 min on 2 cores): llama_cpp_reference.py
# Prints the venv's python. Not needed by CI: the data these scripts write is committed.
set -euo pipefail
VENV=${GGUF_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/tributary/gguf-venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check"
"$VENV/bin/python" -c 'import gguf, numpy, safetensors' 2>/dev/null \
  || $PIP install -q "gguf==0.19.0" numpy safetensors >&2
if [ "${1:-}" = "--llama" ] && ! "$VENV/bin/python" -c 'import llama_cpp' 2>/dev/null; then
  echo "building llama-cpp-python (log: $VENV/llama-cpp-build.log) ..." >&2
  CMAKE_ARGS="-DGGML_NATIVE=ON -DGGML_BLAS=OFF -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DLLAMA_CURL=OFF \
-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
-DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_MTMD=OFF" \
    nice -n 10 $PIP install --no-cache-dir -v "llama-cpp-python==0.3.36" >"$VENV/llama-cpp-build.log" 2>&1
fi
echo "$VENV/bin/python"
