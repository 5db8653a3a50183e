#!/usr/bin/env bash
# Builds every libFuzzer target with clang (ASan + UBSan) into build-fuzz and runs each, one at a time,
# on its seed corpus (fuzz/corpus/<target>/, copied to build-fuzz/corpus/<target>/ which grows).
# Usage: scripts/fuzz.sh [seconds per target] [runs per target] [targets...]
#   scripts/fuzz.sh 300 1000000            a campaign: stops each at 10^6 executions or 5 minutes
#   scripts/fuzz.sh 10 2000                what CI runs (a quick smoke run of every target)
# A crash leaves crash-<sha1> in build-fuzz/findings/<target>/ and makes the script exit non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
runs=${2:--1}
shift $(( $# > 2 ? 2 : $# ))
all=(safetensors_fuzz image_fuzz manifest_fuzz trainer_state_fuzz toml_config_fuzz tokenizer_fuzz
     scheduler_config_fuzz model_config_fuzz)
targets=("${@:-${all[@]}}")
[ ${#targets[@]} -eq 0 ] && targets=("${all[@]}")
cxx=${CXX_FUZZ:-$(command -v clang++ || true)}
if [ -z "$cxx" ]; then
  echo "fuzz.sh: clang++ not found (Debian: apt-get install clang libclang-rt-14-dev)" >&2
  exit 1
fi
cmake -S . -B build-fuzz -G Ninja -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DDREAMLORA_BUILD_FUZZ=ON -DDREAMLORA_BUILD_TESTS=OFF -DDREAMLORA_BUILD_BENCH=OFF >/dev/null
cmake --build build-fuzz -j"$(nproc)" --target "${targets[@]}"
status=0
for t in "${targets[@]}"; do
  corpus=build-fuzz/corpus/$t findings=build-fuzz/findings/$t
  mkdir -p "$corpus" "$findings"
  [ -d "fuzz/corpus/$t" ] && cp -n fuzz/corpus/"$t"/* "$corpus"/ 2>/dev/null || true
  dict=()
  [ -f "fuzz/dict/$t.dict" ] && dict=(-dict="fuzz/dict/$t.dict")
  echo "== $t"
  if ! build-fuzz/fuzz/"$t" "$corpus" "${dict[@]}" -max_total_time="$secs" -runs="$runs" -max_len=65536 \
      -rss_limit_mb=4096 -timeout=10 -artifact_prefix="$findings/" -print_final_stats=1 2>&1 |
      tee "build-fuzz/$t.log" | grep -E "^(stat::number_of_executed_units|stat::average_exec_per_sec|==[0-9]+==ERROR|SUMMARY)|Done [0-9]+ runs"; then
    :
  fi
  if [ -n "$(find "$findings" -type f \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \))" ]; then
    echo "fuzz.sh: $t: findings in $findings" >&2
    status=1
  fi
done
exit $status
