// The input view every loss family reads: logits x [N, C, S] and targets
// (class indices [N, S] or dense [N, C, S]) with their dtype codes and element
// strides, and the label decoding parameters. Each family's Problem struct
// (region.h, pixel.h) extends it with what only that family needs; the
// bindings fill this part once (make_problem in bindings.cpp).
#pragma once

#include <cstdint>

#include "dtypes.h"

namespace segfast {

// Strides are in elements; any stride (0, negative, non-contiguous) is allowed.
struct Inputs {
  const void* x;
  int x_dtype;
  int64_t xsN, xsC, xsS;
  const void* t;
  int t_dtype;
  bool t_is_label;
  int64_t tsN, tsC, tsS;  // labels: tsC unused
  int64_t N, C, S;
  int64_t label_offset;
  bool has_ignore;
  double ignore_value;
};

// x[n, c, s] in the compute type T (float, or double for float64 x).
template <typename T>
SEGFAST_HD T load_x(const Inputs& pr, int64_t n, int64_t c, int64_t s) {
  T v;
  load_as(pr.x, pr.x_dtype, n * pr.xsN + c * pr.xsC + s * pr.xsS, v);
  return v;
}

}  // namespace segfast
