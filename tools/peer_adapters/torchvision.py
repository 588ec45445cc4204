"""conftest.py for torchvision's test/test_ops.py (its box IoU, IoU loss and
NMS cases), without torchvision installed: a stand-in ``torchvision``
package whose ``ops`` are segfast's functions, and a stand-in for the
helpers the test module imports (common_utils, PIL, torchvision.models),
which the selected cases do not use."""

import sys
import types

import pytest
import torch

import segfast


def _module(name, **attrs):
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    m.__path__ = []
    sys.modules[name] = m
    return m


_boxes = _module("torchvision.ops.boxes", _batched_nms_vanilla=segfast.batched_nms,
                 _batched_nms_coordinate_trick=segfast.batched_nms)
_ops = _module(
    "torchvision.ops", boxes=_boxes, box_iou=segfast.box_iou, generalized_box_iou=segfast.generalized_box_iou,
    distance_box_iou=segfast.distance_box_iou, complete_box_iou=segfast.complete_box_iou,
    generalized_box_iou_loss=segfast.giou_loss, distance_box_iou_loss=segfast.diou_loss,
    complete_box_iou_loss=segfast.ciou_loss, nms=segfast.nms, batched_nms=segfast.batched_nms)
_fe = _module("torchvision.models.feature_extraction", get_graph_node_names=None)
_models = _module("torchvision.models", feature_extraction=_fe)
_module("torchvision", ops=_ops, models=_models)
if "PIL" not in sys.modules:
    try:
        import PIL  # noqa: F401
    except ImportError:
        _module("PIL", Image=None)


def _devices(*extra):
    return ("cpu",) + tuple(pytest.param(d, marks=pytest.mark.skip(reason=f"no {d} here")) for d in extra)


# the helper names of torchvision 0.14 (cpu_and_gpu) and of later releases (cpu_and_cuda, ...)
_module("common_utils", assert_equal=lambda a, b, **kw: torch.testing.assert_close(a, b, rtol=0, atol=0, **kw),
        cpu_and_gpu=lambda: _devices("cuda"), cpu_and_cuda=lambda: _devices("cuda"),
        cpu_and_cuda_and_mps=lambda: _devices("cuda", "mps"),
        needs_cuda=pytest.mark.skip(reason="no cuda here"), needs_mps=pytest.mark.skip(reason="no mps here"))


def pytest_configure(config):
    for m in ("opcheck_only_one", "needs_cuda", "needs_mps", "dont_collect"):
        config.addinivalue_line("markers", m)


def pytest_collection_modifyitems(items):
    # the needs_cuda / needs_mps marks skip, as torchvision's own conftest.py makes them
    for item in items:
        for mark in ("needs_cuda", "needs_mps"):
            if item.get_closest_marker(mark) is not None:
                item.add_marker(pytest.mark.skip(reason=f"no {mark[6:]} here"))
