#!/usr/bin/env bash
# Install a built segfast wheel with a given torch into a fresh virtual
# environment and run the smoke test (tools/smoke_test.py) there.
#
#   tools/check_torch_floor.sh WHEEL [TORCH_VERSION ...]
#
# Default versions: the floor pyproject.toml declares (torch>=X) and 2.13.0.
# PyPI's Linux torch wheels are CUDA builds with nvidia-* dependencies (a few
# GB each); the environments live under ${SEGFAST_CHECK_VENVS:-/tmp/segfast-torch-check}.
# PYTHON picks the interpreter (default python3); SEGFAST_CHECK_REUSE=1 keeps an
# environment that already has that torch and reinstalls only segfast.
# SEGFAST_CHECK_TESTS (pytest arguments, test paths relative to the repository) also
# runs that selection of the checkout's tests against the installed wheel, with
# pytest, hypothesis and parameterized added to the environment, e.g. the parity
# selection of docs/release-check.md (without a GPU, TRITON_INTERPRET=0 leaves the
# triton backend out: Triton 3.0's interpreter, torch 2.4's Triton, takes the
# kernels' `tl.constexpr` string annotations for runtime arguments):
#   TRITON_INTERPRET=0 SEGFAST_CHECK_TESTS="-k 'not triton' tests/test_bindings.py tests/test_region.py"
# Prints one block per version and exits non-zero if any version fails.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
wheel="${1:?usage: $0 WHEEL [TORCH_VERSION ...]}"
wheel="$(cd "$(dirname "$wheel")" && pwd)/$(basename "$wheel")"
shift
py="${PYTHON:-python3}"
floor="$(sed -n 's/.*"torch>=\([0-9.]*\)".*/\1/p' "$repo/pyproject.toml" | head -1)"
if [ $# -eq 0 ]; then
  # the floor's latest patch release, then the newest torch checked
  case "$floor" in
    2.4) set -- 2.4.1 2.13.0 ;;
    *) set -- "$floor" 2.13.0 ;;
  esac
fi
root="${SEGFAST_CHECK_VENVS:-/tmp/segfast-torch-check}"
mkdir -p "$root"
status=0
for tv in "$@"; do
  tv_failed=0
  env="$root/torch-$tv-$("$py" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')"
  echo "=== torch $tv: $(basename "$wheel") ($(date -u +%Y-%m-%dT%H:%MZ), $("$py" -V))"
  if [ "${SEGFAST_CHECK_REUSE:-0}" = 1 ] && "$env/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$tv')" 2>/dev/null; then
    echo "(reusing $env: torch $tv is installed there; only segfast is reinstalled)"
    : >"$env.pip.log"
  else
    rm -rf "$env"
    "$py" -m venv "$env"
    "$env/bin/pip" install -q --disable-pip-version-check "torch==$tv" numpy >"$env.pip.log" 2>&1 || tv_failed=1
  fi
  if [ "${tv_failed:-0}" = 1 ] ||
     ! "$env/bin/pip" install -q --disable-pip-version-check --no-deps --force-reinstall "$wheel" >>"$env.pip.log" 2>&1; then
    echo "FAIL pip install (torch==$tv); last lines of $env.pip.log:"
    grep -v "^WARNING: Location" "$env.pip.log" | tail -5
    status=1
    continue
  fi
  # from an empty directory: the installed package, never the checkout
  (cd "$env" && "$env/bin/python" "$here/smoke_test.py") || status=1
  if [ -n "${SEGFAST_CHECK_TESTS:-}" ]; then
    echo "--- pytest $SEGFAST_CHECK_TESTS"
    if ! "$env/bin/pip" install -q --disable-pip-version-check pytest hypothesis parameterized \
         >>"$env.pip.log" 2>&1; then
      echo "FAIL pip install pytest (torch==$tv); see $env.pip.log"
      status=1
      continue
    fi
    # the repository's pytest settings (markers, the default tier) and conftest; run
    # from the environment's folder, so that `import segfast` finds the wheel
    (cd "$env" && eval "set -- $SEGFAST_CHECK_TESTS" &&
     "$env/bin/python" -m pytest -c "$repo/pyproject.toml" --rootdir "$repo" -p no:cacheprovider -q -rfE \
       "${@/#tests\//$repo/tests/}") || status=1
  fi
done
exit $status
