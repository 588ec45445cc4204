// segfast._C: the pybind11 module. It does not link libtorch: Python passes
// raw data pointers, element strides, dtype codes (csrc/common/dtypes.h) and,
// for CUDA, the stream, all as ints. segfast/ops/* validate everything first.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/boxes.h"
#include "common/crf.h"
#include "common/lovasz.h"
#include "common/pixel.h"
#include "common/region.h"
#include "cpu/block_cache.h"
#include "cpu/common.h"

namespace py = pybind11;
using segfast::region::Problem;

namespace segfast {
namespace region {
void region_stats_cpu(const Problem& pr, int64_t P, void* out, int64_t num_threads, float* mr,
                      float* p_out, int64_t p_sN, int64_t p_sC, int64_t* conf);
bool grad_probs_built();
bool grad_probs_ok(const Problem& pr);
int64_t region_keeps(int64_t x_dtype, bool t_is_label, int64_t act, int64_t xent, int64_t C,
                     int64_t xsS);
void region_grad_probs_cpu(const Problem& pr, const float* g, int64_t num_threads);
void region_grad_cpu(const Problem& pr, const void* g, void* dx, int64_t dxsN, int64_t dxsC,
                     int64_t dxsS, int64_t num_threads, const float* mr);
int openmp_max_threads();
const char* region_isa();
#ifdef SEGFAST_WITH_CUDA
void region_stats_cuda(const Problem& pr, int64_t P, void* out, uintptr_t stream, int32_t* flag = nullptr,
                       int64_t* confusion = nullptr);
void region_grad_cuda(const Problem& pr, const void* g, void* dx, int64_t dxsN, int64_t dxsC,
                      int64_t dxsS, uintptr_t stream, const void* go = nullptr);
void region_finish_cuda(const Finish& fp, bool f64, const void* part, void* sums, void* coef, void* loss,
                        uint8_t* ok, const int32_t* flag, const void* w, const void* pw, uintptr_t stream);
#endif
}  // namespace region
}  // namespace segfast

namespace segfast {
namespace cpu {
void label_range(const void* t, int dtype, int64_t rows, int64_t len, int64_t sR, int64_t sL,
                 bool has_ignore, int64_t ign, int nt, int64_t* lo, int64_t* hi);
}  // namespace cpu
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
  pr.xent = 0;
  pr.gamma = 0.0;
  pr.label_offset = label_offset;
  pr.has_ignore = has_ignore != 0;
  pr.ignore_value = ignore_value;
  return pr;
}

// The region kernels' pixel-term sums (csrc/common/region.h): softmax and
// class-index targets only.
Problem with_xent(Problem pr, int64_t xent, double gamma) {
  using namespace segfast::region;
  if (xent < kXentNone || xent > kXentFused)
    throw std::invalid_argument("segfast._C: xent must be 0-3");
  if (xent && (pr.act != kSoftmax || !pr.t_is_label))
    throw std::invalid_argument("segfast._C: xent needs act=softmax and class-index targets");
  if (xent == kXentFused && pr.C < 2)
    throw std::invalid_argument("segfast._C: the fused term needs C >= 2");
  if (!(gamma >= 0.0) || !std::isfinite(gamma))
    throw std::invalid_argument("segfast._C: gamma must be finite and >= 0");
  pr.xent = int(xent);
  pr.gamma = gamma;
  return pr;
}

#define SEGFAST_PROBLEM_ARGS                                                                  \
  uintptr_t x_ptr, int64_t x_dtype, int64_t xsN, int64_t xsC, int64_t xsS, uintptr_t t_ptr,  \
      int64_t t_dtype, int64_t t_is_label, int64_t tsN, int64_t tsC, int64_t tsS, int64_t N, \
      int64_t C, int64_t S
#define SEGFAST_PROBLEM_PASS                                                                   \
  x_ptr, x_dtype, xsN, xsC, xsS, t_ptr, t_dtype, t_is_label, tsN, tsC, tsS, N, C, S, act, \
      label_offset, has_ignore, ignore_value

void stats_cpu(SEGFAST_PROBLEM_ARGS, int64_t P, int64_t act, int64_t xent, double gamma, int64_t label_offset,
               int64_t has_ignore, double ignore_value, uintptr_t out_ptr, int64_t num_threads,
               uintptr_t mr_ptr, uintptr_t p_ptr, int64_t psN, int64_t psC, uintptr_t conf_ptr) {
  const Problem pr = with_xent(make_problem(SEGFAST_PROBLEM_PASS), xent, gamma);
  if (p_ptr && (xent || !segfast::region::grad_probs_ok(pr)))
    throw std::invalid_argument("segfast._C: p_ptr needs act=softmax, class-index targets, x not "
                                "float64, no pixel term (see region_grad_probs_cpu)");
  if (conf_ptr && !pr.t_is_label)
    throw std::invalid_argument("segfast._C: conf_ptr needs class-index targets");
  py::gil_scoped_release nogil;
  segfast::region::region_stats_cpu(pr, P, reinterpret_cast<void*>(out_ptr), num_threads,
                                    reinterpret_cast<float*>(mr_ptr),
                                    reinterpret_cast<float*>(p_ptr), psN, psC,
                                    reinterpret_cast<int64_t*>(conf_ptr));
}

// dx over q in place: q (the x arguments) is the v p that region_stats_cpu wrote at p_ptr.
void grad_probs_cpu(SEGFAST_PROBLEM_ARGS, int64_t label_offset, int64_t has_ignore,
                    double ignore_value, uintptr_t g_ptr, int64_t num_threads) {
  const int64_t act = segfast::region::kSoftmax;
  const Problem pr = make_problem(SEGFAST_PROBLEM_PASS);
  if (x_dtype != segfast::kFloat32 || xsS != 1 || !segfast::region::grad_probs_ok(pr))
    throw std::invalid_argument("segfast._C: region_grad_probs_cpu needs float32 q with unit pixel "
                                "stride and class-index targets");
  py::gil_scoped_release nogil;
  segfast::region::region_grad_probs_cpu(pr, reinterpret_cast<const float*>(g_ptr), num_threads);
}

void grad_cpu(SEGFAST_PROBLEM_ARGS, int64_t act, int64_t xent, double gamma, int64_t label_offset, int64_t has_ignore,
              double ignore_value, uintptr_t g_ptr, uintptr_t dx_ptr, int64_t dxsN, int64_t dxsC,
              int64_t dxsS, int64_t num_threads, uintptr_t mr_ptr) {
  const Problem pr = with_xent(make_problem(SEGFAST_PROBLEM_PASS), xent, gamma);
  py::gil_scoped_release nogil;
  segfast::region::region_grad_cpu(pr, reinterpret_cast<const void*>(g_ptr),
                                   reinterpret_cast<void*>(dx_ptr), dxsN, dxsC, dxsS,
                                   num_threads, reinterpret_cast<const float*>(mr_ptr));
}

#ifndef SEGFAST_WITH_CUDA
[[noreturn]] void no_cuda() {
  throw std::runtime_error(
      "segfast._C was built without CUDA kernels (no nvcc at build time, or SEGFAST_CUDA=OFF)");
}
#endif

void stats_cuda(SEGFAST_PROBLEM_ARGS, int64_t P, int64_t act, int64_t xent, double gamma, int64_t label_offset,
                int64_t has_ignore, double ignore_value, uintptr_t out_ptr, uintptr_t stream, uintptr_t flag_ptr,
                uintptr_t confusion_ptr) {
  const Problem pr = with_xent(make_problem(SEGFAST_PROBLEM_PASS), xent, gamma);
#ifdef SEGFAST_WITH_CUDA
  py::gil_scoped_release nogil;
  segfast::region::region_stats_cuda(pr, P, reinterpret_cast<void*>(out_ptr), stream,
                                     reinterpret_cast<int32_t*>(flag_ptr), reinterpret_cast<int64_t*>(confusion_ptr));
#else
  (void)pr; (void)P; (void)out_ptr; (void)stream; (void)flag_ptr; (void)confusion_ptr;
  no_cuda();
#endif
}

void grad_cuda(SEGFAST_PROBLEM_ARGS, int64_t act, int64_t xent, double gamma, int64_t label_offset, int64_t has_ignore,
               double ignore_value, uintptr_t g_ptr, uintptr_t dx_ptr, int64_t dxsN, int64_t dxsC,
               int64_t dxsS, uintptr_t stream, uintptr_t go_ptr) {
  const Problem pr = with_xent(make_problem(SEGFAST_PROBLEM_PASS), xent, gamma);
#ifdef SEGFAST_WITH_CUDA
  py::gil_scoped_release nogil;
  segfast::region::region_grad_cuda(pr, reinterpret_cast<const void*>(g_ptr),
                                    reinterpret_cast<void*>(dx_ptr), dxsN, dxsC, dxsS, stream,
                                    reinterpret_cast<const void*>(go_ptr));
#else
  (void)pr; (void)g_ptr; (void)dx_ptr; (void)dxsN; (void)dxsC; (void)dxsS; (void)stream; (void)go_ptr;
  no_cuda();
#endif
}

void finish_cuda(uintptr_t part_ptr, uintptr_t sums_ptr, uintptr_t coef_ptr, uintptr_t loss_ptr, uintptr_t ok_ptr,
                 uintptr_t flag_ptr, uintptr_t w_ptr, uintptr_t pw_ptr, int64_t dtype, int64_t N, int64_t C,
                 int64_t P, int64_t KO, double cI, double dI, double dP, double dT, double nr, double dr,
                 double gamma, double lam_r, double scale_r, double lam_x, double eps, double ws, double wp,
                 int64_t gdl, int64_t batch, int64_t log, int64_t c0, int64_t xent, uintptr_t stream) {
  using namespace segfast::region;
  if (dtype != segfast::kFloat32 && dtype != segfast::kFloat64)
    throw std::invalid_argument("segfast._C: region_finish_cuda needs float32 or float64 sums");
  if (N <= 0 || P <= 0 || C <= 0 || C > kFinishMaxC)
    throw std::invalid_argument("segfast._C: region_finish_cuda needs N, P >= 1 and 1 <= C <= REGION_FINISH_MAX_C");
  if (xent < kXentNone || xent > kXentFused || KO != (xent ? KX : K) || gdl < kGdlNone || gdl > kGdlUniform)
    throw std::invalid_argument("segfast._C: region_finish_cuda: xent, KO or gdl out of range");
  const Finish fp{N, C, P, int(KO), cI, dI, dP, dT, nr, dr, gamma, lam_r, scale_r, lam_x, eps, ws, wp,
                  int(gdl), int(batch != 0), int(log != 0), int(c0), int(xent)};
#ifdef SEGFAST_WITH_CUDA
  py::gil_scoped_release nogil;
  region_finish_cuda(fp, dtype == segfast::kFloat64, reinterpret_cast<const void*>(part_ptr),
                     reinterpret_cast<void*>(sums_ptr), reinterpret_cast<void*>(coef_ptr),
                     reinterpret_cast<void*>(loss_ptr), reinterpret_cast<uint8_t*>(ok_ptr),
                     reinterpret_cast<const int32_t*>(flag_ptr), reinterpret_cast<const void*>(w_ptr),
                     reinterpret_cast<const void*>(pw_ptr), stream);
#else
  (void)fp; (void)part_ptr; (void)sums_ptr; (void)coef_ptr; (void)loss_ptr; (void)ok_ptr; (void)flag_ptr;
  (void)w_ptr; (void)pw_ptr; (void)stream;
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
      int64_t dxsS, int64_t go_scalar
#define SEGFAST_PIXEL_PASS                                                                     \
  x_ptr, x_dtype, xsN, xsC, xsS, t_ptr, t_dtype, t_is_label, tsN, tsC, tsS, N, C, S, P, kind, \
      label_offset, has_ignore, ignore_value, w_ptr, pw_ptr, beta_ptr, gamma, alpha, smoothing, \
      scale0, scale1, loss_ptr, map_ptr, go_ptr, dx_ptr, dxsN, dxsC, dxsS, go_scalar

segfast::pixel::Problem make_pixel_problem(SEGFAST_PIXEL_ARGS) {
  using namespace segfast;
  using namespace segfast::pixel;
  // x, targets, sizes: as the region family
  const segfast::region::Problem base =
      make_problem(x_ptr, x_dtype, xsN, xsC, xsS, t_ptr, t_dtype, t_is_label, tsN, tsC, tsS, N, C,
                   S, 0, label_offset, has_ignore, ignore_value);
  if (kind < kCE || kind > kFocalSigmoid)
    throw std::invalid_argument("segfast._C: pixel loss kind must be 0-4");
  if (is_softmax_kind(int(kind)) && kind != kFocalSoftmax && !t_is_label)
    throw std::invalid_argument("segfast._C: softmax pixel losses other than focal take class-index targets");
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
  pr.go_scalar = go_scalar != 0;
  pr.dx = reinterpret_cast<void*>(dx_ptr);
  pr.dxsN = dxsN; pr.dxsC = dxsC; pr.dxsS = dxsS;
  return pr;
}

void pixel_cpu(SEGFAST_PIXEL_ARGS, int64_t num_threads) {
  const segfast::pixel::Problem pr = make_pixel_problem(SEGFAST_PIXEL_PASS);
  py::gil_scoped_release nogil;
  segfast::pixel::pixel_loss_cpu(pr, num_threads);
}

void run_pixel_cuda(const segfast::pixel::Problem& pr, uintptr_t stream) {
#ifdef SEGFAST_WITH_CUDA
  py::gil_scoped_release nogil;
  segfast::pixel::pixel_loss_cuda(pr, stream);
#else
  (void)pr; (void)stream;
  no_cuda();
#endif
}

void pixel_cuda(SEGFAST_PIXEL_ARGS, uintptr_t stream) {
  run_pixel_cuda(make_pixel_problem(SEGFAST_PIXEL_PASS), stream);
}

// A reduced loss on the device: the loss and its normaliser (out_ptr, den_ptr:
// 0-d, loss_ptr an [N, P, 4] workspace, counter_ptr a zero uint32), or dx of
// one with a single go_ptr scaled by go / den (out_ptr 0).
void pixel_reduced_cuda(SEGFAST_PIXEL_ARGS, int64_t norm, uintptr_t out_ptr, uintptr_t den_ptr,
                        uintptr_t counter_ptr, uintptr_t stream) {
  segfast::pixel::Problem pr = make_pixel_problem(SEGFAST_PIXEL_PASS);
  if (norm < segfast::pixel::kNormSum || norm > segfast::pixel::kNormWeight)
    throw std::invalid_argument("segfast._C: norm must be 0-2");
  if (out_ptr && (!loss_ptr || !counter_ptr))
    throw std::invalid_argument("segfast._C: a reduced pixel loss needs loss_ptr (workspace) and counter_ptr");
  pr.norm = int(norm);
  pr.out = reinterpret_cast<void*>(out_ptr);
  pr.den = reinterpret_cast<void*>(den_ptr);
  pr.counter = reinterpret_cast<unsigned*>(counter_ptr);
  run_pixel_cuda(pr, stream);
}

// ---- boxes_match family (box_iou_max, nms) ---------------------------------------

}  // namespace

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
}  // namespace segfast

namespace {

#define SEGFAST_IOU_MAX_ARGS                                                                    \
  uintptr_t a_ptr, int64_t a_dtype, int64_t asB, int64_t asN, int64_t as4, uintptr_t g_ptr,    \
      int64_t gsB, int64_t gsM, int64_t gs4, uintptr_t valid_ptr, int64_t vsB, int64_t vsM,    \
      int64_t B, int64_t N, int64_t M, int64_t fmt, uintptr_t mx_ptr, uintptr_t arg_ptr,       \
      uintptr_t gmax_ptr
#define SEGFAST_IOU_MAX_PASS                                                                   \
  a_ptr, a_dtype, asB, asN, as4, g_ptr, gsB, gsM, gs4, valid_ptr, vsB, vsM, B, N, M, fmt,      \
      mx_ptr, arg_ptr, gmax_ptr

segfast::boxes::IouMaxProblem make_iou_max(SEGFAST_IOU_MAX_ARGS) {
  using namespace segfast;
  if (a_dtype != kFloat32 && a_dtype != kFloat16 && a_dtype != kBFloat16 && a_dtype != kFloat64)
    throw std::invalid_argument("segfast._C: box dtype must be a float dtype code (0-3)");
  if (fmt < 0 || fmt > 2) throw std::invalid_argument("segfast._C: fmt must be 0, 1 or 2");
  if (B < 0 || N < 0 || M < 0) throw std::invalid_argument("segfast._C: negative size");
  if (M >= (int64_t(1) << 31)) throw std::invalid_argument("segfast._C: M too large");
  segfast::boxes::IouMaxProblem p;
  p.a = reinterpret_cast<const void*>(a_ptr);
  p.a_dtype = int(a_dtype);
  p.asB = asB; p.asN = asN; p.as4 = as4;
  p.g = reinterpret_cast<const void*>(g_ptr);
  p.gsB = gsB; p.gsM = gsM; p.gs4 = gs4;
  p.valid = reinterpret_cast<const uint8_t*>(valid_ptr);
  p.vsB = vsB; p.vsM = vsM;
  p.B = B; p.N = N; p.M = M;
  p.fmt = int(fmt);
  p.mx = reinterpret_cast<void*>(mx_ptr);
  p.arg = reinterpret_cast<int64_t*>(arg_ptr);
  p.gmax = reinterpret_cast<void*>(gmax_ptr);
  return p;
}

#define SEGFAST_NMS_ARGS                                                                       \
  uintptr_t b_ptr, int64_t dtype, int64_t s0, int64_t s4, uintptr_t cls_ptr, int64_t N,        \
      int64_t fmt, double threshold, uintptr_t keep_ptr
#define SEGFAST_NMS_PASS b_ptr, dtype, s0, s4, cls_ptr, N, fmt, threshold, keep_ptr

segfast::boxes::NmsProblem make_nms(SEGFAST_NMS_ARGS) {
  using namespace segfast;
  if (dtype != kFloat32 && dtype != kFloat16 && dtype != kBFloat16 && dtype != kFloat64)
    throw std::invalid_argument("segfast._C: box dtype must be a float dtype code (0-3)");
  if (fmt < 0 || fmt > 2) throw std::invalid_argument("segfast._C: fmt must be 0, 1 or 2");
  if (N < 0) throw std::invalid_argument("segfast._C: negative size");
  if (!(threshold >= 0.0 && threshold <= 1.0))
    throw std::invalid_argument("segfast._C: iou_threshold must be in [0, 1]");
  segfast::boxes::NmsProblem p;
  p.b = reinterpret_cast<const void*>(b_ptr);
  p.dtype = int(dtype);
  p.s0 = s0; p.s4 = s4;
  p.cls = reinterpret_cast<const int64_t*>(cls_ptr);
  p.N = N;
  p.fmt = int(fmt);
  p.threshold = threshold;
  p.keep = reinterpret_cast<uint8_t*>(keep_ptr);
  return p;
}

void iou_max_cpu(SEGFAST_IOU_MAX_ARGS, int64_t num_threads) {
  const auto p = make_iou_max(SEGFAST_IOU_MAX_PASS);
  py::gil_scoped_release nogil;
  segfast::boxes::box_iou_max_cpu(p, num_threads);
}

void iou_max_cuda(SEGFAST_IOU_MAX_ARGS, uintptr_t stream) {
  const auto p = make_iou_max(SEGFAST_IOU_MAX_PASS);
#ifdef SEGFAST_WITH_CUDA
  py::gil_scoped_release nogil;
  segfast::boxes::box_iou_max_cuda(p, stream);
#else
  (void)p; (void)stream;
  no_cuda();
#endif
}

void nms_keep_cpu(SEGFAST_NMS_ARGS) {
  const auto p = make_nms(SEGFAST_NMS_PASS);
  py::gil_scoped_release nogil;
  segfast::boxes::nms_cpu(p);
}

void nms_keep_cuda(SEGFAST_NMS_ARGS, uintptr_t mask_ptr, uintptr_t removed_ptr, uintptr_t stream) {
  const auto p = make_nms(SEGFAST_NMS_PASS);
#ifdef SEGFAST_WITH_CUDA
  py::gil_scoped_release nogil;
  segfast::boxes::nms_cuda(p, reinterpret_cast<void*>(mask_ptr), reinterpret_cast<void*>(removed_ptr),
                           stream);
#else
  (void)p; (void)mask_ptr; (void)removed_ptr; (void)stream;
  no_cuda();
#endif
}

// ---- end of the boxes_match family -------------------------------------------------

// ---- boxes family (IoU variants, box losses; csrc/cpu/boxes.cpp, csrc/cuda/boxes.cu) ----

}  // namespace

namespace segfast {
namespace boxes {
void box_pairwise_cpu(const BoxArg& a1, const BoxArg& a2, int64_t B, int64_t N, int64_t M, int kind, int fmt,
                      double eps, void* out, int out_dtype, int64_t nt);
void box_pairwise_grad_cpu(const BoxArg& a1, const BoxArg& a2, int64_t B, int64_t N, int64_t M, int kind,
                           int fmt, double eps, const void* go, void* d1, void* d2, int d_dtype, int64_t nt);
void box_aligned_cpu(const BoxArg& a1, const BoxArg& a2, int64_t K, int kind, int fmt, bool loss, double eps,
                     double offset, double sign, double gscale, void* out, int out_dtype, void* d1, void* d2,
                     int d_dtype, int64_t nt);
#ifdef SEGFAST_WITH_CUDA
void box_pairwise_cuda(const BoxArg& a1, const BoxArg& a2, int64_t B, int64_t N, int64_t M, int kind, int fmt,
                       double eps, void* out, int out_dtype, uintptr_t stream);
void box_pairwise_grad_cuda(const BoxArg& a1, const BoxArg& a2, int64_t B, int64_t N, int64_t M, int kind,
                            int fmt, double eps, const void* go, void* d1, void* d2, int d_dtype, uintptr_t stream);
void box_aligned_cuda(const BoxArg& a1, const BoxArg& a2, int64_t K, int kind, int fmt, bool loss, double eps,
                      double offset, double sign, double gscale, void* out, int out_dtype, void* d1, void* d2,
                      int d_dtype, uintptr_t stream);
#endif
}  // namespace boxes
}  // namespace segfast

namespace {

segfast::boxes::BoxArg box_arg(uintptr_t p, int64_t dtype, int64_t sB, int64_t sK, int64_t s4) {
  if (dtype < segfast::kFloat32 || dtype > segfast::kFloat64)
    throw std::invalid_argument("segfast._C: boxes must have a float dtype code (0-3)");
  return {reinterpret_cast<const void*>(p), int(dtype), sB, sK, s4};
}

void box_check(int64_t kind, int64_t fmt, int64_t out_dtype, int64_t d_dtype) {
  if (kind < 0 || kind > 3) throw std::invalid_argument("segfast._C: box kind must be 0-3");
  if (fmt < 0 || fmt > 2) throw std::invalid_argument("segfast._C: box format must be 0-2");
  if (out_dtype < 0 || out_dtype > 3 || d_dtype < 0 || d_dtype > 3)
    throw std::invalid_argument("segfast._C: box outputs must have a float dtype code (0-3)");
}

#define SEGFAST_BOX_PAIR_ARGS                                                                          \
  uintptr_t p1, int64_t dt1, int64_t sB1, int64_t sK1, int64_t s41, uintptr_t p2, int64_t dt2,        \
      int64_t sB2, int64_t sK2, int64_t s42, int64_t B, int64_t N, int64_t M, int64_t kind, int64_t fmt, \
      double eps
#define SEGFAST_BOX_ALIGNED_ARGS                                                                        \
  uintptr_t p1, int64_t dt1, int64_t sK1, int64_t s41, uintptr_t p2, int64_t dt2, int64_t sK2,        \
      int64_t s42, int64_t K, int64_t kind, int64_t fmt, bool loss, double eps, double offset,           \
      double sign, double gscale, uintptr_t out, int64_t out_dtype, uintptr_t d1, uintptr_t d2,          \
      int64_t d_dtype

void box_pairwise_any(SEGFAST_BOX_PAIR_ARGS, uintptr_t out, int64_t out_dtype, bool cuda, uintptr_t stream_or_nt) {
  box_check(kind, fmt, out_dtype, out_dtype);
  if (dt1 != dt2) throw std::invalid_argument("segfast._C: both box sets must have one dtype");
  const auto a1 = box_arg(p1, dt1, sB1, sK1, s41), a2 = box_arg(p2, dt2, sB2, sK2, s42);
  void* o = reinterpret_cast<void*>(out);
  py::gil_scoped_release nogil;
  if (!cuda) {
    segfast::boxes::box_pairwise_cpu(a1, a2, B, N, M, int(kind), int(fmt), eps, o, int(out_dtype),
                                     int64_t(stream_or_nt));
    return;
  }
#ifdef SEGFAST_WITH_CUDA
  segfast::boxes::box_pairwise_cuda(a1, a2, B, N, M, int(kind), int(fmt), eps, o, int(out_dtype), stream_or_nt);
#else
  no_cuda();
#endif
}

void box_pairwise_grad_any(SEGFAST_BOX_PAIR_ARGS, uintptr_t go, uintptr_t d1, uintptr_t d2, int64_t d_dtype,
                           bool cuda, uintptr_t stream_or_nt) {
  box_check(kind, fmt, d_dtype, d_dtype);
  if (dt1 != dt2) throw std::invalid_argument("segfast._C: both box sets must have one dtype");
  const auto a1 = box_arg(p1, dt1, sB1, sK1, s41), a2 = box_arg(p2, dt2, sB2, sK2, s42);
  const void* g = reinterpret_cast<const void*>(go);
  void* o1 = reinterpret_cast<void*>(d1);
  void* o2 = reinterpret_cast<void*>(d2);
  py::gil_scoped_release nogil;
  if (!cuda) {
    segfast::boxes::box_pairwise_grad_cpu(a1, a2, B, N, M, int(kind), int(fmt), eps, g, o1, o2, int(d_dtype),
                                          int64_t(stream_or_nt));
    return;
  }
#ifdef SEGFAST_WITH_CUDA
  segfast::boxes::box_pairwise_grad_cuda(a1, a2, B, N, M, int(kind), int(fmt), eps, g, o1, o2, int(d_dtype),
                                         stream_or_nt);
#else
  no_cuda();
#endif
}

void box_aligned_any(SEGFAST_BOX_ALIGNED_ARGS, bool cuda, uintptr_t stream_or_nt) {
  box_check(kind, fmt, out_dtype, d_dtype);
  if (dt1 != dt2) throw std::invalid_argument("segfast._C: both box sets must have one dtype");
  const auto a1 = box_arg(p1, dt1, 0, sK1, s41), a2 = box_arg(p2, dt2, 0, sK2, s42);
  void* o = reinterpret_cast<void*>(out);
  void* o1 = reinterpret_cast<void*>(d1);
  void* o2 = reinterpret_cast<void*>(d2);
  py::gil_scoped_release nogil;
  if (!cuda) {
    segfast::boxes::box_aligned_cpu(a1, a2, K, int(kind), int(fmt), loss, eps, offset, sign, gscale, o,
                                    int(out_dtype), o1, o2, int(d_dtype), int64_t(stream_or_nt));
    return;
  }
#ifdef SEGFAST_WITH_CUDA
  segfast::boxes::box_aligned_cuda(a1, a2, K, int(kind), int(fmt), loss, eps, offset, sign, gscale, o,
                                   int(out_dtype), o1, o2, int(d_dtype), stream_or_nt);
#else
  no_cuda();
#endif
}

// ---- end of the boxes family ----

}  // namespace

// ---- lovasz family ----------------------------------------------------------------

namespace segfast {
namespace lovasz {
void lovasz_weights_cpu(const Rows& a, int64_t num_threads);
void lovasz_softmax_rows_cpu(const SoftmaxRows& a, int64_t num_threads);
#ifdef SEGFAST_WITH_CUDA
void lovasz_weights_cuda(int64_t G, int64_t L, const int64_t* perm, const void* f, int f_dtype,
                         const void* v, int v_dtype, const double* total, void* w, int w_dtype,
                         uintptr_t stream);
#endif
}  // namespace lovasz
}  // namespace segfast

namespace {

void check_lovasz_dtypes(int64_t e_dtype, int64_t f_dtype, uintptr_t v_ptr, int64_t v_dtype,
                         int64_t w_dtype) {
  using namespace segfast;
  if (e_dtype != kFloat32 && e_dtype != kFloat64)
    throw std::invalid_argument("segfast._C: Lovász errors must be float32 or float64 (0, 3)");
  if (f_dtype < kFloat32 || f_dtype > kBool)
    throw std::invalid_argument("segfast._C: Lovász fg has an unknown dtype code");
  if (v_ptr && v_dtype != kBool && v_dtype != kUInt8)
    throw std::invalid_argument("segfast._C: Lovász valid must be bool or uint8 (7, 4)");
  if (w_dtype != kFloat32 && w_dtype != kFloat64)
    throw std::invalid_argument("segfast._C: Lovász weights must be float32 or float64 (0, 3)");
}

void lovasz_cpu(const std::vector<int64_t>& shape, uintptr_t e_ptr, int64_t e_dtype,
                const std::vector<int64_t>& es, uintptr_t f_ptr, int64_t f_dtype,
                const std::vector<int64_t>& fs, uintptr_t v_ptr, int64_t v_dtype,
                const std::vector<int64_t>& vs, uintptr_t w_ptr, int64_t w_dtype,
                int64_t num_threads) {
  check_lovasz_dtypes(e_dtype, f_dtype, v_ptr, v_dtype, w_dtype);
  if (shape.size() != 4 || es.size() != 4 || fs.size() != 4 || vs.size() != 4)
    throw std::invalid_argument("segfast._C: Lovász shape and strides must have 4 entries");
  for (int64_t d : shape)
    if (d < 0) throw std::invalid_argument("segfast._C: negative size");
  segfast::lovasz::Rows a;
  a.R1 = shape[0]; a.R2 = shape[1]; a.B = shape[2]; a.S = shape[3];
  a.e = reinterpret_cast<const void*>(e_ptr); a.e_dtype = int(e_dtype);
  a.f = reinterpret_cast<const void*>(f_ptr); a.f_dtype = int(f_dtype);
  a.v = reinterpret_cast<const void*>(v_ptr); a.v_dtype = int(v_dtype);
  a.w = reinterpret_cast<void*>(w_ptr); a.w_dtype = int(w_dtype);
  for (int i = 0; i < 4; ++i) { a.es[i] = es[i]; a.fs[i] = fs[i]; a.vs[i] = vs[i]; }
  py::gil_scoped_release nogil;
  segfast::lovasz::lovasz_weights_cpu(a, num_threads);
}

void lovasz_softmax_cpu(const std::vector<int64_t>& shape, uintptr_t p_ptr, int64_t p_dtype,
                        const std::vector<int64_t>& ps, uintptr_t lab_ptr, int64_t lab_dtype,
                        const std::vector<int64_t>& ls, uintptr_t cls_ptr, int64_t has_ignore,
                        double ignore_value, uintptr_t ws_ptr, int64_t w_dtype,
                        const std::vector<int64_t>& wss, uintptr_t loss_ptr, uintptr_t total_ptr,
                        int64_t num_threads) {
  using namespace segfast;
  check_lovasz_dtypes(p_dtype, kFloat32, 0, 0, w_dtype);
  if (lab_dtype != kUInt8 && lab_dtype != kInt32 && lab_dtype != kInt64)
    throw std::invalid_argument("segfast._C: Lovász-softmax labels must be uint8/int32/int64 (4-6)");
  if (shape.size() != 4 || ps.size() != 4 || ls.size() != 4 || wss.size() != 4)
    throw std::invalid_argument("segfast._C: Lovász shape and strides must have 4 entries");
  for (int64_t d : shape)
    if (d < 0) throw std::invalid_argument("segfast._C: negative size");
  if (!cls_ptr || !ws_ptr || !loss_ptr || !total_ptr)
    throw std::invalid_argument("segfast._C: Lovász-softmax needs cls, ws, loss and total");
  lovasz::SoftmaxRows a;
  a.R1 = shape[0]; a.R2 = shape[1]; a.B = shape[2]; a.S = shape[3];
  a.p = reinterpret_cast<const void*>(p_ptr); a.p_dtype = int(p_dtype);
  a.lab = reinterpret_cast<const void*>(lab_ptr); a.lab_dtype = int(lab_dtype);
  a.cls = reinterpret_cast<const int64_t*>(cls_ptr);
  a.has_ignore = has_ignore != 0; a.ignore_value = ignore_value;
  a.ws = reinterpret_cast<void*>(ws_ptr); a.w_dtype = int(w_dtype);
  a.loss = reinterpret_cast<void*>(loss_ptr); a.total = reinterpret_cast<void*>(total_ptr);
  for (int i = 0; i < 4; ++i) { a.ps[i] = ps[i]; a.ls[i] = ls[i]; a.wss[i] = wss[i]; }
  py::gil_scoped_release nogil;
  lovasz::lovasz_softmax_rows_cpu(a, num_threads);
}

void lovasz_cuda(int64_t G, int64_t L, uintptr_t perm_ptr, uintptr_t f_ptr, int64_t f_dtype,
                 uintptr_t v_ptr, int64_t v_dtype, uintptr_t total_ptr, uintptr_t w_ptr,
                 int64_t w_dtype, uintptr_t stream) {
  check_lovasz_dtypes(segfast::kFloat32, f_dtype, v_ptr, v_dtype, w_dtype);
  if (G < 0 || L < 0) throw std::invalid_argument("segfast._C: negative size");
#ifdef SEGFAST_WITH_CUDA
  py::gil_scoped_release nogil;
  segfast::lovasz::lovasz_weights_cuda(
      G, L, reinterpret_cast<const int64_t*>(perm_ptr), reinterpret_cast<const void*>(f_ptr),
      int(f_dtype), reinterpret_cast<const void*>(v_ptr), int(v_dtype),
      reinterpret_cast<const double*>(total_ptr), reinterpret_cast<void*>(w_ptr), int(w_dtype),
      stream);
#else
  (void)perm_ptr; (void)f_ptr; (void)v_ptr; (void)total_ptr; (void)w_ptr; (void)stream;
  no_cuda();
#endif
}

}  // namespace

namespace {

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

// ---- build and runtime versions (csrc/cuda/runtime_info.cu) -----------------------
#ifdef SEGFAST_WITH_CUDA
namespace segfast {
namespace cuda {
int runtime_version();
int driver_version();
}  // namespace cuda
}  // namespace segfast
#endif

namespace {
int cuda_runtime_version() {
#ifdef SEGFAST_WITH_CUDA
  return segfast::cuda::runtime_version();
#else
  return 0;
#endif
}

int cuda_driver_version() {
#ifdef SEGFAST_WITH_CUDA
  return segfast::cuda::driver_version();
#else
  return 0;
#endif
}
}  // namespace
// ---- end of build and runtime versions ---------------------------------------------

// ---- cached CPU blocks as DLPack tensors (csrc/cpu/block_cache.h) ----------------
// The DLPack ABI (dlpack.h, v0.8 "dltensor" capsules), declared here so the
// module needs no header of PyTorch's: torch.from_dlpack takes the capsule,
// renames it "used_dltensor" and calls the deleter when its storage dies.
namespace dlpack {
struct Device { int32_t device_type, device_id; };
struct DataType { uint8_t code, bits; uint16_t lanes; };
struct Tensor {
  void* data;
  Device device;
  int32_t ndim;
  DataType dtype;
  int64_t* shape;
  int64_t* strides;
  uint64_t byte_offset;
};
struct ManagedTensor {
  Tensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(ManagedTensor*);
};
constexpr int32_t kCPU = 1;
constexpr uint8_t kUInt = 1;

struct Block {  // one 1-D uint8 tensor over a cached block
  ManagedTensor mt;
  int64_t shape[1], strides[1];
};

void delete_block(ManagedTensor* t) {
  segfast::cpu::block_release(t->dl_tensor.data);
  delete static_cast<Block*>(t->manager_ctx);
}

py::capsule cpu_block(int64_t nbytes) {
  if (nbytes <= 0) throw std::invalid_argument("cpu_block: nbytes must be > 0");
  std::unique_ptr<Block> owner(new Block);
  void* p = segfast::cpu::block_acquire(uint64_t(nbytes));
  if (p == nullptr) throw std::bad_alloc();
  Block* b = owner.release();
  b->shape[0] = nbytes;
  b->strides[0] = 1;
  b->mt.dl_tensor = {p, {kCPU, 0}, 1, {kUInt, 8, 1}, b->shape, b->strides, 0};
  b->mt.manager_ctx = b;
  b->mt.deleter = delete_block;
  PyObject* cap = PyCapsule_New(&b->mt, "dltensor", [](PyObject* c) {
    if (PyCapsule_IsValid(c, "dltensor")) {  // never consumed: the capsule owns the block
      auto* t = static_cast<ManagedTensor*>(PyCapsule_GetPointer(c, "dltensor"));
      t->deleter(t);
    }
  });
  if (cap == nullptr) {
    delete_block(&b->mt);
    throw py::error_already_set();
  }
  return py::reinterpret_steal<py::capsule>(cap);
}
}  // namespace dlpack

// ---- metrics family, CUDA (csrc/cuda/metrics.cu; the CPU kernels register their own bindings in
// csrc/cpu/metrics.cpp, compiled once for _C and _C_emu) ------------------------------------------

#include "common/metrics.h"

namespace segfast {
namespace metrics {
#ifdef SEGFAST_WITH_CUDA
void confusion_cuda(const ConfusionProblem& p, uintptr_t stream);
void coco_match_cuda(const CocoMatchProblem& p, void* scratch, int64_t scratch_bytes, uintptr_t stream);
#endif
}  // namespace metrics
}  // namespace segfast

namespace {

void confusion_cuda(uintptr_t x, int64_t x_dtype, bool logits, int64_t N, int64_t C, int64_t S, int64_t xsN,
                    int64_t xsC, int64_t xsS, uintptr_t t, int64_t t_dtype, int64_t tsN, int64_t tsS,
                    bool has_ignore, int64_t ignore, uintptr_t out, uintptr_t stream) {
  using namespace segfast;
  const auto is_index = [](int64_t code) { return code == kUInt8 || code == kInt32 || code == kInt64; };
  if (logits ? !dtype_is_float(int(x_dtype)) : !is_index(x_dtype))
    throw std::invalid_argument("segfast._C: confusion_cuda: preds must be float logits or uint8/int32/int64 "
                                "class indices");
  if (!is_index(t_dtype)) throw std::invalid_argument("segfast._C: confusion_cuda: targets must be uint8/int32/int64");
  if (N < 0 || S < 0 || C < 1 || C >= (int64_t(1) << 31))
    throw std::invalid_argument("segfast._C: confusion_cuda: bad sizes");
  metrics::ConfusionProblem p;
  p.x = reinterpret_cast<const void*>(x);
  p.x_dtype = int(x_dtype);
  p.logits = logits;
  p.xsN = xsN; p.xsC = xsC; p.xsS = xsS;
  p.t = reinterpret_cast<const void*>(t);
  p.t_dtype = int(t_dtype);
  p.tsN = tsN; p.tsS = tsS;
  p.N = N; p.C = C; p.S = S;
  p.has_ignore = has_ignore;
  p.ignore = ignore;
  p.out = reinterpret_cast<int64_t*>(out);
#ifdef SEGFAST_WITH_CUDA
  py::gil_scoped_release nogil;
  metrics::confusion_cuda(p, stream);
#else
  (void)p; (void)stream;
  no_cuda();
#endif
}

void coco_match_cuda(uintptr_t groups, int64_t n_groups, uintptr_t gt_off, uintptr_t dt_off, uintptr_t gt_box,
                     uintptr_t gt_area, uintptr_t gt_crowd, uintptr_t gt_idnz, uintptr_t dt_box, uintptr_t thr,
                     uintptr_t area_rng, int64_t T, int64_t A, int64_t max_gts, uintptr_t code, uintptr_t scratch,
                     int64_t scratch_bytes, uintptr_t stream) {
  using namespace segfast;
  if (n_groups < 0 || T < 1 || A < 1 || max_gts < 0)
    throw std::invalid_argument("segfast._C: coco_match_cuda: bad sizes");
  metrics::CocoMatchProblem p;
  p.groups = reinterpret_cast<const int64_t*>(groups);
  p.n_groups = n_groups;
  p.gt_off = reinterpret_cast<const int64_t*>(gt_off);
  p.dt_off = reinterpret_cast<const int64_t*>(dt_off);
  p.gt_box = reinterpret_cast<const double*>(gt_box);
  p.gt_area = reinterpret_cast<const double*>(gt_area);
  p.gt_crowd = reinterpret_cast<const uint8_t*>(gt_crowd);
  p.gt_idnz = reinterpret_cast<const uint8_t*>(gt_idnz);
  p.dt_box = reinterpret_cast<const double*>(dt_box);
  p.thr = reinterpret_cast<const double*>(thr);
  p.area_rng = reinterpret_cast<const double*>(area_rng);
  p.T = T; p.A = A; p.max_gts = max_gts;
  p.code = reinterpret_cast<uint8_t*>(code);
#ifdef SEGFAST_WITH_CUDA
  py::gil_scoped_release nogil;
  metrics::coco_match_cuda(p, reinterpret_cast<void*>(scratch), scratch_bytes, stream);
#else
  (void)p; (void)scratch; (void)scratch_bytes; (void)stream;
  no_cuda();
#endif
}

void register_metrics_cuda(py::module_& m) {
  m.def("confusion_cuda", &confusion_cuda,
        "out[target*C + pred] += 1 (int64 [C*C+1] on the device; last slot: targets outside [0, C) that are "
        "not ignore_index, and class-index preds outside [0, C)) with pred the argmax over C of logits "
        "x [N, C, S] (logits=True) or the class indices x [N, S]; targets [N, S]; element strides.",
        py::arg("x"), py::arg("x_dtype"), py::arg("logits"), py::arg("N"), py::arg("C"), py::arg("S"),
        py::arg("xsN"), py::arg("xsC"), py::arg("xsS"), py::arg("t"), py::arg("t_dtype"), py::arg("tsN"),
        py::arg("tsS"), py::arg("has_ignore"), py::arg("ignore"), py::arg("out"), py::arg("stream"));
  m.def("coco_match_cuda", &coco_match_cuda,
        "COCO greedy matching of the (category, image) groups listed in groups [n_groups] (csrc/common/metrics.h "
        "CocoMatchProblem): code [D, A, T] uint8 (0 ignored, 1 tp, 2 fp), as coco_eval's; scratch: device bytes, "
        "at least coco_match_scratch_bytes(max_gts, A, T, n_groups) (0: none needed).",
        py::arg("groups"), py::arg("n_groups"), py::arg("gt_off"), py::arg("dt_off"), py::arg("gt_box"),
        py::arg("gt_area"), py::arg("gt_crowd"), py::arg("gt_idnz"), py::arg("dt_box"), py::arg("thr"),
        py::arg("area_rng"), py::arg("T"), py::arg("A"), py::arg("max_gts"), py::arg("code"), py::arg("scratch"),
        py::arg("scratch_bytes"), py::arg("stream"));
  m.def("coco_match_scratch_bytes", &segfast::metrics::coco_match_scratch_bytes,
        "Global scratch bytes coco_match_cuda needs for groups of at most max_gts gts (0 when a block's state "
        "fits its shared memory).",
        py::arg("max_gts"), py::arg("A"), py::arg("T"), py::arg("n_groups"));
}

}  // namespace

// ---- end of the metrics family, CUDA ----------------------------------------------------------

namespace segfast { namespace metrics { void register_metrics(py::module_& m); } }  // csrc/cpu/metrics.cpp

#ifdef SEGFAST_CUDA_EMU
// segfast._C_emu: this file again, with the csrc/cuda kernels compiled as C++
// against the CUDA emulation layer (csrc/emu) and run on the CPU.
void segfast_emu_register(py::module_& m);
#define SEGFAST_MODULE_NAME _C_emu
#else
#define SEGFAST_MODULE_NAME _C
#endif

PYBIND11_MODULE(SEGFAST_MODULE_NAME, m) {
  segfast::metrics::register_metrics(m);  // metrics family
  register_metrics_cuda(m);               // metrics family, CUDA
  m.doc() = "segfast compiled kernels (CPU/OpenMP and, when built, CUDA); no libtorch";
#ifdef SEGFAST_CUDA_EMU
  segfast_emu_register(m);
#endif

  m.def("has_cuda", []() {
#ifdef SEGFAST_WITH_CUDA
    return true;
#else
    return false;
#endif
  }, "True if the CUDA kernels were compiled in.");
  m.def("cuda_archs", &cuda_archs,
        "CUDA architectures compiled in (CMAKE_CUDA_ARCHITECTURES entries); [] without CUDA.");
  m.def("cuda_runtime_version", &cuda_runtime_version,
        "CUDA runtime (cudart, linked statically) the kernels were built with, as 1000 * major + "
        "10 * minor (12080: 12.8); 0 without CUDA.");
  m.def("cuda_driver_version", &cuda_driver_version,
        "CUDA version the installed driver supports (cudaDriverGetVersion, same encoding); 0 without "
        "CUDA kernels or without a driver.");
  m.def("manylinux_build", []() {
#ifdef SEGFAST_MANYLINUX
    return true;
#else
    return false;
#endif
  }, "True if built with SEGFAST_MANYLINUX=ON (static libstdc++, glibc symbols <= 2.28).");
  m.def("openmp_max_threads", &segfast::region::openmp_max_threads,
        "omp_get_max_threads() in the extension's OpenMP runtime.");
  m.def("region_isa", &segfast::region::region_isa,
        "The instruction set whose build the CPU region kernels run: 'avx512', 'avx2' or 'baseline' "
        "(SEGFAST_CPU_ISA, else the best the CPU has; read once per process). ValueError for a "
        "SEGFAST_CPU_ISA that is not one of these or that this CPU or build cannot run.");
  m.def("advise_huge_pages", &segfast::cpu::advise_huge_pages,
        "madvise(MADV_HUGEPAGE) on the whole 2 MiB pages inside [ptr, ptr + nbytes) (Linux; "
        "else a no-op); 0 or madvise's -1.",
        py::arg("ptr"), py::arg("nbytes"));
  m.def("cpu_block", &dlpack::cpu_block,
        "A DLPack capsule of a 1-D uint8 CPU tensor of nbytes over a block of the output "
        "cache (csrc/cpu/block_cache.h): page-aligned, uninitialised, returned to the cache "
        "when the tensor is freed.",
        py::arg("nbytes"));
  m.def("label_range_cpu",
        [](uintptr_t t_ptr, int64_t t_dtype, int64_t rows, int64_t len, int64_t sR, int64_t sL,
           int64_t has_ignore, int64_t ignore_value, int64_t num_threads) {
          if (t_dtype != segfast::kUInt8 && t_dtype != segfast::kBool && t_dtype != segfast::kInt32 &&
              t_dtype != segfast::kInt64)
            throw std::invalid_argument("segfast._C: label_range_cpu needs uint8/bool/int32/int64 labels");
          if (rows < 0 || len < 0) throw std::invalid_argument("segfast._C: negative size");
          int64_t lo = 0, hi = 0;
          {
            py::gil_scoped_release nogil;
            segfast::cpu::label_range(reinterpret_cast<const void*>(t_ptr), int(t_dtype), rows, len, sR,
                                      sL, has_ignore != 0, ignore_value,
                                      int(num_threads > 0 ? num_threads : 1), &lo, &hi);
          }
          return py::make_tuple(lo, hi);
        },
        "(min, max) of labels t[r*sR + i*sL], r < rows, i < len; with has_ignore, labels equal "
        "to ignore_value count as 0 or not at all (min > max when nothing else is left).",
        py::arg("t_ptr"), py::arg("t_dtype"), py::arg("rows"), py::arg("len"), py::arg("sR"),
        py::arg("sL"), py::arg("has_ignore"), py::arg("ignore_value"), py::arg("num_threads"));
  m.def("block_cache_trim", &segfast::cpu::block_cache_trim,
        "Free every cached block; returns the bytes freed.");
  m.def("block_cache_set_limit", &segfast::cpu::block_cache_set_limit,
        "Most bytes the cache keeps (0: none); frees the oldest blocks beyond it.",
        py::arg("bytes"));
  m.def("block_cache_stats", []() {
    const auto s = segfast::cpu::block_cache_stats();
    py::dict d;
    d["cached_bytes"] = s.cached_bytes;
    d["cached_blocks"] = s.cached_blocks;
    d["live_bytes"] = s.live_bytes;
    d["live_blocks"] = s.live_blocks;
    d["hits"] = s.hits;
    d["misses"] = s.misses;
    d["limit"] = s.limit;
    return d;
  }, "The output cache's counters.");

  const char* stats_doc =
      "Partial region sums: out [N, P, C, K] contiguous, K = 9 with xent else 7 (float64 if x is float64 else float32); "
      "chunk j of P covers pixels [j*L, min((j+1)*L, S)), L = ceil(S/P). cpu: mr_ptr, when not 0, "
      "receives the grad pass's per-pixel max and 1/sum (see region_grad_cpu); p_ptr, when not 0, "
      "the float32 v*p [N, C, S] at strides psN, psC, 1 (see region_grad_probs_cpu); conf_ptr, "
      "when not 0 (class-index targets), the int64 [C, C] contiguous confusion counts, added to: "
      "conf[label, argmax_c x] += 1 per valid pixel (first maximum, NaN as the maximum). cuda, "
      "class-index targets: flag_ptr, when not 0, an int32 set to 1 by a label outside "
      "[0, C + label_offset) that is not ignore_index; confusion_ptr, when not 0, as conf_ptr.";
  const char* grad_doc =
      "dLoss/dx from g = dLoss/dStats [N, C, K] contiguous (accumulation dtype); dx has x's "
      "dtype and strides dxsN, dxsC, dxsS. cpu: mr_ptr, when not 0, is the float32 [2, N, S] "
      "of per-pixel max and 1/sum that region_stats_cpu wrote (softmax, class-index targets, "
      "x not float64), so the grad pass skips the max. cuda: go_ptr, when not 0, one value in g's "
      "dtype (a scalar loss's grad_output) that scales dx, read on the device.";

  m.def("region_stats_cpu", &stats_cpu, stats_doc, py::arg("x_ptr"), py::arg("x_dtype"),
        py::arg("xsN"), py::arg("xsC"), py::arg("xsS"), py::arg("t_ptr"), py::arg("t_dtype"),
        py::arg("t_is_label"), py::arg("tsN"), py::arg("tsC"), py::arg("tsS"), py::arg("N"),
        py::arg("C"), py::arg("S"), py::arg("P"), py::arg("act"), py::arg("xent"), py::arg("gamma"), py::arg("label_offset"),
        py::arg("has_ignore"), py::arg("ignore_value"), py::arg("out_ptr"),
        py::arg("num_threads"), py::arg("mr_ptr") = 0, py::arg("p_ptr") = 0, py::arg("psN") = 0,
        py::arg("psC") = 0, py::arg("conf_ptr") = 0);
  m.attr("REGION_GRAD_PROBS") = py::bool_(segfast::region::grad_probs_built());
  m.def("region_keeps_cpu", &segfast::region::region_keeps,
        "What region_stats_cpu keeps for the grad pass with these inputs, as bits: 1, each pixel's "
        "softmax max and 1/sum (mr_ptr, [2, N, S] float32); 2, v*p in the gradient's buffer (p_ptr, "
        "then region_grad_probs_cpu); 0, neither.",
        py::arg("x_dtype"), py::arg("t_is_label"), py::arg("act"), py::arg("xent"), py::arg("C"),
        py::arg("xsS"));
  m.def("region_grad_probs_cpu", &grad_probs_cpu,
        "dLoss/dx written over q = v p [N, C, S] (float32, unit pixel stride), which "
        "region_stats_cpu wrote at p_ptr (softmax, class-index targets, no pixel term), from "
        "g = dLoss/dStats [N, C, 7] float32 contiguous.",
        py::arg("q_ptr"), py::arg("q_dtype"), py::arg("qsN"), py::arg("qsC"), py::arg("qsS"),
        py::arg("t_ptr"), py::arg("t_dtype"), py::arg("t_is_label"), py::arg("tsN"), py::arg("tsC"),
        py::arg("tsS"), py::arg("N"), py::arg("C"), py::arg("S"), py::arg("label_offset"),
        py::arg("has_ignore"), py::arg("ignore_value"), py::arg("g_ptr"), py::arg("num_threads"));
  m.def("region_grad_cpu", &grad_cpu, grad_doc, py::arg("x_ptr"), py::arg("x_dtype"),
        py::arg("xsN"), py::arg("xsC"), py::arg("xsS"), py::arg("t_ptr"), py::arg("t_dtype"),
        py::arg("t_is_label"), py::arg("tsN"), py::arg("tsC"), py::arg("tsS"), py::arg("N"),
        py::arg("C"), py::arg("S"), py::arg("act"), py::arg("xent"), py::arg("gamma"), py::arg("label_offset"),
        py::arg("has_ignore"), py::arg("ignore_value"), py::arg("g_ptr"), py::arg("dx_ptr"),
        py::arg("dxsN"), py::arg("dxsC"), py::arg("dxsS"), py::arg("num_threads"),
        py::arg("mr_ptr") = 0);
  m.def("region_stats_cuda", &stats_cuda, stats_doc, py::arg("x_ptr"), py::arg("x_dtype"),
        py::arg("xsN"), py::arg("xsC"), py::arg("xsS"), py::arg("t_ptr"), py::arg("t_dtype"),
        py::arg("t_is_label"), py::arg("tsN"), py::arg("tsC"), py::arg("tsS"), py::arg("N"),
        py::arg("C"), py::arg("S"), py::arg("P"), py::arg("act"), py::arg("xent"), py::arg("gamma"), py::arg("label_offset"),
        py::arg("has_ignore"), py::arg("ignore_value"), py::arg("out_ptr"), py::arg("stream"),
        py::arg("flag_ptr") = 0, py::arg("confusion_ptr") = 0);
  m.def("region_grad_cuda", &grad_cuda, grad_doc, py::arg("x_ptr"), py::arg("x_dtype"),
        py::arg("xsN"), py::arg("xsC"), py::arg("xsS"), py::arg("t_ptr"), py::arg("t_dtype"),
        py::arg("t_is_label"), py::arg("tsN"), py::arg("tsC"), py::arg("tsS"), py::arg("N"),
        py::arg("C"), py::arg("S"), py::arg("act"), py::arg("xent"), py::arg("gamma"), py::arg("label_offset"),
        py::arg("has_ignore"), py::arg("ignore_value"), py::arg("g_ptr"), py::arg("dx_ptr"),
        py::arg("dxsN"), py::arg("dxsC"), py::arg("dxsS"), py::arg("stream"), py::arg("go_ptr") = 0);
  m.attr("REGION_FINISH_MAX_C") = py::int_(segfast::region::kFinishMaxC);
  m.def("region_finish_cuda", &finish_cuda,
        "The region loss from the stats kernel's partial sums part [N, P, C, KO] (float32, or float64 "
        "with dtype, contiguous), one block: sums [N, C, KO] (the sums over the chunks), coef "
        "[N, C, KO] (dLoss/dsums at grad_output 1), loss (one value), ok (one uint8: 1 unless the "
        "int32 at flag_ptr is set; flag_ptr 0: 1). w_ptr, pw_ptr: the region term's and the pixel "
        "term's class weights [C] in the sums' dtype, or 0. The formula: csrc/common/region.h Finish "
        "(triton_kernels/region_finish.py).",
        py::arg("part_ptr"), py::arg("sums_ptr"), py::arg("coef_ptr"), py::arg("loss_ptr"), py::arg("ok_ptr"),
        py::arg("flag_ptr"), py::arg("w_ptr"), py::arg("pw_ptr"), py::arg("dtype"), py::arg("N"), py::arg("C"),
        py::arg("P"), py::arg("KO"), py::arg("cI"), py::arg("dI"), py::arg("dP"), py::arg("dT"), py::arg("nr"),
        py::arg("dr"), py::arg("gamma"), py::arg("lam_r"), py::arg("scale_r"), py::arg("lam_x"), py::arg("eps"),
        py::arg("ws"), py::arg("wp"), py::arg("gdl"), py::arg("batch"), py::arg("log"), py::arg("c0"),
        py::arg("xent"), py::arg("stream"));

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
      py::arg("dxsN"), py::arg("dxsC"), py::arg("dxsS"), py::arg("go_scalar")
  m.def("pixel_loss_cpu", &pixel_cpu, pixel_doc, SEGFAST_PIXEL_PYARGS, py::arg("num_threads"));
  m.def("pixel_loss_cuda", &pixel_cuda, pixel_doc, SEGFAST_PIXEL_PYARGS, py::arg("stream"));
  m.def("pixel_reduced_cuda", &pixel_reduced_cuda,
        "A reduced pixel loss whole on the device (pixel_loss_cuda's arguments and norm 0-2: sum, count, "
        "class weights): with out_ptr, the loss and its normaliser into out_ptr / den_ptr (0-d), loss_ptr "
        "an [N, P, 4] workspace, counter_ptr a uint32 that is 0 (and is left 0); without, dx for the "
        "single grad_output go_ptr scaled by go / den (den_ptr).",
        SEGFAST_PIXEL_PYARGS, py::arg("norm"), py::arg("out_ptr"), py::arg("den_ptr"), py::arg("counter_ptr"),
        py::arg("stream"));
#undef SEGFAST_PIXEL_PYARGS

  // ---- boxes_match family ----
  const char* iou_max_doc =
      "box_iou_max: boxes [B, N, 4], gt [B, M, 4] (element strides; batch stride 0 broadcasts), "
      "optional gt_valid [B, M] uint8 (valid_ptr 0: all valid) -> mx [B, N] and gmax [B, M] "
      "(float64 for float64 boxes else float32; gmax zero-initialised by the caller, invalid gts "
      "left at 0), arg [B, N] int64; all outputs contiguous.";
  const char* nms_doc =
      "Greedy NMS over boxes [N, 4] already sorted by decreasing score (strides s0, s4); "
      "optional classes cls [N] int64 contiguous (0: one class); keep [N] uint8 out.";
#define SEGFAST_IOU_MAX_PYARGS                                                                 \
  py::arg("a_ptr"), py::arg("a_dtype"), py::arg("asB"), py::arg("asN"), py::arg("as4"),        \
      py::arg("g_ptr"), py::arg("gsB"), py::arg("gsM"), py::arg("gs4"), py::arg("valid_ptr"),  \
      py::arg("vsB"), py::arg("vsM"), py::arg("B"), py::arg("N"), py::arg("M"), py::arg("fmt"), \
      py::arg("mx_ptr"), py::arg("arg_ptr"), py::arg("gmax_ptr")
#define SEGFAST_NMS_PYARGS                                                                     \
  py::arg("b_ptr"), py::arg("dtype"), py::arg("s0"), py::arg("s4"), py::arg("cls_ptr"),        \
      py::arg("N"), py::arg("fmt"), py::arg("threshold"), py::arg("keep_ptr")
  m.def("box_iou_max_cpu", &iou_max_cpu, iou_max_doc, SEGFAST_IOU_MAX_PYARGS, py::arg("num_threads"));
  m.def("box_iou_max_cuda", &iou_max_cuda, iou_max_doc, SEGFAST_IOU_MAX_PYARGS, py::arg("stream"));
  m.def("nms_keep_cpu", &nms_keep_cpu, nms_doc, SEGFAST_NMS_PYARGS);
  m.def("nms_keep_cuda", &nms_keep_cuda, nms_doc, SEGFAST_NMS_PYARGS, py::arg("mask_ptr"),
        py::arg("removed_ptr"), py::arg("stream"));
#undef SEGFAST_IOU_MAX_PYARGS
#undef SEGFAST_NMS_PYARGS
  // ---- end of the boxes_match family ----

  // ---- boxes family ----
  m.def("box_pairwise", &box_pairwise_any,
        "IoU variant (kind 0-3: IoU, GIoU, DIoU, CIoU) of every pair: out [B, N, M] contiguous in out_dtype. "
        "Boxes [B, K, 4] with element strides; fmt 0-2 (xyxy, xywh, cxcywh); last arg: threads (cpu) or stream.",
        py::arg("p1"), py::arg("dt1"), py::arg("sB1"), py::arg("sK1"), py::arg("s41"), py::arg("p2"),
        py::arg("dt2"), py::arg("sB2"), py::arg("sK2"), py::arg("s42"), py::arg("B"), py::arg("N"), py::arg("M"),
        py::arg("kind"), py::arg("fmt"), py::arg("eps"), py::arg("out"), py::arg("out_dtype"), py::arg("cuda"),
        py::arg("stream_or_threads"));
  m.def("box_pairwise_grad", &box_pairwise_grad_any,
        "Gradients of sum(go * pairwise) for boxes1 (d1 [B, N, 4]) and boxes2 (d2 [B, M, 4]), contiguous, "
        "d_dtype; go [B, N, M] contiguous in the compute type; a null d pointer skips that pass.",
        py::arg("p1"), py::arg("dt1"), py::arg("sB1"), py::arg("sK1"), py::arg("s41"), py::arg("p2"),
        py::arg("dt2"), py::arg("sB2"), py::arg("sK2"), py::arg("s42"), py::arg("B"), py::arg("N"), py::arg("M"),
        py::arg("kind"), py::arg("fmt"), py::arg("eps"), py::arg("go"), py::arg("d1"), py::arg("d2"),
        py::arg("d_dtype"), py::arg("cuda"), py::arg("stream_or_threads"));
  m.def("box_aligned", &box_aligned_any,
        "Aligned pairs, one pass: out [K] = offset + sign * value (loss: torchvision's loss eps semantics) and "
        "d1, d2 [K, 4] = gscale * d value / d box (null pointers skip them).",
        py::arg("p1"), py::arg("dt1"), py::arg("sK1"), py::arg("s41"), py::arg("p2"), py::arg("dt2"),
        py::arg("sK2"), py::arg("s42"), py::arg("K"), py::arg("kind"), py::arg("fmt"), py::arg("loss"),
        py::arg("eps"), py::arg("offset"), py::arg("sign"), py::arg("gscale"), py::arg("out"),
        py::arg("out_dtype"), py::arg("d1"), py::arg("d2"), py::arg("d_dtype"), py::arg("cuda"),
        py::arg("stream_or_threads"));

  // ---- lovasz family ----
  const char* lovasz_doc =
      "Lovász weights (segfast/ops/lovasz.py lovasz_sort_weights) of the segments (r1, r2) of "
      "pixels (b, s): shape [R1, R2, B, S], element strides per tensor; valid_ptr 0 = all "
      "valid; w written contiguous [R1*R2, B*S].";
  m.def("lovasz_weights_cpu", &lovasz_cpu, lovasz_doc, py::arg("shape"), py::arg("e_ptr"),
        py::arg("e_dtype"), py::arg("e_strides"), py::arg("f_ptr"), py::arg("f_dtype"),
        py::arg("f_strides"), py::arg("v_ptr"), py::arg("v_dtype"), py::arg("v_strides"),
        py::arg("w_ptr"), py::arg("w_dtype"), py::arg("num_threads"));
  m.def("lovasz_softmax_rows_cpu", &lovasz_softmax_cpu,
        "Fused Lovász-softmax rows (csrc/common/lovasz.h SoftmaxRows): from probabilities p and "
        "labels, per segment (r1, r2) = class cls[r2]: ws = dLoss/dp (signed weights) at strides "
        "ws_strides, loss [R1*R2] and total [R1*R2] in w_dtype.",
        py::arg("shape"), py::arg("p_ptr"), py::arg("p_dtype"), py::arg("p_strides"),
        py::arg("lab_ptr"), py::arg("lab_dtype"), py::arg("lab_strides"), py::arg("cls_ptr"),
        py::arg("has_ignore"), py::arg("ignore_value"), py::arg("ws_ptr"), py::arg("w_dtype"),
        py::arg("ws_strides"), py::arg("loss_ptr"), py::arg("total_ptr"), py::arg("num_threads"));
  m.def("lovasz_weights_cuda", &lovasz_cuda,
        "Lovász weights of G rows of L pixels from perm [G*L] int64 (flat indices sorting each "
        "row by error descending, invalid pixels last), contiguous fg / valid [G*L] and "
        "total [G] float64 (Σ valid fg); writes w [G*L] through perm.",
        py::arg("G"), py::arg("L"), py::arg("perm_ptr"), py::arg("f_ptr"), py::arg("f_dtype"),
        py::arg("v_ptr"), py::arg("v_dtype"), py::arg("total_ptr"), py::arg("w_ptr"),
        py::arg("w_dtype"), py::arg("stream"));

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
