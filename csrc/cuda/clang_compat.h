// Device intrinsics that clang's CUDA headers lack before clang 17, written
// with the PTX instruction nvcc's own definition uses.
#pragma once
#if defined(__clang__) && defined(__CUDA__) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800 && __clang_major__ < 17
__device__ __forceinline__ unsigned int __reduce_max_sync(unsigned int mask, unsigned int v) {
  unsigned int r;
  asm volatile("redux.sync.max.u32 %0, %1, %2;" : "=r"(r) : "r"(v), "r"(mask));
  return r;
}
#endif
