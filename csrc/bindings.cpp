// segfast._C: the pybind11 module. It does not link libtorch: Python passes
// raw data pointers, element strides, dtype codes (csrc/common/dtypes.h) and,
// for CUDA, the stream, all as ints. segfast/ops/* validate everything first.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/crf.h"
#include "common/pixel.h"
#include "common/region.h"

namespace py = pybind11;
using segfast::region::Problem;

namespace segfast {
namespace region {
void region_stats_cpu(const Problem& pr, int64_t P, void* out, int64_t num_threads);
void region_grad_cpu(const Problem& pr, const void* g, void* dx, int64_t dxsN, int64_t dxsC,
                     int64_t dxsS, int64_t num_threads);
int openmp_max_threads();
#ifdef SEGFAST_WITH_CUDA
void region_stats_cuda(const Problem& pr, int64_t P, void* out, uintptr_t stream);
void region_grad_cuda(const Problem& pr, const void* g, void* dx, int64_t dxsN, int64_t dxsC,
                      int64_t dxsS, uintptr_t stream);
#endif
}  // namespace region
}  // namespace segfast

namespace segfast {
namespace pixel {
void pixel_loss_cpu(const Problem& pr, int64_t num_threads);
#ifdef SEGFAST_WITH_CUDA
void pixel_loss_cuda(const Problem& pr, uintptr_t stream);
#endif
}  // namespace pixel
}  // namespace segfast

namespace {

Problem make_problem(uintptr_t x_ptr, int64_t x_dtype, int64_t xsN, int64_t xsC, int64_t xsS,
                     uintptr_t t_ptr, int64_t t_dtype, int64_t t_is_label, int64_t tsN,
                     int64_t tsC, int64_t tsS, int64_t N, int64_t C, int64_t S, int64_t act,
                     int64_t label_offset, int64_t has_ignore, double ignore_value) {
  using namespace segfast;
  if (x_dtype != kFloat32 && x_dtype != kFloat16 && x_dtype != kBFloat16 && x_dtype != kFloat64)
    throw std::invalid_argument("segfast._C: x_dtype must be a float dtype code (0-3)");
  if (t_is_label) {
    if (t_dtype != kUInt8 && t_dtype != kInt32 && t_dtype != kInt64)
      throw std::invalid_argument("segfast._C: label targets must be uint8/int32/int64 (4-6)");
  } else if (!(dtype_is_float(int(t_dtype)) || t_dtype == kUInt8 || t_dtype == kBool)) {
    throw std::invalid_argument("segfast._C: dense targets must be float/uint8/bool");
  }
  if (act < 0 || act > 2) throw std::invalid_argument("segfast._C: act must be 0, 1 or 2");
  if (N < 0 || C < 0 || S < 0) throw std::invalid_argument("segfast._C: negative size");
  Problem pr;
  pr.x = reinterpret_cast<const void*>(x_ptr);
  pr.x_dtype = int(x_dtype);
  pr.xsN = xsN; pr.xsC = xsC; pr.xsS = xsS;
  pr.t = reinterpret_cast<const void*>(t_ptr);
  pr.t_dtype = int(t_dtype);
  pr.t_is_label = t_is_label != 0;
  pr.tsN = tsN; pr.tsC = tsC; pr.tsS = tsS;
  pr.N = N; pr.C = C; pr.S = S;
  pr.act = int(act);
  pr.label_offset = label_offset;
  pr.has_ignore = has_ignore != 0;
  pr.ignore_value = ignore_value;
  return pr;
}

#define SEGFAST_PROBLEM_ARGS                                                                  \
  uintptr_t x_ptr, int64_t x_dtype, int64_t xsN, int64_t xsC, int64_t xsS, uintptr_t t_ptr,  \
      int64_t t_dtype, int64_t t_is_label, int64_t tsN, int64_t tsC, int64_t tsS, int64_t N, \
      int64_t C, int64_t S
#define SEGFAST_PROBLEM_PASS                                                                   \
  x_ptr, x_dtype, xsN, xsC, xsS, t_ptr, t_dtype, t_is_label, tsN, tsC, tsS, N, C, S, act, \
      label_offset, has_ignore, ignore_value

void stats_cpu(SEGFAST_PROBLEM_ARGS, int64_t P, int64_t act, int64_t label_offset,
               int64_t has_ignore, double ignore_value, uintptr_t out_ptr, int64_t num_threads) {
  const Problem pr = make_problem(SEGFAST_PROBLEM_PASS);
  py::gil_scoped_release nogil;
  segfast::region::region_stats_cpu(pr, P, reinterpret_cast<void*>(out_ptr), num_threads);
}

void grad_cpu(SEGFAST_PROBLEM_ARGS, int64_t act, int64_t label_offset, int64_t has_ignore,
              double ignore_value, uintptr_t g_ptr, uintptr_t dx_ptr, int64_t dxsN, int64_t dxsC,
              int64_t dxsS, int64_t num_threads) {
  const Problem pr = make_problem(SEGFAST_PROBLEM_PASS);
  py::gil_scoped_release nogil;
  segfast::region::region_grad_cpu(pr, reinterpret_cast<const void*>(g_ptr),
                                   reinterpret_cast<void*>(dx_ptr), dxsN, dxsC, dxsS,
                                   num_threads);
}

#ifndef SEGFAST_WITH_CUDA
[[noreturn]] void no_cuda() {
  throw std::runtime_error(
      "segfast._C was built without CUDA kernels (no nvcc at build time, or SEGFAST_CUDA=OFF)");
}
#endif

void stats_cuda(SEGFAST_PROBLEM_ARGS, int64_t P, int64_t act, int64_t label_offset,
                int64_t has_ignore, double ignore_value, uintptr_t out_ptr, uintptr_t stream) {
  const Problem pr = make_problem(SEGFAST_PROBLEM_PASS);
#ifdef SEGFAST_WITH_CUDA
  py::gil_scoped_release nogil;
  segfast::region::region_stats_cuda(pr, P, reinterpret_cast<void*>(out_ptr), stream);
#else
  (void)pr; (void)P; (void)out_ptr; (void)stream;
  no_cuda();
#endif
}

void grad_cuda(SEGFAST_PROBLEM_ARGS, int64_t act, int64_t label_offset, int64_t has_ignore,
               double ignore_value, uintptr_t g_ptr, uintptr_t dx_ptr, int64_t dxsN, int64_t dxsC,
               int64_t dxsS, uintptr_t stream) {
  const Problem pr = make_problem(SEGFAST_PROBLEM_PASS);
#ifdef SEGFAST_WITH_CUDA
  py::gil_scoped_release nogil;
  segfast::region::region_grad_cuda(pr, reinterpret_cast<const void*>(g_ptr),
                                    reinterpret_cast<void*>(dx_ptr), dxsN, dxsC, dxsS, stream);
#else
  (void)pr; (void)g_ptr; (void)dx_ptr; (void)dxsN; (void)dxsC; (void)dxsS; (void)stream;
  no_cuda();
#endif
}


// ---- pixel family ----------------------------------------------------------------

#define SEGFAST_PIXEL_ARGS                                                                      \
  uintptr_t x_ptr, int64_t x_dtype, int64_t xsN, int64_t xsC, int64_t xsS, uintptr_t t_ptr,    \
      int64_t t_dtype, int64_t t_is_label, int64_t tsN, int64_t tsC, int64_t tsS, int64_t N,   \
      int64_t C, int64_t S, int64_t P, int64_t kind, int64_t label_offset, int64_t has_ignore, \
      double ignore_value, uintptr_t w_ptr, uintptr_t pw_ptr, uintptr_t beta_ptr, double gamma, \
      double alpha, double smoothing, double scale0, double scale1, uintptr_t loss_ptr,        \
      uintptr_t map_ptr, uintptr_t go_ptr, uintptr_t dx_ptr, int64_t dxsN, int64_t dxsC,      \
      int64_t dxsS
#define SEGFAST_PIXEL_PASS                                                                     \
  x_ptr, x_dtype, xsN, xsC, xsS, t_ptr, t_dtype, t_is_label, tsN, tsC, tsS, N, C, S, P, kind, \
      label_offset, has_ignore, ignore_value, w_ptr, pw_ptr, beta_ptr, gamma, alpha, smoothing, \
      scale0, scale1, loss_ptr, map_ptr, go_ptr, dx_ptr, dxsN, dxsC, dxsS

segfast::pixel::Problem make_pixel_problem(SEGFAST_PIXEL_ARGS) {
  using namespace segfast;
  using namespace segfast::pixel;
  // x, targets, sizes: as the region family
  const segfast::region::Problem base =
      make_problem(x_ptr, x_dtype, xsN, xsC, xsS, t_ptr, t_dtype, t_is_label, tsN, tsC, tsS, N, C,
                   S, 0, label_offset, has_ignore, ignore_value);
  if (kind < kCE || kind > kFocalSigmoid)
    throw std::invalid_argument("segfast._C: pixel loss kind must be 0-4");
  if (is_softmax_kind(int(kind)) && !t_is_label)
    throw std::invalid_argument("segfast._C: softmax pixel losses take class-index targets");
  if (C < 1) throw std::invalid_argument("segfast._C: pixel losses need C >= 1");
  if (kind == kFused && C < 2) throw std::invalid_argument("segfast._C: the fused loss needs C >= 2");
  if (C >= (int64_t(1) << 31)) throw std::invalid_argument("segfast._C: C too large");
  if (loss_ptr && P < 1) throw std::invalid_argument("segfast._C: P must be >= 1");
  if (!(gamma >= 0.0) || !std::isfinite(gamma))
    throw std::invalid_argument("segfast._C: gamma must be finite and >= 0");
  if (!std::isfinite(alpha) || !std::isfinite(smoothing) || !std::isfinite(scale0) ||
      !std::isfinite(scale1))
    throw std::invalid_argument("segfast._C: alpha, smoothing and scales must be finite");
  if ((pw_ptr || beta_ptr) && kind != kBCE)
    throw std::invalid_argument("segfast._C: pos_weight / beta apply to BCE only");
  segfast::pixel::Problem pr;
  static_cast<segfast::Inputs&>(pr) = base;
  pr.P = P;
  pr.kind = int(kind);
  pr.w = reinterpret_cast<const void*>(w_ptr);
  pr.pw = reinterpret_cast<const void*>(pw_ptr);
  pr.beta = reinterpret_cast<const void*>(beta_ptr);
  pr.gamma = gamma; pr.alpha = alpha; pr.smoothing = smoothing;
  pr.scale0 = scale0; pr.scale1 = scale1;
  pr.loss = reinterpret_cast<void*>(loss_ptr);
  pr.map = reinterpret_cast<void*>(map_ptr);
  pr.go = reinterpret_cast<const void*>(go_ptr);
  pr.dx = reinterpret_cast<void*>(dx_ptr);
  pr.dxsN = dxsN; pr.dxsC = dxsC; pr.dxsS = dxsS;
  return pr;
}

void pixel_cpu(SEGFAST_PIXEL_ARGS, int64_t num_threads) {
  const segfast::pixel::Problem pr = make_pixel_problem(SEGFAST_PIXEL_PASS);
  py::gil_scoped_release nogil;
  segfast::pixel::pixel_loss_cpu(pr, num_threads);
}

void pixel_cuda(SEGFAST_PIXEL_ARGS, uintptr_t stream) {
  const segfast::pixel::Problem pr = make_pixel_problem(SEGFAST_PIXEL_PASS);
#ifdef SEGFAST_WITH_CUDA
  py::gil_scoped_release nogil;
  segfast::pixel::pixel_loss_cuda(pr, stream);
#else
  (void)pr; (void)stream;
  no_cuda();
#endif
}

// ---- crf family ------------------------------------------------------------------

}  // namespace
namespace segfast {
namespace crf {
void dense_crf_cpu(const void* U, int u_dtype, int64_t usB, int64_t usC, int64_t usS, const void* img,
                   int im_dtype, int64_t isB, int64_t isC, int64_t isS, int64_t B, int64_t C, int64_t H,
                   int64_t W, const std::vector<double>& kparams, const std::vector<uintptr_t>& compat_ptrs,
                   int64_t iterations, int normalization, bool self_message, float* Qout, int64_t num_threads);
int64_t crf_lattice_cpu(const float* feat, int64_t N, int d, int32_t* offset, float* weight, int32_t* blur,
                        int64_t cap, int64_t num_threads);
#ifdef SEGFAST_WITH_CUDA
void crf_splat_cuda(const float* q, const int32_t* off, const float* w, float* grid, int64_t P, int64_t C, int D1,
                    uintptr_t stream);
void crf_blur_cuda(const float* src, float* dst, const int32_t* nb, int64_t M, int64_t C, uintptr_t stream);
void crf_update_cuda(const float* U, float* Q, const float* extra, const int32_t* off1, const float* w1,
                     const float* grid1, int D1a, const int32_t* off2, const float* w2, const float* grid2, int D1b,
                     int nk, int64_t P, int64_t C, uintptr_t stream);
#endif
}  // namespace crf
}  // namespace segfast
namespace {

#define SEGFAST_CRF_ARGS                                                                        \
  uintptr_t u_ptr, int64_t u_dtype, int64_t usB, int64_t usC, int64_t usS, uintptr_t im_ptr,   \
      int64_t im_dtype, int64_t isB, int64_t isC, int64_t isS, int64_t B, int64_t C, int64_t H, \
      int64_t W, std::vector<double> kparams, std::vector<uintptr_t> compat_ptrs,               \
      int64_t iterations, int64_t normalization, bool self_message, uintptr_t out_ptr

void check_crf_args(int64_t u_dtype, int64_t im_dtype, int64_t B, int64_t C, int64_t H, int64_t W,
                    const std::vector<double>& kparams, const std::vector<uintptr_t>& compat_ptrs,
                    int64_t iterations, int64_t normalization) {
  using namespace segfast;
  if (!dtype_is_float(int(u_dtype))) throw std::invalid_argument("segfast._C: CRF unary must be a float dtype");
  if (!(dtype_is_float(int(im_dtype)) || im_dtype == kUInt8))
    throw std::invalid_argument("segfast._C: CRF image must be uint8 or float");
  if (B < 0 || C < 1 || H < 0 || W < 0 || iterations < 0)
    throw std::invalid_argument("segfast._C: CRF sizes must be >= 0 (C >= 1)");
  if (H * W * 6 >= (int64_t(1) << 31)) throw std::invalid_argument("segfast._C: CRF image too large for int32 lattices");
  if (normalization < 0 || normalization > 3) throw std::invalid_argument("segfast._C: bad CRF normalization code");
  if (kparams.size() != 7 * compat_ptrs.size()) throw std::invalid_argument("segfast._C: 7 parameters per CRF kernel");
  for (size_t i = 0; i < kparams.size(); ++i) {
    if (!std::isfinite(kparams[i])) throw std::invalid_argument("segfast._C: CRF kernel parameters must be finite");
    if (i % 7 < 5 && !(kparams[i] > 0)) throw std::invalid_argument("segfast._C: CRF kernel scales must be > 0");
  }
}

void crf_cpu(SEGFAST_CRF_ARGS, int64_t num_threads) {
  check_crf_args(u_dtype, im_dtype, B, C, H, W, kparams, compat_ptrs, iterations, normalization);
  py::gil_scoped_release nogil;
  segfast::crf::dense_crf_cpu(reinterpret_cast<const void*>(u_ptr), int(u_dtype), usB, usC, usS,
                              reinterpret_cast<const void*>(im_ptr), int(im_dtype), isB, isC, isS, B, C, H, W,
                              kparams, compat_ptrs, iterations, int(normalization), self_message,
                              reinterpret_cast<float*>(out_ptr), num_threads);
}

int64_t crf_lattice(uintptr_t feat_ptr, int64_t N, int64_t d, uintptr_t offset_ptr, uintptr_t weight_ptr,
                    uintptr_t blur_ptr, int64_t cap, int64_t num_threads) {
  if (N < 0 || d < 1 || d > segfast::crf::kMaxD) throw std::invalid_argument("segfast._C: lattice d must be in [1, 8]");
  if (N * (d + 1) >= (int64_t(1) << 31)) throw std::invalid_argument("segfast._C: too many pixels for an int32 lattice");
  py::gil_scoped_release nogil;
  return segfast::crf::crf_lattice_cpu(reinterpret_cast<const float*>(feat_ptr), N, int(d),
                                       reinterpret_cast<int32_t*>(offset_ptr), reinterpret_cast<float*>(weight_ptr),
                                       reinterpret_cast<int32_t*>(blur_ptr), cap, num_threads);
}
#undef SEGFAST_CRF_ARGS

// CUDA steps of the lattice mean field (csrc/cuda/crf.cu); pointers are device
// float32 / int32 arrays laid out [rows][C], validated by segfast/ops/crf.py.
void crf_splat(uintptr_t q, uintptr_t off, uintptr_t w, uintptr_t grid, int64_t P, int64_t C, int64_t D1,
               uintptr_t stream) {
  if (P < 0 || C < 1 || D1 < 1 || D1 > segfast::crf::kMaxD + 1) throw std::invalid_argument("segfast._C: bad CRF splat sizes");
#ifdef SEGFAST_WITH_CUDA
  py::gil_scoped_release nogil;
  segfast::crf::crf_splat_cuda(reinterpret_cast<const float*>(q), reinterpret_cast<const int32_t*>(off),
                               reinterpret_cast<const float*>(w), reinterpret_cast<float*>(grid), P, C, int(D1),
                               stream);
#else
  (void)q; (void)off; (void)w; (void)grid; (void)stream;
  no_cuda();
#endif
}

void crf_blur(uintptr_t src, uintptr_t dst, uintptr_t nb, int64_t M, int64_t C, uintptr_t stream) {
  if (M < 0 || C < 1) throw std::invalid_argument("segfast._C: bad CRF blur sizes");
#ifdef SEGFAST_WITH_CUDA
  py::gil_scoped_release nogil;
  segfast::crf::crf_blur_cuda(reinterpret_cast<const float*>(src), reinterpret_cast<float*>(dst),
                              reinterpret_cast<const int32_t*>(nb), M, C, stream);
#else
  (void)src; (void)dst; (void)nb; (void)stream;
  no_cuda();
#endif
}

void crf_update(uintptr_t U, uintptr_t Q, uintptr_t extra, uintptr_t off1, uintptr_t w1, uintptr_t grid1,
                int64_t D1a, uintptr_t off2, uintptr_t w2, uintptr_t grid2, int64_t D1b, int64_t nk, int64_t P,
                int64_t C, uintptr_t stream) {
  if (P < 0 || C < 1 || nk < 0 || nk > 2) throw std::invalid_argument("segfast._C: bad CRF update sizes");
#ifdef SEGFAST_WITH_CUDA
  py::gil_scoped_release nogil;
  segfast::crf::crf_update_cuda(
      reinterpret_cast<const float*>(U), reinterpret_cast<float*>(Q), reinterpret_cast<const float*>(extra),
      reinterpret_cast<const int32_t*>(off1), reinterpret_cast<const float*>(w1),
      reinterpret_cast<const float*>(grid1), int(D1a), reinterpret_cast<const int32_t*>(off2),
      reinterpret_cast<const float*>(w2), reinterpret_cast<const float*>(grid2), int(D1b), int(nk), P, C, stream);
#else
  (void)U; (void)Q; (void)extra; (void)off1; (void)w1; (void)grid1; (void)D1a; (void)off2; (void)w2; (void)grid2;
  (void)D1b; (void)stream;
  no_cuda();
#endif
}

// ---- end of the crf family --------------------------------------------------------

std::vector<std::string> cuda_archs() {
  std::vector<std::string> out;
#if defined(SEGFAST_WITH_CUDA) && defined(SEGFAST_CUDA_ARCHS)
  const std::string s = SEGFAST_CUDA_ARCHS;
  size_t b = 0;
  while (b <= s.size()) {
    size_t e = s.find_first_of(";, ", b);
    if (e == std::string::npos) e = s.size();
    if (e > b) out.push_back(s.substr(b, e - b));
    b = e + 1;
  }
#endif
  return out;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "segfast compiled kernels (CPU/OpenMP and, when built, CUDA); no libtorch";

  m.def("has_cuda", []() {
#ifdef SEGFAST_WITH_CUDA
    return true;
#else
    return false;
#endif
  }, "True if the CUDA kernels were compiled in.");
  m.def("cuda_archs", &cuda_archs,
        "CUDA architectures compiled in (CMAKE_CUDA_ARCHITECTURES entries); [] without CUDA.");
  m.def("openmp_max_threads", &segfast::region::openmp_max_threads,
        "omp_get_max_threads() in the extension's OpenMP runtime.");

  const char* stats_doc =
      "Partial region sums: out [N, P, C, 7] contiguous (float64 if x is float64 else float32); "
      "chunk j of P covers pixels [j*L, min((j+1)*L, S)), L = ceil(S/P).";
  const char* grad_doc =
      "dLoss/dx from g = dLoss/dStats [N, C, 7] contiguous (accumulation dtype); dx has x's "
      "dtype and strides dxsN, dxsC, dxsS.";

  m.def("region_stats_cpu", &stats_cpu, stats_doc, py::arg("x_ptr"), py::arg("x_dtype"),
        py::arg("xsN"), py::arg("xsC"), py::arg("xsS"), py::arg("t_ptr"), py::arg("t_dtype"),
        py::arg("t_is_label"), py::arg("tsN"), py::arg("tsC"), py::arg("tsS"), py::arg("N"),
        py::arg("C"), py::arg("S"), py::arg("P"), py::arg("act"), py::arg("label_offset"),
        py::arg("has_ignore"), py::arg("ignore_value"), py::arg("out_ptr"),
        py::arg("num_threads"));
  m.def("region_grad_cpu", &grad_cpu, grad_doc, py::arg("x_ptr"), py::arg("x_dtype"),
        py::arg("xsN"), py::arg("xsC"), py::arg("xsS"), py::arg("t_ptr"), py::arg("t_dtype"),
        py::arg("t_is_label"), py::arg("tsN"), py::arg("tsC"), py::arg("tsS"), py::arg("N"),
        py::arg("C"), py::arg("S"), py::arg("act"), py::arg("label_offset"),
        py::arg("has_ignore"), py::arg("ignore_value"), py::arg("g_ptr"), py::arg("dx_ptr"),
        py::arg("dxsN"), py::arg("dxsC"), py::arg("dxsS"), py::arg("num_threads"));
  m.def("region_stats_cuda", &stats_cuda, stats_doc, py::arg("x_ptr"), py::arg("x_dtype"),
        py::arg("xsN"), py::arg("xsC"), py::arg("xsS"), py::arg("t_ptr"), py::arg("t_dtype"),
        py::arg("t_is_label"), py::arg("tsN"), py::arg("tsC"), py::arg("tsS"), py::arg("N"),
        py::arg("C"), py::arg("S"), py::arg("P"), py::arg("act"), py::arg("label_offset"),
        py::arg("has_ignore"), py::arg("ignore_value"), py::arg("out_ptr"), py::arg("stream"));
  m.def("region_grad_cuda", &grad_cuda, grad_doc, py::arg("x_ptr"), py::arg("x_dtype"),
        py::arg("xsN"), py::arg("xsC"), py::arg("xsS"), py::arg("t_ptr"), py::arg("t_dtype"),
        py::arg("t_is_label"), py::arg("tsN"), py::arg("tsC"), py::arg("tsS"), py::arg("N"),
        py::arg("C"), py::arg("S"), py::arg("act"), py::arg("label_offset"),
        py::arg("has_ignore"), py::arg("ignore_value"), py::arg("g_ptr"), py::arg("dx_ptr"),
        py::arg("dxsN"), py::arg("dxsC"), py::arg("dxsS"), py::arg("stream"));

  const char* pixel_doc =
      "Pixel losses (CE, focal, fused, BCE, sigmoid focal; segfast/reference/pixel.py "
      "pixel_terms): any subset of loss [N, P, 2] chunk sums of (l0, l1), map "
      "scale0*l0 + scale1*l1, dx = go * d(map)/dx. Optional pointers are 0 when absent.";
#define SEGFAST_PIXEL_PYARGS                                                                   \
  py::arg("x_ptr"), py::arg("x_dtype"), py::arg("xsN"), py::arg("xsC"), py::arg("xsS"),        \
      py::arg("t_ptr"), py::arg("t_dtype"), py::arg("t_is_label"), py::arg("tsN"),             \
      py::arg("tsC"), py::arg("tsS"), py::arg("N"), py::arg("C"), py::arg("S"), py::arg("P"),  \
      py::arg("kind"), py::arg("label_offset"), py::arg("has_ignore"), py::arg("ignore_value"), \
      py::arg("w_ptr"), py::arg("pw_ptr"), py::arg("beta_ptr"), py::arg("gamma"),             \
      py::arg("alpha"), py::arg("smoothing"), py::arg("scale0"), py::arg("scale1"),           \
      py::arg("loss_ptr"), py::arg("map_ptr"), py::arg("go_ptr"), py::arg("dx_ptr"),          \
      py::arg("dxsN"), py::arg("dxsC"), py::arg("dxsS")
  m.def("pixel_loss_cpu", &pixel_cpu, pixel_doc, SEGFAST_PIXEL_PYARGS, py::arg("num_threads"));
  m.def("pixel_loss_cuda", &pixel_cuda, pixel_doc, SEGFAST_PIXEL_PYARGS, py::arg("stream"));
#undef SEGFAST_PIXEL_PYARGS

  // ---- crf family ----
  const char* crf_doc =
      "Dense CRF mean field (segfast/ops/crf.py): energies U [B, C, H*W] (strides usB, usC, usS), "
      "image [B, 3, H*W] (uint8/float, 0-255), kparams 7 per kernel (sx, sy, sr, sg, sb, bilateral, "
      "Potts weight), compat_ptrs: float32 [C, C] symmetric matrix per kernel or 0 (Potts); "
      "writes Q [B, C, H*W] float32 contiguous.";
#define SEGFAST_CRF_PYARGS                                                                        \
  py::arg("u_ptr"), py::arg("u_dtype"), py::arg("usB"), py::arg("usC"), py::arg("usS"),           \
      py::arg("im_ptr"), py::arg("im_dtype"), py::arg("isB"), py::arg("isC"), py::arg("isS"),      \
      py::arg("B"), py::arg("C"), py::arg("H"), py::arg("W"), py::arg("kparams"),                 \
      py::arg("compat_ptrs"), py::arg("iterations"), py::arg("normalization"),                   \
      py::arg("self_message"), py::arg("out_ptr")
  m.def("dense_crf_cpu", &crf_cpu, crf_doc, SEGFAST_CRF_PYARGS, py::arg("num_threads"));
#undef SEGFAST_CRF_PYARGS
  m.def("crf_lattice_cpu", &crf_lattice,
        "Permutohedral lattice of float32 features [N, d]: writes offset [N, d+1] int32, weight "
        "[N, d+1] float32, blur [d+1, M, 2] int32 (capacity cap points); returns M (-M-1 if M > cap).",
        py::arg("feat_ptr"), py::arg("N"), py::arg("d"), py::arg("offset_ptr"), py::arg("weight_ptr"),
        py::arg("blur_ptr"), py::arg("cap"), py::arg("num_threads"));
  m.def("crf_splat_cuda", &crf_splat, "CRF lattice splat (device): grid[off[i,r], c] += w[i,r] q[i,c].",
        py::arg("q"), py::arg("off"), py::arg("w"), py::arg("grid"), py::arg("P"), py::arg("C"), py::arg("D1"),
        py::arg("stream"));
  m.def("crf_blur_cuda", &crf_blur, "CRF lattice blur along one direction (device).", py::arg("src"),
        py::arg("dst"), py::arg("nb"), py::arg("M"), py::arg("C"), py::arg("stream"));
  m.def("crf_update_cuda", &crf_update, "CRF fused slice + softmax (device), nk fused Potts kernels.",
        py::arg("U"), py::arg("Q"), py::arg("extra"), py::arg("off1"), py::arg("w1"), py::arg("grid1"),
        py::arg("D1a"), py::arg("off2"), py::arg("w2"), py::arg("grid2"), py::arg("D1b"), py::arg("nk"),
        py::arg("P"), py::arg("C"), py::arg("stream"));
}
