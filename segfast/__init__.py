"""segfast: fused GPU and CPU kernels for segmentation and detection losses.

Public API: the functional losses (``segfast.dice_loss`` ...), their
nn.Module wrappers (``segfast.DiceLoss`` ...), drop-in layers for MONAI and
segmentation_models_pytorch users (``segfast.compat.monai``,
``segfast.compat.smp``) and ``segfast.info()``.
"""

__version__ = "0.1.0"


def _refuse_shadowed_source_tree():
    """Run from the repository root, ``import segfast`` finds the source folder
    before a normal (non-editable) install, and that folder has no compiled
    ``_C`` nor ``triton_kernels``. Fail clearly instead of running half-built."""
    import importlib.util
    import json
    import pathlib

    here = pathlib.Path(__file__).resolve().parent
    if not (here.parent / "pyproject.toml").is_file() or not (here.parent / "csrc").is_dir():
        return  # an installed copy, not the source tree
    if importlib.util.find_spec("segfast._C") is not None:
        return  # editable install (redirect finder) or in-place build
    try:
        from importlib.metadata import distribution

        dist = distribution("segfast")
    except Exception:
        return  # never installed: a bare source tree (torch backend only)
    direct = dist.read_text("direct_url.json") or "{}"
    try:
        editable = json.loads(direct).get("dir_info", {}).get("editable", False)
    except ValueError:
        editable = False
    if not editable:
        raise ImportError(
            f"segfast is being imported from its source tree ({here}), which shadows the "
            "installed package and has no compiled extension. Run from another directory, "
            "or for development install it editable: pip install -e . --no-build-isolation")


_refuse_shadowed_source_tree()

from . import backends  # noqa: E402
from .backends import empty_cache  # noqa: E402
from .functional import (balanced_bce_loss, binary_cross_entropy_with_logits, cross_entropy,  # noqa: E402
                         dice_ce_loss, dice_focal_loss, dice_fused_loss, dice_loss, focal_loss, fused_loss,
                         generalized_dice_loss, jaccard_loss, lovasz_hinge_loss, lovasz_softmax_loss, region_stats,
                         tversky_loss)
from .functional import Bilateral, Gaussian, dense_crf, pixel_objectness  # noqa: E402  (crf family)
from .losses import DenseCRF  # noqa: E402  (crf family)
from .losses import (BalancedBCELoss, BCEWithLogitsLoss, CrossEntropyLoss, DiceCELoss, DiceFocalLoss,  # noqa: E402
                     DiceFusedLoss, DiceLoss, FocalLoss, FusedLoss, GeneralizedDiceLoss, JaccardLoss,
                     LovaszHingeLoss, LovaszSoftmaxLoss, TverskyLoss)

# ---- boxes family (segfast/ops/boxes.py, segfast/ops/box_losses.py) ----
from .functional import (box_iou, box_iou_aligned, ciou_loss, complete_box_iou,  # noqa: E402
                         complete_box_iou_aligned, diou_loss, distance_box_iou, distance_box_iou_aligned,
                         generalized_box_iou, generalized_box_iou_aligned, giou_loss, iou_balanced_bce_loss,
                         iou_balanced_ce_loss, iou_balanced_focal_loss, iou_balanced_smooth_l1_loss, iou_loss,
                         matched_iou)
from .losses import (CIoULoss, DIoULoss, GIoULoss, IoUBalancedBCELoss, IoUBalancedCELoss,  # noqa: E402
                     IoUBalancedFocalLoss, IoUBalancedSmoothL1Loss, IoULoss)
# ---- end of the boxes family ----


# ---- boxes_match family ----
from .functional import batched_nms, box_iou_max, nms  # noqa: E402
# ---- end of the boxes_match family ----

from . import metrics  # noqa: E402,F401  (metrics family: segfast.metrics.COCOEvaluator, ConfusionMatrix)


def info(print_out: bool = True) -> dict:
    """What this installation offers: version, backends, CUDA architectures, versions, GPU.

    Args:
        print_out: print the table (default) as well as returning it.

    Returns:
        dict: the version, the backends built and usable here, the CUDA
        architectures compiled in, the torch / triton versions, whether a GPU
        is visible and whether the cuda backend runs on it.

    Raises:
        Nothing: a missing piece is reported in the table, not raised.

    Example:
        >>> import segfast
        >>> d = segfast.info(print_out=False)
        >>> d["segfast"] == segfast.__version__ and "torch" in d["backends_cpu"]
        True
    """
    d = backends.info()
    if print_out:
        width = max(map(len, d))
        for k, v in d.items():
            print(f"{k:<{width}}  {', '.join(map(str, v)) if isinstance(v, list) else v}")
    return d


__all__ = ["dice_loss", "jaccard_loss", "tversky_loss", "generalized_dice_loss", "region_stats",
           "cross_entropy", "binary_cross_entropy_with_logits", "balanced_bce_loss", "focal_loss", "fused_loss",
           "dice_ce_loss", "dice_focal_loss", "dice_fused_loss", "lovasz_hinge_loss", "lovasz_softmax_loss",
           "DiceLoss", "JaccardLoss", "TverskyLoss", "GeneralizedDiceLoss",
           "CrossEntropyLoss", "BCEWithLogitsLoss", "BalancedBCELoss", "FocalLoss", "FusedLoss",
           "DiceCELoss", "DiceFocalLoss", "DiceFusedLoss", "LovaszHingeLoss", "LovaszSoftmaxLoss",
           "info", "empty_cache", "backends", "__version__"]
__all__ += ["box_iou_max", "nms", "batched_nms"]  # boxes_match family
__all__ += ["box_iou", "generalized_box_iou", "distance_box_iou", "complete_box_iou", "box_iou_aligned",
            "generalized_box_iou_aligned", "distance_box_iou_aligned", "complete_box_iou_aligned", "iou_loss",
            "giou_loss", "diou_loss", "ciou_loss", "iou_balanced_focal_loss", "iou_balanced_bce_loss",
            "iou_balanced_ce_loss", "iou_balanced_smooth_l1_loss", "matched_iou"]  # boxes family
__all__ += ["IoULoss", "GIoULoss", "DIoULoss", "CIoULoss", "IoUBalancedFocalLoss", "IoUBalancedBCELoss",
            "IoUBalancedCELoss", "IoUBalancedSmoothL1Loss"]
__all__ += ["dense_crf", "pixel_objectness", "DenseCRF", "Gaussian", "Bilateral"]  # crf family
