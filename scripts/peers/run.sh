#!/usr/bin/env bash
# Tributary and its peers of issue 3 (PyTorch+PEFT, llama.cpp), interleaved, N rounds; each
# result is one JSON line appended to OUT: {"tag", "run", "round", "time", "cmd", "result": {...}}
# ("run" is this invocation's start time, so several invocations can append to one file)
# (result is the benchmark's own JSON line, or {"error": ...} when the command failed).
#
#   scripts/peers/run.sh [--rounds 3] [--out peers.jsonl] [--quick] [--only REGEX]
#
#   --quick       few steps/tokens (train T=32 1 step, generate 8 tokens): a smoke test
#   --only REGEX  run only the benchmarks whose tag matches (e.g. 'g1' or 'train')
#
# Environment: PEER_THREADS (default "2 1"): the peers run once per thread count, tagged -tN.
# PyTorch's and llama.cpp's OpenMP-style thread pools spin at barriers, so with another
# process on the 2 cores their 2-thread runs collapse (seen here at load 5: llama.cpp 28-36
# tokens/s with 2 threads, 184 with 1); summarize.py compares Tributary with the peer's best
# thread count of the same round. TRIBUTARY (the binary; default target/release/tributary), PEERS_VENV (default
# ~/.cache/tributary/peers-venv, made by setup.sh), CONFIG (default
# ../shared/bench/bench-llama-30m.json). Run on an idle machine: compare ratios within one
# round (same minute), never absolute figures across days.
set -uo pipefail

CALLER_DIR=$PWD
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
ROUNDS=3
OUT=peers.jsonl
QUICK=0
ONLY=.
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --only) ONLY=$2; shift 2 ;;
    *) echo "error: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
[[ $OUT == /* ]] || OUT=$CALLER_DIR/$OUT
case "$ROUNDS" in ''|*[!0-9]*|0) echo "error: --rounds must be a positive integer, got '$ROUNDS'" >&2; exit 2 ;; esac

T=${TRIBUTARY:-$ROOT/target/release/tributary}
VENV=${PEERS_VENV:-$HOME/.cache/tributary/peers-venv}
PY=$VENV/bin/python
CONFIG=${CONFIG:-$ROOT/../shared/bench/bench-llama-30m.json}
[ -x "$T" ] || { echo "error: no tributary binary at $T (set TRIBUTARY)" >&2; exit 2; }
[ -x "$PY" ] || { echo "error: no peers venv at $VENV (run scripts/peers/setup.sh)" >&2; exit 2; }
[ -f "$CONFIG" ] || { echo "error: no model config at $CONFIG (set CONFIG)" >&2; exit 2; }
export TRIBUTARY=$T

if [ "$QUICK" = 1 ]; then
  TRAIN="--seq 32 --steps 1"; GEN="--new-tokens 8"
else
  TRAIN="--steps 3"; GEN="--new-tokens 128"
fi

# One model (seed 0) and its GGUF files for the Python peers; Tributary's bench makes the same
# weights itself.
WORK=$(mktemp -d -t tributary-peers-XXXXXX)
trap 'rm -rf "$WORK"' EXIT
"$T" model init --config "$CONFIG" --seed 0 --out "$WORK/model" >/dev/null || exit 1
"$PY" scripts/peers/to_gguf.py "$WORK/model" "$WORK/gguf" >/dev/null || exit 1

PEER_THREADS=${PEER_THREADS:-2 1}
TR="$T bench"
RUN_ID=$(date -u +%Y-%m-%dT%H:%M:%SZ)

# run TAG COMMAND...: runs it, appends the tagged JSON line to OUT, prints a short summary.
run() {
  local tag=$1; shift
  [[ $tag =~ $ONLY ]] || return 0
  local line
  line=$("$@" 2>"$WORK/stderr" | tail -1)
  if ! "$PY" -c 'import json,sys; json.loads(sys.argv[1])' "$line" 2>/dev/null; then
    line=$("$PY" -c 'import json,sys; print(json.dumps({"error": sys.argv[1][-2000:]}))' "$(tail -5 "$WORK/stderr")")
  fi
  "$PY" - "$tag" "$RUN_ID" "$round" "$*" "$line" >>"$OUT" <<'PY'
import json, sys, time
tag, run, rnd, cmd, line = sys.argv[1:6]
print(json.dumps({"tag": tag, "run": run, "round": int(rnd), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "cmd": cmd, "result": json.loads(line)}))
PY
  echo "round $round $(date -u +%T) $tag: $(echo "$line" | grep -o '"tokens_per_s": *[0-9.]*\|"error".\{0,120\}')"
}

# peers TAG ARGS...: the torch ("torch-...") or llama.cpp run once per thread count.
peers() {
  local tag=$1; shift
  local script=torch_bench.py extra=
  [[ $tag == llamacpp-* ]] && script=llama_cpp_bench.py extra="--gguf-dir $WORK/gguf"
  for th in $PEER_THREADS; do
    run "$tag-t$th" "$PY" "scripts/peers/$script" --model "$WORK/model" $extra --threads "$th" "$@"
  done
}

for round in $(seq 1 "$ROUNDS"); do
  # LoRA training, B=8, T=256, r=16 on all seven projections, AdamW.
  # Ours in bf16 mixed precision (the default where the CPU has AVX-512 BF16) and in f32;
  # PyTorch+PEFT in f32 and under torch.autocast bf16 (issue 19).
  run tributary-train          $TR train --config "$CONFIG" --precision bf16 $TRAIN
  run tributary-train-f32      $TR train --config "$CONFIG" --precision f32 $TRAIN
  peers torch-train            train $TRAIN
  peers torch-train-autocast   train --autocast bf16 $TRAIN
  # Batch 1, f32 weights, with and without the adapter.
  run tributary-g1-f32packed   $TR generate --config "$CONFIG" --batch 1 --adapters 1 --dtype f32-packed $GEN
  peers torch-g1               generate --batch 1 --adapters 1 $GEN
  peers llamacpp-g1-f32        --dtype f32 --adapters 1 $GEN
  run tributary-g1a0-f32packed $TR generate --config "$CONFIG" --batch 1 --adapters 0 --dtype f32-packed $GEN
  peers torch-g1a0             generate --batch 1 --adapters 0 $GEN
  peers llamacpp-g1a0-f32      --dtype f32 --adapters 0 $GEN
  # Batch 1, 16-bit weights (Tributary bf16, llama.cpp f16).
  run tributary-g1-bf16        $TR generate --config "$CONFIG" --batch 1 --adapters 1 --dtype bf16 $GEN
  peers llamacpp-g1-f16        --dtype f16 --adapters 1 $GEN
  run tributary-g1a0-bf16      $TR generate --config "$CONFIG" --batch 1 --adapters 0 --dtype bf16 $GEN
  peers llamacpp-g1a0-f16      --dtype f16 --adapters 0 $GEN
  # Batch 8: one adapter, none, and 8 different adapters in one batch.
  run tributary-g8-bf16        $TR generate --config "$CONFIG" --batch 8 --adapters 1 --dtype bf16 $GEN
  run tributary-g8-f32packed   $TR generate --config "$CONFIG" --batch 8 --adapters 1 --dtype f32-packed $GEN
  peers torch-g8               generate --batch 8 --adapters 1 $GEN
  peers torch-g8a0             generate --batch 8 --adapters 0 $GEN
  run tributary-g8x8-bf16      $TR generate --config "$CONFIG" --batch 8 --adapters 8 --dtype bf16 $GEN
  peers torch-g8x8             generate --batch 8 --adapters 8 $GEN
  run tributary-g8x8-f32packed $TR generate --config "$CONFIG" --batch 8 --adapters 8 --dtype f32-packed $GEN
done
echo "appended to $OUT; summary: $PY $ROOT/scripts/peers/summarize.py $OUT"
