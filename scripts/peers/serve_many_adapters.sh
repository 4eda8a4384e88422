#!/usr/bin/env bash
# Issue 11's many-adapter figure: `tributary bench serve` against `tributary dev` with 1, 100
# and 1 000 distinct adapters (α = 1 popularity) at one offered load far above capacity,
# back to back in one run, N rounds, plus the cold-load and resident-memory figures the
# server reports in /metrics. Model: bench-llama-30m (random weights, seed 1) with the demo
# tokenizer; one rank-8 q/v adapter trained 2 steps, copied 1 000 times with distinct
# safetensors metadata (distinct digests), each registered under its own name.
#
#   scripts/peers/serve_many_adapters.sh TRIBUTARY_BINARY [ROUNDS] [REQUESTS] > many.jsonl
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${1:?usage: serve_many_adapters.sh TRIBUTARY_BINARY [ROUNDS] [REQUESTS]}
ROUNDS=${2:-2}
REQS=${3:-64}
CFG=../shared/bench/bench-llama-30m.json
W=$(mktemp -d /tmp/serve-many.XXXXXX)
PORT=${PORT:-7467}
URL=http://127.0.0.1:$PORT
DEV=""
cleanup() { [ -z "$DEV" ] || kill "$DEV" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT

"$BIN" model init --config "$CFG" --seed 1 --out "$W/bm" >/dev/null
cp assets/demo/tokenizer.json assets/demo/tokenizer_config.json assets/demo/chat_template.jinja "$W/bm/"
"$BIN" model finetune --model "$W/bm" --data assets/demo/train.jsonl --out "$W/ad" --rank 8 \
  --steps 2 --batch-size 2 >/dev/null 2>&1
python3 scripts/serve-bench-adapters.py "$W/ad" "$W/copies" 1000 >/dev/null
"$BIN" dev --data-dir "$W/data" --http "127.0.0.1:$PORT" --base-model "$W/bm" --attribution off \
  >"$W/dev.log" 2>&1 &
DEV=$!
for _ in $(seq 1 600); do curl -sf -o /dev/null "$URL/readyz" && break; sleep 0.1; done
KEY=$(cat "$W/data/admin.key")
t0=$(date +%s.%N)
for i in $(seq -f %04g 0 999); do
  "$BIN" adapter register "$W/copies/a$i" --name "a$i" --coordinator "$URL" --api-key "$KEY" >/dev/null
done
t1=$(date +%s.%N)
echo "{\"registered\":1000,\"seconds\":$(echo "$t1 - $t0" | bc)}"
for round in $(seq 1 "$ROUNDS"); do
  for n in 1 100 1000; do
    line=$("$BIN" bench serve --url "$URL" --api-key "$KEY" --adapters "$n" --rate 40 \
      --requests "$REQS" --output-tokens 32..32 --prompt-words 16..16 --alpha 1 --seed "$round" 2>/dev/null | tail -1)
    echo "{\"round\":$round,\"adapters\":$n,\"load_avg_1m\":$(cut -d' ' -f1 /proc/loadavg),\"result\":$line}"
  done
done
# Cold loads and resident bytes, as the server counted them over the whole run.
curl -s -H "Authorization: Bearer $KEY" "$URL/metrics" |
  grep -E '^tributary_(engine_)?adapter_(load|resident|cache)' | sed 's/^/# /' >&2 || true
