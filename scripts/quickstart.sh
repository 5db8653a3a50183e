#!/usr/bin/env bash
# The embedded default, end to end: install dependencies, build, make a tiny model and a synthetic subject
# data set, train a DreamBooth LoRA with prior preservation and checkpoints, interrupt it with SIGTERM,
# resume it from the newest checkpoint, then sample with the trained LoRA.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build --target dreamlora_cli -j"$(nproc)"

bin=build/dreamlora
demo=${DEMO_DIR:-demo}
rm -rf "$demo"
mkdir -p "$demo"
$bin make-tiny-model "$demo/tiny-sd"
$bin make-demo-data "$demo/subject" --count 6 --size 64

train=($bin train --model "$demo/tiny-sd" --image-path "$demo/subject" --prompt "a photo of sks toy"
  --identifier sks --prior-preservation --class-prompt "a photo of a toy" --class-image-path "$demo/class"
  --num-class-images 2 --resolution 64 --num-steps 24 --checkpointing-steps 4 --checkpoints-total-limit 3
  --lr 1e-3 --validation-prompt "a photo of sks toy" --num-validation-images 1 --validation-inference-steps 10
  --output-dir "$demo/output")

echo "== training (will be interrupted with SIGTERM once checkpoint-8 exists)"
"${train[@]}" &
pid=$!
while kill -0 $pid 2>/dev/null && [ ! -d "$demo/output/checkpoint-8" ]; do sleep 0.2; done
kill -TERM $pid 2>/dev/null || true
set +e
wait $pid
status=$?
set -e
echo "== first run exited with status $status (75 = stopped early with a checkpoint)"

echo "== resuming from the newest valid checkpoint"
"${train[@]}" --resume-from-checkpoint latest

echo "== sampling with the trained LoRA"
$bin sample --model "$demo/tiny-sd" --lora "$demo/output/pytorch_lora_weights.safetensors" \
  --prompt "a photo of sks toy" --steps 10 --num-images 2 --out "$demo/samples"

$bin inspect "$demo/output"
cat <<MSG

Done. Where things are:
  LoRA (diffusers):   $demo/output/pytorch_lora_weights.safetensors
  LoRA (kohya/A1111): $demo/output/pytorch_lora_weights_kohya.safetensors
  checkpoints:        $demo/output/checkpoint-*/
  validation images:  $demo/output/validation/
  loss curve:         $demo/output/loss.svg
  metrics:            $demo/output/metrics.jsonl
  model card:         $demo/output/README.md
  samples:            $demo/samples/
MSG
