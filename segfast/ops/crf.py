"""Dense CRF (Krähenbühl & Koltun, "Efficient Inference in Fully Connected
CRFs with Gaussian Edge Potentials", NIPS 2011): batched mean-field inference
with the permutohedral lattice, pydensecrf's DenseCRF2D semantics, and the
POS-CRF unary of Liu & Lew (pixel objectness added to the foreground classes).

Mean field, per image (N pixels, C labels, pairwise kernels m)::

    Q0 = softmax(-U)
    Q  = softmax(-U - Σ_m μ_m · K̃_m Q)      (``iterations`` times, every pixel at once)

K_m is the Gaussian kernel exp(-|f_i - f_j|²/2) on the features
f = (x/sx, y/sy) ("gaussian") or (x/sx, y/sy, r/sr, g/sg, b/sb) ("bilateral";
x is the column, y the row, colours on the 0-255 scale), i = j included, as
pydensecrf. K̃ = diag(n) K diag(n) with n = 1/sqrt(K·1) ("symmetric",
pydensecrf's default), diag(1/K·1) K ("after", NIPS'11), K diag(1/K·1)
("before") or K ("none").

Compatibility μ: a number w is pydensecrf's PottsCompatibility(w), μ = -w·I
(the message *adds* w·K̃Q to the logits of the same label; equivalent to the
textbook Potts penalty w·[l != l'] because the two differ by a constant per
pixel). A [C, C] matrix is used as given after symmetrization
(μ + μᵀ)/2, as pydensecrf's MatrixCompatibility: positive entries penalise a
label pair, negative entries reward it.

``method="permutohedral"`` filters through one lattice per (image, kernel),
built once and reused by every iteration and label (O(N) per filter; the
lattice approximates a slightly wider Gaussian than exp(-|Δf|²/2), exactly as
pydensecrf's does). ``method="exact"`` sums the O(N²) kernel explicitly (torch,
small images and tests).

Backends: ``cpu`` (C++/OpenMP: lattice and iterations, one image per thread
for batches), ``triton`` and ``cuda`` (GPU: the lattices of the whole batch
built once with torch sort/unique, the iterations in Triton or CUDA C++
kernels: :func:`lattice_meanfield`) and ``torch`` (the eager reference of
segfast/reference/crf.py, one image at a time, any device, differentiable
through autograd). The kernel backends return marginals without gradient
(CRF post-processing).
"""

# torch.library.custom_op infers the op schemas from annotations: they stay real
# types (no `from __future__ import annotations`, whose strings torch 2.4 cannot
# read; typing.List, as list[float] is unsupported before torch 2.7).
import warnings

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

import torch
from torch import Tensor

from .. import _doc, backends
from ..reference import crf as ref
from ._common import host_checks, require

FAMILY = "crf"
__all__ = ["dense_crf", "pixel_objectness", "Gaussian", "Bilateral", "DenseCRF"]
NORMALIZATIONS = {"symmetric": 0, "after": 1, "before": 2, "none": 3}
METHODS = ("permutohedral", "exact")
UNARY_FROM = ("energy", "logits", "probs")
PROB_CLIP = 1e-5  # probabilities are clipped to [1e-5, 1] before -log (pydensecrf's unary_from_softmax)
# Largest |elevated lattice coordinate| allowed: keys stay far from int32 overflow and
# features keep integer precision in float32.
MAX_COORD = float(2 ** 22)

Number = Union[int, float]
Compat = Union[Number, Tensor]


@dataclass(frozen=True)
class Gaussian:
    """The spatial kernel of :func:`segfast.dense_crf`: exp(-|p_i - p_j|² / 2 sxy²).

    Args:
        sxy: standard deviation in pixels, one number or (sx, sy).
        compat: a Potts weight, or a [C, C] compatibility matrix.

    Example:
        >>> import segfast
        >>> segfast.Gaussian(sxy=3, compat=3)
        Gaussian(sxy=3, compat=3)
    """

    sxy: Union[Number, Sequence[Number]] = 3.0
    compat: Compat = 3.0


@dataclass(frozen=True)
class Bilateral:
    """The appearance kernel of :func:`segfast.dense_crf`: exp(-|p_i - p_j|² / 2 sxy² - |I_i - I_j|² / 2 srgb²).

    Args:
        sxy: spatial standard deviation in pixels, one number or (sx, sy).
        srgb: colour standard deviation on the 0-255 scale, one number or (sr, sg, sb).
        compat: a Potts weight, or a [C, C] compatibility matrix.

    Example:
        >>> import segfast
        >>> segfast.Bilateral(sxy=80, srgb=13, compat=10)
        Bilateral(sxy=80, srgb=13, compat=10)
    """

    sxy: Union[Number, Sequence[Number]] = 80.0
    srgb: Union[Number, Sequence[Number]] = 13.0
    compat: Compat = 10.0


def choose_backend(backend: Optional[str], device: torch.device) -> str:
    """``cpu`` on CPU tensors (if built), ``triton`` on CUDA tensors (if
    importable, else ``cuda`` if built), else ``torch``. An explicit backend
    is validated by backends.choose (never a silent fallback)."""
    if backend is None:
        if device.type == "cpu" and backends.unavailable_reason("cpu", device) is None:
            return "cpu"
        if device.type == "cuda" and backends.unavailable_reason("triton", device) is None:
            return "triton"
        if device.type == "cuda" and backends.unavailable_reason("cuda", device) is None:
            return "cuda"
        return "torch"
    return backends.choose(backend, device)


# ---------------------------------------------------------------- validation


def _scales(v, n: int, what: str) -> tuple:
    if isinstance(v, Tensor):
        v = v.tolist()
    vals = [v] * n if isinstance(v, (int, float)) and not isinstance(v, bool) else list(v)
    if len(vals) != n or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in vals):
        raise TypeError(f"{what} must be a number or {n} numbers, got {v!r}")
    vals = [float(x) for x in vals]
    if not all(math.isfinite(x) and x > 0 for x in vals):
        raise ValueError(f"{what} must be finite and > 0, got {v!r}")
    return tuple(vals)


def _compat(c, C: int, device, what: str):
    """-> (potts weight, None) or (0, symmetric float32 matrix [C, C])."""
    if isinstance(c, (int, float)) and not isinstance(c, bool):
        if not math.isfinite(float(c)):
            raise ValueError(f"{what} must be finite, got {c!r}")
        return float(c), None
    try:
        m = torch.as_tensor(c, dtype=torch.float32)  # a list or CPU tensor is checked before it moves
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{what} must be a number (Potts weight) or a [C, C] matrix, got {type(c).__name__}") from None
    if m.shape != (C, C):
        raise ValueError(f"{what} must be a number or a [{C}, {C}] matrix, got shape {tuple(m.shape)}")
    require(torch.isfinite(m).all(), f"{what} must be finite")
    m = m.to(device)
    return 0.0, 0.5 * (m + m.T)


def _check(unary, image, iterations, normalization, method, unary_from, pos):
    if not isinstance(unary, Tensor) or not isinstance(image, Tensor):
        raise TypeError("unary and image must be tensors")
    if unary.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise TypeError(f"unary must be float32/float16/bfloat16/float64, got {unary.dtype}")
    if unary.dim() != 4:
        raise ValueError(f"unary must be [B, C, H, W], got shape {tuple(unary.shape)}")
    B, C, H, W = unary.shape
    if C < 1:
        raise ValueError("unary needs at least one label (C >= 1)")
    if image.dtype != torch.uint8 and not image.dtype.is_floating_point:
        raise TypeError(f"image must be uint8 or float (0-255 scale), got {image.dtype}")
    if tuple(image.shape) != (B, 3, H, W):
        raise ValueError(f"image must be [B, 3, H, W] = {(B, 3, H, W)} to match unary, got {tuple(image.shape)}")
    if image.device != unary.device:
        raise ValueError(f"image is on {image.device} but unary is on {unary.device}")
    if isinstance(iterations, bool) or not isinstance(iterations, int):
        raise TypeError(f"iterations must be an int, got {iterations!r}")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {normalization!r}")
    if method not in METHODS:
        raise ValueError(f"method must be 'permutohedral' or 'exact', got {method!r}")
    if unary_from not in UNARY_FROM:
        raise ValueError(f"unary_from must be 'energy', 'logits' or 'probs', got {unary_from!r}")
    if pos is not None:
        if not isinstance(pos, Tensor) or not pos.dtype.is_floating_point:
            raise TypeError("pos must be a float tensor [B, H, W]")
        if tuple(pos.shape) != (B, H, W):
            raise ValueError(f"pos must be [B, H, W] = {(B, H, W)}, got {tuple(pos.shape)}")
        if pos.device != unary.device:
            raise ValueError(f"pos is on {pos.device} but unary is on {unary.device}")
        if C < 2:
            raise ValueError("pos (POS-CRF) needs a background and at least one foreground class (C >= 2)")
    if not torch.compiler.is_compiling():
        _check_finite(unary, "unary")
        if image.dtype != torch.uint8:
            _check_finite(image, "image")
        if pos is not None:
            _check_finite(pos, "pos")


def _check_finite(t: Tensor, what: str) -> None:
    message = f"{what} has non-finite values (inf/nan)"
    if not host_checks(t.device):
        require(torch.isfinite(t).all(), message)
    elif not _all_finite(t):
        raise ValueError(message)


def _all_finite(t: Tensor) -> bool:
    """True if every value is finite. A finite sum proves it (any inf or NaN
    makes the sum inf or NaN) at a fraction of the cost of isfinite's bool
    mask; only a non-finite sum (or one that overflowed) needs the mask."""
    if t.numel() == 0 or bool(torch.isfinite(t.sum())):
        return True
    return bool(torch.isfinite(t).all())


def energies(unary: Tensor, unary_from: str, pos: Optional[Tensor]) -> Tensor:
    """U (float32, float64 for float64 input): energies as given, -log_softmax
    of logits, or -log of probabilities clipped to [1e-5, 1]; then the POS-CRF
    term: U_k -= pos for the foreground classes k >= 1 (θ_k = -log(p_k·exp(pos)))."""
    acc = torch.float64 if unary.dtype == torch.float64 else torch.float32
    x = unary.to(acc)
    if unary_from == "logits":
        u = -torch.log_softmax(x, 1)
    elif unary_from == "probs":
        u = -torch.log(x.clamp(PROB_CLIP, 1.0))
    else:
        u = x
    if pos is not None:
        u = torch.cat([u[:, :1], u[:, 1:] - pos.to(acc).unsqueeze(1)], 1)
    return u


def _kernels(gaussian, bilateral, compat, C, device):
    """-> list of (sxy, srgb or None, potts weight, matrix or None)."""
    out = []
    for k, what in ((gaussian, "gaussian"), (bilateral, "bilateral")):
        if k is None:
            continue
        if what == "gaussian" and not isinstance(k, Gaussian):
            raise TypeError(f"gaussian must be segfast.Gaussian(...) or None, got {type(k).__name__}")
        if what == "bilateral" and not isinstance(k, Bilateral):
            raise TypeError(f"bilateral must be segfast.Bilateral(...) or None, got {type(k).__name__}")
        sxy = _scales(k.sxy, 2, f"{what}.sxy")
        srgb = _scales(k.srgb, 3, f"{what}.srgb") if what == "bilateral" else None
        w, m = _compat(k.compat if compat is None else compat, C, device,
                       f"{what}.compat" if compat is None else "compat")
        out.append((sxy, srgb, w, m))
    return out


def _check_range(kernels, image: Tensor, H: int, W: int) -> None:
    """Lattice coordinates are bounded by ~(d+1)·max|feature|: refuse scales so
    small that they would leave float32/int32 precision (a clear error, never a
    wrapped key)."""
    imax = 255.0
    if image.dtype != torch.uint8 and image.numel() and not torch.compiler.is_compiling():
        if host_checks(image.device):
            amax = float(image.abs().max())
            imax = max(255.0, amax)
            if 0 < amax <= 1 and any(srgb is not None for _, srgb, _, _ in kernels):
                warnings.warn("dense_crf: the float image is within [0, 1], but srgb is on the 0-255 scale, so the "
                              "bilateral kernel sees almost no colour contrast; pass image * 255", stacklevel=3)
        else:  # 255 on the host, the image's largest value on the device
            srgb = [k[1] for k in kernels if k[1] is not None]
            if srgb:
                limit = MAX_COORD / (2 * 6) * min(min(s) for s in srgb)
                require(image.abs().amax() <= limit, f"kernel scales srgb={min(srgb, key=min)} are too small for "
                        f"this image: values beyond {limit:.3g} put lattice coordinates past {MAX_COORD:.3g}")
    for sxy, srgb, _, _ in kernels:
        f = max(max(W - 1, 0) / sxy[0], max(H - 1, 0) / sxy[1])
        d = 2
        if srgb is not None:
            f = max(f, imax / min(srgb))
            d = 5
        if f * (d + 1) * 2 > MAX_COORD:
            raise ValueError(f"kernel scales sxy={sxy}, srgb={srgb} are too small for this image: lattice "
                             f"coordinates would reach {f * (d + 1) * 2:.3g} (limit {MAX_COORD:.3g})")


# ---------------------------------------------------------------- the op


def dense_crf(unary: Tensor, image: Tensor, *, iterations: int = 5, gaussian: Optional[Gaussian] = Gaussian(),
              bilateral: Optional[Bilateral] = Bilateral(), compat: Optional[Compat] = None,
              normalization: str = "symmetric", pos: Optional[Tensor] = None, method: str = "permutohedral",
              unary_from: str = "energy", self_message: bool = True, backend: Optional[str] = None) -> Tensor:
    """Fully connected CRF with Gaussian edge potentials, batched mean field.

    Krähenbühl & Koltun (NIPS 2011), with pydensecrf's DenseCRF2D semantics:
    Q0 = softmax(-U), then ``iterations`` times Q = softmax(-U - Σ_m μ_m K̃_m Q),
    every pixel at once. The permutohedral lattice of each image and kernel is
    built once and reused by every iteration and label.

    Args:
        unary: [B, C, H, W] float: energies (``unary_from="energy"``,
            pydensecrf's setUnaryEnergy), logits (``"logits"``:
            U = -log_softmax) or probabilities (``"probs"``:
            U = -log(clip(p, 1e-5, 1))). Any C >= 1.
        image: [B, 3, H, W], uint8 or float on the 0-255 scale (the scale of
            srgb; a float image within [0, 1] draws a warning).
        iterations: mean-field updates, >= 0 (pydensecrf's ``inference(iterations)``).
        gaussian: :class:`segfast.Gaussian` spatial kernel (sxy=3, compat=3,
            pydensecrf's documented example values); None drops it.
        bilateral: :class:`segfast.Bilateral` appearance kernel (sxy=80,
            srgb=13, compat=10); None drops it.
        compat: overrides both kernels' compat: a number w is the Potts model
            as pydensecrf applies it (the message adds w·K̃Q to the same
            label's logit); a [C, C] matrix μ is symmetrized, (μ + μᵀ)/2, its
            entries penalties (positive: the label pair is discouraged).
        normalization: "symmetric" (K̃ = n K n, n = 1/sqrt(K·1), default),
            "after" (NIPS'11, K̃ = K / K·1), "before" or "none".
        pos: [B, H, W] pixel objectness (:func:`pixel_objectness`): the POS-CRF
            unary θ_0 = -log p_0, θ_k = U_k - pos for classes k >= 1.
        method: "permutohedral" (O(N) per filter) or "exact" (the O(N²) sum, in
            torch on every backend: small images and tests).
        unary_from: "energy", "logits" or "probs" (see ``unary``).
        self_message: True (pydensecrf): the sum over j includes i; False
            removes the i = j term, taken as K_ii = 1.
        backend: "cpu", "triton", "cuda" or "torch" (None: cpu on CPU tensors,
            triton on CUDA tensors, else cuda when built, else torch).

    Returns:
        Q [B, C, H, W], the marginals (float32; float64 for float64 unary).
        Kernel backends return no gradient; the torch backend is
        differentiable through autograd.

    Raises:
        ValueError: shapes that do not fit, negative ``iterations``, an
            unknown ``normalization``, ``method`` or ``unary_from``, a bad
            ``compat`` matrix.
        TypeError: an unsupported dtype.
        RuntimeError: a ``backend`` that is not built or does not fit the device.

    Example:
        >>> import torch, segfast
        >>> logits = torch.randn(1, 3, 16, 16)
        >>> image = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8)
        >>> q = segfast.dense_crf(logits, image, unary_from="logits", iterations=5)
        >>> q.shape
        torch.Size([1, 3, 16, 16])
        >>> torch.allclose(q.sum(1), torch.ones(1, 16, 16))
        True
    """
    _check(unary, image, iterations, normalization, method, unary_from, pos)
    B, C, H, W = unary.shape
    backend = choose_backend(backend, unary.device)
    kernels = _kernels(gaussian, bilateral, compat, C, unary.device)
    if method == "permutohedral":
        _check_range(kernels, image, H, W)
    acc = torch.float64 if unary.dtype == torch.float64 else torch.float32
    u = energies(unary, unary_from, pos)
    if B == 0 or H * W == 0:
        return u.new_zeros((B, C, H, W), dtype=acc)
    if iterations == 0:  # Q0 = softmax(-U), pydensecrf's inference(0)
        return torch.softmax(-u, 1).to(acc)
    if method == "exact" or backend == "torch":
        ks = [(sxy, srgb, ref.potts(C, w, acc, unary.device) if m is None else m.to(acc))
              for sxy, srgb, w, m in kernels]
        return ref.dense_crf(u, image, ks, iterations, normalization, method=method, self_message=self_message,
                             dtype=acc)
    if H * W * 6 >= 2 ** 31:
        raise ValueError(f"image too large for int32 lattices: H*W = {H * W}")
    if backend in ("triton", "cuda"):
        op = dense_crf_triton_op if backend == "triton" else dense_crf_cuda_op
        return op(u.detach().to(torch.float32), image.detach(), *_flat_kernels(kernels, C, u.device),
                                   iterations, NORMALIZATIONS[normalization], self_message).to(acc)
    kparams, mats = [], []
    for sxy, srgb, w, m in kernels:
        kparams += [sxy[0], sxy[1], *(srgb or (1.0, 1.0, 1.0)), float(srgb is not None), w, float(m is not None)]
        mats.append(torch.zeros((C, C), dtype=torch.float32, device=unary.device) if m is None else m)
    mat = torch.stack(mats) if mats else torch.zeros((0, C, C), dtype=torch.float32, device=unary.device)
    q = dense_crf_cpu_op(u.detach(), image.detach(), kparams, mat, iterations, NORMALIZATIONS[normalization],
                         self_message)
    return q.to(acc)


def _crf_threads(u: Tensor) -> int:
    """An image splits its pixels across threads only when it is large (each
    iteration opens a few parallel regions); batches of small images run one
    image per thread instead (the kernel's kImageSplitPixels)."""
    B, C, H, W = u.shape
    return backends.cpu_threads(u.numel() if B > 1 and H * W < 65536 else u[0].numel())


@torch.library.custom_op("segfast::dense_crf_cpu", mutates_args=())
def dense_crf_cpu_op(u: Tensor, image: Tensor, kparams: List[float], mat: Tensor, iterations: int,
                     normalization: int, self_message: bool) -> Tensor:
    """Q [B, C, H, W] float32 from energies u [B, C, H, W] (POS applied) and the
    image; kparams: 8 per kernel (sx, sy, sr, sg, sb, bilateral, Potts weight,
    uses matrix), mat [K, C, C] float32 symmetric compatibilities."""
    B, C, H, W = u.shape
    out = backends.empty_output((B, C, H, W), torch.float32, u.device)
    # named, not temporaries: reshape and contiguous may copy, and a view does not keep its tensor alive
    u3, im3, mat = u.reshape(B, C, H * W), image.reshape(B, 3, H * W), mat.contiguous()
    view = backends.view
    backends._C.cpu.dense_crf(view(u3), view(im3), H, W, [float(k) for k in kparams], view(mat), iterations,
                              normalization, self_message, view(out), _crf_threads(u))
    return out


@dense_crf_cpu_op.register_fake
def _(u, image, kparams, mat, iterations, normalization, self_message):
    return u.new_empty(u.shape, dtype=torch.float32)


def lattice_cpu(features: Tensor):
    """The C++ lattice of float32 features [N, d] as tensors (tests): offset
    [N, d+1] int64, weight [N, d+1], blur [d+1, M, 2] int64 (M: no neighbour)."""
    f = features.to(torch.float32).contiguous()
    N, d = f.shape
    offset = torch.empty((N, d + 1), dtype=torch.int32)
    weight = torch.empty((N, d + 1), dtype=torch.float32)
    cap = N * (d + 1)
    blur = torch.empty(((d + 1) * cap * 2,), dtype=torch.int32)
    view = backends.view
    M = backends._C.cpu.crf_lattice(view(f), view(offset), view(weight), view(blur), backends.cpu_threads())
    return ref.Lattice(d=d, M=M, offset=offset.long(), weight=weight,
                       blur=blur[: (d + 1) * M * 2].view(d + 1, M, 2).long())


# ---------------------------------------------------------------- lattice mean field on tensors (triton)


def _flat_kernels(kernels, C, device):
    """-> (kparams: 8 floats per kernel as the cpu op, mats [K, C, C])."""
    kparams, mats = [], []
    for sxy, srgb, w, m in kernels:
        kparams += [sxy[0], sxy[1], *(srgb or (1.0, 1.0, 1.0)), float(srgb is not None), w, float(m is not None)]
        mats.append(torch.zeros((C, C), dtype=torch.float32, device=device) if m is None else m)
    mat = torch.stack(mats) if mats else torch.zeros((0, C, C), dtype=torch.float32, device=device)
    return kparams, mat


def _batch_features(image: Tensor, sxy, srgb) -> Tensor:
    """[B*H*W, d] float32 features of every image (pydensecrf's, see reference.features)."""
    B, _, H, W = image.shape
    pos = ref.features(H, W, sxy, device=image.device)  # [N, 2]
    pos = pos.unsqueeze(0).expand(B, -1, -1)
    if srgb is None:
        return pos.reshape(B * H * W, 2).contiguous()
    col = image.reshape(B, 3, H * W).to(torch.float32).transpose(1, 2)
    col = col / torch.tensor(srgb, dtype=torch.float32, device=image.device)
    return torch.cat([pos, col], 2).reshape(B * H * W, 5).contiguous()


class _TritonSteps:
    def __init__(self):
        import triton

        from ..triton_kernels import crf as tk

        self.tk, self.triton = tk, triton

    def _grid(self, n, C, per_tile: bool = True):
        """(pixel blocks, label tiles) of n rows; per_tile=False: one program per pixel block."""
        bp, bc = self.tk.blocks(C)
        return (self.triton.cdiv(max(n, 1), bp), self.triton.cdiv(C, bc) if per_tile else 1)

    def filter_grid(self, q: Tensor, lat, sw: Tensor) -> Tensor:
        """blur(splat(q)) [M+1, C] with splat weights sw [P, d+1]."""
        P, C = q.shape
        bp, bc = self.tk.blocks(C)
        grid = q.new_zeros((lat.M + 1, C))
        self.tk.crf_splat_kernel[self._grid(P, C)](q, lat.off32, sw, grid, P, C, D1=lat.d + 1,
                                                   BLOCK_P=bp, BLOCK_C=bc)
        tmp = torch.empty_like(grid)
        tmp[lat.M].zero_()
        for j in range(lat.d + 1):
            self.tk.crf_blur_kernel[self._grid(lat.M, C)](grid, tmp, lat.nb32[j], lat.M, C, BLOCK_P=bp,
                                                          BLOCK_C=bc)
            grid, tmp = tmp, grid
        return grid

    def update(self, U: Tensor, q: Tensor, runs, extra: Optional[Tensor]) -> None:
        P, C = U.shape
        bp, bc = self.tk.blocks(C)
        a = runs[0] if runs else None
        b = runs[1] if len(runs) > 1 else a
        dummy_i = torch.zeros(1, dtype=torch.int32, device=U.device)
        dummy_f = torch.zeros(1, dtype=torch.float32, device=U.device)
        args = []
        for r in (a, b):
            args += [dummy_i, dummy_f, dummy_f] if r is None else [r[0].off32, r[1], r[2]]
        self.tk.crf_update_kernel[self._grid(P, C, per_tile=False)](
            U, q, dummy_f if extra is None else extra, *args, P, C,
            D1A=3 if a is None else a[0].d + 1, D1B=3 if b is None else b[0].d + 1,
            HAS1=a is not None, HAS2=len(runs) > 1, HAS_EXTRA=extra is not None, BLOCK_P=bp, BLOCK_C=bc,
            ONE_TILE=C <= bc)


class _CudaSteps:
    """The same steps as _TritonSteps with the CUDA C++ kernels of csrc/cuda/crf.cu."""

    def __init__(self, device):
        self.device = device

    def filter_grid(self, q: Tensor, lat, sw: Tensor) -> Tensor:
        P, C = q.shape
        grid = q.new_zeros((lat.M + 1, C))
        tmp = torch.empty_like(grid)
        tmp[lat.M].zero_()
        view = backends.view
        with backends.cuda_launch(self.device) as (kernels, stream):
            kernels.crf_splat(view(q), view(lat.off32), view(sw), view(grid), stream)
            for j in range(lat.d + 1):
                kernels.crf_blur(view(grid), view(tmp), view(lat.nb32[j]), stream)
                grid, tmp = tmp, grid
        return grid

    def update(self, U: Tensor, q: Tensor, runs, extra: Optional[Tensor]) -> None:
        view = backends.view
        views = []
        for k in range(2):
            lat, slw, grid = runs[k] if k < len(runs) else (None, None, None)
            views += [None if lat is None else view(lat.off32), view(slw), view(grid)]
        with backends.cuda_launch(self.device) as (kernels, stream):
            kernels.crf_update(view(U), view(q), view(extra), *views, stream)


def _slice(grid: Tensor, lat, w: Tensor) -> Tensor:
    return (w.unsqueeze(2) * grid[lat.offset]).sum(1)


def lattice_meanfield(u: Tensor, image: Tensor, kparams: list, mat: Tensor, iterations: int, normalization: int,
                      self_message: bool, steps) -> Tensor:
    """Mean field of a batch on lattice tensors: one batched lattice per kernel
    (torch sort/unique, every image its own group), iterations by ``steps``.
    Same semantics as the cpu op."""
    B, C, H, W = u.shape
    N, P = H * W, B * H * W
    dev = u.device
    U = u.permute(0, 2, 3, 1).reshape(P, C).to(torch.float32).contiguous()
    group = torch.arange(B, device=dev).repeat_interleave(N)
    fused, others = [], []
    for k in range(len(kparams) // 8):
        sx, sy, sr, sg, sb, bil, w, has_mat = kparams[8 * k: 8 * k + 8]
        f = _batch_features(image, (sx, sy), (sr, sg, sb) if bil else None)
        lat = ref.build_lattice(f, group)
        lat.off32 = lat.offset.to(torch.int32).contiguous()
        lat.nb32 = [lat.blur[j].to(torch.int32).contiguous() for j in range(lat.d + 1)]
        alpha = 1.0 / (1.0 + 2.0 ** (-lat.d))
        wt = lat.weight.to(torch.float32)
        ones = torch.ones((P, 1), dtype=torch.float32, device=dev)
        pre = post = torch.ones((P,), dtype=torch.float32, device=dev)
        if normalization != NORMALIZATIONS["none"]:
            k1 = alpha * _slice(steps.filter_grid(ones, lat, wt.contiguous()), lat, wt)[:, 0]
            if normalization == NORMALIZATIONS["symmetric"]:
                pre = post = torch.rsqrt(k1 + 1e-20)
            elif normalization == NORMALIZATIONS["after"]:
                post = 1.0 / (k1 + 1e-20)
            else:
                pre = 1.0 / (k1 + 1e-20)
        sw = (wt * pre.unsqueeze(1)).contiguous()
        scale = 1.0 if has_mat else w
        slw = (alpha * scale * wt * post.unsqueeze(1)).contiguous()
        selfw = None if self_message else pre * post
        if has_mat or len(fused) == 2:
            others.append((lat, sw, slw, mat[k] if has_mat else None, w, selfw))
        else:
            fused.append((lat, sw, slw, w, selfw))
    q = torch.softmax(-U, 1).contiguous()
    for _ in range(iterations):
        runs = [(lat, slw, steps.filter_grid(q, lat, sw)) for lat, sw, slw, _, _ in fused]
        extra = None
        for lat, _, _, w, selfw in fused:
            if selfw is not None:
                extra = (0 if extra is None else extra) - (w * selfw).unsqueeze(1) * q
        for lat, sw, slw, mu, w, selfw in others:
            S = _slice(steps.filter_grid(q, lat, sw), lat, slw)
            if selfw is not None:
                S = S - (selfw if mu is not None else w * selfw).unsqueeze(1) * q
            msg = -(S @ mu.T) if mu is not None else S
            extra = msg if extra is None else extra + msg
        q_new = torch.empty_like(q)
        steps.update(U, q_new, runs, None if extra is None else extra.contiguous())
        q = q_new
    return q.view(B, H, W, C).permute(0, 3, 1, 2).contiguous()


@torch.library.custom_op("segfast::dense_crf_triton", mutates_args=())
def dense_crf_triton_op(u: Tensor, image: Tensor, kparams: List[float], mat: Tensor, iterations: int,
                        normalization: int, self_message: bool) -> Tensor:
    """Triton form of :func:`dense_crf_cpu_op` (lattices built with torch on the device)."""
    return lattice_meanfield(u, image, kparams, mat.contiguous(), iterations, normalization, self_message,
                             _TritonSteps())


@torch.library.custom_op("segfast::dense_crf_cuda", mutates_args=())
def dense_crf_cuda_op(u: Tensor, image: Tensor, kparams: List[float], mat: Tensor, iterations: int,
                      normalization: int, self_message: bool) -> Tensor:
    """CUDA C++ form of :func:`dense_crf_cpu_op` (lattices built with torch on the device)."""
    return lattice_meanfield(u, image, kparams, mat.contiguous(), iterations, normalization, self_message,
                             _CudaSteps(u.device))


@dense_crf_cuda_op.register_fake
def _(u, image, kparams, mat, iterations, normalization, self_message):
    return u.new_empty(u.shape, dtype=torch.float32)


@dense_crf_triton_op.register_fake
def _(u, image, kparams, mat, iterations, normalization, self_message):
    return u.new_empty(u.shape, dtype=torch.float32)


# ---------------------------------------------------------------- pixel objectness


def pixel_objectness(proposals: Tensor, size=None) -> Tensor:
    """pos [B, H, W] in [0, 1]: the fraction of object proposals containing each pixel.

    Liu & Lew's POS-CRF term (the ``pos`` argument of :func:`dense_crf`).
    Boxes: pixel (x, y) is inside a box when its centre (x + 0.5, y + 0.5)
    lies in [x1, x2) x [y1, y2) (boxes are clipped to the image; empty or
    inverted boxes cover nothing but still count in G); cost O(G + H·W), a
    2-D difference array and two prefix sums. Masks: their mean over G.

    Args:
        proposals: boxes [B, G, 4] as (x1, y1, x2, y2) in pixel units (needs
            ``size``), or masks [B, G, H, W] (bool/uint8/float in [0, 1]).
        size: (H, W) of the image, for boxes.

    Returns:
        pos [B, H, W], float32; G = 0 gives zeros.

    Raises:
        ValueError: shapes that do not fit, boxes without ``size``.
        TypeError: an unsupported dtype.

    Example:
        >>> import torch, segfast
        >>> boxes = torch.tensor([[[0., 0., 4., 4.], [0., 0., 2., 2.]]])
        >>> pos = segfast.pixel_objectness(boxes, (4, 4))
        >>> pos[0, 0].tolist()
        [1.0, 1.0, 0.5, 0.5]
    """
    if not isinstance(proposals, Tensor):
        raise TypeError("proposals must be a tensor: boxes [B, G, 4] or masks [B, G, H, W]")
    if proposals.dim() == 4:  # masks
        B, G, H, W = proposals.shape
        if size is not None and tuple(size) != (H, W):
            raise ValueError(f"size {tuple(size)} does not match the masks' {(H, W)}")
        if G == 0:
            return torch.zeros((B, H, W), dtype=torch.float32, device=proposals.device)
        return proposals.to(torch.float32).mean(1)
    if proposals.dim() != 3 or proposals.shape[2] != 4:
        raise ValueError(f"proposals must be boxes [B, G, 4] or masks [B, G, H, W], got {tuple(proposals.shape)}")
    if size is None:
        raise ValueError("size=(H, W) is required for box proposals")
    H, W = (int(s) for s in size)
    if H < 0 or W < 0:
        raise ValueError(f"size must be >= 0, got {(H, W)}")
    B, G, _ = proposals.shape
    dev = proposals.device
    if G == 0 or H == 0 or W == 0:
        return torch.zeros((B, H, W), dtype=torch.float32, device=dev)
    bx = proposals.to(torch.float64)
    require(torch.isfinite(bx).all(), f"proposals (shape {tuple(proposals.shape)}) have non-finite coordinates")
    # pixel (x, y) counts when its centre (x + 0.5, y + 0.5) lies in [x1, x2) x [y1, y2):
    # columns ceil(x1 - 0.5) .. ceil(x2 - 0.5) - 1, clamped to the image
    c = torch.ceil(bx - 0.5)
    x1 = c[..., 0].clamp(0, W).long()
    y1 = c[..., 1].clamp(0, H).long()
    x2 = c[..., 2].clamp(0, W).long()
    y2 = c[..., 3].clamp(0, H).long()
    ok = (x2 > x1) & (y2 > y1)
    one = ok.to(torch.int32)
    # 2-D difference array [B, H+1, W+1]: +1 at (y1, x1) and (y2, x2), -1 at (y1, x2) and (y2, x1)
    diff = torch.zeros((B, (H + 1) * (W + 1)), dtype=torch.int32, device=dev)
    base = (W + 1)
    for yy, xx, s in ((y1, x1, 1), (y2, x2, 1), (y1, x2, -1), (y2, x1, -1)):
        diff.scatter_add_(1, yy * base + xx, s * one)
    cnt = diff.view(B, H + 1, W + 1).cumsum(1).cumsum(2)[:, :H, :W]
    return cnt.to(torch.float32) / G


# ---------------------------------------------------------------- Module


class DenseCRF(torch.nn.Module):
    """Module form of :func:`segfast.dense_crf`: holds the CRF parameters.

    Args:
        iterations: mean-field updates, >= 0.
        gaussian: :class:`segfast.Gaussian` spatial kernel, or None.
        bilateral: :class:`segfast.Bilateral` appearance kernel, or None.
        compat: overrides both kernels' compat (a number or a [C, C] matrix).
        normalization: "symmetric", "after", "before" or "none".
        method: "permutohedral" or "exact".
        unary_from: "energy", "logits" or "probs".
        self_message: whether the message sum includes the pixel itself.
        backend: "cpu", "triton", "cuda", "torch" or None (the device's default).

    Returns:
        Called as ``crf(unary, image, pos=None)``: the marginals Q
        [B, C, H, W] of :func:`segfast.dense_crf`.

    Raises:
        {module_raises}

    Example:
        >>> import torch, segfast
        >>> crf = segfast.DenseCRF(iterations=3, unary_from="logits")
        >>> image = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8)
        >>> crf(torch.randn(1, 2, 16, 16), image).shape
        torch.Size([1, 2, 16, 16])
    """

    def __init__(self, iterations: int = 5, gaussian=Gaussian(), bilateral=Bilateral(), compat=None,
                 normalization: str = "symmetric", method: str = "permutohedral", unary_from: str = "energy",
                 self_message: bool = True, backend=None):
        super().__init__()
        self.kwargs = dict(iterations=iterations, gaussian=gaussian, bilateral=bilateral, compat=compat,
                           normalization=normalization, method=method, unary_from=unary_from,
                           self_message=self_message, backend=backend)

    def forward(self, unary: torch.Tensor, image: torch.Tensor, pos=None) -> torch.Tensor:
        return dense_crf(unary, image, pos=pos, **self.kwargs)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())


_doc.fill_modules(globals(), __name__, default_fn="dense_crf")
