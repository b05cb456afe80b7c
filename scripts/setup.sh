#!/usr/bin/env bash
# Install what mediabind needs on a fresh Debian/Ubuntu machine: ffmpeg and a
# Python venv with the pinned stack. Safe to rerun: it skips what is in place.
#
#   scripts/setup.sh          runtime only (what the demo needs)
#   scripts/setup.sh dev      plus test dependencies and the reference model code
#
# MEDIABIND_VENV picks the venv folder (default .venv in the repo).
set -euo pipefail
cd "$(dirname "$0")/.."
extra=${1:-}
venv=${MEDIABIND_VENV:-.venv}

if ! command -v ffmpeg >/dev/null || ! command -v ffprobe >/dev/null; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo
  echo "setup: installing ffmpeg (apt)" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq ffmpeg >/dev/null
fi

# The browser tests (tests/test_web_browser.py) drive Debian's chromium through its
# chromedriver; nothing is downloaded at test time.
if [ "$extra" = dev ] && { ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; }; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo
  echo "setup: installing chromium and chromium-driver (apt, for the browser tests)" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver >/dev/null
fi

python=${PYTHON:-python3}
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "setup: Python >= 3.11 is required (found $("$python" --version))" >&2; exit 1; }

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
stamp="$venv/.mediabind-installed"
pins="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
want="$pins-${extra:-runtime}"
# A dev install holds everything the runtime needs, so it satisfies both.
if ! grep -qx -e "$want" -e "$pins-dev" "$stamp" 2>/dev/null; then
  echo "setup: installing Python packages into $venv (first time: a few minutes)" >&2
  log="$venv/setup.log"
  pip_quiet() { "$venv/bin/pip" install -q "$@" >>"$log" 2>&1 || { cat "$log" >&2; exit 1; }; }
  : > "$log"
  pip_quiet --upgrade pip
  if [ "$extra" = dev ]; then
    pip_quiet -e ".[dev]"
    # The reference ImageBind model code, test-only, for parity tests. --no-deps:
    # its declared deps include pytorchvideo, which is broken on current torchvision.
    pip_quiet --no-deps imagebind-unofficial==0.1.1
  else
    pip_quiet -e .
  fi
  echo "$want" >> "$stamp"
fi
