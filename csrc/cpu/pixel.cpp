// Pixel family, CPU kernels (C++ / OpenMP). See csrc/common/pixel.h for the
// math and segfast/reference/pixel.py for the semantics.
//
// Work items are (image n, chunk j) pairs: chunk j of the P loss chunks when
// the loss partial sums are wanted (one writer per [n, j] slot, fixed order of
// additions: deterministic), else tile-sized chunks. An item walks its chunk in
// tiles of `tile` pixels x all C classes, copied into per-thread float (double
// for float64 input) buffers laid out [C][tile], so every inner loop runs over
// pixels with unit stride and vectorises (exp and log included: fast_expf /
// fast_logf are branch-free). The float paths are compiled for x86-64-v4,
// x86-64-v3 and baseline with GCC function multiversioning (SEGFAST_CLONES,
// csrc/cpu/common.h), as region.cpp.
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../common/pixel.h"
#include "common.h"

namespace segfast {
namespace pixel {
namespace {

using cpu::load_row;
using cpu::store_row;

// Pixels per tile: ~64 KiB per [C][tile] float buffer, 16..512, multiple of 16.
int64_t tile_for(int64_t C) {
  int64_t t = 16384 / std::max<int64_t>(C, 1);
  t = std::min<int64_t>(512, std::max<int64_t>(16, t));
  return t & ~int64_t(15);
}

// Labels -> class index lb (-1: no class) and validity vb (1/0).
// in_range_only: a label outside the class range is invalid (softmax kinds);
// else it is a valid pixel with no class (sigmoid kinds).
template <typename L>
SEGFAST_INLINE void decode_labels_typed(int32_t* __restrict lb, uint8_t* __restrict vb,
                                        const L* __restrict src, int64_t stride, int64_t len,
                                        int64_t C, int64_t off, bool has_ignore, int64_t ign,
                                        bool in_range_only) {
  for (int64_t i = 0; i < len; ++i) {
    const int64_t lab = int64_t(src[i * stride]);
    const bool bad = has_ignore && lab == ign;
    const int64_t c = lab - off;
    const bool out = c < 0 || c >= C;
    lb[i] = (bad || out) ? -1 : int32_t(c);
    vb[i] = (bad || (in_range_only && out)) ? 0 : 1;
  }
}

template <typename T>
struct Workspace {
  int64_t C = 0, tile = 0;
  std::vector<T> xb;  // [C][tile] logits, then exponentials (softmax kinds)
  std::vector<T> tb;  // dense target row [tile]
  std::vector<T> tv;  // dense validity row [tile]
  std::vector<T> m, mfg, sum, sumfg, so, xy, x0, wx, g, l0, l1, k0, k1, kb, kw;  // [tile]
  std::vector<T> row;  // [tile] output row
  std::vector<T> ab;   // [C][tile] g_c·aq_c, softmax focal on dense targets
  std::vector<int32_t> lb;
  std::vector<uint8_t> vb;
  std::vector<T> w, pw;  // [C]
  T W = T(0);
  Workspace(const Problem& pr, int64_t tile_)
      : C(pr.C), tile(tile_), tb(tile_), tv(tile_), m(tile_), mfg(tile_), sum(tile_),
        sumfg(tile_), so(tile_), xy(tile_), x0(tile_), wx(tile_), g(tile_), l0(tile_),
        l1(tile_), k0(tile_), k1(tile_), kb(tile_), kw(tile_), row(tile_), lb(tile_),
        vb(tile_), w(pr.C, T(1)), pw(pr.C, T(1)) {
    if (is_softmax_kind(pr.kind)) xb.resize(pr.C * tile_);
    else xb.resize(tile_);
    if (is_softmax_kind(pr.kind) && !pr.t_is_label) ab.resize(pr.C * tile_);
    if (pr.w) std::copy(static_cast<const T*>(pr.w), static_cast<const T*>(pr.w) + C, w.begin());
    if (pr.pw)
      std::copy(static_cast<const T*>(pr.pw), static_cast<const T*>(pr.pw) + C, pw.begin());
    for (int64_t c = 0; c < C; ++c) W += w[c];
  }
};

template <typename T>
SEGFAST_INLINE void load_labels(const Problem& pr, Workspace<T>& w, int64_t n, int64_t s0,
                                int64_t len, bool in_range_only) {
  const int64_t off = n * pr.tsN + s0 * pr.tsS;
  const int64_t ign = int64_t(pr.ignore_value);
  switch (pr.t_dtype) {
    case kUInt8:
    case kBool:
      decode_labels_typed(w.lb.data(), w.vb.data(), static_cast<const uint8_t*>(pr.t) + off,
                          pr.tsS, len, pr.C, pr.label_offset, pr.has_ignore, ign, in_range_only);
      break;
    case kInt32:
      decode_labels_typed(w.lb.data(), w.vb.data(), static_cast<const int32_t*>(pr.t) + off,
                          pr.tsS, len, pr.C, pr.label_offset, pr.has_ignore, ign, in_range_only);
      break;
    default:
      decode_labels_typed(w.lb.data(), w.vb.data(), static_cast<const int64_t*>(pr.t) + off,
                          pr.tsS, len, pr.C, pr.label_offset, pr.has_ignore, ign, in_range_only);
      break;
  }
}

// grad_output of `len` consecutive map entries starting at go_off (ones if absent,
// the one value if go_scalar).
template <typename T>
SEGFAST_INLINE void load_go(const Problem& pr, T* __restrict g, int64_t go_off, int64_t len) {
  if (pr.go && pr.go_scalar) {
    const T v = *static_cast<const T*>(pr.go);
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) g[i] = v;
  } else if (pr.go) {
    const T* __restrict src = static_cast<const T*>(pr.go) + go_off;
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) g[i] = src[i];
  } else {
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) g[i] = T(1);
  }
}

// ---- softmax kinds: one tile of pixels [s0, s0 + len) of image n ---------------------

template <int KIND, typename T>
SEGFAST_INLINE void softmax_tile(const Problem& pr, Workspace<T>& w, int64_t n, int64_t s0,
                                 int64_t len, double* acc0, double* acc1) {
  const int64_t C = pr.C, tile = w.tile;
  const bool smooth = pr.smoothing != 0.0;
  load_labels(pr, w, n, s0, len, true);
  T* xb = w.xb.data();  // exponentials [C][tile] (may alias xs below)
  // x rows: read in place when x has the compute type and unit pixel stride,
  // else converted into xb first (then the exponentials overwrite them).
  const T* xs;
  int64_t xp;
  if (pr.xsS == 1 && pr.x_dtype == (sizeof(T) == 8 ? kFloat64 : kFloat32)) {
    xs = static_cast<const T*>(pr.x) + n * pr.xsN + s0;
    xp = pr.xsC;
  } else {
    for (int64_t c = 0; c < C; ++c)
      load_row(xb + c * tile, pr.x, pr.x_dtype, n * pr.xsN + c * pr.xsC + s0 * pr.xsS, pr.xsS,
               len);
    xs = xb;
    xp = tile;
  }
  const int32_t* __restrict lb = w.lb.data();
  const uint8_t* __restrict vb = w.vb.data();
  T* __restrict m = w.m.data();
  T* __restrict mfg = w.mfg.data();
  T* __restrict sum = w.sum.data();
  T* __restrict sumfg = w.sumfg.data();
  T* __restrict so = w.so.data();
  T* __restrict xy = w.xy.data();
  T* __restrict x0 = w.x0.data();
  T* __restrict wx = w.wx.data();
  // max over classes (FUSED: over c >= 1 too)
  const int64_t cm = KIND == kFused ? 1 : 0;
  {
    const T* __restrict r = xs + cm * xp;
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) m[i] = r[i];
  }
  for (int64_t c = cm + 1; c < C; ++c) {
    const T* __restrict r = xs + c * xp;
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) m[i] = r[i] > m[i] ? r[i] : m[i];
  }
  if (KIND == kFused) {
    const T w0 = smooth ? w.w[0] : T(0);
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) {
      mfg[i] = m[i];
      const T xv = xs[i];
      x0[i] = xv;
      m[i] = xv > m[i] ? xv : m[i];
      const T e = exp_t(xv - m[i]);
      xy[i] = lb[i] == 0 ? xv : T(0);
      wx[i] = w0 * xv;
      xb[i] = e;
      sumfg[i] = T(0);
    }
  } else {
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) {
      sum[i] = T(0);
      so[i] = T(0);
      xy[i] = T(0);
      wx[i] = T(0);
    }
  }
  // exponentials (stored in place), sums, the target's logit, sum_c w_c x_c
  for (int64_t c = cm; c < C; ++c) {
    const T* src = xs + c * xp;  // may be r itself: same-index read then write
    T* r = xb + c * tile;
    const int32_t cc = int32_t(c);
    const T wc = smooth ? w.w[c] : T(0);  // no invariant branch in the loop
    const T* __restrict mr = KIND == kFused ? mfg : m;
    T* __restrict sr = KIND == kFused ? sumfg : sum;
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) {
      const T xv = src[i];
      const T e = exp_t(xv - mr[i]);
      const bool hit = lb[i] == cc;
      xy[i] += hit ? xv : T(0);
      wx[i] += KIND == kFused ? wc * xv : wc * (mr[i] - xv);
      if (KIND == kFocalSoftmax) so[i] += hit ? T(0) : e;
      sr[i] += e;
      r[i] = e;
    }
  }
  T* __restrict g = w.g.data();
  load_go(pr, g, n * pr.S + s0, len);
  T* __restrict l0 = w.l0.data();
  T* __restrict l1 = w.l1.data();
  T* __restrict k0 = w.k0.data();
  T* __restrict k1 = w.k1.data();
  T* __restrict kb = w.kb.data();
  T* __restrict kw = w.kw.data();
  const T* __restrict wt = w.w.data();
  const T W = w.W, invC = T(1) / T(C), eps = T(pr.smoothing);
  const Focal<T> focal = make_focal<T>(pr.gamma, pr.alpha);
  const T sc0 = T(pr.scale0), sc1 = T(pr.scale1);
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) {
    const int32_t y = lb[i];
    const T wy = wt[y < 0 ? 0 : y];
    softmax_pixel<KIND, T>(vb[i] != 0, m[i], sum[i], so[i], mfg[i], sumfg[i], xb[i], xy[i],
                           x0[i], y == 0, wx[i], wy, W, invC, eps, focal, sc0, sc1, g[i],
                           &l0[i], &l1[i], &k0[i], &k1[i], &kb[i], &kw[i]);
  }
  if (pr.loss) {
    double a0 = 0.0, a1 = 0.0;
#pragma omp simd reduction(+ : a0, a1)
    for (int64_t i = 0; i < len; ++i) {
      a0 += double(l0[i]);
      a1 += double(l1[i]);
    }
    *acc0 += a0;
    *acc1 += a1;
  }
  if (pr.map) {
    T* __restrict mp = static_cast<T*>(pr.map) + n * pr.S + s0;
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) mp[i] = sc0 * l0[i] + sc1 * l1[i];
  }
  if (pr.dx) {
    // dx rows written in place when dx has the compute type and unit pixel stride
    const bool direct = pr.dxsS == 1 && pr.x_dtype == (sizeof(T) == 8 ? kFloat64 : kFloat32);
    for (int64_t c = 0; c < C; ++c) {
      const int64_t off = n * pr.dxsN + c * pr.dxsC + s0 * pr.dxsS;
      T* __restrict row = direct ? static_cast<T*>(pr.dx) + off : w.row.data();
      const T* __restrict e = xb + c * tile;
      const T* __restrict kc = (KIND == kFused && c == 0) ? k0 : k1;
      const int32_t cc = int32_t(c);
      const T wc = wt[c];
#pragma omp simd
      for (int64_t i = 0; i < len; ++i)
        row[i] = e[i] * kc[i] + (lb[i] == cc ? kb[i] : T(0)) + wc * kw[i];
      if (!direct) store_row(pr.dx, pr.x_dtype, off, pr.dxsS, row, len);
    }
  }
}

// ---- softmax focal on dense targets: one tile, one term per element ------------------
// A pixel with any channel equal to the ignore value counts nowhere (loss,
// map and gradient 0; 0·d keeps a NaN logit NaN).

template <typename T>
SEGFAST_INLINE void softmax_dense_tile(const Problem& pr, Workspace<T>& w, int64_t n, int64_t s0,
                                       int64_t len, double* acc0) {
  const int64_t C = pr.C, tile = w.tile;
  T* xb = w.xb.data();  // logits [C][tile]
  T* ab = w.ab.data();  // g_c·aq_c [C][tile]
  for (int64_t c = 0; c < C; ++c)
    load_row(xb + c * tile, pr.x, pr.x_dtype, n * pr.xsN + c * pr.xsC + s0 * pr.xsS, pr.xsS, len);
  T* __restrict m = w.m.data();
  T* __restrict sum = w.sum.data();
  T* __restrict lsum = w.xy.data();
  T* __restrict bsum = w.so.data();  // Σ_k g_k·aq_k
  T* __restrict lp = w.l0.data();    // the pixel's loss
  T* __restrict tv = w.tv.data();    // the pixel's validity
  T* __restrict tr = w.tb.data();
  T* __restrict g = w.g.data();
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) m[i] = xb[i];
  for (int64_t c = 1; c < C; ++c) {
    const T* __restrict r = xb + c * tile;
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) m[i] = r[i] > m[i] ? r[i] : m[i];
  }
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) sum[i] = T(0);
  for (int64_t c = 0; c < C; ++c) {
    const T* __restrict r = xb + c * tile;
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) sum[i] += exp_t(r[i] - m[i]);
  }
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) {
    lsum[i] = log_t(sum[i]);
    bsum[i] = T(0);
    lp[i] = T(0);
    tv[i] = T(1);
  }
  const Focal<T> focal = make_focal<T>(pr.gamma, pr.alpha);
  const T sc0 = T(pr.scale0);
  const T ign = T(pr.ignore_value);  // compared in the compute type, as torch does
  const bool hi = pr.has_ignore;
  for (int64_t c = 0; c < C; ++c) {
    const T* __restrict r = xb + c * tile;
    T* __restrict a = ab + c * tile;
    load_row(tr, pr.t, pr.t_dtype, n * pr.tsN + c * pr.tsC + s0 * pr.tsS, pr.tsS, len);
    const int64_t moff = (n * C + c) * pr.S + s0;
    load_go(pr, g, moff, len);
    T* __restrict mp = pr.map ? static_cast<T*>(pr.map) + moff : w.row.data();
    const T wc = w.w[c];
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) {
      const bool bad = hi && tr[i] == ign;
      tv[i] = bad ? T(0) : tv[i];
      T l, aq, p;
      dense_focal_term<T>(r[i], exp_t(r[i] - m[i]), m[i], sum[i], lsum[i], bad ? T(0) : tr[i], wc,
                          focal, &l, &aq, &p);
      lp[i] += l;
      mp[i] = sc0 * l;
      a[i] = g[i] * aq;
      bsum[i] += a[i];
    }
  }
  if (pr.loss) {
    double acc = 0.0;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < len; ++i) acc += tv[i] != T(0) ? double(lp[i]) : 0.0;
    *acc0 += acc;
  }
  if (pr.map) {
    for (int64_t c = 0; c < C; ++c) {
      T* __restrict mp = static_cast<T*>(pr.map) + (n * C + c) * pr.S + s0;
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) mp[i] = tv[i] != T(0) ? mp[i] : T(0);
    }
  }
  if (pr.dx) {
    T* __restrict row = w.row.data();
    for (int64_t c = 0; c < C; ++c) {
      const T* __restrict r = xb + c * tile;
      const T* __restrict a = ab + c * tile;
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) {
        const T p = div_sum(exp_t(r[i] - m[i]), sum[i]);
        row[i] = (tv[i] != T(0) ? sc0 : T(0)) * (p * bsum[i] - a[i]);
      }
      store_row(pr.dx, pr.x_dtype, n * pr.dxsN + c * pr.dxsC + s0 * pr.dxsS, pr.dxsS, row, len);
    }
  }
}

// ---- sigmoid kinds: one tile of pixels [s0, s0 + len) of image n, all classes --------

template <int KIND, typename T>
SEGFAST_INLINE void sigmoid_tile(const Problem& pr, Workspace<T>& w, int64_t n, int64_t s0,
                                 int64_t len, double* acc0) {
  const int64_t C = pr.C;
  if (pr.t_is_label) load_labels(pr, w, n, s0, len, false);
  const int32_t* __restrict lb = w.lb.data();
  const uint8_t* __restrict vb = w.vb.data();
  T* __restrict xr = w.xb.data();
  T* __restrict tr = w.tb.data();
  T* __restrict tv = w.tv.data();
  T* __restrict g = w.g.data();
  T* __restrict l0 = w.l0.data();
  T* __restrict row = w.row.data();
  const Focal<T> focal = make_focal<T>(pr.gamma, pr.alpha);
  const T sc0 = T(pr.scale0);
  T a_pos_b = T(1), a_neg = T(1);
  if (KIND == kBCE && pr.beta) {
    const T b = static_cast<const T*>(pr.beta)[n];
    a_pos_b = b;
    a_neg = T(1) - b;
  }
  const T ign = T(pr.ignore_value);  // dense: compared in the compute type, as torch does
  double acc = 0.0;
  for (int64_t c = 0; c < C; ++c) {
    load_row(xr, pr.x, pr.x_dtype, n * pr.xsN + c * pr.xsC + s0 * pr.xsS, pr.xsS, len);
    if (pr.t_is_label) {
      const int32_t cc = int32_t(c);
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) {
        tr[i] = lb[i] == cc ? T(1) : T(0);
        tv[i] = vb[i] ? T(1) : T(0);
      }
    } else {
      load_row(tr, pr.t, pr.t_dtype, n * pr.tsN + c * pr.tsC + s0 * pr.tsS, pr.tsS, len);
      const bool hi = pr.has_ignore;
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) {
        const bool bad = hi && tr[i] == ign;
        tv[i] = bad ? T(0) : T(1);
        tr[i] = bad ? T(0) : tr[i];
      }
    }
    const int64_t moff = (n * C + c) * pr.S + s0;
    load_go(pr, g, moff, len);
    const T wc = w.w[c];
    const T a_pos = w.pw[c] * a_pos_b;
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) {
      T l, d;
      sigmoid_term<KIND, T>(xr[i], tr[i], wc, a_pos, a_neg, focal, &l, &d);
      const bool v = tv[i] != T(0);
      l0[i] = v ? l : T(0);
      // an invalid element's gradient is 0·d, as the reference's (and the
      // softmax kinds'): a NaN logit there gives NaN, as in torch
      row[i] = (v ? g[i] : T(0)) * sc0 * d;
    }
    if (pr.loss) {
      double a = 0.0;
#pragma omp simd reduction(+ : a)
      for (int64_t i = 0; i < len; ++i) a += double(l0[i]);
      acc += a;
    }
    if (pr.map) {
      T* __restrict mp = static_cast<T*>(pr.map) + moff;
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) mp[i] = sc0 * l0[i];
    }
    if (pr.dx)
      store_row(pr.dx, pr.x_dtype, n * pr.dxsN + c * pr.dxsC + s0 * pr.dxsS, pr.dxsS, row, len);
  }
  *acc0 += acc;
}

// ---- one (image, chunk) work item ---------------------------------------------------------

template <typename T>
SEGFAST_INLINE void item_impl(const Problem& pr, Workspace<T>& w, int64_t n, int64_t j,
                              int64_t Pe) {
  int64_t b, e;
  chunk_range(pr.S, Pe, j, &b, &e);
  double a0 = 0.0, a1 = 0.0;
  for (int64_t s0 = b; s0 < e; s0 += w.tile) {
    const int64_t len = std::min(w.tile, e - s0);
    switch (pr.kind) {
      case kCE: softmax_tile<kCE, T>(pr, w, n, s0, len, &a0, &a1); break;
      case kFocalSoftmax:
        if (pr.t_is_label) softmax_tile<kFocalSoftmax, T>(pr, w, n, s0, len, &a0, &a1);
        else softmax_dense_tile<T>(pr, w, n, s0, len, &a0);
        break;
      case kFused: softmax_tile<kFused, T>(pr, w, n, s0, len, &a0, &a1); break;
      case kBCE: sigmoid_tile<kBCE, T>(pr, w, n, s0, len, &a0); break;
      default: sigmoid_tile<kFocalSigmoid, T>(pr, w, n, s0, len, &a0); break;
    }
  }
  if (pr.loss) {
    T* o = static_cast<T*>(pr.loss) + (n * pr.P + j) * 2;
    o[0] = T(a0);
    o[1] = T(a1);
  }
}

SEGFAST_CLONES void item_f32(const Problem& pr, Workspace<float>& w, int64_t n, int64_t j,
                             int64_t Pe) {
  item_impl<float>(pr, w, n, j, Pe);
}

void item_f64(const Problem& pr, Workspace<double>& w, int64_t n, int64_t j, int64_t Pe) {
  item_impl<double>(pr, w, n, j, Pe);
}

template <typename T, typename F>
void run(const Problem& pr, int64_t num_threads, F item) {
  const int64_t tile = tile_for(pr.C);
  // With the loss sums: the caller's P chunks (one writer per slot). Without:
  // tile-sized chunks, for load balance.
  const int64_t Pe = pr.loss ? pr.P : std::max<int64_t>(1, (pr.S + tile - 1) / tile);
  const int64_t items = pr.N * Pe;
  int nt = num_threads <= 0 ? omp_get_max_threads() : int(num_threads);
  nt = int(std::max<int64_t>(1, std::min<int64_t>(nt, items)));
#pragma omp parallel num_threads(nt)
  {
    Workspace<T> w(pr, tile);
#pragma omp for schedule(static)
    for (int64_t it = 0; it < items; ++it) item(pr, w, it / Pe, it % Pe, Pe);
  }
}

}  // namespace

// Entry point (declared in csrc/bindings.cpp).
void pixel_loss_cpu(const Problem& pr, int64_t num_threads) {
  if (pr.N <= 0) return;
  if (pr.C <= 0 || (pr.loss && pr.P <= 0)) return;
  if (pr.x_dtype == kFloat64) run<double>(pr, num_threads, item_f64);
  else run<float>(pr, num_threads, item_f32);
}

}  // namespace pixel
}  // namespace segfast
