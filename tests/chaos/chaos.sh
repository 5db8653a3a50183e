#!/usr/bin/env bash
# Chaos test for bit-exact resume: a tiny training run is killed with SIGKILL at random moments
# (including during checkpoint writes) and restarted each time with --resume-from-checkpoint latest;
# its final LoRA must be byte-identical to an uninterrupted run with the same settings.
# Usage: tests/chaos/chaos.sh [kills=20] [steps=100] [build dir=build]
set -euo pipefail
kills=${1:-20}
steps=${2:-100}
build=${3:-build}
bin=$(cd "$build" && pwd)/dreamlora
work=$(mktemp -d /tmp/dreamlora-chaos.XXXXXX)
trap 'rm -rf "$work"' EXIT

"$bin" make-tiny-model "$work/model" >/dev/null
"$bin" make-demo-data "$work/images" --count 4 --size 40 >/dev/null
args=(--threads 2 train --model "$work/model" --image-path "$work/images" --prompt "a photo of sks toy"
  --resolution 32 --num-steps "$steps" --checkpointing-steps 3 --checkpoints-total-limit 2 --lr 1e-3
  --random-flip --log-every 1000)

echo "chaos: reference run ($steps steps)"
start=$(date +%s.%N)
"$bin" "${args[@]}" --output-dir "$work/reference" >"$work/reference.log" 2>&1
end=$(date +%s.%N)
run_s=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }')
echo "chaos: reference took ${run_s}s"

out="$work/chaos"
kill_count=0
attempt=0
while :; do
  attempt=$((attempt + 1))
  "$bin" "${args[@]}" --output-dir "$out" >>"$work/chaos.log" 2>&1 &
  pid=$!
  if [ "$kill_count" -lt "$kills" ]; then
    # a random moment within the expected remaining run time (at least 0.3 s: model load)
    delay=$(awk -v r="$RANDOM" -v t="$run_s" -v k="$kills" 'BEGIN { srand(r); printf "%.2f", 0.3 + rand() * t / k * 1.5 }')
    sleep "$delay"
    if kill -0 "$pid" 2>/dev/null; then
      kill -KILL "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
      kill_count=$((kill_count + 1))
      newest=$( (ls -d "$out"/checkpoint-* 2>/dev/null || true) | sed 's/.*checkpoint-//' | sort -n | tail -1)
      echo "chaos: kill $kill_count after ${delay}s (newest checkpoint: ${newest:-none})"
      continue
    fi
  fi
  set +e
  wait "$pid"
  status=$?
  set -e
  [ "$status" -eq 0 ] && break
  echo "chaos: run exited with status $status"; tail -5 "$work/chaos.log"; exit 1
done

ref=$(sha256sum "$work/reference/pytorch_lora_weights.safetensors" | cut -d' ' -f1)
got=$(sha256sum "$out/pytorch_lora_weights.safetensors" | cut -d' ' -f1)
echo "chaos: $kill_count SIGKILLs over $attempt starts"
echo "chaos: reference sha256 $ref"
echo "chaos: resumed   sha256 $got"
if [ "$ref" = "$got" ]; then echo "chaos: PASS (byte-identical)"; else echo "chaos: FAIL"; exit 1; fi
