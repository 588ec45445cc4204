// Lovász family, CUDA kernel: the weights step of lovasz_sort_weights after
// the sort. The sort itself is torch.sort of packed (row, error bits) keys
// for the whole batch, done by segfast/ops/lovasz.py; it hands over perm
// [G*L]: flat indices that order each row's pixels by error descending,
// invalid pixels last (so row g occupies perm[g*L, (g+1)*L)).
//
// One block per row walks the row's sorted positions in tiles of
// kThreads * kItems: each thread gathers kItems consecutive fg values through
// perm, the block scans the thread totals (warp shuffles, then the warp
// totals), and each thread writes its weights (csrc/common/lovasz.h) back
// through perm. A running carry joins the tiles. Counts and sums in double:
// exact for binary fg, and rows may be long (a class over the batch).
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "../common/lovasz.h"

namespace segfast {
namespace lovasz {
namespace {

constexpr int kThreads = 256;
constexpr int kItems = 4;
constexpr int kWarps = kThreads / 32;

// Inclusive scan of v over the block; every thread must call it.
__device__ double block_inclusive_scan(double v, double* warp_tot) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int o = 1; o < 32; o <<= 1) {
    const double u = __shfl_up_sync(0xffffffffu, v, o);
    if (lane >= o) v += u;
  }
  if (lane == 31) warp_tot[warp] = v;
  __syncthreads();
  if (warp == 0) {
    double t = lane < kWarps ? warp_tot[lane] : 0.0;
    for (int o = 1; o < 32; o <<= 1) {
      const double u = __shfl_up_sync(0xffffffffu, t, o);
      if (lane >= o) t += u;
    }
    if (lane < kWarps) warp_tot[lane] = t;  // inclusive warp prefix
  }
  __syncthreads();
  if (warp > 0) v += warp_tot[warp - 1];
  return v;
}

__global__ void __launch_bounds__(kThreads)
weights_kernel(int64_t L, const int64_t* __restrict perm, const void* __restrict f, int f_dtype,
               const void* __restrict valid, int v_dtype, const double* __restrict total,
               void* __restrict w, int w_dtype) {
  __shared__ double warp_tot[kWarps];
  __shared__ double tile_total;
  const int64_t g = blockIdx.x;
  const int64_t base = g * L;
  const double T = total[g];
  double carry = 0.0;
  for (int64_t t0 = 0; t0 < L; t0 += int64_t(kThreads) * kItems) {
    const int64_t p0 = t0 + int64_t(threadIdx.x) * kItems;  // this thread's first position
    int64_t idx[kItems];
    double fg[kItems];
    bool ok[kItems];
    double local = 0.0;
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const int64_t p = p0 + k;
      ok[k] = p < L;
      idx[k] = ok[k] ? perm[base + p] : 0;
      if (ok[k] && valid) ok[k] = load_i64(valid, v_dtype, idx[k]) != 0;
      fg[k] = ok[k] ? load_f64(f, f_dtype, idx[k]) : 0.0;
      local += fg[k];
    }
    const double incl = block_inclusive_scan(local, warp_tot);
    if (threadIdx.x == kThreads - 1) tile_total = incl;
    double cum = carry + incl - local;  // fg before this thread's items
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const int64_t p = p0 + k;
      if (p >= L) break;
      cum += fg[k];
      const double wk = ok[k] ? weight<double>(T, cum, double(p + 1), fg[k]) : 0.0;
      store_f64(w, w_dtype, idx[k], wk);
    }
    __syncthreads();
    carry += tile_total;
    __syncthreads();  // tile_total and warp_tot are rewritten by the next tile
  }
}

}  // namespace

// Entry point (declared in csrc/bindings.cpp).
void lovasz_weights_cuda(int64_t G, int64_t L, const int64_t* perm, const void* f, int f_dtype,
                         const void* v, int v_dtype, const double* total, void* w, int w_dtype,
                         uintptr_t stream) {
  if (G == 0 || L == 0) return;
  if (G > 0x7fffffffLL) throw std::invalid_argument("segfast._C: too many Lovász rows");
  weights_kernel<<<unsigned(G), kThreads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
      L, perm, f, f_dtype, v, v_dtype, total, w, w_dtype);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("segfast: Lovász CUDA kernel launch failed: ") +
                             cudaGetErrorString(err));
}

}  // namespace lovasz
}  // namespace segfast
