#!/usr/bin/env bash
# Builds llama.cpp's `llama-server` (the serving peer of issue 11) and `llama-batched-bench`
# (issue 13's decode peer: batch 1 and 8 with a LoRA adapter on the SmolLM2 GGUFs) from the llama.cpp source
# vendored in the llama-cpp-python 0.3.36 sdist on PyPI (these machines reach PyPI, not
# GitHub), with cmake and ninja from PyPI. Native CPU build (AVX-512 where the CPU has it),
# no BLAS, no curl, no OpenSSL. Installs to ~/.cache/tributary/llama-server/bin/llama-server.
# Takes 15–40 minutes on 2 cores (one job, niced). Not part of CI.
set -euo pipefail
DEST=${LLAMA_SERVER_DIR:-$HOME/.cache/tributary/llama-server}
VERSION=0.3.36
if [ -x "$DEST/bin/llama-server" ] && [ -x "$DEST/bin/llama-batched-bench" ]; then
  echo "llama-server is already built: $DEST/bin/llama-server"
  exit 0
fi
mkdir -p "$DEST/src"
cd "$DEST/src"
if [ ! -d "llama_cpp_python-$VERSION" ]; then
  python3 -m pip download -q --no-deps --no-binary llama-cpp-python --no-build-isolation \
    "llama-cpp-python==$VERSION" -d . 2>/dev/null || true
  if [ ! -f "llama_cpp_python-$VERSION.tar.gz" ]; then
    # pip download prepares metadata (a build); fetching the sdist from the simple index
    # avoids it.
    url=$(curl -sf https://pypi.org/simple/llama-cpp-python/ |
      grep -o "https://[^\"#]*llama_cpp_python-$VERSION.tar.gz" | head -1)
    curl -sfL -o "llama_cpp_python-$VERSION.tar.gz" "$url"
  fi
  tar xzf "llama_cpp_python-$VERSION.tar.gz"
fi
[ -x "$DEST/tools/bin/cmake" ] || { python3 -m venv "$DEST/tools" && "$DEST/tools/bin/pip" install -q cmake ninja; }
export PATH=$DEST/tools/bin:$PATH
SRC=$DEST/src/llama_cpp_python-$VERSION/vendor/llama.cpp
cmake -S "$SRC" -B "$DEST/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
  -DLLAMA_OPENSSL=OFF -DGGML_NATIVE=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON >"$DEST/cmake.log"
nice cmake --build "$DEST/build" --target llama-server llama-batched-bench -j "${JOBS:-1}" >"$DEST/build.log"
mkdir -p "$DEST/bin"
cp "$DEST/build/bin/llama-server" "$DEST/build/bin/llama-batched-bench" "$DEST/bin/"
# The shared libraries it links (ggml, llama) sit beside it in build/bin.
cp "$DEST"/build/bin/*.so* "$DEST/bin/" 2>/dev/null || true
"$DEST/bin/llama-server" --version 2>&1 | head -2
echo "built: $DEST/bin/llama-server"
