// Region family, CUDA kernels. Same math as the CPU kernels
// (csrc/common/region.h); see segfast/ops/region.py for the calling side.
//
// stats: grid (chunk j, image n), kStatsThreads threads. C <= kRegMaxC
//   (stats_kernel): the lanes of a warp are G (a power of 2) class lanes x
//   32 / G runs of kVec consecutive pixels (csrc/cuda/vec.cuh); lane g holds
//   the classes g, g + G, ... (CPT of them, a template argument) of its run, so
//   each thread reads its run's logits (one 128-bit load per class where the
//   rows are contiguous and aligned) and labels once. The softmax max and sum
//   (and the fused term's logsumexp, the confusion argmax) reduce over the G
//   class lanes with warp shuffles; the K sums accumulate per thread in
//   registers across the whole chunk. The tile loop has no block barrier: the
//   sums reduce over the pixel lanes with shuffles and over the warps through
//   shared memory once, after the loop, in a fixed order, into the block's own
//   slot of the [N, P, C, K] partial buffer (one writer, deterministic, no
//   atomics). With a pixel term (xent) it also sums S7 / S8 (csrc/common/
//   region.h; -log p = (max - x) + log(sum)): K = 9 sums.
//   C > kRegMaxC, float64 C > kRegMaxC / 2 (stats_wide_kernel): each warp of a
//   block walks its own tiles of the chunk, 32 runs of kVec pixels (a run per
//   lane): one pass over the classes for the softmax max (and the fused term's
//   foreground max, the confusion argmax), one for the softmax sum, one for
//   the sums, each class reduced over the lanes with shuffles and added to the
//   warp's running sums by the lane c % 32 (no barrier in the tile loop). The
//   running sums [C][KO] of the W warps live in dynamic shared memory (W = as
//   many as kWideSmem holds, at most 8) and reduce into the block's slot once
//   per image, in warp order; when not one warp's fit (C * KO * sizeof(A) >
//   kWideSmem), one warp per block keeps them in its out slot. The re-reads of
//   a tile's logits (32 * kVec * C elements) come from L1 / L2.
//   Optional outputs (class-index targets): a flag set to 1 by a label
//   outside [0, C) that is not ignore_index, and confusion counts [C, C] (row:
//   label, column: torch.argmax of the logits), counted in shared memory per
//   block when C * C <= kSharedConf, then added to the global matrix with one
//   atomic per nonzero bin.
// finish: one block, one thread per class (C <= kFinishMaxC): the loss and
//   dLoss/dStats at grad_output 1 from the stats kernel's partial sums, the
//   formulas of triton_kernels/region_finish.py (struct Finish in region.h).
//   The sums over chunks, images and classes run in a fixed order (block
//   reductions through shared memory): deterministic, no atomics.
// grad: one thread per run of kVec pixels (128-bit loads of each class row
//   and stores of dx where the rows are contiguous and aligned); grid (pixel
//   block, image). Loops over C: for the softmax max, for its sum (and the
//   fused term's foreground logsumexp), for sum_k p_k a_k (softmax), and to
//   write; each value times grad_output, read on the device when given. No
//   barrier, no shared memory.
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "../common/region.h"
#include "vec.cuh"

namespace segfast {
namespace region {
namespace {

constexpr int kStatsThreads = 256;  // threads per stats block
constexpr int kStatsWarps = kStatsThreads / 32;
constexpr int kRegMaxC = 256;      // largest C of stats_kernel: 32 class lanes x 8 classes
constexpr int kWideSmem = 48 * 1024;  // stats_wide_kernel: dynamic shared memory per block at most
constexpr int kGradThreads = 64;   // threads per grad block, kVec pixels each (a grid of 2+ blocks per SM at 128 x 128)
constexpr int kMaxGridY = 65535;
constexpr int kSharedConf = 1024;  // confusion bins a stats block counts in shared memory (C <= 32)
constexpr int kFinishThreads = kFinishMaxC;

template <typename T>
__device__ __forceinline__ T activate(const Problem& pr, T x, T m, T inv) {
  if (pr.act == kSigmoid) return sigmoid(x);
  if (pr.act == kSoftmax) return exp_t(x - m) * inv;
  return x;
}

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

using vec::kVec;

// Confusion counts of a stats block: in shared memory (sm) when C * C bins fit,
// else straight into the global matrix. conf_begin zeroes the block's bins
// (-> whether it counts in shared memory), conf_add counts one pixel,
// conf_end adds the block's bins to the matrix. Every thread calls begin / end.
__device__ __forceinline__ bool conf_begin(unsigned* sm, const unsigned long long* conf, int64_t C) {
  const bool shared = conf != nullptr && C * C <= kSharedConf;
  if (shared) {
    for (int64_t i = threadIdx.x; i < C * C; i += blockDim.x) sm[i] = 0;
    __syncthreads();
  }
  return shared;
}

__device__ __forceinline__ void conf_add(unsigned* sm, unsigned long long* conf, bool shared, int64_t bin) {
  if (shared)
    atomicAdd(&sm[bin], 1u);
  else
    atomicAdd(&conf[bin], 1ull);
}

__device__ __forceinline__ void conf_end(const unsigned* sm, unsigned long long* conf, bool shared, int64_t C) {
  if (!shared) return;
  __syncthreads();
  for (int64_t i = threadIdx.x; i < C * C; i += blockDim.x)
    if (sm[i]) atomicAdd(&conf[i], (unsigned long long)sm[i]);
}

// (v, i) beats (u, k) in torch.argmax's order: a NaN first, else the larger
// value; ties (and two NaNs) to the lower class.
template <typename T>
__device__ __forceinline__ bool argmax_beats(T v, int i, T u, int k) {
  const bool nv = v != v, nu = u != u;
  if (nv || nu) return nv && (!nu || i < k);
  return v > u || (v == u && i < k);
}

// Logits of class c for the run of kVec pixels at s (one vector load where vx).
template <typename T>
__device__ __forceinline__ void run_x(const Problem& pr, int64_t n, int64_t c, int64_t s, bool vx, int cnt,
                                      T out[kVec]) {
  vec::load4<T>(pr.x, pr.x_dtype, n * pr.xsN + c * pr.xsC + s * pr.xsS, pr.xsS, vx, cnt, out);
}

// (t, v) of class c for the run at s: from its labels' classes and validity
// (cls, vlab) or the dense targets (one vector load where vt); 0 past cnt.
template <typename T, typename I>
__device__ __forceinline__ void run_tv(const Problem& pr, int64_t n, int64_t c, int64_t s, bool vt, int cnt,
                                       const I cls[kVec], const T vlab[kVec], T t[kVec], T v[kVec]) {
  if (pr.t_is_label) {
#pragma unroll
    for (int i = 0; i < kVec; ++i) t[i] = cls[i] == c ? T(1) : T(0), v[i] = vlab[i];
    return;
  }
  T raw[kVec];
  vec::load4<T>(pr.t, pr.t_dtype, n * pr.tsN + c * pr.tsC + s * pr.tsS, pr.tsS, vt, cnt, raw);
#pragma unroll
  for (int i = 0; i < kVec; ++i) {
    decode_dense(raw[i], pr.has_ignore, pr.ignore_value, &t[i], &v[i]);
    t[i] = i < cnt ? t[i] : T(0);
    v[i] = i < cnt ? v[i] : T(0);
  }
}

// The labels of the run at s: cls (the class, -1 for none and past cnt) and
// vlab (1 for a pixel that is not ignored, 0 past cnt); *flag = 1 (flag given)
// for a label outside [0, C) that is not the ignore value.
template <typename T, typename I>
__device__ __forceinline__ void run_labels(const Problem& pr, int64_t n, int64_t s, bool vt, int cnt, int32_t* flag,
                                           I cls[kVec], T vlab[kVec]) {
  int64_t lab[kVec];
  vec::load4<int64_t>(pr.t, pr.t_dtype, n * pr.tsN + s * pr.tsS, pr.tsS, vt, cnt, lab);
#pragma unroll
  for (int i = 0; i < kVec; ++i) {
    bool valid;
    const int64_t y = decode_label(lab[i], pr.C, pr.label_offset, pr.has_ignore, pr.ignore_value, &valid);
    valid = valid && i < cnt;
    cls[i] = i < cnt ? I(y) : I(-1);
    vlab[i] = valid ? T(1) : T(0);
    if (flag != nullptr && valid && y < 0) *flag = 1;  // out of range, not ignore_index
  }
}

// Over the C classes of the run at s, per pixel: pass 1 the max (fused: also
// over the classes 1..C-1; arg: torch.argmax, the first NaN, else the first
// maximum, into am), pass 2 (softmax) inv = 1/sum(exp(x - max)) and the
// foreground logsumexp lfg (fused). Elsewhere m = 0, inv = 1, lfg = 0, am = 0.
template <typename T>
__device__ __forceinline__ void run_softmax(const Problem& pr, int64_t n, int64_t s, bool vx, int cnt, bool softmax,
                                            bool fused, bool arg, T m[kVec], T inv[kVec], T lfg[kVec],
                                            int32_t am[kVec]) {
  T xr[kVec], mfg[kVec], sfg[kVec], best[kVec];
#pragma unroll
  for (int i = 0; i < kVec; ++i) m[i] = T(0), inv[i] = T(1), lfg[i] = T(0), mfg[i] = T(-INFINITY), am[i] = 0;
  if (!softmax && !arg) return;
  run_x(pr, n, 0, s, vx, cnt, m);
#pragma unroll
  for (int i = 0; i < kVec; ++i) best[i] = m[i];
  for (int64_t c = 1; c < pr.C; ++c) {
    run_x(pr, n, c, s, vx, cnt, xr);
#pragma unroll
    for (int i = 0; i < kVec; ++i) {
      m[i] = xr[i] > m[i] ? xr[i] : m[i];
      if (fused) mfg[i] = fmax(mfg[i], xr[i]);
      if (arg && best[i] == best[i] && (xr[i] != xr[i] || xr[i] > best[i])) best[i] = xr[i], am[i] = int32_t(c);
    }
  }
  if (!softmax) {
#pragma unroll
    for (int i = 0; i < kVec; ++i) m[i] = T(0);
    return;
  }
#pragma unroll
  for (int i = 0; i < kVec; ++i) {
    inv[i] = T(0), sfg[i] = T(0);
    mfg[i] = isinf(mfg[i]) ? T(0) : mfg[i];  // torch's logsumexp: all -inf gives -inf, a +inf gives +inf
  }
  for (int64_t c = 0; c < pr.C; ++c) {
    run_x(pr, n, c, s, vx, cnt, xr);
#pragma unroll
    for (int i = 0; i < kVec; ++i) {
      inv[i] += exp_t(xr[i] - m[i]);
      if (fused && c >= 1) sfg[i] += exp_t(xr[i] - mfg[i]);
    }
  }
#pragma unroll
  for (int i = 0; i < kVec; ++i) {
    inv[i] = T(1) / inv[i];
    if (fused) lfg[i] = mfg[i] + log(sfg[i]);
  }
}

// The stats pass for C <= G * CPT (see the top of the file). lg = log2(G).
template <typename T, typename A, int CPT>
__global__ void stats_kernel(const Problem pr, const int64_t P, const int lg, const bool vx, const bool vt,
                             A* __restrict__ out, int32_t* __restrict__ flag, unsigned long long* __restrict__ conf) {
  __shared__ unsigned sm_conf[kSharedConf];  // this block's confusion counts when C * C fits
  __shared__ A red[kStatsWarps][32][KX];     // the warps' sums, reduced after the loop

  const int64_t C = pr.C;
  const int64_t j = blockIdx.x;
  const int G = 1 << lg;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane & (G - 1);
  const int64_t run = int64_t(warp) * (32 >> lg) + (lane >> lg);  // this thread's run within a step
  const int64_t step = int64_t(kStatsWarps) * (32 >> lg) * kVec;  // pixels per loop step (whole block)
  const int KO = num_stats(pr);
  const bool shared_conf = conf_begin(sm_conf, conf, C);

  for (int64_t n = blockIdx.y; n < pr.N; n += gridDim.y) {
    int64_t b, e;
    vec::run_chunk(pr.S, P, j, &b, &e);
    A acc[CPT][KX];
#pragma unroll
    for (int q = 0; q < CPT; ++q)
#pragma unroll
      for (int k = 0; k < KX; ++k) acc[q][k] = A(0);

    for (int64_t s0 = b; s0 < e; s0 += step) {  // the same trip count in every thread: shuffles below
      const int64_t s = s0 + run * kVec;
      const int cnt = vec::run_count(s, e);
      int64_t cls[kVec];
      T vlab[kVec];
      if (pr.t_is_label) run_labels(pr, n, s, vt, cnt, g == 0 ? flag : nullptr, cls, vlab);
      T x[CPT][kVec];
#pragma unroll
      for (int q = 0; q < CPT; ++q) {
        const int64_t c = int64_t(q) * G + g;
        if (c < C) vec::load4<T>(pr.x, pr.x_dtype, n * pr.xsN + c * pr.xsC + s * pr.xsS, pr.xsS, vx, cnt, x[q]);
        else
#pragma unroll
          for (int i = 0; i < kVec; ++i) x[q][i] = T(0);
      }
      // per pixel: softmax max and 1/sum, the fused term h, over the class lanes
      T m[kVec], inv[kVec], h[kVec];
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        m[i] = T(0), inv[i] = T(1), h[i] = T(0);
        if (pr.act != kSoftmax) continue;
        T mi = T(-INFINITY);
#pragma unroll
        for (int q = 0; q < CPT; ++q)
          if (int64_t(q) * G + g < C) mi = x[q][i] > mi ? x[q][i] : mi;
        for (int o = 1; o < G; o <<= 1) {
          const T u = __shfl_xor_sync(0xffffffffu, mi, o);
          mi = u > mi ? u : mi;
        }
        T sum = T(0);
#pragma unroll
        for (int q = 0; q < CPT; ++q)
          if (int64_t(q) * G + g < C) sum += exp_t(x[q][i] - mi);
        for (int o = 1; o < G; o <<= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
        m[i] = mi;
        inv[i] = T(1) / sum;
        if (pr.xent == kXentFused) {  // lse over the classes 1..C-1, as lse_fg
          T mf = T(-INFINITY), sf = T(0);
#pragma unroll
          for (int q = 0; q < CPT; ++q) {
            const int64_t c = int64_t(q) * G + g;
            if (c >= 1 && c < C) mf = fmax(mf, x[q][i]);
          }
          for (int o = 1; o < G; o <<= 1) mf = fmax(mf, __shfl_xor_sync(0xffffffffu, mf, o));
          mf = isinf(mf) ? T(0) : mf;
#pragma unroll
          for (int q = 0; q < CPT; ++q) {
            const int64_t c = int64_t(q) * G + g;
            if (c >= 1 && c < C) sf += exp_t(x[q][i] - mf);
          }
          for (int o = 1; o < G; o <<= 1) sf += __shfl_xor_sync(0xffffffffu, sf, o);
          h[i] = (mi - (mf + log(sf))) - log(inv[i]);
        }
      }
      if (conf != nullptr && pr.t_is_label) {  // torch.argmax over the class lanes
#pragma unroll
        for (int i = 0; i < kVec; ++i) {
          T best = T(-INFINITY);
          int arg = 0x7fffffff;
#pragma unroll
          for (int q = 0; q < CPT; ++q) {
            const int c = q * G + g;
            if (c < C && argmax_beats(x[q][i], c, best, arg)) best = x[q][i], arg = c;
          }
          for (int o = 1; o < G; o <<= 1) {
            const T u = __shfl_xor_sync(0xffffffffu, best, o);
            const int k = __shfl_xor_sync(0xffffffffu, arg, o);
            if (argmax_beats(u, k, best, arg)) best = u, arg = k;
          }
          if (g == 0 && cls[i] >= 0) {
            const int64_t bin = cls[i] * C + arg;
            conf_add(sm_conf, conf, shared_conf, bin);
          }
        }
      }
      // the sums of this thread's classes
#pragma unroll
      for (int q = 0; q < CPT; ++q) {
        const int64_t c = int64_t(q) * G + g;
        if (c >= C) continue;
        T tv[kVec], vv[kVec];
        if (!pr.t_is_label) {
          T raw[kVec];
          vec::load4<T>(pr.t, pr.t_dtype, n * pr.tsN + c * pr.tsC + s * pr.tsS, pr.tsS, vt, cnt, raw);
#pragma unroll
          for (int i = 0; i < kVec; ++i) decode_dense(raw[i], pr.has_ignore, pr.ignore_value, &tv[i], &vv[i]);
        } else {
#pragma unroll
          for (int i = 0; i < kVec; ++i) tv[i] = cls[i] == c ? T(1) : T(0), vv[i] = vlab[i];
        }
#pragma unroll
        for (int i = 0; i < kVec; ++i) {
          if (i >= cnt) continue;
          const T xv = x[q][i], t = tv[i], v = vv[i];
          const T p = pr.act == kSoftmax ? exp_t(xv - m[i]) * inv[i] : activate<T>(pr, xv, T(0), T(1));
          accumulate<T, A>(acc[q], p, t, v);
          if (pr.xent) {  // inv holds 1/sum: -log p = (max - x) - log(1/sum), torch's order
            const T nl = (m[i] - xv) - log(inv[i]);
            if (pr.xent == kXentCE) {  // selects, not products: nl is inf for a -inf logit
              acc[q][kS7] += t > T(0) ? t * nl : T(0);
              acc[q][kS8] += v > T(0) ? v * nl : T(0);
            } else if (pr.xent == kXentFocal) {
              if (t > T(0)) acc[q][kS7] += focal_value(p, nl, make_focal<T>(pr.gamma, -1.0));
            } else {
              acc[q][kS7] += t > T(0) ? t * nl : T(0);
              if (c >= 1 && t > T(0)) acc[q][kS8] += t * h[i];
            }
          }
        }
      }
    }

    // after the loop: over the pixel lanes (shuffles), then over the warps (shared memory)
    A* __restrict__ o = out + (n * P + j) * C * KO;
#pragma unroll
    for (int q = 0; q < CPT; ++q) {
#pragma unroll
      for (int k = 0; k < KX; ++k) {
        A a = acc[q][k];
        for (int off = 16; off >= G; off >>= 1) a += __shfl_xor_sync(0xffffffffu, a, off);
        if (lane < G) red[warp][lane][k] = a;
      }
      __syncthreads();
      for (int idx = threadIdx.x; idx < G * KO; idx += blockDim.x) {
        const int gg = idx / KO, k = idx - gg * KO;
        const int64_t c = int64_t(q) * G + gg;
        if (c >= C) continue;
        A r = A(0);
        for (int w = 0; w < kStatsWarps; ++w) r += red[w][gg][k];
        o[c * KO + k] = r;
      }
      __syncthreads();  // red is rewritten by the next class slot
    }
  }
  conf_end(sm_conf, conf, shared_conf, C);
}

// The stats pass for C > kRegMaxC (float64: C > kRegMaxC / 2); see the top of
// the file. sh: the warps' running sums in dynamic shared memory ([W][C][KO],
// blockDim.x = 32 W), else (W = 1) in the block's out slot.
// At most 128 registers (2 blocks of 256 threads per SM): without the bound
// ptxas gives the float64 instantiation 132 on sm_90.
template <typename T, typename A>
__global__ void __launch_bounds__(kStatsThreads, 2) stats_wide_kernel(const Problem pr, const int64_t P, const bool vx, const bool vt, const bool sh,
                                  A* __restrict__ out, int32_t* __restrict__ flag,
                                  unsigned long long* __restrict__ conf) {
  extern __shared__ double sm_wide[];  // the warps' running sums when sh
  const int64_t C = pr.C;
  const int64_t j = blockIdx.x;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, W = blockDim.x >> 5;
  const int KO = num_stats(pr);
  const int64_t row = C * KO;
  const int64_t tile = 32 * kVec;  // pixels of a warp tile: a run per lane
  const bool softmax = pr.act == kSoftmax, fused = pr.xent == kXentFused, arg = conf != nullptr;

  for (int64_t n = blockIdx.y; n < pr.N; n += gridDim.y) {
    int64_t b, e;
    vec::run_chunk(pr.S, P, j, &b, &e);
    A* __restrict__ o = out + (n * P + j) * row;
    A* acc = sh ? reinterpret_cast<A*>(sm_wide) + warp * row : o;
    for (int64_t c = lane; c < C; c += 32)  // class c's sums: read and written by lane c % 32 only
      for (int k = 0; k < KO; ++k) acc[c * KO + k] = A(0);

    for (int64_t s0 = b + warp * tile; s0 < e; s0 += W * tile) {  // the same trip count in every lane: shuffles
      const int64_t s = s0 + lane * kVec;
      const int cnt = vec::run_count(s, e);
      int32_t cls[kVec];  // classes fit in 32 bits: fewer registers
      T vlab[kVec], xr[kVec];
#pragma unroll
      for (int i = 0; i < kVec; ++i) cls[i] = -1, vlab[i] = i < cnt ? T(1) : T(0);
      if (pr.t_is_label) run_labels(pr, n, s, vt, cnt, flag, cls, vlab);
      // passes 1 and 2 over the classes: the softmax max and sum, the fused
      // term's h = lse - lse_fg, the confusion argmax
      T m[kVec], inv[kVec], h[kVec];
      int32_t am[kVec];
      run_softmax(pr, n, s, vx, cnt, softmax, fused, arg, m, inv, h, am);
      if (fused)
#pragma unroll
        for (int i = 0; i < kVec; ++i) h[i] = (m[i] - h[i]) - log(inv[i]);
      if (arg) {
#pragma unroll
        for (int i = 0; i < kVec; ++i)
          if (cls[i] >= 0) atomicAdd(&conf[int64_t(cls[i]) * C + am[i]], 1ull);
      }
      // pass 3: each class's sums over the tile, reduced over the lanes with shuffles
      for (int64_t c = 0; c < C; ++c) {
        run_x(pr, n, c, s, vx, cnt, xr);
        T t[kVec], v[kVec];
        run_tv(pr, n, c, s, vt, cnt, cls, vlab, t, v);
        A a[KX];
#pragma unroll
        for (int k = 0; k < KX; ++k) a[k] = A(0);
#pragma unroll
        for (int i = 0; i < kVec; ++i) {
          const T p = softmax ? exp_t(xr[i] - m[i]) * inv[i] : activate<T>(pr, xr[i], T(0), T(1));
          accumulate<T, A>(a, p, t[i], v[i]);
          if (pr.xent) {  // inv holds 1/sum: -log p = (max - x) - log(1/sum), torch's order
            const T nl = (m[i] - xr[i]) - log(inv[i]);
            if (pr.xent == kXentCE) {  // selects, not products: nl is inf for a -inf logit
              a[kS7] += t[i] > T(0) ? t[i] * nl : T(0);
              a[kS8] += v[i] > T(0) ? v[i] * nl : T(0);
            } else if (pr.xent == kXentFocal) {
              if (t[i] > T(0)) a[kS7] += focal_value(p, nl, make_focal<T>(pr.gamma, -1.0));
            } else {
              a[kS7] += t[i] > T(0) ? t[i] * nl : T(0);
              if (c >= 1 && t[i] > T(0)) a[kS8] += t[i] * h[i];
            }
          }
        }
#pragma unroll
        for (int k = 0; k < KX; ++k)
          if (k < KO) a[k] = warp_sum(a[k]);
        if (lane == (c & 31)) {
          A* ac = acc + c * KO;
#pragma unroll
          for (int k = 0; k < KX; ++k)
            if (k < KO) ac[k] += a[k];
        }
      }
    }
    if (sh) {  // the warps' sums into the block's slot, in warp order
      __syncthreads();
      const A* sa = reinterpret_cast<const A*>(sm_wide);
      for (int64_t i = threadIdx.x; i < row; i += blockDim.x) {
        A r = sa[i];
        for (int w = 1; w < W; ++w) r += sa[w * row + i];
        o[i] = r;
      }
      __syncthreads();  // the next image zeroes the warps' sums
    }
  }
}

// ---- finish ----------------------------------------------------------------------------

// The sum (or the maximum) of v over the block, the same value in every
// thread; red: 32 values of shared memory. Every thread must call it.
template <typename A>
__device__ A block_reduce(A v, A* red, bool is_max) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const A u = __shfl_xor_sync(0xffffffffu, v, o);
    v = is_max ? (u > v ? u : v) : v + u;
  }
  __syncthreads();  // the previous reduction's readers are done with red
  if (lane == 0) red[warp] = v;
  __syncthreads();
  A r = red[0];
  for (int w = 1; w < nwarps; ++w) r = is_max ? (red[w] > r ? red[w] : r) : r + red[w];
  return r;
}

// b^e for b >= 0 (0^e = 0 for e > 0, 1 for e = 0); a NaN b stays NaN.
template <typename T>
__device__ __forceinline__ T pow_nonneg(T b, T e) {
  if (b > T(0)) return pow_t(b, e);
  return b == b ? (e == T(0) ? T(1) : T(0)) : b;
}

// num/den, 1 where den == 0; *rden = 1/den (0 there).
template <typename T>
__device__ __forceinline__ T safe_score(T num, T den, T* rden) {
  const bool zero = den == T(0);
  *rden = zero ? T(0) : T(1) / den;
  return zero ? T(1) : num * *rden;
}

// The loss f of a score and df/dscore: 1 - score or -log(max(score, 1e-7)),
// then max(f, 0)^gamma (pw); NaN stays NaN.
template <typename T>
__device__ __forceinline__ T score_loss(T score, T gamma, bool log_loss, bool pw, T* dfds) {
  T f;
  if (log_loss) {
    f = -log(score == score && score < T(1e-7) ? T(1e-7) : score);
    *dfds = score >= T(1e-7) ? T(-1) / score : T(0);
  } else {
    f = T(1) - score;
    *dfds = T(-1);
  }
  if (pw) {
    const T fc = f == f && f < T(0) ? T(0) : f;
    *dfds = (f >= T(0) ? gamma * pow_nonneg(fc, gamma - T(1)) : T(0)) * *dfds;
    f = pow_nonneg(fc, gamma);
  }
  return f;
}

template <typename A>
__global__ void __launch_bounds__(kFinishThreads)
    finish_kernel(const Finish fp, const A* __restrict__ part, A* __restrict__ sums, A* __restrict__ coef,
                  A* __restrict__ loss, uint8_t* __restrict__ ok, const int32_t* __restrict__ flag,
                  const A* __restrict__ w, const A* __restrict__ pw) {
  __shared__ A red[32];
  const int64_t C = fp.C, KO = fp.KO, P = fp.P, row = C * KO;
  // 1. the sums per image: the chunks' partial sums in chunk order
  for (int64_t i = threadIdx.x; i < fp.N * row; i += blockDim.x) {
    const int64_t n = i / row;
    const A* src = part + n * P * row + (i - n * row);
    A acc = A(0);
    for (int64_t p = 0; p < P; ++p) acc += src[p * row];
    sums[i] = acc;
  }
  __syncthreads();  // sums[n] is read below by the thread of each class

  const int64_t c = threadIdx.x;
  const bool in = c < C, keep = in && c >= fp.c0;
  const A wc = w != nullptr ? (in ? w[c] : A(0)) : A(1);
  A pI = A(0), pP = A(0), pT = A(0), p7 = A(0), p8 = A(0);  // pooled over the batch
  if (in) {
    for (int64_t n = 0; n < fp.N; ++n) {
      const A* sc = sums + n * row + c * KO;
      pI += sc[kI];
      pP += sc[kP];
      pT += sc[kT];
      if (fp.xent) {
        p7 += sc[kS7];
        p8 += sc[kS8];
      }
    }
  }

  // 2. the pixel term on the pooled sums, and its coefficients (the same for every image)
  A total = A(0), g7 = A(0), g8 = A(0);
  if (fp.xent) {
    const A u = in ? (pw != nullptr ? pw[c] : A(1)) : A(0), eps = A(fp.eps), ws = A(fp.ws), wp = A(fp.wp);
    A num, den, u7, u8 = A(0);
    if (fp.xent == kXentCE) {
      A nc = (A(1) - eps) * p7;
      if (fp.eps != 0) nc += (eps / A(C)) * p8;  // S8 is infinite with a -inf logit: no 0*inf
      num = block_reduce(in ? nc * u : A(0), red, false);
      den = block_reduce(in ? pT * u : A(0), red, false);
      u7 = (A(1) - eps) * u;
      if (fp.eps != 0) u8 = (eps / A(C)) * u;
    } else if (fp.xent == kXentFocal) {
      num = block_reduce(in ? u * p7 : A(0), red, false);
      den = block_reduce(in ? pT : A(0), red, false);
      u7 = u;
    } else {  // fused
      num = ws * block_reduce(in ? p7 : A(0), red, false) +
            wp * block_reduce(in ? (c == 0 ? p7 : p8) : A(0), red, false);
      den = block_reduce(in ? pT : A(0), red, false);
      u7 = ws + (c == 0 ? wp : A(0));
      u8 = c >= 1 ? wp : A(0);
    }
    const bool pos = den > A(0);
    const A rden = pos ? A(1) / den : A(0);
    total = A(fp.lam_x) * (pos ? num * rden : A(0));
    g7 = in ? A(fp.lam_x) * u7 * rden : A(0);
    g8 = in ? A(fp.lam_x) * u8 * rden : A(0);
  }

  // 3. the region term and the coefficients of every image
  const A gscale = A(fp.lam_r) * A(fp.scale_r), gamma = A(fp.gamma);
  const bool log_loss = fp.log != 0, pw_loss = fp.gamma != 1.0;
  A ratio_sum = A(0);  // this class's weighted losses (ratio term), summed over the block at the end
  A gI = A(0), gP = A(0), gT = A(0);
  auto plane = [&](A I, A Pc, A T) {
    if (fp.gdl != kGdlNone) {
      A cw = fp.gdl == kGdlSquare ? A(1) / (T * T) : (fp.gdl == kGdlSimple ? A(1) / T : A(1));
      const bool inf = cw == A(INFINITY);
      cw = keep && !inf ? cw : A(0);
      const A mx = block_reduce(cw, red, true);  // an absent class takes the largest finite weight
      cw = (keep && inf ? mx : cw) * wc;
      A rden, dfds;
      const A score = safe_score(A(2) * block_reduce(cw * I, red, false) + A(fp.nr),
                                 block_reduce(cw * (Pc + T), red, false) + A(fp.dr), &rden);
      total += gscale * score_loss(score, A(1), log_loss, false, &dfds);
      const A gnum = gscale * dfds * rden, gden = -gscale * dfds * score * rden;
      gI = A(2) * cw * gnum;
      gP = cw * gden;
      gT = cw * gden;
    } else {
      A rden, dfds;
      const A score = safe_score(A(fp.cI) * I + A(fp.nr),
                                 A(fp.dI) * I + A(fp.dP) * Pc + A(fp.dT) * T + A(fp.dr), &rden);
      const A f = score_loss(score, gamma, log_loss, pw_loss, &dfds);
      const A gs = keep ? gscale * wc * dfds : A(0);
      const A gnum = gs * rden, gden = -gs * score * rden;
      ratio_sum += keep ? f * wc : A(0);
      gI = gnum * A(fp.cI) + gden * A(fp.dI);
      gP = gden * A(fp.dP);
      gT = gden * A(fp.dT);
    }
  };
  if (fp.batch) plane(pI, pP, pT);
  for (int64_t n = 0; n < fp.N; ++n) {
    if (!fp.batch) {
      const A* sc = sums + n * row + c * KO;
      plane(in ? sc[kI] : A(0), in ? sc[kP] : A(0), in ? sc[kT] : A(0));
    }
    if (in) {
      A* g = coef + n * row + c * KO;
      for (int k = 0; k < KO; ++k)
        g[k] = k == kI ? gI : k == kP ? gP : k == kT ? gT : k == kS7 ? g7 : k == kS8 ? g8 : A(0);
    }
  }
  const A ratio_total = block_reduce(ratio_sum, red, false);
  if (threadIdx.x == 0) {
    *loss = total + gscale * ratio_total;
    *ok = flag == nullptr || *flag == 0 ? 1 : 0;
  }
}

// grad: a thread per run of kVec pixels (vec.cuh): every class row of the run
// one vector load (and dx one vector store) where the rows are contiguous and
// aligned, element accesses elsewhere. Three passes over the classes (softmax
// max, then its sum and the fused term's foreground logsumexp; sum_k p_k a_k;
// dx), the same math per pixel as before, in registers for the kVec pixels.
template <typename T, typename G>
__global__ void grad_kernel(const Problem pr, const G* __restrict__ g, void* __restrict__ dx,
                            const int64_t dxsN, const int64_t dxsC, const int64_t dxsS, const G* __restrict__ go,
                            const bool vx, const bool vt, const bool vd) {
  const int64_t s = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * kVec;
  if (s >= pr.S) return;
  const int cnt = vec::run_count(s, pr.S);
  const int64_t C = pr.C;
  const T gout = go != nullptr ? T(*go) : T(1);  // grad_output of a scalar loss: g is dLoss/dStats at 1
  const bool ce = pr.xent == kXentCE, fused = pr.xent == kXentFused, softmax = pr.act == kSoftmax;
  const int KO = num_stats(pr);
  for (int64_t n = blockIdx.y; n < pr.N; n += gridDim.y) {
    int64_t cls[kVec];
    T vlab[kVec], xr[kVec];
    if (pr.t_is_label) {
      run_labels(pr, n, s, vt, cnt, nullptr, cls, vlab);
    } else {
#pragma unroll
      for (int i = 0; i < kVec; ++i) cls[i] = -1, vlab[i] = T(1);
    }
    // softmax max and 1/sum; the fused term's logsumexp over the classes 1..C-1
    T m[kVec], inv[kVec], lfg[kVec];
    int32_t am[kVec];
    run_softmax(pr, n, s, vx, cnt, softmax, fused, false, m, inv, lfg, am);
    const G* gn = g + n * C * KO;
    // pixel term: dx_c += v (p_c B - b_c), b_c = [c == y] g7 + g8c + k q_c (region.h)
    T B[kVec], g7y[kVec], k[kVec], dot[kVec];
    T B8 = T(0);
    if (ce)
      for (int64_t c = 0; c < C; ++c) B8 += T(gn[c * KO + kS8]);
#pragma unroll
    for (int i = 0; i < kVec; ++i) {
      B[i] = g7y[i] = k[i] = T(0);
      const int64_t y = cls[i];
      if (pr.xent && y >= 0) {
        g7y[i] = T(gn[y * KO + kS7]);
        if (ce) {
          B[i] = g7y[i] + B8;
        } else if (pr.xent == kXentFocal) {  // b = [c == y] u, u = g7_y q(p_y)
          const T xy = load_x<T>(pr, n, y, s + i);
          g7y[i] *= focal_dlogp(exp_t(xy - m[i]) * inv[i], (m[i] - xy) - log(inv[i]), make_focal<T>(pr.gamma, -1.0));
          B[i] = g7y[i];
        } else {  // q_c = exp(x_c - lse_fg), k = [y >= 1] g8_y
          k[i] = y >= 1 ? T(gn[y * KO + kS8]) : T(0);
          B[i] = g7y[i] + k[i];
        }
      }
      // fused, every pixel (an ignored one too): q_c = exp(x_c - lfg) <= 1; q = 0/0: NaN on every class
      if (fused && !(lfg[i] > T(-INFINITY))) B[i] = T(NAN);
      dot[i] = -vlab[i] * B[i];
    }
    T t[kVec], v[kVec], p[kVec];
    if (softmax) {
      for (int64_t c = 0; c < C; ++c) {
        run_x(pr, n, c, s, vx, cnt, xr);
        run_tv(pr, n, c, s, vt, cnt, cls, vlab, t, v);
#pragma unroll
        for (int i = 0; i < kVec; ++i) {
          const T pc = exp_t(xr[i] - m[i]) * inv[i];
          dot[i] += pc * dloss_dp<T, G>(pc, t[i], v[i], gn + c * KO);
        }
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      run_x(pr, n, c, s, vx, cnt, xr);
      run_tv(pr, n, c, s, vt, cnt, cls, vlab, t, v);
      const G* gc = gn + c * KO;
      T d[kVec];
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        p[i] = activate<T>(pr, xr[i], m[i], inv[i]);
        const T a = dloss_dp<T, G>(p[i], t[i], v[i], gc);
        if (pr.xent) {
          T b = cls[i] == c ? (ce || fused ? T(gc[kS7]) : g7y[i]) : T(0);
          if (ce) b += T(gc[kS8]);
          if (fused && c >= 1) b += k[i] * exp_t(xr[i] - lfg[i]);
          d[i] = p[i] * (a - dot[i]) - v[i] * b;
        } else if (softmax) {
          d[i] = p[i] * (a - dot[i]);
        } else if (pr.act == kSigmoid) {
          d[i] = a * p[i] * (T(1) - p[i]);
        } else {
          d[i] = a;
        }
        d[i] *= gout;
      }
      vec::store4<T>(dx, pr.x_dtype, n * dxsN + c * dxsC + s * dxsS, dxsS, vd, cnt, d);
    }
  }
}

void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("segfast: ") + what + " launch failed: " +
                             cudaGetErrorString(err));
}

unsigned grid_y(int64_t N) { return unsigned(N < kMaxGridY ? N : kMaxGridY); }

// Warps of a stats_wide_kernel block: as many as kWideSmem holds running sums
// [C][KO] for, at most kStatsWarps; 0 when not even one fits (one warp, its
// sums in the block's out slot).
template <typename A>
int wide_warps(int64_t C, int KO) {
  const int64_t w = kWideSmem / (C * KO * int64_t(sizeof(A)));
  return int(w < kStatsWarps ? w : kStatsWarps);
}

template <typename T, typename A>
void launch_stats(const Problem& pr, int64_t P, A* out, cudaStream_t st, int32_t* flag, unsigned long long* conf) {
  const dim3 grid(unsigned(P), grid_y(pr.N));
  const int64_t C = pr.C;
  const bool vx = vec::vec_ok(pr.x, pr.x_dtype, pr.xsS, pr.xsN, pr.xsC);
  const bool vt = vec::vec_ok(pr.t, pr.t_dtype, pr.tsS, pr.tsN, pr.t_is_label ? 0 : pr.tsC);
  // float64 at 8 classes per lane would spill (255 registers): the wide kernel from 129 classes
  if (C > kRegMaxC || (sizeof(T) == 8 && C > kRegMaxC / 2)) {
    const int KO = num_stats(pr);
    const int w = wide_warps<A>(C, KO);
    const size_t smem = size_t(w) * size_t(C) * size_t(KO) * sizeof(A);
    stats_wide_kernel<T, A><<<grid, 32 * (w > 0 ? w : 1), smem, st>>>(pr, P, vx, vt, w > 0, out, flag, conf);
    return;
  }
  // CPT classes per lane, G = 2^lg class lanes: the fewest classes per thread
  const int cpt = C <= 32 ? 1 : C <= 64 ? 2 : C <= 128 ? 4 : 8;
  int lg = 0;
  while ((int64_t(1) << lg) * cpt < C) ++lg;
  switch (cpt) {
    case 1: stats_kernel<T, A, 1><<<grid, kStatsThreads, 0, st>>>(pr, P, lg, vx, vt, out, flag, conf); break;
    case 2: stats_kernel<T, A, 2><<<grid, kStatsThreads, 0, st>>>(pr, P, lg, vx, vt, out, flag, conf); break;
    case 4: stats_kernel<T, A, 4><<<grid, kStatsThreads, 0, st>>>(pr, P, lg, vx, vt, out, flag, conf); break;
    default:
      if constexpr (sizeof(T) == 4)
        stats_kernel<T, A, 8><<<grid, kStatsThreads, 0, st>>>(pr, P, lg, vx, vt, out, flag, conf);
      break;
  }
}

}  // namespace

void region_stats_cuda(const Problem& pr, int64_t P, void* out, uintptr_t stream, int32_t* flag,
                       int64_t* confusion) {
  if (pr.N <= 0 || P <= 0 || pr.C <= 0) return;
  if (P > int64_t(0x7fffffff)) throw std::invalid_argument("segfast: P too large");
  cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  if (!pr.t_is_label) flag = nullptr, confusion = nullptr;
  auto* conf = reinterpret_cast<unsigned long long*>(confusion);
  if (pr.x_dtype == kFloat64)
    launch_stats<double, double>(pr, P, static_cast<double*>(out), st, flag, conf);
  else
    launch_stats<float, float>(pr, P, static_cast<float*>(out), st, flag, conf);
  check_launch("region_stats_cuda");
}

void region_grad_cuda(const Problem& pr, const void* g, void* dx, int64_t dxsN, int64_t dxsC,
                      int64_t dxsS, uintptr_t stream, const void* go) {
  if (pr.N <= 0 || pr.C <= 0 || pr.S <= 0) return;
  const int64_t blocks = (pr.S + kGradThreads * kVec - 1) / (kGradThreads * kVec);
  if (blocks > int64_t(0x7fffffff)) throw std::invalid_argument("segfast: S too large");
  const dim3 grid(unsigned(blocks), grid_y(pr.N));
  cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  const bool vx = vec::vec_ok(pr.x, pr.x_dtype, pr.xsS, pr.xsN, pr.xsC);
  const bool vt = vec::vec_ok(pr.t, pr.t_dtype, pr.tsS, pr.tsN, pr.t_is_label ? 0 : pr.tsC);
  const bool vd = vec::vec_ok(dx, pr.x_dtype, dxsS, dxsN, dxsC);
  if (pr.x_dtype == kFloat64)
    grad_kernel<double, double><<<grid, kGradThreads, 0, st>>>(
        pr, static_cast<const double*>(g), dx, dxsN, dxsC, dxsS, static_cast<const double*>(go), vx, vt, vd);
  else
    grad_kernel<float, float><<<grid, kGradThreads, 0, st>>>(
        pr, static_cast<const float*>(g), dx, dxsN, dxsC, dxsS, static_cast<const float*>(go), vx, vt, vd);
  check_launch("region_grad_cuda");
}

void region_finish_cuda(const Finish& fp, bool f64, const void* part, void* sums, void* coef, void* loss,
                        uint8_t* ok, const int32_t* flag, const void* w, const void* pw, uintptr_t stream) {
  if (fp.N <= 0 || fp.C <= 0 || fp.P <= 0) throw std::invalid_argument("segfast: region_finish_cuda: empty sums");
  if (fp.C > kFinishMaxC) throw std::invalid_argument("segfast: region_finish_cuda: C > kFinishMaxC");
  if (fp.KO != (fp.xent ? KX : K)) throw std::invalid_argument("segfast: region_finish_cuda: KO");
  cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  if (f64)
    finish_kernel<double><<<1, kFinishThreads, 0, st>>>(
        fp, static_cast<const double*>(part), static_cast<double*>(sums), static_cast<double*>(coef),
        static_cast<double*>(loss), ok, flag, static_cast<const double*>(w), static_cast<const double*>(pw));
  else
    finish_kernel<float><<<1, kFinishThreads, 0, st>>>(
        fp, static_cast<const float*>(part), static_cast<float*>(sums), static_cast<float*>(coef),
        static_cast<float*>(loss), ok, flag, static_cast<const float*>(w), static_cast<const float*>(pw));
  check_launch("region_finish_cuda");
}

}  // namespace region
}  // namespace segfast
