#!/usr/bin/env bash
# Unpack NVIDIA's CUDA 13.0 compiler toolchain (nvcc, cicc/NVVM, ptxas, CUDA runtime headers, CCCL)
# from its Python wheels into a folder, for `make check-cuda`. No GPU, driver or root needed.
#
# The wheels are pinned to 13.0.x to match driver 580 (the -cu12 wheels carry no nvcc).
# Idempotent: a second run with the toolkit present does nothing.
# Usage: kernels/cuda/fetch-toolkit.sh DEST   (prints DEST/nvidia/cu13, the CUDA_HOME to use)
set -euo pipefail

dest="${1:?usage: fetch-toolkit.sh DEST}"
python="${PYTHON:-python3}"
home="$dest/nvidia/cu13"
die() { echo "fetch-toolkit.sh: error: $*" >&2; exit 1; }

wheels=(
  "nvidia-cuda-nvcc==13.0.88"
  "nvidia-nvvm==13.0.88"
  "nvidia-cuda-crt==13.0.88"
  "nvidia-cuda-runtime==13.0.96"
  "nvidia-cuda-cccl==13.0.85"
)
stamp="$dest/.complete"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "${wheels[*]}" ] && [ -x "$home/bin/nvcc" ]; then
  echo "$home"
  exit 0
fi
command -v "$python" >/dev/null 2>&1 || die "$python not found; install Python 3 with pip"
command -v unzip >/dev/null 2>&1 || die "unzip not found"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "fetch-toolkit.sh: downloading ${wheels[*]}" >&2
if ! "$python" -m pip download --quiet --no-deps --disable-pip-version-check \
    --only-binary=:all: --platform manylinux2014_x86_64 -d "$tmp" "${wheels[@]}" >"$tmp/pip.log" 2>&1; then
  die "pip could not download the CUDA wheels: $(grep -m1 -i error "$tmp/pip.log" || tail -n1 "$tmp/pip.log")"
fi
rm -rf "$dest"
mkdir -p "$dest"
for w in "$tmp"/*.whl; do
  unzip -q -o "$w" -d "$dest"
done
[ -x "$home/bin/nvcc" ] || die "no nvcc at $home/bin/nvcc after unpacking"
echo "${wheels[*]}" >"$stamp"
echo "$home"
