// Self-tests of the CUDA emulation layer, compiled into segfast._C_emu only
// (tests/test_cuda_emu.py). Each case launches a small kernel and returns its
// output, or throws the launch error as the kernels of csrc/cuda do.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace segfast_emu_selftest {
namespace {

// Warps 0 and 1 at __syncthreads except lanes 0-15 of warp 1, which shuffle
// with lanes 16-31: neither can finish.
__global__ void deadlock_kernel(int* out) {
  const int t = threadIdx.x;
  if (t >= 32 && t < 48) out[t] = __shfl_sync(0xffffffffu, t, 0);
  else __syncthreads();
}

__global__ void divergent_barrier_kernel(int* out) {
  if (threadIdx.x < 32) {
    __syncthreads();
    out[threadIdx.x] = 1;
  } else {
    __syncthreads();
    out[threadIdx.x] = 2;
  }
}

// Lanes 16-31 return before the shuffle that names them.
__global__ void exited_lane_kernel(int* out) {
  if (threadIdx.x >= 16) return;
  out[threadIdx.x] = __shfl_sync(0xffffffffu, int(threadIdx.x), 0);
}

// out[3t..3t+2]: inclusive scan (shfl_up), warp sum (shfl_xor), lane 3 of each 8 (shfl width 8).
__global__ void warp_scan_kernel(const double* in, double* out) {
  const int t = threadIdx.x, lane = t & 31;
  double v = in[t];
  for (int o = 1; o < 32; o <<= 1) {
    const double u = __shfl_up_sync(0xffffffffu, v, o);
    if (lane >= o) v += u;
  }
  double s = in[t];
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  const double d = __shfl_sync(0xffffffffu, in[t], 3, 8);
  out[3 * t] = v;
  out[3 * t + 1] = s;
  out[3 * t + 2] = d;
}

// Block of 48: warp 1 has 16 lanes. out[2t]: ballot of t % 3 == 0, out[2t + 1]: max of t over the warp.
__global__ void ballot_kernel(unsigned* out) {
  const unsigned t = threadIdx.x;
  const unsigned mask = t < 32 ? 0xffffffffu : 0xffffu;
  out[2 * t] = __ballot_sync(mask, t % 3 == 0);
  out[2 * t + 1] = __reduce_max_sync(mask, t * 7 % 11);
}

__global__ void atomics_kernel(int* count, float* fsum, unsigned* mx, unsigned long long* total) {
  __shared__ int block_count;
  if (threadIdx.x == 0) block_count = 0;
  __syncthreads();
  const unsigned g = blockIdx.x * blockDim.x + threadIdx.x;
  atomicAdd(count, 1);
  atomicAdd(fsum, 1.0f);
  atomicMax(mx, g * 2654435761u % 1000003u);
  atomicAdd(&block_count, 1);
  __syncthreads();
  if (threadIdx.x == 0) atomicAdd(total, (unsigned long long)block_count);
}

__global__ void fill_kernel(int* out) {
  out[blockIdx.x * blockDim.x + threadIdx.x] = int(threadIdx.x);
}

template <int>  // <1>: a second kernel for the opt-in (the attribute stays set)
__global__ void dynamic_smem_kernel(int n, int* out) {
  extern __shared__ int dyn[];
  for (int i = threadIdx.x; i < n; i += blockDim.x) dyn[i] = i;
  __syncthreads();
  if (threadIdx.x == 0) {
    int s = 0;
    for (int i = 0; i < n; ++i) s += dyn[i] == i;
    *out = s;
  }
}

__global__ void static_and_dynamic_kernel(int n, int* out) {
  __shared__ int fixed[1024];  // 4 KiB
  extern __shared__ int dyn[];
  fixed[threadIdx.x] = 1;
  for (int i = threadIdx.x; i < n; i += blockDim.x) dyn[i] = 1;
  __syncthreads();
  if (threadIdx.x == 0) *out = fixed[0] + dyn[0];
}

// out[t] = s[(t + 1) % 64] after each thread wrote s[t] = t + 1: right only
// with the barrier (without it, the result depends on the thread order).
template <bool SYNC>
__global__ void neighbour_kernel(int* out) {
  __shared__ int s[64];
  s[threadIdx.x] = int(threadIdx.x) + 1;
  if (SYNC) __syncthreads();
  out[threadIdx.x] = s[(threadIdx.x + 1) % 64];
}

void check(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess)
    throw std::runtime_error(std::string("segfast: ") + what + " launch failed: " + cudaGetErrorString(e));
}

}  // namespace

// name: the case; arg: its size parameter. Returns the kernel's output as doubles.
std::vector<double> run(const std::string& name, int64_t arg) {
  std::vector<double> res;
  if (name == "deadlock" || name == "divergent_barrier" || name == "exited_lane") {
    std::vector<int> out(64, -1);
    if (name == "deadlock") deadlock_kernel<<<1, 64>>>(out.data());
    else if (name == "divergent_barrier") divergent_barrier_kernel<<<1, 64>>>(out.data());
    else exited_lane_kernel<<<1, 32>>>(out.data());
    check(name.c_str());
    res.assign(out.begin(), out.end());
  } else if (name == "warp_scan") {
    std::vector<double> in(64), out(3 * 64);
    for (int i = 0; i < 64; ++i) in[i] = double(i * 3 % 7);
    warp_scan_kernel<<<1, 64>>>(in.data(), out.data());
    check("warp_scan");
    res = out;
  } else if (name == "ballot") {
    std::vector<unsigned> out(2 * 48);
    ballot_kernel<<<1, 48>>>(out.data());
    check("ballot");
    res.assign(out.begin(), out.end());
  } else if (name == "atomics") {
    int count = 0;
    float fsum = 0.f;
    unsigned mx = 0;
    unsigned long long total = 0;
    atomics_kernel<<<unsigned(arg), 256>>>(&count, &fsum, &mx, &total);
    check("atomics");
    res = {double(count), double(fsum), double(mx), double(total)};
  } else if (name == "block_threads" || name == "grid_y") {
    std::vector<int> out(size_t(arg) * 2, -1);
    if (name == "block_threads") fill_kernel<<<1, unsigned(arg)>>>(out.data());
    else fill_kernel<<<dim3(1, unsigned(arg)), 1>>>(out.data());
    check(name.c_str());
    res.assign(out.begin(), out.begin() + std::min<int64_t>(arg, 4));
  } else if (name == "dynamic_smem" || name == "dynamic_smem_optin") {
    int out = -1;
    const int n = int(arg / 4);
    if (name == "dynamic_smem_optin") {
      if (cudaFuncSetAttribute(dynamic_smem_kernel<1>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(arg)) !=
          cudaSuccess)
        check("cudaFuncSetAttribute");
      dynamic_smem_kernel<1><<<2, 128, size_t(arg)>>>(n, &out);
    } else {
      dynamic_smem_kernel<0><<<2, 128, size_t(arg)>>>(n, &out);
    }
    check(name.c_str());
    res = {double(out)};
  } else if (name == "static_and_dynamic") {
    int out = -1;
    static_and_dynamic_kernel<<<1, 1024, size_t(arg)>>>(int(arg / 4), &out);
    check(name.c_str());
    res = {double(out)};
  } else if (name == "neighbour" || name == "neighbour_racy") {
    std::vector<int> out(64, 0);
    if (name == "neighbour") neighbour_kernel<true><<<1, 64>>>(out.data());
    else neighbour_kernel<false><<<1, 64>>>(out.data());
    check(name.c_str());
    res.assign(out.begin(), out.end());
  } else {
    throw std::invalid_argument("segfast._C_emu: unknown self-test " + name);
  }
  return res;
}

}  // namespace segfast_emu_selftest
