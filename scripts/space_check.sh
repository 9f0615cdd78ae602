#!/usr/bin/env bash
# Space build check: does the app start the way a Hugging Face Space starts it, from only what
# a Space installs? Anyone can run it: `bash scripts/space_check.sh` (a few minutes; the pip
# install is most of it). The test suite runs it too (tests/test_project.py).
#   1. the apt packages of packages.txt are installed (a Space installs exactly those; this
#      script never runs scripts/setup.sh)
#   2. a fresh virtual environment with only `pip install -r requirements.txt`
#      (SPACE_VENV=DIR re-uses a venv this script made before, to check again quickly)
#   3. a clean copy of the committed tree (a Space clones the repository: nothing untracked or
#      ignored, no .venv, no caches)
#   4. the README front matter's app_file started as a Space starts it: `python APP_FILE` in the
#      copy, GRADIO_SERVER_NAME=0.0.0.0, GRADIO_SERVER_PORT, SYSTEM=spaces
#   5. an API call as a visitor's page makes it: load an example set, run the hypernetwork at
#      eps = 1, and check that samples and a report come back
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
work="$(mktemp -d)"
server=""
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null || true
  rm -rf "$work"  # the copy, the log and (unless SPACE_VENV put it elsewhere) the venv
}
trap cleanup EXIT

step() { echo "space-check: $*"; }

mapfile -t missing < <(bash scripts/missing_packages.sh packages.txt)
if [ ${#missing[@]} -gt 0 ]; then
  echo "space-check: FAIL: apt packages of packages.txt not installed: ${missing[*]}" >&2
  exit 1
fi
step "packages.txt installed: $(grep -v '^#' packages.txt | tr '\n' ' ')"

venv="${SPACE_VENV:-$work/venv}"
if [ -x "$venv/bin/python" ] && [ -f "$venv/.space-check" ]; then
  if ! (cd "$root" && sha256sum -c --status "$venv/.space-check"); then
    step "requirements.txt changed: reinstalling into $venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r requirements.txt
    sha256sum requirements.txt > "$venv/.space-check"
  fi
  step "re-using the venv this script made at $venv"
elif [ -e "$venv" ]; then
  echo "space-check: FAIL: $venv exists but was not made by this script (not a fresh Space-like venv)" >&2
  exit 1
else
  step "fresh venv $venv: pip install -r requirements.txt (only)"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r requirements.txt
  sha256sum requirements.txt > "$venv/.space-check"
fi

mkdir -p "$work/repo"
if git -C "$root" rev-parse --verify -q HEAD >/dev/null 2>&1; then
  git -C "$root" archive HEAD | tar -x -C "$work/repo"
else  # not a git checkout: the tree without environments and caches
  tar -C "$root" --exclude=./.venv --exclude=./.git --exclude='*/__pycache__' -c . | tar -x -C "$work/repo"
fi
app_file="$(awk '/^---$/{n++; next} n==1 && /^app_file:/{print $2; exit}' "$work/repo/README.md")"
[ -n "$app_file" ] || { echo "space-check: FAIL: no app_file in the README front matter" >&2; exit 1; }
port="$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
step "starting python $app_file on port $port (committed tree, fresh venv)"
(cd "$work/repo" && env -u PYTHONPATH -u DPHYPER_DEVICE GRADIO_SERVER_NAME=0.0.0.0 GRADIO_SERVER_PORT="$port" \
  SYSTEM=spaces GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 \
  "$venv/bin/python" "$app_file" > "$work/server.log" 2>&1) &
server=$!

"$venv/bin/python" - "$port" "$server" "$work/server.log" <<'PY'
import os, sys, time, urllib.request

port, pid, log = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
url = f"http://127.0.0.1:{port}/"
t0 = time.time()
while True:
    try:
        urllib.request.urlopen(url, timeout=5)
        break
    except Exception:
        try:
            os.kill(pid, 0)
        except OSError:
            sys.exit("space-check: FAIL: the app exited before serving:\n" + open(log).read()[-4000:])
        if time.time() - t0 > 600:
            sys.exit("space-check: FAIL: the app did not serve within 600 s:\n" + open(log).read()[-4000:])
        time.sleep(2)
print(f"space-check: serving after {time.time() - t0:.0f} s")
from gradio_client import Client

c = Client(url, verbose=False)
c.predict("bags", api_name="/load_example")
t = time.time()
out = c.predict(0.0, False, 1e-5, 4, None, api_name="/run_hypernet")  # log10 eps = 0: eps = 1
gallery, caption, downloads, report = out[:4]
assert len(gallery) == 4, f"expected 4 samples, got {len(gallery)}"
assert report["method"] == "hypernet" and report["epsilon"] == 1.0, report
assert sorted(os.path.basename(f) for f in downloads) == ["grid.png", "lora.safetensors", "report.json"], downloads
print(f"space-check: OK: 4 samples and a report from /run_hypernet in {time.time() - t:.1f} s")
PY
