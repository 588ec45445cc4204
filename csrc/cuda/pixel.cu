// Pixel family, CUDA kernels. Same math as the CPU kernels (csrc/common/pixel.h);
// segfast/reference/pixel.py defines the semantics.
//
// Grid (chunk j, image n), the image index looped past the 65535 grid-y cap.
// A block strides over the pixels of its chunk (chunk j of the caller's P when
// the loss sums are wanted, else chunks of ~kPixelsPerBlock pixels):
//   softmax kinds: one thread per pixel, looping over the C classes (max,
//     then exp sums and the target's logit, then the gradient), any C;
//   sigmoid kinds: one thread per element, classes outer, pixels inner.
// Each thread sums its l0 / l1 in the accumulation type, the block reduces in
// shared memory in a fixed order, and thread 0 writes the block's own [n, j]
// slot: one writer per slot, no atomics, deterministic.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "../common/pixel.h"

namespace segfast {
namespace pixel {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kPixelsPerBlock = 4 * kThreads;
constexpr int kMaxGridY = 65535;

// Sum of v over the block (blockDim.x == kThreads); the result in thread 0.
template <typename A>
__device__ __forceinline__ A block_sum(A v, A* sm) {
  sm[threadIdx.x] = v;
  __syncthreads();
  for (int o = kThreads / 2; o > 0; o >>= 1) {
    if (threadIdx.x < o) sm[threadIdx.x] += sm[threadIdx.x + o];
    __syncthreads();
  }
  const A r = sm[0];
  __syncthreads();
  return r;
}

// No __launch_bounds__ on the two loss kernels: given the 256-thread bound,
// ptxas (CUDA 13) trims them to 40-64 registers for occupancy and spills 8-16 B
// of the chunk bounds and per-pixel sums (sm_80 and sm_90); unbounded they keep
// everything in registers (40-107, at most 27k of an SM's 64k per 256-thread
// block, so 2-6 blocks per SM). Launched with kThreads threads only.
template <int KIND, typename T>
__global__ void softmax_kernel(const Problem pr, const int64_t Pe) {
  __shared__ T sm[kThreads];
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
  for (int64_t n = blockIdx.y; n < pr.N; n += gridDim.y) {
    int64_t b, e;
    chunk_range(pr.S, Pe, j, &b, &e);
    T a0 = T(0), a1 = T(0);
    for (int64_t s = b + threadIdx.x; s < e; s += blockDim.x) {
      const int64_t lab = load_i64(pr.t, pr.t_dtype, n * pr.tsN + s * pr.tsS);
      const int64_t y = softmax_class(lab, C, pr.label_offset, pr.has_ignore, pr.ignore_value);
      const bool valid = y >= 0;
      // max (FUSED: also over c >= 1)
      const int64_t cm = KIND == kFused ? 1 : 0;
      T m = load_x<T>(pr, n, cm, s);
      for (int64_t c = cm + 1; c < C; ++c) {
        const T v = load_x<T>(pr, n, c, s);
        m = v > m ? v : m;
      }
      const T x0 = load_x<T>(pr, n, 0, s);
      T mfg = m;
      if (KIND == kFused) m = x0 > mfg ? x0 : mfg;
      // sums
      T sum = T(0), sumfg = T(0), so = T(0), xy = T(0), wx = T(0), e0 = T(0);
      if (KIND == kFused) {
        e0 = exp_t(x0 - m);
        xy = y == 0 ? x0 : T(0);
        wx = smooth ? (wt ? wt[0] : T(1)) * x0 : T(0);
      }
      for (int64_t c = cm; c < C; ++c) {
        const T xv = load_x<T>(pr, n, c, s);
        const T ev = exp_t(xv - (KIND == kFused ? mfg : m));
        const bool hit = y == c;
        xy += hit ? xv : T(0);
        if (smooth) wx += (wt ? wt[c] : T(1)) * (KIND == kFused ? xv : m - xv);  // pixel.h softmax_pixel
        if (KIND == kFocalSoftmax) so += hit ? T(0) : ev;
        if (KIND == kFused) sumfg += ev;
        else sum += ev;
      }
      const T g = pr.go ? static_cast<const T*>(pr.go)[pr.go_scalar ? 0 : n * pr.S + s] : T(1);
      const T wy = wt ? wt[y < 0 ? 0 : y] : T(1);
      T l0, l1, k0, k1, kb, kw;
      softmax_pixel<KIND, T>(valid, m, sum, so, mfg, sumfg, e0, xy, x0, y == 0, wx, wy, W, invC,
                             eps, focal, sc0, sc1, g, &l0, &l1, &k0, &k1, &kb, &kw);
      a0 += l0;
      a1 += l1;
      if (pr.map) static_cast<T*>(pr.map)[n * pr.S + s] = sc0 * l0 + sc1 * l1;
      if (pr.dx) {
        for (int64_t c = 0; c < C; ++c) {
          const T xv = load_x<T>(pr, n, c, s);
          const bool fg = KIND == kFused && c >= 1;
          const T ev = exp_t(xv - (fg ? mfg : m));
          const T d = ev * ((KIND == kFused && c == 0) ? k0 : k1) + (y == c ? kb : T(0)) +
                      (wt ? wt[c] : T(1)) * kw;
          store_as(pr.dx, pr.x_dtype, n * pr.dxsN + c * pr.dxsC + s * pr.dxsS, d);
        }
      }
    }
    if (pr.loss) {
      a0 = block_sum(a0, sm);
      a1 = block_sum(a1, sm);
      if (threadIdx.x == 0) {
        T* o = static_cast<T*>(pr.loss) + (n * pr.P + j) * 2;
        o[0] = a0;
        o[1] = a1;
      }
    }
  }
}

// Softmax focal on dense targets: one thread per pixel, one term per element
// (dense_focal_term); three loops over the classes (max, sum, terms) and one
// more for dx. A pixel with any channel equal to the ignore value counts nowhere.
template <typename T>
__global__ void softmax_dense_kernel(const Problem pr, const int64_t Pe) {
  __shared__ T sm[kThreads];
  const int64_t C = pr.C;
  const int64_t j = blockIdx.x;
  const T* __restrict__ wt = static_cast<const T*>(pr.w);
  const Focal<T> focal = make_focal<T>(pr.gamma, pr.alpha);
  const T sc0 = T(pr.scale0);
  const T ign = T(pr.ignore_value);
  for (int64_t n = blockIdx.y; n < pr.N; n += gridDim.y) {
    int64_t b, e;
    chunk_range(pr.S, Pe, j, &b, &e);
    T acc = T(0);
    for (int64_t s = b + threadIdx.x; s < e; s += blockDim.x) {
      T m = load_x<T>(pr, n, 0, s);
      for (int64_t c = 1; c < C; ++c) {
        const T v = load_x<T>(pr, n, c, s);
        m = v > m ? v : m;
      }
      T sum = T(0);
      for (int64_t c = 0; c < C; ++c) sum += exp_t(load_x<T>(pr, n, c, s) - m);
      const T lsum = log_t(sum);
      T lpix = T(0), bsum = T(0);
      bool valid = true;
      for (int64_t c = 0; c < C; ++c) {
        const T xv = load_x<T>(pr, n, c, s);
        T tc;
        load_as(pr.t, pr.t_dtype, n * pr.tsN + c * pr.tsC + s * pr.tsS, tc);
        const bool bad = pr.has_ignore && tc == ign;
        valid = valid && !bad;
        T l, aq, p;
        dense_focal_term<T>(xv, exp_t(xv - m), m, sum, lsum, bad ? T(0) : tc, wt ? wt[c] : T(1),
                            focal, &l, &aq, &p);
        const int64_t moff = (n * C + c) * pr.S + s;
        const T g = pr.go ? static_cast<const T*>(pr.go)[pr.go_scalar ? 0 : moff] : T(1);
        lpix += l;
        bsum += g * aq;
        if (pr.map) static_cast<T*>(pr.map)[moff] = sc0 * l;
      }
      acc += valid ? lpix : T(0);
      if (pr.map && !valid)
        for (int64_t c = 0; c < C; ++c) static_cast<T*>(pr.map)[(n * C + c) * pr.S + s] = T(0);
      if (pr.dx) {
        const T gv = valid ? sc0 : T(0);  // 0·d: NaN stays NaN, as the reference
        for (int64_t c = 0; c < C; ++c) {
          const T xv = load_x<T>(pr, n, c, s);
          T tc;
          load_as(pr.t, pr.t_dtype, n * pr.tsN + c * pr.tsC + s * pr.tsS, tc);
          T l, aq, p;
          dense_focal_term<T>(xv, exp_t(xv - m), m, sum, lsum, valid ? tc : T(0),
                              wt ? wt[c] : T(1), focal, &l, &aq, &p);
          const int64_t moff = (n * C + c) * pr.S + s;
          const T g = pr.go ? static_cast<const T*>(pr.go)[pr.go_scalar ? 0 : moff] : T(1);
          store_as(pr.dx, pr.x_dtype, n * pr.dxsN + c * pr.dxsC + s * pr.dxsS,
                   gv * (p * bsum - g * aq));
        }
      }
    }
    if (pr.loss) {
      acc = block_sum(acc, sm);
      if (threadIdx.x == 0) {
        T* o = static_cast<T*>(pr.loss) + (n * pr.P + j) * 2;
        o[0] = acc;
        o[1] = T(0);
      }
    }
  }
}

template <int KIND, typename T>
__global__ void sigmoid_kernel(const Problem pr, const int64_t Pe) {
  __shared__ T sm[kThreads];
  const int64_t C = pr.C;
  const int64_t j = blockIdx.x;
  const T* __restrict__ wt = static_cast<const T*>(pr.w);
  const T* __restrict__ pwt = static_cast<const T*>(pr.pw);
  const Focal<T> focal = make_focal<T>(pr.gamma, pr.alpha);
  const T sc0 = T(pr.scale0);
  const T ign = T(pr.ignore_value);
  for (int64_t n = blockIdx.y; n < pr.N; n += gridDim.y) {
    int64_t b, e;
    chunk_range(pr.S, Pe, j, &b, &e);
    T a_pos_b = T(1), a_neg = T(1);
    if (KIND == kBCE && pr.beta) {
      const T bn = static_cast<const T*>(pr.beta)[n];
      a_pos_b = bn;
      a_neg = T(1) - bn;
    }
    T acc = T(0);
    for (int64_t c = 0; c < C; ++c) {
      const T wc = wt ? wt[c] : T(1);
      const T a_pos = (pwt ? pwt[c] : T(1)) * a_pos_b;
      for (int64_t s = b + threadIdx.x; s < e; s += blockDim.x) {
        T t, v;
        if (pr.t_is_label) {
          bool valid;
          const int64_t lab = load_i64(pr.t, pr.t_dtype, n * pr.tsN + s * pr.tsS);
          const int64_t cls = region::decode_label(lab, C, pr.label_offset, pr.has_ignore,
                                                   pr.ignore_value, &valid);
          t = cls == c ? T(1) : T(0);
          v = valid ? T(1) : T(0);
        } else {
          T raw;
          load_as(pr.t, pr.t_dtype, n * pr.tsN + c * pr.tsC + s * pr.tsS, raw);
          const bool bad = pr.has_ignore && raw == ign;
          t = bad ? T(0) : raw;
          v = bad ? T(0) : T(1);
        }
        T l, d;
        sigmoid_term<KIND, T>(load_x<T>(pr, n, c, s), t, wc, a_pos, a_neg, focal, &l, &d);
        const bool ok = v != T(0);
        l = ok ? l : T(0);
        acc += l;
        const int64_t moff = (n * C + c) * pr.S + s;
        if (pr.map) static_cast<T*>(pr.map)[moff] = sc0 * l;
        if (pr.dx) {
          const T g = pr.go ? static_cast<const T*>(pr.go)[pr.go_scalar ? 0 : moff] : T(1);
          store_as(pr.dx, pr.x_dtype, n * pr.dxsN + c * pr.dxsC + s * pr.dxsS,
                   (ok ? g : T(0)) * sc0 * d);  // 0·d: NaN stays NaN, as the reference
        }
      }
    }
    if (pr.loss) {
      acc = block_sum(acc, sm);
      if (threadIdx.x == 0) {
        T* o = static_cast<T*>(pr.loss) + (n * pr.P + j) * 2;
        o[0] = acc;
        o[1] = T(0);
      }
    }
  }
}

void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("segfast: ") + what + " launch failed: " +
                             cudaGetErrorString(err));
}

template <typename T>
void launch(const Problem& pr, int64_t Pe, dim3 grid, cudaStream_t st) {
  switch (pr.kind) {
    case kCE: softmax_kernel<kCE, T><<<grid, kThreads, 0, st>>>(pr, Pe); break;
    case kFocalSoftmax:
      if (pr.t_is_label) softmax_kernel<kFocalSoftmax, T><<<grid, kThreads, 0, st>>>(pr, Pe);
      else softmax_dense_kernel<T><<<grid, kThreads, 0, st>>>(pr, Pe);
      break;
    case kFused: softmax_kernel<kFused, T><<<grid, kThreads, 0, st>>>(pr, Pe); break;
    case kBCE: sigmoid_kernel<kBCE, T><<<grid, kThreads, 0, st>>>(pr, Pe); break;
    default: sigmoid_kernel<kFocalSigmoid, T><<<grid, kThreads, 0, st>>>(pr, Pe); break;
  }
}

}  // namespace

void pixel_loss_cuda(const Problem& pr, uintptr_t stream) {
  if (pr.N <= 0 || pr.C <= 0) return;
  if (pr.loss && pr.P <= 0) return;
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
