#!/usr/bin/env bash
# The GPU run of issue #22 in one command: build dreamlora against the machine's CUDA libtorch with the
# carried dependencies, check the fixtures on CUDA (fp32 and bf16), resume after SIGTERM and SIGKILL, data
# parallel through NCCL, and benchmark against diffusers' DreamBooth LoRA scripts. Writes $OUT/gpu-check.json
# (and gpu-check-logs.tar.gz) and prints a table. Steps and their limits: bench/gpu/gpu_check.py, docs/GPU.md.
#
#   scripts/make-gpu-carry.sh            # here, once: fills .gpu-carry/ (ignored; carry it to the machine)
#   scripts/gpu-check.sh                 # on the GPU machine (python3 holds the CUDA torch)
#   scripts/gpu-check.sh --dry-run       # here: the same build options against a CUDA wheel, checks on the CPU
#
# Options after --dry-run go to gpu_check.py (e.g. --steps build,correctness --budget-s 300).
# Environment: PYTHON (default python3; dry run: /tmp/venvs/t2141/bin/python), BENCH_PYTHON, OUT.
set -euo pipefail
cd "$(dirname "$0")/.."

dry_run=0
if [ "${1:-}" = "--dry-run" ]; then
  dry_run=1
  shift
fi

if [ ! -f .gpu-carry/MANIFEST.txt ]; then
  echo "gpu-check: .gpu-carry/ is missing: run scripts/make-gpu-carry.sh here and carry .gpu-carry" >&2
  exit 2
fi

if [ "$dry_run" = 1 ]; then
  python=${PYTHON:-/tmp/venvs/t2141/bin/python}
  # The diffusers side on the CPU needs a torch with transformers/accelerate/peft beside it (docs/GPU.md).
  bench_python=${BENCH_PYTHON:-/tmp/gpu-dry-venv/bin/python}
  out=${OUT:-$(pwd)/build-gpu/out}
  steps=env,build,correctness,resume_sigterm,resume_sigkill,nccl,bench
  [ -x "$bench_python" ] || steps=env,build,correctness,resume_sigterm,resume_sigkill,nccl
  exec timeout 3600 python3 bench/gpu/gpu_check.py --dry-run --python "$python" --bench-python "$bench_python" \
    --out "$out" --jobs 2 --budget-s 3000 --build-timeout-s 2400 --resume-steps 8 --timeout-scale 4 --warmup 1 --measured 2 \
    --steps "$steps" "$@"
fi

python=${PYTHON:-python3}
out=${OUT:-$(pwd)/build-gpu/out}
# 460 s for the steps themselves (the issue's limit is 8 minutes); the outer timeout is a last resort.
exec timeout 480 "$python" bench/gpu/gpu_check.py --python "$python" --bench-python "${BENCH_PYTHON:-$python}" \
  --out "$out" --budget-s 460 "$@"
