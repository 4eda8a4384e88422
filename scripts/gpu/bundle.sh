#!/usr/bin/env bash
# Builds, HERE (a machine with Rust), what scripts/gpu/check.sh runs on a GPU machine that has
# the NVIDIA driver, CUDA and PyTorch but no Rust toolchain and no network: the tributary
# binary and the fixture test binary built with `--features wgpu` (GPU_FEATURES=wgpu,cuda adds
# burn-cuda, so the same binaries also run on CUDA: cudarc loads the driver's libcuda and
# nvrtc at run time, so no CUDA toolkit is needed here, but burn-cuda's cubecl-llvm downloads
# an LLVM bundle in its build script and links it statically, which needs network or a filled
# ~/.local/share/tracel, a C++ compiler, and room in the 64 MiB; never tried), stripped and
# xz-compressed; the fixtures and bench configs from ../shared (which does not travel with the
# repo); and Debian's Vulkan loader (libvulkan1) for a machine where `ldconfig` finds none.
# Everything goes into .gpu/ (git-ignored), which the device tool's `carry` takes along; the
# whole working tree that travels must stay under 64 MiB, which this script checks.
#
#   scripts/gpu/bundle.sh [--profile release|dev]     # default release
set -euo pipefail
cd "$(dirname "$0")/../.."

profile=release
if [ "${1:-}" = "--profile" ]; then profile=${2:?--profile needs release or dev}; fi
case "$profile" in release|dev) ;; *) echo "--profile: release or dev, not $profile" >&2; exit 2 ;; esac
out=.gpu
features=${GPU_FEATURES:-wgpu}
target=${CARGO_TARGET_DIR:-target}
shared=${TRIBUTARY_SHARED:-../shared}
[ -d "$shared/fixtures/tiny-llama" ] || { echo "no fixtures at $shared/fixtures (set TRIBUTARY_SHARED)" >&2; exit 1; }

rm -rf "$out"
mkdir -p "$out/bin" "$out/fixtures" "$out/bench" "$out/gl"

# The binary and the fixture tests, with the GPU feature. `cargo test --no-run` prints the
# test executable's path in its JSON messages.
cargo build --profile "$profile" -p tributary --features "$features" --bin tributary
cp "$target/$([ "$profile" = dev ] && echo debug || echo release)/tributary" "$out/bin/tributary"
test_exe=$(cargo test --profile "$profile" -p tributary-model --features "$features" --test wgpu_fixtures \
  --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "wgpu_fixtures":
        print(m["executable"])')
[ -x "$test_exe" ] || { echo "wgpu_fixtures test binary not found" >&2; exit 1; }
cp "$test_exe" "$out/bin/wgpu_fixtures"
strip "$out/bin/tributary" "$out/bin/wgpu_fixtures"
xz -T0 -6 "$out/bin/tributary" "$out/bin/wgpu_fixtures"

cp -r "$shared/fixtures/tiny-llama" "$shared/fixtures/tiny-qwen2" "$out/fixtures/"
cp "$shared"/bench/*.json "$out/bench/"

# Debian's Vulkan loader: the GPU machine's image may lack it (the NVIDIA driver brings the
# ICD, not the loader). Same architecture as here: the GPU machine is x86-64.
(cd "$out/gl" && apt-get download libvulkan1 >/dev/null)

git rev-parse HEAD > "$out/commit"
echo "$profile" > "$out/profile"
echo "$features" > "$out/features"
bundle=$(du -sb "$out" | cut -f1)
tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
echo "bundle $((bundle / 1048576)) MiB + tracked tree $((tree / 1048576)) MiB (device limit 64 MiB)"
[ $((bundle + tree)) -lt $((62 * 1048576)) ] || { echo "too large to travel" >&2; exit 1; }
