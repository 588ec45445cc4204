#!/usr/bin/env bash
# A CUDA 12.9 toolkit for clang, from NVIDIA's redistributables on PyPI:
#
#   tools/cuda12/setup_toolkit.sh [ROOT]        (default: build/cuda12)
#
# then build with it:
#
#   CUDACXX=clang++-16 CUDAToolkit_ROOT=ROOT SEGFAST_CUDA=ON pip wheel ...
#
# The wheels (pinned with their sha256 in requirements.txt) carry cudart
# (static and shared), the headers, ptxas and libdevice, but no nvcc, cicc or
# fatbinary. clang (Debian: apt-get install clang-16) compiles the .cu files
# to PTX and calls ptxas and fatbinary; ROOT/bin/fatbinary is the wrapper
# beside this script, which packs the images with CUDA 13's fatbinary
# (SEGFAST_FATBINARY, default /usr/local/cuda/bin/fatbinary) and assembles the
# SASS of GPUs newer than clang knows. ROOT/bin/nvcc only answers --version,
# for CMake's toolkit detection.
#
# Kernels built this way link cudart 12.9 statically and run on drivers for
# CUDA 12.0 or newer (525.60.13+), as torch's cu12x wheels do.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(realpath -m "${1:-$(dirname "$(dirname "$here")")/build/cuda12}")"
fatbinary="${SEGFAST_FATBINARY:-/usr/local/cuda/bin/fatbinary}"
[ -x "$fatbinary" ] || { echo "setup_toolkit.sh: no fatbinary at $fatbinary (CUDA 12.4+ or 13's; set SEGFAST_FATBINARY)" >&2; exit 1; }
dl="$root/.wheels"
mkdir -p "$dl"
python3 -m pip download -q --no-deps --require-hashes -r "$here/requirements.txt" -d "$dl"
rm -rf "$root/bin" "$root/include" "$root/lib64" "$root/nvvm" "$root/.x"
mkdir -p "$root/bin" "$root/include" "$root/lib64" "$root/nvvm" "$root/.x"
for w in "$dl"/*.whl; do python3 -m zipfile -e "$w" "$root/.x"; done
x="$root/.x/nvidia"
cp -a "$x/cuda_runtime/include/." "$x/cuda_nvcc/include/." "$x/cuda_cccl/include/." "$x/curand/include/." "$root/include/"
cp -a "$x/cuda_runtime/lib/." "$root/lib64/"
ln -sf libcudart.so.12 "$root/lib64/libcudart.so"
cp -a "$x/cuda_nvcc/nvvm/libdevice" "$root/nvvm/"
cp -a "$x/cuda_nvcc/bin/ptxas" "$root/bin/"
chmod +x "$root/bin/ptxas"
rm -rf "$root/.x"
install -m 755 "$here/fatbinary" "$root/bin/fatbinary"
sed -i "s|/usr/local/cuda/bin/fatbinary|$fatbinary|" "$root/bin/fatbinary"
cat > "$root/bin/nvcc" <<'STUB'
#!/bin/sh
# Not a compiler: CMake asks the toolkit's nvcc for its version when clang
# compiles CUDA (tools/cuda12/setup_toolkit.sh).
if [ "$1" = "--version" ]; then
  echo "nvcc: NVIDIA (R) Cuda compiler driver"
  echo "Cuda compilation tools, release 12.9, V12.9.86"
  exit 0
fi
echo "nvcc: this CUDA 12 toolkit has no nvcc; compile with clang (CUDACXX=clang++-16)" >&2
exit 1
STUB
chmod 755 "$root/bin/nvcc"
echo "CUDA 12.9 toolkit for clang in $root ($("$root/bin/ptxas" --version | tail -1))"
echo "build with: CUDACXX=clang++-16 CUDAToolkit_ROOT=$root"
