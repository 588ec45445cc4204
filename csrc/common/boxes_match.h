// Box matching (box_iou_max) and NMS: the problem descriptions the bindings
// hand to the CPU and CUDA kernels, and the few SEGFAST_HD rules both share.
// The geometry itself (formats, intersection, IoU) is csrc/common/boxes.h.
// Rules (segfast/reference/boxes_match.py has them in words):
//   box_iou_max: argmax = lowest gt index among equal maxima over valid gts,
//     -1 (max 0) when an image has none; gmax = max over anchors, 0 for
//     N = 0; the kernels leave invalid gts' gmax at its initial 0 (Python
//     writes the -1).
//   nms: boxes arrive already sorted (stable, by decreasing score); box j
//     is suppressed by a kept earlier box i when IoU > threshold and (for
//     batched NMS) cls[i] == cls[j].
#pragma once

#include <cstdint>

#include "boxes.h"

namespace segfast {
namespace boxes {

// boxes [B, N, 4] and gt [B, M, 4] with element strides (a batch stride of 0
// broadcasts one set of anchors / gts over the batch), optional gt_valid
// [B, M] (uint8/bool, 0 = padding). Outputs, contiguous: mx [B, N] and
// gmax [B, M] in the compute type (double for float64 boxes, else float;
// gmax zero-initialised by the caller), arg [B, N] int64.
struct IouMaxProblem {
  const void* a = nullptr;
  int a_dtype = 0;
  int64_t asB = 0, asN = 0, as4 = 0;
  const void* g = nullptr;
  int64_t gsB = 0, gsM = 0, gs4 = 0;
  const uint8_t* valid = nullptr;  // nullptr: every gt is valid
  int64_t vsB = 0, vsM = 0;
  int64_t B = 0, N = 0, M = 0;
  int fmt = kXYXY;
  void* mx = nullptr;
  int64_t* arg = nullptr;
  void* gmax = nullptr;
};

// Sorted boxes [N, 4] (strides s0, s4), optional classes (int64 [N],
// contiguous, same order), keep flags out (uint8 [N]).
struct NmsProblem {
  const void* b = nullptr;
  int dtype = 0;
  int64_t s0 = 0, s4 = 0;
  const int64_t* cls = nullptr;  // nullptr: one class
  int64_t N = 0;
  int fmt = kXYXY;
  double threshold = 0.5;
  uint8_t* keep = nullptr;
};

// IoU exactly as the eager reference rounds it: every product and sum
// rounded on its own, never fused into an FMA (nvcc contracts by default;
// the CPU file turns contraction off), so CPU, CUDA and the reference agree
// bit for bit and break ties and threshold comparisons the same way.
#if defined(__CUDA_ARCH__)
SEGFAST_HD float mul_rn(float a, float b) { return __fmul_rn(a, b); }
SEGFAST_HD float add_rn(float a, float b) { return __fadd_rn(a, b); }
SEGFAST_HD float sub_rn(float a, float b) { return __fsub_rn(a, b); }
SEGFAST_HD double mul_rn(double a, double b) { return __dmul_rn(a, b); }
SEGFAST_HD double add_rn(double a, double b) { return __dadd_rn(a, b); }
SEGFAST_HD double sub_rn(double a, double b) { return __dsub_rn(a, b); }
#else
template <typename T> SEGFAST_HD T mul_rn(T a, T b) { return a * b; }
template <typename T> SEGFAST_HD T add_rn(T a, T b) { return a + b; }
template <typename T> SEGFAST_HD T sub_rn(T a, T b) { return a - b; }
#endif

template <typename T>
SEGFAST_HD T area_rn(const Box<T>& b) {
  return mul_rn(sub_rn(b.x2, b.x1), sub_rn(b.y2, b.y1));
}

// boxes.h iou_from(inter_area(a, b), area_a, area_b), unfused.
template <typename T>
SEGFAST_HD T iou_rn(const Box<T>& a, const Box<T>& b, T area_a, T area_b) {
  const T w = sub_rn(a.x2 < b.x2 ? a.x2 : b.x2, a.x1 > b.x1 ? a.x1 : b.x1);
  const T h = sub_rn(a.y2 < b.y2 ? a.y2 : b.y2, a.y1 > b.y1 ? a.y1 : b.y1);
  const T inter = mul_rn(w > T(0) ? w : T(0), h > T(0) ? h : T(0));
  const T uni = sub_rn(add_rn(area_a, area_b), inter);
  return uni > T(0) ? inter / uni : T(0);
}

constexpr int kNmsWord = 64;  // boxes per bitmask word (CUDA / Triton mask)

// Does kept box i (earlier) suppress box j? Ties at the threshold do not.
template <typename T>
SEGFAST_HD bool suppresses(T iou_ij, T threshold, int64_t cls_i, int64_t cls_j) {
  return iou_ij > threshold && cls_i == cls_j;
}

}  // namespace boxes
}  // namespace segfast
