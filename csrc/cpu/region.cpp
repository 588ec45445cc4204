// Region family, CPU kernels (C++ / OpenMP). See csrc/common/region.h for the
// math and segfast/ops/region.py for the calling side.
//
// Both passes work on tiles of `tile` pixels x all C classes, copied into
// per-thread float (double for float64 input) buffers laid out [C][tile], so
// every inner loop runs over pixels with unit stride and vectorises
// (exp included: fast_expf is branch-free). Hot float paths are compiled
// twice (x86-64-v3 = AVX2+FMA, and baseline x86-64) with GCC function
// multiversioning, chosen at load time by CPU features, so the wheel stays
// portable. (Not "arch=haswell": that clone is picked only on CPUs that *are*
// Haswell, not on newer ones.)
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "../common/region.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(SEGFAST_NO_CLONES)
#if __GNUC__ >= 12
#define SEGFAST_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SEGFAST_CLONES __attribute__((target_clones("avx2", "default")))
#endif
#else
#define SEGFAST_CLONES
#endif
#if defined(__GNUC__)
#define SEGFAST_INLINE inline __attribute__((always_inline))
#else
#define SEGFAST_INLINE inline
#endif

namespace segfast {
namespace region {
namespace {

constexpr int64_t W = 16;  // lanes of the hand-vectorised reductions; tiles are padded to W
SEGFAST_INLINE int64_t pad_len(int64_t len) { return (len + W - 1) / W * W; }

// Pixels per tile: ~128 KiB per [C][tile] float buffer, 16..256, multiple of 16.
int64_t tile_for(int64_t C) {
  int64_t t = 32768 / std::max<int64_t>(C, 1);
  t = std::min<int64_t>(256, std::max<int64_t>(16, t));
  return t & ~int64_t(15);
}

int resolve_threads(int64_t num_threads) {
  if (num_threads <= 0) return omp_get_max_threads();
  return int(num_threads);
}

template <typename T>
struct Workspace {
  int64_t C = 0, tile = 0;
  std::vector<T> xb;    // [C][tile]: logits, then probabilities
  std::vector<T> tb;    // dense target [C][tile] (t, already 0 where invalid)
  std::vector<T> vbd;   // dense validity [C][tile]
  std::vector<T> ab;    // grad: dLoss/dp [C][tile]
  std::vector<T> m, r;  // per pixel: max / sum, dot
  std::vector<T> vb;    // label validity [tile]
  std::vector<int32_t> lb;  // label class index or -1 [tile]
  std::vector<double> acc;  // stats: [C][7] chunk totals
  Workspace(int64_t C_, int64_t tile_, bool dense, bool grad)
      : C(C_), tile(tile_), xb(C_ * tile_), m(tile_), r(tile_), vb(tile_), lb(tile_) {
    if (dense) { tb.resize(C_ * tile_); vbd.resize(C_ * tile_); }
    if (grad) ab.resize(C_ * tile_);
    else acc.resize(C_ * K);
  }
};

// ---- row load / store (one class, `len` pixels) ----------------------------------

template <typename T, typename Src>
SEGFAST_INLINE void load_row_typed(T* __restrict dst, const Src* __restrict src, int64_t stride,
                                   int64_t len) {
  if (stride == 1) {
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) dst[i] = T(src[i]);
  } else {
    for (int64_t i = 0; i < len; ++i) dst[i] = T(src[i * stride]);
  }
}

template <typename T>
SEGFAST_INLINE void load_row(T* __restrict dst, const void* base, int code, int64_t off,
                             int64_t stride, int64_t len) {
  switch (code) {
    case kFloat32: load_row_typed(dst, static_cast<const float*>(base) + off, stride, len); break;
    case kFloat64: load_row_typed(dst, static_cast<const double*>(base) + off, stride, len); break;
    case kUInt8:
    case kBool: load_row_typed(dst, static_cast<const uint8_t*>(base) + off, stride, len); break;
    case kInt32: load_row_typed(dst, static_cast<const int32_t*>(base) + off, stride, len); break;
    case kInt64: load_row_typed(dst, static_cast<const int64_t*>(base) + off, stride, len); break;
    case kFloat16: {
      const uint16_t* s = static_cast<const uint16_t*>(base) + off;
      for (int64_t i = 0; i < len; ++i) dst[i] = T(f16_to_f32(s[i * stride]));
      break;
    }
    case kBFloat16: {
      const uint16_t* s = static_cast<const uint16_t*>(base) + off;
      if (stride == 1) {
#pragma omp simd
        for (int64_t i = 0; i < len; ++i) dst[i] = T(bf16_to_f32(s[i]));
      } else {
        for (int64_t i = 0; i < len; ++i) dst[i] = T(bf16_to_f32(s[i * stride]));
      }
      break;
    }
    default: for (int64_t i = 0; i < len; ++i) dst[i] = T(0);
  }
}

template <typename T>
SEGFAST_INLINE void store_row(void* base, int code, int64_t off, int64_t stride,
                              const T* __restrict src, int64_t len) {
  switch (code) {
    case kFloat32: {
      float* d = static_cast<float*>(base) + off;
      if (stride == 1) {
#pragma omp simd
        for (int64_t i = 0; i < len; ++i) d[i] = float(src[i]);
      } else {
        for (int64_t i = 0; i < len; ++i) d[i * stride] = float(src[i]);
      }
      break;
    }
    case kFloat64: {
      double* d = static_cast<double*>(base) + off;
      for (int64_t i = 0; i < len; ++i) d[i * stride] = double(src[i]);
      break;
    }
    case kFloat16: {
      uint16_t* d = static_cast<uint16_t*>(base) + off;
      for (int64_t i = 0; i < len; ++i) d[i * stride] = f32_to_f16(float(src[i]));
      break;
    }
    case kBFloat16: {
      uint16_t* d = static_cast<uint16_t*>(base) + off;
      if (stride == 1) {
#pragma omp simd
        for (int64_t i = 0; i < len; ++i) d[i] = f32_to_bf16(float(src[i]));
      } else {
        for (int64_t i = 0; i < len; ++i) d[i * stride] = f32_to_bf16(float(src[i]));
      }
      break;
    }
    default: break;
  }
}

template <typename T, typename L>
SEGFAST_INLINE void decode_labels_typed(int32_t* __restrict lb, T* __restrict vb,
                                        const L* __restrict src,
                                        int64_t stride, int64_t len, int64_t C, int64_t off,
                                        bool has_ignore, int64_t ign) {
  for (int64_t i = 0; i < len; ++i) {
    const int64_t lab = int64_t(src[i * stride]);
    const bool bad = has_ignore && lab == ign;
    const int64_t c = lab - off;
    lb[i] = (bad || c < 0 || c >= C) ? -1 : int32_t(c);
    vb[i] = bad ? T(0) : T(1);
  }
}

// ---- one tile: load + activation ---------------------------------------------------

template <typename T>
SEGFAST_INLINE void load_targets(const Problem& pr, Workspace<T>& w, int64_t n, int64_t s0,
                                 int64_t len) {
  const int64_t tile = w.tile;
  if (pr.t_is_label) {
    const int64_t off = n * pr.tsN + s0 * pr.tsS;
    T* vb = w.vb.data();
    const int64_t ign = int64_t(pr.ignore_value);
    switch (pr.t_dtype) {
      case kUInt8:
      case kBool:
        decode_labels_typed(w.lb.data(), vb, static_cast<const uint8_t*>(pr.t) + off, pr.tsS,
                            len, pr.C, pr.label_offset, pr.has_ignore, ign);
        break;
      case kInt32:
        decode_labels_typed(w.lb.data(), vb, static_cast<const int32_t*>(pr.t) + off, pr.tsS,
                            len, pr.C, pr.label_offset, pr.has_ignore, ign);
        break;
      default:
        decode_labels_typed(w.lb.data(), vb, static_cast<const int64_t*>(pr.t) + off, pr.tsS,
                            len, pr.C, pr.label_offset, pr.has_ignore, ign);
        break;
    }
    for (int64_t i = len; i < pad_len(len); ++i) { w.lb[i] = -1; vb[i] = T(0); }
  } else {
    const T ign = T(pr.ignore_value);  // compared in the compute type, like torch does
    for (int64_t c = 0; c < pr.C; ++c) {
      T* __restrict tr = w.tb.data() + c * tile;
      T* __restrict vr = w.vbd.data() + c * tile;
      load_row(tr, pr.t, pr.t_dtype, n * pr.tsN + c * pr.tsC + s0 * pr.tsS, pr.tsS, len);
      if (pr.has_ignore) {
#pragma omp simd
        for (int64_t i = 0; i < len; ++i) {
          const bool bad = tr[i] == ign;
          vr[i] = bad ? T(0) : T(1);
          tr[i] = bad ? T(0) : tr[i];
        }
      } else {
#pragma omp simd
        for (int64_t i = 0; i < len; ++i) vr[i] = T(1);
      }
      for (int64_t i = len; i < pad_len(len); ++i) { tr[i] = T(0); vr[i] = T(0); }
    }
  }
}

// x tile -> probabilities in w.xb.
template <typename T>
SEGFAST_INLINE void load_probs(const Problem& pr, Workspace<T>& w, int64_t n, int64_t s0,
                               int64_t len) {  // fills pad_len(len) pixels (padding: x = 0)
  const int64_t C = pr.C, tile = w.tile;
  T* __restrict xb = w.xb.data();
  const int64_t lenp = pad_len(len);
  for (int64_t c = 0; c < C; ++c) {
    load_row(xb + c * tile, pr.x, pr.x_dtype, n * pr.xsN + c * pr.xsC + s0 * pr.xsS, pr.xsS, len);
    for (int64_t i = len; i < lenp; ++i) xb[c * tile + i] = T(0);
  }
  len = lenp;
  if (pr.act == kSigmoid) {
    for (int64_t c = 0; c < C; ++c) {
      T* __restrict row = xb + c * tile;
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) row[i] = sigmoid(row[i]);
    }
  } else if (pr.act == kSoftmax) {
    T* __restrict m = w.m.data();
    T* __restrict sum = w.r.data();
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) m[i] = xb[i];
    for (int64_t c = 1; c < C; ++c) {
      const T* __restrict row = xb + c * tile;
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) m[i] = row[i] > m[i] ? row[i] : m[i];
    }
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) sum[i] = T(0);
    for (int64_t c = 0; c < C; ++c) {
      T* __restrict row = xb + c * tile;
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) {
        const T e = exp_t(row[i] - m[i]);
        row[i] = e;
        sum[i] += e;
      }
    }
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) sum[i] = T(1) / sum[i];
    for (int64_t c = 0; c < C; ++c) {
      T* __restrict row = xb + c * tile;
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) row[i] *= sum[i];
    }
  }
}

// ---- stats: one (image, chunk) work item ---------------------------------------------

template <typename T, typename A>
SEGFAST_INLINE void stats_item_impl(const Problem& pr, Workspace<T>& w, int64_t n, int64_t P,
                                    int64_t j, A* __restrict out) {
  const int64_t C = pr.C, tile = w.tile;
  int64_t b, e;
  chunk_range(pr.S, P, j, &b, &e);
  double* __restrict acc = w.acc.data();
  std::fill(w.acc.begin(), w.acc.end(), 0.0);
  for (int64_t s0 = b; s0 < e; s0 += tile) {
    const int64_t len = std::min(tile, e - s0);
    load_probs(pr, w, n, s0, len);
    load_targets(pr, w, n, s0, len);
    for (int64_t c = 0; c < C; ++c) {
      const T* __restrict p = w.xb.data() + c * tile;
      const int64_t lenp = pad_len(len);  // padded pixels have v = 0, t = 0
      T a[K][W] = {};
      if (pr.t_is_label) {
        const int32_t* __restrict lb = w.lb.data();
        const T* __restrict v = w.vb.data();
        const int32_t cc = int32_t(c);
        for (int64_t i0 = 0; i0 < lenp; i0 += W) {
          for (int64_t l = 0; l < W; ++l) {
            const int64_t i = i0 + l;
            const T pi = p[i], vi = v[i];
            const T t = T(lb[i] == cc);  // already 0 on invalid pixels; t*t = t
            const T vp = vi * pi;
            const T mn = pi < t ? pi : t;
            a[0][l] += vp * t;
            a[1][l] += vp;
            a[2][l] += t;
            a[3][l] += vi;
            a[4][l] += vp * pi;
            a[6][l] += vi * mn;
          }
        }
        for (int64_t l = 0; l < W; ++l) a[5][l] = a[2][l];
      } else {
        const T* __restrict tt = w.tb.data() + c * tile;
        const T* __restrict v = w.vbd.data() + c * tile;
        for (int64_t i0 = 0; i0 < lenp; i0 += W) {
          for (int64_t l = 0; l < W; ++l) {
            const int64_t i = i0 + l;
            const T pi = p[i], vi = v[i], t = tt[i];
            const T vp = vi * pi;
            const T vt = vi * t;
            const T mn = pi < t ? pi : t;
            a[0][l] += vp * t;
            a[1][l] += vp;
            a[2][l] += vt;
            a[3][l] += vi;
            a[4][l] += vp * pi;
            a[5][l] += vt * t;
            a[6][l] += vi * mn;
          }
        }
      }
      T a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0;
      for (int64_t l = 0; l < W; ++l) {
        a0 += a[0][l]; a1 += a[1][l]; a2 += a[2][l]; a3 += a[3][l];
        a4 += a[4][l]; a5 += a[5][l]; a6 += a[6][l];
      }
      double* ac = acc + c * K;
      ac[0] += a0; ac[1] += a1; ac[2] += a2; ac[3] += a3;
      ac[4] += a4; ac[5] += a5; ac[6] += a6;
    }
  }
  A* o = out + (n * P + j) * C * K;
  for (int64_t i = 0; i < C * K; ++i) o[i] = A(acc[i]);
}

SEGFAST_CLONES void stats_item_f32(const Problem& pr, Workspace<float>& w, int64_t n, int64_t P,
                                   int64_t j, float* out) {
  stats_item_impl<float, float>(pr, w, n, P, j, out);
}

void stats_item_f64(const Problem& pr, Workspace<double>& w, int64_t n, int64_t P, int64_t j,
                    double* out) {
  stats_item_impl<double, double>(pr, w, n, P, j, out);
}

// ---- grad: one (image, tile) work item -------------------------------------------------

template <typename T, typename G>
SEGFAST_INLINE void grad_item_impl(const Problem& pr, Workspace<T>& w, int64_t n, int64_t s0,
                                   const G* __restrict g, void* dx, int64_t dxsN, int64_t dxsC,
                                   int64_t dxsS) {
  const int64_t C = pr.C, tile = w.tile;
  const int64_t len = std::min(tile, pr.S - s0);
  load_probs(pr, w, n, s0, len);
  load_targets(pr, w, n, s0, len);
  T* __restrict dot = w.r.data();  // the softmax sums are no longer needed
  if (pr.act == kSoftmax) {
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) dot[i] = T(0);
  }
  for (int64_t c = 0; c < C; ++c) {
    const G* gc = g + (n * C + c) * K;
    const T gI = T(gc[kI]), gP = T(gc[kP]), gPP2 = T(2) * T(gc[kPP]), gM = T(gc[kM]);
    const T* __restrict p = w.xb.data() + c * tile;
    T* __restrict a = w.ab.data() + c * tile;
    if (pr.t_is_label) {
      const int32_t* __restrict lb = w.lb.data();
      const T* __restrict v = w.vb.data();
      const int32_t cc = int32_t(c);
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) {
        const T t = lb[i] == cc ? T(1) : T(0);
        const T h = p[i] < t ? T(1) : (p[i] == t ? T(0.5) : T(0));
        a[i] = v[i] * (gI * t + gP + gPP2 * p[i] + gM * h);
      }
    } else {
      const T* __restrict tt = w.tb.data() + c * tile;
      const T* __restrict v = w.vbd.data() + c * tile;
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) {
        const T t = tt[i];
        const T h = p[i] < t ? T(1) : (p[i] == t ? T(0.5) : T(0));
        a[i] = v[i] * (gI * t + gP + gPP2 * p[i] + gM * h);
      }
    }
    if (pr.act == kSoftmax) {
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) dot[i] += p[i] * a[i];
    } else if (pr.act == kSigmoid) {
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) a[i] = a[i] * p[i] * (T(1) - p[i]);
    }
    if (pr.act != kSoftmax)
      store_row(dx, pr.x_dtype, n * dxsN + c * dxsC + s0 * dxsS, dxsS, a, len);
  }
  if (pr.act == kSoftmax) {
    for (int64_t c = 0; c < C; ++c) {
      const T* __restrict p = w.xb.data() + c * tile;
      T* __restrict a = w.ab.data() + c * tile;
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) a[i] = p[i] * (a[i] - dot[i]);
      store_row(dx, pr.x_dtype, n * dxsN + c * dxsC + s0 * dxsS, dxsS, a, len);
    }
  }
}

SEGFAST_CLONES void grad_item_f32(const Problem& pr, Workspace<float>& w, int64_t n, int64_t s0,
                                  const float* g, void* dx, int64_t dxsN, int64_t dxsC,
                                  int64_t dxsS) {
  grad_item_impl<float, float>(pr, w, n, s0, g, dx, dxsN, dxsC, dxsS);
}

void grad_item_f64(const Problem& pr, Workspace<double>& w, int64_t n, int64_t s0,
                   const double* g, void* dx, int64_t dxsN, int64_t dxsC, int64_t dxsS) {
  grad_item_impl<double, double>(pr, w, n, s0, g, dx, dxsN, dxsC, dxsS);
}

template <typename T, typename A, typename F>
void run_stats(const Problem& pr, int64_t P, A* out, int nt, F item) {
  const int64_t items = pr.N * P;
  const int64_t tile = tile_for(pr.C);
  nt = int(std::max<int64_t>(1, std::min<int64_t>(nt, items)));
#pragma omp parallel num_threads(nt)
  {
    Workspace<T> w(pr.C, tile, !pr.t_is_label, false);
#pragma omp for schedule(static)
    for (int64_t it = 0; it < items; ++it) item(pr, w, it / P, P, it % P, out);
  }
}

template <typename T, typename G, typename F>
void run_grad(const Problem& pr, const G* g, void* dx, int64_t dxsN, int64_t dxsC, int64_t dxsS,
              int nt, F item) {
  const int64_t tile = tile_for(pr.C);
  const int64_t tiles = (pr.S + tile - 1) / tile;
  const int64_t items = pr.N * tiles;
  nt = int(std::max<int64_t>(1, std::min<int64_t>(nt, items)));
#pragma omp parallel num_threads(nt)
  {
    Workspace<T> w(pr.C, tile, !pr.t_is_label, true);
#pragma omp for schedule(static)
    for (int64_t it = 0; it < items; ++it)
      item(pr, w, it / tiles, (it % tiles) * tile, g, dx, dxsN, dxsC, dxsS);
  }
}

}  // namespace

// Entry points (declared in csrc/bindings.cpp).
void region_stats_cpu(const Problem& pr, int64_t P, void* out, int64_t num_threads) {
  if (pr.N <= 0 || P <= 0 || pr.C <= 0) return;
  const int nt = resolve_threads(num_threads);
  if (pr.x_dtype == kFloat64)
    run_stats<double>(pr, P, static_cast<double*>(out), nt, stats_item_f64);
  else
    run_stats<float>(pr, P, static_cast<float*>(out), nt, stats_item_f32);
}

void region_grad_cpu(const Problem& pr, const void* g, void* dx, int64_t dxsN, int64_t dxsC,
                     int64_t dxsS, int64_t num_threads) {
  if (pr.N <= 0 || pr.C <= 0 || pr.S <= 0) return;
  const int nt = resolve_threads(num_threads);
  if (pr.x_dtype == kFloat64)
    run_grad<double>(pr, static_cast<const double*>(g), dx, dxsN, dxsC, dxsS, nt, grad_item_f64);
  else
    run_grad<float>(pr, static_cast<const float*>(g), dx, dxsN, dxsC, dxsS, nt, grad_item_f32);
}

int openmp_max_threads() { return omp_get_max_threads(); }

}  // namespace region
}  // namespace segfast
