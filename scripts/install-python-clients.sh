#!/usr/bin/env bash
# Creates the test-time Python venvs (python3 -m venv) and installs their pinned requirements:
#   build/pyenv          requirements.txt          moto's S3 server for the SigV4 tests
#   build/pyenv-interop  requirements-interop.txt  today's diffusers, transformers, peft, accelerate,
#                                                  safetensors, TensorBoard + the local CPU torch wheel
#                                                  (tests/interop, ctest label interop)
# Idempotent: a venv is (re)installed only when its requirements file changed since the last install.
# Usage: scripts/install-python-clients.sh [moto venv dir [interop venv dir]]
#        DREAMLORA_SKIP_INTEROP=1 skips the interop venv (about 1.3 GB).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-build/pyenv}
interop_venv=${2:-build/pyenv-interop}
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends python3-venv
fi

# install_venv DIR REQUIREMENTS CHECK-COMMAND: the stamp (a copy of the requirements file) is written last,
# so an interrupted install is redone.
install_venv() {
  local dir=$1 requirements=$2 stamp="$1/.$(basename "$2")"
  if [ -x "$dir/bin/python" ] && cmp -s "$requirements" "$stamp"; then
    echo "install-python-clients: $dir up to date"
    return 0
  fi
  rm -f "$stamp"
  python3 -m venv "$dir"
  "$dir/bin/pip" install -q --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$stamp"
  echo "install-python-clients: $("$dir/bin/python" -c "$3") in $dir"
}

install_venv "$venv" requirements.txt 'import moto; print("moto", moto.__version__)'
if [ "${DREAMLORA_SKIP_INTEROP:-0}" != 1 ]; then
  install_venv "$interop_venv" requirements-interop.txt \
    'import torch, diffusers, transformers, peft, accelerate, safetensors, tensorboard as tb
print(" ".join(f"{m.__name__} {m.__version__}" for m in (torch, diffusers, transformers, peft, accelerate, safetensors, tb)))'
fi
