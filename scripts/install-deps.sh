#!/usr/bin/env bash
# Installs every build and test dependency of dreamlora from Debian 12 packages.
# Idempotent; run as root (or with sudo) on a fresh machine.
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config git
  libtorch-dev            # PyTorch 1.13 C++ API (CPU)
  libopenblas0-pthread    # fast BLAS behind libtorch's matmul (~40x over reference BLAS)
  libgloo-dev             # needed by libtorch's distributed (c10d) headers
  nlohmann-json3-dev      # JSON: configs, safetensors headers, manifests
  libcli11-dev            # command-line parsing
  libstb-dev              # image read/write (PNG, JPEG, BMP)
  libwebp-dev             # WebP images
  libxxhash-dev           # XXH3 checksums in checkpoint manifests
  libexif-dev             # JPEG EXIF orientation of training images
  zlib1g-dev              # CRC32 for PNG text chunks (prompt, seed, sampler)
  libcurl4-openssl-dev    # S3 checkpoint mirror (SigV4) and cloud preemption notices
  libtinyxml2-dev         # S3 XML responses (ListObjectsV2, errors)
  libutf8proc-dev         # Unicode categories and NFC for the CLIP tokenizer
  libtomlplusplus-dev     # --config TOML files
  libgtest-dev libgmock-dev libbenchmark-dev
  clang libclang-rt-14-dev  # libFuzzer + ASan/UBSan runtimes for the fuzz targets (scripts/fuzz.sh)
)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all packages present"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
