#!/usr/bin/env bash
# The whole test suite, as the README gives it and as CI runs it: installs the real servers
# the tests start (etcd, an S3 API server), checks formatting and lints, type-checks the GPU
# feature, then runs every test in the workspace. Fails if no test ran.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup-test-deps.sh
TRIBUTARY_MOTO_SERVER=$(cat "${XDG_CACHE_HOME:-$HOME/.cache}/tributary/moto_server_path")
export TRIBUTARY_MOTO_SERVER

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

if [ "${TRIBUTARY_SKIP_WGPU_CHECK:-0}" != "1" ]; then
  echo "== cargo check --features wgpu"
  cargo check --workspace --features wgpu
fi

echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
passed=$(grep -E '^test result: ' "$log" | sed -E 's/.* ([0-9]+) passed.*/\1/' | awk '{s+=$1} END {print s+0}')
failed=$(grep -E '^test result: ' "$log" | sed -E 's/.* ([0-9]+) failed.*/\1/' | awk '{s+=$1} END {print s+0}')
echo "$passed passed, $failed failed"
if [ "$status" -ne 0 ]; then
  echo "cargo test failed (exit $status)" >&2
  exit "$status"
fi
if [ "$passed" -eq 0 ]; then
  echo "no tests ran: treating as a failure" >&2
  exit 1
fi
