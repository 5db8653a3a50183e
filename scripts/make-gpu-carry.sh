#!/usr/bin/env bash
# Prepares .gpu-carry/, the ignored folder that travels with the working tree to the GPU machine (issue #22):
# everything scripts/gpu-check.sh needs there and that machine lacks (it cannot download anything).
#   root/                 Debian 12 -dev packages (headers, static and shared libs, pkg-config files) and the
#                         runtime libraries they link, unpacked with dpkg -x; used only where the machine lacks them
#   fixtures/             the parity fixtures the CUDA checks read (no intermediates, no single-file checkpoints)
#   wheels/               diffusers (pinned) and the pure-Python packages it needs that the machine's image lacks
#   diffusers-examples/   train_dreambooth_lora.py and train_dreambooth_lora_sdxl.py at the wheel's tag
#   MANIFEST.txt          what is inside and its size
# Usage: scripts/make-gpu-carry.sh [diffusers git dir]   (default: the search tool's mirror of huggingface/diffusers)
# Needs: apt-get (Debian 12 package lists), pip, git, ../shared/fixtures. Network: Debian mirror and PyPI only.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
carry=$repo/.gpu-carry
diffusers_version=0.40.0
diffusers_git=${1:-/work/.mirror/huggingface+diffusers/repo}
fixtures=${DREAMLORA_FIXTURES:-$repo/../shared/fixtures}

grep -qx '/.gpu-carry/' .gitignore || { echo "make-gpu-carry: .gitignore must list /.gpu-carry/" >&2; exit 1; }
[ -f "$fixtures/tiny-sd/model_index.json" ] || { echo "make-gpu-carry: no fixtures at $fixtures" >&2; exit 1; }
rm -rf "$carry"
mkdir -p "$carry"/{debs,root,fixtures,wheels,diffusers-examples}

# Build dependencies of CMakeLists.txt. libwebp-dev is left out: WebP input is optional (pkg_check_modules
# without REQUIRED), so the GPU build reads PNG/JPEG/BMP only. bench (google-benchmark) is not built there.
dev_packages="nlohmann-json3-dev libcli11-dev libstb-dev libxxhash-dev libexif-dev zlib1g-dev
  libcurl4-openssl-dev libtinyxml2-dev libutf8proc-dev libtomlplusplus-dev libgtest-dev libgmock-dev
  libgloo-dev pkgconf-bin"
# Run-time closure of the shared libraries above (apt-cache depends, without libc6/libstdc++6/libgcc-s1). The
# check links them as a fallback only: a library the machine already has is taken from the machine.
runtime_packages="libbrotli1 libcom-err2 libcurl4 libexif12 libffi8 libgmp10 libgnutls30
  libgssapi-krb5-2 libhogweed6 libidn2-0 libk5crypto3 libkeyutils1 libkrb5-3 libkrb5support0 libldap-2.5-0
  libnettle8 libnghttp2-14 libp11-kit0 libpkgconf3 libpsl5 librtmp1 libsasl2-2 libssh2-1
  libssl3 libstb0 libtasn1-6 libtinyxml2-9 libtomlplusplus3 libunistring2 libutf8proc2 libxxhash0 libzstd1 zlib1g"
(cd "$carry/debs" && apt-get download $dev_packages $runtime_packages 2>&1 | grep -v '^Get:\|unsandboxed' || true)
for deb in "$carry"/debs/*.deb; do dpkg -x "$deb" "$carry/root"; done
ls "$carry"/debs > "$carry/root/PACKAGES.txt"
rm -rf "$carry/debs"
# What the build does not need: documentation, sources, and static libraries other than GoogleTest's (the
# build links the shared ones).
rm -rf "$carry"/root/usr/share/{doc,man,info,lintian,locale,bug} "$carry"/root/usr/src
find "$carry/root" -name '*.a' ! -name 'libgtest*' ! -name 'libgmock*' -delete
# Absolute symlinks (e.g. libfoo.so -> /lib/x86_64-linux-gnu/libfoo.so.1) would point outside the carry there.
find "$carry/root" -type l | while read -r link; do
  target=$(readlink "$link")
  case "$target" in
    /*) ln -sfn "$carry/root$target" "$link.tmp-abs" 2>/dev/null && \
        ln -sfn "$(realpath --relative-to="$(dirname "$link")" "$carry/root$target")" "$link"; rm -f "$link.tmp-abs" ;;
  esac
done
find "$carry/root" -xtype l -delete  # links into packages not carried (libgloo.so: torch has its own gloo)

# Fixtures: the files the CUDA parity tests (tests/gpu) and the resume/NCCL runs read: all of tiny-sd's
# pipeline, and tiny-sdxl's UNet only (its SDXL-only paths: text_time conditioning, linear projections).
(cd "$fixtures" && find tiny-sd -type f ! -name intermediates.safetensors ! -name single-file.safetensors \
   ! -name 'pytorch_lora_weights*' ! -name reference.json -print0 | xargs -0 cp --parents -t "$carry/fixtures")
(cd "$fixtures" && cp --parents -t "$carry/fixtures" tiny-sdxl/model_index.json tiny-sdxl/reference.safetensors \
   tiny-sdxl/unet/config.json tiny-sdxl/unet/diffusion_pytorch_model.safetensors)

# diffusers for the side-by-side benchmark. The machine's image has torch, transformers, accelerate, peft,
# safetensors, huggingface_hub, httpx, regex, requests, Pillow, numpy, filelock (docs/GPU.md); it lacks
# diffusers and importlib_metadata.
pip_platform=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
python3 -m pip download -q --no-deps "${pip_platform[@]}" -d "$carry/wheels" \
  "diffusers==$diffusers_version" "importlib_metadata==8.7.0"
unzip -p "$carry"/wheels/diffusers-*.whl '*/METADATA' | grep '^Requires-Dist' | grep -v extra > "$carry/wheels/diffusers-requires.txt"

# The training scripts come from the repository's examples/, at the wheel's tag.
for script in train_dreambooth_lora.py train_dreambooth_lora_sdxl.py; do
  git --git-dir="$diffusers_git" show "v$diffusers_version:examples/dreambooth/$script" > "$carry/diffusers-examples/$script"
done
echo "$diffusers_version" > "$carry/diffusers-examples/VERSION"

{
  echo "dreamlora GPU carry, made $(date -u +%FT%TZ) on $(uname -m) $(. /etc/os-release && echo "$PRETTY_NAME")"
  echo "diffusers $diffusers_version (examples from git tag v$diffusers_version)"
  du -sh "$carry"/* | sed 's/^/  /'
  echo "total $(du -sh "$carry" | cut -f1)"
} > "$carry/MANIFEST.txt"
cat "$carry/MANIFEST.txt"
tree_mb=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
carry_b=$(du -sb "$carry" | cut -f1)
echo "tracked tree $((tree_mb / 1048576)) MiB + carry $((carry_b / 1048576)) MiB (limit 64 MiB together)"
[ $((tree_mb + carry_b)) -lt $((60 * 1048576)) ] || { echo "make-gpu-carry: over 60 MiB" >&2; exit 1; }
