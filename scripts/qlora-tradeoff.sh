#!/usr/bin/env bash
# QLoRA's quality cost on a base that has learned something (docs/benchmarks.md, issue 3).
#
# 1. Makes a "pretrained" base from the demo config with Tributary alone (no weights can be
#    downloaded here): ReLoRA-style rounds of a rank-64 LoRA fine-tune on English text
#    (the licence texts Debian ships in /usr/share/common-licenses), each merged into the
#    base with `model merge`.
# 2. Fine-tunes that base on the demo's chat data with an f32 base and with an NF4 base
#    (same seed, same split, same steps) and prints the held-out eval losses.
#
# Usage: scripts/qlora-tradeoff.sh [TRIBUTARY_BINARY] [WORK_DIR]
# Prints one JSON line per fine-tune ({"stage", "quantize", "seed", "eval_before", "eval_after"})
# and leaves the bases and adapters in WORK_DIR.
set -euo pipefail
BIN=${1:-target/release/tributary}
WORK=${2:-$(mktemp -d)}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${ROUNDS:-6}
ROUND_STEPS=${ROUND_STEPS:-250}
mkdir -p "$WORK"

python3 - "$WORK/corpus.jsonl" <<'PY'
import glob, json, os, random, sys
chunks = []
for path in sorted(glob.glob('/usr/share/common-licenses/*')):
    if os.path.islink(path):
        continue
    text = ' '.join(open(path, errors='ignore').read().split())
    chunks += [text[i:i + 300] for i in range(0, len(text) - 100, 300)]
random.Random(0).shuffle(chunks)
with open(sys.argv[1], 'w') as out:
    for chunk in chunks:
        out.write(json.dumps({"prompt": "", "completion": chunk}) + "\n")
PY

eval_losses() { # OUT/finetune.json -> "before after"
  python3 -c 'import json, sys; r = json.load(open(sys.argv[1]))["results"]
print(r["eval_loss_before"], r["eval_loss_after"])' "$1/finetune.json"
}

base="$WORK/base-0"
if [ ! -f "$base/config.json" ]; then
  "$BIN" model init --config "$ROOT/assets/demo/config.json" --seed 7 --out "$base" >/dev/null
  cp "$ROOT"/assets/demo/{tokenizer.json,tokenizer_config.json,chat_template.jinja} "$base/"
fi
for round in $(seq 1 "$ROUNDS"); do
  next="$WORK/base-$round"
  if [ ! -f "$next/config.json" ]; then
    "$BIN" model finetune --model "$base" --data "$WORK/corpus.jsonl" --out "$WORK/relora-$round" \
      --rank 64 --alpha 64 --dropout 0 --steps "$ROUND_STEPS" --batch-size 8 --lr 3e-3 \
      --max-seq-len 128 --eval-fraction 0.1 --seed 0 >"$WORK/relora-$round.log" 2>&1
    "$BIN" model merge --model "$base" --adapter "$WORK/relora-$round" --out "$next" >/dev/null
    cp "$ROOT"/assets/demo/{tokenizer.json,tokenizer_config.json,chat_template.jinja} "$next/"
  fi
  read -r before after < <(eval_losses "$WORK/relora-$round")
  echo "{\"stage\":\"pretrain\",\"round\":$round,\"quantize\":\"none\",\"eval_before\":$before,\"eval_after\":$after}"
  base="$next"
done

# The pretrained base's own held-out loss on the corpus, f32 vs NF4 (one step at lr 0 changes
# nothing; "before" is the base's loss).
for q in none nf4; do
  "$BIN" model finetune --model "$base" --data "$WORK/corpus.jsonl" --out "$WORK/probe-$q" \
    --steps 1 --lr 0 --dropout 0 --max-seq-len 128 --eval-fraction 0.1 --seed 0 --quantize "$q" \
    >"$WORK/probe-$q.log" 2>&1
  read -r before _ < <(eval_losses "$WORK/probe-$q")
  echo "{\"stage\":\"base_on_corpus\",\"quantize\":\"$q\",\"eval_loss\":$before}"
done

for seed in 1 2 3; do
  for q in none nf4; do
    "$BIN" model finetune --model "$base" --data "$ROOT/assets/demo/train.jsonl" \
      --out "$WORK/ft-$q-$seed" --rank 16 --alpha 32 --steps 100 --batch-size 8 --lr 3e-3 \
      --eval-fraction 0.25 --seed "$seed" --quantize "$q" >"$WORK/ft-$q-$seed.log" 2>&1
    read -r before after < <(eval_losses "$WORK/ft-$q-$seed")
    echo "{\"stage\":\"finetune\",\"quantize\":\"$q\",\"seed\":$seed,\"eval_before\":$before,\"eval_after\":$after}"
  done
done
