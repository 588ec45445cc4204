"""segfast-bench cases of Dice + a pixel term (collected through
segfast/_families.py): forward+backward against the eager reference (the
region and pixel references added), MONAI and segfast.compat's drop-in
classes."""

from __future__ import annotations

from .. import bench as sb
from ..reference import pixel as ref_pixel
from ..reference import region as ref
from . import region_pixel


def _dice_plus(kind):
    pixel_term = sb.mean_pixel_reference(kind)
    return lambda x, y: ref.region_loss(x, y, kind="dice") + pixel_term(x, y)


OPS = {
    "dice_ce": sb.Op(region_pixel.dice_ce_loss, _dice_plus(ref_pixel.CE), passes=3, writes=2, extra={
        "monai": sb.monai_peer("DiceCELoss", softmax=True, to_onehot_y=True),
        "compat_monai": sb.compat_peer("compat.monai", "DiceCELoss", softmax=True, to_onehot_y=True,
                                       labels_1=True)}),
    "dice_focal": sb.Op(lambda x, y, backend=None: region_pixel.dice_focal_loss(x, y, focal_form="sigmoid",
                                                                               backend=backend),
                        _dice_plus(ref_pixel.FOCAL_SIGMOID), passes=3, writes=2, extra={
        "monai": sb.monai_peer("DiceFocalLoss", softmax=True, to_onehot_y=True),
        "compat_monai": sb.compat_peer("compat.monai", "DiceFocalLoss", softmax=True, to_onehot_y=True,
                                       labels_1=True)}),
}
