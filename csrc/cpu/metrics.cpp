// metrics family, CPU: COCO box evaluation (pycocotools' evaluateImg +
// accumulate, number for number) and the segmentation confusion matrix read
// straight from the logits. segfast/metrics/ validates and lays out every
// input; the rules each kernel follows are stated in
// segfast/metrics/detection.py and segfast/metrics/segmentation.py.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <vector>

#include <omp.h>

#include "../common/dtypes.h"
#include "common.h"

// IoU and area products are rounded one by one, as pycocotools' C code does
// them (no fused multiply-add); the shared rules come after the pragma so
// that it covers them too.
#pragma GCC optimize("fp-contract=off")
#include "../common/metrics.h"

namespace py = pybind11;

namespace segfast {
namespace metrics {

struct CocoArgs {
  int64_t K, I, T, R, A, M;
  // ground truth grouped by (category, image): group g = k * I + i holds rows gt_off[g]..gt_off[g+1]
  const double* gt_box;   // [G, 4] x, y, w, h
  const double* gt_area;  // [G]
  const uint8_t* gt_crowd;
  const uint8_t* gt_idnz;  // the gt's id is not 0 (pycocotools tests matches by id != 0)
  const int64_t* gt_off;
  const double* dt_box;  // [D, 4] x, y, w, h, grouped as the gts, input order inside a group
  const double* dt_score;
  const int64_t* dt_off;
  const double* iou_thr;   // [T]
  const double* rec_thr;   // [R]
  const double* area_rng;  // [A, 2]
  const int64_t* max_dets;  // [M]
  double* precision;  // [T, R, K, A, M], -1 filled by the caller
  double* recall;     // [T, K, A, M]
  double* scores;     // [T, R, K, A, M]
  double* ap_all;     // [T, K, A, M]: sum of (R_n - R_{n-1}) P_n over the detections
  int64_t* npig;      // [K, A]
  // optional: codes of the detections kept at (curve_a, curve_m), per category in score order
  int64_t curve_a, curve_m;
  const int64_t* curve_off;  // [K + 1]
  int64_t curve_total;
  double* curve_score;   // [curve_total]
  uint8_t* curve_code;   // [T, curve_total]: 0 ignored, 1 true positive, 2 false positive
};

namespace {

void coco_accumulate_category(const CocoArgs& a, int64_t k, const double* sc, const int32_t* rank,
                              const uint8_t* code, int64_t n);

// One category: evaluateImg on each of its images, then accumulate.
void coco_category(const CocoArgs& a, int64_t k) {
  const int64_t T = a.T, A = a.A, M = a.M;
  const int64_t last_det = a.max_dets[M - 1];
  std::vector<double> sc;       // kept detections, image order, score order inside an image
  std::vector<int32_t> rank;    // their rank inside the image
  std::vector<uint8_t> code;    // [n, A, T]
  std::vector<int64_t> npig(A, 0);
  std::vector<int64_t> dord;
  std::vector<double> iou;
  std::vector<uint8_t> gig, gtm;
  for (int64_t i = 0; i < a.I; ++i) {
    const int64_t g = k * a.I + i;
    const int64_t g0 = a.gt_off[g], ng = a.gt_off[g + 1] - g0;
    const int64_t d0 = a.dt_off[g], nd = a.dt_off[g + 1] - d0;
    if (ng == 0 && nd == 0) continue;
    // detections: stable sort by decreasing score, cut to maxDets[-1]
    dord.resize(nd);
    std::iota(dord.begin(), dord.end(), d0);
    std::stable_sort(dord.begin(), dord.end(),
                     [&](int64_t x, int64_t y) { return a.dt_score[x] > a.dt_score[y]; });
    const int64_t D = std::min<int64_t>(nd, last_det);
    // IoU [D, ng] (maskApi.c bbIou: crowd gts divide by the detection's area)
    iou.resize(D * ng);
    for (int64_t d = 0; d < D; ++d)
      for (int64_t j = 0; j < ng; ++j)
        iou[d * ng + j] = coco_iou(a.dt_box + 4 * dord[d], a.gt_box + 4 * (g0 + j), a.gt_crowd[g0 + j] != 0);
    const size_t base = sc.size();
    sc.resize(base + D);
    rank.resize(base + D);
    code.resize((base + D) * A * T);
    for (int64_t d = 0; d < D; ++d) {
      sc[base + d] = a.dt_score[dord[d]];
      rank[base + d] = int32_t(d);
    }
    gig.resize(ng);
    gtm.resize(ng);
    const uint8_t* crowd = a.gt_crowd + g0;
    const auto matched = [&](int64_t j) { return gtm[j] != 0; };
    for (int64_t ar = 0; ar < A; ++ar) {
      const double lo = a.area_rng[2 * ar], hi = a.area_rng[2 * ar + 1];
      // ignored gts: crowd or area outside [lo, hi]
      for (int64_t j = 0; j < ng; ++j) {
        const double ar_j = a.gt_area[g0 + j];
        gig[j] = (crowd[j] || ar_j < lo || ar_j > hi) ? 1 : 0;
        npig[ar] += gig[j] == 0;
      }
      for (int64_t t = 0; t < T; ++t) {
        std::fill(gtm.begin(), gtm.end(), uint8_t(0));
        const double thr = std::min(a.iou_thr[t], 1 - 1e-10);
        for (int64_t d = 0; d < D; ++d) {
          const int64_t m = coco_greedy(iou.data() + d * ng, gig.data(), crowd, ng, thr, matched);
          if (m > -1) gtm[m] = 1;
          const double* B = a.dt_box + 4 * dord[d];
          code[((base + d) * A + ar) * T + t] =
              coco_code(m, gig.data(), a.gt_idnz + g0, coco_mul(B[2], B[3]), lo, hi);
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
void coco_accumulate_category(const CocoArgs& a, int64_t k, const double* sc, const int32_t* rank,
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

template <typename P>
P* ptr(uintptr_t p) {
  return reinterpret_cast<P*>(p);
}

void coco_eval(int64_t K, int64_t I, int64_t T, int64_t R, int64_t A, int64_t M, uintptr_t gt_box,
               uintptr_t gt_area, uintptr_t gt_crowd, uintptr_t gt_idnz, uintptr_t gt_off,
               uintptr_t dt_box, uintptr_t dt_score, uintptr_t dt_off, uintptr_t iou_thr,
               uintptr_t rec_thr, uintptr_t area_rng, uintptr_t max_dets, uintptr_t precision,
               uintptr_t recall, uintptr_t scores, uintptr_t ap_all, uintptr_t npig, int64_t curve_a, int64_t curve_m,
               uintptr_t curve_off, int64_t curve_total, uintptr_t curve_score,
               uintptr_t curve_code, int64_t num_threads) {
  if (K < 0 || I < 0 || T < 1 || R < 1 || A < 1 || M < 1)
    throw std::invalid_argument("segfast._C.coco_eval: bad sizes");
  CocoArgs a{K, I, T, R, A, M,
             ptr<const double>(gt_box), ptr<const double>(gt_area), ptr<const uint8_t>(gt_crowd),
             ptr<const uint8_t>(gt_idnz), ptr<const int64_t>(gt_off),
             ptr<const double>(dt_box), ptr<const double>(dt_score), ptr<const int64_t>(dt_off),
             ptr<const double>(iou_thr), ptr<const double>(rec_thr), ptr<const double>(area_rng),
             ptr<const int64_t>(max_dets), ptr<double>(precision), ptr<double>(recall),
             ptr<double>(scores), ptr<double>(ap_all), ptr<int64_t>(npig), curve_a, curve_m,
             ptr<const int64_t>(curve_off), curve_total, ptr<double>(curve_score),
             ptr<uint8_t>(curve_code)};
  for (int64_t m = 0; m < M; ++m)
    if (a.max_dets[m] < 1) throw std::invalid_argument("segfast._C.coco_eval: maxDets must be >= 1");
  py::gil_scoped_release nogil;
  const int nt = int(std::max<int64_t>(1, std::min<int64_t>(num_threads, std::max<int64_t>(K, 1))));
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int64_t k = 0; k < K; ++k) coco_category(a, k);
}

// accumulate alone, of matching codes computed elsewhere (the Triton kernel): the kept
// detections of category k are rows cat_off[k]..cat_off[k+1] of sc / rank / code [D, A, T];
// npig [K, A] is an input here.
void coco_accumulate(int64_t K, int64_t T, int64_t R, int64_t A, int64_t M, uintptr_t cat_off,
                     uintptr_t sc, uintptr_t rank, uintptr_t code, uintptr_t rec_thr, uintptr_t max_dets,
                     uintptr_t precision, uintptr_t recall, uintptr_t scores, uintptr_t ap_all, uintptr_t npig,
                     int64_t curve_a, int64_t curve_m, uintptr_t curve_off, int64_t curve_total,
                     uintptr_t curve_score, uintptr_t curve_code, int64_t num_threads) {
  if (K < 0 || T < 1 || R < 1 || A < 1 || M < 1)
    throw std::invalid_argument("segfast._C.coco_accumulate: bad sizes");
  CocoArgs a{};
  a.K = K, a.I = 0, a.T = T, a.R = R, a.A = A, a.M = M;
  a.rec_thr = ptr<const double>(rec_thr);
  a.max_dets = ptr<const int64_t>(max_dets);
  a.precision = ptr<double>(precision), a.recall = ptr<double>(recall);
  a.scores = ptr<double>(scores), a.ap_all = ptr<double>(ap_all), a.npig = ptr<int64_t>(npig);
  a.curve_a = curve_a, a.curve_m = curve_m, a.curve_off = ptr<const int64_t>(curve_off);
  a.curve_total = curve_total, a.curve_score = ptr<double>(curve_score);
  a.curve_code = ptr<uint8_t>(curve_code);
  const int64_t* off = ptr<const int64_t>(cat_off);
  const double* s = ptr<const double>(sc);
  const int32_t* rk = ptr<const int32_t>(rank);
  const uint8_t* c = ptr<const uint8_t>(code);
  py::gil_scoped_release nogil;
  const int nt = int(std::max<int64_t>(1, std::min<int64_t>(num_threads, std::max<int64_t>(K, 1))));
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int64_t k = 0; k < K; ++k)
    coco_accumulate_category(a, k, s + off[k], rk + off[k], c + off[k] * A * T, off[k + 1] - off[k]);
}

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
void confusion_run(uintptr_t x, int code, int64_t N, int64_t C, int64_t S, int64_t sN, int64_t sC,
                   int64_t sS, uintptr_t t, int t_code, int64_t tsN, int64_t tsS, bool has_ignore,
                   int64_t ignore, int64_t* out, int nt) {
  const int64_t nb = (S + kBlock - 1) / kBlock, jobs = N * nb, bins = C * C + 1;
  const void* xp = reinterpret_cast<const void*>(x);
  const void* tp = reinterpret_cast<const void*>(t);
  std::vector<std::vector<int64_t>> local(nt);
#pragma omp parallel num_threads(nt)
  {
    std::vector<int64_t>& h = local[omp_get_thread_num()];
    h.assign(bins, 0);
    std::vector<T> best(kBlock), row(kBlock);
    std::vector<int32_t> idx(kBlock);
#pragma omp for schedule(static)
    for (int64_t j = 0; j < jobs; ++j) {
      const int64_t n = j / nb, s0 = (j % nb) * kBlock, len = std::min(kBlock, S - s0);
      confusion_block<T>(xp, code, n * sN + s0 * sS, sC, sS, C, len, best.data(), idx.data(),
                         row.data());
      for (int64_t p = 0; p < len; ++p) {
        const int64_t y = load_i64(tp, t_code, n * tsN + (s0 + p) * tsS);
        const int64_t bin = confusion_bin(y, idx[p], C, has_ignore, ignore);
        if (bin != kConfSkip) ++h[bin == kConfBad ? C * C : bin];
      }
    }
  }
  for (int i = 0; i < nt; ++i)
    for (int64_t b = 0; b < bins; ++b) out[b] += local[i][b];
}

}  // namespace

// The cpu.confusion_logits entry's kernel (registered in csrc/bind/metrics.cpp).
void confusion_logits(uintptr_t x, int64_t x_code, int64_t N, int64_t C, int64_t S, int64_t sN,
                      int64_t sC, int64_t sS, uintptr_t t, int64_t t_code, int64_t tsN, int64_t tsS,
                      bool has_ignore, int64_t ignore, uintptr_t out, int64_t num_threads) {
  if (!dtype_is_float(int(x_code))) throw std::invalid_argument("segfast._C: logits must be float");
  if (t_code != kUInt8 && t_code != kInt32 && t_code != kInt64)
    throw std::invalid_argument("segfast._C: targets must be uint8/int32/int64");
  if (N < 0 || C < 1 || S < 0) throw std::invalid_argument("segfast._C: bad sizes");
  py::gil_scoped_release nogil;
  const int nt = int(std::max<int64_t>(1, num_threads));
  int64_t* o = reinterpret_cast<int64_t*>(out);
  if (x_code == kFloat64)
    confusion_run<double>(x, int(x_code), N, C, S, sN, sC, sS, t, int(t_code), tsN, tsS, has_ignore,
                          ignore, o, nt);
  else
    confusion_run<float>(x, int(x_code), N, C, S, sN, sC, sS, t, int(t_code), tsN, tsS, has_ignore,
                         ignore, o, nt);
}

void register_metrics(py::module_& m) {
  m.def("coco_eval", &coco_eval,
        "COCO box evaluation (pycocotools evaluateImg + accumulate) of K categories x I images; "
        "gts and detections float64 xywh grouped by (category, image) with offsets [K*I+1]; "
        "writes precision/scores [T,R,K,A,M], recall [T,K,A,M], npig [K,A] and optionally the "
        "per-detection codes of one (area, maxDets) cell.",
        py::arg("K"), py::arg("I"), py::arg("T"), py::arg("R"), py::arg("A"), py::arg("M"),
        py::arg("gt_box"), py::arg("gt_area"), py::arg("gt_crowd"), py::arg("gt_idnz"),
        py::arg("gt_off"), py::arg("dt_box"), py::arg("dt_score"), py::arg("dt_off"),
        py::arg("iou_thr"), py::arg("rec_thr"), py::arg("area_rng"), py::arg("max_dets"),
        py::arg("precision"), py::arg("recall"), py::arg("scores"), py::arg("ap_all"), py::arg("npig"),
        py::arg("curve_a"), py::arg("curve_m"), py::arg("curve_off"), py::arg("curve_total"),
        py::arg("curve_score"), py::arg("curve_code"), py::arg("num_threads"));
  m.def("coco_accumulate", &coco_accumulate,
        "pycocotools' accumulate alone, of matching codes [D, A, T] (0 ignored, 1 tp, 2 fp) with "
        "scores [D] and ranks inside the image [D] int32, rows of category k from cat_off[k]; npig "
        "[K, A] given; the outputs and the optional curve as coco_eval's.",
        py::arg("K"), py::arg("T"), py::arg("R"), py::arg("A"), py::arg("M"), py::arg("cat_off"),
        py::arg("sc"), py::arg("rank"), py::arg("code"), py::arg("rec_thr"), py::arg("max_dets"),
        py::arg("precision"), py::arg("recall"), py::arg("scores"), py::arg("ap_all"), py::arg("npig"),
        py::arg("curve_a"), py::arg("curve_m"), py::arg("curve_off"), py::arg("curve_total"),
        py::arg("curve_score"), py::arg("curve_code"), py::arg("num_threads"));
}

}  // namespace metrics
}  // namespace segfast
