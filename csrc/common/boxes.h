// Boxes family: box geometry shared by the CPU and CUDA kernels (IoU family,
// matching, NMS). Everything is SEGFAST_HD and computed in the accumulation
// type T (float, or double for float64 boxes).
//
// Degenerate boxes: a pair whose union has zero area (or a NaN area) gets
// IoU 0, not torchvision's 0/0 = NaN. Non-degenerate pairs are unchanged
// (no eps is added to the union), so values match torchvision's exactly.
#pragma once

#include <cstdint>

#include "dtypes.h"

namespace segfast {
namespace boxes {

enum Fmt : int { kXYXY = 0, kXYWH = 1, kCXCYWH = 2 };

template <typename T>
struct Box {
  T x1, y1, x2, y2;
};

// One box from 4 coordinates in format fmt, as xyxy.
template <typename T>
SEGFAST_HD Box<T> to_xyxy(T a, T b, T c, T d, int fmt) {
  if (fmt == kXYWH) return {a, b, a + c, b + d};
  if (fmt == kCXCYWH) {
    const T hw = c * T(0.5), hh = d * T(0.5);
    return {a - hw, b - hh, a + hw, b + hh};
  }
  return {a, b, c, d};
}

// Box i of a [.., 4] array with element stride `s4` between coordinates.
template <typename T>
SEGFAST_HD Box<T> load_box(const void* p, int dtype, int64_t off, int64_t s4, int fmt) {
  T a, b, c, d;
  load_as(p, dtype, off, a);
  load_as(p, dtype, off + s4, b);
  load_as(p, dtype, off + 2 * s4, c);
  load_as(p, dtype, off + 3 * s4, d);
  return to_xyxy(a, b, c, d, fmt);
}

// torchvision's area: (x2 - x1) * (y2 - y1), negative for inverted boxes.
template <typename T>
SEGFAST_HD T area(const Box<T>& b) {
  return (b.x2 - b.x1) * (b.y2 - b.y1);
}

template <typename T>
SEGFAST_HD T inter_area(const Box<T>& a, const Box<T>& b) {
  const T w = (a.x2 < b.x2 ? a.x2 : b.x2) - (a.x1 > b.x1 ? a.x1 : b.x1);
  const T h = (a.y2 < b.y2 ? a.y2 : b.y2) - (a.y1 > b.y1 ? a.y1 : b.y1);
  return (w > T(0) ? w : T(0)) * (h > T(0) ? h : T(0));
}

// inter / union, 0 where the union is not positive (see the header comment).
template <typename T>
SEGFAST_HD T iou_from(T inter, T area_a, T area_b) {
  const T uni = area_a + area_b - inter;
  return uni > T(0) ? inter / uni : T(0);
}

template <typename T>
SEGFAST_HD T iou(const Box<T>& a, const Box<T>& b) {
  return iou_from(inter_area(a, b), area(a), area(b));
}

}  // namespace boxes
}  // namespace segfast
