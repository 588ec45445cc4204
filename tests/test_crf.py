"""Dense CRF family: the permutohedral lattice against the exact filter, every
backend against the reference, pydensecrf parity, pixel objectness, errors.

Tolerances. The permutohedral lattice is an approximation of the Gaussian
filter (its impulse response is close to a Gaussian about 1.1x wider, and not
exactly isotropic; pydensecrf's lattice is the same): the normalized filter
K·v / K·1 of smooth values on smooth images agrees with the exact O(N²) filter
to a mean absolute error <= 1.5e-2 (max <= 0.25) for v in [0, 1]. The C++
lattice equals the torch reference lattice point for point; CRF marginals of
the cpu and torch backends agree to 1e-4, and with pydensecrf to 1e-4 (float32
rounding differences only).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import segfast
from segfast import backends
from segfast.ops import crf as ops
from segfast.reference import crf as ref

CPU_BUILT = backends.unavailable_reason("cpu", torch.device("cpu")) is None
BACKENDS = ["torch"] + (["cpu"] if CPU_BUILT else [])
needs_cpu = pytest.mark.skipif(not CPU_BUILT, reason="segfast._C not built")


# ---------------------------------------------------------------- data


def smooth(shape, k, seed):
    """[c, H, W] in [0, 1]: bicubic upsampling of a k x k random field."""
    g = torch.Generator().manual_seed(seed)
    c, H, W = shape
    return F.interpolate(torch.rand((1, c, k, k), generator=g), size=(H, W), mode="bicubic",
                         align_corners=False)[0].clamp(0, 1)


def scene(H, W, C, seed, noise=8.0):
    """A natural-looking image and its ground truth: C-1 discs and boxes of
    flat colour on a smooth background, plus mild noise. -> (image uint8 [3, H, W], gt [H, W])."""
    g = torch.Generator().manual_seed(seed)
    img = smooth((3, H, W), 3, seed) * 120 + 60
    gt = torch.zeros((H, W), dtype=torch.long)
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    for c in range(1, C):
        cy, cx = float(torch.rand((), generator=g)) * H, float(torch.rand((), generator=g)) * W
        r = (0.08 + 0.15 * float(torch.rand((), generator=g))) * min(H, W)
        if c % 2:
            inside = (ys - cy) ** 2 + (xs - cx) ** 2 < r ** 2
        else:
            inside = ((ys - cy).abs() < r) & ((xs - cx).abs() < 1.3 * r)
        colour = torch.rand(3, generator=g) * 255
        img[:, inside] = colour.view(3, 1)
        gt[inside] = c
    img = img + noise * torch.randn((3, H, W), generator=g)
    return img.round().clamp(0, 255).to(torch.uint8), gt


def noisy_unary(gt, C, seed, strength=1.0, noise=1.2):
    """Energies of a noisy classifier: -log softmax(strength·onehot + noise)."""
    g = torch.Generator().manual_seed(seed)
    logits = strength * F.one_hot(gt, C).permute(2, 0, 1).float() + noise * torch.randn((C, *gt.shape), generator=g)
    return -torch.log_softmax(logits, 0)


def batch(B, C, H, W, seed=0):
    imgs, us, gts = [], [], []
    for b in range(B):
        im, gt = scene(H, W, min(C, 6), seed + b)
        imgs.append(im)
        us.append(noisy_unary(gt, C, seed + 10 + b))
        gts.append(gt)
    return torch.stack(us), torch.stack(imgs), torch.stack(gts)


# ---------------------------------------------------------------- lattice


@needs_cpu
@pytest.mark.parametrize("bilateral", [False, True])
def test_cpu_lattice_equals_torch_lattice(bilateral):
    im, _ = scene(23, 31, 4, 1)
    f = ref.features(23, 31, (5.0, 4.0), im if bilateral else None, (13.0, 11.0, 17.0) if bilateral else None)
    a, b = ref.build_lattice(f), ops.lattice_cpu(f)
    assert a.M == b.M and a.M > 10
    # same simplices and weights; point numbering may differ, so compare through filtering
    torch.testing.assert_close(b.weight, a.weight, rtol=0, atol=1e-5)
    v = torch.rand(f.shape[0], 3, dtype=torch.float64)
    torch.testing.assert_close(ref.lattice_filter(b, v), ref.lattice_filter(a, v), rtol=1e-6, atol=1e-6)


@needs_cpu
def test_cpu_lattice_built_in_bands_equals_one_band():
    """Large images are inserted by several threads (a table per band, then merged)."""
    im, _ = scene(97, 101, 5, 3)
    f = ref.features(97, 101, (80.0, 80.0), im, (13.0, 13.0, 13.0))
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.lattice_cpu(f)
        torch.set_num_threads(3)
        many = ops.lattice_cpu(f)
    finally:
        torch.set_num_threads(old)
    assert one.M == many.M
    v = torch.rand(f.shape[0], 2, dtype=torch.float64)
    torch.testing.assert_close(ref.lattice_filter(many, v), ref.lattice_filter(one, v), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ref.lattice_filter(many, v), ref.lattice_filter(ref.build_lattice(f), v),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("sxy,srgb", [((3.0, 3.0), None), ((5.0, 5.0), (30.0, 30.0, 30.0)),
                                      ((80.0, 80.0), (13.0, 13.0, 13.0))])
def test_permutohedral_filter_vs_exact(seed, sxy, srgb):
    H, W = 29, 37
    img = smooth((3, H, W), 4, seed) * 255
    vals = torch.softmax(4 * smooth((3, H, W), 3, seed + 100), 0).reshape(3, -1).T.double()
    f = ref.features(H, W, sxy, img if srgb else None, srgb)
    lat = ref.build_lattice(f)
    ones = torch.ones((H * W, 1), dtype=torch.float64)
    approx = ref.lattice_filter(lat, vals) / ref.lattice_filter(lat, ones)
    exact = ref.exact_filter(f.double(), vals) / ref.exact_filter(f.double(), ones)
    err = (approx - exact).abs()
    assert err.mean() <= 1.5e-2 and err.max() <= 0.25, (err.mean(), err.max())
    # the test can fail: no filtering at all is much further from the exact filter
    assert (vals - exact).abs().mean() > 3 * err.mean()


# ---------------------------------------------------------------- exact method vs a plain loop


def plain_loop_crf(U, img, iterations, w_g, sxy_g, w_b, sxy_b, srgb):
    """Mean field of one image written out in float64 with explicit N x N kernels."""
    C, H, W = U.shape
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64),
                            indexing="ij")
    p = torch.stack([xs.reshape(-1), ys.reshape(-1)], 1)
    rgb = img.reshape(3, -1).T.double()
    d2p = ((p[:, None] - p[None]) ** 2).sum(-1)
    d2c = ((rgb[:, None] - rgb[None]) ** 2).sum(-1)
    Kg = torch.exp(-d2p / (2 * sxy_g ** 2))
    Kb = torch.exp(-d2p / (2 * sxy_b ** 2) - d2c / (2 * srgb ** 2))
    u = U.reshape(C, -1).double()
    q = torch.softmax(-u, 0)
    ng, nb = Kg.sum(1) ** -0.5, Kb.sum(1) ** -0.5
    for _ in range(iterations):
        msg = w_g * ng * ((ng * q) @ Kg.T) + w_b * nb * ((nb * q) @ Kb.T)
        q = torch.softmax(-u + msg, 0)
    return q.reshape(C, H, W)


@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_method_matches_plain_loop(backend):
    U, img, _ = batch(2, 4, 9, 11)
    got = segfast.dense_crf(U.double(), img, iterations=3, method="exact", backend=backend,
                            gaussian=segfast.Gaussian(2.0, 3.0), bilateral=segfast.Bilateral(6.0, 20.0, 5.0))
    for b in range(2):
        want = plain_loop_crf(U[b], img[b], 3, 3.0, 2.0, 5.0, 6.0, 20.0)
        torch.testing.assert_close(got[b], want, rtol=1e-9, atol=1e-10)


# ---------------------------------------------------------------- backends vs the reference


@needs_cpu
# each shape once, each normalization on two of them (the normalization is a
# per-pixel scale, independent of the class count and the image's shape)
@pytest.mark.parametrize("C,H,W,normalization", [(2, 17, 23, "symmetric"), (21, 16, 19, "after"),
                                                 (60, 9, 13, "symmetric"), (3, 1, 7, "after")])
def test_cpu_matches_torch(C, H, W, normalization):
    U, img, _ = batch(2, C, H, W, seed=C)
    kw = dict(iterations=4, normalization=normalization, bilateral=segfast.Bilateral(8.0, 13.0, 10.0))
    got = segfast.dense_crf(U, img, backend="cpu", **kw)
    want = segfast.dense_crf(U, img, backend="torch", **kw)
    assert got.shape == (2, C, H, W) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    torch.testing.assert_close(got.sum(1), torch.ones(2, H, W), rtol=0, atol=1e-5)


@needs_cpu
@pytest.mark.parametrize("case", ["float_image", "noncontig", "fp16_unary", "matrix", "no_self", "before",
                                  "none", "one_kernel", "gaussian_only", "aniso", "pos", "logits", "probs"])
def test_cpu_matches_torch_options(case):
    C, H, W = 5, 14, 17
    U, img, _ = batch(1, C, H, W, seed=3)  # batches: test_cpu_matches_torch
    kw = dict(iterations=3)
    if case == "float_image":
        img = img.float() + 0.25
    elif case == "noncontig":
        U = U.permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)
        img = img.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    elif case == "fp16_unary":
        U = U.half()
    elif case == "matrix":
        mu = torch.rand(C, C) * 4
        kw["compat"] = mu
    elif case == "no_self":
        kw["self_message"] = False
    elif case in ("before", "none"):
        kw["normalization"] = case
        kw["bilateral"] = segfast.Bilateral(5.0, 20.0, 0.3)
        kw["gaussian"] = segfast.Gaussian(2.0, 0.2)
    elif case == "one_kernel":
        kw["gaussian"] = None
    elif case == "gaussian_only":
        kw["bilateral"] = None
    elif case == "aniso":
        kw["gaussian"] = segfast.Gaussian((2.0, 4.0), 2.0)
        kw["bilateral"] = segfast.Bilateral((20.0, 9.0), (10.0, 13.0, 30.0), 6.0)
    elif case == "pos":
        kw["pos"] = torch.rand(1, H, W)
    elif case == "logits":
        kw["unary_from"] = "logits"
    elif case == "probs":
        U = torch.softmax(-U, 1)
        kw["unary_from"] = "probs"
    got = segfast.dense_crf(U, img, backend="cpu", **kw)
    want = segfast.dense_crf(U, img, backend="torch", **kw)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


@needs_cpu
def test_compat_matrix_potts_equivalence():
    """μ = -w·I is pydensecrf's Potts; μ = w·(1 - I) is the textbook form: same marginals."""
    C = 4
    U, img, _ = batch(1, C, 12, 15, seed=5)
    g, bl = segfast.Gaussian(3.0, 3.0), segfast.Bilateral(10.0, 13.0, 3.0)
    base = segfast.dense_crf(U, img, gaussian=g, bilateral=bl, compat=3.0, backend="cpu")
    for mu in (-3.0 * torch.eye(C), 3.0 * (1 - torch.eye(C))):
        got = segfast.dense_crf(U, img, gaussian=g, bilateral=bl, compat=mu, backend="cpu")
        torch.testing.assert_close(got, base, rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batched_equals_one_by_one(backend):
    U, img, _ = batch(3, 6, 15, 18, seed=7)
    whole = segfast.dense_crf(U, img, backend=backend)
    for b in range(3):
        one = segfast.dense_crf(U[b:b + 1], img[b:b + 1], backend=backend)
        torch.testing.assert_close(whole[b:b + 1], one, rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_uint8_and_float_images_agree(backend):
    U, img, _ = batch(1, 3, 13, 16, seed=8)
    a = segfast.dense_crf(U, img, backend=backend)
    b = segfast.dense_crf(U, img.double(), backend=backend)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_pos_is_the_pos_crf_unary():
    """θ_0 = -log p_0, θ_k = -log(p_k·exp(pos)) for k >= 1."""
    C, H, W = 3, 10, 12
    probs = torch.softmax(torch.randn(1, C, H, W), 1)
    pos = torch.rand(1, H, W)
    img = (smooth((3, H, W), 3, 0) * 255)[None]
    theta = -torch.log(probs.clamp_min(1e-5))
    theta[:, 1:] = -torch.log(probs[:, 1:].clamp_min(1e-5) * torch.exp(pos).unsqueeze(1))
    got = segfast.dense_crf(probs, img, unary_from="probs", pos=pos, backend="torch")
    want = segfast.dense_crf(theta, img, backend="torch")
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_unary_from_logits():
    x = torch.randn(2, 4, 8, 9)
    img = torch.rand(2, 3, 8, 9) * 255
    a = segfast.dense_crf(x, img, unary_from="logits", backend="torch")
    b = segfast.dense_crf(-torch.log_softmax(x, 1), img, backend="torch")
    torch.testing.assert_close(a, b)


def test_torch_backend_is_differentiable():
    x = torch.randn(1, 3, 6, 7, dtype=torch.float64, requires_grad=True)
    img = torch.rand(1, 3, 6, 7, dtype=torch.float64) * 255
    q = segfast.dense_crf(x, img, unary_from="logits", iterations=2, method="exact", backend="torch")
    q[:, 1].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_module_matches_functional():
    U, img, _ = batch(2, 3, 11, 12)
    crf = segfast.DenseCRF(iterations=3, bilateral=segfast.Bilateral(30.0, 10.0, 5.0))
    torch.testing.assert_close(crf(U, img), segfast.dense_crf(U, img, iterations=3,
                                                              bilateral=segfast.Bilateral(30.0, 10.0, 5.0)))
    assert "iterations=3" in repr(crf)


@needs_cpu
def test_opcheck():
    U, img, _ = batch(1, 3, 6, 7)
    kp = [3.0, 3.0, 1.0, 1.0, 1.0, 0.0, 3.0, 0.0, 80.0, 80.0, 13.0, 13.0, 13.0, 1.0, 10.0, 0.0]
    mat = torch.zeros(2, 3, 3)
    torch.library.opcheck(ops.dense_crf_cpu_op, (U, img, kp, mat, 2, 0, True))


def test_empty_inputs():
    for B, H, W in [(0, 5, 6), (2, 0, 6), (1, 4, 0)]:
        q = segfast.dense_crf(torch.zeros(B, 3, H, W), torch.zeros(B, 3, H, W, dtype=torch.uint8))
        assert q.shape == (B, 3, H, W)


# ---------------------------------------------------------------- pydensecrf parity


@pytest.fixture(scope="module")
def dcrf():
    return pytest.importorskip("pydensecrf.densecrf")


def pydensecrf_run(dcrf, U, img, iterations, gsxy=3, gcompat=3, bsxy=80, srgb=13, bcompat=10,
                   normalization=None):
    import numpy as np

    C, H, W = U.shape
    norm = dcrf.NORMALIZE_SYMMETRIC if normalization is None else normalization
    d = dcrf.DenseCRF2D(W, H, C)
    d.setUnaryEnergy(np.ascontiguousarray(U.reshape(C, -1).numpy().astype(np.float32)))
    d.addPairwiseGaussian(sxy=gsxy, compat=gcompat, normalization=norm)
    d.addPairwiseBilateral(sxy=bsxy, srgb=srgb, rgbim=np.ascontiguousarray(img.permute(1, 2, 0).numpy()),
                           compat=bcompat, normalization=norm)
    return torch.from_numpy(np.array(d.inference(iterations))).reshape(C, H, W)


@needs_cpu
def test_cpu_crf_threads_agree():
    """A large image is split in bands, one per thread: a hash table each while
    the lattice is built, and grid parts each that every splat scatters into
    and that are summed point by point. A thread count gives the same bits on
    every call; other counts differ only by the order of those sums. Odd
    width: U tiles with a tail."""
    U, img, _ = batch(1, 21, 251, 307, seed=11)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = segfast.dense_crf(U, img, iterations=3, backend="cpu")
        torch.set_num_threads(3)
        assert ops._crf_threads(U) == 3
        many = segfast.dense_crf(U, img, iterations=3, backend="cpu")
        assert torch.equal(many, segfast.dense_crf(U, img, iterations=3, backend="cpu"))
        # a batch of large images runs them one after the other on every thread
        U2, img2 = U.flip(-1).contiguous(), img.flip(-1).contiguous()
        both = segfast.dense_crf(torch.cat([U, U2]), torch.cat([img, img2]), iterations=3, backend="cpu")
        assert torch.equal(both[:1], many)
        assert torch.equal(both[1:], segfast.dense_crf(U2, img2, iterations=3, backend="cpu"))
    finally:
        torch.set_num_threads(old)
    torch.testing.assert_close(many, one, rtol=0, atol=1e-6)
    want = segfast.dense_crf(U.double(), img, iterations=3, backend="cpu")  # U read through the generic path
    torch.testing.assert_close(many, want.float(), rtol=0, atol=1e-5)


@needs_cpu
@pytest.mark.parametrize("self_message", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_cpu_crf_batch_reuses_buffers(self_message):
    """The images of a batch run one after the other in the same buffers
    (lattices, grids, grid parts, marginals), resized from image to image:
    images whose lattices differ a lot in size (a scene, a flat image, a
    noisy one) give the bits they give alone, in either order, large or small."""
    for H, W in ((251, 307), (61, 67)):  # one image at a time / one image per thread
        U, img, _ = batch(1, 5, H, W, seed=3)
        flat = torch.full_like(img, 0.5)
        noise = torch.rand(img.shape, generator=torch.Generator().manual_seed(4))
        imgs = torch.cat([img, flat, noise, img])
        Us = torch.cat([U, U.flip(-1), U.flip(-2), U.roll(5, -1)]).contiguous()
        kw = dict(iterations=2, backend="cpu", self_message=self_message)
        got = segfast.dense_crf(Us, imgs, **kw)
        for b in range(4):
            assert torch.equal(got[b:b + 1], segfast.dense_crf(Us[b:b + 1], imgs[b:b + 1], **kw)), (H, b)
        got = segfast.dense_crf(Us.flip(0), imgs.flip(0), **kw)
        assert torch.equal(got.flip(0)[1:2], segfast.dense_crf(Us[1:2], imgs[1:2], **kw))


@needs_cpu
# the normalizations scale each pixel alone (test_cpu_matches_torch covers them): slow tier here
@pytest.mark.parametrize("case", ["no_self", "matrix", pytest.param("after", marks=pytest.mark.slow),
                                  pytest.param("none", marks=pytest.mark.slow)])
def test_cpu_options_on_several_threads(case):
    """The option paths with the pixels split in bands: the marginals kept for
    self-message removal, matrix compatibilities, the other normalizations."""
    C, H, W = 21, 96, 101  # the smallest image split in 3 bands (C * H * W elements decide)
    U, img, _ = batch(1, C, H, W, seed=13)
    kw = dict(iterations=3)
    if case == "no_self":
        kw["self_message"] = False
    elif case == "matrix":
        kw["compat"] = torch.rand(C, C) * 4
    else:
        kw["normalization"] = case
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        assert ops._crf_threads(U) == 3
        got = segfast.dense_crf(U, img, backend="cpu", **kw)
    finally:
        torch.set_num_threads(old)
    want = segfast.dense_crf(U, img, backend="torch", **kw)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("C", [2, 21])
def test_pydensecrf_parity(dcrf, backend, C):
    H, W = 48, 61
    U, img, gt = batch(2, C, H, W, seed=20 + C)
    q = segfast.dense_crf(U, img, iterations=5, backend=backend)
    for b in range(2):
        want = pydensecrf_run(dcrf, U[b], img[b], 5)
        agree = (q[b].argmax(0) == want.argmax(0)).float().mean()
        assert agree >= 0.99, agree
        torch.testing.assert_close(q[b], want, rtol=0, atol=1e-4)
        # the CRF helps: more pixels right than the unary's argmax
        acc_crf = (q[b].argmax(0) == gt[b]).float().mean()
        acc_unary = ((-U[b]).argmax(0) == gt[b]).float().mean()
        assert acc_crf > acc_unary + 0.05, (acc_crf, acc_unary)


@needs_cpu
def test_pydensecrf_parity_after_normalization(dcrf):
    U, img, _ = batch(1, 5, 30, 41, seed=4)
    q = segfast.dense_crf(U, img, iterations=3, normalization="after", backend="cpu")
    want = pydensecrf_run(dcrf, U[0], img[0], 3, normalization=dcrf.NORMALIZE_AFTER)
    torch.testing.assert_close(q[0], want, rtol=0, atol=1e-4)


# ---------------------------------------------------------------- bad input and extreme parameters


def test_bad_input_errors(monkeypatch):
    U = torch.zeros(1, 3, 5, 6)
    img = torch.zeros(1, 3, 5, 6, dtype=torch.uint8)
    with pytest.raises(ValueError, match="image must be"):
        segfast.dense_crf(U, img[:, :, :4])
    with pytest.raises(ValueError, match="unary must be"):
        segfast.dense_crf(U[0], img)
    with pytest.raises(TypeError, match="unary must be float"):
        segfast.dense_crf(U.long(), img)
    with pytest.raises(TypeError, match="image must be uint8 or float"):
        segfast.dense_crf(U, img.int())
    with pytest.raises(ValueError, match="non-finite"):
        segfast.dense_crf(torch.full_like(U, math.inf), img)
    with pytest.raises(ValueError, match="non-finite"):
        segfast.dense_crf(U, torch.full(img.shape, math.nan))
    with pytest.raises(ValueError, match="iterations must be >= 0"):
        segfast.dense_crf(U, img, iterations=-1)
    with pytest.raises(ValueError, match="sxy must be finite and > 0"):
        segfast.dense_crf(U, img, gaussian=segfast.Gaussian(sxy=-1.0))
    with pytest.raises(ValueError, match="srgb must be finite and > 0"):
        segfast.dense_crf(U, img, bilateral=segfast.Bilateral(srgb=0.0))
    with pytest.raises(ValueError, match="compat"):
        segfast.dense_crf(U, img, compat=torch.eye(4))
    with pytest.raises(ValueError, match="normalization"):
        segfast.dense_crf(U, img, normalization="NIPS")
    with pytest.raises(ValueError, match="method"):
        segfast.dense_crf(U, img, method="mean")
    with pytest.raises(ValueError, match="pos must be"):
        segfast.dense_crf(U, img, pos=torch.zeros(1, 5, 5))
    with pytest.raises(ValueError, match="C >= 2"):
        segfast.dense_crf(U[:, :1], img, pos=torch.zeros(1, 5, 6))
    monkeypatch.setattr(backends, "_C_emu", None)  # the cuda backend as without segfast._C_emu
    with pytest.raises((RuntimeError, NotImplementedError), match="cuda"):  # unavailable here, or no CRF kernel
        segfast.dense_crf(U, img, backend="cuda")
    with pytest.raises(RuntimeError, match="unknown backend"):
        segfast.dense_crf(U, img, backend="tpu")


@pytest.mark.parametrize("backend", BACKENDS)
def test_huge_parameters_do_not_crash(backend):
    U, img, _ = batch(1, 3, 12, 13)
    for g, bl in [(segfast.Gaussian(1e6, 1e3), segfast.Bilateral(1e6, 1e6, 1e3)),
                  (segfast.Gaussian(0.05, 3.0), segfast.Bilateral(0.05, 0.5, 10.0)),
                  (segfast.Gaussian(3.0, 1e4), segfast.Bilateral(80.0, 13.0, -1e4))]:
        q = segfast.dense_crf(U, img, gaussian=g, bilateral=bl, backend=backend)
        assert torch.isfinite(q).all()
        torch.testing.assert_close(q.sum(1), torch.ones(1, 12, 13), rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="too small"):
        segfast.dense_crf(U, img, gaussian=segfast.Gaussian(1e-7), backend=backend)


# ---------------------------------------------------------------- pixel objectness


def test_pixel_objectness_boxes():
    g = torch.Generator().manual_seed(0)
    B, G, H, W = 2, 7, 13, 17
    xy = torch.rand((B, G, 2), generator=g) * torch.tensor([W, H]) * 1.2 - 2
    wh = torch.rand((B, G, 2), generator=g) * 10
    boxes = torch.cat([xy, xy + wh], 2)
    boxes[0, 0] = torch.tensor([3.0, 4.0, 3.0, 9.0])  # empty
    boxes[0, 1] = torch.tensor([5.0, 6.0, 2.0, 9.0])  # inverted
    boxes[1, 0] = torch.tensor([-5.0, -5.0, 100.0, 100.0])  # the whole image
    boxes[1, 1] = torch.tensor([2.5, 3.5, 6.5, 7.49])  # centres on the edges
    got = segfast.pixel_objectness(boxes, (H, W))
    want = ref.pixel_objectness_naive(boxes, (H, W))
    assert got.shape == (B, H, W) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert got.max() <= 1 and got.min() >= 0 and got.sum() > 0
    # integer corners: pixels x1..x2-1
    one = segfast.pixel_objectness(torch.tensor([[[1, 2, 4, 3]]]), (4, 5))
    expect = torch.zeros(1, 4, 5)
    expect[0, 2, 1:4] = 1
    torch.testing.assert_close(one, expect)


def test_pixel_objectness_masks_and_empty():
    m = torch.rand(2, 5, 6, 7) > 0.5
    torch.testing.assert_close(segfast.pixel_objectness(m), m.float().mean(1))
    torch.testing.assert_close(segfast.pixel_objectness(m, (6, 7)), ref.pixel_objectness_naive(m, (6, 7)))
    assert segfast.pixel_objectness(torch.zeros(2, 0, 4), (3, 4)).abs().sum() == 0
    assert segfast.pixel_objectness(torch.zeros(2, 0, 3, 4)).shape == (2, 3, 4)
    with pytest.raises(ValueError, match="size"):
        segfast.pixel_objectness(torch.zeros(1, 2, 4))
    with pytest.raises(ValueError, match="boxes"):
        segfast.pixel_objectness(torch.zeros(1, 2, 5), (3, 3))
    with pytest.raises(ValueError, match="non-finite"):
        segfast.pixel_objectness(torch.full((1, 1, 4), math.nan), (3, 3))


def test_pixel_objectness_in_pos_crf():
    U, img, gt = batch(1, 3, 20, 24, seed=2)
    boxes = torch.tensor([[[2.0, 2.0, 12.0, 12.0], [4.0, 3.0, 20.0, 15.0]]])
    pos = segfast.pixel_objectness(boxes, (20, 24))
    q = segfast.dense_crf(U, img, pos=pos)
    q0 = segfast.dense_crf(U, img)
    assert (q[:, 1:].sum(1) >= q0[:, 1:].sum(1) - 1e-5).all()  # objectness only raises the foreground


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("C", [2, 21, 60])
def test_gpu_backends_match_cpu(backend, C):
    if backends.unavailable_reason(backend, torch.device("cuda")) is not None:
        pytest.skip(f"{backend} not usable here")
    U, img, _ = batch(3, C, 37, 45, seed=C)
    for kw in ({}, dict(normalization="after", self_message=False), dict(compat=torch.rand(C, C))):
        want = segfast.dense_crf(U, img, backend="cpu" if CPU_BUILT else "torch", **kw)
        kw = {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
        got = segfast.dense_crf(U.cuda(), img.cuda(), backend=backend, **kw)
        torch.testing.assert_close(got.cpu(), want, rtol=0, atol=1e-4)


@needs_cpu
# every grid width (C = 1, 2, 3 padded to 4, 4) on the Potts path; the other
# paths at widths 1 and 4 (padded)
@pytest.mark.parametrize("C,case", [(C, "potts") for C in (1, 2, 3, 4)]
                         + [(C, case) for case in ("matrix", "no_self") for C in (1, 3)])
def test_cpu_narrow_grids_on_a_noise_image(C, case):
    """Few labels: the lattice values are rows of 1, 2 or 4 floats (grid_width),
    narrower than the pixels' 8-lane rows, on every path (the Potts fast path,
    matrix compatibilities, the self-message removal), on a uniform-noise image
    (nearly every pixel a lattice point of its own)."""
    H, W = 70, 97
    g = torch.Generator().manual_seed(C)
    U = -torch.log_softmax(torch.randn(1, C, H, W, generator=g), 1)
    img = torch.randint(0, 256, (1, 3, H, W), generator=g, dtype=torch.uint8)
    kw = dict(iterations=3)
    if case == "matrix":
        kw["compat"] = torch.rand(C, C, generator=g) * 4
    elif case == "no_self":
        kw["self_message"] = False
    got = segfast.dense_crf(U, img, backend="cpu", **kw)
    want = segfast.dense_crf(U, img, backend="torch", **kw)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
