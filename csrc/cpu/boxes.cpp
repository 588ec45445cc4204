// Boxes family, CPU kernels (C++ / OpenMP): the IoU variants pairwise (forward,
// and a backward that reduces over M for boxes1 and over N for boxes2 in two
// passes: one writer per output row, no atomics, deterministic) and aligned
// (one pass: value and gradient). Math: csrc/common/boxes.h.
//
// Box arrays are [B, K, 4] with element strides (sB, sK, s4); values and
// grad_output are contiguous. Each pairwise pass first converts the "other"
// box set to xyxy in compute-type SoA buffers, so the inner loop over it
// reads unit-stride arrays and vectorises (CIoU's atan aside).
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../common/boxes.h"
#include "common.h"

namespace segfast {
namespace boxes {

namespace {

int threads_for(int64_t nt, int64_t items) {
  int n = nt <= 0 ? omp_get_max_threads() : int(nt);
  return int(std::max<int64_t>(1, std::min<int64_t>(n, items)));
}

template <typename T>
struct SoA {
  std::vector<T> x1, y1, x2, y2;
  void load(const BoxArg& a, int64_t B, int64_t K, int fmt) {
    x1.resize(B * K); y1.resize(B * K); x2.resize(B * K); y2.resize(B * K);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t k = 0; k < K; ++k) {
        const Box<T> q = load_box<T>(a.p, a.dtype, b * a.sB + k * a.sK, a.s4, fmt);
        const int64_t i = b * K + k;
        x1[i] = q.x1; y1[i] = q.y1; x2[i] = q.x2; y2[i] = q.y2;
      }
  }
  SEGFAST_INLINE Box<T> at(int64_t i) const { return {x1[i], y1[i], x2[i], y2[i]}; }
};

// The kind is a template argument in the inner loops: pair_value is always
// inlined, so each loop is compiled for one kind with no branches on it.
#define SEGFAST_BOX_KIND_SWITCH(kind, CALL) \
  switch (kind) {                           \
    case kIoU: CALL(kIoU); break;           \
    case kGIoU: CALL(kGIoU); break;         \
    case kDIoU: CALL(kDIoU); break;         \
    default: CALL(kCIoU); break;            \
  }

template <typename T, int KIND>
SEGFAST_INLINE void fwd_row(const Box<T>& p, const T* __restrict gx1, const T* __restrict gy1,
                            const T* __restrict gx2, const T* __restrict gy2, T* __restrict o, int64_t M, T eps) {
#pragma omp simd
  for (int64_t m = 0; m < M; ++m) {
    const Box<T> q{gx1[m], gy1[m], gx2[m], gy2[m]};
    o[m] = pair_value<T, false>(p, q, KIND, false, eps, T(0), nullptr, nullptr);
  }
}

// out[b, n, m] = value(box1[b, n], box2[b, m]); rows (b, n) in parallel.
template <typename T>
void pairwise_fwd_impl(const BoxArg& a1, const BoxArg& a2, int64_t B, int64_t N, int64_t M, int kind,
                       int fmt, T eps, void* out, int out_dtype, int64_t nt) {
  SoA<T> g;
  g.load(a2, B, M, fmt);
  const bool direct = out_dtype == (sizeof(T) == 8 ? kFloat64 : kFloat32);
#pragma omp parallel num_threads(threads_for(nt, B * N))
  {
    std::vector<T> row(direct ? 0 : M);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < B * N; ++r) {
      const int64_t b = r / N, n = r % N;
      const Box<T> p = load_box<T>(a1.p, a1.dtype, b * a1.sB + n * a1.sK, a1.s4, fmt);
      T* o = direct ? static_cast<T*>(out) + r * M : row.data();
      const T* gx1 = g.x1.data() + b * M; const T* gy1 = g.y1.data() + b * M;
      const T* gx2 = g.x2.data() + b * M; const T* gy2 = g.y2.data() + b * M;
#define SEGFAST_CALL(K) fwd_row<T, K>(p, gx1, gy1, gx2, gy2, o, M, eps)
      SEGFAST_BOX_KIND_SWITCH(kind, SEGFAST_CALL)
#undef SEGFAST_CALL
      if (!direct) cpu::store_row(out, out_dtype, r * M, 1, o, M);
    }
  }
}

// Sum over l of go * d value / d (own box q), q paired with the other set's row l.
// Blocks of kLanes pairs: their gradients go to a [4][kLanes] buffer in a plain
// loop (auto-vectorised with dq / dw in registers; "omp simd" keeps them as
// per-lane arrays in memory), then into per-lane sums.
template <typename T, bool FIRST, int KIND>
SEGFAST_INLINE void bwd_row(const Box<T>& q, const T* __restrict ox1, const T* __restrict oy1,
                            const T* __restrict ox2, const T* __restrict oy2, const T* __restrict go, int64_t gs,
                            int64_t L, T eps, T* out4) {
  constexpr int kLanes = 16;
  T acc[4][kLanes] = {}, tmp[4][kLanes];
  auto grad = [&](int64_t l, T* dq) __attribute__((always_inline)) {
    const Box<T> w{ox1[l], oy1[l], ox2[l], oy2[l]};
    T dw[4] = {T(0), T(0), T(0), T(0)};
    if (FIRST) pair_value<T, true>(q, w, KIND, false, eps, go[l * gs], dq, dw);
    else pair_value<T, true>(w, q, KIND, false, eps, go[l * gs], dw, dq);
  };
  int64_t l0 = 0;
  for (; l0 + kLanes <= L; l0 += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      T dq[4] = {T(0), T(0), T(0), T(0)};
      grad(l0 + j, dq);
      for (int c = 0; c < 4; ++c) tmp[c][j] = dq[c];
    }
    for (int c = 0; c < 4; ++c)
      for (int j = 0; j < kLanes; ++j) acc[c][j] += tmp[c][j];
  }
  for (int c = 0; c < 4; ++c) {
    T s = T(0);
    for (int j = 0; j < kLanes; ++j) s += acc[c][j];
    out4[c] = s;
  }
  for (int64_t l = l0; l < L; ++l) {
    T dq[4] = {T(0), T(0), T(0), T(0)};
    grad(l, dq);
    for (int c = 0; c < 4; ++c) out4[c] += dq[c];
  }
}

// d[b, k] = sum over the other set of go * d value / d box1 (FIRST) or d box2.
template <typename T, bool FIRST>
void pairwise_bwd_pass(const BoxArg& a1, const BoxArg& a2, int64_t B, int64_t N, int64_t M, int kind,
                       int fmt, T eps, const T* go, void* d, int d_dtype, int64_t nt) {
  const BoxArg& own = FIRST ? a1 : a2;
  const int64_t K = FIRST ? N : M, L = FIRST ? M : N;  // own rows, reduced-over rows
  SoA<T> o;
  o.load(FIRST ? a2 : a1, B, L, fmt);
#pragma omp parallel num_threads(threads_for(nt, B * K))
  {
#pragma omp for schedule(static)
    for (int64_t r = 0; r < B * K; ++r) {
      const int64_t b = r / K, k = r % K;
      const Box<T> q = load_box<T>(own.p, own.dtype, b * own.sB + k * own.sK, own.s4, fmt);
      const T* ox1 = o.x1.data() + b * L; const T* oy1 = o.y1.data() + b * L;
      const T* ox2 = o.x2.data() + b * L; const T* oy2 = o.y2.data() + b * L;
      // grad_output of (q, l): row k of go[b] (FIRST), else column k
      const T* g = FIRST ? go + (b * N + k) * M : go + b * N * M + k;
      const int64_t gs = FIRST ? 1 : M;
      T dd[4];
#define SEGFAST_CALL(KD) bwd_row<T, FIRST, KD>(q, ox1, oy1, ox2, oy2, g, gs, L, eps, dd)
      SEGFAST_BOX_KIND_SWITCH(kind, SEGFAST_CALL)
#undef SEGFAST_CALL
      xyxy_grad_to_fmt(dd, fmt);
      cpu::store_row(d, d_dtype, r * 4, 1, dd, 4);
    }
  }
}

constexpr int64_t kTile = 256;

// Per-thread SoA buffers of one tile of aligned pairs.
template <typename T>
struct AlignedTile {
  T c[8][kTile];  // boxes1 x1 y1 x2 y2, boxes2 x1 y1 x2 y2 (xyxy after conversion)
  T vals[kTile], g1[4 * kTile], g2[4 * kTile];
};

template <typename T>
SEGFAST_INLINE void load_tile(AlignedTile<T>& t, const BoxArg& a, int first, int64_t i0, int64_t len, int fmt) {
  T* c0 = t.c[first]; T* c1 = t.c[first + 1]; T* c2 = t.c[first + 2]; T* c3 = t.c[first + 3];
  cpu::load_row(c0, a.p, a.dtype, i0 * a.sK, a.sK, len);
  cpu::load_row(c1, a.p, a.dtype, i0 * a.sK + a.s4, a.sK, len);
  cpu::load_row(c2, a.p, a.dtype, i0 * a.sK + 2 * a.s4, a.sK, len);
  cpu::load_row(c3, a.p, a.dtype, i0 * a.sK + 3 * a.s4, a.sK, len);
  if (fmt == kXYXY) return;
#pragma omp simd
  for (int64_t j = 0; j < len; ++j) {
    const Box<T> q = to_xyxy(c0[j], c1[j], c2[j], c3[j], fmt);
    c0[j] = q.x1; c1[j] = q.y1; c2[j] = q.x2; c3[j] = q.y2;
  }
}

template <typename T, int KIND, bool GRAD, bool LOSS>
SEGFAST_INLINE void aligned_tile(AlignedTile<T>& t, int64_t len, int fmt, T eps, T offset, T sign, T gscale) {
  const T* __restrict c0 = t.c[0]; const T* __restrict c1 = t.c[1];
  const T* __restrict c2 = t.c[2]; const T* __restrict c3 = t.c[3];
  const T* __restrict c4 = t.c[4]; const T* __restrict c5 = t.c[5];
  const T* __restrict c6 = t.c[6]; const T* __restrict c7 = t.c[7];
  T* __restrict vals = t.vals;
  T* __restrict g1 = t.g1;
  T* __restrict g2 = t.g2;
  auto pair = [&](int64_t j) __attribute__((always_inline)) {
    const Box<T> p{c0[j], c1[j], c2[j], c3[j]}, g{c4[j], c5[j], c6[j], c7[j]};
    T dp[4] = {T(0), T(0), T(0), T(0)}, dg[4] = {T(0), T(0), T(0), T(0)};
    const T v = pair_value<T, GRAD>(p, g, KIND, LOSS, eps, gscale, dp, dg);
    vals[j] = offset + sign * v;
    if (GRAD) {
      xyxy_grad_to_fmt(dp, fmt);
      xyxy_grad_to_fmt(dg, fmt);
      for (int c = 0; c < 4; ++c) {
        g1[4 * j + c] = dp[c];
        g2[4 * j + c] = dg[c];
      }
    }
  };
  if constexpr (GRAD) {
    // No "omp simd": it would keep dp / dg as per-lane arrays in memory (about 2x
    // slower); plain auto-vectorisation turns them into registers.
    for (int64_t j = 0; j < len; ++j) pair(j);
  } else {
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) pair(j);
  }
}

// One pass over aligned pairs i: out[i] = offset + sign * value, and (where the
// pointers are set) d1[i], d2[i] = gscale * d value / d box.
template <typename T>
void aligned_impl(const BoxArg& a1, const BoxArg& a2, int64_t K, int kind, int fmt, bool loss, T eps,
                  T offset, T sign, T gscale, void* out, int out_dtype, void* d1, void* d2, int d_dtype,
                  int64_t nt) {
  const int64_t tiles = (K + kTile - 1) / kTile;
  const bool grad = d1 || d2;
#pragma omp parallel num_threads(threads_for(nt, tiles))
  {
    std::vector<AlignedTile<T>> buf(1);
    AlignedTile<T>& t = buf[0];
#pragma omp for schedule(static)
    for (int64_t ti = 0; ti < tiles; ++ti) {
      const int64_t i0 = ti * kTile, len = std::min(kTile, K - i0);
      load_tile(t, a1, 0, i0, len, fmt);
      load_tile(t, a2, 4, i0, len, fmt);
#define SEGFAST_CALL(KD)                                                                 \
  if (grad && loss) aligned_tile<T, KD, true, true>(t, len, fmt, eps, offset, sign, gscale);        \
  else if (grad) aligned_tile<T, KD, true, false>(t, len, fmt, eps, offset, sign, gscale);           \
  else if (loss) aligned_tile<T, KD, false, true>(t, len, fmt, eps, offset, sign, gscale);           \
  else aligned_tile<T, KD, false, false>(t, len, fmt, eps, offset, sign, gscale);
      SEGFAST_BOX_KIND_SWITCH(kind, SEGFAST_CALL)
#undef SEGFAST_CALL
      if (out) cpu::store_row(out, out_dtype, i0, 1, t.vals, len);
      if (d1) cpu::store_row(d1, d_dtype, 4 * i0, 1, t.g1, 4 * len);
      if (d2) cpu::store_row(d2, d_dtype, 4 * i0, 1, t.g2, 4 * len);
    }
  }
}

SEGFAST_CLONES void pairwise_fwd_f32(const BoxArg& a1, const BoxArg& a2, int64_t B, int64_t N, int64_t M,
                                     int kind, int fmt, float eps, void* out, int od, int64_t nt) {
  pairwise_fwd_impl<float>(a1, a2, B, N, M, kind, fmt, eps, out, od, nt);
}
SEGFAST_CLONES void pairwise_bwd1_f32(const BoxArg& a1, const BoxArg& a2, int64_t B, int64_t N, int64_t M,
                                      int kind, int fmt, float eps, const float* go, void* d, int dd,
                                      int64_t nt) {
  pairwise_bwd_pass<float, true>(a1, a2, B, N, M, kind, fmt, eps, go, d, dd, nt);
}
SEGFAST_CLONES void pairwise_bwd2_f32(const BoxArg& a1, const BoxArg& a2, int64_t B, int64_t N, int64_t M,
                                      int kind, int fmt, float eps, const float* go, void* d, int dd,
                                      int64_t nt) {
  pairwise_bwd_pass<float, false>(a1, a2, B, N, M, kind, fmt, eps, go, d, dd, nt);
}

SEGFAST_CLONES void aligned_f32(const BoxArg& a1, const BoxArg& a2, int64_t K, int kind, int fmt, bool loss,
                                float eps, float offset, float sign, float gscale, void* out, int od, void* d1,
                                void* d2, int dd, int64_t nt) {
  aligned_impl<float>(a1, a2, K, kind, fmt, loss, eps, offset, sign, gscale, out, od, d1, d2, dd, nt);
}

}  // namespace

// Entry points (declared in csrc/bindings.cpp). Compute type: double for
// float64 boxes, else float.
void box_pairwise_cpu(const BoxArg& a1, const BoxArg& a2, int64_t B, int64_t N, int64_t M, int kind, int fmt,
                      double eps, void* out, int out_dtype, int64_t nt) {
  if (B <= 0 || N <= 0 || M <= 0) return;
  if (a1.dtype == kFloat64) pairwise_fwd_impl<double>(a1, a2, B, N, M, kind, fmt, eps, out, out_dtype, nt);
  else pairwise_fwd_f32(a1, a2, B, N, M, kind, fmt, float(eps), out, out_dtype, nt);
}

void box_pairwise_grad_cpu(const BoxArg& a1, const BoxArg& a2, int64_t B, int64_t N, int64_t M, int kind,
                           int fmt, double eps, const void* go, void* d1, void* d2, int d_dtype, int64_t nt) {
  if (B <= 0 || N <= 0 || M <= 0) return;
  if (a1.dtype == kFloat64) {
    const double* g = static_cast<const double*>(go);
    if (d1) pairwise_bwd_pass<double, true>(a1, a2, B, N, M, kind, fmt, eps, g, d1, d_dtype, nt);
    if (d2) pairwise_bwd_pass<double, false>(a1, a2, B, N, M, kind, fmt, eps, g, d2, d_dtype, nt);
  } else {
    const float* g = static_cast<const float*>(go);
    if (d1) pairwise_bwd1_f32(a1, a2, B, N, M, kind, fmt, float(eps), g, d1, d_dtype, nt);
    if (d2) pairwise_bwd2_f32(a1, a2, B, N, M, kind, fmt, float(eps), g, d2, d_dtype, nt);
  }
}

void box_aligned_cpu(const BoxArg& a1, const BoxArg& a2, int64_t K, int kind, int fmt, bool loss, double eps,
                     double offset, double sign, double gscale, void* out, int out_dtype, void* d1, void* d2,
                     int d_dtype, int64_t nt) {
  if (K <= 0) return;
  if (a1.dtype == kFloat64)
    aligned_impl<double>(a1, a2, K, kind, fmt, loss, eps, offset, sign, gscale, out, out_dtype, d1, d2,
                         d_dtype, nt);
  else
    aligned_f32(a1, a2, K, kind, fmt, loss, float(eps), float(offset), float(sign), float(gscale), out, out_dtype,
                d1, d2, d_dtype, nt);
}

}  // namespace boxes
}  // namespace segfast
