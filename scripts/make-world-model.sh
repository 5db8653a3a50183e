#!/usr/bin/env bash
# Rebuilds assets/tiny-world-sd, the tiny pretrained pipeline of the shapes world, from the seed:
# world data -> a random world-preset pipeline -> pretrain the VAE -> pretrain the whole UNet with the text
# encoder (fp16 output) -> assets/tiny-world-sd + its README.md (the exact commands, figures, machine, and how
# well the result follows held-out prompts, measured by `evaluate --world-prompts`).
# Each stage resumes from its newest checkpoint when the script is run again after an interruption (in the
# phase it stopped in). The defaults rebuild the shipped weights bit for bit (measured: 72.6 min on 2 cores,
# see the model's README.md); the threads must be as recorded, float sums depend on their number.
#
# Settings (environment): SEED, COUNT (world images), VAE_STEPS, VAE_BATCH, VAE_LR, VAE_WARMUP, UNET_STEPS,
# UNET_BATCH, UNET_LR, UNET_WARMUP, VAE_THREADS, UNET_THREADS, EVAL_SAMPLES (samples per held-out prompt),
# WORK (scratch folder), DEST (where the pipeline goes), DREAMLORA (the binary).
#
# The shipped VAE was made in two phases, and the defaults replay them: VAE_FIRST_STEPS, then continued to
# VAE_STEPS (a resume with --allow-schedule-change, so its cosine schedule restarts from the new length; set
# VAE_FIRST_STEPS=VAE_STEPS for one phase). The UNet and text encoder are then trained on the final VAE,
# with Min-SNR weighting (UNET_SNR_GAMMA), in one phase of UNET_FIRST_STEPS by default (the shipped model);
# UNET_STEPS and UNET_FINAL_STEPS, when larger, resume it with a longer schedule. The README's last sections
# come from scripts/tiny-world-sd-notes.md (measured comparisons that the script does not rerun).
set -euo pipefail
cd "$(dirname "$0")/.."

SEED=${SEED:-0}
COUNT=${COUNT:-8000}
VAE_FIRST_STEPS=${VAE_FIRST_STEPS:-400}
VAE_STEPS=${VAE_STEPS:-1600}
VAE_BATCH=${VAE_BATCH:-16}
VAE_LR=${VAE_LR:-2e-3}
VAE_WARMUP=${VAE_WARMUP:-30}
UNET_FIRST_STEPS=${UNET_FIRST_STEPS:-5600}
UNET_STEPS=${UNET_STEPS:-5600}
UNET_FINAL_STEPS=${UNET_FINAL_STEPS:-5600}
UNET_SNR_GAMMA=${UNET_SNR_GAMMA:-5}
UNET_BATCH=${UNET_BATCH:-32}
UNET_LR=${UNET_LR:-1e-3}
UNET_WARMUP=${UNET_WARMUP:-100}
# As the recorded runs: float sums depend on the thread count.
VAE_THREADS=${VAE_THREADS:-1}
UNET_THREADS=${UNET_THREADS:-2}
EVAL_SAMPLES=${EVAL_SAMPLES:-64}
WORK=${WORK:-build/world-model}
DEST=${DEST:-assets/tiny-world-sd}
DREAMLORA=${DREAMLORA:-build/dreamlora}

if [[ ! -x "$DREAMLORA" ]]; then
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DDREAMLORA_BUILD_BENCH=OFF
  cmake --build build -j"$(nproc)" --target dreamlora_cli
fi

mkdir -p "$WORK"
COMMANDS=()
run() {
  COMMANDS+=("$*")
  echo "+ $*"
  "$@"
}
seconds() { date +%s; }

start=$(seconds)
if [[ ! -f "$WORK/data/.complete" ]]; then
  rm -rf "$WORK/data"
  run "$DREAMLORA" make-world-data "$WORK/data" --count "$COUNT" --seed "$SEED"
  touch "$WORK/data/.complete"
fi
rm -rf "$WORK/init"
run "$DREAMLORA" make-tiny-model --world --seed "$SEED" "$WORK/init"

pretrain_vae() {  # $1: steps; the rest: extra flags
  local steps=$1
  shift
  run "$DREAMLORA" --threads "$VAE_THREADS" pretrain --stage vae --model "$WORK/init" --data "$WORK/data" \
    --output-dir "$WORK/vae" --num-steps "$steps" --batch-size "$VAE_BATCH" --lr "$VAE_LR" \
    --warmup-steps "$VAE_WARMUP" --kl-weight 1e-4 --seed "$SEED" --checkpointing-steps 100 --log-every 25 "$@" |
    tee -a "$WORK/vae.log"
}
pretrain_unet() {  # $1: steps; the rest: extra flags
  local steps=$1
  shift
  run "$DREAMLORA" --threads "$UNET_THREADS" pretrain --stage unet --model "$WORK/vae/pipeline" --data "$WORK/data" \
    --output-dir "$WORK/unet" --num-steps "$steps" --batch-size "$UNET_BATCH" --lr "$UNET_LR" \
    --warmup-steps "$UNET_WARMUP" --caption-dropout 0.1 --seed "$SEED" --checkpointing-steps 100 --log-every 25 \
    --save-dtype fp16 --train-text-encoder --snr-gamma "$UNET_SNR_GAMMA" "$@" | tee -a "$WORK/unet.log"
}
newest_checkpoint() {  # $1: a stage's output folder; its newest checkpoint's step, 0 without one
  local newest=0 dir step
  for dir in "$1"/checkpoint-*; do
    step=${dir##*-}
    [[ -d $dir && $step =~ ^[0-9]+$ ]] && ((step > newest)) && newest=$step
  done
  echo "$newest"
}
# A stage's phases: the first, then each longer one resumed with its own schedule. A rerun after an
# interruption skips the phases a checkpoint is already past (pretrain refuses to resume a checkpoint with
# another --num-steps), and always runs the last one, which writes the pipeline.
run_phases() {  # $1: pretrain_vae or pretrain_unet, $2: its output folder, the rest: step counts, ascending
  local stage=$1 done_steps last=${!#} previous=0 steps
  done_steps=$(newest_checkpoint "$2")
  shift 2
  for steps in "$@"; do
    ((steps == previous)) && continue
    if ((steps == last || done_steps < steps)); then
      if ((previous == 0)); then "$stage" "$steps"; else "$stage" "$steps" --allow-schedule-change; fi
    fi
    previous=$steps
  done
}
rm -f "$WORK/vae.log" "$WORK/unet.log"
vae_start=$(seconds)
run_phases pretrain_vae "$WORK/vae" "$VAE_FIRST_STEPS" "$VAE_STEPS"
vae_end=$(seconds)
run_phases pretrain_unet "$WORK/unet" "$UNET_FIRST_STEPS" "$UNET_STEPS" "$UNET_FINAL_STEPS"
end=$(seconds)

rm -rf "$DEST"
mkdir -p "$(dirname "$DEST")"
cp -r "$WORK/unet/pipeline" "$DEST"
cp "$WORK/vae/reconstructions.png" "$DEST/vae-reconstructions.png"

eval_start=$(seconds)
rm -rf "$WORK/eval"
run "$DREAMLORA" --threads "$UNET_THREADS" evaluate --model "$DEST" --world-prompts --num-samples "$EVAL_SAMPLES" \
  --steps 20 --out "$WORK/eval" | tee "$WORK/eval.log"
eval_end=$(seconds)

last_loss() { grep -o 'loss [0-9.e+-]*' "$1" | tail -1 | cut -d' ' -f2; }
{
  echo "# tiny-world-sd"
  echo
  echo "A tiny Stable-Diffusion-style pipeline (diffusers layout, fp16 weights) pretrained from scratch on the"
  echo "procedural shapes world (\`dreamlora make-world-data\`): 64x64 images, a VAE with scale factor 4"
  echo "(16x16x4 latents), a UNet and the tiny CLIP text encoder trained in full."
  echo "Built by \`scripts/make-world-model.sh\`; rerun it to rebuild this folder from the seed."
  echo
  echo "## How it was made"
  echo
  echo "Commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(date -u +%Y-%m-%dT%H:%MZ)."
  echo "Settings: SEED=$SEED COUNT=$COUNT VAE_FIRST_STEPS=$VAE_FIRST_STEPS VAE_STEPS=$VAE_STEPS VAE_BATCH=$VAE_BATCH VAE_LR=$VAE_LR"
  echo "VAE_WARMUP=$VAE_WARMUP UNET_FIRST_STEPS=$UNET_FIRST_STEPS UNET_STEPS=$UNET_STEPS UNET_FINAL_STEPS=$UNET_FINAL_STEPS UNET_SNR_GAMMA=$UNET_SNR_GAMMA UNET_BATCH=$UNET_BATCH UNET_LR=$UNET_LR"
  echo "UNET_WARMUP=$UNET_WARMUP VAE_THREADS=$VAE_THREADS UNET_THREADS=$UNET_THREADS."
  echo
  echo '```'
  for c in "${COMMANDS[@]}"; do echo "$c"; done
  echo '```'
  echo
  echo "## Figures"
  echo
  echo "- VAE stage: $((vae_end - vae_start)) s, last logged loss $(last_loss "$WORK/vae.log") (MSE in [-1, 1] + KL)."
  echo "- UNet stage: $((end - vae_end)) s, last logged loss $(last_loss "$WORK/unet.log") (epsilon MSE)."
  echo "- Whole script: $((end - start)) s (a resumed run counts only its own part)."
  echo "- Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')."
  echo
  echo "\`vae-reconstructions.png\`: originals (top) and their reconstructions (bottom)."
  echo
  echo "## How well it follows prompts"
  echo
  echo "\`evaluate --world-prompts --num-samples $EVAL_SAMPLES --steps 20\` ($((eval_end - eval_start)) s): $EVAL_SAMPLES samples"
  echo "(fixed seeds) of each of 8 colour x shape x background combinations held out of the training captions;"
  echo "the world detector (docs/CLI.md, \`evaluate\`) checks the object's colour and shape, then the background."
  echo "The subject rows are the untrained DreamBooth baseline (no LoRA)."
  echo
  echo '```'
  grep -E '^(metric|subject_fidelity|prompt_fidelity|language_drift|world_heldout|\(a-b%\))' "$WORK/eval.log"
  echo '```'
  echo
  cat scripts/tiny-world-sd-notes.md
} > "$DEST/README.md"
du -sh "$DEST"
echo "wrote $DEST"
