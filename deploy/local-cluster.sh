#!/usr/bin/env bash
# A whole Tributary cluster on one machine: etcd (3 members), an S3 API server, a coordinator
# pair (leader elected in etcd), two workers and, with --base-model, serving workers and a
# gateway (the OpenAI API), as containers on a private Docker network
# with their own addresses (so partitions and node loss are real), certificates from
# `tributary certs`. etcd serves its clients and peers over TLS and requires client
# certificates; every role presents its node certificate (--etcd-ca/--etcd-cert/--etcd-key);
# etcd's health is on plain HTTP at its metrics port (2381). `--process` runs the same roles as processes on 127.0.0.1 instead, for
# machines without Docker.
#
#   deploy/local-cluster.sh [--process] up [--binary PATH] [--workers N]
#                                          [--base-model DIR [--gateways N]]
#   deploy/local-cluster.sh [--process] status
#   deploy/local-cluster.sh [--process] down
#
# `up` prints the URLs and writes them, with the names of everything it started, to
# $TRIBUTARY_CLUSTER_DIR/cluster.env (default .local-cluster/ in the repo); `down` removes
# exactly what `up` started. Images come from deploy/images/build.sh (built if missing).
# Environment: TRIBUTARY_CLUSTER_PREFIX (container/network name prefix, default trib),
# TRIBUTARY_CLUSTER_MOUNT (a host directory mounted read-only at the same path in the
# coordinators and workers, and allowed there with --allow-path, for base models and data
# given as paths), TRIBUTARY_LEASE_TTL.
#
# --base-model DIR (containers only): every worker also serves that Hugging Face checkpoint
# directory (mounted read-only at the same path) to the gateways, and N gateways (default 1,
# at most 4; named gw1, gw2, …) serve the OpenAI API on :7400. Graceful stops as in the Helm
# chart: `docker stop` gives each container the chart's terminationGracePeriodSeconds
# (coordinators 30 s, workers and gateways 60 s) after SIGTERM; on SIGTERM a gateway's
# /readyz answers 503 at once and it serves TRIBUTARY_SHUTDOWN_DELAY_SECS more (default 5:
# what the chart's preStop sleep gives a Service; Docker has no preStop hook), a serving
# worker leaves membership and lets running answers finish for TRIBUTARY_DRAIN_TIMEOUT_SECS
# (default 30). TRIBUTARY_MICRO_BATCH_DELAY_MS, when set, goes to the workers: a test knob
# that slows each training micro-batch, so a job outlasts the restarts a test makes.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
state="${TRIBUTARY_CLUSTER_DIR:-$root/.local-cluster}"
prefix="${TRIBUTARY_CLUSTER_PREFIX:-trib}"
net="$prefix-net"
tag="${TRIBUTARY_IMAGE_TAG:-dev}"
mode=docker
binary=""
workers=2
base_model=""
gateways=""
lease_ttl="${TRIBUTARY_LEASE_TTL:-5}"
bucket=tributary
cmd=""
while [ $# -gt 0 ]; do
  case "$1" in
    --process) mode=process; shift ;;
    --binary) binary=$2; shift 2 ;;
    --workers) workers=$2; shift 2 ;;
    --base-model) base_model=$2; shift 2 ;;
    --gateways) gateways=$2; shift 2 ;;
    up|down|status) cmd=$1; shift ;;
    *) echo "local-cluster.sh: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
[ -n "$cmd" ] || { sed -n '2,18p' "$0" >&2; exit 2; }
case "$workers" in ''|*[!0-9]*) echo "--workers must be a number" >&2; exit 2 ;; esac
[ "$workers" -ge 1 ] && [ "$workers" -le 8 ] || { echo "--workers $workers is out of range: 1..=8" >&2; exit 2; }
if [ -n "$base_model" ]; then
  [ "$mode" = docker ] || { echo "--base-model: containers only (not with --process)" >&2; exit 2; }
  [ -d "$base_model" ] || { echo "--base-model $base_model is not a directory" >&2; exit 2; }
  base_model=$(cd "$base_model" && pwd)
fi
[ -z "$gateways" ] || [ -n "$base_model" ] || { echo "--gateways needs --base-model (a gateway serves the workers' model)" >&2; exit 2; }
gateways=${gateways:-$([ -n "$base_model" ] && echo 1 || echo 0)}
case "$gateways" in ''|*[!0-9]*) echo "--gateways must be a number" >&2; exit 2 ;; esac
[ "$gateways" -le 4 ] || { echo "--gateways $gateways is out of range: 0..=4" >&2; exit 2; }
shutdown_delay="${TRIBUTARY_SHUTDOWN_DELAY_SECS:-5}"
drain_timeout="${TRIBUTARY_DRAIN_TIMEOUT_SECS:-30}"

if [ -z "$binary" ]; then
  binary="${CARGO_TARGET_DIR:-$root/target}/debug/tributary"
  [ -x "$binary" ] || binary="${CARGO_TARGET_DIR:-$root/target}/release/tributary"
fi

coordinators=(coord-a coord-b)
worker_names=()
for i in $(seq 1 "$workers"); do worker_names+=("w$i"); done
gateway_names=()
for i in $(seq 1 "$gateways"); do gateway_names+=("gw$i"); done
etcd_members=(etcd-1 etcd-2 etcd-3)

say() { printf '%s\n' "$*" >&2; }

wait_http() { # URL SECONDS
  local url=$1 deadline=$((SECONDS + $2))
  until curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || { say "timed out waiting for $url"; return 1; }
    sleep 0.3
  done
}

make_certs() {
  rm -rf "$state/certs"
  "$binary" certs init --out "$state/certs" >/dev/null
  for n in "${coordinators[@]}" "${worker_names[@]}" "${gateway_names[@]}" "${etcd_members[@]}"; do
    "$binary" certs issue --name "$n" --dir "$state/certs" >/dev/null
  done
}

# etcd_tls_args NAME DIR: etcd's TLS flags for member NAME, certificates in DIR:
# clients and peers over TLS, client certificates required, signed by the cluster CA.
etcd_tls_args() {
  local name=$1 dir=$2
  printf '%s\n' --cert-file "$dir/$name.pem" --key-file "$dir/$name.key" \
    --trusted-ca-file "$dir/ca.pem" --client-cert-auth \
    --peer-cert-file "$dir/$name.pem" --peer-key-file "$dir/$name.key" \
    --peer-trusted-ca-file "$dir/ca.pem" --peer-client-cert-auth
}

# ---------------------------------------------------------------- containers
c() { printf '%s-%s' "$prefix" "$1"; }
ip_of() { docker inspect -f "{{(index .NetworkSettings.Networks \"$net\").IPAddress}}" "$(c "$1")"; }

docker_up() {
  command -v docker >/dev/null || { say "docker is not installed: use --process"; exit 1; }
  [ -x "$binary" ] || { say "no tributary binary at $binary: cargo build first, or pass --binary"; exit 1; }
  if docker network inspect "$net" >/dev/null 2>&1; then
    say "a cluster named $prefix is already up (deploy/local-cluster.sh down first)"; exit 1
  fi
  "$here/images/build.sh" --binary "$binary" --tag "$tag" all >/dev/null
  mkdir -p "$state"
  make_certs
  # The containers run as uid 10001: give them their own copy of the keys.
  chmod 0755 "$state/certs"; chmod 0644 "$state/certs"/*
  docker network create "$net" >/dev/null
  local cluster="" e
  for e in "${etcd_members[@]}"; do cluster+="${cluster:+,}$e=https://$e:2380"; done
  for e in "${etcd_members[@]}"; do
    local tls_args; mapfile -t tls_args < <(etcd_tls_args "$e" /certs)
    docker run -d --name "$(c "$e")" --hostname "$e" --network "$net" --network-alias "$e" \
      --label tributary.cluster="$prefix" -v "$state/certs:/certs:ro" "tributary-etcd:$tag" \
      --name "$e" --data-dir /var/lib/etcd/data "${tls_args[@]}" \
      --listen-client-urls https://0.0.0.0:2379 --advertise-client-urls "https://$e:2379" \
      --listen-peer-urls https://0.0.0.0:2380 --initial-advertise-peer-urls "https://$e:2380" \
      --listen-metrics-urls http://0.0.0.0:2381 \
      --initial-cluster "$cluster" --initial-cluster-state new \
      --initial-cluster-token "$prefix-etcd" >/dev/null
  done
  docker run -d --name "$(c s3)" --hostname s3 --network "$net" --network-alias s3 \
    --label tributary.cluster="$prefix" "tributary-s3:$tag" >/dev/null
  local etcd_urls="" ; for e in "${etcd_members[@]}"; do etcd_urls+="${etcd_urls:+,}https://$e:2379"; done
  local store="s3://$bucket/cluster?endpoint=http://s3:9000&region=us-east-1"
  wait_http "http://$(ip_of s3):9000/" 60
  curl -fsS -X PUT "http://$(ip_of s3):9000/$bucket" -o /dev/null
  for e in "${etcd_members[@]}"; do wait_http "http://$(ip_of "$e"):2381/health" 60; done
  # The job API needs a key: an admin key in the cluster's store, printed in cluster.env.
  local api_key
  api_key=$(AWS_ACCESS_KEY_ID=tributary AWS_SECRET_ACCESS_KEY=tributary "$binary" keys create \
    --store "s3://$bucket/cluster?endpoint=http://$(ip_of s3):9000&region=us-east-1" \
    --owner operator --scope admin 2>/dev/null)
  local common=(--network "$net" --label tributary.cluster="$prefix"
    -v "$state/certs:/certs:ro"
    -e TRIBUTARY_ETCD="$etcd_urls" -e TRIBUTARY_ETCD_CA=/certs/ca.pem
    -e TRIBUTARY_CERTS=/certs -e TRIBUTARY_STORE="$store"
    -e TRIBUTARY_LEASE_TTL="$lease_ttl" -e AWS_ACCESS_KEY_ID=tributary -e AWS_SECRET_ACCESS_KEY=tributary
    -e RUST_LOG="${RUST_LOG:-info}")
  if [ -n "${TRIBUTARY_CLUSTER_MOUNT:-}" ]; then
    common+=(-v "$TRIBUTARY_CLUSTER_MOUNT:$TRIBUTARY_CLUSTER_MOUNT:ro" -e TRIBUTARY_ALLOW_PATHS="$TRIBUTARY_CLUSTER_MOUNT")
  fi
  # Serving workers: the base model at the same path, inference on :7451 (QUIC, mutual TLS).
  local serve=()
  if [ -n "$base_model" ]; then
    serve=(--base-model "$base_model" --serve-listen 0.0.0.0:7451 --drain-timeout-secs "$drain_timeout")
  fi
  for w in "${worker_names[@]}"; do
    docker run -d --name "$(c "$w")" --hostname "$w" --network-alias "$w" "${common[@]}" \
      ${base_model:+-v "$base_model:$base_model:ro"} --stop-timeout 60 \
      ${TRIBUTARY_MICRO_BATCH_DELAY_MS:+-e TRIBUTARY_MICRO_BATCH_DELAY_MS="$TRIBUTARY_MICRO_BATCH_DELAY_MS"} \
      -e TRIBUTARY_ETCD_CERT="/certs/$w.pem" -e TRIBUTARY_ETCD_KEY="/certs/$w.key" \
      "tributary:$tag" worker --name "$w" --listen 0.0.0.0:7401 --advertise "$w:7401" \
      --http 0.0.0.0:7400 --store "$store" --cache-dir /data/cache \
      ${base_model:+--serve-advertise "$w:7451"} "${serve[@]}" >/dev/null
  done
  for n in "${coordinators[@]}"; do
    docker run -d --name "$(c "$n")" --hostname "$n" --network-alias "$n" "${common[@]}" \
      --stop-timeout 30 -e TRIBUTARY_ETCD_CERT="/certs/$n.pem" -e TRIBUTARY_ETCD_KEY="/certs/$n.key" \
      "tributary:$tag" coordinator --name "$n" --http 0.0.0.0:7400 >/dev/null
  done
  for g in "${gateway_names[@]}"; do
    docker run -d --name "$(c "$g")" --hostname "$g" --network-alias "$g" "${common[@]}" \
      --stop-timeout 60 -e TRIBUTARY_ETCD_CERT="/certs/$g.pem" -e TRIBUTARY_ETCD_KEY="/certs/$g.key" \
      "tributary:$tag" gateway --name "$g" --http 0.0.0.0:7400 --store "$store" \
      --shutdown-delay-secs "$shutdown_delay" >/dev/null
  done
  for n in "${coordinators[@]}" "${worker_names[@]}"; do wait_http "http://$(ip_of "$n"):7400/healthz" 60; done
  # A gateway is ready once it reaches etcd and a serving worker.
  for g in "${gateway_names[@]}"; do wait_http "http://$(ip_of "$g"):7400/readyz" 120; done
  {
    echo "TRIBUTARY_CLUSTER_MODE=docker"
    echo "TRIBUTARY_CLUSTER_PREFIX=$prefix"
    echo "TRIBUTARY_CLUSTER_NETWORK=$net"
    echo "TRIBUTARY_CLUSTER_CONTAINERS=\"$(docker ps -a --filter label=tributary.cluster="$prefix" --format '{{.Names}}' | sort | tr '\n' ' ')\""
    for n in "${coordinators[@]}"; do echo "TRIBUTARY_URL_${n//-/_}=http://$(ip_of "$n"):7400"; done
    for w in "${worker_names[@]}"; do echo "TRIBUTARY_URL_${w//-/_}=http://$(ip_of "$w"):7400"; done
    for g in "${gateway_names[@]}"; do echo "TRIBUTARY_URL_${g//-/_}=http://$(ip_of "$g"):7400"; done
    if [ "$gateways" -gt 0 ]; then echo "TRIBUTARY_OPENAI_BASE_URL=http://$(ip_of gw1):7400/v1"; fi
    for e in "${etcd_members[@]}"; do echo "TRIBUTARY_URL_${e//-/_}=https://$(ip_of "$e"):2379"; done
    echo "TRIBUTARY_ETCD_CA=$state/certs/ca.pem"
    echo "TRIBUTARY_URL_s3=http://$(ip_of s3):9000"
    echo "TRIBUTARY_COORDINATOR=http://$(ip_of coord-a):7400"
    echo "TRIBUTARY_API_KEY=$api_key"
    echo "TRIBUTARY_STORE_HOST=s3://$bucket/cluster?endpoint=http://$(ip_of s3):9000&region=us-east-1"
  } > "$state/cluster.env"
}

docker_down() {
  local ids
  ids=$(docker ps -aq --filter label=tributary.cluster="$prefix")
  [ -n "$ids" ] && docker rm -f $ids >/dev/null
  docker network rm "$net" >/dev/null 2>&1 || true
  rm -f "$state/cluster.env"
}

docker_status() {
  docker ps -a --filter label=tributary.cluster="$prefix" --format '{{.Names}}\t{{.Status}}' | sort
}

# ---------------------------------------------------------------- processes
process_up() {
  command -v etcd >/dev/null || { say "etcd is not installed (scripts/setup-test-deps.sh installs it)"; exit 1; }
  [ -x "$binary" ] || { say "no tributary binary at $binary"; exit 1; }
  [ -f "$state/pids" ] && { say "a process cluster is already up (down first)"; exit 1; }
  mkdir -p "$state/logs"
  make_certs
  local base=${TRIBUTARY_CLUSTER_PORT:-17400}
  local cluster="" i=0 e
  for e in "${etcd_members[@]}"; do cluster+="${cluster:+,}$e=https://127.0.0.1:$((base + 80 + i))"; i=$((i + 1)); done
  i=0
  : > "$state/pids"
  for e in "${etcd_members[@]}"; do
    local tls_args; mapfile -t tls_args < <(etcd_tls_args "$e" "$state/certs")
    etcd --name "$e" --data-dir "$state/$e" "${tls_args[@]}" \
      --listen-client-urls "https://127.0.0.1:$((base + 70 + i))" --advertise-client-urls "https://127.0.0.1:$((base + 70 + i))" \
      --listen-peer-urls "https://127.0.0.1:$((base + 80 + i))" --initial-advertise-peer-urls "https://127.0.0.1:$((base + 80 + i))" \
      --listen-metrics-urls "http://127.0.0.1:$((base + 75 + i))" \
      --initial-cluster "$cluster" --initial-cluster-state new >"$state/logs/$e.log" 2>&1 &
    echo "$! $e" >> "$state/pids"; i=$((i + 1))
  done
  local etcd_urls="https://127.0.0.1:$((base + 70)),https://127.0.0.1:$((base + 71)),https://127.0.0.1:$((base + 72))"
  local moto
  moto=$(cat "${XDG_CACHE_HOME:-$HOME/.cache}/tributary/moto_server_path" 2>/dev/null || command -v moto_server)
  "$moto" -H 127.0.0.1 -p "$((base + 90))" >"$state/logs/s3.log" 2>&1 &
  echo "$! s3" >> "$state/pids"
  wait_http "http://127.0.0.1:$((base + 90))/" 60
  curl -fsS -X PUT "http://127.0.0.1:$((base + 90))/$bucket" -o /dev/null
  local store="s3://$bucket/cluster?endpoint=http://127.0.0.1:$((base + 90))&region=us-east-1"
  local api_key
  api_key=$(AWS_ACCESS_KEY_ID=tributary AWS_SECRET_ACCESS_KEY=tributary "$binary" keys create \
    --store "$store" --owner operator --scope admin 2>/dev/null)
  export TRIBUTARY_ETCD="$etcd_urls" TRIBUTARY_ETCD_CA="$state/certs/ca.pem" \
    TRIBUTARY_CERTS="$state/certs" TRIBUTARY_STORE="$store" \
    TRIBUTARY_LEASE_TTL="$lease_ttl" AWS_ACCESS_KEY_ID=tributary AWS_SECRET_ACCESS_KEY=tributary
  i=0
  for w in "${worker_names[@]}"; do
    TRIBUTARY_ETCD_CERT="$state/certs/$w.pem" TRIBUTARY_ETCD_KEY="$state/certs/$w.key" \
      "$binary" worker --name "$w" --listen "127.0.0.1:$((base + 1 + i))" --http "127.0.0.1:$((base + 11 + i))" \
      --store "$store" --cache-dir "$state/$w-cache" >"$state/logs/$w.log" 2>&1 &
    echo "$! $w" >> "$state/pids"; i=$((i + 1))
  done
  i=0
  for n in "${coordinators[@]}"; do
    TRIBUTARY_ETCD_CERT="$state/certs/$n.pem" TRIBUTARY_ETCD_KEY="$state/certs/$n.key" \
      "$binary" coordinator --name "$n" --http "127.0.0.1:$((base + i * 100))" >"$state/logs/$n.log" 2>&1 &
    echo "$! $n" >> "$state/pids"; i=$((i + 1))
  done
  wait_http "http://127.0.0.1:$base/healthz" 60
  {
    echo "TRIBUTARY_CLUSTER_MODE=process"
    echo "TRIBUTARY_URL_coord_a=http://127.0.0.1:$base"
    echo "TRIBUTARY_URL_coord_b=http://127.0.0.1:$((base + 100))"
    echo "TRIBUTARY_COORDINATOR=http://127.0.0.1:$base"
    echo "TRIBUTARY_API_KEY=$api_key"
    echo "TRIBUTARY_URL_s3=http://127.0.0.1:$((base + 90))"
    echo "TRIBUTARY_STORE_HOST=$store"
  } > "$state/cluster.env"
}

process_down() {
  [ -f "$state/pids" ] || return 0
  while read -r pid _; do kill "$pid" 2>/dev/null || true; done < "$state/pids"
  sleep 0.5
  while read -r pid _; do kill -9 "$pid" 2>/dev/null || true; done < "$state/pids"
  rm -rf "$state/pids" "$state/cluster.env" "$state"/etcd-* "$state"/w*-cache
}

process_status() {
  [ -f "$state/pids" ] || { echo "no process cluster"; return; }
  while read -r pid name; do
    if kill -0 "$pid" 2>/dev/null; then printf '%s\tup (pid %s)\n' "$name" "$pid"; else printf '%s\texited\n' "$name"; fi
  done < "$state/pids"
}

case "$mode:$cmd" in
  docker:up) docker_up; cat "$state/cluster.env" ;;
  docker:down) docker_down ;;
  docker:status) docker_status ;;
  process:up) process_up; cat "$state/cluster.env" ;;
  process:down) process_down ;;
  process:status) process_status ;;
esac
