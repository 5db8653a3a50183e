#!/usr/bin/env bash
# Configures a build folder for one libtorch flavour (see scripts/install-deps.sh):
#   scripts/configure.sh [debian|torch2-cpu|torch2-cuda] [extra CMake arguments...]
# debian → build/, torch2-cpu → build-torch2-cpu/, torch2-cuda → build-torch2-cuda/. Prints the folder.
set -euo pipefail
cd "$(dirname "$0")/.."
flavour=${1:-debian}
shift || true
case "$flavour" in
  debian) dir=build; args=(-DDREAMLORA_TORCH=debian) ;;
  torch2-cpu | torch2-cuda)
    dir=build-$flavour
    args=(-DDREAMLORA_TORCH=python -DDREAMLORA_PYTHON="$PWD/$dir/venv/bin/python")
    ;;
  *) echo "configure: unknown flavour '$flavour' (expected debian, torch2-cpu or torch2-cuda)" >&2; exit 2 ;;
esac
cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release "${args[@]}" "$@" >"$dir.configure.log" 2>&1 ||
  { cat "$dir.configure.log" >&2; exit 1; }
grep "dreamlora: libtorch" "$dir.configure.log" >&2 || true
echo "$dir"
