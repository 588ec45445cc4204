// Pixel family entries (CE, focal, fused, BCE, sigmoid focal): kernels in
// csrc/cpu/pixel.cpp and csrc/cuda/pixel.cu. The pattern: bind/view.h.
#include <pybind11/stl.h>

#include <cmath>
#include <string>
#include <optional>

#include "bind/inputs.h"
#include "common/pixel.h"

namespace segfast {
namespace pixel {
void pixel_loss_cpu(const Problem& pr, int64_t num_threads);
#ifdef SEGFAST_WITH_CUDA
void pixel_loss_cuda(const Problem& pr, uintptr_t stream);
#endif
}  // namespace pixel

namespace bind {
namespace {

using pixel::Problem;

// An optional accumulation-dtype vector of n values, contiguous.
const void* acc_vector(const Checker& c, const View& v, const char* name, int dtype, int64_t n) {
  if (!c.may(v, name, 1, (dtype_bit(dtype))).present()) return nullptr;
  c.contiguous(v, name);
  c.require(v.size[0] == n, std::string(name) + " must have " + std::to_string(n) + " values, got " + shape_str(v));
  return v.data;
}

Problem make_problem(const Checker& c, const View& x, const View& t, int64_t kind, int64_t label_offset,
                     std::optional<double> ignore, const View& w, const View& pw, const View& beta, double gamma,
                     double alpha, double smoothing, double scale0, double scale1, const View& loss,
                     const View& map, const View& go, const View& dx) {
  using namespace pixel;
  Problem pr;
  static_cast<Inputs&>(pr) = make_inputs(c, x, t, label_offset, ignore);
  const int acc = x.dtype == kFloat64 ? kFloat64 : kFloat32;
  const int64_t N = pr.N, C = pr.C, S = pr.S;
  c.require(kind >= kCE && kind <= kFocalSigmoid, "kind must be 0-4");
  c.require(!is_softmax_kind(int(kind)) || kind == kFocalSoftmax || pr.t_is_label,
            "softmax pixel losses other than focal take class-index targets");
  c.require(C >= 1, "pixel losses need C >= 1");
  c.require(kind != kFused || C >= 2, "the fused loss needs C >= 2");
  c.require(C < (int64_t(1) << 31), "C too large");
  c.require(gamma >= 0.0 && std::isfinite(gamma), "gamma must be finite and >= 0");
  c.require(std::isfinite(alpha) && std::isfinite(smoothing) && std::isfinite(scale0) && std::isfinite(scale1),
            "alpha, smoothing and scales must be finite");
  c.require(kind == kBCE || (!pw.present() && !beta.present()), "pos_weight / beta apply to BCE only");
  pr.kind = int(kind);
  pr.w = acc_vector(c, w, "w", acc, C);
  pr.pw = acc_vector(c, pw, "pw", acc, C);
  pr.beta = acc_vector(c, beta, "beta", acc, N);
  pr.gamma = gamma; pr.alpha = alpha; pr.smoothing = smoothing;
  pr.scale0 = scale0; pr.scale1 = scale1;
  pr.P = 1;
  if (c.may(loss, "loss", 3, (dtype_bit(acc))).present()) {
    c.contiguous(loss, "loss");
    c.require(loss.size[0] == N && loss.size[1] >= 1 && loss.size[2] == 2,
              "loss must be [N, P, 2], got " + shape_str(loss));
    pr.P = loss.size[1];
  }
  pr.loss = loss.data;
  // map and go have the map's layout: [N, S] for the softmax kinds on class indices, else [N, C, S];
  // contiguous.
  const bool softmax = is_softmax_kind(int(kind)) && pr.t_is_label;
  auto map_layout = [&](const View& v, const char* name) {
    c.contiguous(v, name);
    c.require(softmax ? v.size[0] == N && v.size[1] == S : v.size[0] == N && v.size[1] == C && v.size[2] == S,
              std::string(name) + (softmax ? " must be [N, S]" : " must be [N, C, S]") + ", got " + shape_str(v));
  };
  if (c.may(map, "map", softmax ? 2 : 3, (dtype_bit(acc))).present()) map_layout(map, "map");
  pr.map = map.data;
  // go: a 0-d grad_output read on the device (go_scalar), or one per map element
  if (c.may(go, "go", -1, (dtype_bit(acc))).present() && go.ndim != 0) {
    c.need(go, "go", softmax ? 2 : 3, (dtype_bit(acc)));
    map_layout(go, "go");
  }
  pr.go = go.data;
  pr.go_scalar = go.present() && go.ndim == 0;
  if (c.may(dx, "dx", 3, (dtype_bit(x.dtype))).present())
    for (int i = 0; i < 3; ++i) c.same(dx, "dx", i, x, "x", i);
  pr.dx = dx.data;
  pr.dxsN = dx.stride[0]; pr.dxsC = dx.stride[1]; pr.dxsS = dx.stride[2];
  return pr;
}

// The entry of one backend: `kernel(problem, launch)`, launch = num_threads or stream.
template <class Launch>
auto entry(const char* name, Device device, void (*kernel)(const Problem&, Launch)) {
  return [name, device, kernel](const View& x, const View& t, int64_t kind, int64_t label_offset,
                                std::optional<double> ignore, const View& w, const View& pw, const View& beta,
                                double gamma, double alpha, double smoothing, double scale0, double scale1,
                                const View& loss, const View& map, const View& go, const View& dx, Launch launch) {
    const Problem pr = make_problem(Checker(name, device), x, t, kind, label_offset, ignore, w, pw, beta, gamma,
                                    alpha, smoothing, scale0, scale1, loss, map, go, dx);
    py::gil_scoped_release nogil;
    kernel(pr, launch);
  };
}

#ifdef SEGFAST_WITH_CUDA
// A reduced loss whole on the device. Forward (out given): ws the [N, P, 4]
// workspace, out and den 0-d, counter one zero int32. Backward (out None): dx
// for the 0-d grad_output go scaled by go / den.
void pixel_reduced(const View& x, const View& t, int64_t kind, int64_t label_offset, std::optional<double> ignore,
                   const View& w, const View& pw, const View& beta, double gamma, double alpha, double smoothing,
                   double scale0, double scale1, int64_t norm, const View& ws, const View& out, const View& den,
                   const View& counter, const View& go, const View& dx, uintptr_t stream) {
  const Checker c("cuda.pixel_reduced", kCudaDevice);
  Problem pr = make_problem(c, x, t, kind, label_offset, ignore, w, pw, beta, gamma, alpha, smoothing, scale0,
                            scale1, View(), View(), go, dx);
  c.require(norm >= pixel::kNormSum && norm <= pixel::kNormWeight, "norm must be 0-2");
  const DTypes acc = dtype_bit(x.dtype == kFloat64 ? kFloat64 : kFloat32);
  c.require(c.need(den, "den", -1, acc).numel() == 1, "den must have one element");
  if (c.may(out, "out", -1, acc).present()) {
    c.require(out.numel() == 1, "out must have one element");
    c.need(ws, "ws", 3, acc);
    c.contiguous(ws, "ws");
    c.require(ws.size[0] == pr.N && ws.size[1] >= 1 && ws.size[2] == 4, "ws must be [N, P, 4], got " + shape_str(ws));
    c.require(c.need(counter, "counter", -1, dtype_bit(kInt32)).numel() == 1, "counter must have one element");
    c.require(!go.present() && !dx.present(), "go and dx belong to the backward call (out None)");
    pr.loss = ws.data;
    pr.P = ws.size[1];
  } else {
    c.require(!ws.present() && !counter.present(), "ws and counter belong to the forward call (out given)");
    c.require(go.present() && go.ndim == 0 && dx.present(), "the backward call (out None) needs a 0-d go and dx");
  }
  pr.norm = int(norm);
  pr.out = out.data;
  pr.den = den.data;
  pr.counter = counter.ptr<unsigned>();
  py::gil_scoped_release nogil;
  pixel::pixel_loss_cuda(pr, stream);
}
#endif

}  // namespace

void bind_pixel(Modules& m) {
  const char* doc =
      "Pixel losses (CE, focal, fused, BCE, sigmoid focal; segfast/reference/pixel.py pixel_terms) of "
      "x [N, C, S] and targets t ([N, S] class indices or [N, C, S] dense): any subset of loss [N, P, 2] "
      "chunk sums of (l0, l1), map scale0*l0 + scale1*l1 ([N, S] softmax kinds on class indices, else [N, C, S]) and "
      "dx = go * d(map)/dx (go 0-d: one grad_output read on the device). w, pw [C], beta [N]: optional "
      "class weights, BCE pos_weight, balanced-BCE beta. Outputs and vectors in the accumulation dtype "
      "(float64 for float64 x, else float32), contiguous; dx in x's dtype, any strides. None: absent.";
  namespace a = pybind11;
#define SEGFAST_PIXEL_ARGS                                                                                   \
  a::arg("x"), a::arg("t"), a::arg("kind"), a::arg("label_offset"), a::arg("ignore"), a::arg("w"),         \
      a::arg("pw"), a::arg("beta"), a::arg("gamma"), a::arg("alpha"), a::arg("smoothing"), a::arg("scale0"), \
      a::arg("scale1"), a::arg("loss"), a::arg("map"), a::arg("go"), a::arg("dx")
  m.cpu.def("pixel_loss", entry("cpu.pixel_loss", kCpu, &pixel::pixel_loss_cpu), doc, SEGFAST_PIXEL_ARGS,
            a::arg("num_threads"));
#ifdef SEGFAST_WITH_CUDA
  m.cuda.def("pixel_loss", entry("cuda.pixel_loss", kCudaDevice, &pixel::pixel_loss_cuda), doc, SEGFAST_PIXEL_ARGS,
             a::arg("stream"));
  m.cuda.def("pixel_reduced", &pixel_reduced,
             "A reduced pixel loss whole on the device (pixel_loss's arguments less loss and map, and norm 0-2: "
             "sum, count, class weights). Forward, out given: the loss and its normaliser into out and den (0-d, "
             "accumulation dtype), ws an [N, P, 4] workspace (accumulation dtype, contiguous), counter one int32 "
             "that is 0 (and is left 0); go, dx None. Backward, out None: dx for the 0-d grad_output go scaled "
             "by go / den; ws, counter None.",
             a::arg("x"), a::arg("t"), a::arg("kind"), a::arg("label_offset"), a::arg("ignore"), a::arg("w"),
             a::arg("pw"), a::arg("beta"), a::arg("gamma"), a::arg("alpha"), a::arg("smoothing"), a::arg("scale0"),
             a::arg("scale1"), a::arg("norm"), a::arg("ws"), a::arg("out"), a::arg("den"), a::arg("counter"),
             a::arg("go"), a::arg("dx"), a::arg("stream"));
#endif
#undef SEGFAST_PIXEL_ARGS
}

}  // namespace bind
}  // namespace segfast
