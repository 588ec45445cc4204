// Metrics family entries: the COCO host pass (evaluateImg + accumulate, and
// accumulate alone) and the confusion matrix of the argmax of logits
// (csrc/cpu/metrics.cpp; confusion_logits is the smallest example of the
// pattern in bind/view.h) and, with CUDA, the confusion matrix and the COCO
// matching on the device (csrc/cuda/metrics.cu).
#include <pybind11/stl.h>

#include <cmath>
#include <optional>
#include <string>

#include "bind/view.h"
#include "common/metrics.h"

namespace segfast {
namespace metrics {
void confusion_logits_cpu(const ConfusionProblem& p, int64_t num_threads);
void coco_eval_cpu(const CocoEvalProblem& p, int64_t num_threads);
void coco_accumulate_cpu(const CocoAccumulateProblem& p, const int64_t* cat_off, const double* sc,
                         const int32_t* rank, const uint8_t* code, int64_t num_threads);
#ifdef SEGFAST_WITH_CUDA
void confusion_cuda(const ConfusionProblem& p, uintptr_t stream);
void coco_match_cuda(const CocoMatchProblem& p, void* scratch, int64_t scratch_bytes, uintptr_t stream);
#endif
}  // namespace metrics

namespace bind {
namespace {

constexpr DTypes kI64 = dtype_bit(kInt64), kF64 = dtype_bit(kFloat64), kU8 = dtype_bit(kUInt8);

// The confusion count's problem once C is known: predictions x (logits [N, C, S] or class
// indices [N, S], the rank checked by the caller), targets t [N, S], counts out [C*C + 1].
metrics::ConfusionProblem confusion_problem(const Checker& c, const View& x, const View& t,
                                            std::optional<int64_t> ignore, const View& out, int64_t C) {
  c.need(t, "t", 2, kLabels);
  c.same(t, "t", 0, x, "x", 0);
  c.same(t, "t", 1, x, "x", x.ndim - 1);
  c.need(out, "out", 1, kI64);  // counts, added to
  c.contiguous(out, "out");
  c.shape(out, "out", {C * C + 1});
  metrics::ConfusionProblem p;
  p.x = x.data;
  p.x_dtype = x.dtype;
  p.logits = x.ndim == 3;
  p.xsN = x.stride[0];
  p.xsC = p.logits ? x.stride[1] : 0;
  p.xsS = x.stride[x.ndim - 1];
  p.t = t.data;
  p.t_dtype = t.dtype;
  p.tsN = t.stride[0];
  p.tsS = t.stride[1];
  p.N = t.size[0];
  p.C = C;
  p.S = t.size[1];
  p.has_ignore = ignore.has_value();
  p.ignore = ignore.value_or(0);
  p.out = out.ptr<int64_t>();
  return p;
}

// A contiguous 1-D (rank 1) or 2-D [n, cols] (rank 2) array of `dtypes`.
const View& array(const Checker& c, const View& v, const char* name, int rank, DTypes dtypes, int64_t cols = 0) {
  c.need(v, name, rank, dtypes);
  c.contiguous(v, name);
  if (rank == 2) c.require(v.size[1] == cols, std::string(name) + " must have " + std::to_string(cols) +
                                                  " columns, got " + shape_str(v));
  return v;
}

// The (category, image) groups' arrays (csrc/common/metrics.h CocoGroups).
metrics::CocoGroups coco_groups(const Checker& c, const View& gt_off, const View& dt_off, const View& gt_box,
                                const View& gt_area, const View& gt_crowd, const View& gt_idnz, const View& dt_box,
                                const View& area_rng) {
  array(c, gt_off, "gt_off", 1, kI64);
  array(c, dt_off, "dt_off", 1, kI64);
  c.same(dt_off, "dt_off", 0, gt_off, "gt_off", 0);
  c.require(gt_off.size[0] >= 1, "gt_off and dt_off must hold G + 1 >= 1 offsets");
  array(c, gt_box, "gt_box", 2, kF64, 4);
  for (const auto* v : {&gt_area, &gt_crowd, &gt_idnz}) {
    const char* name = v == &gt_area ? "gt_area" : v == &gt_crowd ? "gt_crowd" : "gt_idnz";
    array(c, *v, name, 1, v == &gt_area ? kF64 : kU8);
    c.same(*v, name, 0, gt_box, "gt_box", 0);
  }
  array(c, dt_box, "dt_box", 2, kF64, 4);
  array(c, area_rng, "area_rng", 2, kF64, 2);
  c.require(area_rng.size[0] >= 1, "area_rng must not be empty");
  metrics::CocoGroups g;
  g.gt_off = gt_off.ptr<const int64_t>();
  g.dt_off = dt_off.ptr<const int64_t>();
  g.gt_box = gt_box.ptr<const double>();
  g.gt_area = gt_area.ptr<const double>();
  g.gt_crowd = gt_crowd.ptr<const uint8_t>();
  g.gt_idnz = gt_idnz.ptr<const uint8_t>();
  g.dt_box = dt_box.ptr<const double>();
  g.area_rng = area_rng.ptr<const double>();
  g.A = area_rng.size[0];
  return g;
}

// Row offsets on the host (int64 [n + 1], checked by array): they rise from 0 to `rows`, so every
// row range the kernel reads lies inside the rows.
void offsets(const Checker& c, const View& off, const char* name, int64_t rows, const char* what) {
  const int64_t* o = off.ptr<const int64_t>();
  const int64_t n = off.size[0];
  bool ok = n >= 1 && o[0] == 0 && o[n - 1] == rows;
  for (int64_t i = 1; ok && i < n; ++i) ok = o[i] >= o[i - 1];
  c.require(ok, std::string(name) + " must rise from 0 to " + std::to_string(rows) + " (" + what + ")");
}

// accumulate's thresholds and outputs (csrc/common/metrics.h CocoAccumulateProblem) of K categories,
// T IoU thresholds and A area ranges; the curve's views all None or all given.
metrics::CocoAccumulateProblem coco_outputs(const Checker& c, int64_t K, int64_t T, int64_t A, const View& rec_thr,
                                            const View& max_dets, const View& precision, const View& recall,
                                            const View& scores, const View& ap_all, const View& npig,
                                            int64_t curve_a, int64_t curve_m, const View& curve_off,
                                            const View& curve_score, const View& curve_code) {
  array(c, rec_thr, "rec_thr", 1, kF64);
  array(c, max_dets, "max_dets", 1, kI64);
  const int64_t R = rec_thr.size[0], M = max_dets.size[0];
  c.require(T >= 1 && R >= 1 && M >= 1, "the IoU thresholds, rec_thr and max_dets must not be empty");
  for (int64_t m = 0; m < M; ++m) c.require(max_dets.ptr<const int64_t>()[m] >= 1, "max_dets must be >= 1");
  for (const auto* v : {&precision, &scores, &recall, &ap_all}) {
    const bool cells = v == &recall || v == &ap_all;
    const char* name = v == &precision ? "precision" : v == &scores ? "scores" : v == &recall ? "recall" : "ap_all";
    c.need(*v, name, cells ? 4 : 5, kF64);
    c.contiguous(*v, name);
    if (cells)
      c.shape(*v, name, {T, K, A, M});
    else
      c.shape(*v, name, {T, R, K, A, M});
  }
  c.need(npig, "npig", 2, kI64);
  c.contiguous(npig, "npig");
  c.shape(npig, "npig", {K, A});
  metrics::CocoAccumulateProblem p;
  p.K = K, p.T = T, p.R = R, p.A = A, p.M = M;
  p.rec_thr = rec_thr.ptr<const double>();
  p.max_dets = max_dets.ptr<const int64_t>();
  p.precision = precision.ptr<double>();
  p.recall = recall.ptr<double>();
  p.scores = scores.ptr<double>();
  p.ap_all = ap_all.ptr<double>();
  p.npig = npig.ptr<int64_t>();
  if (!c.may(curve_code, "curve_code", 2, kU8).present()) {
    c.require(!curve_off.present() && !curve_score.present(), "curve_off and curve_score come with curve_code");
    return p;
  }
  c.contiguous(curve_code, "curve_code");
  array(c, curve_score, "curve_score", 1, kF64);
  const int64_t n = curve_score.size[0];
  c.shape(curve_code, "curve_code", {T, n});
  array(c, curve_off, "curve_off", 1, kI64);
  c.shape(curve_off, "curve_off", {K + 1});
  offsets(c, curve_off, "curve_off", n, "curve_score's size");
  c.require(curve_a >= 0 && curve_a < A && curve_m >= 0 && curve_m < M,
            "curve_a and curve_m must index an area range and a max_dets entry");
  p.curve_a = curve_a, p.curve_m = curve_m;
  p.curve_off = curve_off.ptr<const int64_t>();
  p.curve_total = n;
  p.curve_score = curve_score.ptr<double>();
  p.curve_code = curve_code.ptr<uint8_t>();
  return p;
}

void coco_eval(const View& gt_off, const View& dt_off, const View& gt_box, const View& gt_area, const View& gt_crowd,
               const View& gt_idnz, const View& dt_box, const View& dt_score, const View& iou_thr,
               const View& area_rng, const View& rec_thr, const View& max_dets, const View& precision,
               const View& recall, const View& scores, const View& ap_all, const View& npig, int64_t curve_a,
               int64_t curve_m, const View& curve_off, const View& curve_score, const View& curve_code,
               int64_t num_threads) {
  const Checker c("cpu.coco_eval", kCpu);
  metrics::CocoEvalProblem p;
  p.groups = coco_groups(c, gt_off, dt_off, gt_box, gt_area, gt_crowd, gt_idnz, dt_box, area_rng);
  array(c, dt_score, "dt_score", 1, kF64);
  c.same(dt_score, "dt_score", 0, dt_box, "dt_box", 0);
  array(c, iou_thr, "iou_thr", 1, kF64);
  const int64_t K = c.need(npig, "npig", 2, kI64).size[0], G = gt_off.size[0] - 1;
  p.I = K > 0 ? G / K : 0;
  c.require(K * p.I == G, "gt_off must hold K * I + 1 offsets (K: npig's rows), got " + shape_str(gt_off) +
                              " for K = " + std::to_string(K));
  offsets(c, gt_off, "gt_off", gt_box.size[0], "gt_box's rows");
  offsets(c, dt_off, "dt_off", dt_box.size[0], "dt_box's rows");
  p.acc = coco_outputs(c, K, iou_thr.size[0], p.groups.A, rec_thr, max_dets, precision, recall, scores, ap_all,
                       npig, curve_a, curve_m, curve_off, curve_score, curve_code);
  p.dt_score = dt_score.ptr<const double>();
  p.iou_thr = iou_thr.ptr<const double>();
  py::gil_scoped_release nogil;
  metrics::coco_eval_cpu(p, num_threads);
}

void coco_accumulate(const View& cat_off, const View& sc, const View& rank, const View& code, const View& rec_thr,
                     const View& max_dets, const View& precision, const View& recall, const View& scores,
                     const View& ap_all, const View& npig, int64_t curve_a, int64_t curve_m, const View& curve_off,
                     const View& curve_score, const View& curve_code, int64_t num_threads) {
  const Checker c("cpu.coco_accumulate", kCpu);
  c.need(code, "code", 3, kU8);  // [D, A, T]
  c.contiguous(code, "code");
  const int64_t D = code.size[0], A = code.size[1], T = code.size[2];
  c.require(A >= 1, "code must have A >= 1 area ranges, got " + shape_str(code));
  array(c, sc, "sc", 1, kF64);
  c.same(sc, "sc", 0, code, "code", 0);
  array(c, rank, "rank", 1, dtype_bit(kInt32));
  c.same(rank, "rank", 0, code, "code", 0);
  array(c, cat_off, "cat_off", 1, kI64);
  offsets(c, cat_off, "cat_off", D, "code's rows");
  const metrics::CocoAccumulateProblem p =
      coco_outputs(c, cat_off.size[0] - 1, T, A, rec_thr, max_dets, precision, recall, scores, ap_all, npig,
                   curve_a, curve_m, curve_off, curve_score, curve_code);
  py::gil_scoped_release nogil;
  metrics::coco_accumulate_cpu(p, cat_off.ptr<const int64_t>(), sc.ptr<const double>(), rank.ptr<const int32_t>(),
                               code.ptr<const uint8_t>(), num_threads);
}

#ifdef SEGFAST_WITH_CUDA
void confusion(const View& x, const View& t, std::optional<int64_t> ignore, const View& out, uintptr_t stream) {
  const Checker c("cuda.confusion", kCudaDevice);
  c.need(out, "out", 1, kI64);  // counts [C*C + 1], added to
  const int64_t C = std::llround(std::sqrt(double(out.size[0] > 0 ? out.size[0] - 1 : 0)));
  c.require(C >= 1 && C * C + 1 == out.size[0] && C < (int64_t(1) << 31),
            "out must be [C*C + 1] for some C >= 1, got " + shape_str(out));
  const bool logits = x.state == View::kOk && x.ndim == 3;  // logits [N, C, S], else class indices [N, S]
  c.need(x, "x", logits ? 3 : 2, logits ? kFloats : kLabels);
  if (logits) c.shape(x, "x", {x.size[0], C, x.size[2]});
  const metrics::ConfusionProblem p = confusion_problem(c, x, t, ignore, out, C);
  py::gil_scoped_release nogil;
  metrics::confusion_cuda(p, stream);
}

void coco_match(const View& groups, const View& gt_off, const View& dt_off, const View& gt_box, const View& gt_area,
                const View& gt_crowd, const View& gt_idnz, const View& dt_box, const View& thr, const View& area_rng,
                int64_t max_gts, const View& code, const View& scratch, uintptr_t stream) {
  const Checker c("cuda.coco_match", kCudaDevice);
  array(c, groups, "groups", 1, kI64);
  metrics::CocoMatchProblem p;
  static_cast<metrics::CocoGroups&>(p) =
      coco_groups(c, gt_off, dt_off, gt_box, gt_area, gt_crowd, gt_idnz, dt_box, area_rng);
  array(c, thr, "thr", 1, kF64);
  const int64_t T = thr.size[0], A = p.A;
  c.require(T >= 1, "thr must not be empty");
  c.require(max_gts >= 0, "max_gts must be >= 0");
  c.need(code, "code", 3, kU8);
  c.contiguous(code, "code");
  c.shape(code, "code", {dt_box.size[0], A, T});
  const int64_t need = metrics::coco_match_scratch_bytes(max_gts, A, T, groups.size[0]);
  if (c.may(scratch, "scratch", 1, kU8).present()) c.contiguous(scratch, "scratch");
  c.require(scratch.numel() >= need || (need == 0 && !scratch.present()),
            "scratch must hold coco_match_scratch_bytes(max_gts, A, T, n_groups) = " + std::to_string(need) +
                " bytes, got " + (scratch.present() ? shape_str(scratch) : std::string("None")));
  p.groups = groups.ptr<const int64_t>();
  p.n_groups = groups.size[0];
  p.thr = thr.ptr<const double>();
  p.T = T;
  p.max_gts = max_gts;
  p.code = code.ptr<uint8_t>();
  py::gil_scoped_release nogil;
  metrics::coco_match_cuda(p, scratch.data, scratch.present() ? scratch.numel() : 0, stream);
}
#endif

}  // namespace

void bind_metrics(Modules& m) {
  namespace a = pybind11;
  m.cpu.def(
      "confusion_logits",
      [](const View& x, const View& t, std::optional<int64_t> ignore, const View& out, int64_t num_threads) {
        const Checker c("cpu.confusion_logits", kCpu);
        c.need(x, "x", 3, kFloats);  // logits [N, C, S], any strides
        const int64_t C = x.size[1];
        c.require(C >= 1, "x must have at least one class");
        const metrics::ConfusionProblem p = confusion_problem(c, x, t, ignore, out, C);
        py::gil_scoped_release nogil;
        metrics::confusion_logits_cpu(p, num_threads);
      },
      "out[target * C + argmax_c x] += 1 over the pixels (int64 [C*C + 1], contiguous; the last slot counts "
      "targets outside [0, C) that are not ignore) from logits x [N, C, S] and targets t [N, S] (any "
      "strides), in one read of the logits. ignore: the ignored label or None.",
      a::arg("x"), a::arg("t"), a::arg("ignore"), a::arg("out"), a::arg("num_threads"));
#define SEGFAST_COCO_GROUPS                                                                                 \
  a::arg("gt_off"), a::arg("dt_off"), a::arg("gt_box"), a::arg("gt_area"), a::arg("gt_crowd"), a::arg("gt_idnz"), \
      a::arg("dt_box")
#define SEGFAST_COCO_OUTPUTS                                                                                \
  a::arg("rec_thr"), a::arg("max_dets"), a::arg("precision"), a::arg("recall"), a::arg("scores"),            \
      a::arg("ap_all"), a::arg("npig"), a::arg("curve_a"), a::arg("curve_m"), a::arg("curve_off"),            \
      a::arg("curve_score"), a::arg("curve_code"), a::arg("num_threads")
  m.cpu.def("coco_eval", &coco_eval,
            "COCO box evaluation (pycocotools' evaluateImg + accumulate) of K categories x I images, all "
            "categories in parallel (csrc/common/metrics.h CocoEvalProblem; every array contiguous): gts and "
            "detections float64 x, y, w, h grouped by (category, image), group k * I + i at gt_off / dt_off "
            "[K*I + 1]; K from npig [K, A]. Writes precision / scores [T, R, K, A, M], recall / ap_all [T, K, A, "
            "M] (filled with -1 by the caller), npig [K, A] and, with curve_code [T, n] uint8 (None: no curve), "
            "the codes and scores of the detections kept at (curve_a, curve_m), category k from curve_off[k].",
            SEGFAST_COCO_GROUPS, a::arg("dt_score"), a::arg("iou_thr"), a::arg("area_rng"), SEGFAST_COCO_OUTPUTS);
  m.cpu.def("coco_accumulate", &coco_accumulate,
            "pycocotools' accumulate alone, of matching codes code [D, A, T] uint8 (0 ignored, 1 tp, 2 fp) with "
            "scores sc [D] float64 and ranks inside the image rank [D] int32, the rows of category k from "
            "cat_off[k] ([K + 1]); npig [K, A] given; the outputs and the optional curve as coco_eval's.",
            a::arg("cat_off"), a::arg("sc"), a::arg("rank"), a::arg("code"), SEGFAST_COCO_OUTPUTS);
#ifdef SEGFAST_WITH_CUDA
  m.cuda.def("confusion", &confusion,
             "out[target * C + pred] += 1 over the pixels (int64 [C*C + 1], contiguous; C from its size; the last "
             "slot counts targets outside [0, C) that are not ignore, and class-index predictions outside [0, C)) "
             "with pred the argmax over C of logits x [N, C, S] or the class indices x [N, S] (uint8 / int32 / "
             "int64: the rank says which); targets t [N, S]; any strides. ignore: the ignored label or None.",
             a::arg("x"), a::arg("t"), a::arg("ignore"), a::arg("out"), a::arg("stream"));
  m.cuda.def("coco_match", &coco_match,
             "COCO greedy matching of the (category, image) groups listed in groups [G'] (csrc/common/metrics.h "
             "CocoMatchProblem; every array contiguous): code [D, A, T] uint8 (0 ignored, 1 tp, 2 fp), as "
             "coco_eval's, with T = thr's and A = area_rng's rows; scratch: device bytes (uint8 [n]), at least "
             "coco_match_scratch_bytes(max_gts, A, T, G'), or None when that is 0.",
             a::arg("groups"), SEGFAST_COCO_GROUPS, a::arg("thr"), a::arg("area_rng"), a::arg("max_gts"),
             a::arg("code"), a::arg("scratch"), a::arg("stream"));
  m.cuda.def("coco_match_scratch_bytes", &metrics::coco_match_scratch_bytes,
             "Global scratch bytes coco_match needs for n_groups groups of at most max_gts gts (0 when a "
             "block's state fits its shared memory).",
             a::arg("max_gts"), a::arg("A"), a::arg("T"), a::arg("n_groups"));
#endif
#undef SEGFAST_COCO_GROUPS
#undef SEGFAST_COCO_OUTPUTS
}

}  // namespace bind
}  // namespace segfast
