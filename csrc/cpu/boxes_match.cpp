// Box matching (box_iou_max) and NMS, CPU kernels (C++ / OpenMP). Geometry:
// csrc/common/boxes.h; rules: csrc/common/boxes_match.h; calling side:
// segfast/ops/boxes_match.py.
//
// No float contraction in this file: a fused multiply-add in the union
// (area_a + area_b - w*h) would round differently from the eager reference,
// and box matching compares IoUs for equality (ties) and against thresholds.
#pragma GCC optimize("fp-contract=off")

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../common/boxes_match.h"
#include "common.h"

namespace segfast {
namespace boxes {
namespace {

// Anchors per work item: their SoA copy, best IoU and argmax stay in L1
// while the item sweeps its image's valid gts (also SoA, in L1 for M ~ 1000).
constexpr int64_t kBlock = 256;

// The valid gts of every image as xyxy SoA, compacted (original order kept,
// so "lowest compacted index" is "lowest gt index").
template <typename T>
struct GtTable {
  std::vector<T> x1, y1, x2, y2, ar;
  std::vector<int64_t> col;  // original gt index j
  std::vector<int64_t> off;  // [B + 1]: image b owns [off[b], off[b + 1])
};

template <typename T>
GtTable<T> gt_table(const IouMaxProblem& p) {
  GtTable<T> G;
  G.off.assign(p.B + 1, 0);
  for (int64_t b = 0; b < p.B; ++b) {
    for (int64_t j = 0; j < p.M; ++j) {
      if (p.valid && !p.valid[b * p.vsB + j * p.vsM]) continue;
      const Box<T> g = load_box<T>(p.g, p.a_dtype, b * p.gsB + j * p.gsM, p.gs4, p.fmt);
      G.x1.push_back(g.x1); G.y1.push_back(g.y1); G.x2.push_back(g.x2); G.y2.push_back(g.y2);
      G.ar.push_back(area_rn(g));
      G.col.push_back(j);
    }
    G.off[b + 1] = int64_t(G.col.size());
  }
  return G;
}

// n anchors x K gts: best IoU / argmax per anchor (strict >, gts in increasing
// order: the lowest index wins ties) and the running max per gt (gpart).
template <typename T>
SEGFAST_INLINE void match_block_body(const T* __restrict ax1, const T* __restrict ay1,
                                     const T* __restrict ax2, const T* __restrict ay2,
                                     const T* __restrict aar, int64_t n, const T* __restrict gx1,
                                     const T* __restrict gy1, const T* __restrict gx2,
                                     const T* __restrict gy2, const T* __restrict gar, int64_t K,
                                     T* __restrict best, int32_t* __restrict arg,
                                     T* __restrict gpart) {
  for (int64_t i = 0; i < n; ++i) { best[i] = T(-1); arg[i] = -1; }
  for (int64_t k = 0; k < K; ++k) {
    const Box<T> g{gx1[k], gy1[k], gx2[k], gy2[k]};
    const T ga = gar[k];
    const int32_t kk = int32_t(k);
    T gm = gpart[k];
#pragma omp simd reduction(max : gm)
    for (int64_t i = 0; i < n; ++i) {
      const Box<T> a{ax1[i], ay1[i], ax2[i], ay2[i]};
      const T v = iou_rn(a, g, aar[i], ga);
      const bool take = v > best[i];
      best[i] = take ? v : best[i];
      arg[i] = take ? kk : arg[i];
      gm = gm > v ? gm : v;
    }
    gpart[k] = gm;
  }
}

#define SEGFAST_MATCH_ARGS(T)                                                                  \
  const T *ax1, const T *ay1, const T *ax2, const T *ay2, const T *aar, int64_t n,             \
      const T *gx1, const T *gy1, const T *gx2, const T *gy2, const T *gar, int64_t K, T *best, \
      int32_t *arg, T *gpart
#define SEGFAST_MATCH_PASS ax1, ay1, ax2, ay2, aar, n, gx1, gy1, gx2, gy2, gar, K, best, arg, gpart

SEGFAST_CLONES void match_block_f32(SEGFAST_MATCH_ARGS(float)) { match_block_body(SEGFAST_MATCH_PASS); }
SEGFAST_CLONES void match_block_f64(SEGFAST_MATCH_ARGS(double)) { match_block_body(SEGFAST_MATCH_PASS); }
SEGFAST_INLINE void match_block(SEGFAST_MATCH_ARGS(float)) { match_block_f32(SEGFAST_MATCH_PASS); }
SEGFAST_INLINE void match_block(SEGFAST_MATCH_ARGS(double)) { match_block_f64(SEGFAST_MATCH_PASS); }

template <typename T>
void iou_max_impl(const IouMaxProblem& p, int num_threads) {
  const GtTable<T> G = gt_table<T>(p);
  const int64_t B = p.B, N = p.N, M = p.M;
  const int64_t nblk = (N + kBlock - 1) / kBlock;
  const int64_t items = B * nblk;
  const int64_t KT = G.off[B];
  T* mx = static_cast<T*>(p.mx);
  T* gmax = static_cast<T*>(p.gmax);
  const int nt = int(std::max<int64_t>(1, std::min<int64_t>(num_threads, items)));
  std::vector<std::vector<T>> parts(nt);  // per-thread per-gt maxima, merged below
#pragma omp parallel num_threads(nt)
  {
    std::vector<T> part(KT, T(0));
    alignas(64) T ax1[kBlock], ay1[kBlock], ax2[kBlock], ay2[kBlock], aar[kBlock], best[kBlock];
    alignas(64) int32_t arg[kBlock];
#pragma omp for schedule(static)
    for (int64_t w = 0; w < items; ++w) {
      const int64_t b = w / nblk, i0 = (w % nblk) * kBlock;
      const int64_t n = std::min(kBlock, N - i0);
      for (int64_t i = 0; i < n; ++i) {
        const Box<T> a = load_box<T>(p.a, p.a_dtype, b * p.asB + (i0 + i) * p.asN, p.as4, p.fmt);
        ax1[i] = a.x1; ay1[i] = a.y1; ax2[i] = a.x2; ay2[i] = a.y2;
        aar[i] = area_rn(a);
      }
      const int64_t base = G.off[b], K = G.off[b + 1] - base;
      match_block(ax1, ay1, ax2, ay2, aar, n, G.x1.data() + base, G.y1.data() + base,
                  G.x2.data() + base, G.y2.data() + base, G.ar.data() + base, K, best, arg,
                  part.data() + base);
      T* mxo = mx + b * N + i0;
      int64_t* argo = p.arg + b * N + i0;
      for (int64_t i = 0; i < n; ++i) {
        mxo[i] = best[i] < T(0) ? T(0) : best[i];  // -1: no valid gt in this image
        argo[i] = arg[i] < 0 ? int64_t(-1) : G.col[base + arg[i]];
      }
    }
    parts[omp_get_thread_num()] = std::move(part);
#pragma omp barrier
    // max is order-independent: the merge is deterministic whatever the schedule
#pragma omp for schedule(static)
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t k = G.off[b]; k < G.off[b + 1]; ++k) {
        T m = T(0);
        for (const auto& pt : parts)
          if (!pt.empty()) m = pt[k] > m ? pt[k] : m;
        gmax[b * M + G.col[k]] = m;
      }
    }
  }
}

// ---- NMS ---------------------------------------------------------------------------

// Greedy NMS over boxes in visiting order, with the IoU row of each kept box
// computed on the fly against every later box (vectorised; no N x N matrix).
template <typename T>
SEGFAST_INLINE void nms_body(const T* __restrict x1, const T* __restrict y1, const T* __restrict x2,
                             const T* __restrict y2, const T* __restrict ar,
                             const int64_t* __restrict cls, int64_t N, T thr,
                             int32_t* __restrict removed, uint8_t* __restrict keep) {
  for (int64_t i = 0; i < N; ++i) {
    if (removed[i]) { keep[i] = 0; continue; }
    keep[i] = 1;
    const Box<T> bi{x1[i], y1[i], x2[i], y2[i]};
    const T ai = ar[i];
    if (cls) {
      const int64_t ci = cls[i];
#pragma omp simd
      for (int64_t j = i + 1; j < N; ++j) {
        const Box<T> bj{x1[j], y1[j], x2[j], y2[j]};
        const T v = iou_rn(bi, bj, ai, ar[j]);
        removed[j] |= int32_t(suppresses(v, thr, ci, cls[j]));
      }
    } else {
#pragma omp simd
      for (int64_t j = i + 1; j < N; ++j) {
        const Box<T> bj{x1[j], y1[j], x2[j], y2[j]};
        const T v = iou_rn(bi, bj, ai, ar[j]);
        removed[j] |= int32_t(v > thr);
      }
    }
  }
}

#define SEGFAST_NMS_ARGS(T)                                                              \
  const T *x1, const T *y1, const T *x2, const T *y2, const T *ar, const int64_t *cls,  \
      int64_t N, T thr, int32_t *removed, uint8_t *keep
#define SEGFAST_NMS_PASS x1, y1, x2, y2, ar, cls, N, thr, removed, keep

SEGFAST_CLONES void nms_f32(SEGFAST_NMS_ARGS(float)) { nms_body(SEGFAST_NMS_PASS); }
SEGFAST_CLONES void nms_f64(SEGFAST_NMS_ARGS(double)) { nms_body(SEGFAST_NMS_PASS); }
SEGFAST_INLINE void nms_run(SEGFAST_NMS_ARGS(float)) { nms_f32(SEGFAST_NMS_PASS); }
SEGFAST_INLINE void nms_run(SEGFAST_NMS_ARGS(double)) { nms_f64(SEGFAST_NMS_PASS); }

template <typename T>
void nms_impl(const NmsProblem& p) {
  const int64_t N = p.N;
  std::vector<T> x1(N), y1(N), x2(N), y2(N), ar(N);
  std::vector<int32_t> removed(N, 0);
  for (int64_t i = 0; i < N; ++i) {
    const Box<T> b = load_box<T>(p.b, p.dtype, i * p.s0, p.s4, p.fmt);
    x1[i] = b.x1; y1[i] = b.y1; x2[i] = b.x2; y2[i] = b.y2;
    ar[i] = area_rn(b);
  }
  nms_run(x1.data(), y1.data(), x2.data(), y2.data(), ar.data(), p.cls, N, T(p.threshold),
          removed.data(), p.keep);
}

}  // namespace

void box_iou_max_cpu(const IouMaxProblem& p, int64_t num_threads) {
  const int nt = num_threads <= 0 ? omp_get_max_threads() : int(num_threads);
  if (p.a_dtype == kFloat64) iou_max_impl<double>(p, nt);
  else iou_max_impl<float>(p, nt);
}

void nms_cpu(const NmsProblem& p) {
  if (p.dtype == kFloat64) nms_impl<double>(p);
  else nms_impl<float>(p);
}

}  // namespace boxes
}  // namespace segfast
