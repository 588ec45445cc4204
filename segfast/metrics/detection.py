"""COCO box detection metrics: ``COCOEvaluator`` (alias ``MeanAveragePrecision``).

Semantics are pycocotools 2.0.x ``COCOeval(iouType="bbox")`` on float64
inputs, number for number and array for array, quirks included:

* IoU thresholds ``np.linspace(.5, .95, 10)`` and recall thresholds
  ``np.linspace(0, 1, 101)`` (float64, exactly as pycocotools builds them);
  area ranges ``all [0, 1e10], small [0, 32²], medium [32², 96²],
  large [96², 1e10]``, inclusive at both ends; maxDets ``[1, 10, 100]``.
* Image ids and category ids are sorted. With ``update()`` images are
  numbered in the order they arrive and the categories are the labels seen
  in predictions or targets; ``from_coco`` takes the gt's ``images`` and
  ``categories``.
* ``iscrowd`` marks a gt ignored (whatever its ``ignore`` field says). A gt's
  area is its ``area`` field (w·h when ``update()`` gets no ``area``); a
  detection's area is w·h of its box.
* Per (image, category) the detections are stable-sorted by decreasing
  score (equal scores keep their input order) and cut to ``maxDets[-1]``
  before any IoU. Box IoU is maskApi's: in xywh float64, ``x + w`` formed
  as written, 0 unless the overlap is positive in both directions, and the
  detection's own area as the union for crowd gts.
* Matching, per area range and IoU threshold t, greedy over the detections
  in score order: the gts are visited regular first, ignored last (stable);
  a detection starts at ``min(t, 1 - 1e-10)``, skips gts already matched
  unless crowd, stops at the first ignored gt once it holds a regular match,
  and takes any gt with IoU ≥ its current best (equal IoU: the later gt).
  A detection matched to an ignored gt is ignored; an unmatched detection
  whose area is outside the range is ignored. (pycocotools tests "matched"
  as "matched gt id != 0": a gt whose id is 0, possible with ``from_coco``,
  counts as no match, and so it does here.)
* Accumulation per (category, area, maxDets): each image's first maxDets
  detections, concatenated over the images in id order and stable
  (mergesort) sorted by decreasing score; cumulative tp / fp per threshold;
  precision ``tp / (tp + fp + eps)`` (eps = ``np.spacing(1)``), made
  non-increasing from the right, read at ``searchsorted(recall, recThrs,
  'left')`` (0 past the last detection); recall = the last cumulative
  recall (0 without detections). Cells without any non-ignored gt stay -1,
  and every average is over the entries > -1 (-1 when there is none).
* The 12 numbers are pycocotools' ``summarize`` lines, with its choices:
  the first uses maxDets = 100 literally, the others ``maxDets[0..2]``; a
  line whose area label or maxDets is not among the parameters is -1.

Options (never the default): any ``max_detection_thresholds`` list, custom
``area_ranges`` ({label: (lo, hi)}), ``iou_thresholds`` and
``rec_thresholds``, and ``average="all_points"``: AP = Σ (R_n − R_{n−1}) P_n
over the detections in score order, with P_n the right-to-left envelope of
the precision (as the VOC 2010+ devkit), in place of the 101-point mean.

On the host the per-image matching and the accumulation run in one C++
pass (csrc/cpu/metrics.cpp, parallel over categories). With the ``triton``
backend (the default for tensors on a GPU) the IoU and the greedy matching
run on the tensors' device instead, one Triton program per (category,
image) group with detections (triton_kernels/metrics.py, float64, no fused
multiply-add, so every IoU and every match is the C++ pass's); with the
``cuda`` backend one CUDA C++ block per group (csrc/cuda/metrics.cu, the
C++ pass's own rules from csrc/common/metrics.h); the per-detection
codes, scores and ranks then go to the host for the C++ accumulation. All
paths give the same arrays bit for bit (checked in Triton's interpreter and
the CUDA emulator; on a GPU unverified until one runs it). Under torch.distributed,
``compute()`` all-gathers every process's state (padded tensors); images
are then ordered by rank, then by arrival, so processes that each hold a
contiguous slice of the dataset, in rank order, reproduce the
single-process numbers exactly (scores that tie across images are ordered
by image, so another split can move such ties).
"""

from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["COCOEvaluator", "MeanAveragePrecision", "STAT_NAMES", "synthetic_coco", "to_tensors"]

STAT_NAMES = (
    "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]",
    "Average Precision  (AP) @[ IoU=0.50      | area=   all | maxDets=100 ]",
    "Average Precision  (AP) @[ IoU=0.75      | area=   all | maxDets=100 ]",
    "Average Precision  (AP) @[ IoU=0.50:0.95 | area= small | maxDets=100 ]",
    "Average Precision  (AP) @[ IoU=0.50:0.95 | area=medium | maxDets=100 ]",
    "Average Precision  (AP) @[ IoU=0.50:0.95 | area= large | maxDets=100 ]",
    "Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets=  1 ]",
    "Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets= 10 ]",
    "Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]",
    "Average Recall     (AR) @[ IoU=0.50:0.95 | area= small | maxDets=100 ]",
    "Average Recall     (AR) @[ IoU=0.50:0.95 | area=medium | maxDets=100 ]",
    "Average Recall     (AR) @[ IoU=0.50:0.95 | area= large | maxDets=100 ]",
)
# torchmetrics' names for the same 12 numbers
KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large",
        "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large")

COCO_AREAS = {"all": (0.0 ** 2, 1e5 ** 2), "small": (0.0 ** 2, 32.0 ** 2),
              "medium": (32.0 ** 2, 96.0 ** 2), "large": (96.0 ** 2, 1e5 ** 2)}


def _coco_iou_thresholds():
    return np.linspace(.5, 0.95, int(np.round((0.95 - .5) / .05)) + 1, endpoint=True)


def _coco_rec_thresholds():
    return np.linspace(.0, 1.00, int(np.round((1.00 - .0) / .01)) + 1, endpoint=True)


def _kernel():
    try:
        from .. import _C
    except ImportError:
        return None
    return _C.cpu.coco_eval


# ------------------------------------------------------------------ the evaluator


class COCOEvaluator:
    """COCO box mAP / mAR with pycocotools' numbers, stateful (torchmetrics-style).

    ``update(preds, targets)`` per batch, ``compute()``, ``reset()``; or
    ``COCOEvaluator.from_coco(gt, dets)`` for COCO json input. Boxes are
    evaluated in float64 xywh (xyxy becomes x, y, x2 - x, y2 - y, as
    torchmetrics does). Matching and accumulation run in C++, all categories in
    parallel; under torch.distributed ``compute()`` all-gathers the state. See
    the module docstring for the exact rules. ``MeanAveragePrecision`` is the
    same class.

    Args:
        box_format: "xyxy" (default), "xywh" (COCO's) or "cxcywh".
        iou_thresholds: IoU thresholds (default pycocotools' 0.5:0.05:0.95).
        rec_thresholds: increasing recall thresholds (default 0:0.01:1).
        max_detection_thresholds: maxDets (default [1, 10, 100]).
        area_ranges: {label: (lo, hi)} (default COCO's all/small/medium/large).
        average: "coco" (the 101-point mean) or "all_points" (VOC 2010+ AP).
        dist_sync: all-gather the state across processes in ``compute()``.
        num_threads: threads of the C++ pass (None: torch's count).
        backend: where the matching runs: "cpu" (the C++ pass on the host; GPU
            tensors are copied there), "triton" or "cuda" (the IoU and matching
            on the tensors' device, a Triton or a CUDA C++ kernel, the
            accumulation on the host; on CPU tensors Triton needs
            TRITON_INTERPRET=1, CUDA the emulated build); None: for tensors on
            a GPU the device's default backend ("triton", else "cuda") when one
            is usable, else "cpu".

    Returns:
        ``compute()`` returns a dict of float64 tensors: the 12 numbers under
        torchmetrics' keys (``map``, ``map_50``, ... ``mar_large``) and as
        ``stats`` [12] (pycocotools' order, named by ``STAT_NAMES``),
        ``classes``, ``map_per_class`` / ``mar_100_per_class`` (-1 for a class
        without gt), and pycocotools' ``precision`` [T, R, K, A, M], ``recall``
        [T, K, A, M] and ``scores`` [T, R, K, A, M].

    Raises:
        ValueError: an unknown ``box_format``, ``average`` or ``backend``, thresholds that
            are empty, non-finite or (recall) not increasing, maxDets that are
            not positive integers, empty ``area_ranges``; in ``update``, entries
            without the needed keys or of the wrong shapes.
        TypeError: ``update`` arguments that are not lists of dicts.

    Example:
        >>> import torch
        >>> from segfast.metrics import COCOEvaluator
        >>> m = COCOEvaluator(box_format="xyxy")
        >>> preds = [{"boxes": torch.tensor([[10., 10., 50., 50.]]), "scores": torch.tensor([0.9]),
        ...           "labels": torch.tensor([1])}]
        >>> targets = [{"boxes": torch.tensor([[10., 10., 50., 50.]]), "labels": torch.tensor([1])}]
        >>> m.update(preds, targets)
        >>> out = m.compute()
        >>> round(out["map"].item(), 6), round(out["map_50"].item(), 6)
        (1.0, 1.0)
    """

    def __init__(self, box_format: str = "xyxy", iou_thresholds: Optional[Sequence[float]] = None,
                 rec_thresholds: Optional[Sequence[float]] = None,
                 max_detection_thresholds: Optional[Sequence[int]] = None,
                 area_ranges: Optional[dict] = None, average: str = "coco", dist_sync: bool = True,
                 num_threads: Optional[int] = None, backend: Optional[str] = None):
        if box_format not in ("xyxy", "xywh", "cxcywh"):
            raise ValueError(f"box_format must be 'xyxy', 'xywh' or 'cxcywh', got {box_format!r}")
        if average not in ("coco", "all_points"):
            raise ValueError(f"average must be 'coco' or 'all_points', got {average!r}")
        if backend not in (None, "cpu", "triton", "cuda"):
            raise ValueError(f"backend must be None, 'cpu', 'triton' or 'cuda', got {backend!r}")
        self.box_format = box_format
        self.backend = backend
        self.average = average
        self.dist_sync = dist_sync
        self.num_threads = num_threads
        self.iou_thrs = _coco_iou_thresholds() if iou_thresholds is None else np.asarray(iou_thresholds, np.float64)
        self.rec_thrs = _coco_rec_thresholds() if rec_thresholds is None else np.asarray(rec_thresholds, np.float64)
        for name, v in (("iou_thresholds", self.iou_thrs), ("rec_thresholds", self.rec_thrs)):
            if v.ndim != 1 or len(v) == 0 or not np.all(np.isfinite(v)):
                raise ValueError(f"{name} must be a non-empty list of finite numbers, got {v.tolist()}")
        if np.any(np.diff(self.rec_thrs) <= 0):
            raise ValueError(f"rec_thresholds must be increasing, got {self.rec_thrs.tolist()}")
        md = [1, 10, 100] if max_detection_thresholds is None else list(max_detection_thresholds)
        if not md or any(isinstance(m, bool) or int(m) != m or m < 1 for m in md):
            raise ValueError(f"max_detection_thresholds must be positive integers, got {md}")
        self.max_dets = sorted(int(m) for m in md)  # pycocotools' evaluate() sorts them
        areas = COCO_AREAS if area_ranges is None else dict(area_ranges)
        if not areas:
            raise ValueError("area_ranges must not be empty")
        self.area_labels = list(areas)
        self.area_rng = np.asarray([areas[k] for k in self.area_labels], np.float64).reshape(-1, 2)
        self.reset()

    # ---- state

    def reset(self) -> None:
        """Forget every update (and the state of ``from_coco``).

        Returns:
            None.
        """
        self._dt = []  # per update: [n, 7] float64 (x, y, w, h, score, label, image)
        self._gt = []  # per update: [m, 9] float64 (x, y, w, h, area, label, crowd, id != 0, image)
        self._n_images = 0
        self._image_ids = None  # from_coco: the gt's sorted image ids
        self._cat_ids = None  # from_coco: the gt's sorted category ids
        self._cache = None

    def update(self, preds: list, targets: list) -> None:
        """Add a batch of images: one prediction dict and one target dict per image.

        Args:
            preds: list of dicts with ``boxes`` [N, 4] (float), ``scores`` [N] and
                ``labels`` [N] (integers).
            targets: list of dicts with ``boxes`` [M, 4], ``labels`` [M] and
                optionally ``iscrowd`` [M] and ``area`` [M] (default w·h).

        Returns:
            None.

        Raises:
            TypeError: arguments that are not lists (or tuples).
            ValueError: lists of different lengths, a dict without a needed key, a
                tensor of the wrong shape, non-integer labels.
        """
        if not isinstance(preds, (list, tuple)) or not isinstance(targets, (list, tuple)):
            raise TypeError("preds and targets must be lists of dicts (one per image)")
        if len(preds) != len(targets):
            raise ValueError(f"preds and targets must have one entry per image, got {len(preds)} and {len(targets)}")
        dts, gts = [], []
        for i, (p, t) in enumerate(zip(preds, targets)):
            img = float(self._n_images + i)
            b = self._boxes(p, "boxes", f"preds[{i}]")
            n = b.shape[0]
            s = self._vec(p, "scores", n, f"preds[{i}]", float_=True)
            lab = self._vec(p, "labels", n, f"preds[{i}]")
            dts.append(torch.cat([b, s[:, None], lab[:, None], b.new_full((n, 1), img)], 1))
            g = self._boxes(t, "boxes", f"targets[{i}]")
            m = g.shape[0]
            gl = self._vec(t, "labels", m, f"targets[{i}]")
            crowd = self._vec(t, "iscrowd", m, f"targets[{i}]") if "iscrowd" in t else g.new_zeros(m)
            area = self._vec(t, "area", m, f"targets[{i}]", float_=True) if "area" in t else g[:, 2] * g[:, 3]
            gts.append(torch.stack([g[:, 0], g[:, 1], g[:, 2], g[:, 3], area, gl, (crowd != 0).double(),
                                    g.new_ones(m), g.new_full((m,), img)], 1))
        if dts:
            self._dt.append(torch.cat(dts))
            self._gt.append(torch.cat(gts))
        self._n_images += len(preds)
        self._cache = None

    def _boxes(self, d, key, where) -> Tensor:
        if not isinstance(d, dict) or key not in d:
            raise ValueError(f"{where} must be a dict with {key!r}")
        b = d[key]
        if not isinstance(b, Tensor):
            b = torch.as_tensor(b, dtype=torch.float64)
        if b.numel() == 0:
            b = b.reshape(0, 4)
        if b.dim() != 2 or b.shape[1] != 4 or not b.dtype.is_floating_point:
            raise ValueError(f"{where}[{key!r}] must be a float [N, 4] tensor, got {b.dtype} {tuple(b.shape)}")
        b = b.detach().double()
        if self.box_format == "xyxy":
            b = torch.cat([b[:, :2], b[:, 2:] - b[:, :2]], 1)
        elif self.box_format == "cxcywh":
            b = torch.cat([b[:, :2] - b[:, 2:] / 2, b[:, 2:]], 1)
        return b

    @staticmethod
    def _vec(d, key, n, where, float_=False) -> Tensor:
        if key not in d:
            raise ValueError(f"{where} must have {key!r}")
        v = d[key]
        if not isinstance(v, Tensor):
            v = torch.as_tensor(v)
        v = v.detach().reshape(-1) if v.dim() <= 1 and v.numel() == n else v
        if v.dim() != 1 or v.shape[0] != n:
            raise ValueError(f"{where}[{key!r}] must have shape [{n}], got {tuple(v.shape)}")
        if not float_ and v.dtype.is_floating_point and not bool((v == v.round()).all()):
            raise ValueError(f"{where}[{key!r}] must hold integers")
        return v.double()

    # ---- COCO json input

    @classmethod
    def from_coco(cls, gt, dets, **kwargs) -> "COCOEvaluator":
        """An evaluator holding a COCO ground truth and results, as ``COCO(gt).loadRes(dets)``.

        Images are the gt's ``images``, categories its ``categories``; gts without
        ``iscrowd`` are not crowd, gts without ``area`` get w·h.

        Args:
            gt: a COCO ground-truth dict, or the path of its json file.
            dets: a list of {image_id, category_id, bbox [x, y, w, h], score}, or
                the path of its json file.
            **kwargs: constructor arguments (``box_format`` must stay "xywh").

        Returns:
            COCOEvaluator: ready for ``compute()`` / ``summary()``.

        Raises:
            ValueError: a gt without ``images`` / ``annotations``, a box format
                other than xywh, detections of images not in the gt.
        """
        if isinstance(gt, (str, os.PathLike)):
            with open(gt) as f:
                gt = json.load(f)
        if isinstance(dets, (str, os.PathLike)):
            with open(dets) as f:
                dets = json.load(f)
        if not isinstance(gt, dict) or "images" not in gt or "annotations" not in gt:
            raise ValueError("gt must be a COCO dict (or json path) with 'images' and 'annotations'")
        kwargs.setdefault("box_format", "xywh")
        if kwargs["box_format"] != "xywh":
            raise ValueError("from_coco takes COCO's xywh boxes")
        ev = cls(**kwargs)
        img_ids = np.unique(np.asarray([im["id"] for im in gt["images"]], dtype=np.int64))
        cat_ids = np.unique(np.asarray([c["id"] for c in gt.get("categories", [])], dtype=np.int64))
        anns = gt["annotations"]
        gt_rows = np.empty((len(anns), 9), np.float64)
        if anns:
            gt_rows[:, :4] = np.asarray([a["bbox"] for a in anns], np.float64).reshape(-1, 4)
            gt_rows[:, 4] = [a["area"] if "area" in a else a["bbox"][2] * a["bbox"][3] for a in anns]
            gt_rows[:, 5] = [a["category_id"] for a in anns]
            gt_rows[:, 6] = [1.0 if a.get("iscrowd", 0) else 0.0 for a in anns]
            gt_rows[:, 7] = [0.0 if a.get("id", 1) == 0 else 1.0 for a in anns]
            gimg = np.asarray([a["image_id"] for a in anns], np.int64)
            pos = np.searchsorted(img_ids, gimg).clip(max=max(len(img_ids) - 1, 0))
            keep = (img_ids[pos] == gimg) if len(img_ids) else np.zeros(len(anns), bool)
            gt_rows[:, 8] = pos
            gt_rows = gt_rows[keep]
        if dets and not isinstance(dets, list):
            raise ValueError("dets must be a list of dicts (COCO results) or a json path")
        dt_rows = np.empty((len(dets), 7), np.float64)
        if dets:
            dt_rows[:, :4] = np.asarray([d["bbox"] for d in dets], np.float64).reshape(-1, 4)
            dt_rows[:, 4] = [d["score"] for d in dets]
            dt_rows[:, 5] = [d["category_id"] for d in dets]
            dimg = np.asarray([d["image_id"] for d in dets], np.int64)
            pos = np.searchsorted(img_ids, dimg).clip(max=max(len(img_ids) - 1, 0))
            if not len(img_ids) or not np.all(img_ids[pos] == dimg):
                raise ValueError("dets: some image_id is not among the gt's images "
                                 "(pycocotools: Results do not correspond to current coco set)")
            dt_rows[:, 6] = pos
        ev._dt = [torch.from_numpy(dt_rows)]
        ev._gt = [torch.from_numpy(gt_rows)]
        ev._n_images = len(img_ids)
        ev._image_ids = img_ids
        ev._cat_ids = cat_ids
        return ev

    # ---- distributed

    def _gathered(self):
        dt = torch.cat(self._dt) if self._dt else torch.zeros(0, 7, dtype=torch.float64)
        gt = torch.cat(self._gt) if self._gt else torch.zeros(0, 9, dtype=torch.float64)
        n_img = self._n_images
        dist = torch.distributed
        if not (self.dist_sync and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return dt, gt, n_img
        dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else dt.device
        sizes = torch.tensor([dt.shape[0], gt.shape[0], n_img], dtype=torch.int64, device=dev)
        all_sizes = [torch.empty_like(sizes) for _ in range(dist.get_world_size())]
        dist.all_gather(all_sizes, sizes)
        all_sizes = torch.stack(all_sizes).cpu()

        def gather(x, col):
            n_max = int(all_sizes[:, col].max())
            pad = torch.zeros(n_max, x.shape[1], dtype=x.dtype, device=dev)
            pad[: x.shape[0]] = x.to(dev)
            out = [torch.empty_like(pad) for _ in range(len(all_sizes))]
            dist.all_gather(out, pad)
            return [o[: int(all_sizes[r, col])] for r, o in enumerate(out)]

        dts, gts = gather(dt, 0), gather(gt, 1)
        offset = 0
        for r in range(len(all_sizes)):  # images: by rank, then by arrival
            dts[r][:, 6] += offset
            gts[r][:, 8] += offset
            offset += int(all_sizes[r, 2])
        return torch.cat(dts), torch.cat(gts), offset

    # ---- compute

    def _run(self, curve=None):
        """Run the kernel; ``curve``: (area index, maxDets index) whose per-detection codes to return."""
        if self._cache is not None and (curve is None or curve in self._cache.get("curves", {})):
            return self._cache
        dt, gt, I = self._gathered()
        if not torch.isfinite(dt[:, :5]).all():
            raise ValueError("preds: boxes and scores must be finite")
        if not torch.isfinite(gt[:, :5]).all():
            raise ValueError("targets: boxes and areas must be finite")
        matching = self._matching_backend(dt.device)
        on_device = matching in ("triton", "cuda")
        if not on_device:
            dt, gt = dt.cpu(), gt.cpu()
        dev = dt.device
        if self._cat_ids is not None:
            cats = torch.from_numpy(self._cat_ids).double().to(dev)
        else:
            cats = torch.unique(torch.cat([dt[:, 5], gt[:, 5]]))
        K, T, R = len(cats), len(self.iou_thrs), len(self.rec_thrs)
        A, M = len(self.area_rng), len(self.max_dets)

        def group(rows, lab_col, img_col):
            lab = rows[:, lab_col].contiguous()
            k = torch.searchsorted(cats, lab).clamp_(max=max(K - 1, 0))
            keep = cats[k] == lab if K else torch.zeros(len(rows), dtype=torch.bool, device=dev)
            rows, k = rows[keep], k[keep]
            key = k * I + rows[:, img_col].long()
            key, order = torch.sort(key, stable=True)
            rows = rows[order]
            return rows, key, _offsets(key, K * I)

        dt, dkey, dt_off = group(dt, 5, 6)
        gt, gkey, gt_off = group(gt, 5, 8)
        dt_box, dt_score = dt[:, :4].contiguous(), dt[:, 4].contiguous()
        gt_box, gt_area = gt[:, :4].contiguous(), gt[:, 4].contiguous()
        gt_crowd = gt[:, 6].to(torch.uint8)
        gt_idnz = gt[:, 7].to(torch.uint8)
        precision = torch.full((T, R, K, A, M), -1.0, dtype=torch.float64)
        scores = torch.full((T, R, K, A, M), -1.0, dtype=torch.float64)
        recall = torch.full((T, K, A, M), -1.0, dtype=torch.float64)
        ap_all = torch.full((T, K, A, M), -1.0, dtype=torch.float64)
        npig = torch.zeros(K, A, dtype=torch.int64)
        iou_thr = torch.from_numpy(self.iou_thrs)
        rec_thr = torch.from_numpy(self.rec_thrs)
        area_rng = torch.from_numpy(self.area_rng)
        max_dets = torch.tensor(self.max_dets, dtype=torch.int64)
        dt_off_host = dt_off.cpu()
        curves = dict(self._cache.get("curves", {})) if self._cache else {}
        c_off = c_score = c_code = None
        if curve is not None:
            c_off = torch.zeros(K + 1, dtype=torch.int64)
            per_group = (dt_off_host[1:] - dt_off_host[:-1]).clamp(max=self.max_dets[curve[1]])
            c_off[1:] = torch.cumsum(per_group.reshape(K, I).sum(1), 0) if K else c_off[1:]
            n = int(c_off[-1])
            c_score = torch.zeros(n, dtype=torch.float64)
            c_code = torch.zeros(T, n, dtype=torch.uint8)
        from .. import backends
        fn = _kernel()
        outs = (precision, recall, scores, ap_all, npig)
        view = backends.view
        curve_args = (-1 if curve is None else curve[0], -1 if curve is None else curve[1], view(c_off),
                      view(c_score), view(c_code))
        if on_device:
            self._match_on_device(matching, K, I, dt, dkey, dt_off, gt, gkey, gt_off, rec_thr, max_dets, outs,
                                  curve_args)
        elif fn is not None:
            fn(*map(view, (gt_off, dt_off, gt_box, gt_area, gt_crowd, gt_idnz, dt_box, dt_score, iou_thr, area_rng,
                           rec_thr, max_dets, precision, recall, scores, ap_all, npig)), *curve_args,
               self.num_threads or backends.cpu_threads())
        else:  # no compiled extension: the eager reference
            if curve is not None:
                raise RuntimeError("precision-recall curves need the compiled extension (segfast._C)")
            from ..reference import metrics as ref
            out = ref.coco_eval(K, I, gt_box.numpy(), gt_area.numpy(), gt_crowd.numpy(), gt_idnz.numpy(),
                                gt_off.numpy(), dt_box.numpy(), dt_score.numpy(), dt_off.numpy(), self.iou_thrs,
                                self.rec_thrs, self.area_rng, self.max_dets)
            for dst, src in zip(outs, out):
                dst.copy_(torch.from_numpy(src))
        if curve is not None:
            curves[curve] = (c_off, c_score, c_code)
        cats = cats.cpu()
        self._cache = dict(cats=cats, precision=precision, recall=recall, scores=scores, ap_all=ap_all,
                           npig=npig, curves=curves)
        return self._cache

    def _matching_backend(self, device: torch.device) -> str:
        from .. import backends
        if self.backend is None:
            b = backends.default_backend(device) if device.type == "cuda" else "cpu"
            return b if b in ("triton", "cuda") else "cpu"
        if self.backend in ("triton", "cuda"):
            reason = backends.unavailable_reason(self.backend, device)
            if reason is not None:
                raise RuntimeError(f"COCOEvaluator(backend={self.backend!r}): {reason}")
        return self.backend

    def _match_on_device(self, backend, K, I, dt, dkey, dt_off, gt, gkey, gt_off, rec_thr, max_dets, outs,
                         curve_args):
        """IoU and matching on the tensors' device (Triton or CUDA C++), accumulation in C++ on the host."""
        from .. import backends
        if backends._C is None:
            raise RuntimeError(f"COCOEvaluator(backend={backend!r}) needs the compiled extension (segfast._C)")
        dev = dt.device
        T, A = len(self.iou_thrs), len(self.area_rng)
        # per group: stable by decreasing score, cut to maxDets[-1]
        order = torch.sort(dt[:, 4], descending=True, stable=True).indices
        order = order[torch.sort(dkey[order], stable=True).indices]
        dt, dkey = dt[order], dkey[order]
        rank = torch.arange(dt.shape[0], device=dev) - dt_off[dkey]
        keep = rank < self.max_dets[-1]
        dt, dkey, rank = dt[keep], dkey[keep], rank[keep]
        kept_off = _offsets(dkey, K * I)
        groups = torch.nonzero(kept_off[1:] > kept_off[:-1]).flatten()
        max_gts = int((gt_off[1:] - gt_off[:-1]).max()) if K * I else 0
        thr = torch.from_numpy(np.minimum(self.iou_thrs, 1 - 1e-10)).to(dev)
        area_rng = torch.from_numpy(self.area_rng).to(dev)
        crowd = gt[:, 6] != 0
        args = (groups, gt_off, kept_off, gt[:, :4].contiguous(), gt[:, 4].contiguous(), crowd.to(torch.uint8),
                gt[:, 7].to(torch.uint8), dt[:, :4].contiguous(), thr, area_rng)
        if backend == "cuda":
            code = _coco_match_cuda(*args, T, A, max_gts)
        else:
            from ..triton_kernels import metrics as tk
            code = tk.coco_match(*args, max_gts)
        area = gt[:, 4:5]
        regular = ~crowd[:, None] & (area >= area_rng[:, 0]) & (area <= area_rng[:, 1])  # [Ng, A]
        npig = torch.zeros(K, A, dtype=torch.int64, device=dev).index_add_(0, gkey // max(I, 1), regular.long())
        precision, recall, scores, ap_all, npig_out = outs
        npig_out.copy_(npig)
        cat_off = kept_off[torch.arange(K + 1, device=dev) * I].cpu()
        sc = dt[:, 4].contiguous().cpu()
        rank = rank.to(torch.int32).cpu()
        code = code.cpu()
        backends._C.cpu.coco_accumulate(*map(backends.view, (cat_off, sc, rank, code, rec_thr, max_dets, precision,
                                                             recall, scores, ap_all, npig_out)), *curve_args,
                                        self.num_threads or backends.cpu_threads())

    def _summarize(self, p, r, ap_all):
        labels, md = self.area_labels, self.max_dets

        def one(ap, iou=None, area="all", max_dets=100):
            aind = [i for i, lab in enumerate(labels) if lab == area]
            mind = [i for i, m in enumerate(md) if m == max_dets]
            if ap == 1:
                s = p if self.average == "coco" else ap_all
                if iou is not None:
                    s = s[np.where(iou == self.iou_thrs)[0]]
                s = s[:, :, :, aind, mind] if self.average == "coco" else s[:, :, aind, mind]
            else:
                s = r
                if iou is not None:
                    s = s[np.where(iou == self.iou_thrs)[0]]
                s = s[:, :, aind, mind]
            return -1.0 if len(s[s > -1]) == 0 else float(np.mean(s[s > -1]))

        m3 = md[2] if len(md) > 2 else None
        return [one(1), one(1, iou=.5, max_dets=m3), one(1, iou=.75, max_dets=m3),
                one(1, area="small", max_dets=m3), one(1, area="medium", max_dets=m3),
                one(1, area="large", max_dets=m3), one(0, max_dets=md[0]),
                one(0, max_dets=md[1] if len(md) > 1 else None), one(0, max_dets=m3),
                one(0, area="small", max_dets=m3), one(0, area="medium", max_dets=m3),
                one(0, area="large", max_dets=m3)]

    def compute(self) -> dict:
        """The metrics of everything added so far (see the class docstring for the keys).

        Returns:
            dict of float64 tensors: ``map`` ... ``mar_large``, ``stats`` [12],
            ``classes``, ``map_per_class``, ``mar_100_per_class``, ``precision``,
            ``recall``, ``scores``.
        """
        c = self._run()
        p, r, ap_all = c["precision"].numpy(), c["recall"].numpy(), c["ap_all"].numpy()
        stats = self._summarize(p, r, ap_all)
        out = {k: torch.tensor(v, dtype=torch.float64) for k, v in zip(KEYS, stats)}
        out["stats"] = torch.tensor(stats, dtype=torch.float64)
        cats = c["cats"]
        out["classes"] = cats.long()
        a0, m_last = 0, len(self.max_dets) - 1
        if self.average == "coco":
            per = c["precision"][:, :, :, a0, m_last].permute(2, 0, 1).flatten(1)
        else:
            per = c["ap_all"][:, :, a0, m_last].t()
        out["map_per_class"] = _mean_valid(per)
        out["mar_100_per_class"] = _mean_valid(c["recall"][:, :, a0, m_last].t())
        out["precision"], out["recall"], out["scores"] = c["precision"], c["recall"], c["scores"]
        return out

    def summary(self) -> str:
        """pycocotools' ``summarize()`` lines.

        Returns:
            str: the 12 lines, each ``STAT_NAMES[i] = value`` with 3 decimals.
        """
        stats = self.compute()["stats"].tolist()
        return "\n".join(f" {name} = {v:0.3f}" for name, v in zip(STAT_NAMES, stats))

    # ---- thresholded metrics and curves from the same state

    def _curve_cell(self, iou_threshold, area, max_dets):
        t = np.where(np.isclose(self.iou_thrs, iou_threshold, rtol=0, atol=1e-12))[0]
        if len(t) == 0:
            raise ValueError(f"iou_threshold {iou_threshold} is not among the thresholds {self.iou_thrs.tolist()}")
        if area not in self.area_labels:
            raise ValueError(f"area must be one of {self.area_labels}, got {area!r}")
        md = self.max_dets[-1] if max_dets is None else max_dets
        if md not in self.max_dets:
            raise ValueError(f"max_dets must be one of {self.max_dets}, got {md}")
        key = (self.area_labels.index(area), self.max_dets.index(md))
        c = self._run(curve=key)
        return c, key, int(t[0])

    def pr_curve(self, iou_threshold: float = 0.5, area: str = "all", max_dets: Optional[int] = None) -> dict:
        """Per class, the raw (not interpolated) precision-recall curve.

        The precision, recall and score after each non-ignored detection in score
        order (pycocotools' accumulation order).

        Args:
            iou_threshold: one of the evaluator's IoU thresholds.
            area: one of the area labels.
            max_dets: one of the maxDets (None: the largest).

        Returns:
            dict: {class id: (precision, recall, scores)}, float64 tensors.

        Raises:
            ValueError: a threshold, area or maxDets the evaluator does not hold.
        """
        c, key, t = self._curve_cell(iou_threshold, area, max_dets)
        off, sc, code = c["curves"][key]
        a = key[0]
        out = {}
        for k, cls in enumerate(c["cats"].long().tolist()):
            cd, s = code[t, off[k]:off[k + 1]], sc[off[k]:off[k + 1]]
            keep = cd != 0
            tp = torch.cumsum(cd[keep] == 1, 0).double()
            fp = torch.cumsum(cd[keep] == 2, 0).double()
            n = float(c["npig"][k, a])
            out[cls] = (tp / (tp + fp), tp / n if n else torch.full_like(tp, float("nan")), s[keep])
        return out

    def precision_recall_f1(self, score_threshold: float = 0.5, iou_threshold: float = 0.5, area: str = "all",
                            max_dets: Optional[int] = None) -> dict:
        """Per class precision, recall and F1 of the detections scoring >= score_threshold.

        precision tp / (tp + fp), recall tp / (non-ignored gts), F1; NaN where a
        denominator is 0.

        Args:
            score_threshold: the lowest score counted.
            iou_threshold: one of the evaluator's IoU thresholds.
            area: one of the area labels.
            max_dets: one of the maxDets (None: the largest).

        Returns:
            dict: ``classes``, ``precision``, ``recall``, ``f1``, ``tp``, ``fp``,
            ``n_gt`` (one entry per class).

        Raises:
            ValueError: a threshold, area or maxDets the evaluator does not hold.
        """
        c, key, t = self._curve_cell(iou_threshold, area, max_dets)
        off, sc, code = c["curves"][key]
        a = key[0]
        K = len(c["cats"])
        cls = torch.repeat_interleave(torch.arange(K), off[1:] - off[:-1])
        sel = sc >= score_threshold
        tp = torch.bincount(cls[sel & (code[t] == 1)], minlength=K).double()
        fp = torch.bincount(cls[sel & (code[t] == 2)], minlength=K).double()
        n_gt = c["npig"][:, a].double()
        prec, rec = tp / (tp + fp), tp / n_gt
        return dict(classes=c["cats"].long(), precision=prec, recall=rec, f1=2 * prec * rec / (prec + rec),
                    tp=tp, fp=fp, n_gt=n_gt)


def _coco_match_cuda(groups, gt_off, dt_off, gt_box, gt_area, gt_crowd, gt_idnz, dt_box, thr, area_rng, T, A,
                     max_gts) -> Tensor:
    """The CUDA matching kernel (csrc/cuda/metrics.cu; emulated for CPU tensors): the arguments and the
    codes [D, A, T] of triton_kernels.metrics.coco_match."""
    from .. import backends
    dev = dt_box.device
    code = torch.empty(dt_box.shape[0], A, T, dtype=torch.uint8, device=dev)
    with backends.cuda_launch(dev) as (kernels, stream):
        nbytes = kernels.coco_match_scratch_bytes(max_gts, A, T, groups.numel())
        scratch = torch.empty(nbytes, dtype=torch.uint8, device=dev) if nbytes else None
        xs = [backends.view(x.contiguous()) for x in (groups, gt_off, dt_off, gt_box, gt_area, gt_crowd, gt_idnz,
                                                      dt_box, thr, area_rng)]
        kernels.coco_match(*xs, max_gts, backends.view(code), backends.view(scratch), stream)
    return code


def _offsets(key: Tensor, n: int) -> Tensor:
    """[n + 1] start rows of each key value in the sorted ``key`` (and the total)."""
    off = torch.zeros(n + 1, dtype=torch.int64, device=key.device)
    off[1:] = torch.cumsum(torch.bincount(key, minlength=n), 0)
    return off


def _mean_valid(x: Tensor) -> Tensor:
    """Mean over the last dim of the entries > -1, per row; -1 where none."""
    valid = x > -1
    n = valid.sum(1)
    s = torch.where(valid, x, torch.zeros((), dtype=x.dtype)).sum(1)
    return torch.where(n > 0, s / n.clamp(min=1), torch.full_like(s, -1.0))


MeanAveragePrecision = COCOEvaluator


# ------------------------------------------------------------------ synthetic data


def synthetic_coco(n_images: int = 5000, n_categories: int = 80, gts_per_image: float = 7.0,
                   crowd_fraction: float = 0.02, dets_per_image: float = 100.0, seed: int = 0,
                   empty_fraction: float = 0.02, score_decimals: int = 3):
    """A COCO-like ground truth dict and result list, from a fixed seed.

    Images 640 x 480 with a Poisson number of gts (sizes spanning small to
    large, ``area`` = w·h times a mask fill factor, ~``crowd_fraction``
    crowd), and a Poisson number of detections: jittered copies of the gts
    (sometimes with a wrong label) and random boxes, scores rounded to
    ``score_decimals`` so that ties occur. Some images have no gt, some no
    detection; category ids are 1..n_categories, image ids shuffled.

    Args:
        n_images: number of images.
        n_categories: number of categories.
        gts_per_image: mean number of gts per image.
        crowd_fraction: fraction of crowd gts.
        dets_per_image: mean number of detections per image.
        seed: the random seed.
        empty_fraction: fraction of images without gt (and, independently,
            without detection).
        score_decimals: decimals the scores are rounded to.

    Returns:
        (gt, dets): a COCO ground-truth dict and a list of result dicts.

    Raises:
        ValueError: from numpy, for negative counts or fractions outside [0, 1].

    Example:
        >>> from segfast.metrics import synthetic_coco
        >>> gt, dets = synthetic_coco(n_images=10, n_categories=3)
        >>> len(gt["images"]), len(gt["categories"])
        (10, 3)
    """
    rng = np.random.default_rng(seed)
    W, H = 640.0, 480.0
    img_ids = rng.permutation(n_images) * 3 + 1
    n_gt = rng.poisson(gts_per_image, n_images)
    n_gt[rng.random(n_images) < empty_fraction] = 0
    n_dt = rng.poisson(dets_per_image, n_images)
    n_dt[rng.random(n_images) < empty_fraction] = 0
    G = int(n_gt.sum())
    side = np.exp(rng.uniform(np.log(4), np.log(400), (G, 2)))
    wh = np.minimum(side, [W, H])
    xy = rng.uniform(0, 1, (G, 2)) * ([W, H] - wh)
    gbox = np.round(np.concatenate([xy, wh], 1), 2)
    glab = rng.integers(1, n_categories + 1, G)
    gimg = np.repeat(np.arange(n_images), n_gt)
    crowd = rng.random(G) < crowd_fraction
    garea = np.round(gbox[:, 2] * gbox[:, 3] * rng.uniform(0.5, 1.0, G), 2)
    images = [{"id": int(i), "width": int(W), "height": int(H)} for i in img_ids]
    cats = [{"id": int(c), "name": f"c{c}"} for c in range(1, n_categories + 1)]
    anns = [{"id": j + 1, "image_id": int(img_ids[gimg[j]]), "category_id": int(glab[j]),
             "bbox": gbox[j].tolist(), "area": float(garea[j]), "iscrowd": int(crowd[j])} for j in range(G)]
    # detections: per image, up to 2 jittered copies of each gt, the rest random
    D = int(n_dt.sum())
    dimg = np.repeat(np.arange(n_images), n_dt)
    first_gt = np.concatenate([[0], np.cumsum(n_gt)[:-1]])
    rank = np.arange(D) - np.repeat(np.concatenate([[0], np.cumsum(n_dt)[:-1]]), n_dt)
    near = rank < 2 * n_gt[dimg]
    src = first_gt[dimg] + np.where(near, rank % np.maximum(n_gt[dimg], 1), 0)
    base = np.where(near[:, None], gbox[np.minimum(src, max(G - 1, 0))] if G else 0.0, 0.0)
    jit = rng.normal(0, 0.08, (D, 4)) * np.concatenate([base[:, 2:], base[:, 2:]], 1)
    rside = np.minimum(np.exp(rng.uniform(np.log(4), np.log(300), (D, 2))), [W, H])
    rxy = rng.uniform(0, 1, (D, 2)) * ([W, H] - rside)
    rand = np.concatenate([rxy, rside], 1)
    dbox = np.where(near[:, None], base + jit, rand)
    dbox[:, 2:] = np.maximum(dbox[:, 2:], 1.0)
    dbox = np.round(dbox, 2)
    dlab = np.where(near & (rng.random(D) < 0.85), glab[np.minimum(src, max(G - 1, 0))] if G else 1,
                    rng.integers(1, n_categories + 1, D))
    dscore = np.round(np.where(near, rng.beta(4, 2, D), rng.beta(1.2, 5, D)), score_decimals)
    dets = [{"image_id": int(img_ids[dimg[j]]), "category_id": int(dlab[j]), "bbox": dbox[j].tolist(),
             "score": float(dscore[j])} for j in range(D)]
    return {"images": images, "annotations": anns, "categories": cats}, dets


def to_tensors(gt: dict, dets: list, box_format: str = "xywh"):
    """(preds, targets) lists for ``COCOEvaluator.update()`` from COCO dicts.

    One entry per gt image, in sorted id order, float64 boxes.

    Args:
        gt: a COCO ground-truth dict.
        dets: a list of COCO result dicts.
        box_format: "xywh" (COCO's) or "xyxy", the format of the returned boxes.

    Returns:
        (preds, targets): lists of dicts as ``update()`` takes them.

    Raises:
        KeyError: a detection of an image that is not in the gt.

    Example:
        >>> from segfast.metrics import COCOEvaluator, synthetic_coco, to_tensors
        >>> gt, dets = synthetic_coco(n_images=10, n_categories=3)
        >>> preds, targets = to_tensors(gt, dets, box_format="xyxy")
        >>> m = COCOEvaluator(box_format="xyxy")
        >>> m.update(preds, targets)
        >>> m.compute()["stats"].shape
        torch.Size([12])
    """
    img_ids = sorted(im["id"] for im in gt["images"])
    pos = {i: n for n, i in enumerate(img_ids)}
    per_gt = [[] for _ in img_ids]
    per_dt = [[] for _ in img_ids]
    for a in gt["annotations"]:
        per_gt[pos[a["image_id"]]].append(a)
    for d in dets:
        per_dt[pos[d["image_id"]]].append(d)

    def boxes(lst):
        b = torch.tensor([x["bbox"] for x in lst], dtype=torch.float64).reshape(-1, 4)
        return b if box_format == "xywh" else torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], 1)

    preds = [{"boxes": boxes(d), "scores": torch.tensor([x["score"] for x in d], dtype=torch.float64),
              "labels": torch.tensor([x["category_id"] for x in d], dtype=torch.int64)} for d in per_dt]
    targets = [{"boxes": boxes(g), "labels": torch.tensor([x["category_id"] for x in g], dtype=torch.int64),
                "iscrowd": torch.tensor([x.get("iscrowd", 0) for x in g], dtype=torch.int64),
                "area": torch.tensor([x["area"] for x in g], dtype=torch.float64)} for g in per_gt]
    return preds, targets
