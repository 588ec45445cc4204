"""Eager PyTorch reference of the dense CRF family (the test oracle).

* :func:`features`: the kernel feature vectors of pydensecrf's DenseCRF2D
  (x/sx, y/sy for the Gaussian kernel; x/sx, y/sy, r/sr, g/sg, b/sb for the
  bilateral one; x is the column, y the row).
* :func:`exact_filter`: the O(N²) Gaussian filter K·V, K_ij = exp(-|f_i - f_j|²/2)
  (i = j included).
* :func:`build_lattice` / :func:`lattice_filter`: a readable permutohedral
  lattice (Adams, Baek and Davis, Eurographics 2010) with the conventions of
  Krähenbühl's implementation that pydensecrf wraps (elevation, rounding to
  the nearest remainder-0 point, barycentric weights, one [1/2, 1, 1/2] blur
  per lattice direction, slice scaled by 1/(1 + 2^-d)). The lattice points
  are found with sort/unique of the integer keys: no hash table, any device.
* :func:`mean_field`: the mean-field loop of one image, one kernel filter per
  pairwise term; :func:`dense_crf` loops over the batch.
* :func:`pixel_objectness_naive`: O(G·H·W) fraction of proposals covering a pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

# ---------------------------------------------------------------- features


def features(H: int, W: int, sxy: Sequence[float], image: Optional[Tensor] = None,
             srgb: Optional[Sequence[float]] = None, dtype=torch.float32, device=None) -> Tensor:
    """[N, d] kernel features of the pixels in row-major order (pixel j = y*W + x).

    Computed as pydensecrf does, in float32 by default: a float32 division per
    coordinate, so the lattice sees the same numbers.
    """
    device = image.device if image is not None else device
    ys, xs = torch.meshgrid(torch.arange(H, device=device, dtype=dtype),
                            torch.arange(W, device=device, dtype=dtype), indexing="ij")
    cols = [xs.reshape(-1) / sxy[0], ys.reshape(-1) / sxy[1]]
    if image is not None:
        im = image.reshape(3, H * W).to(dtype)
        cols += [im[k] / srgb[k] for k in range(3)]
    return torch.stack(cols, 1)


# ---------------------------------------------------------------- exact filter


def exact_kernel(f: Tensor) -> Tensor:
    """K [N, N], K_ij = exp(-|f_i - f_j|² / 2), in f's dtype."""
    return torch.exp(-0.5 * torch.cdist(f, f).square())


def exact_filter(f: Tensor, values: Tensor) -> Tensor:
    """K·values for values [N, C] (O(N²) memory: small images only)."""
    return exact_kernel(f.to(values.dtype)) @ values


# ---------------------------------------------------------------- permutohedral lattice


@dataclass
class Lattice:
    """One image's lattice: pixel i splats onto points ``offset[i, r]`` with
    weights ``weight[i, r]`` (r = 0..d); ``blur[j, p]`` are the two neighbours
    of point p along direction j (M, a zero row, where the neighbour does not
    exist)."""

    d: int
    M: int
    offset: Tensor  # [N, d+1] int64
    weight: Tensor  # [N, d+1]
    blur: Tensor  # [d+1, M, 2] int64


def elevate(f: Tensor):
    """-> (rem0 [N, d+1] int64, rank [N, d+1] int64, barycentric [N, d+1]) of
    the features f [N, d] (float32 for pydensecrf's rounding)."""
    N, d = f.shape
    dev, dt = f.device, f.dtype
    inv_std = float(torch.tensor(math.sqrt(2.0 / 3.0) * (d + 1), dtype=torch.float32))  # a float, as pydensecrf's
    scale = torch.tensor([1.0 / math.sqrt((i + 1) * (i + 2)) * inv_std for i in range(d)], dtype=dt, device=dev)
    cf = f * scale  # [N, d]
    # elevated[j] = sum_{k >= j} cf[k] - j*cf[j-1] (j >= 1), elevated[0] = sum cf; the running
    # sum in f's dtype from the last coordinate down, as pydensecrf (torch.cumsum would
    # accumulate float32 in float64 and round differently)
    el = torch.empty((N, d + 1), dtype=dt, device=dev)
    sm = torch.zeros((N,), dtype=dt, device=dev)
    for j in range(d, 0, -1):
        el[:, j] = sm - j * cf[:, j - 1]
        sm = sm + cf[:, j - 1]
    el[:, 0] = sm
    # nearest point of the remainder-0 sublattice (multiples of d+1)
    down = torch.tensor(1.0 / (d + 1), dtype=dt, device=dev)
    rem0 = torch.round(el * down) * (d + 1)  # round half to even
    s = torch.round(rem0.sum(1) / (d + 1)).long()  # (sum of rem0) / (d+1)
    diff = el - rem0
    # rank[i] = #{j : diff_j > diff_i} with ties broken by index (j < i counts when diff_j >= diff_i)
    di, dj = diff.unsqueeze(2), diff.unsqueeze(1)
    idx = torch.arange(d + 1, device=dev)
    before = (idx.view(1, -1) < idx.view(-1, 1)).unsqueeze(0)  # [1, i, j]: j < i
    rank = torch.where(before, dj >= di, dj > di).sum(2)
    rank = rank + s.unsqueeze(1)
    rem0 = rem0.long()
    low, high = rank < 0, rank > d
    rank = torch.where(low, rank + d + 1, torch.where(high, rank - d - 1, rank))
    rem0 = torch.where(low, rem0 + d + 1, torch.where(high, rem0 - d - 1, rem0))
    v = (el - rem0.to(dt)) * down
    bary = torch.zeros((N, d + 2), dtype=dt, device=dev)
    bary.scatter_add_(1, d - rank, v)
    bary.scatter_add_(1, d - rank + 1, -v)
    bary[:, 0] += 1.0 + bary[:, d + 1]
    return rem0, rank, bary[:, : d + 1]


def _pack(keys: Tensor, lo: Tensor, span: Tensor) -> Tensor:
    """Mixed-radix int64 code of integer keys [..., d] with per-coordinate
    minimum ``lo`` and radix ``span`` (keys outside the box get -1)."""
    code = torch.zeros(keys.shape[:-1], dtype=torch.int64, device=keys.device)
    inside = torch.ones(keys.shape[:-1], dtype=torch.bool, device=keys.device)
    for k in range(keys.shape[-1]):
        c = keys[..., k] - lo[k]
        inside &= (c >= 0) & (c < span[k])
        code = code * span[k] + c
    return torch.where(inside, code, -1)


def build_lattice(f: Tensor, group: Optional[Tensor] = None) -> Lattice:
    """The permutohedral lattice of features f [N, d]. ``group`` [N] (int64,
    optional) puts the pixels of each group (e.g. each image of a batch) on a
    lattice of their own: the group is the leading key coordinate, so one
    sort/unique builds the lattices of a whole batch."""
    N, d = f.shape
    dev = f.device
    rem0, rank, bary = elevate(f)
    r = torch.arange(d + 1, device=dev)
    # vertex r of the simplex: key_i = rem0_i + r - (d+1)·[rank_i > d - r], first d coordinates
    keys = rem0[:, None, :d] + r.view(1, -1, 1) - (d + 1) * (rank[:, None, :d] > (d - r).view(1, -1, 1)).long()
    if group is not None:
        keys = torch.cat([group.view(N, 1, 1).expand(N, d + 1, 1).long(), keys], 2)
    kd = keys.shape[2]  # key coordinates: d, or 1 + d with the group first
    g0 = kd - d  # index of the first lattice coordinate
    flat = keys.reshape(-1, kd)
    if flat.shape[0] == 0:
        return Lattice(d=d, M=0, offset=torch.zeros((0, d + 1), dtype=torch.int64, device=dev), weight=bary,
                       blur=torch.zeros((d + 1, 0, 2), dtype=torch.int64, device=dev))
    pad = torch.full((kd,), d + 1, dtype=torch.int64, device=dev)
    pad[:g0] = 0
    lo = flat.amin(0) - pad
    span = flat.amax(0) + pad - lo + 1
    packed = float(torch.prod(span.double())) < 2.0 ** 62
    if packed:  # one int64 per key: sort/unique of scalars
        uniq, inv = torch.unique(_pack(flat, lo, span), sorted=True, return_inverse=True)
        ukeys = _unpack(uniq, lo, span)
    else:  # huge coordinate ranges: lexicographic unique of the key rows
        ukeys, inv = torch.unique(flat, dim=0, return_inverse=True)
    M = ukeys.shape[0]
    nb = []
    for j in range(d + 1):  # neighbours along direction j: key - 1 (+ (d+1) at coordinate j)
        n1, n2 = ukeys.clone(), ukeys.clone()
        n1[:, g0:] -= 1
        n2[:, g0:] += 1
        if j < d:
            n1[:, g0 + j] += d + 1
            n2[:, g0 + j] -= d + 1
        if packed:
            nb.append(torch.stack([_find(uniq, _pack(n1, lo, span)), _find(uniq, _pack(n2, lo, span))], 1))
        else:
            nb.append(torch.stack([_find_rows(ukeys, n1), _find_rows(ukeys, n2)], 1))
    return Lattice(d=d, M=M, offset=inv.view(N, d + 1), weight=bary, blur=torch.stack(nb, 0))


def _unpack(code: Tensor, lo: Tensor, span: Tensor) -> Tensor:
    d = lo.numel()
    out = torch.empty((code.numel(), d), dtype=torch.int64, device=code.device)
    c = code.clone()
    for k in reversed(range(d)):
        out[:, k] = c % span[k] + lo[k]
        c = torch.div(c, span[k], rounding_mode="floor")
    return out


def _find(sorted_codes: Tensor, codes: Tensor) -> Tensor:
    """Index of each code in sorted_codes, or len(sorted_codes) if absent (-1 codes: absent)."""
    M = sorted_codes.numel()
    pos = torch.searchsorted(sorted_codes, codes).clamp_max(M - 1)
    hit = (sorted_codes[pos] == codes) & (codes >= 0)
    return torch.where(hit, pos, M)


def _find_rows(rows: Tensor, queries: Tensor) -> Tensor:
    """Index of each query row among the unique ``rows``, or len(rows) if absent."""
    M = rows.shape[0]
    both = torch.cat([rows, queries], 0)
    _, inv = torch.unique(both, dim=0, return_inverse=True)
    slot = torch.full((int(inv.max()) + 1,), M, dtype=torch.int64, device=rows.device)
    slot[inv[:M]] = torch.arange(M, device=rows.device)
    return slot[inv[M:]]


def lattice_filter(lat: Lattice, values: Tensor) -> Tensor:
    """Approximate K·values [N, C] through the lattice (splat, blur, slice)."""
    N, C = values.shape
    d = lat.d
    w = lat.weight.to(values.dtype)
    grid = values.new_zeros((lat.M + 1, C))  # row M: the missing neighbour, always 0
    grid.index_add_(0, lat.offset.reshape(-1), (w.unsqueeze(2) * values.unsqueeze(1)).reshape(-1, C))
    for j in range(d + 1):
        nb = lat.blur[j]
        new = grid.clone()
        new[: lat.M] += 0.5 * (grid[nb[:, 0]] + grid[nb[:, 1]])
        grid = new
    alpha = 1.0 / (1.0 + 2.0 ** (-d))
    return alpha * (w.unsqueeze(2) * grid[lat.offset]).sum(1)


# ---------------------------------------------------------------- mean field

NORMALIZATIONS = ("symmetric", "after", "before", "none")


def normalized_filter(filt: Callable[[Tensor], Tensor], N: int, normalization: str, dtype, device):
    """-> (Q -> K̃·Q): K̃ = diag(n)·K·diag(n), n = 1/sqrt(K·1) ("symmetric"),
    diag(1/K·1)·K ("after", NIPS'11), K·diag(1/K·1) ("before"), K ("none")."""
    if normalization == "none":
        return filt
    ones = torch.ones((N, 1), dtype=dtype, device=device)
    k1 = filt(ones)
    if normalization == "symmetric":
        n = 1.0 / torch.sqrt(k1 + 1e-20)
        return lambda q: n * filt(n * q)
    n = 1.0 / (k1 + 1e-20)
    if normalization == "after":
        return lambda q: n * filt(q)
    return lambda q: filt(n * q)


def mean_field(unary: Tensor, filters: list, compats: list, iterations: int, self_weights: Optional[list] = None):
    """Mean field of one image: unary [N, C] energies; filters[m]: Q [N, C] ->
    K̃_m Q; compats[m]: [C, C] matrix μ_m. Q0 = softmax(-U), then
    ``iterations`` times Q = softmax(-U - Σ_m (K̃_m Q) μ_mᵀ).

    ``self_weights[m]`` ([N, 1] or None): the i = j term of K̃_m, subtracted
    from the message when the self-message is removed.
    """
    q = torch.softmax(-unary, 1)
    for _ in range(iterations):
        logits = -unary
        for m, (filt, mu) in enumerate(zip(filters, compats)):
            kq = filt(q)
            if self_weights is not None and self_weights[m] is not None:
                kq = kq - self_weights[m] * q
            logits = logits - kq @ mu.T
        q = torch.softmax(logits, 1)
    return q


def potts(C: int, w: float, dtype=torch.float64, device=None) -> Tensor:
    """pydensecrf's PottsCompatibility(w) as a matrix: -w·I (it applies -w·Q)."""
    return -w * torch.eye(C, dtype=dtype, device=device)


def dense_crf(unary: Tensor, image: Tensor, kernels: list, iterations: int, normalization: str = "symmetric",
              method: str = "exact", self_message: bool = True, dtype=torch.float64) -> Tensor:
    """Loop over the batch: unary [B, C, H, W] energies (POS already applied),
    image [B, 3, H, W] on the 0-255 scale, kernels: list of (sxy (sx, sy), srgb
    (sr, sg, sb) or None, compat [C, C]). -> Q [B, C, H, W] in ``dtype``."""
    B, C, H, W = unary.shape
    N = H * W
    out = []
    for b in range(B):
        filters, compats, selfw = [], [], []
        for sxy, srgb, mu in kernels:
            # the lattice sees pydensecrf's float32 features; the exact sum uses ``dtype``
            fdt = dtype if method == "exact" else torch.float32
            f = features(H, W, sxy, image[b] if srgb is not None else None, srgb, dtype=fdt, device=unary.device)
            if method == "exact":
                filt = (lambda f: lambda v: exact_filter(f, v))(f)
            else:
                lat = build_lattice(f)
                filt = (lambda lat: lambda v: lattice_filter(lat, v))(lat)
            kt = normalized_filter(filt, N, normalization, dtype, unary.device)
            filters.append(kt)
            compats.append(mu.to(dtype=dtype, device=unary.device))
            selfw.append(None if self_message else _self_weight(filt, N, normalization, dtype, unary.device))
        u = unary[b].reshape(C, N).T.to(dtype)
        out.append(mean_field(u, filters, compats, iterations, selfw).T.reshape(C, H, W))
    return torch.stack(out) if out else unary.new_zeros((0, C, H, W), dtype=dtype)


def _self_weight(filt, N, normalization, dtype, device) -> Tensor:
    """The i = j term of K̃ with K_ii = exp(0) = 1: n_i² (symmetric), n_i (after/before), 1 (none)."""
    if normalization == "none":
        return torch.ones((N, 1), dtype=dtype, device=device)
    k1 = filt(torch.ones((N, 1), dtype=dtype, device=device))
    return 1.0 / (k1 + 1e-20)


# ---------------------------------------------------------------- pixel objectness


def pixel_objectness_naive(proposals: Tensor, size) -> Tensor:
    """O(G·H·W) reference: boxes [B, G, 4] xyxy in pixel units (pixel (x, y)
    is covered when its centre (x + 0.5, y + 0.5) lies in [x1, x2) x [y1, y2))
    or masks [B, G, H, W] (mean over G). G = 0 gives zeros."""
    H, W = size
    if proposals.dim() == 4:
        B, G = proposals.shape[:2]
        if G == 0:
            return torch.zeros((B, H, W), dtype=torch.float32, device=proposals.device)
        return proposals.to(torch.float64).mean(1).to(torch.float32)
    B, G, _ = proposals.shape
    out = torch.zeros((B, H, W), dtype=torch.float64, device=proposals.device)
    cy = torch.arange(H, device=proposals.device, dtype=torch.float64).view(H, 1) + 0.5
    cx = torch.arange(W, device=proposals.device, dtype=torch.float64).view(1, W) + 0.5
    for b in range(B):
        for g in range(G):
            x1, y1, x2, y2 = proposals[b, g].double().tolist()
            out[b] += ((cx >= x1) & (cx < x2) & (cy >= y1) & (cy < y2)).double()
    return (out / max(G, 1)).to(torch.float32)
