#!/usr/bin/env bash
# Builds the safetensors parser fuzzer with clang (libFuzzer + ASan + UBSan) and runs it briefly.
# Usage: scripts/fuzz-safetensors.sh [seconds]   (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
cmake -S . -B build-fuzz -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DDREAMLORA_BUILD_FUZZ=ON -DDREAMLORA_BUILD_TESTS=OFF -DDREAMLORA_BUILD_BENCH=OFF >/dev/null
cmake --build build-fuzz --target safetensors_fuzz
corpus=build-fuzz/corpus
mkdir -p "$corpus"
# Seed the corpus with real files when the fixtures are present.
for f in ../shared/fixtures/tiny-sd/lora/*.safetensors; do [ -f "$f" ] && cp -f "$f" "$corpus/" || true; done
build-fuzz/fuzz/safetensors_fuzz "$corpus" -max_total_time="$secs" -max_len=65536 -rss_limit_mb=4096
