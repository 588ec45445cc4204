// Boxes family: box geometry shared by the CPU and CUDA kernels (IoU family,
// matching, NMS). Everything is SEGFAST_HD and computed in the accumulation
// type T (float, or double for float64 boxes).
//
// Degenerate boxes: a pair whose union has zero area (or a NaN area) gets
// IoU 0, not torchvision's 0/0 = NaN. Non-degenerate pairs are unchanged
// (no eps is added to the union), so values match torchvision's exactly.
#pragma once

#include <cmath>
#include <cstdint>

#include "dtypes.h"

namespace segfast {
namespace boxes {

enum Fmt : int { kXYXY = 0, kXYWH = 1, kCXCYWH = 2 };

template <typename T>
struct Box {
  T x1, y1, x2, y2;
};

// One box from 4 coordinates in format fmt, as xyxy.
template <typename T>
SEGFAST_HD Box<T> to_xyxy(T a, T b, T c, T d, int fmt) {
  if (fmt == kXYWH) return {a, b, a + c, b + d};
  if (fmt == kCXCYWH) {
    const T hw = c * T(0.5), hh = d * T(0.5);
    return {a - hw, b - hh, a + hw, b + hh};
  }
  return {a, b, c, d};
}

// Box i of a [.., 4] array with element stride `s4` between coordinates.
template <typename T>
SEGFAST_HD Box<T> load_box(const void* p, int dtype, int64_t off, int64_t s4, int fmt) {
  T a, b, c, d;
  load_as(p, dtype, off, a);
  load_as(p, dtype, off + s4, b);
  load_as(p, dtype, off + 2 * s4, c);
  load_as(p, dtype, off + 3 * s4, d);
  return to_xyxy(a, b, c, d, fmt);
}

// torchvision's area: (x2 - x1) * (y2 - y1), negative for inverted boxes.
template <typename T>
SEGFAST_HD T area(const Box<T>& b) {
  return (b.x2 - b.x1) * (b.y2 - b.y1);
}

template <typename T>
SEGFAST_HD T inter_area(const Box<T>& a, const Box<T>& b) {
  const T w = (a.x2 < b.x2 ? a.x2 : b.x2) - (a.x1 > b.x1 ? a.x1 : b.x1);
  const T h = (a.y2 < b.y2 ? a.y2 : b.y2) - (a.y1 > b.y1 ? a.y1 : b.y1);
  return (w > T(0) ? w : T(0)) * (h > T(0) ? h : T(0));
}

// inter / union, 0 where the union is not positive (see the header comment).
template <typename T>
SEGFAST_HD T iou_from(T inter, T area_a, T area_b) {
  const T uni = area_a + area_b - inter;
  return uni > T(0) ? inter / uni : T(0);
}

template <typename T>
SEGFAST_HD T iou(const Box<T>& a, const Box<T>& b) {
  return iou_from(inter_area(a, b), area(a), area(b));
}

// A [B, K, 4] box array as the kernels receive it: data pointer, dtype code
// (dtypes.h) and element strides of the batch, box and coordinate dims.
struct BoxArg {
  const void* p;
  int dtype;
  int64_t sB, sK, s4;
};

// ---- IoU variants with their gradient (boxes family: IoU / GIoU / DIoU / CIoU) --------
// Semantics: segfast/reference/boxes.py. `loss` selects torchvision's loss
// formulas (eps added to the union and the enclosing area, enclosing box not
// clamped) instead of the pairwise ones (IoU 0 where union <= 0, enclosing
// box clamped at 0). Divisions by a non-positive denominator give 0 (and a 0
// gradient). Ties of min / max split the gradient in halves, as torch does.

enum Kind : int { kIoU = 0, kGIoU = 1, kDIoU = 2, kCIoU = 3 };

template <typename T>
SEGFAST_HD T pi_t() { return T(3.14159265358979323846); }

// Weight of `a` in d min(a, b) (1 - it goes to b); max(a, b) uses tie_lt(b, a).
template <typename T>
SEGFAST_HD T tie_lt(T a, T b) { return a < b ? T(1) : (a == b ? T(0.5) : T(0)); }

// atan: on the CPU in float, Cephes' atanf (range reduction and an odd
// polynomial, ~1e-7 relative, branch-free so loops over pairs vectorise; the
// Triton kernels use the same one); the library's elsewhere.
SEGFAST_HD float atan_t(float x) {
#if defined(__CUDA_ARCH__)
  return atanf(x);
#else
  const float ax = x < 0.f ? -x : x;
  const bool big = ax > 2.414213562373095f, mid = ax > 0.4142135623730950f;
  const float base = big ? 1.5707963267948966f : (mid ? 0.7853981633974483f : 0.f);
  const float r = big ? -1.f / (big ? ax : 1.f) : (mid ? (ax - 1.f) / (ax + 1.f) : ax);
  const float z = r * r;
  const float y = base + ((((8.05374449538e-2f * z - 1.38776856032e-1f) * z + 1.99777106478e-1f) * z -
                           3.33329491539e-1f) * z * r + r);
  return x < 0.f ? -y : y;
#endif
}
SEGFAST_HD double atan_t(double x) {
  using std::atan;
  return atan(x);
}

// atan(w / h), finite at h = 0 (pi/2 sign(w); 0 for w = h = 0).
template <typename T>
SEGFAST_HD T atan_ratio(T w, T h) {
  const bool nz = h != T(0);
  const T a = atan_t(w / (nz ? h : T(1)));
  return nz ? a : (w > T(0) ? pi_t<T>() / T(2) : (w < T(0) ? -pi_t<T>() / T(2) : T(0)));
}

// The IoU variant `kind` of boxes p and g (xyxy). With GRAD, adds
// gout * d value / d (p, g) to dp[4], dg[4] (xyxy order).
//
// A pair with a non-finite coordinate gets NaN (so a reduced loss shows it):
// segfast's rule, where torchvision's min / max would hide some NaNs.
template <typename T, bool GRAD>
SEGFAST_HD T pair_value(const Box<T>& p, const Box<T>& g, int kind, bool loss, T eps, T gout,
                        T* dp, T* dg) {
  const T all = p.x1 + p.y1 + p.x2 + p.y2 + g.x1 + g.y1 + g.x2 + g.y2;
  const bool finite = all - all == T(0);  // false for NaN and +-inf
  const T wp = p.x2 - p.x1, hp = p.y2 - p.y1, wg = g.x2 - g.x1, hg = g.y2 - g.y1;
  const T iw = (p.x2 < g.x2 ? p.x2 : g.x2) - (p.x1 > g.x1 ? p.x1 : g.x1);
  const T ih = (p.y2 < g.y2 ? p.y2 : g.y2) - (p.y1 > g.y1 ? p.y1 : g.y1);
  const bool pos = iw > T(0) && ih > T(0);
  const T inter = pos ? iw * ih : T(0);
  const T uni = wp * hp + wg * hg - inter;
  const T ud = loss ? uni + eps : uni;
  const T iou = ud > T(0) ? inter / ud : T(0);
  T val = iou;
  // gradient of val with respect to the intermediate quantities
  T g_inter = T(0), g_uni = T(0), g_cw = T(0), g_ch = T(0), g_dx = T(0), g_dy = T(0);
  T g_wp = T(0), g_hp = T(0), g_wg = T(0), g_hg = T(0);
  if (GRAD && ud > T(0)) {
    g_inter = gout / ud;
    g_uni = -gout * inter / (ud * ud);
  }
  bool cw_pass = true, ch_pass = true;
  if (kind != kIoU) {
    T cw = (p.x2 > g.x2 ? p.x2 : g.x2) - (p.x1 < g.x1 ? p.x1 : g.x1);
    T ch = (p.y2 > g.y2 ? p.y2 : g.y2) - (p.y1 < g.y1 ? p.y1 : g.y1);
    if (!loss) {  // torchvision clamps the pairwise enclosing box (gradient passes at 0)
      cw_pass = cw >= T(0);
      ch_pass = ch >= T(0);
      cw = cw_pass ? cw : T(0);
      ch = ch_pass ? ch : T(0);
    }
    if (kind == kGIoU) {
      const T ac = cw * ch, acd = loss ? ac + eps : ac;
      if (acd > T(0)) {
        val -= (ac - uni) / acd;
        if (GRAD) {
          const T g_ac = -gout * (acd - ac + uni) / (acd * acd);
          g_uni += gout / acd;
          g_cw = g_ac * ch;
          g_ch = g_ac * cw;
        }
      }
    } else {
      const T diag = cw * cw + ch * ch + eps;
      const T dx = (p.x1 + p.x2 - g.x1 - g.x2) * T(0.5), dy = (p.y1 + p.y2 - g.y1 - g.y2) * T(0.5);
      const T rho2 = dx * dx + dy * dy;
      if (diag > T(0)) {
        val -= rho2 / diag;
        if (GRAD) {
          const T g_diag = gout * rho2 / (diag * diag);
          g_cw = g_diag * T(2) * cw;
          g_ch = g_diag * T(2) * ch;
          g_dx = -gout * T(2) * dx / diag;  // d/d dx of -rho2/diag
          g_dy = -gout * T(2) * dy / diag;
        }
      }
      if (kind == kCIoU) {
        const T k = T(4) / (pi_t<T>() * pi_t<T>());
        const T delta = atan_ratio(wg, hg) - atan_ratio(wp, hp);
        const T v = k * delta * delta;
        const T ad = T(1) - iou + v + eps;
        const T alpha = ad > T(0) ? v / ad : T(0);  // a constant in the backward
        val -= alpha * v;
        if (GRAD) {
          const T g_delta = -gout * alpha * T(2) * k * delta;
          const T rg = wg * wg + hg * hg, rp = wp * wp + hp * hp;
          if (rg > T(0)) {
            g_wg += g_delta * hg / rg;
            g_hg -= g_delta * wg / rg;
          }
          if (rp > T(0)) {
            g_wp -= g_delta * hp / rp;
            g_hp += g_delta * wp / rp;
          }
        }
      }
    }
  }
  if (GRAD) {
    // union = wp*hp + wg*hg - inter
    g_inter -= g_uni;
    g_wp += g_uni * hp;
    g_hp += g_uni * wp;
    g_wg += g_uni * hg;
    g_hg += g_uni * wg;
    const T g_iw = pos ? g_inter * ih : T(0), g_ih = pos ? g_inter * iw : T(0);
    // iw = min(x2, X2) - max(x1, X1); cw = max(x2, X2) - min(x1, X1)
    T s;
    s = tie_lt(p.x2, g.x2); dp[2] += g_iw * s; dg[2] += g_iw * (T(1) - s);
    s = tie_lt(g.x1, p.x1); dp[0] -= g_iw * s; dg[0] -= g_iw * (T(1) - s);
    s = tie_lt(p.y2, g.y2); dp[3] += g_ih * s; dg[3] += g_ih * (T(1) - s);
    s = tie_lt(g.y1, p.y1); dp[1] -= g_ih * s; dg[1] -= g_ih * (T(1) - s);
    const T gcw = cw_pass ? g_cw : T(0), gch = ch_pass ? g_ch : T(0);
    s = tie_lt(g.x2, p.x2); dp[2] += gcw * s; dg[2] += gcw * (T(1) - s);
    s = tie_lt(p.x1, g.x1); dp[0] -= gcw * s; dg[0] -= gcw * (T(1) - s);
    s = tie_lt(g.y2, p.y2); dp[3] += gch * s; dg[3] += gch * (T(1) - s);
    s = tie_lt(p.y1, g.y1); dp[1] -= gch * s; dg[1] -= gch * (T(1) - s);
    // centre offsets dx = (x1 + x2 - X1 - X2) / 2, widths w = x2 - x1
    dp[0] += T(0.5) * g_dx - g_wp; dp[2] += T(0.5) * g_dx + g_wp;
    dp[1] += T(0.5) * g_dy - g_hp; dp[3] += T(0.5) * g_dy + g_hp;
    dg[0] -= T(0.5) * g_dx + g_wg; dg[2] += g_wg - T(0.5) * g_dx;
    dg[1] -= T(0.5) * g_dy + g_hg; dg[3] += g_hg - T(0.5) * g_dy;
  }
  return finite ? val : all - all;  // NaN
}

// A gradient with respect to xyxy -> with respect to the box's own format.
template <typename T>
SEGFAST_HD void xyxy_grad_to_fmt(T* d, int fmt) {
  if (fmt == kXYWH) {  // x1 = a, x2 = a + c
    d[0] += d[2];
    d[1] += d[3];
  } else if (fmt == kCXCYWH) {  // x1 = a - c/2, x2 = a + c/2
    const T a = d[0] + d[2], b = d[1] + d[3];
    d[2] = T(0.5) * (d[2] - d[0]);
    d[3] = T(0.5) * (d[3] - d[1]);
    d[0] = a;
    d[1] = b;
  }
}

}  // namespace boxes
}  // namespace segfast
