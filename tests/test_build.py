"""Install layout of the compiled extension and the bundled Triton kernels."""

from __future__ import annotations

import importlib
import importlib.util
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _under(path: str | None, folder: pathlib.Path) -> bool:
    if path is None:
        return False
    try:
        pathlib.Path(path).resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def test_extension_importable():
    _C = importlib.import_module("segfast._C")
    for name in ("has_cuda", "cuda_archs", "openmp_max_threads", "region_stats_cpu",
                 "region_grad_cpu", "region_stats_cuda", "region_grad_cuda"):
        assert hasattr(_C, name), name


def test_has_cuda_is_bool():
    from segfast import _C

    assert isinstance(_C.has_cuda(), bool)
    archs = _C.cuda_archs()
    assert isinstance(archs, list) and all(isinstance(a, str) for a in archs)
    assert bool(archs) == _C.has_cuda()
    assert isinstance(_C.openmp_max_threads(), int) and _C.openmp_max_threads() >= 1


def test_cuda_entry_points_fail_cleanly_without_cuda():
    from segfast import _C

    if _C.has_cuda():
        pytest.skip("CUDA kernels compiled in")
    with pytest.raises(RuntimeError, match="without CUDA"):
        _C.region_stats_cuda(x_ptr=0, x_dtype=0, xsN=0, xsC=0, xsS=0, t_ptr=0, t_dtype=6, t_is_label=1, tsN=0,
                             tsC=0, tsS=0, N=1, C=1, S=1, P=1, act=2, xent=0, gamma=0.0, label_offset=0,
                             has_ignore=0, ignore_value=0.0, out_ptr=0, stream=0)


def test_triton_kernels_inside_package():
    tk = importlib.import_module("segfast.triton_kernels")
    assert tk.__name__ == "segfast.triton_kernels"
    f = getattr(tk, "__file__", None)
    spec = importlib.util.find_spec("segfast")
    pkg_dirs = [pathlib.Path(p) for p in (spec.submodule_search_locations or [])]
    # editable install: the repo's triton_kernels/; normal install: inside segfast/
    assert _under(f, REPO / "triton_kernels") or any(
        _under(f, d / "triton_kernels") for d in pkg_dirs), f


def test_no_top_level_triton_kernels_from_us():
    # `triton_kernels` is Triton's own library: the install must never provide a
    # top-level one. (Run from the repo root, the source folder itself is on
    # sys.path as '' -- that is not the install, so such entries are skipped.)
    import sys
    from importlib.machinery import PathFinder

    def is_repo(p):
        try:
            return pathlib.Path(p or ".").resolve() == REPO
        except OSError:
            return False

    paths = [p for p in sys.path if not is_repo(p)]
    specs = [PathFinder.find_spec("triton_kernels", paths)]
    for finder in sys.meta_path:  # e.g. the editable-install redirect finder
        if finder is PathFinder or not hasattr(finder, "find_spec"):
            continue
        try:
            specs.append(finder.find_spec("triton_kernels", None))
        except Exception:
            pass
    for spec in specs:
        if spec is None:
            continue
        for loc in [spec.origin, *(spec.submodule_search_locations or [])]:
            assert not _under(loc, REPO / "triton_kernels"), loc
            assert "segfast" not in pathlib.Path(loc or "").parts, loc
