#!/usr/bin/env bash
# Installs dependencies, builds dreamlora against every libtorch it supports and runs the whole test
# suite on each build (the CI matrix):
#   debian       Debian's libtorch-dev (1.13 on Debian 12, 2.6 on Debian 13)   build/
#   torch2-cpu   the pip CPU wheel's libtorch                                   build-torch2-cpu/
#   torch2-cuda  the pip CUDA wheel's libtorch (tests run on the CPU here)      build-torch2-cuda/
# then resumes a checkpoint written by one build with another.
# DREAMLORA_FLAVOURS="debian torch2-cpu" picks a subset.
set -euo pipefail
cd "$(dirname "$0")/.."
read -r -a flavours <<<"${DREAMLORA_FLAVOURS:-debian torch2-cpu torch2-cuda}"
jobs=$(nproc)
export CCACHE_MAXSIZE=${CCACHE_MAXSIZE:-15G}  # three libtorch flavours, each with a large precompiled header

bash scripts/install-deps.sh "${flavours[@]}"
bash scripts/install-s3rver.sh   # S3-compatible server for the checkpoint-mirror tests
bash scripts/install-python-clients.sh   # moto (build/pyenv); diffusers, peft, TensorBoard (build/pyenv-interop)

timed() {  # runs a command, prints its duration, returns its status
  local t0=$SECONDS rc=0
  "$@" || rc=$?
  echo "test.sh: '$*' took $((SECONDS - t0)) s (status $rc)"
  return $rc
}
status=0
# Every C++ file formatted with the pinned clang-format (requirements.txt); scripts/format.sh fixes them.
timed bash scripts/format.sh --check || status=1
for f in "${flavours[@]}"; do
  echo "=== $f"
  extra=()
  [ "$f" = debian ] || extra=(-DDREAMLORA_BUILD_BENCH=OFF)   # benches are measured on the Debian build
  dir=$(bash scripts/configure.sh "$f" "${extra[@]}")
  timed cmake --build "$dir" -j"$jobs"
  if [ "$f" = torch2-cuda ]; then
    echo "test.sh: $dir/dreamlora links against:"
    ldd "$dir/dreamlora" | grep -E "libtorch_cuda|libc10_cuda|libcudart|libnccl" || {
      echo "test.sh: the torch2-cuda binary does not link the CUDA libraries" >&2; status=1; }
  fi
  timed ctest --test-dir "$dir" --output-on-failure -j"$jobs" --timeout 900 || status=1
  if [ "$f" = debian ]; then
    # Full-size presets (SD 1.5, SD 2.1 from make-model): gigabytes on disk and in memory, so one at a time.
    DREAMLORA_FULL_SIZE=1 timed ctest --test-dir "$dir" --output-on-failure -j1 -R '^FullSizePreset\.' || status=1
  fi
done

# A checkpoint moves between builds (libtorch 1.13 <-> 2.x): resume each build's checkpoint with the other.
if [[ " ${flavours[*]} " == *" debian "* && " ${flavours[*]} " == *" torch2-cpu "* ]]; then
  timed bash tests/cross_build/resume_across_builds.sh build build-torch2-cpu || status=1
fi
# Each libFuzzer target briefly on its committed seed corpus (docs/FUZZING.md); a crash fails the run.
timed bash scripts/fuzz.sh 10 2000 || status=1
exit $status
