// Dense CRF family: the permutohedral-lattice math shared by the CPU and CUDA
// kernels (segfast/reference/crf.py is the readable version and the oracle).
//
// A pixel's feature vector f (d values: x/sx, y/sy [, r/sr, g/sg, b/sb]) is
// elevated onto the hyperplane sum = 0 of R^(d+1), scaled so that the lattice
// blur approximates exp(-|f_i - f_j|^2 / 2), and located in its simplex: the
// nearest remainder-0 point rem0, the rank of each coordinate's offset, and
// the d+1 barycentric weights. Vertex r of the simplex has the integer key
// key_i = rem0_i + r - (d+1)*[rank_i > d - r] (i < d; coordinate d is implied
// by sum = 0). Conventions (float32 arithmetic, round half to even, rank ties
// broken by index) are those of Krähenbühl's implementation wrapped by
// pydensecrf, so lattices agree with it point for point.
#pragma once

#include <cmath>
#include <cstdint>

#include "dtypes.h"

namespace segfast {
namespace crf {

constexpr int kMaxD = 8;  // features per kernel: 2 (Gaussian) or 5 (bilateral)

// Normalization codes, shared with segfast/ops/crf.py.
enum Normalization : int { kSymmetric = 0, kAfter = 1, kBefore = 2, kNone = 3 };

struct Simplex {
  int32_t rem0[kMaxD + 1];
  int32_t rank[kMaxD + 1];
  float bary[kMaxD + 2];
};

// scale[i] = sqrt(2/3)(d+1) / sqrt((i+1)(i+2)), the diagonal of the elevation matrix
// (the first factor rounded to float first, as pydensecrf does).
SEGFAST_HD void lattice_scale(int d, float* scale) {
  const float inv_std = float(std::sqrt(2.0 / 3.0) * (d + 1));
  for (int i = 0; i < d; ++i) scale[i] = float(1.0 / std::sqrt(double((i + 2) * (i + 1))) * double(inv_std));
}

// DD > 0: d known at compile time (2 or 5 in practice), so the loops unroll
// and the small arrays live in registers; the arithmetic is the same.
template <int DD>
SEGFAST_HD void locate_t(const float* f, int d_rt, const float* scale, Simplex& s) {
  const int d = DD > 0 ? DD : d_rt;
  float el[kMaxD + 1];
  float sm = 0.f;
  for (int j = d; j > 0; --j) {
    const float cf = f[j - 1] * scale[j - 1];
    el[j] = sm - float(j) * cf;
    sm += cf;
  }
  el[0] = sm;
  const float down = 1.0f / float(d + 1);
  int sum = 0;
  float diff[kMaxD + 1];
  for (int i = 0; i <= d; ++i) {
    const float v = rintf(down * el[i]);  // nearest multiple of d+1, half to even
    s.rem0[i] = int32_t(v) * (d + 1);
    sum += int(v);
    diff[i] = el[i] - float(s.rem0[i]);
    s.rank[i] = 0;
  }
  for (int i = 0; i < d; ++i)
    for (int j = i + 1; j <= d; ++j) {  // branch-free: the comparisons are data, not control
      const int lt = diff[i] < diff[j];
      s.rank[i] += lt;
      s.rank[j] += 1 - lt;
    }
  for (int i = 0; i <= d; ++i) {  // back onto the plane sum = 0
    s.rank[i] += sum;
    if (s.rank[i] < 0) {
      s.rank[i] += d + 1;
      s.rem0[i] += d + 1;
    } else if (s.rank[i] > d) {
      s.rank[i] -= d + 1;
      s.rem0[i] -= d + 1;
    }
  }
  for (int i = 0; i <= d + 1; ++i) s.bary[i] = 0.f;
  for (int i = 0; i <= d; ++i) {
    const float v = (el[i] - float(s.rem0[i])) * down;
    s.bary[d - s.rank[i]] += v;
    s.bary[d - s.rank[i] + 1] -= v;
  }
  s.bary[0] += 1.0f + s.bary[d + 1];
}

SEGFAST_HD void vertex_key(const Simplex& s, int d, int r, int32_t* key) {
  for (int i = 0; i < d; ++i) key[i] = s.rem0[i] + r - (s.rank[i] > d - r ? d + 1 : 0);
}

SEGFAST_HD uint64_t hash_key(const int32_t* key, int d) {
  uint64_t h = 0x9e3779b97f4a7c15ull;
  for (int i = 0; i < d; ++i) {
    h ^= uint64_t(uint32_t(key[i]));
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 32;
  }
  return h;
}

// 1 / (1 + 2^-d): the slice factor that makes the blur's centre weight 1.
SEGFAST_HD float slice_alpha(int d) { return 1.0f / (1.0f + std::pow(2.0f, -float(d))); }

}  // namespace crf
}  // namespace segfast
