// Pixel family (cross entropy, focal, positive-sharing "fused", BCE, balanced
// BCE, sigmoid focal): math shared by the CPU and CUDA kernels. The loss and
// gradient formulas of every kind live here, once; segfast/reference/pixel.py
// (pixel_terms) defines the semantics.
//
// Softmax kinds (CE, FOCAL_SOFTMAX, FUSED) give one term pair (l0, l1) per
// pixel; the kernels reduce the C classes of a pixel (max, sum of exp, the
// target's logit ...) and softmax_pixel turns those into the losses and the
// per-pixel coefficients of the gradient,
//   dx_c = e_c * (c == 0 ? k0 : k1) + [c == y] * kb + w_c * kw,
// with e_c the stored exponentials (see softmax_pixel). Sigmoid kinds (BCE,
// FOCAL_SIGMOID) give one term per element (sigmoid_term), and so does
// FOCAL_SOFTMAX on dense targets (dense_focal_term).
#pragma once

#include <cmath>
#include <cstdint>

#include "dtypes.h"
#include "problem.h"
#include "pixel_terms.h"  // exp_t, log_t, the focal power
#include "region.h"       // chunk_range, decode_label

namespace segfast {
namespace pixel {

// Must match segfast/reference/pixel.py.
enum Kind : int { kCE = 0, kFocalSoftmax = 1, kFused = 2, kBCE = 3, kFocalSigmoid = 4 };

SEGFAST_HD bool is_softmax_kind(int kind) { return kind >= kCE && kind <= kFused; }

using region::chunk_range;

// Everything one pixel-loss call reads and writes. Strides are in elements
// (any value). The optional pointers are null when absent; A is the
// accumulation type (double for float64 x, else float) of w, pw, beta, loss,
// map and go.
struct Problem : Inputs {  // x, targets, N, C, S, label decoding: problem.h
  int64_t P;  // chunks per image of the loss partial sums
  int kind;
  const void* w;     // A[C] class weights (ones)
  const void* pw;    // A[C] pos_weight, BCE (ones)
  const void* beta;  // A[N] balanced-BCE beta, BCE (none)
  double gamma, alpha, smoothing, scale0, scale1;
  void* loss;        // A[N, P, 2]: chunk sums of l0, l1 over valid pixels/elements
  void* map;         // A[N, S] (softmax kinds) / [N, C, S]: scale0*l0 + scale1*l1
  const void* go;    // A, map's layout: grad_output (ones); one value if go_scalar
  bool go_scalar;    // go is a single value (a reduced loss's grad_output, read on the device)
  void* dx;          // x's dtype, strides dxsN, dxsC, dxsS
  int64_t dxsN, dxsC, dxsS;
  // A reduced loss computed whole on the device (CUDA; the CPU kernels ignore these):
  int norm = 0;                 // Norm: the normaliser the kernel counts
  void* out = nullptr;          // A 0-d: the loss; loss is then an [N, P, 4] workspace
  void* den = nullptr;          // A 0-d: its normaliser, written with out; with a single go, dx is scaled by go / den
  unsigned* counter = nullptr;  // the ticket counter of the last block's reduction: 0 before and after
};

// The normaliser of a reduced loss (segfast/ops/pixel.py NORM_*): none (a sum),
// the valid pixels (softmax kinds) or elements (sigmoid kinds), or the summed
// class weights w_y of the valid pixels.
enum Norm : int { kNormSum = 0, kNormCount = 1, kNormWeight = 2 };

// ---- sigmoid kinds: one element ----------------------------------------------------

// Loss l and dl/dx of one element with logit x and target t (t = 0 where
// invalid; the caller masks). wc: class weight; a_pos / a_neg: BCE's positive
// and negative factors (pos_weight, balanced beta); f: focal gamma, alpha
// (alpha < 0: no alpha_t).
template <int KIND, typename T>
SEGFAST_HD void sigmoid_term(T x, T t, T wc, T a_pos, T a_neg, const Focal<T>& f, T* l, T* d) {
  const bool pos = x >= T(0);
  const T ax = pos ? x : -x;
  const T e = exp_t(-ax);
  const T lp = log1p_t(e);
  const T inv = T(1) / (T(1) + e);
  const T s = pos ? inv : e * inv;   // sigmoid(x)
  const T sc = pos ? e * inv : inv;  // 1 - sigmoid(x), without cancellation
  const T sp_pos = (pos ? x : T(0)) + lp;   // softplus(x)  = -log(1 - s)
  const T sp_neg = (pos ? T(0) : -x) + lp;  // softplus(-x) = -log(s)
  const T tc = T(1) - t;
  if (KIND == kBCE) {
    *l = wc * (a_pos * t * sp_neg + a_neg * tc * sp_pos);
    *d = wc * (a_neg * tc * s - a_pos * t * sc);
  } else {
    const T ce = t * sp_neg + tc * sp_pos;
    const T om = s * tc + sc * t;  // 1 - p_t
    const T at = f.ka * (f.alpha * t + (T(1) - f.alpha) * tc) + (T(1) - f.ka);
    const T pg = pow_gamma(om, f);
    const T pg1 = dpow_gamma(om, f.gamma, pg);
    const T smt = s * tc - sc * t;  // s - t
    // the focal factor's own gradient, ce * d(om^gamma)/dx: none where the
    // factor is constant (om <= 0, the reference's focal_factor select, or
    // gamma = 0, torch's pow backward), so an infinite ce there adds no 0·inf
    const T fd = om > T(0) && f.gamma > T(0) ? pg1 * ce * s * sc * (T(2) * t - T(1)) : T(0);
    *l = wc * at * ce * pg;
    *d = wc * at * (smt * pg - fd);
  }
}

// ---- softmax kinds: one pixel ------------------------------------------------------

// Inputs (per pixel, y its class, valid = label valid and in range):
//   CE / FOCAL_SOFTMAX: m = max_c x_c, sum = sum_c e_c with e_c = exp(x_c - m),
//     so = sum_{c != y} e_c (focal only).
//   FUSED: m = max_c x_c, mfg = max_{c>=1} x_c, sumfg = sum_{c>=1} exp(x_c - mfg),
//     e0 = exp(x_0 - m); the stored exponentials are e_0 = e0 and
//     e_c = exp(x_c - mfg) for c >= 1 (no underflow whatever x_0 - x_c is).
//   xy = x_y, x0 = x_0, wx = sum_c w_c (m - x_c) (FUSED: sum_c w_c x_c; smoothing
//   only), wy = w_y,
//   W = sum_c w_c, invC = 1 / C, g = grad_output of the pixel.
// Outputs: l0, l1 (0 where invalid, unscaled) and the gradient coefficients
//   dx_c = e_c * (c == 0 ? k0 : k1) + [c == y] * kb + w_c * kw   (all 0 where invalid),
// of g * (s0 * dl0/dx + s1 * dl1/dx).
template <int KIND, typename T>
SEGFAST_HD void softmax_pixel(bool valid, T m, T sum, T so, T mfg, T sumfg, T e0, T xy, T x0,
                              bool y0, T wx, T wy, T W, T invC, T eps, const Focal<T>& f,
                              T s0, T s1,
                              T g, T* l0, T* l1, T* k0, T* k1, T* kb, T* kw) {
  T r = T(1);
  if (KIND == kFused) {
    r = exp_t(mfg - m);
    sum = e0 + r * sumfg;
  }
  // -log p_y = (m - x_y) + log(sum), in torch's order: exact for logits far
  // from 0 (m + log(sum) would round log(sum) away at |m| >> 1)
  const T lsum = log_t(sum);
  // (an invalid pixel has no x_y: log(sum) keeps its unused terms finite, so 0·them is 0)
  const T nly = valid ? (m - xy) + lsum : lsum;
  T L0, L1 = T(0), a, b, cw = T(0);
  if (KIND == kFocalSoftmax) {
    const T logp = -nly;
    // p_y below exp's clamp (-87 in float) is 0, not the clamp's value: p_y·log p_y -> 0
    const T py = logp > T(-87) ? exp_t(logp) : T(0);
    const T om = div_sum(so, sum);  // 1 - p_y, without cancellation
    T pg, q;
    focal_terms(om, py, nly, f, &pg, &q);
    L0 = wy * pg * nly;
    a = s0 * wy * q;
    b = -a;
  } else {
    const T ew = eps * invC;
    // smoothing: ew·Σ_c w_c·(-log p_c) = ew·(W·log(sum) + wx), wx = Σ_c w_c·(m - x_c)
    // (fused: ew·(W·lse - wx), wx = Σ_c w_c·x_c); skipped without smoothing, where
    // an infinite logit would make 0·inf
    const T sm = KIND == kFused ? W * (m + lsum) - wx : W * lsum + wx;
    L0 = (T(1) - eps) * wy * nly + (ew > T(0) ? ew * sm : T(0));
    a = s0 * ((T(1) - eps) * wy + ew * W);
    b = -s0 * (T(1) - eps) * wy;
    cw = -s0 * ew;
  }
  T c0, c1;
  if (KIND == kFused) {
    // -log p_0 = (m - x_0) + log(sum); -log(1 - p_0) = (m - mfg) + log(sum) - log(sumfg)
    L1 = y0 ? (m - x0) + lsum : (m - mfg) + (lsum - log_t(sumfg));
    a += s1;
    b += y0 ? -s1 : T(0);
    const T inv = T(1) / sum;
    c0 = a * inv;
    c1 = a * r * inv - (y0 ? T(0) : s1 / sumfg);
  } else {
    c0 = div_sum(a, sum);
    c1 = c0;
  }
  *l0 = valid ? L0 : T(0);
  *l1 = valid ? L1 : T(0);
  const T gv = valid ? g : T(0);
  *k0 = gv * c0;
  *k1 = gv * c1;
  *kb = gv * b;
  *kw = gv * cw;
}

// ---- softmax focal on dense targets: one element -----------------------------------

// Element c of a pixel (MONAI's softmax_focal_loss on one-hot or soft targets):
// xc its logit, m the pixel's max, ec = exp(xc - m), sum = sum_k e_k, lsum =
// log(sum), tc the target (0 where ignored), wc the class weight. Out: the
// loss l = -wc·tc·(1 - p)^gamma·log p, aq = wc·tc·q with q = -df/dlog p of
// f = -(1 - p)^gamma·log p, and p. The pixel's gradient is
//   dx_c = p_c·Σ_k g_k·aq_k - g_c·aq_c   (g: grad_output of each element).
template <typename T>
SEGFAST_HD void dense_focal_term(T xc, T ec, T m, T sum, T lsum, T tc, T wc, const Focal<T>& f,
                                 T* l, T* aq, T* p) {
  const T logp = (xc - m) - lsum;
  const T pc = div_sum(ec, sum);
  const T om = div_sum(sum - ec, sum);  // 1 - p
  T pg, q;
  focal_terms(om, pc, -logp, f, &pg, &q);
  const T a = wc * tc;
  *l = a * pg * -logp;
  *aq = a * q;
  *p = pc;
}

// Class of a label pixel for the softmax kinds, or -1 (ignored, or outside
// [label_offset, label_offset + C): never used as an index, treated as invalid).
// For the sigmoid kinds a label outside the range is a valid pixel with an
// all-zero one-hot target (as in the reference and the region family): use
// region::decode_label there.
SEGFAST_HD int64_t softmax_class(int64_t label, int64_t C, int64_t label_offset, bool has_ignore,
                                 double ignore_value) {
  bool valid;
  return region::decode_label(label, C, label_offset, has_ignore, ignore_value, &valid);
}

}  // namespace pixel
}  // namespace segfast
