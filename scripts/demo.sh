#!/usr/bin/env bash
# The README's first command: builds the `tributary` binary (installing protoc first if the
# machine lacks it, since etcd-client's build needs it) and runs `tributary demo`, the main
# job on the embedded default — no servers to install. Extra arguments go to `demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-test-deps.sh --build-only   # protoc and its protos; a no-op when present
exec cargo run --release --quiet -- demo "$@"
