#!/usr/bin/env bash
# Installs what the dashboard's browser tests (tests/dashboard_browser.rs) need: Debian's
# chromium (headless; one apt install per machine, skipped when present) and Playwright for
# Python in its own cached virtual environment (the Python package only: the browser it drives
# is /usr/bin/chromium, so `playwright install` and its browser download are never run).
# Idempotent. Called by scripts/setup-test-deps.sh.
set -euo pipefail
if ! [ -x /usr/bin/chromium ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi
cache="${XDG_CACHE_HOME:-$HOME/.cache}/tributary"
mkdir -p "$cache"
py="$cache/browser-venv/bin/python"
if ! "$py" -c 'import playwright.sync_api' >/dev/null 2>&1; then
  python3 -m venv "$cache/browser-venv"
  "$cache/browser-venv/bin/pip" install --quiet --disable-pip-version-check 'playwright>=1.45,<2'
fi
"$py" -c 'import playwright.sync_api' || { echo "playwright could not be installed" >&2; exit 1; }
printf '%s\n' "$py" > "$cache/browser_python_path"
echo "browser test dependencies ready: $(/usr/bin/chromium --version 2>/dev/null), playwright at $py"
