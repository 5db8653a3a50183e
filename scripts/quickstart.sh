#!/usr/bin/env bash
# The embedded default, end to end: install dependencies, build, write the subject's images from the
# procedural world, train a DreamBooth LoRA on the tiny pretrained world model with prior preservation
# and checkpoints, interrupt it with SIGTERM, resume it from the newest checkpoint, then evaluate the
# model before and after training (subject fidelity, prompt fidelity, language drift) and show the grid.
#
# WORLD_MODEL: the diffusers folder to train on (default assets/tiny-world-sd, the pipeline `dreamlora
# pretrain` made on the world). WORLD_MODEL=random makes an untrained tiny model instead: it runs every
# step, but its images are noise. STEPS, EVAL_SAMPLES, EVAL_STEPS and DEMO_DIR change the sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build --target dreamlora_cli -j"$(nproc)"

bin=build/dreamlora
demo=${DEMO_DIR:-demo}
model=${WORLD_MODEL:-assets/tiny-world-sd}
steps=${STEPS:-1200}
eval_samples=${EVAL_SAMPLES:-16}
eval_steps=${EVAL_STEPS:-20}
every=$((steps / 4))
rm -rf "$demo"
mkdir -p "$demo"
if [ "$model" = random ]; then
  echo "== WORLD_MODEL=random: an untrained tiny model (the pipeline runs; its images are noise)"
  model="$demo/tiny-sd"
  $bin make-tiny-model "$model"
elif [ ! -f "$model/model_index.json" ]; then
  echo "error: no diffusers model at $model (expected $model/model_index.json)." >&2
  echo "Make it with \`dreamlora pretrain\`, or run with WORLD_MODEL=random to check the pipeline." >&2
  exit 1
fi
$bin make-world-data "$demo/subject" --subject --count 6 --size 64

train=($bin train --model "$model" --image-path "$demo/subject" --prompt "a photo of sks toy"
  --identifier sks --prior-preservation --class-prompt "a photo of a toy" --class-image-path "$demo/class"
  --num-class-images 12 --rank 8 --snr-gamma 5 --train-text-encoder
  --lora-targets to_q,to_k,to_v,to_out.0,ff.net.0.proj,ff.net.2 --resolution 64 --num-steps "$steps" --checkpointing-steps "$every"
  --checkpoints-total-limit 3 --lr 1e-3 --validation-prompt "a photo of sks toy" --num-validation-images 1
  --validation-inference-steps 20 --output-dir "$demo/output")

echo "== training (will be interrupted with SIGTERM once checkpoint-$((2 * every)) exists)"
"${train[@]}" &
pid=$!
while kill -0 $pid 2>/dev/null && [ ! -d "$demo/output/checkpoint-$((2 * every))" ]; do sleep 0.2; done
kill -TERM $pid 2>/dev/null || true
set +e
wait $pid
status=$?
set -e
echo "== first run exited with status $status (75 = stopped early with a checkpoint)"

echo "== resuming from the newest valid checkpoint"
"${train[@]}" --resume-from-checkpoint latest

echo "== evaluating: the model without and with the LoRA, $eval_samples samples per prompt"
$bin evaluate --model "$model" --output-dir "$demo/output" --num-samples "$eval_samples" --steps "$eval_steps"

$bin inspect "$demo/output"
cat <<MSG

Done. Where things are:
  LoRA (diffusers):   $demo/output/pytorch_lora_weights.safetensors
  LoRA (kohya/A1111): $demo/output/pytorch_lora_weights_kohya.safetensors
  checkpoints:        $demo/output/checkpoint-*/
  evaluation:         $demo/output/evaluation/grid.png (rows: before / after training), scores.json
  validation images:  $demo/output/validation/
  loss curve:         $demo/output/loss.svg
  metrics:            $demo/output/metrics.jsonl
  model card:         $demo/output/README.md (with the evaluation)
MSG
