#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine with Rust: protoc (etcd-client
# builds need it), Debian's etcd-server (real etcd on loopback), and moto's S3 API server
# (real conditional writes on loopback). Idempotent: skips what is already there.
set -euo pipefail

need_apt=()
command -v protoc >/dev/null 2>&1 || need_apt+=(protobuf-compiler)
command -v etcd >/dev/null 2>&1 || [ -x /usr/bin/etcd ] || need_apt+=(etcd-server)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# Debian's etcd-server package may start a system etcd; tests start their own.
if command -v systemctl >/dev/null 2>&1; then systemctl stop etcd >/dev/null 2>&1 || true; fi

if ! python3 -c 'import moto.server' >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check 'moto[server]==5.*'
fi
command -v moto_server >/dev/null 2>&1 || { echo "moto_server not on PATH after install" >&2; exit 1; }
echo "test dependencies ready: $(protoc --version), etcd $(etcd --version 2>/dev/null | head -1 | awk '{print $3}'), moto_server"
