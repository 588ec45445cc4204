// CUDA emulation layer: the csrc/cuda/*.cu kernels compiled as plain C++ and
// run on the CPU (segfast._C_emu, built with SEGFAST_CUDA_EMU=ON). Each CUDA
// thread of a block is a fiber; __syncthreads and the warp collectives switch
// to the block's scheduler (csrc/emu/emu.cpp), which runs the fibers in the
// chosen order and reports what a GPU would fault on as a launch error
// (cudaGetLastError). csrc/emu/rewrite.py turns the <<<...>>> launches and the
// __shared__ declarations into calls to this header before compiling.
#pragma once

// The device branches of csrc/common/*.h are the ones under test.
#define __CUDA_ARCH__ 800

#include <cmath>
#include <math.h>  // float overloads of log, exp, ... in the global namespace, as in device code
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

struct uint3 { unsigned x, y, z; };
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorLaunchFailure = 719,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorIllegalInstruction = 715,
};
typedef cudaError_t cudaError;
struct CUstream_st;
typedef CUstream_st* cudaStream_t;
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

cudaError_t cudaGetLastError();
// The emulator stands for no particular CUDA release: version 0 of the runtime
// and of the driver (csrc/cuda/runtime_info.cu reports them).
#define CUDART_VERSION 0
inline cudaError_t cudaDriverGetVersion(int* v) { *v = 0; return cudaSuccess; }
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorString(cudaError_t e);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaFuncSetAttributeImpl(const void* func, cudaFuncAttribute attr, int value);
template <typename F>
cudaError_t cudaFuncSetAttribute(F* func, cudaFuncAttribute attr, int value) {
  return cudaFuncSetAttributeImpl(reinterpret_cast<const void*>(func), attr, value);
}

namespace segfast_emu {

struct Block {
  uint3 idx;
  dim3 dim, grid;
};
struct Fiber {
  uint3 tid;
  const Block* blk;
};
// The CUDA thread running on this OS thread (a fiber of the block being run).
extern thread_local Fiber* tl_fiber;

using Body = void (*)(void* ctx);
void launch_impl(const void* func, Body body, void* ctx, dim3 grid, dim3 block, size_t smem);
void* dynamic_smem();
void static_smem(void* addr, size_t bytes);

// Warp collectives: every lane named in mask waits for all the others.
enum WarpOp { kSync, kShflIdx, kShflUp, kShflDown, kShflXor, kBallot, kAny, kAll, kRedAdd, kRedMin,
              kRedMax, kRedAnd, kRedOr, kRedXor };
uint64_t warp_op(WarpOp op, unsigned mask, uint64_t value, int arg, int width, bool is_signed);

template <typename T>
inline uint64_t to_u64(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a type over 8 bytes");
  uint64_t u = 0;
  std::memcpy(&u, &v, sizeof(T));
  return u;
}
template <typename T>
inline T from_u64(uint64_t u) {
  T v;
  std::memcpy(&v, &u, sizeof(T));
  return v;
}

template <typename F>
void launch(const void* func, F&& f, dim3 grid, dim3 block, size_t smem = 0, cudaStream_t = nullptr) {
  using Fn = std::remove_reference_t<F>;
  launch_impl(func, [](void* c) { (*static_cast<Fn*>(c))(); }, static_cast<void*>(&f), grid, block, smem);
}

}  // namespace segfast_emu

#define threadIdx (::segfast_emu::tl_fiber->tid)
#define blockIdx (::segfast_emu::tl_fiber->blk->idx)
#define blockDim (::segfast_emu::tl_fiber->blk->dim)
#define gridDim (::segfast_emu::tl_fiber->blk->grid)
constexpr int warpSize = 32;

// The barrier's source position names it: the compiler may duplicate a call
// (tail duplication, jump threading), so return addresses would not.
void segfast_emu_syncthreads(const char* file, int line);
#define __syncthreads() segfast_emu_syncthreads(__FILE__, __LINE__)
inline void __syncwarp(unsigned mask = 0xffffffffu) { segfast_emu::warp_op(segfast_emu::kSync, mask, 0, 0, 32, false); }
unsigned __activemask();
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  return segfast_emu::from_u64<T>(segfast_emu::warp_op(segfast_emu::kShflIdx, mask, segfast_emu::to_u64(v), src, width, false));
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return segfast_emu::from_u64<T>(segfast_emu::warp_op(segfast_emu::kShflUp, mask, segfast_emu::to_u64(v), int(delta), width, false));
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return segfast_emu::from_u64<T>(segfast_emu::warp_op(segfast_emu::kShflDown, mask, segfast_emu::to_u64(v), int(delta), width, false));
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  return segfast_emu::from_u64<T>(segfast_emu::warp_op(segfast_emu::kShflXor, mask, segfast_emu::to_u64(v), lane_mask, width, false));
}
inline unsigned __ballot_sync(unsigned mask, int p) { return unsigned(segfast_emu::warp_op(segfast_emu::kBallot, mask, p != 0, 0, 32, false)); }
inline int __any_sync(unsigned mask, int p) { return int(segfast_emu::warp_op(segfast_emu::kAny, mask, p != 0, 0, 32, false)); }
inline int __all_sync(unsigned mask, int p) { return int(segfast_emu::warp_op(segfast_emu::kAll, mask, p != 0, 0, 32, false)); }
#define SEGFAST_EMU_REDUCE(name, op, T, sgn)                                                     \
  inline T name(unsigned mask, T v) {                                                           \
    return T(segfast_emu::warp_op(segfast_emu::op, mask, uint64_t(uint32_t(v)), 0, 32, sgn)); \
  }
SEGFAST_EMU_REDUCE(__reduce_add_sync, kRedAdd, unsigned, false)
SEGFAST_EMU_REDUCE(__reduce_add_sync, kRedAdd, int, true)
SEGFAST_EMU_REDUCE(__reduce_min_sync, kRedMin, unsigned, false)
SEGFAST_EMU_REDUCE(__reduce_min_sync, kRedMin, int, true)
SEGFAST_EMU_REDUCE(__reduce_max_sync, kRedMax, unsigned, false)
SEGFAST_EMU_REDUCE(__reduce_max_sync, kRedMax, int, true)
SEGFAST_EMU_REDUCE(__reduce_and_sync, kRedAnd, unsigned, false)
SEGFAST_EMU_REDUCE(__reduce_or_sync, kRedOr, unsigned, false)
SEGFAST_EMU_REDUCE(__reduce_xor_sync, kRedXor, unsigned, false)
#undef SEGFAST_EMU_REDUCE

// ---- atomics: real atomics (blocks run on several OS threads) ---------------
template <typename T>
inline T segfast_emu_atomic_update(T* p, T v, T (*f)(T, T)) {
  T old = __atomic_load_n(p, __ATOMIC_RELAXED);
  while (!__atomic_compare_exchange_n(p, &old, f(old, v), true, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) {
  }
  return old;
}
template <typename T>
inline T segfast_emu_atomic_fp(T* p, T v, T (*f)(T, T)) {  // compare-and-swap on the bits
  using U = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  U* q = reinterpret_cast<U*>(p);
  U old = __atomic_load_n(q, __ATOMIC_RELAXED);
  for (;;) {
    const U nu = segfast_emu::to_u64(f(segfast_emu::from_u64<T>(old), v));
    if (__atomic_compare_exchange_n(q, &old, nu, true, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED))
      return segfast_emu::from_u64<T>(old);
  }
}
inline float atomicAdd(float* p, float v) { return segfast_emu_atomic_fp<float>(p, v, [](float a, float b) { return a + b; }); }
inline double atomicAdd(double* p, double v) { return segfast_emu_atomic_fp<double>(p, v, [](double a, double b) { return a + b; }); }
#define SEGFAST_EMU_INT_ATOMICS(T)                                                                        \
  inline T atomicAdd(T* p, T v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }                   \
  inline T atomicSub(T* p, T v) { return __atomic_fetch_sub(p, v, __ATOMIC_SEQ_CST); }                   \
  inline T atomicAnd(T* p, T v) { return __atomic_fetch_and(p, v, __ATOMIC_SEQ_CST); }                   \
  inline T atomicOr(T* p, T v) { return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST); }                     \
  inline T atomicXor(T* p, T v) { return __atomic_fetch_xor(p, v, __ATOMIC_SEQ_CST); }                   \
  inline T atomicExch(T* p, T v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }                 \
  inline T atomicMax(T* p, T v) { return segfast_emu_atomic_update<T>(p, v, [](T a, T b) { return a > b ? a : b; }); } \
  inline T atomicMin(T* p, T v) { return segfast_emu_atomic_update<T>(p, v, [](T a, T b) { return a < b ? a : b; }); } \
  inline T atomicCAS(T* p, T cmp, T v) {                                                                  \
    __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                   \
    return cmp;                                                                                           \
  }
SEGFAST_EMU_INT_ATOMICS(int)
SEGFAST_EMU_INT_ATOMICS(unsigned int)
SEGFAST_EMU_INT_ATOMICS(unsigned long long)
SEGFAST_EMU_INT_ATOMICS(long long)
#undef SEGFAST_EMU_INT_ATOMICS
inline float atomicExch(float* p, float v) { return segfast_emu_atomic_fp<float>(p, v, [](float, float b) { return b; }); }

// ---- device intrinsics (host libm; no FMA contraction: -ffp-contract=off) ----
inline unsigned __float_as_uint(float f) { return segfast_emu::from_u64<unsigned>(segfast_emu::to_u64(f)); }
inline int __float_as_int(float f) { return segfast_emu::from_u64<int>(segfast_emu::to_u64(f)); }
inline float __uint_as_float(unsigned u) { return segfast_emu::from_u64<float>(u); }
inline float __int_as_float(int u) { return segfast_emu::from_u64<float>(uint32_t(u)); }
inline long long __double_as_longlong(double d) { return segfast_emu::from_u64<long long>(segfast_emu::to_u64(d)); }
inline double __longlong_as_double(long long u) { return segfast_emu::from_u64<double>(uint64_t(u)); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.f / sqrtf(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x ? __builtin_clz(unsigned(x)) : 32; }
inline int __clzll(long long x) { return x ? __builtin_clzll((unsigned long long)x) : 64; }
template <typename T>
inline T __ldg(const T* p) { return *p; }
// CUDA's integer min/max overloads in the global namespace.
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline int min(int a, int b) { return a < b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
