#!/usr/bin/env bash
# The whole test suite, as the README gives it and as CI runs it: installs the real servers
# the tests start (etcd, an S3 API server), checks formatting and lints, runs the GPU
# features' fixture tests on software Vulkan, then every test in the workspace. Fails if no
# test ran.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each stage prints how long it took, so the CI budget is visible.
stage_start=$SECONDS
stage() {
  local now=$SECONDS
  if [ -n "${stage_name:-}" ]; then
    echo "== ${stage_name}: $((now - stage_start)) s"
  fi
  stage_name=$1
  stage_start=$now
  [ -n "$1" ] && echo "== $1"
  return 0
}

stage "setup"
scripts/setup-test-deps.sh
TRIBUTARY_MOTO_SERVER=$(cat "${XDG_CACHE_HOME:-$HOME/.cache}/tributary/moto_server_path")
export TRIBUTARY_MOTO_SERVER

stage "cargo fmt --check"
cargo fmt --all -- --check

# Lints, with the GPU features on so their code is linted too. This pass is also the cuda
# feature's type-check (it cannot run without an NVIDIA GPU; the fixture tests' CUDA path is
# checked with it): burn-cuda's cubecl-llvm downloads an LLVM bundle in its build script and
# links it, which a CI machine without network cannot do; DOCS_RS=1 makes those build scripts
# skip the native LLVM setup, which a check does not need. (One pass instead of a plain
# clippy and a separate `cargo check --features wgpu,cuda`: docs/gpu.md, "The cuda feature".)
clippy_features=wgpu,cuda
[ "${TRIBUTARY_SKIP_CUDA_CHECK:-0}" = "1" ] && clippy_features=wgpu
stage "cargo clippy --features $clippy_features"
DOCS_RS=1 cargo clippy --workspace --all-targets --features "$clippy_features" -- -D warnings

if [ "${TRIBUTARY_SKIP_WGPU_CHECK:-0}" != "1" ]; then
  if [ "${TRIBUTARY_WGPU_TESTS:-run}" = "run" ]; then
    # The GPU path executed: the fixture checks on burn-wgpu (model/tests/wgpu_fixtures.rs),
    # on Mesa's lavapipe where there is no GPU. This build is the feature's only build (it
    # replaced a `cargo check`); the dependencies it shares with the CPU path are built here
    # once for the `cargo test` stage below too. Cost and results: docs/gpu.md.
    stage "wgpu fixture tests (lavapipe)"
    cargo test --workspace --features wgpu --test wgpu_fixtures -- --show-output
  else
    # TRIBUTARY_WGPU_TESTS=check: the fixture tests are not run; the clippy stage above has
    # type-checked the wgpu feature and them.
    echo "wgpu fixture tests not run (TRIBUTARY_WGPU_TESTS=check): type-checked by clippy"
  fi
fi

stage "cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
stage ""
# Per test binary: the time its tests took (compile time is in the stage above).
awk '/^     Running /{name=$2} /^   Doc-tests /{name="doc-tests " $2}
     /^test result: /{for (i=1;i<=NF;i++) if ($i=="in") t=$(i+1); printf "   %8s  %s\n", t, name}' "$log" |
  sort -rn | head -40 || true
passed=$(grep -E '^test result: ' "$log" | sed -E 's/.* ([0-9]+) passed.*/\1/' | awk '{s+=$1} END {print s+0}')
failed=$(grep -E '^test result: ' "$log" | sed -E 's/.* ([0-9]+) failed.*/\1/' | awk '{s+=$1} END {print s+0}')
echo "$passed passed, $failed failed"
if [ "$status" -ne 0 ]; then
  # Each failure's panic message, here at the end where a CI excerpt (the log's tail) shows
  # it: the whole output, with every cluster log a failing test dumps, is far longer.
  echo "== failures (the first lines of each panic; the whole output is above)"
  awk '/^---- .* stdout ----$/ {name=$2}
       /panicked at/ {n=10; print "--- " name}
       n > 0 {print "    " substr($0, 1, 400); n--}' "$log" | head -200
  echo "cargo test failed (exit $status)" >&2
  exit "$status"
fi
if [ "$passed" -eq 0 ]; then
  echo "no tests ran: treating as a failure" >&2
  exit 1
fi
