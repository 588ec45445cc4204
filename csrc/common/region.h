// Region family (Dice / IoU / Tversky ...): math shared by the CPU and CUDA
// kernels. Everything here is __host__ __device__ (SEGFAST_HD) so the CPU
// build compiles it as plain C++ and the CPU tests exercise it.
//
// Per (image n, class c) plane the kernels compute the K = 7 sums, in order
//   I = sum v*p*t, P = sum v*p, T = sum v*t, V = sum v,
//   PP = sum v*p^2, TT = sum v*t^2, M = sum v*min(p, t)
// with p = act(x) and (t, v) decoded from the target (see region_target).
// With a pixel term (softmax, class-index targets: the pixel half of sums
// such as Dice + CE) two more follow, so the sum still costs two passes.
// With -log p = logsumexp(x) - x and y the pixel's label:
//   kXentCE:    S7 = sum v*t*(-log p), S8 = sum v*(-log p) (label smoothing)
//   kXentFocal: S7 = sum v*t*(1 - p)^gamma*(-log p), S8 = 0
//   kXentFused: S7 = the CE sum, S8 = sum v*t*h, h = -log(1 - p_0) =
//               logsumexp(x) - logsumexp(x_1..C-1) (positive sharing; the
//               formula uses S8 of the foreground planes only)
// Their gradient is added in the grad pass through dL/d(log p_c) = -v b_c:
//   dx_k += v (p_k B - b_k), B = sum_c b_c, with
//   CE: b_c = gS8_c + [c == y] gS7_c;  focal: b_c = [c == y] gS7_y q(p_y)
//   (q = -d f/d log p of f = -(1 - p)^gamma log p); fused: b_c = [c == y]
//   gS7_c + [c >= 1] gS8_y p_c / (1 - p_0).
#pragma once

#include <cmath>
#include <cstdint>

#include "dtypes.h"
#include "pixel_terms.h"  // exp_t, the focal power
#include "problem.h"

namespace segfast {
namespace region {

using segfast::expf_reduced;  // region::expf_reduced, the CPU CRF kernels' exp

constexpr int K = 7;
constexpr int KX = 9;  // with a pixel term's sums
enum Stat : int { kI = 0, kP = 1, kT = 2, kV = 3, kPP = 4, kTT = 5, kM = 6, kS7 = 7, kS8 = 8 };
enum Xent : int { kXentNone = 0, kXentCE = 1, kXentFocal = 2, kXentFused = 3 };
enum Act : int { kIdentity = 0, kSigmoid = 1, kSoftmax = 2 };

// Everything a region kernel needs to read x and the target (problem.h), and
// the activation.
struct Problem : Inputs {
  int act;
  int xent;      // Xent: a pixel term's sums too (softmax, class-index targets only)
  double gamma;  // kXentFocal
};

// Sums per plane in the kernels' output and dLoss/dStats input.
SEGFAST_HD int num_stats(const Problem& pr) { return pr.xent ? KX : K; }

// ---- activations ----------------------------------------------------------------

// Numerically stable sigmoid: e = exp(-|x|) never overflows.
template <typename T>
SEGFAST_HD T sigmoid(T x) {
  const T ax = x < T(0) ? -x : x;
  const T e = exp_t(-ax);
  const T inv = T(1) / (T(1) + e);
  return x >= T(0) ? inv : e * inv;
}

// ---- target decoding ------------------------------------------------------------

// Label pixel -> the class it marks, or -1 for "no class" (ignored pixel, or a
// label outside [label_offset, label_offset + C)); *valid gets v.
SEGFAST_HD int64_t decode_label(int64_t label, int64_t C, int64_t label_offset,
                                bool has_ignore, double ignore_value, bool* valid) {
  const bool ign = has_ignore && label == int64_t(ignore_value);
  *valid = !ign;
  const int64_t c = label - label_offset;
  return (ign || c < 0 || c >= C) ? int64_t(-1) : c;
}

// Dense target value -> (t, v); t = 0 where v = 0. The comparison is done in
// the compute type T (float, or double for float64 x), as torch compares a
// float32 tensor with a Python float.
template <typename T>
SEGFAST_HD void decode_dense(T value, bool has_ignore, double ignore_value, T* t, T* v) {
  const bool ign = has_ignore && value == T(ignore_value);
  *v = ign ? T(0) : T(1);
  *t = ign ? T(0) : value;
}

// The power of the region formulas (the focal Tversky exponent of the finish
// kernel), exact for e in {1, 2}. The pixel terms' focal power is
// pixel_terms.h's pow_gamma.
SEGFAST_HD float pow_t(float b, float e) { return e == 2.0f ? b * b : (e == 1.0f ? b : powf(b, e)); }
SEGFAST_HD double pow_t(double b, double e) { return e == 2.0 ? b * b : (e == 1.0 ? b : pow(b, e)); }

// ---- gradient ----------------------------------------------------------------------

// d min(p, t) / dp, torch.minimum's subgradient.
template <typename T>
SEGFAST_HD T min_grad(T p, T t) {
  return p < t ? T(1) : (p == t ? T(0.5) : T(0));
}

// dLoss/dp for one element, g = the plane's 7 values of dLoss/dStats.
template <typename T, typename G>
SEGFAST_HD T dloss_dp(T p, T t, T v, const G* g) {
  return v * (T(g[kI]) * t + T(g[kP]) + T(2) * T(g[kPP]) * p + T(g[kM]) * min_grad(p, t));
}

// The 7 contributions of one element, added into acc[k * stride], k = 0..6
// (stride: the lanes of the CPU kernels' vectorised sums).
template <typename T, typename A>
SEGFAST_HD void accumulate(A* acc, T p, T t, T v, int64_t stride = 1) {
  const T vp = v * p;
  acc[kI * stride] += vp * t;
  acc[kP * stride] += vp;
  acc[kT * stride] += v * t;
  acc[kV * stride] += v;
  acc[kPP * stride] += vp * p;
  acc[kTT * stride] += v * t * t;
  acc[kM * stride] += v * (p < t ? p : t);
}

// ---- finish (the loss from the partial sums; CUDA region_finish_cuda) ------------------

// Largest C the CUDA finish kernel takes: one thread per class in one block.
constexpr int kFinishMaxC = 1024;
enum Gdl : int { kGdlNone = 0, kGdlSquare = 1, kGdlSimple = 2, kGdlUniform = 3 };

// The formula of a region loss (+ a pixel term) on the sums, as
// triton_kernels/region_finish.py takes it: the region term lam_r * R, R the
// ratio score safe(cI*I + nr, dI*I + dP*P + dT*T + dr) per plane (or the
// generalized Dice score, gdl), f = 1 - score or -log(max(score, 1e-7)) (log),
// max(f, 0)^gamma, times the class weight, over the classes c >= c0, times
// scale_r; per (image, class) plane or per class of the pooled sums (batch).
// The pixel term lam_x * X (xent): a mean over the valid pixels of the pooled
// S7, S8 (CE with label smoothing eps, focal, fused with ws, wp).
struct Finish {
  int64_t N, C, P;
  int KO;  // sums per plane in part / sums / coef: 7, or 9 with a pixel term
  double cI, dI, dP, dT, nr, dr, gamma, lam_r, scale_r, lam_x, eps, ws, wp;
  int gdl, batch, log, c0, xent;
};

// Chunk j of P over S pixels: [begin, end), possibly empty.
SEGFAST_HD void chunk_range(int64_t S, int64_t P, int64_t j, int64_t* begin, int64_t* end) {
  const int64_t L = (S + P - 1) / P;
  int64_t b = j * L, e = b + L;
  if (b > S) b = S;
  if (e > S) e = S;
  *begin = b;
  *end = e;
}

}  // namespace region
}  // namespace segfast
