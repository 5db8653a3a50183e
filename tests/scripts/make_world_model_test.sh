#!/usr/bin/env bash
# scripts/make-world-model.sh's control flow, with a stand-in for the dreamlora binary that records its
# calls and makes the folders the real one makes: a fresh run runs every phase in order and writes the
# model's README with the evaluation; a rerun after an interruption in a later UNet phase resumes that
# phase (it skips the VAE phases and the UNet phases a checkpoint is already past: the real pretrain refuses
# to resume a checkpoint with another --num-steps) and still writes the pipeline.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cat >"$tmp/fake-dreamlora" <<'FAKE'
#!/usr/bin/env bash
echo "$*" >>"$CALLS"
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --output-dir) out=${args[i + 1]} ;;
    --num-steps) steps=${args[i + 1]} ;;
    --out) eval_out=${args[i + 1]} ;;
  esac
done
case " $* " in
  *" make-world-data "*) mkdir -p "${args[1]}" ;;
  *" make-tiny-model "*) mkdir -p "${!#}" ;;
  *" pretrain "*)
    if [[ "${STOP_AT:-}" == "$steps" && $out == */unet ]]; then  # interrupted: a checkpoint short of the end
      mkdir -p "$out/checkpoint-$((steps - 100))"
      exit 75
    fi
    mkdir -p "$out/checkpoint-$steps" "$out/pipeline"
    touch "$out/reconstructions.png"
    echo "[pretrain] step $steps/$steps loss 0.01" ;;
  *" evaluate "*)
    mkdir -p "$eval_out"
    echo "world_heldout       81.2% 52/64" ;;
esac
FAKE
chmod +x "$tmp/fake-dreamlora"

fail() {
  echo "FAIL: $*" >&2
  echo "calls:" >&2
  cat "$CALLS" >&2
  exit 1
}
phases() { grep -o 'stage [a-z]* .*--num-steps [0-9]*' "$CALLS" | sed 's/ --model.*--num-steps//' | tr '\n' ';'; }
run_script() {
  : >"$CALLS"
  DREAMLORA="$tmp/fake-dreamlora" WORK="$tmp/work" DEST="$tmp/model" UNET_FIRST_STEPS=300 UNET_STEPS=500 \
    UNET_FINAL_STEPS=700 "$@" bash "$repo/scripts/make-world-model.sh" >"$tmp/out.log" 2>&1
}
export CALLS="$tmp/calls"

# A fresh run, stopped during the second UNet phase.
if STOP_AT=500 run_script; then fail "the interrupted run should fail"; fi
[[ $(phases) == "stage vae 400;stage vae 1600;stage unet 300;stage unet 500;" ]] || fail "fresh run: $(phases)"

# The rerun: the last VAE phase (writes its pipeline), then the UNet from the phase it stopped in.
run_script || fail "the rerun failed: $(cat "$tmp/out.log")"
[[ $(phases) == "stage vae 1600;stage unet 500;stage unet 700;" ]] || fail "rerun: $(phases)"
grep -q -- "--num-steps 1600 .*--allow-schedule-change" "$CALLS" || fail "the VAE's last phase did not resume"
grep -q -- "--num-steps 500 .*--allow-schedule-change" "$CALLS" || fail "UNet phase 500 not resumed"
grep -q "evaluate --model $tmp/model --world-prompts --num-samples 64" "$CALLS" || fail "no evaluation"
grep -q "^world_heldout .*52/64" "$tmp/model/README.md" || fail "README lacks the evaluation"
grep -q "^## DreamBooth on it" "$tmp/model/README.md" || fail "README lacks the notes"
echo "make-world-model.sh: phases and rerun as expected"
