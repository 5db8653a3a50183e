#!/usr/bin/env bash
# Installs every build and test dependency of dreamlora on Debian 12 (bookworm) or 13 (trixie).
# Idempotent; run as root (or with sudo) on a fresh machine.
#
#   scripts/install-deps.sh [FLAVOUR...]      FLAVOUR: debian (default) | torch2-cpu | torch2-cuda
#
#   debian       Debian's libtorch-dev (PyTorch 1.13 on Debian 12, 2.6 on Debian 13; CPU)
#   torch2-cpu   libtorch from the pip CPU wheel (torch==$TORCH_CPU_VERSION) in build-torch2-cpu/venv
#   torch2-cuda  libtorch from the pip CUDA wheel (torch==$TORCH_CUDA_VERSION) in build-torch2-cuda/venv;
#                building needs the CUDA toolkit (nvcc) as well
#
# Then configure with scripts/configure.sh FLAVOUR (it picks the same folders).
set -euo pipefail
cd "$(dirname "$0")/.."

# The two pip builds of libtorch the project is tested against (one place for the pins).
TORCH_CPU_VERSION=2.13.0
TORCH_CUDA_VERSION=2.14.1

flavours=("$@")
[ ${#flavours[@]} -gt 0 ] || flavours=(debian)

PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config git
  libopenblas0-pthread    # fast BLAS behind Debian libtorch's matmul (~40x over reference BLAS)
  libgloo-dev             # headers needed by libtorch's distributed (c10d) Gloo process group
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
  iproute2                # `ip netns`: the two-host data-parallel test (tests/integration/distributed_netns_test.cpp)
  libgtest-dev libgmock-dev libbenchmark-dev
  clang libclang-rt-dev   # libFuzzer + ASan/UBSan runtimes for the fuzz targets (scripts/fuzz.sh)
)
for f in "${flavours[@]}"; do
  case "$f" in
    debian) PACKAGES+=(libtorch-dev) ;;                      # PyTorch's C++ API, CPU
    torch2-cpu | torch2-cuda) PACKAGES+=(python3 python3-venv python3-pip) ;;
    *) echo "install-deps: unknown flavour '$f' (expected debian, torch2-cpu or torch2-cuda)" >&2; exit 2 ;;
  esac
done

if [ -r /etc/debian_version ]; then
  echo "install-deps: Debian $(cat /etc/debian_version); flavours: ${flavours[*]}"
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# A venv per pip flavour, under its build folder; the binary never needs Python, only this libtorch.
install_torch_venv() {  # folder, torch version, check
  local venv=$1 version=$2
  if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import torch; assert torch.__version__.split('+')[0] == '$version'" 2>/dev/null; then
    echo "install-deps: torch $version present in $venv"
    return
  fi
  echo "install-deps: torch==$version into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "torch==$version"
}
for f in "${flavours[@]}"; do
  case "$f" in
    torch2-cpu) install_torch_venv build-torch2-cpu/venv "$TORCH_CPU_VERSION" ;;
    torch2-cuda)
      install_torch_venv build-torch2-cuda/venv "$TORCH_CUDA_VERSION"
      command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ] ||
        echo "install-deps: warning: no nvcc found; the torch2-cuda build needs the CUDA toolkit" >&2
      ;;
  esac
done
echo "install-deps: done"
