#!/usr/bin/env bash
# cibuildwheel before-all on the manylinux_2_28 image (AlmaLinux 8): the CUDA
# compiler and static runtime of toolkit VERSION (default 12.9) from NVIDIA's
# RHEL 8 repository, under /usr/local/cuda-VERSION. Only nvcc and cudart are
# needed: the kernels use no other CUDA library.
set -euxo pipefail
ver="${1:-12.9}"
dnf install -y dnf-plugins-core
dnf config-manager --add-repo https://developer.download.nvidia.com/compute/cuda/repos/rhel8/x86_64/cuda-rhel8.repo
dnf install -y "cuda-nvcc-${ver/./-}" "cuda-cudart-devel-${ver/./-}" "cuda-cuobjdump-${ver/./-}"
/usr/local/cuda-"$ver"/bin/nvcc --version
