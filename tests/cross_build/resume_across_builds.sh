#!/usr/bin/env bash
# A checkpoint written by one libtorch build resumes in another (Debian's 1.13/2.6 <-> a pip 2.x wheel):
# build A trains to step 4 of 8 and stops (as on SIGTERM), build B resumes it and finishes; then the
# other way round. Usage: tests/cross_build/resume_across_builds.sh BUILD_DIR_A BUILD_DIR_B
set -euo pipefail
a=$(cd "$1" && pwd)/dreamlora
b=$(cd "$2" && pwd)/dreamlora
work=$(mktemp -d /tmp/dreamlora-cross.XXXXXX)
trap 'rm -rf "$work"' EXIT

"$a" make-tiny-model "$work/model" >/dev/null
"$a" make-demo-data "$work/images" --count 3 --size 40 >/dev/null
args=(train --threads 2 --model "$work/model" --image-path "$work/images" --prompt "a photo of sks toy"
  --resolution 32 --num-steps 8 --checkpointing-steps 2 --lr 1e-3 --log-every 1000)

one_way() {  # writer, reader, name
  local out="$work/$3"
  set +e
  DREAMLORA_TEST_STOP_AT_STEP=4 "$1" "${args[@]}" --output-dir "$out" >"$work/$3.first.log" 2>&1
  local first=$?
  set -e
  [ "$first" -eq 75 ] || { cat "$work/$3.first.log"; echo "cross-build: $3: first run exited $first, expected 75" >&2; return 1; }
  "$2" "${args[@]}" --output-dir "$out" >"$work/$3.resume.log" 2>&1 ||
    { cat "$work/$3.resume.log"; echo "cross-build: $3: the resumed run failed" >&2; return 1; }
  grep -q "resumed from .*checkpoint-4 at step 4 of 8" "$work/$3.resume.log" ||
    { cat "$work/$3.resume.log"; echo "cross-build: $3: did not resume from checkpoint-4" >&2; return 1; }
  "$2" inspect "$out/pytorch_lora_weights.safetensors" >/dev/null
  echo "cross-build: $3: checkpoint-4 written by $1 resumed by $2 and finished"
}
one_way "$a" "$b" a-to-b
one_way "$b" "$a" b-to-a
echo "cross-build: both directions resumed and finished"
