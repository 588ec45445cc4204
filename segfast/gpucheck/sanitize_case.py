"""``python -m segfast.gpucheck.sanitize_case FAMILY``: a small case of one
kernel family (pixel, region, lovasz, boxes, boxes_match, crf), forward and
backward, on every GPU backend built here (triton, cuda). Run under
``compute-sanitizer`` by ``python -m segfast check --gpu``; shapes are odd
and small so that tails and masks are exercised and the sanitizer is quick.
"""

from __future__ import annotations

import sys

import torch

DEVICE = "cuda"  # tests run the cases on "cpu"


def _seg(fn, C=5, binary=False):
    def run(backend):
        g = torch.Generator(device=DEVICE).manual_seed(0)
        x = torch.randn(2, 1 if binary else C, 13, 11, device=DEVICE, generator=g, requires_grad=True)
        y = torch.randint(0, 2 if binary else C, (2, 13, 11), device=DEVICE, generator=g)
        y[0, 0, :3] = 255 if not binary else y[0, 0, :3]
        fn(x, y, backend).backward()
    return run


def _boxes(fn):
    def run(backend):
        g = torch.Generator(device=DEVICE).manual_seed(0)
        a = torch.rand(37, 4, device=DEVICE, generator=g) * 50
        b = torch.rand(37, 4, device=DEVICE, generator=g) * 50
        a = torch.cat([a[:, :2], a[:, :2] + 1 + a[:, 2:]], 1).requires_grad_(True)
        b = torch.cat([b[:, :2], b[:, :2] + 1 + b[:, 2:]], 1).requires_grad_(True)
        out = fn(a, b, backend)
        if out.requires_grad:
            out.sum().backward()
    return run


def cases(family: str):
    from segfast import functional as F

    if family == "pixel":
        return [_seg(lambda x, y, b: F.cross_entropy(x, y, ignore_index=255, backend=b)),
                _seg(lambda x, y, b: F.focal_loss(x, y, mode="multiclass", ignore_index=255, backend=b)),
                _seg(lambda x, y, b: F.fused_loss(x, y, ignore_index=255, backend=b)),
                _seg(lambda x, y, b: F.cross_entropy(x, y, ignore_index=255, reduction="none", backend=b).sum())]
    if family == "region":
        return [_seg(lambda x, y, b: F.dice_loss(x, y, ignore_index=255, backend=b)),
                _seg(lambda x, y, b: F.dice_ce_loss(x, y, ignore_index=255, backend=b))]
    if family == "lovasz":
        return [_seg(lambda x, y, b: F.lovasz_softmax_loss(x, y, ignore_index=255, backend=b)),
                _seg(lambda x, y, b: F.lovasz_hinge_loss(x, y, backend=b), binary=True)]
    if family == "boxes":
        return [_boxes(lambda a, c, b: F.giou_loss(a, c, reduction="mean", backend=b)),
                _boxes(lambda a, c, b: F.ciou_loss(a, c, backend=b)),
                _boxes(lambda a, c, b: F.box_iou(a, c, backend=b))]
    if family == "boxes_match":
        def match(backend):
            g = torch.Generator(device=DEVICE).manual_seed(0)
            a = torch.rand(2, 130, 4, device=DEVICE, generator=g) * 50
            a = torch.cat([a[..., :2], a[..., :2] + 1 + a[..., 2:]], -1)
            F.box_iou_max(a, a[:, :7], backend=backend)
            F.nms(a[0], torch.rand(130, device=DEVICE, generator=g), 0.5, backend=backend)
        return [match]
    if family == "crf":
        def crf(backend):
            g = torch.Generator(device=DEVICE).manual_seed(0)
            u = torch.randn(1, 3, 17, 19, device=DEVICE, generator=g)
            img = (torch.rand(1, 3, 17, 19, device=DEVICE, generator=g) * 255).to(torch.uint8)
            F.dense_crf(u, img, iterations=2, backend=backend)
        return [crf]
    raise SystemExit(f"unknown family {family!r}")


def main(argv=None) -> int:
    from segfast import backends

    argv = sys.argv[1:] if argv is None else argv
    family = argv[0] if argv else "pixel"
    dev = torch.device("cuda")
    usable = [b for b in ("triton", "cuda") if backends.unavailable_reason(b, dev) is None]
    for backend in usable:
        for run in cases(family):
            run(backend)
    torch.cuda.synchronize()
    print(f"{family}: ran on {', '.join(usable) or 'no GPU backend'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
