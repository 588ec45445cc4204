// Pixel family, CUDA kernels. Same math as the CPU kernels (csrc/common/pixel.h);
// segfast/reference/pixel.py defines the semantics.
//
// Grid (chunk j, image n), the image index looped past the 65535 grid-y cap.
// A block strides over the pixels of its chunk (chunk j of the caller's P when
// the loss sums are wanted, else chunks of ~kPixelsPerBlock pixels) in runs of
// kVec consecutive pixels per thread (csrc/cuda/vec.cuh): where a row is
// contiguous and aligned, each class row of a run is one 128-bit load (float32)
// and one store of dx, and the labels of a run one or two 128-bit loads:
//   softmax kinds on labels: a thread per run, looping over the C classes (max,
//     then exp sums and the target's logit, then the gradient), any C;
//   sigmoid kinds: a thread per run of elements, classes outer, pixels inner;
//   softmax focal on dense targets: a thread per run, looping over the classes.
// Each thread sums its l0 / l1 in the accumulation type, the block reduces in
// shared memory in a fixed order, and thread 0 writes the block's own [n, j]
// slot: one writer per slot, no atomics, deterministic.
//
// Reduced (pr.out set: a mean or sum as one 0-d tensor, ops/pixel.py): each
// block also counts the normaliser (valid pixels or elements, or the summed
// class weights of the valid pixels) and the non-ignored labels outside
// [0, C + label_offset), writes (l0, l1, normaliser, bad) to its slot of the
// [N, P, 4] workspace and takes a ticket from pr.counter; the block with the
// last ticket sums every slot in a fixed order, writes the loss and the
// normaliser (NaN both for a bad label) and resets the counter to 0. The
// gradient of a reduced loss (pr.den set, pr.go a single value) scales by
// go / den read on the device: no host read, no torch op around the kernels.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "../common/pixel.h"
#include "vec.cuh"

namespace segfast {
namespace pixel {
namespace {

// 64-thread blocks: a block step is 256 pixels, so the caller's chunks
// (ops/_common.py pixel_chunks: at least one step, as many blocks per SM as
// are resident) give 2+ blocks per SM at [8, C, 128, 128] and a full wave on
// large images; the block reduce (block_sum) takes log2(kThreads) = 6 steps.
constexpr int kThreads = 64;
constexpr int64_t kPixelsPerBlock = vec::kVec * kThreads;
constexpr int kMaxGridY = 65535;
using vec::kVec;

// Sum of v over the block (blockDim.x == kThreads); the result in every thread.
template <typename A>
__device__ __forceinline__ A block_sum(A v, A* sm) {
  sm[threadIdx.x] = v;
  __syncthreads();
#pragma unroll
  for (int o = kThreads / 2; o > 0; o >>= 1) {
    if (threadIdx.x < o) sm[threadIdx.x] += sm[threadIdx.x + o];
    __syncthreads();
  }
  const A r = sm[0];
  __syncthreads();
  return r;
}

// The dtype code of the accumulation type (map, go, loss).
template <typename T>
constexpr int acc_code() {
  return sizeof(T) == 8 ? kFloat64 : kFloat32;
}

// The factor of a single grad_output: go, or go / den for a reduced loss (0
// for a mean over nothing, NaN for a NaN normaliser: a bad label).
template <typename T>
__device__ __forceinline__ T go_scale(const Problem& pr) {
  const T go = *static_cast<const T*>(pr.go);
  if (pr.den == nullptr) return go;
  const T d = *static_cast<const T*>(pr.den);
  return d > T(0) ? go / d : (d == d ? T(0) : d);
}

// The block's loss sums of image n into its slot j: (l0, l1), and for a
// reduced loss (pr.out) the normaliser and the bad labels too. Every thread calls it.
template <typename T>
__device__ __forceinline__ void write_slot(const Problem& pr, int64_t n, int64_t j, T a0, T a1, T ad, T ab,
                                           T* sm) {
  a0 = block_sum(a0, sm);
  a1 = block_sum(a1, sm);
  if (pr.out) {
    ad = block_sum(ad, sm);
    ab = block_sum(ab, sm);
  }
  if (threadIdx.x == 0) {
    const int ks = pr.out ? 4 : 2;
    T* o = static_cast<T*>(pr.loss) + (n * pr.P + j) * ks;
    o[0] = a0;
    o[1] = a1;
    if (pr.out) {
      o[2] = ad;
      o[3] = ab;
      __threadfence();  // the slot is visible before the ticket
    }
  }
}

// A reduced loss: the block that takes the last ticket sums every block's slot
// in a fixed order (deterministic), writes the loss and the normaliser and
// resets the counter. Every thread calls it, after its block's write_slot.
template <typename T>
__device__ __forceinline__ void finish_reduced(const Problem& pr, T* sm, int* last) {
  __syncthreads();
  if (threadIdx.x == 0) {
    const unsigned blocks = gridDim.x * gridDim.y;
    *last = atomicAdd(pr.counter, 1u) == blocks - 1u;
  }
  __syncthreads();
  if (!*last) return;
  __threadfence();
  const volatile T* ws = static_cast<const volatile T*>(pr.loss);
  T a[4] = {T(0), T(0), T(0), T(0)};
  for (int64_t i = threadIdx.x; i < pr.N * pr.P; i += blockDim.x)
    for (int k = 0; k < 4; ++k) a[k] += ws[i * 4 + k];
#pragma unroll
  for (int k = 0; k < 4; ++k) a[k] = block_sum(a[k], sm);
  if (threadIdx.x == 0) {
    const T den = pr.norm == kNormSum ? T(1) : a[2];
    const T total = T(pr.scale0) * a[0] + T(pr.scale1) * a[1];
    const T loss = den > T(0) ? total / den : T(0);  // a mean over nothing is 0
    const bool bad = a[3] > T(0);
    *static_cast<T*>(pr.out) = bad ? T(NAN) : loss;
    if (pr.den) *static_cast<T*>(pr.den) = bad ? T(NAN) : den;
    atomicExch(pr.counter, 0u);
  }
}

// A non-ignored label outside [0, C + label_offset): 1, else 0.
__device__ __forceinline__ bool bad_label(const Problem& pr, int64_t lab) {
  const bool ign = pr.has_ignore && lab == int64_t(pr.ignore_value);
  return !ign && (lab < 0 || lab >= pr.C + pr.label_offset);
}

// Whether each kind of row is read (written) with vector accesses: logits,
// targets, dx, and the map / per-pixel grad_output (accumulation type).
struct VecRows {
  bool x, t, dx, map;
};

// No __launch_bounds__ on the loss kernels: given a thread bound, ptxas
// (CUDA 13) trims them for occupancy and spills; unbounded they keep
// everything in registers. Launched with kThreads threads only.
template <int KIND, typename T>
__global__ void softmax_kernel(const Problem pr, const int64_t Pe, const VecRows vr) {
  __shared__ T sm[kThreads];
  __shared__ int sm_last;
  const int64_t C = pr.C;
  const int64_t j = blockIdx.x;
  const T* __restrict__ wt = static_cast<const T*>(pr.w);
  T W = T(0);
  if (wt) {
    for (int64_t c = 0; c < C; ++c) W += wt[c];
  } else {
    W = T(C);
  }
  const T invC = T(1) / T(C), eps = T(pr.smoothing);
  const Focal<T> focal = make_focal<T>(pr.gamma, pr.alpha);
  const T sc0 = T(pr.scale0), sc1 = T(pr.scale1);
  const bool smooth = pr.smoothing != 0.0;
  const T gsc = pr.go && pr.go_scalar ? go_scale<T>(pr) : T(1);
  const int64_t cm = KIND == kFused ? 1 : 0;  // the max (FUSED: also over c >= 1)
  for (int64_t n = blockIdx.y; n < pr.N; n += gridDim.y) {
    int64_t b, e;
    vec::run_chunk(pr.S, Pe, j, &b, &e);
    T a0 = T(0), a1 = T(0), ad = T(0), ab = T(0);
    for (int64_t s = b + int64_t(threadIdx.x) * kVec; s < e; s += int64_t(blockDim.x) * kVec) {
      const int cnt = vec::run_count(s, e);
      int64_t lab[kVec], y[kVec];
      vec::load4<int64_t>(pr.t, pr.t_dtype, n * pr.tsN + s * pr.tsS, pr.tsS, vr.t, cnt, lab);
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        y[i] = i < cnt ? softmax_class(lab[i], C, pr.label_offset, pr.has_ignore, pr.ignore_value) : -1;
        ab += i < cnt && bad_label(pr, lab[i]) ? T(1) : T(0);
      }
      const int64_t xo = n * pr.xsN + s * pr.xsS;
      T m[kVec], xc[kVec], x0[kVec], mfg[kVec];
      vec::load4<T>(pr.x, pr.x_dtype, xo + cm * pr.xsC, pr.xsS, vr.x, cnt, m);
      for (int64_t c = cm + 1; c < C; ++c) {
        vec::load4<T>(pr.x, pr.x_dtype, xo + c * pr.xsC, pr.xsS, vr.x, cnt, xc);
#pragma unroll
        for (int i = 0; i < kVec; ++i) m[i] = xc[i] > m[i] ? xc[i] : m[i];
      }
      vec::load4<T>(pr.x, pr.x_dtype, xo, pr.xsS, vr.x, cnt, x0);
      T sum[kVec], sumfg[kVec], so[kVec], xy[kVec], wx[kVec], e0[kVec];
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        mfg[i] = m[i];
        if (KIND == kFused) m[i] = x0[i] > mfg[i] ? x0[i] : mfg[i];
        sum[i] = sumfg[i] = so[i] = xy[i] = wx[i] = e0[i] = T(0);
        if (KIND == kFused) {
          e0[i] = exp_t(x0[i] - m[i]);
          xy[i] = y[i] == 0 ? x0[i] : T(0);
          wx[i] = smooth ? (wt ? wt[0] : T(1)) * x0[i] : T(0);
        }
      }
      for (int64_t c = cm; c < C; ++c) {
        vec::load4<T>(pr.x, pr.x_dtype, xo + c * pr.xsC, pr.xsS, vr.x, cnt, xc);
        const T wc = wt ? wt[c] : T(1);
#pragma unroll
        for (int i = 0; i < kVec; ++i) {
          const T ev = exp_t(xc[i] - (KIND == kFused ? mfg[i] : m[i]));
          const bool hit = y[i] == c;
          xy[i] += hit ? xc[i] : T(0);
          if (smooth) wx[i] += wc * (KIND == kFused ? xc[i] : m[i] - xc[i]);  // pixel.h softmax_pixel
          if (KIND == kFocalSoftmax) so[i] += hit ? T(0) : ev;
          if (KIND == kFused) sumfg[i] += ev;
          else sum[i] += ev;
        }
      }
      T g[kVec], k0[kVec], k1[kVec], kb[kVec], kw[kVec], mp[kVec];
      if (pr.go && !pr.go_scalar) vec::load4<T>(pr.go, acc_code<T>(), n * pr.S + s, 1, vr.map, cnt, g);
      else
#pragma unroll
        for (int i = 0; i < kVec; ++i) g[i] = gsc;
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        const bool valid = y[i] >= 0;
        const T wy = wt ? wt[valid ? y[i] : 0] : T(1);
        T l0, l1;
        softmax_pixel<KIND, T>(valid, m[i], sum[i], so[i], mfg[i], sumfg[i], e0[i], xy[i], x0[i], y[i] == 0, wx[i],
                               wy, W, invC, eps, focal, sc0, sc1, g[i], &l0, &l1, &k0[i], &k1[i], &kb[i], &kw[i]);
        a0 += i < cnt ? l0 : T(0);
        a1 += i < cnt ? l1 : T(0);
        ad += valid ? (pr.norm == kNormWeight ? wy : T(1)) : T(0);
        mp[i] = sc0 * l0 + sc1 * l1;
      }
      if (pr.map) vec::store4<T>(pr.map, acc_code<T>(), n * pr.S + s, 1, vr.map, cnt, mp);
      if (pr.dx) {
        for (int64_t c = 0; c < C; ++c) {
          vec::load4<T>(pr.x, pr.x_dtype, xo + c * pr.xsC, pr.xsS, vr.x, cnt, xc);
          const bool fg = KIND == kFused && c >= 1;
          const T wc = wt ? wt[c] : T(1);
          T d[kVec];
#pragma unroll
          for (int i = 0; i < kVec; ++i) {
            const T ev = exp_t(xc[i] - (fg ? mfg[i] : m[i]));
            d[i] = ev * ((KIND == kFused && c == 0) ? k0[i] : k1[i]) + (y[i] == c ? kb[i] : T(0)) + wc * kw[i];
          }
          vec::store4<T>(pr.dx, pr.x_dtype, n * pr.dxsN + c * pr.dxsC + s * pr.dxsS, pr.dxsS, vr.dx, cnt, d);
        }
      }
    }
    if (pr.loss) write_slot<T>(pr, n, j, a0, a1, ad, ab, sm);
  }
  if (pr.out) finish_reduced<T>(pr, sm, &sm_last);
}

// Softmax focal on dense targets: a thread per run of kVec pixels, one term
// per element (dense_focal_term); three loops over the classes (max, sum,
// terms) and one more for dx, each class row of logits, targets, map, a
// per-element grad_output and dx one vector access where contiguous and
// aligned. A pixel with any channel equal to the ignore value counts nowhere.
template <typename T>
__global__ void softmax_dense_kernel(const Problem pr, const int64_t Pe, const VecRows vr) {
  __shared__ T sm[kThreads];
  __shared__ int sm_last;
  const int64_t C = pr.C;
  const int64_t j = blockIdx.x;
  const T* __restrict__ wt = static_cast<const T*>(pr.w);
  const Focal<T> focal = make_focal<T>(pr.gamma, pr.alpha);
  const T sc0 = T(pr.scale0);
  const T ign = T(pr.ignore_value);
  const T gsc = pr.go && pr.go_scalar ? go_scale<T>(pr) : T(1);
  const bool go_map = pr.go && !pr.go_scalar;
  for (int64_t n = blockIdx.y; n < pr.N; n += gridDim.y) {
    int64_t b, e;
    vec::run_chunk(pr.S, Pe, j, &b, &e);
    T acc = T(0), ad = T(0);
    for (int64_t s = b + int64_t(threadIdx.x) * kVec; s < e; s += int64_t(blockDim.x) * kVec) {
      const int cnt = vec::run_count(s, e);
      const int64_t xo = n * pr.xsN + s * pr.xsS, to = n * pr.tsN + s * pr.tsS;
      T m[kVec], xc[kVec], tc[kVec], sum[kVec], lsum[kVec], lpix[kVec], bsum[kVec], g[kVec];
      bool valid[kVec];
      vec::load4<T>(pr.x, pr.x_dtype, xo, pr.xsS, vr.x, cnt, m);
      for (int64_t c = 1; c < C; ++c) {
        vec::load4<T>(pr.x, pr.x_dtype, xo + c * pr.xsC, pr.xsS, vr.x, cnt, xc);
#pragma unroll
        for (int i = 0; i < kVec; ++i) m[i] = xc[i] > m[i] ? xc[i] : m[i];
      }
#pragma unroll
      for (int i = 0; i < kVec; ++i) sum[i] = T(0);
      for (int64_t c = 0; c < C; ++c) {
        vec::load4<T>(pr.x, pr.x_dtype, xo + c * pr.xsC, pr.xsS, vr.x, cnt, xc);
#pragma unroll
        for (int i = 0; i < kVec; ++i) sum[i] += exp_t(xc[i] - m[i]);
      }
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        lsum[i] = log_t(sum[i]);
        lpix[i] = bsum[i] = T(0);
        valid[i] = i < cnt;
        g[i] = gsc;
      }
      for (int64_t c = 0; c < C; ++c) {
        vec::load4<T>(pr.x, pr.x_dtype, xo + c * pr.xsC, pr.xsS, vr.x, cnt, xc);
        vec::load4<T>(pr.t, pr.t_dtype, to + c * pr.tsC, pr.tsS, vr.t, cnt, tc);
        const int64_t moff = (n * C + c) * pr.S + s;
        if (go_map) vec::load4<T>(pr.go, acc_code<T>(), moff, 1, vr.map, cnt, g);
        const T wc = wt ? wt[c] : T(1);
        T lm[kVec];
#pragma unroll
        for (int i = 0; i < kVec; ++i) {
          const bool bad = pr.has_ignore && tc[i] == ign;
          valid[i] = valid[i] && !bad;
          T l, aq, p;
          dense_focal_term<T>(xc[i], exp_t(xc[i] - m[i]), m[i], sum[i], lsum[i], bad ? T(0) : tc[i], wc, focal, &l,
                              &aq, &p);
          lpix[i] += l;
          bsum[i] += g[i] * aq;
          lm[i] = sc0 * l;
        }
        if (pr.map) vec::store4<T>(pr.map, acc_code<T>(), moff, 1, vr.map, cnt, lm);
      }
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        acc += valid[i] ? lpix[i] : T(0);
        ad += valid[i] ? T(1) : T(0);
        if (pr.map && !valid[i] && i < cnt)  // an ignored pixel: its map column is 0
          for (int64_t c = 0; c < C; ++c) static_cast<T*>(pr.map)[(n * C + c) * pr.S + s + i] = T(0);
      }
      if (pr.dx) {
        for (int64_t c = 0; c < C; ++c) {
          vec::load4<T>(pr.x, pr.x_dtype, xo + c * pr.xsC, pr.xsS, vr.x, cnt, xc);
          vec::load4<T>(pr.t, pr.t_dtype, to + c * pr.tsC, pr.tsS, vr.t, cnt, tc);
          const int64_t moff = (n * C + c) * pr.S + s;
          if (go_map) vec::load4<T>(pr.go, acc_code<T>(), moff, 1, vr.map, cnt, g);
          const T wc = wt ? wt[c] : T(1);
          T d[kVec];
#pragma unroll
          for (int i = 0; i < kVec; ++i) {
            T l, aq, p;
            dense_focal_term<T>(xc[i], exp_t(xc[i] - m[i]), m[i], sum[i], lsum[i], valid[i] ? tc[i] : T(0), wc,
                                focal, &l, &aq, &p);
            const T gv = valid[i] ? sc0 : T(0);  // 0·d: NaN stays NaN, as the reference
            d[i] = gv * (p * bsum[i] - g[i] * aq);
          }
          vec::store4<T>(pr.dx, pr.x_dtype, n * pr.dxsN + c * pr.dxsC + s * pr.dxsS, pr.dxsS, vr.dx, cnt, d);
        }
      }
    }
    if (pr.loss) write_slot<T>(pr, n, j, acc, T(0), ad, T(0), sm);
  }
  if (pr.out) finish_reduced<T>(pr, sm, &sm_last);
}

template <int KIND, typename T>
__global__ void sigmoid_kernel(const Problem pr, const int64_t Pe, const VecRows vr) {
  __shared__ T sm[kThreads];
  __shared__ int sm_last;
  const int64_t C = pr.C;
  const int64_t j = blockIdx.x;
  const T* __restrict__ wt = static_cast<const T*>(pr.w);
  const T* __restrict__ pwt = static_cast<const T*>(pr.pw);
  const Focal<T> focal = make_focal<T>(pr.gamma, pr.alpha);
  const T sc0 = T(pr.scale0);
  const T ign = T(pr.ignore_value);
  const T gsc = pr.go && pr.go_scalar ? go_scale<T>(pr) : T(1);
  for (int64_t n = blockIdx.y; n < pr.N; n += gridDim.y) {
    int64_t b, e;
    vec::run_chunk(pr.S, Pe, j, &b, &e);
    T a_pos_b = T(1), a_neg = T(1);
    if (KIND == kBCE && pr.beta) {
      const T bn = static_cast<const T*>(pr.beta)[n];
      a_pos_b = bn;
      a_neg = T(1) - bn;
    }
    T acc = T(0), ad = T(0), ab = T(0);
    for (int64_t c = 0; c < C; ++c) {
      const T wc = wt ? wt[c] : T(1);
      const T a_pos = (pwt ? pwt[c] : T(1)) * a_pos_b;
      for (int64_t s = b + int64_t(threadIdx.x) * kVec; s < e; s += int64_t(blockDim.x) * kVec) {
        const int cnt = vec::run_count(s, e);
        T t[kVec], v[kVec];
        if (pr.t_is_label) {
          int64_t lab[kVec];
          vec::load4<int64_t>(pr.t, pr.t_dtype, n * pr.tsN + s * pr.tsS, pr.tsS, vr.t, cnt, lab);
#pragma unroll
          for (int i = 0; i < kVec; ++i) {
            bool valid;
            const int64_t cls = region::decode_label(lab[i], C, pr.label_offset, pr.has_ignore, pr.ignore_value,
                                                     &valid);
            t[i] = cls == c ? T(1) : T(0);
            v[i] = valid && i < cnt ? T(1) : T(0);
            ab += c == 0 && i < cnt && bad_label(pr, lab[i]) ? T(1) : T(0);
          }
        } else {
          T raw[kVec];
          vec::load4<T>(pr.t, pr.t_dtype, n * pr.tsN + c * pr.tsC + s * pr.tsS, pr.tsS, vr.t, cnt, raw);
#pragma unroll
          for (int i = 0; i < kVec; ++i) {
            const bool bad = pr.has_ignore && raw[i] == ign;
            t[i] = bad ? T(0) : raw[i];
            v[i] = bad || i >= cnt ? T(0) : T(1);
          }
        }
        T xv[kVec], g[kVec], lm[kVec], dd[kVec];
        vec::load4<T>(pr.x, pr.x_dtype, n * pr.xsN + c * pr.xsC + s * pr.xsS, pr.xsS, vr.x, cnt, xv);
        const int64_t moff = (n * C + c) * pr.S + s;
        if (pr.go && !pr.go_scalar) vec::load4<T>(pr.go, acc_code<T>(), moff, 1, vr.map, cnt, g);
        else
#pragma unroll
          for (int i = 0; i < kVec; ++i) g[i] = gsc;
#pragma unroll
        for (int i = 0; i < kVec; ++i) {
          T l, d;
          sigmoid_term<KIND, T>(xv[i], t[i], wc, a_pos, a_neg, focal, &l, &d);
          const bool ok = v[i] != T(0);
          l = ok ? l : T(0);
          acc += l;
          ad += ok ? T(1) : T(0);
          lm[i] = sc0 * l;
          dd[i] = (ok ? g[i] : T(0)) * sc0 * d;  // 0·d: NaN stays NaN, as the reference
        }
        if (pr.map) vec::store4<T>(pr.map, acc_code<T>(), moff, 1, vr.map, cnt, lm);
        if (pr.dx)
          vec::store4<T>(pr.dx, pr.x_dtype, n * pr.dxsN + c * pr.dxsC + s * pr.dxsS, pr.dxsS, vr.dx, cnt, dd);
      }
    }
    if (pr.loss) write_slot<T>(pr, n, j, acc, T(0), ad, ab, sm);
  }
  if (pr.out) finish_reduced<T>(pr, sm, &sm_last);
}

void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("segfast: ") + what + " launch failed: " +
                             cudaGetErrorString(err));
}

template <typename T>
void launch(const Problem& pr, int64_t Pe, dim3 grid, cudaStream_t st) {
  const bool per_pixel = is_softmax_kind(pr.kind) && pr.t_is_label;  // map [N, S], else [N, C, S]
  auto map_ok = [&](const void* p) {
    return p == nullptr || (per_pixel ? vec::vec_ok(p, acc_code<T>(), 1, pr.S)
                                      : vec::vec_ok(p, acc_code<T>(), 1, pr.S, pr.C * pr.S));
  };
  VecRows vr;
  vr.x = vec::vec_ok(pr.x, pr.x_dtype, pr.xsS, pr.xsN, pr.xsC);
  vr.t = vec::vec_ok(pr.t, pr.t_dtype, pr.tsS, pr.tsN, pr.t_is_label ? 0 : pr.tsC);
  vr.dx = pr.dx != nullptr && vec::vec_ok(pr.dx, pr.x_dtype, pr.dxsS, pr.dxsN, pr.dxsC);
  vr.map = map_ok(pr.map) && map_ok(pr.go_scalar ? nullptr : pr.go);
  switch (pr.kind) {
    case kCE: softmax_kernel<kCE, T><<<grid, kThreads, 0, st>>>(pr, Pe, vr); break;
    case kFocalSoftmax:
      if (pr.t_is_label) softmax_kernel<kFocalSoftmax, T><<<grid, kThreads, 0, st>>>(pr, Pe, vr);
      else softmax_dense_kernel<T><<<grid, kThreads, 0, st>>>(pr, Pe, vr);
      break;
    case kFused: softmax_kernel<kFused, T><<<grid, kThreads, 0, st>>>(pr, Pe, vr); break;
    case kBCE: sigmoid_kernel<kBCE, T><<<grid, kThreads, 0, st>>>(pr, Pe, vr); break;
    default: sigmoid_kernel<kFocalSigmoid, T><<<grid, kThreads, 0, st>>>(pr, Pe, vr); break;
  }
}

}  // namespace

void pixel_loss_cuda(const Problem& pr, uintptr_t stream) {
  if (pr.N <= 0 || pr.C <= 0) return;
  if (pr.loss && pr.P <= 0) return;
  if (pr.out && (pr.counter == nullptr || pr.loss == nullptr))
    throw std::invalid_argument("segfast: a reduced pixel loss needs its workspace and counter");
  const int64_t Pe =
      pr.loss ? pr.P : std::max<int64_t>(1, (pr.S + kPixelsPerBlock - 1) / kPixelsPerBlock);
  if (!pr.loss && pr.S <= 0) return;
  if (Pe > int64_t(0x7fffffff)) throw std::invalid_argument("segfast: too many pixel chunks");
  const dim3 grid(unsigned(Pe), unsigned(pr.N < kMaxGridY ? pr.N : kMaxGridY));
  cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  if (pr.x_dtype == kFloat64) launch<double>(pr, Pe, grid, st);
  else launch<float>(pr, Pe, grid, st);
  check_launch("pixel_loss_cuda");
}

}  // namespace pixel
}  // namespace segfast
