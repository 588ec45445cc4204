// Lovász family: the math shared by the CPU and CUDA kernels (see
// segfast/ops/lovasz.py for the calling side and the derivation).
//
// A segment (row) is sorted by error, descending; ties keep the pixels'
// original order (the torch backend's stable sort of the same keys). Pixel i
// (1-based rank) of a row with T = Σ fg over its valid pixels, A_i / B_i the
// cumulative fg / (1 - fg) up to and including rank i, gets the weight
//
//     w_i = (T - A_i + i·fg_i) / ((T + B_i)(T + B_{i-1}))     (= 1 when T + B_{i-1} = 0)
//
// the first difference of the Lovász extension of the Jaccard loss, written
// without the cancellation of g_i - g_{i-1}. B_i = i - A_i.
#pragma once

#include <cstdint>

#include "dtypes.h"

namespace segfast {
namespace lovasz {

// Sort keys: ascending key = descending error. Errors are >= 0 by contract;
// negative values (and -0.0) sort as 0, like the torch backend's float32 keys.
SEGFAST_HD uint32_t desc_key(float e) {
  int32_t b = int32_t(f32_bits(e));
  if (b < 0) b = 0;
  return 0x7fffffffu - uint32_t(b);
}

SEGFAST_HD uint64_t desc_key(double e) {
#if defined(__CUDA_ARCH__)
  int64_t b = __double_as_longlong(e);
#else
  int64_t b;
  std::memcpy(&b, &e, 8);
#endif
  if (b < 0) b = 0;
  return 0x7fffffffffffffffull - uint64_t(b);
}

// w_i from T, A_i (fg up to and including rank i), the rank i and fg_i.
template <typename A>
SEGFAST_HD A weight(A total, A cum_fg, A rank, A fg) {
  const A d1 = total + rank - cum_fg;  // T + B_i
  const A d0 = d1 - (A(1) - fg);       // T + B_{i-1}
  if (!(d0 > A(0))) return A(1);       // T = 0 at rank 1: g_1 = 1
  return (total - cum_fg + rank * fg) / (d1 * d0);
}

// The CPU kernel's input: segments (r1, r2) of pixels (b, s) in 4-D views with
// element strides (any, 0 included). w is written contiguous [R1*R2, B*S].
struct Rows {
  int64_t R1, R2, B, S;
  const void* e;  // errors: float32 or float64
  int e_dtype;
  int64_t es[4];
  const void* f;  // fg in [0, 1]: any dtype code (bool / integer / float)
  int f_dtype;
  int64_t fs[4];
  const void* v;  // valid (bool / uint8), or null: every pixel valid
  int v_dtype;
  int64_t vs[4];
  void* w;  // float32 or float64
  int w_dtype;
};

// The fused Lovász-softmax rows of the CPU kernel: probabilities p and class
// labels instead of errors and fg. Segment (r1, r2) is class cls[r2] (of the
// classes selected into p's K channels); pixel (b, s). fg = (label ==
// cls[r2]), valid = (label != ignore), error = fg ? 1 - p : p. Outputs:
// ws = dLoss_row/dp (-w on foreground, w elsewhere) at strides ws_s, and per
// row loss[g] = Σ error·w and total[g] = T (both the weights' dtype).
struct SoftmaxRows {
  int64_t R1, R2, B, S;
  const void* p;  // float32 or float64
  int p_dtype;
  int64_t ps[4];
  const void* lab;  // uint8 / int32 / int64
  int lab_dtype;
  int64_t ls[4];
  const int64_t* cls;  // [R2]
  bool has_ignore;
  double ignore_value;
  void* ws;
  int w_dtype;
  int64_t wss[4];
  void* loss;   // [R1*R2]
  void* total;  // [R1*R2]
};

}  // namespace lovasz
}  // namespace segfast
