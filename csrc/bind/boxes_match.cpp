// Boxes-match family entries (box_iou_max, NMS): kernels in
// csrc/cpu/boxes_match.cpp and csrc/cuda/boxes_match.cu. The pattern: bind/view.h.
#include <pybind11/stl.h>

#include "bind/view.h"
#include "common/boxes_match.h"

namespace segfast {
namespace boxes {
void box_iou_max_cpu(const IouMaxProblem& p, int64_t num_threads);
void nms_cpu(const NmsProblem& p);
#ifdef SEGFAST_WITH_CUDA
void box_iou_max_cuda(const IouMaxProblem& p, uintptr_t stream);
void nms_cuda(const NmsProblem& p, void* mask, void* removed, uintptr_t stream);
#endif
}  // namespace boxes

namespace bind {
namespace {

using boxes::IouMaxProblem;
using boxes::NmsProblem;

IouMaxProblem iou_max_problem(const Checker& c, const View& a, const View& g, const View& valid, int64_t fmt,
                              const View& mx, const View& arg, const View& gmax) {
  c.need(a, "boxes", 3, kFloats);
  c.need(g, "gt", 3, DTypes(dtype_bit(a.dtype)));
  c.require(a.size[2] == 4 && g.size[2] == 4, "boxes and gt must be [B, *, 4]");
  c.same(g, "gt", 0, a, "boxes", 0);
  c.require(fmt >= 0 && fmt <= 2, "fmt must be 0, 1 or 2");
  const int64_t B = a.size[0], N = a.size[1], M = g.size[1];
  c.require(M < (int64_t(1) << 31), "M too large");
  const DTypes acc = dtype_bit(a.dtype == kFloat64 ? kFloat64 : kFloat32);
  for (const auto& [v, name, len, dt] : {std::make_tuple(&mx, "mx", N, acc),
                                         std::make_tuple(&arg, "arg", N, dtype_bit(kInt64)),
                                         std::make_tuple(&gmax, "gmax", M, acc)}) {
    c.need(*v, name, 2, dt);
    c.contiguous(*v, name);
    c.require(v->size[0] == B && v->size[1] == len, std::string(name) + " has the wrong shape " + shape_str(*v));
  }
  IouMaxProblem p;
  p.a = a.data; p.a_dtype = a.dtype;
  p.asB = a.stride[0]; p.asN = a.stride[1]; p.as4 = a.stride[2];
  p.g = g.data;
  p.gsB = g.stride[0]; p.gsM = g.stride[1]; p.gs4 = g.stride[2];
  if (c.may(valid, "gt_valid", 2, dtype_bit(kUInt8) | dtype_bit(kBool)).present()) {
    c.same(valid, "gt_valid", 0, a, "boxes", 0);
    c.same(valid, "gt_valid", 1, g, "gt", 1);
    p.valid = valid.ptr<const uint8_t>();
    p.vsB = valid.stride[0]; p.vsM = valid.stride[1];
  }
  p.B = B; p.N = N; p.M = M;
  p.fmt = int(fmt);
  p.mx = mx.data;
  p.arg = arg.ptr<int64_t>();
  p.gmax = gmax.data;
  return p;
}

NmsProblem nms_problem(const Checker& c, const View& b, const View& cls, int64_t fmt, double threshold,
                       const View& keep) {
  c.need(b, "boxes", 2, kFloats);
  c.require(b.size[1] == 4, "boxes must be [N, 4], got " + shape_str(b));
  c.require(fmt >= 0 && fmt <= 2, "fmt must be 0, 1 or 2");
  c.require(threshold >= 0.0 && threshold <= 1.0, "iou_threshold must be in [0, 1]");
  const int64_t N = b.size[0];
  if (c.may(cls, "classes", 1, dtype_bit(kInt64)).present()) {
    c.contiguous(cls, "classes");
    c.same(cls, "classes", 0, b, "boxes", 0);
  }
  c.need(keep, "keep", 1, dtype_bit(kUInt8));
  c.contiguous(keep, "keep");
  c.same(keep, "keep", 0, b, "boxes", 0);
  NmsProblem p;
  p.b = b.data; p.dtype = b.dtype;
  p.s0 = b.stride[0]; p.s4 = b.stride[1];
  p.cls = cls.ptr<const int64_t>();
  p.N = N;
  p.fmt = int(fmt);
  p.threshold = threshold;
  p.keep = keep.ptr<uint8_t>();
  return p;
}

template <class Launch>
auto iou_max(const char* name, Device dev, void (*kernel)(const IouMaxProblem&, Launch)) {
  return [=](const View& a, const View& g, const View& valid, int64_t fmt, const View& mx, const View& arg,
             const View& gmax, Launch launch) {
    const IouMaxProblem p = iou_max_problem(Checker(name, dev), a, g, valid, fmt, mx, arg, gmax);
    py::gil_scoped_release nogil;
    kernel(p, launch);
  };
}

}  // namespace

void bind_boxes_match(Modules& m) {
  const char* iou_max_doc =
      "box_iou_max: boxes [B, N, 4], gt [B, M, 4] (any strides; a batch stride 0 broadcasts), optional "
      "gt_valid [B, M] bool/uint8 (None: all valid) -> mx [B, N] and gmax [B, M] (float64 for float64 boxes "
      "else float32; gmax zero-initialised by the caller, invalid gts left at 0), arg [B, N] int64; all "
      "outputs contiguous.";
  const char* nms_doc =
      "Greedy NMS over boxes [N, 4] already sorted by decreasing score; optional classes [N] int64 "
      "contiguous (None: one class); keep [N] uint8 out.";
  namespace a = pybind11;
#define SEGFAST_IOU_MAX_ARGS \
  a::arg("boxes"), a::arg("gt"), a::arg("gt_valid"), a::arg("fmt"), a::arg("mx"), a::arg("arg"), a::arg("gmax")
#define SEGFAST_NMS_ARGS a::arg("boxes"), a::arg("classes"), a::arg("fmt"), a::arg("threshold"), a::arg("keep")
  m.cpu.def("box_iou_max", iou_max("cpu.box_iou_max", kCpu, &boxes::box_iou_max_cpu), iou_max_doc,
            SEGFAST_IOU_MAX_ARGS, a::arg("num_threads"));
  m.cpu.def(
      "nms_keep",
      [](const View& b, const View& cls, int64_t fmt, double threshold, const View& keep) {
        const NmsProblem p = nms_problem(Checker("cpu.nms_keep", kCpu), b, cls, fmt, threshold, keep);
        py::gil_scoped_release nogil;
        boxes::nms_cpu(p);
      },
      nms_doc, SEGFAST_NMS_ARGS);
#ifdef SEGFAST_WITH_CUDA
  m.cuda.def("box_iou_max", iou_max("cuda.box_iou_max", kCudaDevice, &boxes::box_iou_max_cuda), iou_max_doc,
             SEGFAST_IOU_MAX_ARGS, a::arg("stream"));
  m.cuda.def(
      "nms_keep",
      [](const View& b, const View& cls, int64_t fmt, double threshold, const View& keep, const View& mask,
         const View& removed, uintptr_t stream) {
        const Checker c("cuda.nms_keep", kCudaDevice);
        const NmsProblem p = nms_problem(c, b, cls, fmt, threshold, keep);
        const int64_t cb = (p.N + 63) / 64;
        c.need(mask, "mask", 2, dtype_bit(kInt64));
        c.contiguous(mask, "mask");
        c.require(mask.size[0] == p.N && mask.size[1] == cb, "mask must be [N, ceil(N / 64)]");
        c.need(removed, "removed", 1, dtype_bit(kInt64));
        c.require(removed.size[0] == cb && removed.contiguous(), "removed must be [ceil(N / 64)] contiguous");
        py::gil_scoped_release nogil;
        boxes::nms_cuda(p, mask.data, removed.data, stream);
      },
      (std::string(nms_doc) + " mask [N, ceil(N / 64)] and removed [ceil(N / 64)] int64: scratch.").c_str(),
      SEGFAST_NMS_ARGS, a::arg("mask"), a::arg("removed"), a::arg("stream"));
#endif
#undef SEGFAST_IOU_MAX_ARGS
#undef SEGFAST_NMS_ARGS
}

}  // namespace bind
}  // namespace segfast
