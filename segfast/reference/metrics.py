"""Eager references of the metrics family (the oracles of the tests).

``coco_eval``: pycocotools' ``evaluateImg`` + ``accumulate`` written out
loop by loop in numpy over the same grouped arrays the C++ kernel
(csrc/cpu/metrics.cpp) takes; segfast/metrics/detection.py states the rules.
``confusion_matrix``: argmax + ``torch.bincount``.
"""

from __future__ import annotations

import numpy as np
import torch


def _bb_iou(d, g, crowd):
    """maskApi.c bbIou on xywh float64 boxes: [len(d), len(g)]."""
    out = np.zeros((len(d), len(g)))
    for j, G in enumerate(g):
        ga = G[2] * G[3]
        for i, D in enumerate(d):
            da = D[2] * D[3]
            w = min(D[2] + D[0], G[2] + G[0]) - max(D[0], G[0])
            if w <= 0:
                continue
            h = min(D[3] + D[1], G[3] + G[1]) - max(D[1], G[1])
            if h <= 0:
                continue
            inter = w * h
            out[i, j] = inter / (da if crowd[j] else da + ga - inter)
    return out


def coco_eval(K, I, gt_box, gt_area, gt_crowd, gt_idnz, gt_off, dt_box, dt_score, dt_off,
              iou_thr, rec_thr, area_rng, max_dets):
    """-> precision [T,R,K,A,M], recall [T,K,A,M], scores [T,R,K,A,M], ap_all [T,K,A,M], npig [K,A]."""
    T, R, A, M = len(iou_thr), len(rec_thr), len(area_rng), len(max_dets)
    precision = -np.ones((T, R, K, A, M))
    scores = -np.ones((T, R, K, A, M))
    recall = -np.ones((T, K, A, M))
    ap_all = -np.ones((T, K, A, M))
    npig_out = np.zeros((K, A), dtype=np.int64)
    for k in range(K):
        evals = {}  # (a, i) -> (scores, codes [T, D])
        for i in range(I):
            grp = k * I + i
            g0, g1 = gt_off[grp], gt_off[grp + 1]
            d0, d1 = dt_off[grp], dt_off[grp + 1]
            if g0 == g1 and d0 == d1:
                continue
            order = d0 + np.argsort(-dt_score[d0:d1], kind="mergesort")[: max_dets[-1]]
            d, s = dt_box[order], dt_score[order]
            g, crowd, idnz = gt_box[g0:g1], gt_crowd[g0:g1], gt_idnz[g0:g1]
            ious = _bb_iou(d, g, crowd)
            for a, (lo, hi) in enumerate(area_rng):
                area = gt_area[g0:g1]
                gig = (crowd != 0) | (area < lo) | (area > hi)
                gind = np.argsort(gig, kind="mergesort")
                codes = np.zeros((T, len(d)), dtype=np.uint8)
                for t, thr_t in enumerate(iou_thr):
                    gtm = np.zeros(len(g), bool)
                    for di in range(len(d)):
                        thr, m = min(thr_t, 1 - 1e-10), -1
                        for j in gind:
                            if gtm[j] and not crowd[j]:
                                continue
                            if m > -1 and not gig[m] and gig[j]:
                                break
                            if ious[di, j] < thr:
                                continue
                            thr, m = ious[di, j], j
                        ig, hit = False, False
                        if m > -1:
                            gtm[m] = True
                            ig, hit = bool(gig[m]), bool(idnz[m])
                        if not hit:
                            da = d[di, 2] * d[di, 3]
                            ig = ig or da < lo or da > hi
                        codes[t, di] = 0 if ig else (1 if hit else 2)
                evals[a, i] = (s, codes, int((~gig).sum()))
        for a in range(A):
            npig = sum(e[2] for (aa, _), e in evals.items() if aa == a)
            npig_out[k, a] = npig
            for m, md in enumerate(max_dets):
                E = [evals[a, i] for i in range(I) if (a, i) in evals]
                if not E or npig == 0:
                    continue
                s = np.concatenate([e[0][:md] for e in E])
                inds = np.argsort(-s, kind="mergesort")
                s_sorted = s[inds]
                codes = np.concatenate([e[1][:, :md] for e in E], axis=1)[:, inds]
                tps = np.cumsum(codes == 1, axis=1).astype(np.float64)
                fps = np.cumsum(codes == 2, axis=1).astype(np.float64)
                for t in range(T):
                    tp, fp = tps[t], fps[t]
                    nd = len(tp)
                    rc = tp / npig
                    pr = tp / (fp + tp + np.spacing(1))
                    recall[t, k, a, m] = rc[-1] if nd else 0
                    pr = pr.tolist()
                    for q in range(nd - 1, 0, -1):
                        if pr[q] > pr[q - 1]:
                            pr[q - 1] = pr[q]
                    prev, ap = 0.0, 0.0
                    for q in range(nd):
                        ap += (rc[q] - prev) * pr[q]
                        prev = rc[q]
                    ap_all[t, k, a, m] = ap
                    inds_r = np.searchsorted(rc, rec_thr, side="left")
                    q_, ss = np.zeros(R), np.zeros(R)
                    for ri, pi in enumerate(inds_r):
                        if pi >= nd:
                            break
                        q_[ri], ss[ri] = pr[pi], s_sorted[pi]
                    precision[t, :, k, a, m] = q_
                    scores[t, :, k, a, m] = ss
    return precision, recall, scores, ap_all, npig_out


def confusion_matrix(preds: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index=None):
    """[C, C] int64, rows = target, columns = prediction (argmax over dim 1 for logits)."""
    if preds.is_floating_point():
        preds = preds.argmax(1)
    p, t = preds.reshape(-1).long(), target.reshape(-1).long()
    keep = t != ignore_index if ignore_index is not None else torch.ones_like(t, dtype=torch.bool)
    p, t = p[keep], t[keep]
    return torch.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)
