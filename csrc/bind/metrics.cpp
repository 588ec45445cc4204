// Metrics family entries: the confusion matrix of the argmax of logits
// (csrc/cpu/metrics.cpp; the first entry is the smallest example of the
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
void confusion_logits(uintptr_t x, int64_t x_code, int64_t N, int64_t C, int64_t S, int64_t sN, int64_t sC,
                      int64_t sS, uintptr_t t, int64_t t_code, int64_t tsN, int64_t tsS, bool has_ignore,
                      int64_t ignore, uintptr_t out, int64_t num_threads);
#ifdef SEGFAST_WITH_CUDA
void confusion_cuda(const ConfusionProblem& p, uintptr_t stream);
void coco_match_cuda(const CocoMatchProblem& p, void* scratch, int64_t scratch_bytes, uintptr_t stream);
#endif
}  // namespace metrics

namespace bind {
namespace {

#ifdef SEGFAST_WITH_CUDA
void confusion(const View& x, const View& t, std::optional<int64_t> ignore, const View& out, uintptr_t stream) {
  const Checker c("cuda.confusion", kCudaDevice);
  c.need(out, "out", 1, dtype_bit(kInt64));  // counts [C*C + 1], added to
  c.contiguous(out, "out");
  const int64_t C = std::llround(std::sqrt(double(out.size[0] > 0 ? out.size[0] - 1 : 0)));
  c.require(C >= 1 && C * C + 1 == out.size[0] && C < (int64_t(1) << 31),
            "out must be [C*C + 1] for some C >= 1, got " + shape_str(out));
  const bool logits = x.state == View::kOk && x.ndim == 3;  // logits [N, C, S], else class indices [N, S]
  c.need(x, "x", logits ? 3 : 2, logits ? kFloats : kLabels);
  if (logits) c.shape(x, "x", {x.size[0], C, x.size[2]});
  c.need(t, "t", 2, kLabels);  // targets [N, S]
  c.same(t, "t", 0, x, "x", 0);
  c.same(t, "t", 1, x, "x", x.ndim - 1);
  metrics::ConfusionProblem p;
  p.x = x.data;
  p.x_dtype = x.dtype;
  p.logits = logits;
  p.xsN = x.stride[0];
  p.xsC = logits ? x.stride[1] : 0;
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
  py::gil_scoped_release nogil;
  metrics::confusion_cuda(p, stream);
}

// A contiguous 1-D (rank 1) or 2-D [n, cols] (rank 2) array of `dtypes`.
const View& array(const Checker& c, const View& v, const char* name, int rank, DTypes dtypes, int64_t cols = 0) {
  c.need(v, name, rank, dtypes);
  c.contiguous(v, name);
  if (rank == 2) c.require(v.size[1] == cols, std::string(name) + " must have " + std::to_string(cols) +
                                                  " columns, got " + shape_str(v));
  return v;
}

void coco_match(const View& groups, const View& gt_off, const View& dt_off, const View& gt_box, const View& gt_area,
                const View& gt_crowd, const View& gt_idnz, const View& dt_box, const View& thr, const View& area_rng,
                int64_t max_gts, const View& code, const View& scratch, uintptr_t stream) {
  const Checker c("cuda.coco_match", kCudaDevice);
  const DTypes i64 = dtype_bit(kInt64), f64 = dtype_bit(kFloat64), u8 = dtype_bit(kUInt8);
  array(c, groups, "groups", 1, i64);
  array(c, gt_off, "gt_off", 1, i64);
  array(c, dt_off, "dt_off", 1, i64);
  c.same(dt_off, "dt_off", 0, gt_off, "gt_off", 0);
  array(c, gt_box, "gt_box", 2, f64, 4);
  for (const auto* v : {&gt_area, &gt_crowd, &gt_idnz}) {
    const char* name = v == &gt_area ? "gt_area" : v == &gt_crowd ? "gt_crowd" : "gt_idnz";
    array(c, *v, name, 1, v == &gt_area ? f64 : u8);
    c.same(*v, name, 0, gt_box, "gt_box", 0);
  }
  array(c, dt_box, "dt_box", 2, f64, 4);
  array(c, thr, "thr", 1, f64);
  array(c, area_rng, "area_rng", 2, f64, 2);
  const int64_t T = thr.size[0], A = area_rng.size[0];
  c.require(T >= 1 && A >= 1, "thr and area_rng must not be empty");
  c.require(max_gts >= 0, "max_gts must be >= 0");
  c.need(code, "code", 3, u8);
  c.contiguous(code, "code");
  c.shape(code, "code", {dt_box.size[0], A, T});
  const int64_t need = metrics::coco_match_scratch_bytes(max_gts, A, T, groups.size[0]);
  if (c.may(scratch, "scratch", 1, u8).present()) c.contiguous(scratch, "scratch");
  c.require(scratch.numel() >= need || (need == 0 && !scratch.present()),
            "scratch must hold coco_match_scratch_bytes(max_gts, A, T, n_groups) = " + std::to_string(need) +
                " bytes, got " + (scratch.present() ? shape_str(scratch) : std::string("None")));
  metrics::CocoMatchProblem p;
  p.groups = groups.ptr<const int64_t>();
  p.n_groups = groups.size[0];
  p.gt_off = gt_off.ptr<const int64_t>();
  p.dt_off = dt_off.ptr<const int64_t>();
  p.gt_box = gt_box.ptr<const double>();
  p.gt_area = gt_area.ptr<const double>();
  p.gt_crowd = gt_crowd.ptr<const uint8_t>();
  p.gt_idnz = gt_idnz.ptr<const uint8_t>();
  p.dt_box = dt_box.ptr<const double>();
  p.thr = thr.ptr<const double>();
  p.area_rng = area_rng.ptr<const double>();
  p.T = T; p.A = A; p.max_gts = max_gts;
  p.code = code.ptr<uint8_t>();
  py::gil_scoped_release nogil;
  metrics::coco_match_cuda(p, scratch.data, scratch.present() ? scratch.numel() : 0, stream);
}
#endif

}  // namespace

void bind_metrics(Modules& m) {
  m.cpu.def(
      "confusion_logits",
      [](const View& x, const View& t, std::optional<int64_t> ignore, const View& out, int64_t num_threads) {
        const Checker c("cpu.confusion_logits", kCpu);
        c.need(x, "x", 3, kFloats);                    // logits [N, C, S], any strides
        c.need(t, "t", 2, kLabels);                    // labels [N, S], any strides
        c.same(t, "t", 0, x, "x", 0);
        c.same(t, "t", 1, x, "x", 2);
        c.need(out, "out", 1, dtype_bit(kInt64));      // counts, added to
        c.contiguous(out, "out");
        const int64_t C = x.size[1];
        c.require(C >= 1, "x must have at least one class");
        c.shape(out, "out", {C * C + 1});
        metrics::confusion_logits(reinterpret_cast<uintptr_t>(x.data), x.dtype, x.size[0], C, x.size[2],
                                  x.stride[0], x.stride[1], x.stride[2], reinterpret_cast<uintptr_t>(t.data),
                                  t.dtype, t.stride[0], t.stride[1], ignore.has_value(), ignore.value_or(0),
                                  reinterpret_cast<uintptr_t>(out.data), num_threads);  // releases the GIL
      },
      "out[target * C + argmax_c x] += 1 over the pixels (int64 [C*C + 1], contiguous; the last slot counts "
      "targets outside [0, C) that are not ignore) from logits x [N, C, S] and targets t [N, S] (any "
      "strides), in one read of the logits. ignore: the ignored label or None.",
      pybind11::arg("x"), pybind11::arg("t"), pybind11::arg("ignore"), pybind11::arg("out"),
      pybind11::arg("num_threads"));
#ifdef SEGFAST_WITH_CUDA
  namespace a = pybind11;
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
             a::arg("groups"), a::arg("gt_off"), a::arg("dt_off"), a::arg("gt_box"), a::arg("gt_area"),
             a::arg("gt_crowd"), a::arg("gt_idnz"), a::arg("dt_box"), a::arg("thr"), a::arg("area_rng"),
             a::arg("max_gts"), a::arg("code"), a::arg("scratch"), a::arg("stream"));
  m.cuda.def("coco_match_scratch_bytes", &metrics::coco_match_scratch_bytes,
             "Global scratch bytes coco_match needs for n_groups groups of at most max_gts gts (0 when a "
             "block's state fits its shared memory).",
             a::arg("max_gts"), a::arg("A"), a::arg("T"), a::arg("n_groups"));
#endif
}

}  // namespace bind
}  // namespace segfast
