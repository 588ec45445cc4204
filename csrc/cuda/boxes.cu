// Boxes family, CUDA kernels. Same math as the CPU kernels (csrc/common/boxes.h);
// see segfast/ops/boxes.py for the calling side.
//
// pairwise forward: one thread per output (b, n, m), m fastest (coalesced writes).
// pairwise backward: one warp per output row of a box set (boxes1 row (b, n)
//   reduces over m, boxes2 row (b, m) over n); lanes stride the reduced-over
//   set, a warp-shuffle sum, lane 0 writes: one writer per row, no atomics,
//   deterministic.
// aligned: one thread per pair, value and gradient in one pass.
// The backward and aligned kernels carry __launch_bounds__(256, 2): ptxas then
//   keeps them at <= 64 registers in float (4 blocks of 256 per SM) and <= 122
//   in double (2), without spills, on sm_80 and sm_90 (96-168 unbounded).
// Grid-stride loops with 64-bit indices throughout. Untested on hardware here
// (compiled only); tuning (tiles of boxes in shared memory, the column pass's
// strided grad_output reads) is left to do.
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "../common/boxes.h"

namespace segfast {
namespace boxes {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string("segfast boxes CUDA ") + what + ": " +
                                                 cudaGetErrorString(e));
}

int64_t blocks_for(int64_t work, int64_t per_block) {
  const int64_t b = (work + per_block - 1) / per_block;
  return b < 1 ? 1 : (b > 65535 * 16 ? 65535 * 16 : b);
}

template <typename T>
__global__ void pairwise_fwd_kernel(BoxArg a1, BoxArg a2, int64_t B, int64_t N, int64_t M, int kind, int fmt,
                                   T eps, void* out, int out_dtype) {
  const int64_t total = B * N * M;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t m = i % M, bn = i / M, n = bn % N, b = bn / N;
    const Box<T> p = load_box<T>(a1.p, a1.dtype, b * a1.sB + n * a1.sK, a1.s4, fmt);
    const Box<T> g = load_box<T>(a2.p, a2.dtype, b * a2.sB + m * a2.sK, a2.s4, fmt);
    store_as(out, out_dtype, i, pair_value<T, false>(p, g, kind, false, eps, T(0), nullptr, nullptr));
  }
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}

template <typename T, bool FIRST>
__global__ void __launch_bounds__(kThreads, 2)
    pairwise_bwd_kernel(BoxArg a1, BoxArg a2, int64_t B, int64_t N, int64_t M, int kind, int fmt, T eps, const T* go,
                        void* d, int d_dtype) {
  const BoxArg& own = FIRST ? a1 : a2;
  const BoxArg& oth = FIRST ? a2 : a1;
  const int64_t K = FIRST ? N : M, L = FIRST ? M : N;
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t(gridDim.x) * kWarps;
  for (int64_t r = blockIdx.x * int64_t(kWarps) + (threadIdx.x >> 5); r < B * K; r += warps) {
    const int64_t b = r / K, k = r % K;
    const Box<T> q = load_box<T>(own.p, own.dtype, b * own.sB + k * own.sK, own.s4, fmt);
    T s[4] = {T(0), T(0), T(0), T(0)};
    for (int64_t l = lane; l < L; l += 32) {
      const Box<T> w = load_box<T>(oth.p, oth.dtype, b * oth.sB + l * oth.sK, oth.s4, fmt);
      const T gv = FIRST ? go[(b * N + k) * M + l] : go[(b * N + l) * M + k];
      T dw[4] = {T(0), T(0), T(0), T(0)};
      if (FIRST) pair_value<T, true>(q, w, kind, false, eps, gv, s, dw);
      else pair_value<T, true>(w, q, kind, false, eps, gv, dw, s);
    }
    for (int c = 0; c < 4; ++c) s[c] = warp_sum(s[c]);
    if (lane == 0) {
      xyxy_grad_to_fmt(s, fmt);
      for (int c = 0; c < 4; ++c) store_as(d, d_dtype, r * 4 + c, s[c]);
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads, 2)
    aligned_kernel(BoxArg a1, BoxArg a2, int64_t K, int kind, int fmt, bool loss, T eps, T offset, T sign, T gscale,
                   void* out, int out_dtype, void* d1, void* d2, int d_dtype) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < K; i += int64_t(gridDim.x) * blockDim.x) {
    const Box<T> p = load_box<T>(a1.p, a1.dtype, i * a1.sK, a1.s4, fmt);
    const Box<T> g = load_box<T>(a2.p, a2.dtype, i * a2.sK, a2.s4, fmt);
    T v;
    if (d1 || d2) {
      T dp[4] = {T(0), T(0), T(0), T(0)}, dg[4] = {T(0), T(0), T(0), T(0)};
      v = pair_value<T, true>(p, g, kind, loss, eps, gscale, dp, dg);
      xyxy_grad_to_fmt(dp, fmt);
      xyxy_grad_to_fmt(dg, fmt);
      for (int c = 0; c < 4; ++c) {
        if (d1) store_as(d1, d_dtype, 4 * i + c, dp[c]);
        if (d2) store_as(d2, d_dtype, 4 * i + c, dg[c]);
      }
    } else {
      v = pair_value<T, false>(p, g, kind, loss, eps, T(0), nullptr, nullptr);
    }
    if (out) store_as(out, out_dtype, i, offset + sign * v);
  }
}

}  // namespace

void box_pairwise_cuda(const BoxArg& a1, const BoxArg& a2, int64_t B, int64_t N, int64_t M, int kind, int fmt,
                       double eps, void* out, int out_dtype, uintptr_t stream) {
  if (B <= 0 || N <= 0 || M <= 0) return;
  auto s = reinterpret_cast<cudaStream_t>(stream);
  const unsigned grid = unsigned(blocks_for(B * N * M, kThreads));
  if (a1.dtype == kFloat64)
    pairwise_fwd_kernel<double><<<grid, kThreads, 0, s>>>(a1, a2, B, N, M, kind, fmt, eps, out, out_dtype);
  else
    pairwise_fwd_kernel<float><<<grid, kThreads, 0, s>>>(a1, a2, B, N, M, kind, fmt, float(eps), out, out_dtype);
  check(cudaGetLastError(), "pairwise");
}

void box_pairwise_grad_cuda(const BoxArg& a1, const BoxArg& a2, int64_t B, int64_t N, int64_t M, int kind,
                            int fmt, double eps, const void* go, void* d1, void* d2, int d_dtype, uintptr_t stream) {
  if (B <= 0 || N <= 0 || M <= 0) return;
  auto s = reinterpret_cast<cudaStream_t>(stream);
  const unsigned g1 = unsigned(blocks_for(B * N, kWarps)), g2 = unsigned(blocks_for(B * M, kWarps));
  if (a1.dtype == kFloat64) {
    const double* g = static_cast<const double*>(go);
    if (d1) pairwise_bwd_kernel<double, true><<<g1, kThreads, 0, s>>>(a1, a2, B, N, M, kind, fmt, eps, g, d1,
                                                                      d_dtype);
    if (d2) pairwise_bwd_kernel<double, false><<<g2, kThreads, 0, s>>>(a1, a2, B, N, M, kind, fmt, eps, g, d2,
                                                                       d_dtype);
  } else {
    const float* g = static_cast<const float*>(go);
    const float e = float(eps);
    if (d1) pairwise_bwd_kernel<float, true><<<g1, kThreads, 0, s>>>(a1, a2, B, N, M, kind, fmt, e, g, d1, d_dtype);
    if (d2) pairwise_bwd_kernel<float, false><<<g2, kThreads, 0, s>>>(a1, a2, B, N, M, kind, fmt, e, g, d2,
                                                                      d_dtype);
  }
  check(cudaGetLastError(), "pairwise backward");
}

void box_aligned_cuda(const BoxArg& a1, const BoxArg& a2, int64_t K, int kind, int fmt, bool loss, double eps,
                      double offset, double sign, double gscale, void* out, int out_dtype, void* d1, void* d2,
                      int d_dtype, uintptr_t stream) {
  if (K <= 0) return;
  auto s = reinterpret_cast<cudaStream_t>(stream);
  const unsigned grid = unsigned(blocks_for(K, kThreads));
  if (a1.dtype == kFloat64)
    aligned_kernel<double><<<grid, kThreads, 0, s>>>(a1, a2, K, kind, fmt, loss, eps, offset, sign, gscale, out,
                                                     out_dtype, d1, d2, d_dtype);
  else
    aligned_kernel<float><<<grid, kThreads, 0, s>>>(a1, a2, K, kind, fmt, loss, float(eps), float(offset),
                                                    float(sign), float(gscale), out, out_dtype, d1, d2, d_dtype);
  check(cudaGetLastError(), "aligned");
}

}  // namespace boxes
}  // namespace segfast
