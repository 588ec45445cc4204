// Math shared by the pixel terms of every kernel that has them, CPU and CUDA:
// the region kernels' pixel-term sums (csrc/common/region.h) and the pixel
// family (csrc/common/pixel.h). exp and log in the branch-free forms the
// vectorised CPU loops need (libm's on the device), and the focal power with
// its derivative, written once. Everything here is __host__ __device__
// (SEGFAST_HD).
#pragma once

#include <cmath>
#include <cstdint>

#include "dtypes.h"

namespace segfast {

// ---- exp ------------------------------------------------------------------------

// exp(x) for float, vectorisable (no branches, no libm call): Cephes-style
// range reduction x = n*ln2 + r, |r| <= ln2/2, degree-6 polynomial (~1-2 ulp).
// x is clamped to [-87, 88] for the reduction; below -87 the result is 0
// (float's subnormal range is flushed), exp(-inf) = 0, and NaN stays NaN.
// exp(r) for |r| <= ln2/2 (fast_expf's reduced argument): a degree-6
// polynomial. V is float or a float vector (GCC/Clang vector extension), so
// CPU kernels can run it on whole vectors.
template <typename V>
SEGFAST_HD V expf_reduced(V r) {
  V p = V{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  return p * (r * r) + r + 1.0f;
}

SEGFAST_HD float fast_expf(float x) {
  const float x_in = x;
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  // round(x / ln2) to nearest even with the 1.5*2^23 trick (no floorf call)
  const float magic = 12582912.0f;
  float t = x * 1.44269504088896341f + magic;
  const int32_t n = int32_t(f32_bits(t)) - int32_t(0x4B400000);
  const float fn = t - magic;
  float r = x - fn * 0.693359375f;
  r = r - fn * -2.12194440e-4f;
  const float y = expf_reduced(r);
  const float scale = bits_f32(uint32_t(n + 127) << 23);
  // below the clamp the result is 0 (as expf's, to within float's subnormals):
  // exp(-inf) must be 0, not exp(-87), or 1 - sigmoid and a masked class's
  // probability come out nonzero at an infinite logit (and 0·inf terms, NaN)
  return x_in < -87.0f ? 0.0f : y * scale;
}

SEGFAST_HD float exp_t(float x) {
#if defined(__CUDA_ARCH__)
  return expf(x);
#else
  return fast_expf(x);
#endif
}
SEGFAST_HD double exp_t(double x) { return exp(x); }

// ---- log ------------------------------------------------------------------------

// log(x) for float x >= FLT_MIN (smaller x are clamped), vectorisable (no
// branches, no libm call): Cephes logf, x = m * 2^e with m in [sqrt(1/2), sqrt(2)),
// degree-9 polynomial in m - 1 (~1-2 ulp). NaN gives NaN and +inf gives +inf
// (one blend at the end): a NaN or +inf logit must reach the loss.
SEGFAST_HD float fast_logf(float x) {
  const float x_in = x;
  x = x < 1.17549435e-38f ? 1.17549435e-38f : x;
  const int32_t u = int32_t(f32_bits(x));  // x > 0: sign bit clear
  // x = m * 2^e, m in [0.5, 1); the exponent is kept in float (vectorises)
  float fe = float(u >> 23) - 126.0f;
  float m = bits_f32(uint32_t((u & 0x007fffff) | 0x3f000000));
  const bool small = m < 0.707106781186547524f;
  fe = small ? fe - 1.0f : fe;
  m = small ? m + m - 1.0f : m - 1.0f;  // m - 1 in [-0.293, 0.414)
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  y += -2.12194440e-4f * fe;
  y += -0.5f * z;
  const float r = m + y + 0.693359375f * fe;
  return x_in <= 3.40282347e38f ? r : x_in + x_in;  // NaN, +inf: themselves
}

SEGFAST_HD float log_t(float x) {
#if defined(__CUDA_ARCH__)
  return logf(x);
#else
  return fast_logf(x);
#endif
}
SEGFAST_HD double log_t(double x) { return log(x); }

// a / b for b in [1, C] (a sum of exponentials whose largest term is 1): on
// the device in float one MUFU.RCP and a multiply (2 ulp), inline; IEEE
// division there is a subroutine call whose saved registers spill.
SEGFAST_HD float div_sum(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdividef(a, b);
#else
  return a / b;
#endif
}
SEGFAST_HD double div_sum(double a, double b) { return a / b; }

// log(1 + e) for e in [0, 1]; on the host the u = 1 + e trick keeps full
// relative accuracy for small e with the vectorisable log.
SEGFAST_HD float log1p_t(float e) {
#if defined(__CUDA_ARCH__)
  return log1pf(e);
#else
  const float u = 1.0f + e;
  const float d = u - 1.0f;
  return d == 0.0f ? e : fast_logf(u) * (e / d);
#endif
}
SEGFAST_HD double log1p_t(double e) { return log1p(e); }

// ---- focal power -----------------------------------------------------------------

// Focal parameters, prepared once per call (outside the vectorised loops):
// GCC does not vectorise a select on a loop-invariant condition, so the special
// cases are blend factors k (exact: k * a + (1 - k) * b for k in {0, 1}).
template <typename T>
struct Focal {
  T gamma, k0, k1, k2;  // k_i = (gamma == i)
  T alpha, ka;          // ka = (alpha >= 0)
};

template <typename T>
SEGFAST_HD Focal<T> make_focal(double gamma, double alpha) {
  Focal<T> f;
  f.gamma = T(gamma);
  f.k0 = gamma == 0.0 ? T(1) : T(0);
  f.k1 = gamma == 1.0 ? T(1) : T(0);
  f.k2 = gamma == 2.0 ? T(1) : T(0);
  f.alpha = T(alpha);
  f.ka = alpha >= 0.0 ? T(1) : T(0);
  return f;
}

// om^gamma for om <= 1, gamma >= 0 (0^0 = 1, as torch), exact for gamma in
// {0, 1, 2}. om <= 0 (1 - p_t of a dense target outside [0, 1]) counts as 0,
// as in the reference's focal_factor.
template <typename T>
SEGFAST_HD T pow_gamma(T om, const Focal<T>& f) {
  om = om > T(0) ? om : T(0);
  const T safe = om > T(0) ? om : T(1);
  T r = exp_t(f.gamma * log_t(safe));
  r = om > T(0) ? r : T(0);
  r = f.k1 * om + (T(1) - f.k1) * r;
  r = f.k2 * (om * om) + (T(1) - f.k2) * r;
  r = f.k0 + (T(1) - f.k0) * r;
  return r;
}

// g * om^(g - 1), taken as 0 where om == 0 (the limit for g > 1, and the
// convention at p_t = 1 for g <= 1), given pg = om^g.
template <typename T>
SEGFAST_HD T dpow_gamma(T om, T g, T pg) {
  const T safe = om > T(0) ? om : T(1);
  return om > T(0) ? g * pg / safe : T(0);
}

// The focal term of a probability p, given om = 1 - p (computed without
// cancellation where the caller can) and nl = -log p: the loss is
// *pg * nl with *pg = om^gamma, and *q = -d(loss)/d(log p) =
// om^gamma + gamma p om^(gamma - 1) nl (1 for gamma = 0, 0 at p = 1 for
// gamma > 0). CE, focal and the fused term's gradients all go through
// dLoss/d(log p) (csrc/common/region.h, softmax_pixel in pixel.h).
template <typename T>
SEGFAST_HD void focal_terms(T om, T p, T nl, const Focal<T>& f, T* pg, T* q) {
  const T w = pow_gamma(om, f);
  *pg = w;
  *q = w + p * nl * dpow_gamma(om, f.gamma, w);
}

// The focal loss (1 - p)^gamma * nl of one probability p, nl = -log p.
template <typename T>
SEGFAST_HD T focal_value(T p, T nl, const Focal<T>& f) {
  return pow_gamma(T(1) - p, f) * nl;
}

// Its -d/d(log p) (focal_terms' q).
template <typename T>
SEGFAST_HD T focal_dlogp(T p, T nl, const Focal<T>& f) {
  T pg, q;
  focal_terms(T(1) - p, p, nl, f, &pg, &q);
  return q;
}

}  // namespace segfast
