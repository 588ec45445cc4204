// Range check of class-index targets on CPU (segfast/ops/_common.py
// _check_labels): the smallest and largest label that is not ignore_index,
// in one read, where torch needs an aminmax (and, with an ignore_index, a
// compare and a where over the whole label map first).
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "../common/dtypes.h"
#include "common.h"

namespace segfast {
namespace cpu {
namespace {

constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
constexpr int64_t kMin = std::numeric_limits<int64_t>::min();

// One row; branch-free where it is contiguous, so that it vectorises. Ternaries,
// not std::min: in a target_clones function GCC keeps that a call taking l's
// address, and the loop stays scalar.
template <typename L>
SEGFAST_INLINE void range_row(const L* __restrict row, int64_t len, int64_t sL, bool has_ignore,
                              int64_t ign, int64_t* lo, int64_t* hi) {
  int64_t l = kMax, h = kMin;
  if (sL == 1 && !has_ignore) {
    for (int64_t i = 0; i < len; ++i) {
      const int64_t v = int64_t(row[i]);
      l = v < l ? v : l;
      h = v > h ? v : h;
    }
  } else if (sL == 1) {
    for (int64_t i = 0; i < len; ++i) {
      const int64_t v0 = int64_t(row[i]);
      const int64_t v = v0 == ign ? 0 : v0;  // 0 is a valid label: an ignored one changes nothing
      l = v < l ? v : l;
      h = v > h ? v : h;
    }
  } else {
    for (int64_t i = 0; i < len; ++i) {
      const int64_t v = int64_t(row[i * sL]);
      if (has_ignore && v == ign) continue;
      l = v < l ? v : l;
      h = v > h ? v : h;
    }
  }
  *lo = l < *lo ? l : *lo;
  *hi = h > *hi ? h : *hi;
}

// Cloned here, not around the parallel loop: OpenMP outlines a parallel
// region into a function of its own, which does not inherit target_clones.
SEGFAST_CLONES void range_row_any(const void* t, int dtype, int64_t off, int64_t len, int64_t sL,
                                  bool has_ignore, int64_t ign, int64_t* lo, int64_t* hi) {
  switch (dtype) {
    case kUInt8:
    case kBool:
      range_row(static_cast<const uint8_t*>(t) + off, len, sL, has_ignore, ign, lo, hi);
      break;
    case kInt32:
      range_row(static_cast<const int32_t*>(t) + off, len, sL, has_ignore, ign, lo, hi);
      break;
    default:
      range_row(static_cast<const int64_t*>(t) + off, len, sL, has_ignore, ign, lo, hi);
  }
}

}  // namespace

// Labels t[r * sR + i * sL], r < rows, i < len (uint8/bool, int32 or int64). An
// ignored label counts as 0 or not at all (lo > hi when there is nothing else):
// either way no error, and the same smallest negative and largest label.
void label_range(const void* t, int dtype, int64_t rows, int64_t len, int64_t sR, int64_t sL,
                 bool has_ignore, int64_t ign, int nt, int64_t* lo_out, int64_t* hi_out) {
  nt = int(std::max<int64_t>(1, std::min<int64_t>(nt, rows)));
  int64_t lo = kMax, hi = kMin;
#pragma omp parallel for num_threads(nt) schedule(static) reduction(min : lo) reduction(max : hi)
  for (int64_t r = 0; r < rows; ++r)
    range_row_any(t, dtype, r * sR, len, sL, has_ignore, ign, &lo, &hi);
  *lo_out = lo;
  *hi_out = hi;
}

}  // namespace cpu
}  // namespace segfast
