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
    for name in ("has_cuda", "cuda_archs", "openmp_max_threads"):
        assert hasattr(_C, name), name
    for name in ("region_stats", "region_grad", "pixel_loss", "box_iou_max", "dense_crf"):
        assert hasattr(_C.cpu, name), name
    if _C.has_cuda():
        for name in ("region_stats", "region_grad", "pixel_loss", "box_iou_max", "crf_update"):
            assert hasattr(_C.cuda, name), name


def test_has_cuda_is_bool():
    from segfast import _C

    assert isinstance(_C.has_cuda(), bool)
    archs = _C.cuda_archs()
    assert isinstance(archs, list) and all(isinstance(a, str) for a in archs)
    assert bool(archs) == _C.has_cuda()
    assert isinstance(_C.openmp_max_threads(), int) and _C.openmp_max_threads() >= 1


def test_no_cuda_entry_points_without_cuda():
    from segfast import _C, backends

    if _C.has_cuda():
        pytest.skip("CUDA kernels compiled in")
    assert not hasattr(_C, "cuda")  # the cuda backend is unavailable, with a reason, before any launch
    assert "without CUDA" in backends.unavailable_reason("cuda", __import__("torch").device("cuda"))


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


def test_cuda_versions_are_exposed():
    from segfast import _C

    rt, drv = _C.cuda_runtime_version(), _C.cuda_driver_version()
    assert isinstance(rt, int) and isinstance(drv, int)
    assert (rt > 0) == _C.has_cuda()  # 1000 * major + 10 * minor of the static cudart
    assert drv >= 0 and (drv == 0 or _C.has_cuda())
    assert isinstance(_C.manylinux_build(), bool)


def _check_wheel():
    pytest.importorskip("elftools", reason="pyelftools reads the module's ELF dynamic section")
    spec = importlib.util.spec_from_file_location("check_wheel", REPO / "tools" / "check_wheel.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _module_requirements():
    cw = _check_wheel()
    path = importlib.util.find_spec("segfast._C").origin
    return cw, *cw.elf_requirements(path)


def test_module_needs_no_cuda_driver_or_shared_cudart():
    # `import segfast` must work without a GPU driver: cudart is static and
    # loads libcuda itself at the first CUDA call.
    cw, needed, _ = _module_requirements()
    assert not [n for n in needed if n.startswith(("libcuda.so", "libcudart.so"))], needed


def test_openmp_runtime_is_torchs():
    """The modules name no OpenMP runtime: they use the one torch loaded, so a
    process has one thread pool and the wheel stays within manylinux."""
    cw, needed, versions = _module_requirements()
    assert not [n for n in needed if "omp" in n], needed
    assert not [lib for lib in versions if "omp" in lib], versions
    from segfast import _C

    assert _C.openmp_max_threads() >= 1


def test_manylinux_build_symbol_versions():
    from segfast import _C

    if not _C.manylinux_build():
        pytest.skip("a development build (SEGFAST_MANYLINUX=OFF) may need the build machine's glibc/libstdc++")
    cw, needed, versions = _module_requirements()
    assert cw.too_new(versions) == [], f"needs symbol versions newer than manylinux_2_28: {cw.too_new(versions)}"
    assert cw.forbidden_needed(needed) == [], needed


def test_symbol_version_ceiling_logic():
    cw = _check_wheel()
    assert cw.too_new({"libc.so.6": ["GLIBC_2.2.5", "GLIBC_2.28"], "libstdc++.so.6": ["GLIBCXX_3.4.22"]}) == []
    assert cw.too_new({"libm.so.6": ["GLIBC_2.29"]}) == ["GLIBC_2.29 (libm.so.6)"]
    assert cw.too_new({"libstdc++.so.6": ["GLIBCXX_3.4.29", "CXXABI_1.3.13"]}) == [
        "GLIBCXX_3.4.29 (libstdc++.so.6)", "CXXABI_1.3.13 (libstdc++.so.6)"]
    assert cw.forbidden_needed(["libgomp.so.1", "libc.so.6", "libcudart.so.12", "libstdc++.so.6"]) == [
        "libgomp.so.1", "libcudart.so.12", "libstdc++.so.6"]


# ---- the CUDA 12 route of a machine without nvcc 12: clang + PyPI redistributables

_CUDA12 = REPO / "tools" / "cuda12"


def _run_fatbinary_wrapper(tmp_path, args, extra_sass=""):
    """Run tools/cuda12/fatbinary with a stand-in fatbinary and ptxas that log their arguments."""
    import os
    import shutil
    import subprocess
    import sys

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shutil.copy(_CUDA12 / "fatbinary", bin_dir / "fatbinary")
    log = tmp_path / "log"
    for tool in ("ptxas", "real_fatbinary"):
        p = bin_dir / tool
        body = f"open({str(log)!r}, 'a').write({tool!r} + ' ' + ' '.join(sys.argv[1:]) + '\\n')"
        p.write_text(f"#!{sys.executable}\nimport sys\n{body}\n")
        p.chmod(0o755)
    env = dict(os.environ, SEGFAST_FATBINARY=str(bin_dir / "real_fatbinary"), SEGFAST_EXTRA_SASS=extra_sass)
    r = subprocess.run([sys.executable, str(bin_dir / "fatbinary"), *args], env=env, capture_output=True, text=True)
    return r, (log.read_text().splitlines() if log.exists() else [])


def test_cuda12_fatbinary_wrapper_translates_clangs_images(tmp_path):
    args = ["-64", "--create", "out.fatbin", "--image=profile=sm_75,file=a.cubin",
            "--image=profile=sm_90,file=b.cubin", "--image=profile=compute_90,file=b.s"]
    r, log = _run_fatbinary_wrapper(tmp_path, args, extra_sass="100,120")
    assert r.returncode == 0, r.stderr
    ptxas = [line for line in log if line.startswith("ptxas")]
    assert [line.split()[2] for line in ptxas] == ["-arch=sm_100", "-arch=sm_120"]
    assert all(" b.s " in line for line in ptxas)  # from the newest PTX
    (fat,) = [line.split()[1:] for line in log if line.startswith("real_fatbinary")]
    assert fat[:4] == ["--compress=false", "-64", "--create", "out.fatbin"]
    images = fat[4:]
    assert images[:3] == ["--image3=kind=elf,sm=75,file=a.cubin", "--image3=kind=elf,sm=90,file=b.cubin",
                          "--image3=kind=ptx,sm=90,file=b.s"]
    assert [i.split(",")[1] for i in images[3:]] == ["sm=100", "sm=120"]
    assert not any(a.startswith("--image=") for a in fat)


def test_cuda12_fatbinary_wrapper_needs_ptx_for_extra_sass(tmp_path):
    r, _ = _run_fatbinary_wrapper(tmp_path, ["--create", "o", "--image=profile=sm_80,file=a.cubin"], extra_sass="100")
    assert r.returncode != 0 and "PTX image" in (r.stderr + r.stdout)


def test_cuda12_requirements_are_pinned_with_hashes():
    lines = [line for line in (_CUDA12 / "requirements.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert {line.split("==")[0] for line in lines} >= {"nvidia-cuda-nvcc-cu12", "nvidia-cuda-runtime-cu12"}
    for line in lines:
        assert "==12." in line or "==10." in line, line
        assert "--hash=sha256:" in line, line


# ---- the torch floor: op signatures that torch 2.4's schema inference reads

def _op_functions():
    """(file, tree, function) for every function that custom_op / triton_op
    registers: as a decorator, or passed to the call (``custom_op(name, fn, ...)``)."""
    import ast

    def is_op(call):
        f = call.func if isinstance(call, ast.Call) else None
        return (getattr(f, "attr", None) or getattr(f, "id", None)) in ("custom_op", "triton_op")

    for path in sorted((REPO / "segfast").rglob("*.py")):
        tree = ast.parse(path.read_text())
        defs = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
        passed = {c.args[1].id for c in ast.walk(tree)
                  if is_op(c) and len(c.args) > 1 and isinstance(c.args[1], ast.Name)}
        for node in defs:
            if node.name in passed or any(is_op(d) for d in node.decorator_list):
                yield path, tree, node


def test_op_signatures_fit_the_torch_floor():
    """torch 2.4's infer_schema takes defaults of int, float, bool and None only,
    rejects the builtin generics (``list[float]``: torch < 2.7) and cannot read
    string annotations (``from __future__ import annotations``)."""
    import ast

    found, bad = 0, []
    for path, tree, fn in _op_functions():
        found += 1
        where = f"{path.relative_to(REPO)}:{fn.lineno} {fn.name}"
        if any(isinstance(n, ast.ImportFrom) and n.module == "__future__"
               and any(a.name == "annotations" for a in n.names) for n in tree.body):
            bad.append(f"{where}: the module imports annotations from __future__")
        args = fn.args.args + fn.args.kwonlyargs
        defaults = list(fn.args.defaults) + [d for d in fn.args.kw_defaults if d is not None]
        for d in defaults:
            v = d.operand if isinstance(d, ast.UnaryOp) else d
            if not (isinstance(v, ast.Constant) and (v.value is None or type(v.value) in (int, float, bool))):
                bad.append(f"{where}: default {ast.unparse(d)}")
        for a in args:
            for n in ast.walk(a.annotation) if a.annotation is not None else ():
                if isinstance(n, ast.Subscript) and isinstance(n.value, ast.Name) and n.value.id in ("list", "tuple"):
                    bad.append(f"{where}: {a.arg}: {ast.unparse(a.annotation)} (use typing.List / Tuple)")
    assert found > 25, found
    assert bad == [], "\n".join(bad)
