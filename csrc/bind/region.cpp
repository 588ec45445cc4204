// Region family entries (Dice, IoU, Tversky sums and the finish kernel):
// kernels in csrc/cpu/region.cpp and csrc/cuda/region.cu. The pattern: bind/view.h.
#include <pybind11/stl.h>

#include <cmath>
#include <optional>
#include <string>

#include "bind/inputs.h"
#include "common/region.h"

namespace segfast {
namespace region {
void region_stats_cpu(const Problem& pr, int64_t P, void* out, int64_t num_threads, float* p_out, int64_t p_sN,
                      int64_t p_sC, int64_t* conf);
bool grad_probs_built();
bool grad_probs_ok(const Problem& pr);
int64_t region_keeps(int64_t x_dtype, bool t_is_label, int64_t act, int64_t xent, int64_t C, int64_t xsS);
void region_grad_probs_cpu(const Problem& pr, const float* g, int64_t num_threads);
void region_grad_cpu(const Problem& pr, const void* g, void* dx, int64_t dxsN, int64_t dxsC, int64_t dxsS,
                     int64_t num_threads);
#ifdef SEGFAST_WITH_CUDA
void region_stats_cuda(const Problem& pr, int64_t P, void* out, uintptr_t stream, int32_t* flag = nullptr,
                       int64_t* confusion = nullptr);
void region_grad_cuda(const Problem& pr, const void* g, void* dx, int64_t dxsN, int64_t dxsC, int64_t dxsS,
                      uintptr_t stream, const void* go = nullptr);
void region_finish_cuda(const Finish& fp, bool f64, const void* part, void* sums, void* coef, void* loss,
                        uint8_t* ok, const int32_t* flag, const void* w, const void* pw, uintptr_t stream);
#endif
}  // namespace region

namespace bind {
namespace {

using region::Problem;

DTypes acc_of(int x_dtype) { return dtype_bit(x_dtype == kFloat64 ? kFloat64 : kFloat32); }

Problem make_problem(const Checker& c, const View& x, const View& t, int64_t act, int64_t xent, double gamma,
                     int64_t label_offset, std::optional<double> ignore) {
  Problem pr;
  static_cast<Inputs&>(pr) = make_inputs(c, x, t, label_offset, ignore);
  c.require(act >= region::kIdentity && act <= region::kSoftmax, "act must be 0, 1 or 2");
  c.require(xent >= region::kXentNone && xent <= region::kXentFused, "xent must be 0-3");
  c.require(!xent || (act == region::kSoftmax && pr.t_is_label),
            "a pixel term (xent) needs act=softmax and class-index targets");
  c.require(xent != region::kXentFused || pr.C >= 2, "the fused term needs C >= 2");
  c.require(gamma >= 0.0 && std::isfinite(gamma), "gamma must be finite and >= 0");
  pr.act = int(act);
  pr.xent = int(xent);
  pr.gamma = gamma;
  return pr;
}

// out [N, P, C, K] contiguous in the accumulation dtype; -> P.
int64_t check_stats_out(const Checker& c, const Problem& pr, const View& out) {
  c.need(out, "out", 4, acc_of(pr.x_dtype));
  c.contiguous(out, "out");
  c.require(out.size[0] == pr.N && out.size[1] >= 1 && out.size[2] == pr.C && out.size[3] == region::num_stats(pr),
            "out must be [N, P, C, K] with K = " + std::to_string(region::num_stats(pr)) + ", got " + shape_str(out));
  return out.size[1];
}

// g = dLoss/dStats [N, C, K] contiguous in the accumulation dtype; dx [N, C, S] in x's dtype.
void check_grad_args(const Checker& c, const Problem& pr, const View& x, const View& g, const View* dx) {
  c.need(g, "g", 3, acc_of(pr.x_dtype));
  c.contiguous(g, "g");
  c.shape(g, "g", {pr.N, pr.C, region::num_stats(pr)});
  if (dx) {
    c.need(*dx, "dx", 3, dtype_bit(pr.x_dtype));
    for (int i = 0; i < 3; ++i) c.same(*dx, "dx", i, x, "x", i);
  }
}

void check_conf(const Checker& c, const Problem& pr, const View& conf) {
  if (!c.may(conf, "conf", 2, dtype_bit(kInt64)).present()) return;
  c.require(pr.t_is_label, "conf needs class-index targets");
  c.contiguous(conf, "conf");
  c.shape(conf, "conf", {pr.C, pr.C});
}

}  // namespace

void bind_region(Modules& m) {
  const char* stats_doc =
      "Partial region sums of x [N, C, S] and targets t ([N, S] class indices or [N, C, S] dense) into "
      "out [N, P, C, K] contiguous, K = 9 with xent else 7 (float64 if x is float64 else float32); chunk j "
      "of P covers pixels [j*L, min((j+1)*L, S)), L = ceil(S/P). conf, when given (class-index targets), "
      "the int64 [C, C] contiguous confusion counts, added to: conf[label, argmax_c x] += 1 per valid "
      "pixel (first maximum, NaN as the maximum). ignore: the ignored label or None. Tensors: DLPack "
      "capsules (segfast.backends.view) or None.";
  const char* grad_doc =
      "dLoss/dx into dx (x's dtype and shape, any strides) from g = dLoss/dStats [N, C, K] contiguous "
      "(accumulation dtype).";
  namespace a = pybind11;
#define SEGFAST_STATS_ARGS                                                                                 \
  a::arg("x"), a::arg("t"), a::arg("out"), a::arg("act"), a::arg("xent"), a::arg("gamma"), a::arg("label_offset"), \
      a::arg("ignore"), a::arg("conf")
#define SEGFAST_GRAD_ARGS                                                                                  \
  a::arg("x"), a::arg("t"), a::arg("g"), a::arg("dx"), a::arg("act"), a::arg("xent"), a::arg("gamma"),            \
      a::arg("label_offset"), a::arg("ignore")

  m.cpu.attr("REGION_GRAD_PROBS") = py::bool_(region::grad_probs_built());
  m.cpu.def("region_keeps", &region::region_keeps,
            "What region_stats keeps for the grad pass with these inputs, as bits: 2, v*p in the "
            "gradient's buffer (q, then region_grad_probs); 0, nothing.",
            a::arg("x_dtype"), a::arg("t_is_label"), a::arg("act"), a::arg("xent"), a::arg("C"), a::arg("xsS"));
  m.cpu.def(
      "region_stats",
      [](const View& x, const View& t, const View& out, int64_t act, int64_t xent, double gamma,
         int64_t label_offset, std::optional<double> ignore, const View& conf, const View& q,
         int64_t num_threads) {
        const Checker c("cpu.region_stats", kCpu);
        const Problem pr = make_problem(c, x, t, act, xent, gamma, label_offset, ignore);
        const int64_t P = check_stats_out(c, pr, out);
        check_conf(c, pr, conf);
        if (c.may(q, "q", 3, dtype_bit(kFloat32)).present()) {
          c.require(region::grad_probs_ok(pr) && !xent,
                    "q needs act=softmax, class-index targets, x not float64, no pixel term");
          for (int i = 0; i < 3; ++i) c.same(q, "q", i, x, "x", i);
          c.require(q.stride[2] == 1 || pr.S == 1, "q must have unit pixel stride");
        }
        py::gil_scoped_release nogil;
        region::region_stats_cpu(pr, P, out.data, num_threads, q.ptr<float>(), q.stride[0], q.stride[1],
                                 conf.ptr<int64_t>());
      },
      (std::string(stats_doc) + " q (float32, x's shape, unit pixel stride), when given, receives v*p for the "
                                "grad pass (region_keeps bit 2; then region_grad_probs).").c_str(),
      SEGFAST_STATS_ARGS, a::arg("q"), a::arg("num_threads"));
  m.cpu.def(
      "region_grad",
      [](const View& x, const View& t, const View& g, const View& dx, int64_t act, int64_t xent, double gamma,
         int64_t label_offset, std::optional<double> ignore, int64_t num_threads) {
        const Checker c("cpu.region_grad", kCpu);
        const Problem pr = make_problem(c, x, t, act, xent, gamma, label_offset, ignore);
        check_grad_args(c, pr, x, g, &dx);
        py::gil_scoped_release nogil;
        region::region_grad_cpu(pr, g.data, dx.data, dx.stride[0], dx.stride[1], dx.stride[2], num_threads);
      },
      grad_doc, SEGFAST_GRAD_ARGS, a::arg("num_threads"));
  m.cpu.def(
      "region_grad_probs",
      [](const View& q, const View& t, const View& g, int64_t label_offset, std::optional<double> ignore,
         int64_t num_threads) {
        const Checker c("cpu.region_grad_probs", kCpu);
        const Problem pr = make_problem(c, q, t, region::kSoftmax, 0, 0.0, label_offset, ignore);
        c.require(q.dtype == kFloat32 && (q.stride[2] == 1 || pr.S == 1) && region::grad_probs_ok(pr),
                  "q must be float32 with unit pixel stride, t class indices");
        check_grad_args(c, pr, q, g, nullptr);
        py::gil_scoped_release nogil;
        region::region_grad_probs_cpu(pr, g.ptr<const float>(), num_threads);
      },
      "dLoss/dx written over q = v p [N, C, S] (float32, unit pixel stride), which region_stats wrote "
      "(softmax, class-index targets, no pixel term), from g = dLoss/dStats [N, C, 7] float32 contiguous.",
      a::arg("q"), a::arg("t"), a::arg("g"), a::arg("label_offset"), a::arg("ignore"), a::arg("num_threads"));

#ifdef SEGFAST_WITH_CUDA
  m.cuda.def(
      "region_stats",
      [](const View& x, const View& t, const View& out, int64_t act, int64_t xent, double gamma,
         int64_t label_offset, std::optional<double> ignore, const View& conf, const View& flag, uintptr_t stream) {
        const Checker c("cuda.region_stats", kCudaDevice);
        const Problem pr = make_problem(c, x, t, act, xent, gamma, label_offset, ignore);
        const int64_t P = check_stats_out(c, pr, out);
        check_conf(c, pr, conf);
        if (c.may(flag, "flag", -1, dtype_bit(kInt32)).present())
          c.require(pr.t_is_label && flag.numel() == 1, "flag needs class-index targets and one element");
        py::gil_scoped_release nogil;
        region::region_stats_cuda(pr, P, out.data, stream, flag.ptr<int32_t>(), conf.ptr<int64_t>());
      },
      (std::string(stats_doc) + " flag, when given (class-index targets), an int32 of one element set to 1 by a "
                                "label outside [0, C + label_offset) that is not ignored.").c_str(),
      SEGFAST_STATS_ARGS, a::arg("flag"), a::arg("stream"));
  m.cuda.def(
      "region_grad",
      [](const View& x, const View& t, const View& g, const View& dx, int64_t act, int64_t xent, double gamma,
         int64_t label_offset, std::optional<double> ignore, const View& go, uintptr_t stream) {
        const Checker c("cuda.region_grad", kCudaDevice);
        const Problem pr = make_problem(c, x, t, act, xent, gamma, label_offset, ignore);
        check_grad_args(c, pr, x, g, &dx);
        if (c.may(go, "go", -1, acc_of(pr.x_dtype)).present())
          c.require(go.numel() == 1 && go.dtype == g.dtype, "go must be one value in g's dtype");
        py::gil_scoped_release nogil;
        region::region_grad_cuda(pr, g.data, dx.data, dx.stride[0], dx.stride[1], dx.stride[2], stream,
                                 go.ptr<const void>());
      },
      (std::string(grad_doc) + " go, when given, one value in g's dtype (a scalar loss's grad_output) that "
                               "scales dx, read on the device.").c_str(),
      SEGFAST_GRAD_ARGS, a::arg("go"), a::arg("stream"));
  m.cuda.attr("REGION_FINISH_MAX_C") = py::int_(region::kFinishMaxC);
  m.cuda.def(
      "region_finish",
      [](const View& part, const View& sums, const View& coef, const View& loss, const View& ok, const View& flag,
         const View& w, const View& pw, const std::vector<double>& f, const std::vector<int64_t>& i, int64_t xent,
         uintptr_t stream) {
        using namespace region;
        const Checker c("cuda.region_finish", kCudaDevice);
        c.need(part, "part", 4, kAcc);
        c.contiguous(part, "part");
        const int64_t N = part.size[0], P = part.size[1], C = part.size[2], KO = part.size[3];
        c.require(N >= 1 && P >= 1 && C >= 1 && C <= kFinishMaxC,
                  "part [N, P, C, KO] needs N, P >= 1 and 1 <= C <= REGION_FINISH_MAX_C, got " + shape_str(part));
        c.require(xent >= kXentNone && xent <= kXentFused && KO == (xent ? KX : K), "xent or KO out of range");
        const DTypes acc = dtype_bit(part.dtype);
        for (const auto* v : {&sums, &coef}) {
          const char* name = v == &sums ? "sums" : "coef";
          c.need(*v, name, 3, acc);
          c.contiguous(*v, name);
          c.shape(*v, name, {N, C, KO});
        }
        c.require(c.need(loss, "loss", -1, acc).numel() == 1, "loss must have one element");
        c.require(c.need(ok, "ok", -1, dtype_bit(kUInt8)).numel() == 1, "ok must have one element");
        if (c.may(flag, "flag", -1, dtype_bit(kInt32)).present()) c.require(flag.numel() == 1, "flag: one element");
        for (const auto* v : {&w, &pw}) {
          const char* name = v == &w ? "w" : "pw";
          if (!c.may(*v, name, 1, acc).present()) continue;
          c.contiguous(*v, name);
          c.shape(*v, name, {C});
        }
        c.require(f.size() == 13 && i.size() == 4,
                  "fparams must hold 13 values (cI, dI, dP, dT, nr, dr, gamma, lam_r, scale_r, lam_x, eps, ws, wp) "
                  "and iparams 4 (gdl, batch, log, c0)");
        c.require(i[0] >= kGdlNone && i[0] <= kGdlUniform, "gdl out of range");
        const Finish fp{N, C, P, int(KO), f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9], f[10],
                        f[11], f[12], int(i[0]), int(i[1] != 0), int(i[2] != 0), int(i[3]), int(xent)};
        py::gil_scoped_release nogil;
        region_finish_cuda(fp, part.dtype == kFloat64, part.data, sums.data, coef.data, loss.data,
                           ok.ptr<uint8_t>(), flag.ptr<const int32_t>(), w.data, pw.data, stream);
      },
      "The region loss from the stats kernel's partial sums part [N, P, C, KO] (float32 or float64, "
      "contiguous), one block: sums [N, C, KO] (the sums over the chunks), coef [N, C, KO] (dLoss/dsums at "
      "grad_output 1), loss (one value), ok (one uint8: 1 unless flag is set; no flag: 1). w, pw: the region "
      "term's and the pixel term's class weights [C] in the sums' dtype, or None. fparams, iparams: the "
      "formula's constants (csrc/common/region.h Finish; triton_kernels/region_finish.py).",
      a::arg("part"), a::arg("sums"), a::arg("coef"), a::arg("loss"), a::arg("ok"), a::arg("flag"), a::arg("w"),
      a::arg("pw"), a::arg("fparams"), a::arg("iparams"), a::arg("xent"), a::arg("stream"));
#endif
#undef SEGFAST_STATS_ARGS
#undef SEGFAST_GRAD_ARGS
}

}  // namespace bind
}  // namespace segfast
