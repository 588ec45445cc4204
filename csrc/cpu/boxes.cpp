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
#pragma omp simd
      for (int64_t m = 0; m < M; ++m) {
        const Box<T> q{gx1[m], gy1[m], gx2[m], gy2[m]};
        o[m] = pair_value<T, false>(p, q, kind, false, eps, T(0), nullptr, nullptr);
      }
      if (!direct) cpu::store_row(out, out_dtype, r * M, 1, o, M);
    }
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
      T s0 = T(0), s1 = T(0), s2 = T(0), s3 = T(0);
      const T* ox1 = o.x1.data() + b * L; const T* oy1 = o.y1.data() + b * L;
      const T* ox2 = o.x2.data() + b * L; const T* oy2 = o.y2.data() + b * L;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
      for (int64_t l = 0; l < L; ++l) {
        const Box<T> w{ox1[l], oy1[l], ox2[l], oy2[l]};
        const T gv = FIRST ? go[(b * N + k) * M + l] : go[(b * N + l) * M + k];
        T dq[4] = {T(0), T(0), T(0), T(0)}, dw[4] = {T(0), T(0), T(0), T(0)};
        if (FIRST) pair_value<T, true>(q, w, kind, false, eps, gv, dq, dw);
        else pair_value<T, true>(w, q, kind, false, eps, gv, dw, dq);
        s0 += dq[0]; s1 += dq[1]; s2 += dq[2]; s3 += dq[3];
      }
      T dd[4] = {s0, s1, s2, s3};
      xyxy_grad_to_fmt(dd, fmt);
      cpu::store_row(d, d_dtype, r * 4, 1, dd, 4);
    }
  }
}

// One pass over aligned pairs i: out[i] = offset + sign * value, and (where the
// pointers are set) d1[i], d2[i] = gscale * d value / d box.
template <typename T>
void aligned_impl(const BoxArg& a1, const BoxArg& a2, int64_t K, int kind, int fmt, bool loss, T eps,
                  T offset, T sign, T gscale, void* out, int out_dtype, void* d1, void* d2, int d_dtype,
                  int64_t nt) {
  constexpr int64_t kTile = 256;
  const int64_t tiles = (K + kTile - 1) / kTile;
#pragma omp parallel num_threads(threads_for(nt, tiles))
  {
    T vals[kTile], g1[4 * kTile], g2[4 * kTile];
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t i0 = t * kTile, len = std::min(kTile, K - i0);
      for (int64_t j = 0; j < len; ++j) {
        const int64_t i = i0 + j;
        const Box<T> p = load_box<T>(a1.p, a1.dtype, i * a1.sK, a1.s4, fmt);
        const Box<T> g = load_box<T>(a2.p, a2.dtype, i * a2.sK, a2.s4, fmt);
        T* dp = g1 + 4 * j;
        T* dg = g2 + 4 * j;
        for (int c = 0; c < 4; ++c) dp[c] = dg[c] = T(0);
        T v;
        if (d1 || d2) {
          v = pair_value<T, true>(p, g, kind, loss, eps, gscale, dp, dg);
          xyxy_grad_to_fmt(dp, fmt);
          xyxy_grad_to_fmt(dg, fmt);
        } else {
          v = pair_value<T, false>(p, g, kind, loss, eps, T(0), nullptr, nullptr);
        }
        vals[j] = offset + sign * v;
      }
      if (out) cpu::store_row(out, out_dtype, i0, 1, vals, len);
      if (d1) cpu::store_row(d1, d_dtype, 4 * i0, 1, g1, 4 * len);
      if (d2) cpu::store_row(d2, d_dtype, 4 * i0, 1, g2, 4 * len);
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
