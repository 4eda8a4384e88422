#!/bin/bash
# TPOT with attribution on vs off: tributary dev over a base model, one adapter trained by a
# job on a two-contributor datanet, `tributary bench serve` against it.
set -euo pipefail
BIN=${BIN:-target/debug/tributary}
REPO=${REPO:-$(pwd)}
BASE=${BASE:-$REPO/../shared/fixtures/tiny-llama}
W=${W:-/tmp/online-bench/w}; rm -rf $W; mkdir -p $W
DATA=$W/data; STORE=$DATA/store; mkdir -p $STORE
head -n 21 $REPO/assets/demo/train.jsonl > $W/alice.jsonl
tail -n +22 $REPO/assets/demo/train.jsonl > $W/bob.jsonl
$BIN datanet create clinic --store $STORE >/dev/null
$BIN datanet upload clinic $W/alice.jsonl --contributor alice --store $STORE >/dev/null
$BIN datanet upload clinic $W/bob.jsonl --contributor bob --store $STORE >/dev/null
start() {
  $BIN dev --workers 1 --data-dir $DATA --http 127.0.0.1:7477 --allow-path $W --allow-path $BASE \
    --base-model $BASE --attribution $1 "${@:2}" 2>>$W/dev-$1.log >/dev/null &
  PID=$!
  for i in $(seq 1 300); do curl -sf http://127.0.0.1:7477/readyz >/dev/null && return; sleep 0.2; done
  echo "dev did not start"; cat $W/dev-$1.log; exit 1
}
stop() { kill $PID; wait $PID 2>/dev/null || true; }
start on
cat > $W/job.toml <<T
base_model = "$BASE"
data = "datanet://clinic"
name = "clinic-bot"
[lora]
rank = 8
alpha = 16.0
dropout = 0.0
target_modules = ["q_proj", "k_proj", "v_proj", "o_proj"]
[train]
epochs = 4
batch_size = 8
lr = 1e-2
seed = 7
T
TRIBUTARY_COORDINATOR=http://127.0.0.1:7477 $BIN job submit $W/job.toml --wait --json > $W/job.json
cat $W/job.json
find $STORE/attribution/index -name attribution.json -exec cat {} \;
echo
run() {
  TRIBUTARY_COORDINATOR=http://127.0.0.1:7477 $BIN bench serve --url http://127.0.0.1:7477 --models clinic-bot \
    --rate ${RATE:-4} --requests ${REQS:-48} --output-tokens 32..32 --prompt-words 16..16 --seed 3
}
echo "uptime: $(uptime)"
echo "on:  $(run)"
curl -s http://127.0.0.1:7477/metrics | grep -E "^tributary_(attribution_backlog|reward_lag_seconds_(sum|count)|attributions_total|attribution_seconds_(sum|count)|attribution_spilled_total)"
stop
start off
echo "off: $(run)"
stop
start on
echo "on2: $(run)"
sleep 3
curl -s http://127.0.0.1:7477/metrics | grep -E "^tributary_(attribution_backlog|reward_lag_seconds_(sum|count)|attributions_total|attribution_seconds_(sum|count))"
stop
echo "uptime: $(uptime)"
$BIN ledger --replicas $DATA/ledger verify --json | head -c 400; echo
