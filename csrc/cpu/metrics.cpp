// metrics family, CPU: COCO box evaluation (pycocotools' evaluateImg +
// accumulate, number for number) and the segmentation confusion matrix read
// straight from the logits. segfast/metrics/ validates and lays out every
// input; the rules each kernel follows are stated in
// segfast/metrics/detection.py and segfast/metrics/segmentation.py.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include <omp.h>

#include "../common/dtypes.h"
#include "common.h"

// IoU and area products are rounded one by one, as pycocotools' C code does
// them (no fused multiply-add); the shared rules come after the pragma so
// that it covers them too.
#pragma GCC optimize("fp-contract=off")
#include "../common/metrics.h"

namespace segfast {
namespace metrics {

namespace {

void coco_accumulate_category(const CocoAccumulateProblem& a, int64_t k, const double* sc, const int32_t* rank,
                              const uint8_t* code, int64_t n);

// One category: evaluateImg on each of its images, then accumulate.
void coco_category(const CocoEvalProblem& e, int64_t k) {
  const CocoGroups& G = e.groups;
  const CocoAccumulateProblem& a = e.acc;
  const int64_t T = a.T, A = a.A, M = a.M;
  const int64_t last_det = a.max_dets[M - 1];
  std::vector<double> sc;       // kept detections, image order, score order inside an image
  std::vector<int32_t> rank;    // their rank inside the image
  std::vector<uint8_t> code;    // [n, A, T]
  std::vector<int64_t> npig(A, 0);
  std::vector<int64_t> dord;
  std::vector<double> iou;
  std::vector<uint8_t> gig, gtm;
  for (int64_t i = 0; i < e.I; ++i) {
    const int64_t g = k * e.I + i;
    const int64_t g0 = G.gt_off[g], ng = G.gt_off[g + 1] - g0;
    const int64_t d0 = G.dt_off[g], nd = G.dt_off[g + 1] - d0;
    if (ng == 0 && nd == 0) continue;
    // detections: stable sort by decreasing score, cut to maxDets[-1]
    dord.resize(nd);
    std::iota(dord.begin(), dord.end(), d0);
    std::stable_sort(dord.begin(), dord.end(),
                     [&](int64_t x, int64_t y) { return e.dt_score[x] > e.dt_score[y]; });
    const int64_t D = std::min<int64_t>(nd, last_det);
    // IoU [D, ng] (maskApi.c bbIou: crowd gts divide by the detection's area)
    iou.resize(D * ng);
    for (int64_t d = 0; d < D; ++d)
      for (int64_t j = 0; j < ng; ++j)
        iou[d * ng + j] = coco_iou(G.dt_box + 4 * dord[d], G.gt_box + 4 * (g0 + j), G.gt_crowd[g0 + j] != 0);
    const size_t base = sc.size();
    sc.resize(base + D);
    rank.resize(base + D);
    code.resize((base + D) * A * T);
    for (int64_t d = 0; d < D; ++d) {
      sc[base + d] = e.dt_score[dord[d]];
      rank[base + d] = int32_t(d);
    }
    gig.resize(ng);
    gtm.resize(ng);
    const uint8_t* crowd = G.gt_crowd + g0;
    const auto matched = [&](int64_t j) { return gtm[j] != 0; };
    for (int64_t ar = 0; ar < A; ++ar) {
      const double lo = G.area_rng[2 * ar], hi = G.area_rng[2 * ar + 1];
      // ignored gts: crowd or area outside [lo, hi]
      for (int64_t j = 0; j < ng; ++j) {
        const double ar_j = G.gt_area[g0 + j];
        gig[j] = (crowd[j] || ar_j < lo || ar_j > hi) ? 1 : 0;
        npig[ar] += gig[j] == 0;
      }
      for (int64_t t = 0; t < T; ++t) {
        std::fill(gtm.begin(), gtm.end(), uint8_t(0));
        const double thr = std::min(e.iou_thr[t], 1 - 1e-10);
        for (int64_t d = 0; d < D; ++d) {
          const int64_t m = coco_greedy(iou.data() + d * ng, gig.data(), crowd, ng, thr, matched);
          if (m > -1) gtm[m] = 1;
          const double* B = G.dt_box + 4 * dord[d];
          code[((base + d) * A + ar) * T + t] =
              coco_code(m, gig.data(), G.gt_idnz + g0, coco_mul(B[2], B[3]), lo, hi);
        }
      }
    }
  }
  for (int64_t ar = 0; ar < A; ++ar) a.npig[k * A + ar] = npig[ar];
  coco_accumulate_category(a, k, sc.data(), rank.data(), code.data(), int64_t(sc.size()));
}

// accumulate of one category: its n kept detections (images in id order, score order
// inside an image) with their score, rank inside the image and codes [n, A, T];
// a.npig[k * A + ar] its regular gts. One stable sort by decreasing score.
void coco_accumulate_category(const CocoAccumulateProblem& a, int64_t k, const double* sc, const int32_t* rank,
                              const uint8_t* code, int64_t n) {
  const int64_t T = a.T, R = a.R, K = a.K, A = a.A, M = a.M;
  const int64_t* npig = a.npig + k * A;
  std::vector<int64_t> ord(n);
  std::iota(ord.begin(), ord.end(), 0);
  std::stable_sort(ord.begin(), ord.end(), [&](int64_t x, int64_t y) { return sc[x] > sc[y]; });
  std::vector<double> rc(n), pr(n), ss(n);
  const double eps = std::numeric_limits<double>::epsilon();  // np.spacing(1)
  for (int64_t mi = 0; mi < M; ++mi) {
    const int64_t md = a.max_dets[mi];
    for (int64_t ar = 0; ar < A; ++ar) {
      const bool curve = a.curve_code && ar == a.curve_a && mi == a.curve_m;
      if (npig[ar] == 0 && !curve) continue;
      const double np_ = double(npig[ar]);
      for (int64_t t = 0; t < T; ++t) {
        int64_t nd = 0;
        double tp = 0, fp = 0;
        const int64_t coff = curve ? a.curve_off[k] : 0;
        for (int64_t q = 0; q < n; ++q) {
          const int64_t x = ord[q];
          if (rank[x] >= md) continue;
          const uint8_t c = code[(x * A + ar) * T + t];
          if (curve) {
            a.curve_code[t * a.curve_total + coff + nd] = c;
            if (t == 0) a.curve_score[coff + nd] = sc[x];
          }
          tp += c == kCocoTP;
          fp += c == kCocoFP;
          rc[nd] = tp / np_;
          pr[nd] = tp / (fp + tp + eps);
          ss[nd] = sc[x];
          ++nd;
        }
        if (npig[ar] == 0) continue;
        const int64_t cell = ((t * K + k) * A + ar) * M + mi;
        a.recall[cell] = nd ? rc[nd - 1] : 0.0;
        for (int64_t q = nd - 1; q > 0; --q)
          if (pr[q] > pr[q - 1]) pr[q - 1] = pr[q];
        double ap = 0.0, prev = 0.0;
        for (int64_t q = 0; q < nd; ++q) {
          ap += (rc[q] - prev) * pr[q];
          prev = rc[q];
        }
        a.ap_all[cell] = ap;
        int64_t p = 0;
        for (int64_t r = 0; r < R; ++r) {
          while (p < nd && rc[p] < a.rec_thr[r]) ++p;  // searchsorted(rc, thr, 'left')
          const int64_t o = (((t * R + r) * K + k) * A + ar) * M + mi;
          a.precision[o] = p < nd ? pr[p] : 0.0;
          a.scores[o] = p < nd ? ss[p] : 0.0;
        }
      }
    }
  }
}

int category_threads(int64_t num_threads, int64_t K) {
  return int(std::max<int64_t>(1, std::min<int64_t>(num_threads, std::max<int64_t>(K, 1))));
}

}  // namespace

// The entries' kernels (cpu.coco_eval, cpu.coco_accumulate: csrc/bind/metrics.cpp checks every
// argument and releases the GIL), all categories in parallel.
void coco_eval_cpu(const CocoEvalProblem& p, int64_t num_threads) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(category_threads(num_threads, p.acc.K))
  for (int64_t k = 0; k < p.acc.K; ++k) coco_category(p, k);
}

// accumulate alone, of matching codes computed elsewhere (the device kernels): the kept
// detections of category k are rows cat_off[k]..cat_off[k+1] of sc / rank / code [D, A, T].
void coco_accumulate_cpu(const CocoAccumulateProblem& p, const int64_t* cat_off, const double* sc,
                         const int32_t* rank, const uint8_t* code, int64_t num_threads) {
  const int64_t AT = p.A * p.T;
#pragma omp parallel for schedule(dynamic, 1) num_threads(category_threads(num_threads, p.K))
  for (int64_t k = 0; k < p.K; ++k)
    coco_accumulate_category(p, k, sc + cat_off[k], rank + cat_off[k], code + cat_off[k] * AT,
                             cat_off[k + 1] - cat_off[k]);
}

namespace {

// ---- confusion matrix from logits -----------------------------------------------------------
// hist[target * C + argmax_c x] += 1 over the pixels whose target is not ignore_index; the
// first maximum wins, a NaN counts as the maximum (torch.argmax); targets outside [0, C)
// count in hist[C * C]. x [N, C, S] with element strides, targets [N, S].

constexpr int64_t kBlock = 512;

template <typename T>
SEGFAST_CLONES void confusion_block(const void* x, int code, int64_t off, int64_t sC, int64_t sS,
                                    int64_t C, int64_t len, T* __restrict best,
                                    int32_t* __restrict idx, T* __restrict row) {
  cpu::argmax_rows(x, code, off, sC, sS, C, len, best, idx, row);
}

template <typename T>
void confusion_run(const ConfusionProblem& p, int nt) {
  const int64_t C = p.C, nb = (p.S + kBlock - 1) / kBlock, jobs = p.N * nb, bins = C * C + 1;
  std::vector<std::vector<int64_t>> local(nt);
#pragma omp parallel num_threads(nt)
  {
    std::vector<int64_t>& h = local[omp_get_thread_num()];
    h.assign(bins, 0);
    std::vector<T> best(kBlock), row(kBlock);
    std::vector<int32_t> idx(kBlock);
#pragma omp for schedule(static)
    for (int64_t j = 0; j < jobs; ++j) {
      const int64_t n = j / nb, s0 = (j % nb) * kBlock, len = std::min(kBlock, p.S - s0);
      confusion_block<T>(p.x, p.x_dtype, n * p.xsN + s0 * p.xsS, p.xsC, p.xsS, C, len, best.data(), idx.data(),
                         row.data());
      for (int64_t q = 0; q < len; ++q) {
        const int64_t y = load_i64(p.t, p.t_dtype, n * p.tsN + (s0 + q) * p.tsS);
        const int64_t bin = confusion_bin(y, idx[q], C, p.has_ignore, p.ignore);
        if (bin != kConfSkip) ++h[bin == kConfBad ? C * C : bin];
      }
    }
  }
  for (int i = 0; i < nt; ++i)
    for (int64_t b = 0; b < bins; ++b) p.out[b] += local[i][b];
}

}  // namespace

// The cpu.confusion_logits entry's kernel (csrc/bind/metrics.cpp checks its arguments and releases
// the GIL): logits (p.logits), any strides.
void confusion_logits_cpu(const ConfusionProblem& p, int64_t num_threads) {
  const int nt = int(std::max<int64_t>(1, num_threads));
  if (p.x_dtype == kFloat64)
    confusion_run<double>(p, nt);
  else
    confusion_run<float>(p, nt);
}

}  // namespace metrics
}  // namespace segfast
