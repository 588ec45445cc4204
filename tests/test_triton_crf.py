"""Dense CRF on the triton backend (the Triton interpreter on CPU tensors when
there is no GPU: small shapes) against the cpu backend and the torch reference.
Batched lattices are built with torch; the iterations run in
triton_kernels/crf.py. Tolerance 1e-5 (float32; atomic splat order)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

import segfast  # noqa: E402
from segfast import backends  # noqa: E402
from segfast.ops import _bench_crf as sb  # noqa: E402
from segfast.ops import crf as ops  # noqa: E402
from segfast.reference import crf as ref  # noqa: E402

from conftest import DEVICE, triton_needs_run  # noqa: E402

pytestmark = [triton_needs_run(), pytest.mark.skipif(
    backends.unavailable_reason("triton", torch.device(DEVICE)) is not None, reason="triton backend not usable here")]


@pytest.mark.parametrize("C,H,W,kw", [
    (3, 9, 11, {}),
    (21, 7, 9, dict(normalization="after")),  # labels in 3 tiles of 8
    (40, 3, 5, dict(self_message=False)),  # 3 tiles of 16, the last one partial
    (4, 10, 12, dict(self_message=False)),
    (4, 10, 12, dict(compat="matrix")),
    (2, 8, 9, dict(gaussian=None)),
    (5, 1, 13, dict(normalization="none", gaussian=segfast.Gaussian(3.0, 0.3),
                    bilateral=segfast.Bilateral(5.0, 13.0, 0.5))),
])
def test_triton_matches_reference(C, H, W, kw):
    if kw.get("compat") == "matrix":
        kw = dict(kw, compat=torch.rand(C, C, device=DEVICE))
    u, im, _ = sb.crf_inputs(2, H, W, DEVICE, C=C)
    got = segfast.dense_crf(u, im, iterations=3, backend="triton", **kw)
    want = segfast.dense_crf(u, im, iterations=3, backend="torch", **kw)
    assert got.shape == (2, C, H, W) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_batched_lattice_equals_per_image_lattices():
    """One sort/unique over the batch (image index as the leading key) = one lattice per image."""
    u, im, _ = sb.crf_inputs(3, 8, 10, "cpu", C=2)
    f = ops._batch_features(im, (3.0, 3.0), (13.0, 13.0, 13.0))
    group = torch.arange(3).repeat_interleave(80)
    lat = ref.build_lattice(f, group)
    v = torch.rand(240, 2, dtype=torch.float64)
    whole = ref.lattice_filter(lat, v)
    for b in range(3):
        one = ref.build_lattice(f[80 * b: 80 * (b + 1)])
        torch.testing.assert_close(whole[80 * b: 80 * (b + 1)], ref.lattice_filter(one, v[80 * b: 80 * (b + 1)]))
    assert lat.M == sum(ref.build_lattice(f[80 * b: 80 * (b + 1)]).M for b in range(3))
