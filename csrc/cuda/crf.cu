// Dense CRF, CUDA kernels of the mean-field iterations. The lattices of the
// batch are built on the device with torch (sort/unique of packed keys,
// segfast/reference/crf.py) and arrive as plain arrays: per pixel the d+1
// lattice points `off` (int32) and weights, per point its two blur neighbours
// (row M of every grid is the always-zero "missing neighbour"). Python
// (segfast/ops/crf.py lattice_meanfield) drives the same steps as the Triton
// backend: splat (atomic adds), d+1 blurs, and one fused slice + softmax per
// pixel. Q, U, grids: [rows][C] float32, labels contiguous.
#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>

namespace segfast {
namespace crf {
namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string("segfast CRF CUDA ") + what + ": " + cudaGetErrorString(e));
}

int blocks_for(int64_t n, int threads) {
  const int64_t b = (n + threads - 1) / threads;
  return int(b < 1 ? 1 : (b > (int64_t(1) << 30) ? (int64_t(1) << 30) : b));
}

// One thread per (pixel, label): grid[off[i, r], c] += w[i, r] * q[i, c].
__global__ void splat_kernel(const float* __restrict__ q, const int32_t* __restrict__ off,
                             const float* __restrict__ w, float* __restrict__ grid, int64_t P, int64_t C, int D1) {
  const int64_t n = P * C;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < n;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = idx / C, c = idx - i * C;
    const float qv = q[idx];
    for (int r = 0; r < D1; ++r) atomicAdd(&grid[int64_t(off[i * D1 + r]) * C + c], w[i * D1 + r] * qv);
  }
}

// dst[p] = src[p] + (src[n1] + src[n2]) / 2, one thread per (point, label); row M untouched.
__global__ void blur_kernel(const float* __restrict__ src, float* __restrict__ dst, const int32_t* __restrict__ nb,
                            int64_t M, int64_t C) {
  const int64_t n = M * C;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < n;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t p = idx / C, c = idx - p * C;
    dst[idx] = src[idx] + 0.5f * (src[int64_t(nb[2 * p]) * C + c] + src[int64_t(nb[2 * p + 1]) * C + c]);
  }
}

struct SliceArgs {
  const int32_t* off;
  const float* w;
  const float* grid;
  int D1;
};

__device__ __forceinline__ float slice_one(const SliceArgs& a, int64_t i, int64_t c, int64_t C) {
  float s = 0.f;
  for (int r = 0; r < a.D1; ++r) s += a.w[i * a.D1 + r] * a.grid[int64_t(a.off[i * a.D1 + r]) * C + c];
  return s;
}

// Groups of L lanes per pixel (32 / L pixels per warp), each lane over labels
// sub, sub + L, ...: q = softmax(-u + slices + extra). L follows C
// (label_lanes): 2 labels take 2 lanes, 21 take 8 lanes of 3 labels, so few
// lanes idle. The logits are parked in q, then exponentiated and normalised in
// place. Every lane of a warp runs the same trips (a group past P idles), so
// the full-mask shuffles stay converged.
template <int L>
__global__ void update_kernel(const float* __restrict__ U, float* __restrict__ Q, const float* __restrict__ extra,
                              SliceArgs a, SliceArgs b, int nk, int64_t P, int64_t C) {
  constexpr int kGroups = 32 / L;
  const int lane = threadIdx.x & 31, sub = lane % L;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x >> 5);
  for (int64_t base = (int64_t(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5)) * kGroups; base < P;
       base += warps * kGroups) {
    const int64_t i = base + lane / L;
    const int64_t cend = i < P ? C : 0;  // a group past the last pixel: no labels
    float mx = -INFINITY;
    for (int64_t c = sub; c < cend; c += L) {
      float m = -U[i * C + c];
      if (nk > 0) m += slice_one(a, i, c, C);
      if (nk > 1) m += slice_one(b, i, c, C);
      if (extra) m += extra[i * C + c];
      Q[i * C + c] = m;
      mx = fmaxf(mx, m);
    }
    for (int o = L / 2; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    float s = 0.f;
    for (int64_t c = sub; c < cend; c += L) {
      const float e = __expf(Q[i * C + c] - mx);
      Q[i * C + c] = e;
      s += e;
    }
    for (int o = L / 2; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    const float inv = 1.f / s;
    for (int64_t c = sub; c < cend; c += L) Q[i * C + c] *= inv;
  }
}

// Lanes per pixel for C labels: the power of two up to 32 that pads C least
// (ties: more lanes), from next_power_of_2(C) when that is at most 32, else 32, 16, 8
// (triton_kernels/crf.py blocks() makes the same choice of label tile).
int label_lanes(int64_t C) {
  int64_t small = 1;
  while (small < C) small <<= 1;
  int best = small <= 32 ? int(small) : 32;
  auto padded = [C](int l) { return (C + l - 1) / l * l; };
  if (small > 8)
    for (int l : {16, 8})
      if (l < small && padded(l) < padded(best)) best = l;
  return best;
}

}  // namespace

void crf_splat_cuda(const float* q, const int32_t* off, const float* w, float* grid, int64_t P, int64_t C, int D1,
                    uintptr_t stream) {
  if (P * C == 0) return;
  splat_kernel<<<blocks_for(P * C, 256), 256, 0, reinterpret_cast<cudaStream_t>(stream)>>>(q, off, w, grid, P, C, D1);
  check(cudaGetLastError(), "splat");
}

void crf_blur_cuda(const float* src, float* dst, const int32_t* nb, int64_t M, int64_t C, uintptr_t stream) {
  if (M * C == 0) return;
  blur_kernel<<<blocks_for(M * C, 256), 256, 0, reinterpret_cast<cudaStream_t>(stream)>>>(src, dst, nb, M, C);
  check(cudaGetLastError(), "blur");
}

void crf_update_cuda(const float* U, float* Q, const float* extra, const int32_t* off1, const float* w1,
                     const float* grid1, int D1a, const int32_t* off2, const float* w2, const float* grid2, int D1b,
                     int nk, int64_t P, int64_t C, uintptr_t stream) {
  if (P == 0) return;
  const SliceArgs a{off1, w1, grid1, D1a}, b{off2, w2, grid2, D1b};
  const int lanes = label_lanes(C);
  const int64_t groups = (P + 32 / lanes - 1) / (32 / lanes);  // warps needed
  const dim3 blocks(blocks_for(groups, 8)), threads(256);
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  switch (lanes) {
    case 1: update_kernel<1><<<blocks, threads, 0, s>>>(U, Q, extra, a, b, nk, P, C); break;
    case 2: update_kernel<2><<<blocks, threads, 0, s>>>(U, Q, extra, a, b, nk, P, C); break;
    case 4: update_kernel<4><<<blocks, threads, 0, s>>>(U, Q, extra, a, b, nk, P, C); break;
    case 8: update_kernel<8><<<blocks, threads, 0, s>>>(U, Q, extra, a, b, nk, P, C); break;
    case 16: update_kernel<16><<<blocks, threads, 0, s>>>(U, Q, extra, a, b, nk, P, C); break;
    default: update_kernel<32><<<blocks, threads, 0, s>>>(U, Q, extra, a, b, nk, P, C); break;
  }
  check(cudaGetLastError(), "update");
}

}  // namespace crf
}  // namespace segfast
