#!/usr/bin/env bash
# The GPU check of issue 17, in one go (under 10 minutes), on a machine with an NVIDIA GPU, its
# driver, CUDA and PyTorch+PEFT, and no Rust: run from the repo root with the bundle that
# scripts/gpu/bundle.sh made here in .gpu/. Writes into $OUT (default /tmp/gpu-check):
#   gpu-check.json   one object: machine, devices, fixture results, every bench line, ratios
#   fixtures-B.log   the fixture tests' output on backend B (max differences, seconds)
#   bench.jsonl      one JSON line per bench run (tributary on each backend, PyTorch+PEFT on CUDA)
#   check.log        what ran, with the time each part took
# Each part has its own time limit, and a part that fails is recorded and the rest still runs,
# so one call always brings back the JSON. Exit status: 0 when the fixture checks passed and
# every bench ran.
#
#   GPU_CHECK_BACKENDS="cuda wgpu"                    tributary's backends, in this order (default:
#                                                     the bundle's features, .gpu/features, cuda first)
#   GPU_CHECK_EXPECT=hardware (default) | software   the adapter wgpu must land on
#   GPU_CHECK_QUICK=1                                 few steps/tokens (a smoke run, e.g. here on lavapipe)
#   GPU_CHECK_SKIP_TORCH=1                            no PyTorch peer (a machine without torch)
#   PYTHON=python3                                    the Python that has torch, transformers, peft
set -uo pipefail
cd "$(dirname "$0")/../.."

OUT=${OUT:-/tmp/gpu-check}
B=.gpu
PYTHON=${PYTHON:-python3}
expect=${GPU_CHECK_EXPECT:-hardware}
case ",$(cat "$B/features" 2>/dev/null || echo wgpu)," in
  *,cuda,*) built="cuda wgpu" ;;
  *) built="wgpu" ;;
esac
backends=${GPU_CHECK_BACKENDS:-$built}
quick=${GPU_CHECK_QUICK:-0}
mkdir -p "$OUT"
log="$OUT/check.log"
: > "$log"
: > "$OUT/bench.jsonl"
say() { echo "[$(date -u +%H:%M:%S) +${SECONDS}s] $*" | tee -a "$log"; }
failures=0

[ -f "$B/bin/tributary.xz" ] || { say "no bundle in $B: run scripts/gpu/bundle.sh first, carry .gpu"; exit 2; }
work=$(mktemp -d /tmp/gpu-check.XXXXXX)
for b in tributary wgpu_fixtures; do
  if command -v xz >/dev/null; then xz -dc "$B/bin/$b.xz" > "$work/$b"
  else "$PYTHON" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
    "$B/bin/$b.xz" "$work/$b"; fi
  chmod +x "$work/$b"
done
TRIBUTARY="$work/tributary"

# The Vulkan loader, where the image has none (Debian's, unpacked from the bundle), and the
# NVIDIA ICD where the loader does not find it on its own.
if ! ldconfig -p | grep 'libvulkan\.so\.1 ' >/dev/null; then  # no -q: pipefail and SIGPIPE
  for f in "$B"/gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
  say "unpacked the Vulkan loader: $(ldconfig -p | grep -c 'libvulkan\.so\.1 ') found"
fi
if [ -z "${VK_DRIVER_FILES:-}" ] && ! ls /usr/share/vulkan/icd.d/nvidia* /etc/vulkan/icd.d/nvidia* >/dev/null 2>&1 \
   && [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  say "VK_DRIVER_FILES=$VK_DRIVER_FILES"
fi
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"; } > "$OUT/gpu.txt"
say "gpu: $(cat "$OUT/gpu.txt"); bundle $(cat "$B/commit" 2>/dev/null) ($(cat "$B/profile" 2>/dev/null), features $(cat "$B/features" 2>/dev/null)); backends: $backends"

# 1. The fixture checks on each backend (first-run kernel compilation included in their
#    time): the same test binary, its device chosen by TRIBUTARY_FIXTURE_DEVICE.
for b in $backends; do
  say "fixtures on $b (wgpu: expect $expect)"
  TRIBUTARY_FIXTURES="$B/fixtures" TRIBUTARY_WGPU_EXPECT="$expect" TRIBUTARY_FIXTURE_DEVICE="$b" \
    timeout 120 "$work/wgpu_fixtures" --test-threads=1 --nocapture > "$OUT/fixtures-$b.log" 2>&1
  rc=$?
  echo "$rc" > "$OUT/fixtures-$b.rc"
  [ $rc -eq 0 ] || failures=$((failures + 1))
  say "fixtures on $b: exit $rc; $(grep -E '^test result' "$OUT/fixtures-$b.log" || echo 'no result line')"
done

# 2. The bench model's weights, once, for both tributary and the peer (same seed, same file).
cfg="$B/bench/bench-llama-30m.json"
model="$work/bench-model"
"$TRIBUTARY" model init --config "$cfg" --seed 0 --out "$model" > /dev/null 2>> "$log" || failures=$((failures + 1))

# 3. The runs: training (B=8, T=256, r=16), decode batch 1 and 32 with one adapter, and a
#    mixed batch of 32 rows over 4 adapters. Tributary first warms its kernels (compilation
#    and autotuning are cached for the process only, so each bench run has its own warm-up:
#    one step / a 2-token run, excluded from the timing like the peer's).
if [ "$quick" = 1 ]; then steps=2; new=8; else steps=10; new=128; fi
deadline=${GPU_CHECK_DEADLINE_S:-540} # seconds from the start: the device tool allows 600 a call
run() { # tag, limit seconds, command...  (the limit shrinks to what is left before the deadline)
  local tag=$1 limit=$2; shift 2
  local left=$((deadline - SECONDS - 10))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 20 ]; then
    say "$tag: skipped, out of time"; failures=$((failures + 1))
    printf '{"tag":"%s","error":"skipped: out of time"}\n' "$tag" >> "$OUT/bench.jsonl"
    return
  fi
  say "$tag (limit ${limit}s)"
  timeout "$limit" "$@" > "$work/stdout" 2>> "$log"
  local rc=$?
  local line
  line=$(grep '^{' "$work/stdout" | tail -1)
  if [ "$rc" -ne 0 ] || [ -z "$line" ]; then
    say "$tag: exit $rc"; failures=$((failures + 1))
    printf '{"tag":"%s","error":"exit %s"}\n' "$tag" "$rc" >> "$OUT/bench.jsonl"
    return
  fi
  printf '{"tag":"%s","result":%s}\n' "$tag" "$line" >> "$OUT/bench.jsonl"
}
torch=("$PYTHON" scripts/peers/torch_bench.py)
peer_args=(--device cuda --model "$model")
#    Tags: tributary-BACKEND-WHAT beside torch-WHAT (the ratios pair them).
for b in $backends; do
  run "tributary-$b-train" 100 "$TRIBUTARY" bench train --device "$b" --config "$cfg" --batch 8 --seq 256 --rank 16 --steps "$steps"
done
[ "${GPU_CHECK_SKIP_TORCH:-0}" = 1 ] || run torch-train 70 "${torch[@]}" train "${peer_args[@]}" --batch 8 --seq 256 --rank 16 --steps "$steps"
for spec in "1 1" "32 4" "32 1"; do
  set -- $spec
  for b in $backends; do
    run "tributary-$b-generate-b$1-a$2" 60 "$TRIBUTARY" bench generate --device "$b" --dtype f32 --config "$cfg" \
      --batch "$1" --adapters "$2" --prompt-len 32 --new-tokens "$new" --rank 16
  done
  [ "${GPU_CHECK_SKIP_TORCH:-0}" = 1 ] || run "torch-generate-b$1-a$2" 50 "${torch[@]}" generate "${peer_args[@]}" \
    --batch "$1" --adapters "$2" --prompt-len 32 --new-tokens "$new" --rank 16
done

# 4. One JSON object with the ratios.
"$PYTHON" scripts/gpu/summarize.py --out "$OUT" --backends "$backends" --expect "$expect" \
  > "$OUT/gpu-check.json" 2>> "$log" || failures=$((failures + 1))
say "done: $failures failure(s); $OUT/gpu-check.json"
rm -rf "$work"
[ "$failures" -eq 0 ]
