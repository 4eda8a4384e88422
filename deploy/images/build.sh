#!/usr/bin/env bash
# Builds Tributary's container images on a machine that can pull no image: the base is a
# Debian root filesystem made here with debootstrap and imported with `docker import`; the
# tributary image copies the binary the host built (the one the tests use, so it is built
# once). Cached: a base image or root filesystem that is already there is reused.
#
#   deploy/images/build.sh [--binary PATH] [--tag TAG] [--variant host|multistage] [all|base|tributary|etcd|s3]
#
# --variant multistage builds the binary inside Docker (tributary.multistage.Dockerfile; needs
# a registry, untested here).
#
# Images:
#   tributary-base:bookworm  Debian bookworm minbase (debootstrap), nothing else
#   tributary:TAG            the binary on the base, user 10001, /data as its volume
#   tributary-etcd:TAG       Debian's etcd-server binary (the host's /usr/bin/etcd) on the base
#   tributary-s3:TAG         moto's S3 API server in a virtual environment on bookworm + python3
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cache="${XDG_CACHE_HOME:-$HOME/.cache}/tributary/images"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
suite=bookworm
tag=dev
binary=""
variant=host
what=all
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    --variant) variant=$2; shift 2 ;;
    all|base|tributary|etcd|s3) what=$1; shift ;;
    *) echo "build.sh: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done

SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
# One build at a time per machine (tests start clusters in parallel).
mkdir -p "$cache"
exec 9>"$cache/build.lock"
flock 9
have_image() { docker image inspect "$1" >/dev/null 2>&1; }
step() { printf '== %s (%s)\n' "$*" "$(date +%T)"; }

# A root filesystem from debootstrap, built once into the cache and imported once.
rootfs() { # NAME EXTRA_PACKAGES
  local name=$1 include=$2 dir="$cache/rootfs-$1"
  if [ ! -f "$dir/.complete" ]; then
    command -v debootstrap >/dev/null || {
      $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq debootstrap >/dev/null; }
    $SUDO rm -rf "$dir"
    mkdir -p "$cache"
    step "debootstrap $suite ($name${include:+: $include})"
    $SUDO debootstrap --variant=minbase ${include:+--include="$include"} "$suite" "$dir" "$mirror" >"$cache/debootstrap-$name.log" 2>&1 \
      || { tail -20 "$cache/debootstrap-$name.log" >&2; exit 1; }
    # Smaller image: no package lists, docs or caches.
    $SUDO rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/* "$dir"/usr/share/doc/* "$dir"/usr/share/man/*
    $SUDO touch "$dir/.complete"
  fi
  echo "$dir"
}

import_base() { # NAME TAG EXTRA_PACKAGES [SETUP_FN]
  local name=$1 image=$2 include=$3 setup=${4:-}
  if have_image "$image"; then return; fi
  local dir
  dir=$(rootfs "$name" "$include" | tail -1)
  [ -n "$setup" ] && "$setup" "$dir"
  step "docker import $image"
  $SUDO tar -C "$dir" --exclude=./.complete -c . | docker import -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' - "$image" >/dev/null
}

# ca-certificates: object_store's HTTP client will not build without root certificates.
build_base() { import_base base tributary-base:$suite "ca-certificates"; }

# moto in a venv inside the root filesystem (chroot shares the host's network, which
# reaches PyPI; a container build could not).
setup_moto() {
  local dir=$1
  [ -x "$dir/opt/moto/bin/moto_server" ] && return
  step "moto into $dir/opt/moto"
  $SUDO cp /etc/resolv.conf "$dir/etc/resolv.conf"
  # Wheels are fetched by the host's pip (which knows how this machine reaches PyPI) and
  # installed offline inside the root filesystem (same Python minor version, 3.11).
  local wheels="$cache/moto-wheels"
  if [ ! -f "$wheels/.complete" ]; then
    rm -rf "$wheels"; mkdir -p "$wheels"
    python3 -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
      --python-version 3.11 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
      --implementation cp -d "$wheels" 'moto[server]==5.*'
    touch "$wheels/.complete"
  fi
  $SUDO mkdir -p "$dir/tmp/wheels"
  $SUDO cp "$wheels"/*.whl "$dir/tmp/wheels/"
  $SUDO chroot "$dir" python3 -m venv /opt/moto
  $SUDO chroot "$dir" env -u PIP_CERT -u PIP_FIND_LINKS /opt/moto/bin/pip install --quiet \
    --disable-pip-version-check --no-index --find-links /tmp/wheels 'moto[server]==5.*'
  $SUDO rm -rf "$dir/tmp/wheels"
  $SUDO rm -rf "$dir/root/.cache"
}
build_python_base() { import_base python tributary-python:$suite "python3,python3-venv,ca-certificates" setup_moto; }

docker_build() { # DOCKERFILE IMAGE CONTEXT [ARGS…]
  local file=$1 image=$2 ctx=$3; shift 3
  step "docker build $image"
  docker build -q -f "$file" -t "$image" "$@" "$ctx" >/dev/null
}

build_tributary() {
  if [ "$variant" = multistage ]; then
    docker_build "$here/tributary.multistage.Dockerfile" "tributary:$tag" "$root"
    return
  fi
  build_base
  if [ -z "$binary" ]; then
    binary="${CARGO_TARGET_DIR:-$root/target}/debug/tributary"
    [ -x "$binary" ] || binary="${CARGO_TARGET_DIR:-$root/target}/release/tributary"
  fi
  [ -x "$binary" ] || { echo "build.sh: no tributary binary at $binary: cargo build first, or pass --binary" >&2; exit 1; }
  local ctx
  ctx=$(mktemp -d)
  trap 'rm -rf "$ctx"' RETURN
  cp "$binary" "$ctx/tributary"
  strip --strip-debug "$ctx/tributary" 2>/dev/null || true
  docker_build "$here/tributary.Dockerfile" "tributary:$tag" "$ctx" --build-arg BASE=tributary-base:$suite
}

build_etcd() {
  build_base
  local etcd_bin
  etcd_bin=$(command -v etcd || echo /usr/bin/etcd)
  [ -x "$etcd_bin" ] || { echo "build.sh: etcd is not installed here (apt-get install etcd-server)" >&2; exit 1; }
  local ctx
  ctx=$(mktemp -d)
  trap 'rm -rf "$ctx"' RETURN
  cp "$etcd_bin" "$ctx/etcd"
  docker_build "$here/etcd.Dockerfile" "tributary-etcd:$tag" "$ctx" --build-arg BASE=tributary-base:$suite
}

build_s3() {
  build_python_base
  local ctx
  ctx=$(mktemp -d)
  trap 'rm -rf "$ctx"' RETURN
  docker_build "$here/s3.Dockerfile" "tributary-s3:$tag" "$ctx" --build-arg BASE=tributary-python:$suite
}

case "$what" in
  base) build_base ;;
  tributary) build_tributary ;;
  etcd) build_etcd ;;
  s3) build_s3 ;;
  all) build_tributary; build_etcd; build_s3 ;;
esac
docker images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep '^tributary' || true
