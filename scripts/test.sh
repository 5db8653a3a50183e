#!/usr/bin/env bash
# Installs dependencies (Debian 12), builds dreamlora and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/install-s3rver.sh   # S3-compatible server for the checkpoint-mirror tests
bash scripts/install-python-clients.sh   # moto: an S3 server that verifies SigV4 signatures (build/pyenv)
jobs=$(nproc)
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$jobs"
ctest --test-dir build --output-on-failure -j"$jobs" --timeout 900
# Each libFuzzer target briefly on its committed seed corpus (docs/FUZZING.md); a crash fails the run.
bash scripts/fuzz.sh 10 2000
