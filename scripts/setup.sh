#!/usr/bin/env bash
# Installs everything dphyper needs on a fresh Debian machine:
#   apt: the runtime packages of packages.txt (the same file a Hugging Face Space installs:
#        dataset-fashion-mnist, the public data), plus chromium for the browser tests only
#   pip: requirements.txt (exact pins) into the virtual environment given as $1.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv}"
mapfile -t need < <(bash scripts/missing_packages.sh packages.txt)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need[@]}" >/dev/null
fi
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q -r requirements.txt
