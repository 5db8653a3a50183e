#!/usr/bin/env bash
# Creates the test-time Python venv build/pyenv (python3 -m venv) and installs requirements.txt into it
# (moto's S3 server for the SigV4 tests). Idempotent: reinstalls only when requirements.txt changed.
# Usage: scripts/install-python-clients.sh [venv dir]   (default build/pyenv)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-build/pyenv}
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends python3-venv
fi
stamp="$venv/.requirements.txt"
if [ -x "$venv/bin/moto_server" ] && cmp -s requirements.txt "$stamp"; then
  echo "install-python-clients: $venv up to date"
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check -r requirements.txt
cp requirements.txt "$stamp"
echo "install-python-clients: $("$venv/bin/python" -c 'import moto; print("moto", moto.__version__)') in $venv"
