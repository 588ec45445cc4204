"""The GPU dispatch path never reads a device value on the host.

Every public op runs, forward and backward, on fake CUDA tensors
(FakeTensorMode: shapes, dtypes and a "cuda" device, no values), with the
backend chosen as on a GPU machine (SEGFAST_BACKEND=triton, then cuda). The
validation and launcher-argument code of segfast is the real one:

* Triton launches go through ``triton_kernels.<family>.wrap``, replaced by a
  launcher that records the launch and runs nothing;
* the ``segfast._C.cuda`` entry points are replaced by recorders that run
  nothing (``_C`` reports CUDA kernels compiled);
* segfast's ``torch.library`` ops run their real implementation, not their
  fake one;
* ``torch.cuda`` queries answer for an H100 (132 SMs, stream 0).

Where torch is built without CUDA, c10's FakeGuardImpl is registered as the
CUDA device guard (a few lines of C++ compiled once), and the backward runs
node by node (``run_backward``), the autograd engine wanting a CUDA runtime.

A dispatch mode above the fake mode records every host read of a CUDA
value (``.item()``, ``float()``, ``int()``, ``bool()``, ``.tolist()``, a copy
to the CPU, an op whose output shape depends on the data such as
``nonzero`` or boolean indexing), with the segfast line that asked for it,
and lets the op go on with a placeholder value so that every read of one
call is listed. An op that must read a value by its nature is listed in
ALLOWED_READS with the reason and the most reads it may do.
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
import warnings

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

pytest.importorskip("triton")

import segfast  # noqa: E402
from segfast import backends  # noqa: E402
from segfast import functional as F  # noqa: E402

PKG_DIRS = tuple(os.path.dirname(m.__file__) + os.sep for m in (segfast,))

# Ops whose result has a data-dependent size: the kept boxes' count is read
# once (the kernels flag the kept boxes on the device, then the indices are
# gathered with one boolean index).
ALLOWED_READS = {
    "nms": (1, "returns a data-dependent number of boxes: reads the kept count once"),
    "batched_nms": (1, "returns a data-dependent number of boxes: reads the kept count once"),
}


# ---------------------------------------------------------------- the harness


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(segfast.__file__)))


def _segfast_frame() -> str:
    """'file:line: code' of the innermost segfast frame of the current stack."""
    for fs in reversed(traceback.extract_stack()):
        if fs.filename.startswith(PKG_DIRS) or (os.sep + "triton_kernels" + os.sep) in fs.filename:
            return f"{os.path.relpath(fs.filename, ROOT)}:{fs.lineno}: {fs.line}"
    return "(outside segfast)"


def _on_cuda(x) -> bool:
    return isinstance(x, torch.Tensor) and x.device.type == "cuda"


def _placeholder_scalar(x):
    return False if x.dtype == torch.bool else (1 if not x.dtype.is_floating_point else 1.0)


class HostReads(TorchDispatchMode):
    """Records every read of a CUDA value on the host; answers it with a placeholder."""

    def __init__(self):
        super().__init__()
        self.reads: list[str] = []
        # segfast's torch.library ops run their real implementation (with this
        # mode still recording), not their fake one
        self.impls = {op._qualname: op._init_fn for op in _custom_ops()}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        impl = self.impls.get(func.name())
        if impl is not None:
            with self:
                return impl(*args, **kwargs)
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        for a in args:
            if isinstance(a, (list, tuple)):
                tensors += [b for b in a if isinstance(b, torch.Tensor)]
        if not any(map(_on_cuda, tensors)):
            if func.name() == "aten::_local_scalar_dense" and getattr(args[0], "constant", None) is None:
                return _placeholder_scalar(args[0])  # a CPU value: reading it is free
            return func(*args, **kwargs)
        name = func.name()
        if name.startswith(("aten::_to_copy", "aten::copy_", "aten::to")):
            dev = kwargs.get("device")
            dst = args[0] if name.startswith("aten::copy_") else None
            if (dev is not None and torch.device(dev).type == "cpu") or (dst is not None and dst.device.type == "cpu"):
                self.reads.append(f"{name} to the CPU at {_segfast_frame()}")
            return func(*args, **kwargs)
        bool_index = name.startswith(("aten::index.Tensor", "aten::index_put")) and any(
            isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in args[1])
        if bool_index and name.startswith("aten::index_put"):  # t[mask] = v: a nonzero inside
            self.reads.append(f"{name} with a boolean mask at {_segfast_frame()}")
            return func(*args, **kwargs)
        if name.startswith("aten::index") and not bool_index:  # integer indices: a gather, no read
            return func(*args, **kwargs)
        if not (bool_index or torch.Tag.data_dependent_output in func.tags
                or torch.Tag.dynamic_output_shape in func.tags):
            return func(*args, **kwargs)
        self.reads.append(f"{name} at {_segfast_frame()}")
        x = args[0]
        if name.startswith("aten::_local_scalar_dense"):
            return _placeholder_scalar(x)
        if name.startswith("aten::is_nonzero"):
            return False
        if name.startswith("aten::nonzero"):
            return x.new_empty((0, x.dim()), dtype=torch.long)
        if bool_index:
            return x.new_empty((0,) + tuple(x.shape[len(args[1]):]))
        if name.startswith("aten::masked_select"):
            return x.new_empty((0,))
        raise AssertionError(f"host read {name} at {_segfast_frame()} (no placeholder for it)")


_GUARD_SRC = """
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/core/impl/FakeGuardImpl.h>
C10_REGISTER_GUARD_IMPL(CUDA, c10::impl::FakeGuardImpl<c10::DeviceType::CUDA>);
"""


@pytest.fixture(scope="module")
def fake_cuda_guard():
    """A torch built without CUDA has no CUDA device guard, which indexing,
    int()/float() and autograd take on CUDA tensors (fake ones too): register
    c10's FakeGuardImpl for CUDA (a few lines of C++, compiled once). Only
    where torch has no CUDA: a CUDA build has its real guard."""
    if torch.version.cuda is not None:
        return
    import ctypes
    import subprocess
    import tempfile
    from torch.utils import cpp_extension
    so = os.path.join(tempfile.gettempdir(), f"segfast-test-fake-cuda-guard-{torch.__version__}.so")
    if not os.path.exists(so):
        src = so[:-3] + ".cpp"
        with open(src, "w") as f:
            f.write(_GUARD_SRC)
        cmd = [os.environ.get("CXX", "c++"), "-std=c++17", "-shared", "-fPIC", src, "-o", so + ".tmp",
               *(f"-I{p}" for p in cpp_extension.include_paths()),
               *(f"-L{p}" for p in cpp_extension.library_paths()), "-lc10"]
        try:
            subprocess.run(cmd, check=True, capture_output=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as e:
            pytest.skip(f"cannot build the fake CUDA device guard: {e}")
        os.replace(so + ".tmp", so)
    ctypes.CDLL(so)


def run_backward(outputs) -> None:
    """loss.backward() for ``outputs`` without the autograd engine (which, on
    CUDA tensors, wants a CUDA runtime): every node of the graph is called in
    topological order, AccumulateGrad nodes skipped."""
    roots = [(o.grad_fn, torch.ones_like(o)) for o in outputs if o.grad_fn is not None]
    deps, seen, stack = {}, set(), [n for n, _ in roots]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        for nxt, _ in n.next_functions:
            if nxt is not None:
                deps[nxt] = deps.get(nxt, 0) + 1
                stack.append(nxt)
    buf = {}
    for n, g in roots:
        b = buf.setdefault(n, [None] * len(n._input_metadata))
        b[0] = g if b[0] is None else b[0] + g
    queue = [n for n, _ in roots if deps.get(n, 0) == 0]
    while queue:
        n = queue.pop()
        ins = buf.pop(n)
        if type(n).__name__ == "AccumulateGrad":
            continue
        outs = n.apply(*ins) if hasattr(n, "_forward_cls") else n(*ins)  # a Python Function's node: its backward
        outs = outs if isinstance(outs, tuple) else (outs,)
        for (nxt, i), g in zip(n.next_functions, outs):
            if nxt is None:
                continue
            b = buf.setdefault(nxt, [None] * len(nxt._input_metadata))
            if g is not None:
                b[i] = g if b[i] is None else b[i] + g
            deps[nxt] -= 1
            if deps[nxt] == 0:
                queue.append(nxt)


def _fake_meanfield(launches):
    def run(u, *args, **kwargs):
        launches.append("lattice_meanfield")
        return torch.empty_like(u, dtype=torch.float32)
    return run


class _FakeProps:
    name = "NVIDIA H100 80GB HBM3"
    major, minor = 9, 0
    multi_processor_count = 132
    total_memory = 80 << 30
    warp_size = 32
    max_threads_per_multi_processor = 2048
    regs_per_multiprocessor = 65536
    shared_memory_per_block_optin = 227 << 10


class _FakeStream:
    cuda_stream = 0


class _NoDevice:
    def __init__(self, *a, **k):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _View:
    """What segfast.backends.view hands a kernel, for a fake tensor (which has
    no memory to export through DLPack): its sizes and device."""

    def __init__(self, t: torch.Tensor):
        self.shape, self.is_cuda = tuple(t.shape), t.device.type == "cuda"


def _fake_view(t):
    return None if t is None else _View(t)


class _CudaKernels:
    """segfast._C.cuda whose entry points record the launch and run nothing."""

    def __init__(self, launches):
        self._launches = launches

    def __getattr__(self, name):
        def launch(*args, **kwargs):
            for a in (*args, *kwargs.values()):
                assert a is None or isinstance(a, (int, float, bool, list, _View)), \
                    f"{name}: a kernel argument is neither a number nor a view: {type(a).__name__}"
                assert not isinstance(a, _View) or a.is_cuda, f"{name}: a view of a CPU tensor reached a CUDA kernel"
            self._launches.append(name)
        return launch


class _CudaStub:
    """segfast._C with CUDA kernels "compiled": the ``cuda`` entry points record and run nothing."""

    def __init__(self, real, launches):
        self._real, self.cuda = real, _CudaKernels(launches)

    def has_cuda(self):
        return True

    def cuda_archs(self):
        return ["90"]

    def cuda_driver_version(self):  # a driver for the runtime the module carries
        return max(int(self._real.cuda_runtime_version()), 13000)

    def __getattr__(self, name):
        return getattr(self._real, name)


class _Launcher:
    def __init__(self, kernel, launches):
        self.kernel, self.launches = kernel, launches

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            g = grid(kwargs) if callable(grid) else grid
            assert all(isinstance(d, int) for d in g), f"grid {g!r} of {self.kernel} is not Python ints"
            self.launches.append(getattr(self.kernel, "__name__", str(self.kernel)))
        return launch


def _custom_ops():
    """Every segfast torch.library.custom_op (not triton_op) object."""
    from torch._library.custom_ops import CustomOpDef
    seen = []
    for name, mod in list(sys.modules.items()):
        if name.startswith("segfast.ops.") and mod is not None:
            for v in vars(mod).values():
                if isinstance(v, CustomOpDef) and v not in seen:
                    seen.append(v)
    return seen


@pytest.fixture
def gpu(monkeypatch, fake_cuda_guard):
    """-> run(fn, *make_args): fn under fake CUDA tensors, the GPU dispatch path real, launches stubbed.

    Returns (reads, launches)."""
    import importlib
    launches: list[str] = []
    monkeypatch.setattr(backends, "_C", _CudaStub(backends._C, launches))
    monkeypatch.setattr(backends, "view", _fake_view)
    # the GPU fit check, memoised per device: a fresh memo for the stub's driver
    monkeypatch.setattr(backends, "_cuda_device_reason_cached",
                        functools.lru_cache(maxsize=None)(backends._cuda_device_reason_cached.__wrapped__))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda *a, **k: _FakeProps())
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: _FakeProps.name)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a, **k: _FakeStream())
    monkeypatch.setattr(torch.cuda, "device", _NoDevice)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for fam in ("pixel", "region", "lovasz", "boxes", "boxes_match", "crf"):
        mod = importlib.import_module(f"segfast.triton_kernels.{fam}")
        if hasattr(mod, "wrap"):
            monkeypatch.setattr(mod, "wrap", lambda k: _Launcher(k, launches))
    common = importlib.import_module("segfast.triton_kernels._common")
    monkeypatch.setattr(common, "wrap", lambda k: _Launcher(k, launches))
    # The permutohedral lattice's size is the number of distinct lattice points
    # of the image: built with torch.unique, data-dependent by nature. Its
    # build and the mean-field iterations are stubbed; the CRF's validation,
    # energies and dispatch run.
    from segfast.ops import crf as _crf
    monkeypatch.setattr(_crf, "lattice_meanfield", _fake_meanfield(launches))

    def run(fn, make):
        mode = HostReads()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # data_ptr() of a fake tensor
            with FakeTensorMode(allow_non_fake_inputs=True):
                inputs = make()
                with mode:
                    try:
                        out = fn(*inputs)
                        outs = [o for o in (out if isinstance(out, (tuple, list)) else (out,))
                                if isinstance(o, torch.Tensor) and o.requires_grad]
                        if outs:
                            run_backward([o.sum() for o in outs])
                        err = None
                    except Exception as e:  # a placeholder value can send a check astray
                        err = e
        return mode.reads, launches, err

    return run


# ---------------------------------------------------------------- inputs

N, C, H, W = 2, 4, 8, 8


def _logits(c=C, grad=True):
    return torch.randn(N, c, H, W, device="cuda", requires_grad=grad)


def _labels(c=C):
    return torch.randint(0, c, (N, H, W), device="cuda")


def _boxes(n=6, grad=False, batch=()):
    b = torch.rand(*batch, n, 4, device="cuda")
    b = torch.cat([b[..., :2], b[..., :2] + 1 + b[..., 2:]], -1)
    return b.detach().requires_grad_(grad)


def seg(c=C, target="labels"):
    def make():
        t = {"labels": lambda: _labels(c), "binary": lambda: _labels(2) if c == 1 else _labels(c),
             "dense": lambda: torch.rand(N, c, H, W, device="cuda")}[target]()
        return _logits(c), t
    return make


def _seg_cases():
    F_ = F
    m = segfast
    cases = {
        "region_stats": (F_.region_stats, seg()),
        "dice_loss": (F_.dice_loss, seg()),
        "dice_loss[ignore_index]": (lambda x, t: F_.dice_loss(x, t, ignore_index=0), seg()),
        "dice_loss[confusion]": (lambda x, t: F_.dice_loss(
            x, t, ignore_index=0, confusion=segfast.metrics.ConfusionMatrix(C, ignore_index=0)), seg()),
        "dice_ce_loss[confusion]": (lambda x, t: F_.dice_ce_loss(
            x, t, confusion=torch.zeros(C, C, dtype=torch.int64, device="cuda")), seg()),
        "jaccard_loss": (F_.jaccard_loss, seg()),
        "tversky_loss": (F_.tversky_loss, seg()),
        "generalized_dice_loss": (F_.generalized_dice_loss, seg()),
        "cross_entropy": (F_.cross_entropy, seg()),
        "cross_entropy[ignore_index]": (lambda x, t: F_.cross_entropy(x, t, ignore_index=1), seg()),
        "cross_entropy[weight]": (lambda x, t: F_.cross_entropy(x, t, weight=torch.ones(C, device="cuda")), seg()),
        "cross_entropy[weight=list]": (lambda x, t: F_.cross_entropy(x, t, weight=[1.0] * C), seg()),
        "cross_entropy[none]": (lambda x, t: F_.cross_entropy(x, t, reduction="none"), seg()),
        "binary_cross_entropy_with_logits": (F_.binary_cross_entropy_with_logits, seg(target="dense")),
        "binary_cross_entropy_with_logits[pos_weight]": (
            lambda x, t: F_.binary_cross_entropy_with_logits(x, t, pos_weight=torch.ones(C, 1, 1, device="cuda")),
            seg(target="dense")),
        "balanced_bce_loss": (F_.balanced_bce_loss, seg(1, "binary")),
        "focal_loss": (F_.focal_loss, seg(1, "binary")),
        "focal_loss[multiclass]": (lambda x, t: F_.focal_loss(x, t, mode="multiclass"), seg()),
        "fused_loss": (F_.fused_loss, seg()),
        "dice_ce_loss": (F_.dice_ce_loss, seg()),
        "dice_ce_loss[ignore_index]": (lambda x, t: F_.dice_ce_loss(x, t, ignore_index=0), seg()),
        "dice_focal_loss": (F_.dice_focal_loss, seg()),
        "dice_fused_loss": (F_.dice_fused_loss, seg()),
        "lovasz_hinge_loss": (F_.lovasz_hinge_loss, seg(1, "binary")),
        "lovasz_softmax_loss": (F_.lovasz_softmax_loss, seg()),
        "lovasz_softmax_loss[per_image]": (lambda x, t: F_.lovasz_softmax_loss(x, t, per_image=True), seg()),
        "DiceLoss": (m.DiceLoss(), seg()),
        "JaccardLoss": (m.JaccardLoss(), seg()),
        "TverskyLoss": (m.TverskyLoss(), seg()),
        "GeneralizedDiceLoss": (m.GeneralizedDiceLoss(), seg()),
        "CrossEntropyLoss": (m.CrossEntropyLoss(), seg()),
        "BCEWithLogitsLoss": (m.BCEWithLogitsLoss(), seg(target="dense")),
        "BalancedBCELoss": (m.BalancedBCELoss(), seg(1, "binary")),
        "FocalLoss": (m.FocalLoss(), seg(1, "binary")),
        "FusedLoss": (m.FusedLoss(), seg()),
        "DiceCELoss": (m.DiceCELoss(), seg()),
        "DiceFocalLoss": (m.DiceFocalLoss(), seg()),
        "DiceFusedLoss": (m.DiceFusedLoss(), seg()),
        "LovaszHingeLoss": (m.LovaszHingeLoss(), seg(1, "binary")),
        "LovaszSoftmaxLoss": (m.LovaszSoftmaxLoss(), seg()),
    }
    return cases


def _pair(grad=True, aligned=True):
    return lambda: (_boxes(6, grad), _boxes(6 if aligned else 5, grad))


def _iou_balanced(kind):
    def make():
        n = 6
        iou = torch.rand(n, device="cuda")
        if kind == "ce":
            return torch.randn(n, C, device="cuda", requires_grad=True), torch.randint(0, C, (n,), device="cuda"), iou
        if kind == "l1":
            return torch.randn(n, 4, device="cuda", requires_grad=True), torch.randn(n, 4, device="cuda"), iou
        return torch.randn(n, C, device="cuda", requires_grad=True), torch.rand(n, C, device="cuda"), iou
    return make


def _box_cases():
    m = segfast
    cases = {}
    for name in ("box_iou", "generalized_box_iou", "distance_box_iou", "complete_box_iou"):
        cases[name] = (getattr(F, name), _pair(aligned=False))
    for name in ("box_iou_aligned", "generalized_box_iou_aligned", "distance_box_iou_aligned",
                 "complete_box_iou_aligned"):
        cases[name] = (getattr(F, name), _pair())
    for name in ("iou_loss", "giou_loss", "diou_loss", "ciou_loss"):
        cases[name] = (getattr(F, name), _pair())
        cases[name + "[mean]"] = (lambda a, b, f=getattr(F, name): f(a, b, reduction="mean"), _pair())
    for name in ("IoULoss", "GIoULoss", "DIoULoss", "CIoULoss"):
        cases[name] = (getattr(m, name)(), _pair())
    cases["matched_iou"] = (F.matched_iou, _pair(grad=False))
    cases["iou_balanced_focal_loss"] = (F.iou_balanced_focal_loss, _iou_balanced("sig"))
    cases["iou_balanced_bce_loss"] = (F.iou_balanced_bce_loss, _iou_balanced("sig"))
    cases["iou_balanced_ce_loss"] = (F.iou_balanced_ce_loss, _iou_balanced("ce"))
    cases["iou_balanced_smooth_l1_loss"] = (F.iou_balanced_smooth_l1_loss, _iou_balanced("l1"))
    cases["IoUBalancedFocalLoss"] = (m.IoUBalancedFocalLoss(), _iou_balanced("sig"))
    cases["IoUBalancedBCELoss"] = (m.IoUBalancedBCELoss(), _iou_balanced("sig"))
    cases["IoUBalancedCELoss"] = (m.IoUBalancedCELoss(), _iou_balanced("ce"))
    cases["IoUBalancedSmoothL1Loss"] = (m.IoUBalancedSmoothL1Loss(), _iou_balanced("l1"))
    cases["box_iou_max"] = (F.box_iou_max, lambda: (_boxes(6), _boxes(3)))
    cases["box_iou_max[batched, gt_valid]"] = (
        lambda a, g, v: F.box_iou_max(a, g, v),
        lambda: (_boxes(6, batch=(2,)), _boxes(3, batch=(2,)), torch.ones(2, 3, dtype=torch.bool, device="cuda")))
    cases["nms"] = (lambda b, s: F.nms(b, s, 0.5), lambda: (_boxes(6), torch.rand(6, device="cuda")))
    cases["batched_nms"] = (lambda b, s, i: F.batched_nms(b, s, i, 0.5),
                            lambda: (_boxes(6), torch.rand(6, device="cuda"), torch.randint(0, 2, (6,), device="cuda")))
    return cases


def _crf_cases():
    def make(float_image=False):
        def f():
            u = torch.randn(1, 3, H, W, device="cuda")
            img = (torch.rand(1, 3, H, W, device="cuda") * 255)
            return u, (img if float_image else img.to(torch.uint8))
        return f
    return {
        "dense_crf": (F.dense_crf, make()),
        "dense_crf[float image]": (F.dense_crf, make(True)),
        "dense_crf[exact]": (lambda u, i: F.dense_crf(u, i, method="exact"), make()),
        "DenseCRF": (segfast.DenseCRF(), make()),
        "pixel_objectness": (lambda b: F.pixel_objectness(b, (H, W)), lambda: (_boxes(3, batch=(1,)),)),
    }


def _compat_cases():
    """The drop-in layers (segfast.compat): MONAI's class weights are a buffer that moves with the module."""
    from segfast.compat import monai as M
    from segfast.compat import smp as S

    def cuda_w(mod):
        for name, b in list(mod.named_buffers()):
            setattr(mod, name, b.to("cuda"))
        return mod

    def make():
        x, t = seg()()
        return x, t.unsqueeze(1)
    w = [1.0, 2.0, 0.5, 1.0]
    return {
        "compat.monai.DiceLoss[weight]": (
            lambda x, t: cuda_w(M.DiceLoss(to_onehot_y=True, softmax=True, weight=w))(x, t), make),
        "compat.monai.FocalLoss[weight]": (
            lambda x, t: cuda_w(M.FocalLoss(to_onehot_y=True, use_softmax=True, weight=w))(x, t), make),
        "compat.monai.DiceCELoss": (lambda x, t: M.DiceCELoss(to_onehot_y=True, softmax=True)(x, t), make),
        "compat.smp.DiceLoss": (lambda x, t: S.DiceLoss("multiclass")(x, t[:, 0]), make),
        "compat.smp.FocalLoss[class_weights]": (
            lambda x, t: S.FocalLoss("multiclass", class_weights=w)(x, t[:, 0]), make),
    }


CASES = {**_seg_cases(), **_box_cases(), **_crf_cases(), **_compat_cases()}
# Pure torch code on the device: no segfast kernel to launch.
NO_KERNEL = {"pixel_objectness", "dense_crf[exact]", "iou_balanced_focal_loss", "iou_balanced_bce_loss",
             "iou_balanced_ce_loss", "iou_balanced_smooth_l1_loss", "IoUBalancedFocalLoss", "IoUBalancedBCELoss",
             "IoUBalancedCELoss", "IoUBalancedSmoothL1Loss"}


def test_every_public_op_is_covered():
    public = {n for n in segfast.__all__ if n not in ("info", "empty_cache", "backends", "__version__",
                                                       "Gaussian", "Bilateral")}
    covered = {k.split("[")[0] for k in CASES}  # (and a few segfast.compat layers)
    assert public <= covered, f"no GPU-path sync test for {sorted(public - covered)}"


@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("name", list(CASES))
def test_no_host_sync(gpu, monkeypatch, name, backend):
    monkeypatch.setenv("SEGFAST_BACKEND", backend)
    fn, make = CASES[name]
    reads, launches, err = gpu(fn, make)
    base = name.split("[")[0]
    allowed, why = ALLOWED_READS.get(base, (0, ""))
    assert len(reads) <= allowed, (
        f"{name} (backend={backend}) reads device values on the host ({len(reads)}, allowed {allowed}"
        + (f": {why}" if why else "") + "):\n  " + "\n  ".join(reads))
    if err is not None:
        raise err
    if base not in NO_KERNEL and name not in NO_KERNEL:
        assert launches, f"{name} (backend={backend}) launched no kernel: the GPU dispatch path did not run"


def test_harness_catches_a_read(gpu):
    """The harness itself: a .item(), a float(), a bool() and a nonzero of device values are all caught."""
    def sync(x):
        y = x * float(x.sum()) + x.sum().item() + bool((x > 0).any()) + x.nonzero().shape[0]
        return y[x > 0].sum() + int(x.argmax()) + len(x.tolist()) + x.cpu().sum()
    reads, _, err = gpu(sync, lambda: (torch.randn(3, device="cuda", requires_grad=True),))
    assert err is None, "".join(traceback.format_exception(err))
    # float, item, bool, nonzero, the mask, int, tolist (one per element), cpu, the mask's backward
    assert len(reads) == 11, "\n".join(reads)
    kinds = {r.split(" ")[0] for r in reads}
    assert kinds == {"aten::_local_scalar_dense", "aten::nonzero", "aten::index.Tensor", "aten::_to_copy",
                     "aten::index_put"}, kinds


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("kw", [dict(ignore_index=1), dict(weight=[0.5, 2.0, 1.0, 3.0]),
                                dict(weight=[0.5, 2.0, 1.0, 3.0], ignore_index=2)])
def test_data_dependent_mean_matches_torch(backend, kw):
    """A data-dependent mean (ignore_index, class weights): on triton the
    normalizer stays a tensor on the device and the backward reads it there;
    on cpu the host reads it. Against torch's cross entropy, including a
    grad_output other than 1 and a retained graph's second backward."""
    from segfast import backends as B
    if B.unavailable_reason(backend, torch.device("cpu")) is not None:
        pytest.skip(f"backend {backend} not usable here")
    x = torch.randn(2, 4, 5, 7, dtype=torch.float64 if backend == "cpu" else torch.float32, requires_grad=True)
    y = torch.randint(0, 4, (2, 5, 7))
    tw = None if "weight" not in kw else torch.tensor(kw["weight"], dtype=x.dtype)
    want = torch.nn.functional.cross_entropy(x, y, weight=tw, ignore_index=kw.get("ignore_index", -100))
    (gw,) = torch.autograd.grad(want * 3.0, x)
    got = F.cross_entropy(x, y, backend=backend, **kw)
    torch.testing.assert_close(got.to(want.dtype), want, rtol=1e-5, atol=1e-6)
    got.backward(torch.tensor(3.0, dtype=got.dtype), retain_graph=True)
    torch.testing.assert_close(x.grad, gw, rtol=1e-5, atol=1e-6)
    x.grad = None
    got.backward(torch.tensor(3.0, dtype=got.dtype))  # recomputed from the logits
    torch.testing.assert_close(x.grad, gw, rtol=1e-5, atol=1e-6)
