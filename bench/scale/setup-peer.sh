#!/usr/bin/env bash
# The diffusers side of bench/scale/scale_table.py, set up on this machine (not a project dependency):
#  - Python: build/pyenv-interop (scripts/install-python-clients.sh: today's diffusers, transformers, peft,
#    accelerate and the local CPU torch wheel, pinned in requirements-interop.txt);
#  - diffusers' DreamBooth LoRA scripts, which are not in the wheel: train_dreambooth_lora.py and
#    train_dreambooth_lora_sdxl.py from a diffusers git repository (DIFFUSERS_GIT, a --git-dir or a clone) at
#    DIFFUSERS_TAG (default v0.40.0, the tag the GPU check uses), written to build/bench-peer/examples/.
# Usage: DIFFUSERS_GIT=/path/to/diffusers.git bench/scale/setup-peer.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
tag=${DIFFUSERS_TAG:-v0.40.0}
: "${DIFFUSERS_GIT:?set DIFFUSERS_GIT to a diffusers git repository (git --git-dir or a clone)}"
bash scripts/install-python-clients.sh
out=build/bench-peer/examples
mkdir -p "$out"
for script in train_dreambooth_lora.py train_dreambooth_lora_sdxl.py; do
  git --git-dir="$DIFFUSERS_GIT" show "$tag:examples/dreambooth/$script" > "$out/$script.tmp" 2>/dev/null ||
    git -C "$DIFFUSERS_GIT" show "$tag:examples/dreambooth/$script" > "$out/$script.tmp"
  mv "$out/$script.tmp" "$out/$script"
done
echo "$tag" > "$out/VERSION"
build/pyenv-interop/bin/python -c 'import torch, diffusers, transformers, peft, accelerate
print("bench peer: torch", torch.__version__, "diffusers", diffusers.__version__, "transformers",
      transformers.__version__, "peft", peft.__version__, "accelerate", accelerate.__version__)'
echo "bench peer: examples from diffusers $tag in $out"
