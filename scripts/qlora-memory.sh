#!/usr/bin/env bash
# QLoRA's memory on SmolLM2-135M-Instruct at batch 1 x 512 tokens (docs/benchmarks.md,
# "QLoRA on SmolLM2", issue 13): the same fine-tune with an f32 base, an NF4 base, NF4 with
# double quantization and a bf16 base, each under /usr/bin/time -v; f32 and NF4 each with
# and without activation recomputation (`--recompute on|off`; on is NF4's default).
#
# The data: English text (the licence texts Debian ships in /usr/share/common-licenses) cut
# into 3,000-character completions with an empty prompt, so every example fills
# --max-seq-len 512 (SmolLM2's tokenizer takes ~4.3 characters per token on it).
#
# Usage: scripts/qlora-memory.sh [TRIBUTARY_BINARY] [WORK_DIR]
# Env: STEPS (default 6), MODEL (default: the GGUF scripts/fetch-smollm2.sh prints),
#      RUNS (default: all; a space-separated subset of the run names below),
#      F16_MODEL (the F16 GGUF of the same weights, `scripts/gguf/dequantize_gguf.py MODEL OUT
#      --f16`: adds the runs f16gguf and f16gguf-nf4, a 16-bit base file beside the 4-bit one).
# Prints one JSON line per run: precision, peak RSS (VmHWM, MiB), the base's resident bytes,
# RSS after loading and with the trainer set up, held-out eval loss before/after, tokens/s.
set -euo pipefail
BIN=${1:-target/release/tributary}
WORK=${2:-$(mktemp -d)}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
STEPS=${STEPS:-6}
MODEL=${MODEL:-$("$ROOT/scripts/fetch-smollm2.sh")}
mkdir -p "$WORK"

python3 - "$WORK/long.jsonl" <<'PY'
import glob, json, os, random, sys
chunks = []
for path in sorted(glob.glob('/usr/share/common-licenses/*')):
    if os.path.islink(path):
        continue
    text = ' '.join(open(path, errors='ignore').read().split())
    chunks += [text[i:i + 3000] for i in range(0, len(text) - 3000, 3000)]
random.Random(0).shuffle(chunks)
with open(sys.argv[1], 'w') as out:
    for chunk in chunks[:40]:
        out.write(json.dumps({"prompt": "", "completion": chunk}) + "\n")
PY

run() { # NAME FLAGS...
  run_on "$MODEL" "$@"
}

run_on() { # MODEL NAME FLAGS...
  local model=$1 name=$2
  shift 2
  if [ -n "${RUNS:-}" ] && [[ " $RUNS " != *" $name "* ]]; then
    return
  fi
  /usr/bin/time -v "$BIN" model finetune --model "$model" --data "$WORK/long.jsonl" \
    --out "$WORK/$name" --steps "$STEPS" --batch-size 1 --max-seq-len 512 --rank 8 --alpha 16 \
    --dropout 0 --lr 2e-3 --warmup 1 --schedule cosine --seed 7 --eval-fraction 0.1 "$@" \
    >"$WORK/$name.log" 2>&1
  python3 - "$name" "$WORK/$name" "$WORK/$name.log" <<'PY'
import json, re, sys
name, out, log = sys.argv[1:]
r = json.load(open(out + "/finetune.json"))["results"]
hwm = re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(log).read())
print(json.dumps({
    "run": name,
    "recompute": json.load(open(out + "/training_config.json")).get("recompute"),
    "peak_rss_mib": int(hwm.group(1)) // 1024 if hwm else None,
    "base_resident_mb": round(r["base_resident_bytes"] / 1e6, 1),
    "rss_after_load_mib": r["rss_mib"]["after_load"],
    "rss_trainer_ready_mib": r["rss_mib"]["trainer_ready"],
    "eval_before": r["eval_loss_before"], "eval_after": r["eval_loss_after"],
    "tokens_per_s": round(r["train_tokens_per_s"], 1),
}))
PY
}

run f32 --precision f32 --recompute off
run f32-recompute --precision f32 --recompute on
run nf4-keep --precision f32 --quantize nf4 --recompute off
run nf4 --precision f32 --quantize nf4
run nf4-dq --precision f32 --quantize nf4 --double-quant
run bf16 --precision bf16 --recompute off
run bf16-recompute --precision bf16 --recompute on
if [ -n "${F16_MODEL:-}" ]; then
  run_on "$F16_MODEL" f16gguf --precision f32 --recompute off
  run_on "$F16_MODEL" f16gguf-nf4 --precision f32 --quantize nf4
fi
