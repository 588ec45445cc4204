// Boxes family entries (IoU / GIoU / DIoU / CIoU of every pair or of aligned
// pairs, with gradients): kernels in csrc/cpu/boxes.cpp and
// csrc/cuda/boxes.cu. The pattern: bind/view.h.
#include <pybind11/stl.h>

#include "bind/view.h"
#include "common/boxes.h"

namespace segfast {
namespace boxes {
// The kernels' types; the last argument is the launch: num_threads (cpu) or the stream (cuda).
template <class Launch>
using PairwiseKernel = void(const BoxArg& a1, const BoxArg& a2, int64_t B, int64_t N, int64_t M, int kind, int fmt,
                            double eps, void* out, int out_dtype, Launch launch);
template <class Launch>
using PairwiseGradKernel = void(const BoxArg& a1, const BoxArg& a2, int64_t B, int64_t N, int64_t M, int kind,
                                int fmt, double eps, const void* go, void* d1, void* d2, int d_dtype, Launch launch);
template <class Launch>
using AlignedKernel = void(const BoxArg& a1, const BoxArg& a2, int64_t K, int kind, int fmt, bool loss, double eps,
                           double offset, double sign, double gscale, void* out, int out_dtype, void* d1, void* d2,
                           int d_dtype, Launch launch);
PairwiseKernel<int64_t> box_pairwise_cpu;
PairwiseGradKernel<int64_t> box_pairwise_grad_cpu;
AlignedKernel<int64_t> box_aligned_cpu;
#ifdef SEGFAST_WITH_CUDA
PairwiseKernel<uintptr_t> box_pairwise_cuda;
PairwiseGradKernel<uintptr_t> box_pairwise_grad_cuda;
AlignedKernel<uintptr_t> box_aligned_cuda;
#endif
}  // namespace boxes

namespace bind {
namespace {

using boxes::AlignedKernel;
using boxes::BoxArg;
using boxes::PairwiseGradKernel;
using boxes::PairwiseKernel;

// Two box sets of one float dtype: [B, N, 4] and [B, M, 4] (rank 3), or [K, 4] each (rank 2).
std::pair<BoxArg, BoxArg> box_args(const Checker& c, const View& b1, const View& b2, int rank) {
  c.need(b1, "b1", rank, kFloats);
  c.need(b2, "b2", rank, DTypes(dtype_bit(b1.dtype)));
  c.require(b1.size[rank - 1] == 4 && b2.size[rank - 1] == 4,
            "boxes must have 4 coordinates, got " + shape_str(b1) + " and " + shape_str(b2));
  c.same(b1, "b1", 0, b2, "b2", 0);
  const int o = rank - 2;  // the box dimension
  const auto arg = [o](const View& b) {
    return BoxArg{b.data, b.dtype, o ? b.stride[0] : 0, b.stride[o], b.stride[o + 1]};
  };
  return {arg(b1), arg(b2)};
}

void check_kind(const Checker& c, int64_t kind, int64_t fmt) {
  c.require(kind >= 0 && kind <= 3, "box kind must be 0-3");
  c.require(fmt >= 0 && fmt <= 2, "box format must be 0-2");
}

// An optional contiguous output of `shape`'s size, a float dtype.
void check_out(const Checker& c, const View& v, const char* name, std::initializer_list<int64_t> shape,
               DTypes dtypes) {
  if (!c.may(v, name, int(shape.size()), dtypes).present()) return;
  c.contiguous(v, name);
  int i = 0;
  for (int64_t s : shape) c.require(v.size[i++] == s, std::string(name) + " has the wrong shape " + shape_str(v));
}

template <class Launch>
auto pairwise(const char* name, Device dev, PairwiseKernel<Launch>* kernel) {
  return [=](const View& b1, const View& b2, int64_t kind, int64_t fmt, double eps, const View& out,
             Launch launch) {
    const Checker c(name, dev);
    const auto [a1, a2] = box_args(c, b1, b2, 3);
    check_kind(c, kind, fmt);
    const int64_t B = b1.size[0], N = b1.size[1], M = b2.size[1];
    c.need(out, "out", 3, kFloats);
    check_out(c, out, "out", {B, N, M}, kFloats);
    py::gil_scoped_release nogil;
    kernel(a1, a2, B, N, M, int(kind), int(fmt), eps, out.data, out.dtype, launch);
  };
}

template <class Launch>
auto pairwise_grad(const char* name, Device dev, PairwiseGradKernel<Launch>* kernel) {
  return [=](const View& b1, const View& b2, int64_t kind, int64_t fmt, double eps, const View& go, const View& d1,
             const View& d2, Launch launch) {
    const Checker c(name, dev);
    const auto [a1, a2] = box_args(c, b1, b2, 3);
    check_kind(c, kind, fmt);
    const int64_t B = b1.size[0], N = b1.size[1], M = b2.size[1];
    const DTypes d_dtype = dtype_bit(b1.dtype);
    c.need(go, "go", 3, DTypes(dtype_bit(b1.dtype == kFloat64 ? kFloat64 : kFloat32)));
    check_out(c, go, "go", {B, N, M}, kAcc);
    check_out(c, d1, "d1", {B, N, 4}, d_dtype);
    check_out(c, d2, "d2", {B, M, 4}, d_dtype);
    py::gil_scoped_release nogil;
    kernel(a1, a2, B, N, M, int(kind), int(fmt), eps, go.data, d1.data, d2.data, b1.dtype, launch);
  };
}

template <class Launch>
auto aligned(const char* name, Device dev, AlignedKernel<Launch>* kernel) {
  return [=](const View& b1, const View& b2, int64_t kind, int64_t fmt, bool loss, double eps, double offset,
             double sign, double gscale, const View& out, const View& d1, const View& d2, Launch launch) {
    const Checker c(name, dev);
    const auto [a1, a2] = box_args(c, b1, b2, 2);
    check_kind(c, kind, fmt);
    const int64_t K = b1.size[0];
    const DTypes d_dtype = dtype_bit(b1.dtype);
    c.need(out, "out", 1, kFloats);
    check_out(c, out, "out", {K}, kFloats);
    check_out(c, d1, "d1", {K, 4}, d_dtype);
    check_out(c, d2, "d2", {K, 4}, d_dtype);
    py::gil_scoped_release nogil;
    kernel(a1, a2, K, int(kind), int(fmt), loss, eps, offset, sign, gscale, out.data, out.dtype, d1.data, d2.data,
           b1.dtype, launch);
  };
}

}  // namespace

void bind_boxes(Modules& m) {
  const char* pairwise_doc =
      "IoU variant (kind 0-3: IoU, GIoU, DIoU, CIoU) of every pair of b1 [B, N, 4] and b2 [B, M, 4] (any "
      "strides; fmt 0-2: xyxy, xywh, cxcywh) into out [B, N, M] contiguous, any float dtype.";
  const char* grad_doc =
      "Gradients of sum(go * pairwise) for b1 (d1 [B, N, 4]) and b2 (d2 [B, M, 4]), contiguous in the boxes' "
      "dtype; go [B, N, M] contiguous in the compute dtype; None skips that pass.";
  const char* aligned_doc =
      "Aligned pairs b1, b2 [K, 4], one pass: out [K] = offset + sign * value (loss: torchvision's loss eps "
      "semantics) and d1, d2 [K, 4] = gscale * d value / d box (None skips them).";
  namespace a = pybind11;
#define SEGFAST_PAIRWISE_ARGS a::arg("b1"), a::arg("b2"), a::arg("kind"), a::arg("fmt"), a::arg("eps")
#define SEGFAST_ALIGNED_ARGS                                                                                 \
  a::arg("b1"), a::arg("b2"), a::arg("kind"), a::arg("fmt"), a::arg("loss"), a::arg("eps"), a::arg("offset"), \
      a::arg("sign"), a::arg("gscale"), a::arg("out"), a::arg("d1"), a::arg("d2")
  m.cpu.def("box_pairwise", pairwise("cpu.box_pairwise", kCpu, &boxes::box_pairwise_cpu), pairwise_doc,
            SEGFAST_PAIRWISE_ARGS, a::arg("out"), a::arg("num_threads"));
  m.cpu.def("box_pairwise_grad", pairwise_grad("cpu.box_pairwise_grad", kCpu, &boxes::box_pairwise_grad_cpu),
            grad_doc, SEGFAST_PAIRWISE_ARGS, a::arg("go"), a::arg("d1"), a::arg("d2"), a::arg("num_threads"));
  m.cpu.def("box_aligned", aligned("cpu.box_aligned", kCpu, &boxes::box_aligned_cpu), aligned_doc,
            SEGFAST_ALIGNED_ARGS, a::arg("num_threads"));
#ifdef SEGFAST_WITH_CUDA
  m.cuda.def("box_pairwise", pairwise("cuda.box_pairwise", kCudaDevice, &boxes::box_pairwise_cuda), pairwise_doc,
             SEGFAST_PAIRWISE_ARGS, a::arg("out"), a::arg("stream"));
  m.cuda.def("box_pairwise_grad",
             pairwise_grad("cuda.box_pairwise_grad", kCudaDevice, &boxes::box_pairwise_grad_cuda), grad_doc,
             SEGFAST_PAIRWISE_ARGS, a::arg("go"), a::arg("d1"), a::arg("d2"), a::arg("stream"));
  m.cuda.def("box_aligned", aligned("cuda.box_aligned", kCudaDevice, &boxes::box_aligned_cuda), aligned_doc,
             SEGFAST_ALIGNED_ARGS, a::arg("stream"));
#endif
#undef SEGFAST_PAIRWISE_ARGS
#undef SEGFAST_ALIGNED_ARGS
}

}  // namespace bind
}  // namespace segfast
