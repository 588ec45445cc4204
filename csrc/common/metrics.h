// metrics family: the rules the CPU pass (csrc/cpu/metrics.cpp) and the CUDA
// kernels (csrc/cuda/metrics.cu) share, so both compute the same function.
// In words: segfast/metrics/detection.py (COCO) and segmentation.py
// (confusion matrix).
#pragma once

#include <cmath>
#include <cstdint>

#include "boxes_match.h"
#include "dtypes.h"

namespace segfast {
namespace metrics {

// ---- COCO box matching (pycocotools' evaluateImg) ---------------------------

// The (category, image) groups of ground truths and detections that both
// matching passes read (segfast/metrics/detection.py lays them out): gt_off /
// dt_off [G + 1] int64 row offsets of every group; gt_box [Ng, 4] and dt_box
// [D, 4] float64 x, y, w, h; gt_area [Ng] float64; gt_crowd, gt_idnz [Ng]
// uint8 (crowd; id != 0, as pycocotools tests matches by id); area_rng [A, 2]
// float64.
struct CocoGroups {
  const int64_t* gt_off = nullptr;
  const int64_t* dt_off = nullptr;
  const double* gt_box = nullptr;
  const double* gt_area = nullptr;
  const uint8_t* gt_crowd = nullptr;
  const uint8_t* gt_idnz = nullptr;
  const double* dt_box = nullptr;
  const double* area_rng = nullptr;
  int64_t A = 0;
};

// The device matching (csrc/cuda/metrics.cu): groups [n_groups] int64, the
// groups that have detections (a group's detections in score order, already
// cut to maxDets[-1]); thr [T] float64 min(t, 1 - 1e-10); max_gts: the most
// gts of one group. Out: code [D, A, T] uint8 (kCocoIgnored / TP / FP).
struct CocoMatchProblem : CocoGroups {
  const int64_t* groups = nullptr;
  int64_t n_groups = 0;
  const double* thr = nullptr;
  int64_t T = 0, max_gts = 0;
  uint8_t* code = nullptr;
};

// pycocotools' accumulate (the host pass, csrc/cpu/metrics.cpp) of K
// categories, T IoU thresholds, R recall thresholds rec_thr [R], A area
// ranges and M maxDets max_dets [M] (each >= 1). Outputs, float64 contiguous,
// filled with -1 by the caller: precision and scores [T, R, K, A, M], recall
// and ap_all [T, K, A, M] (ap_all: the sum of (R_n - R_{n-1}) P_n over the
// detections); npig [K, A] int64, the regular gts (an output of the eval, an
// input of accumulate alone). Optional (curve_code null: none): the codes of
// the detections kept at (curve_a, curve_m), per category in score order,
// category k at curve_off[k] ([K + 1]) of curve_score [curve_total] and of
// each row of curve_code [T, curve_total] uint8.
struct CocoAccumulateProblem {
  int64_t K = 0, T = 0, R = 0, A = 0, M = 0;
  const double* rec_thr = nullptr;
  const int64_t* max_dets = nullptr;
  double* precision = nullptr;
  double* recall = nullptr;
  double* scores = nullptr;
  double* ap_all = nullptr;
  int64_t* npig = nullptr;
  int64_t curve_a = -1, curve_m = -1;
  const int64_t* curve_off = nullptr;
  int64_t curve_total = 0;
  double* curve_score = nullptr;
  uint8_t* curve_code = nullptr;
};

// The host pass (evaluateImg + accumulate): the groups of K * I (category k,
// image i: group k * I + i), detections in input order inside a group with
// scores dt_score [D], IoU thresholds iou_thr [T].
struct CocoEvalProblem {
  CocoGroups groups;
  CocoAccumulateProblem acc;
  int64_t I = 0;
  const double* dt_score = nullptr;
  const double* iou_thr = nullptr;
};

// What a block of the matching kernel keeps for its group, for groups of at
// most max_gts gts: the IoU row of the current detection (double [max_gts]),
// crowd and id != 0 flags, the ignored flags per area range (uint8 [A,
// max_gts]) and one matched bit per gt for every (area range, threshold)
// pair (uint32 words [A * T, ceil(max_gts / 32)]). Offsets in bytes.
struct CocoMatchLayout {
  int64_t crowd, idnz, ignored, matched, words, bytes;
};
SEGFAST_HD CocoMatchLayout coco_match_layout(int64_t max_gts, int64_t A, int64_t T) {
  CocoMatchLayout l;
  const int64_t ng = max_gts > 1 ? max_gts : 1;
  l.crowd = 8 * ng;
  l.idnz = l.crowd + ng;
  l.ignored = l.idnz + ng;
  l.matched = (l.ignored + A * ng + 3) / 4 * 4;
  l.words = (ng + 31) / 32;
  l.bytes = (l.matched + 4 * A * T * l.words + 7) / 8 * 8;
  return l;
}

// Where the block keeps it: shared memory up to kCocoSharedBytes (the 48 KiB
// a launch takes without the opt-in attribute), else a global scratch of one
// slot per block, at most kCocoScratchBytes in all (one slot when a slot is
// larger), whose blocks then take the groups in turn.
constexpr int64_t kCocoSharedBytes = 48 * 1024;
constexpr int64_t kCocoScratchBytes = int64_t(64) << 20;
// -> bytes of global scratch the launch needs: 0 when the layout fits shared memory.
SEGFAST_HD int64_t coco_match_scratch_bytes(int64_t max_gts, int64_t A, int64_t T, int64_t n_groups) {
  const int64_t per = coco_match_layout(max_gts, A, T).bytes;
  if (per <= kCocoSharedBytes || n_groups <= 0) return 0;
  int64_t blocks = kCocoScratchBytes / per;
  blocks = blocks < 1 ? 1 : (blocks > n_groups ? n_groups : blocks);
  return blocks * per;
}

// Products and sums rounded one by one, as pycocotools' C code does them:
// boxes_match.h's _rn helpers (the device's _rn intrinsics, which nvcc never
// contracts into FMAs; the CPU file includes this header after turning
// contraction off).
SEGFAST_HD double coco_mul(double a, double b) { return boxes::mul_rn(a, b); }
SEGFAST_HD double coco_add(double a, double b) { return boxes::add_rn(a, b); }
SEGFAST_HD double coco_sub(double a, double b) { return boxes::sub_rn(a, b); }

// maskApi.c bbIou of a detection B and a gt G (both x, y, w, h): 0 without
// overlap; a crowd gt divides by the detection's area.
SEGFAST_HD double coco_iou(const double* B, const double* G, bool crowd) {
  const double w = coco_sub(fmin(coco_add(B[2], B[0]), coco_add(G[2], G[0])), fmax(B[0], G[0]));
  if (w <= 0) return 0.0;
  const double h = coco_sub(fmin(coco_add(B[3], B[1]), coco_add(G[3], G[1])), fmax(B[1], G[1]));
  if (h <= 0) return 0.0;
  const double in = coco_mul(w, h);
  const double da = coco_mul(B[2], B[3]);
  const double u = crowd ? da : coco_sub(coco_add(da, coco_mul(G[2], G[3])), in);
  return in / u;
}

// The greedy match of one detection at one IoU threshold (thr: min(t, 1 -
// 1e-10)), pycocotools' loop over the gts sorted regular first, ignored last
// (stable): skip a matched gt unless it is a crowd, take every gt whose IoU
// is not below the best so far (so equal IoU goes to the later gt, and a NaN
// IoU is taken), and stop at the first ignored gt once a regular one is
// held. iou[j], ignored[j], crowd[j] of the ng gts in input order; matched(j)
// says whether gt j is taken. -> the gt, or -1.
template <typename Matched>
SEGFAST_HD int64_t coco_greedy(const double* iou, const uint8_t* ignored, const uint8_t* crowd, int64_t ng,
                               double thr, const Matched& matched) {
  int64_t m = -1;
  for (int pass = 0; pass < 2 && m < 0; ++pass) {  // regular gts, then (without a match) the ignored ones
    for (int64_t j = 0; j < ng; ++j) {
      if ((ignored[j] != 0) != (pass == 1)) continue;
      if (matched(j) && !crowd[j]) continue;
      if (iou[j] < thr) continue;
      thr = iou[j];
      m = j;
    }
  }
  return m;
}

enum : uint8_t { kCocoIgnored = 0, kCocoTP = 1, kCocoFP = 2 };

// The code of a detection of area `area` matched to gt m (-1: none; ignored[m],
// id_nonzero[m] of that gt) in the area range [lo, hi]: a match to a gt whose
// id is 0 counts as none (pycocotools tests dtm > 0), and an unmatched
// detection outside the range is ignored.
SEGFAST_HD uint8_t coco_code(int64_t m, const uint8_t* ignored, const uint8_t* id_nonzero, double area, double lo,
                             double hi) {
  const bool hit = m > -1 && id_nonzero[m] != 0;
  bool ig = m > -1 && ignored[m] != 0;
  if (!hit) ig = ig || area < lo || area > hi;
  return ig ? kCocoIgnored : (hit ? kCocoTP : kCocoFP);
}

// ---- segmentation confusion matrix ------------------------------------------

// The device count (csrc/cuda/metrics.cu): predictions from logits x [N, C,
// S] (the argmax over C) or from class indices x [N, S] (uint8 / int32 /
// int64; xsC unused), targets t [N, S] (uint8 / int32 / int64), element
// strides; out [C * C + 1] int64, added to (slot C * C: the kConfBad pixels).
struct ConfusionProblem {
  const void* x = nullptr;
  int x_dtype = 0;
  bool logits = true;
  int64_t xsN = 0, xsC = 0, xsS = 0;
  const void* t = nullptr;
  int t_dtype = 0;
  int64_t tsN = 0, tsS = 0;
  int64_t N = 0, C = 0, S = 0;
  bool has_ignore = false;
  int64_t ignore = 0;
  int64_t* out = nullptr;
};

// torch.argmax's order: a NaN beats everything (the first NaN wins), else
// the larger value, and among equal values the first. Is v (a later class)
// the new best over best?
template <typename T>
SEGFAST_HD bool argmax_takes(T v, T best) {
  return best == best && (v != v || v > best);
}

// The bin of a pixel: target * C + pred when the target is in [0, C) (and,
// from class indices, the prediction too); kConfBad (the caller's slot C*C)
// for a target that is not ignore_index and out of range, or a prediction
// out of range; kConfSkip for an ignored pixel.
constexpr int64_t kConfSkip = -1;
constexpr int64_t kConfBad = -2;
SEGFAST_HD int64_t confusion_bin(int64_t target, int64_t pred, int64_t C, bool has_ignore, int64_t ignore) {
  if (has_ignore && target == ignore) return kConfSkip;
  if (target < 0 || target >= C || pred < 0 || pred >= C) return kConfBad;
  return target * C + pred;
}

}  // namespace metrics
}  // namespace segfast
