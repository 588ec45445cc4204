// Shared by the CPU kernels of every family (csrc/cpu/<family>.cpp): the
// function multiversioning / forced-inlining macros and the dtype-dispatched
// row load / store of one class row of `len` pixels into / out of the
// per-thread compute-type buffers. Everything here is inlined into the
// calling (cloned) kernel, so it is compiled for each clone's target.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "../common/dtypes.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(SEGFAST_NO_CLONES)
#if __GNUC__ >= 12
#define SEGFAST_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SEGFAST_CLONES __attribute__((target_clones("avx2", "default")))
#endif
#else
#define SEGFAST_CLONES
#endif
#if defined(__GNUC__)
#define SEGFAST_INLINE inline __attribute__((always_inline))
#else
#define SEGFAST_INLINE inline
#endif

namespace segfast {
namespace cpu {

// ---- row load / store (one class, `len` pixels) ----------------------------------

template <typename T, typename Src>
SEGFAST_INLINE void load_row_typed(T* __restrict dst, const Src* __restrict src, int64_t stride,
                                   int64_t len) {
  if (stride == 1) {
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) dst[i] = T(src[i]);
  } else {
    for (int64_t i = 0; i < len; ++i) dst[i] = T(src[i * stride]);
  }
}

template <typename T>
SEGFAST_INLINE void load_row(T* __restrict dst, const void* base, int code, int64_t off,
                             int64_t stride, int64_t len) {
  switch (code) {
    case kFloat32: load_row_typed(dst, static_cast<const float*>(base) + off, stride, len); break;
    case kFloat64: load_row_typed(dst, static_cast<const double*>(base) + off, stride, len); break;
    case kUInt8:
    case kBool: load_row_typed(dst, static_cast<const uint8_t*>(base) + off, stride, len); break;
    case kInt32: load_row_typed(dst, static_cast<const int32_t*>(base) + off, stride, len); break;
    case kInt64: load_row_typed(dst, static_cast<const int64_t*>(base) + off, stride, len); break;
    case kFloat16: {
      const uint16_t* s = static_cast<const uint16_t*>(base) + off;
      for (int64_t i = 0; i < len; ++i) dst[i] = T(f16_to_f32(s[i * stride]));
      break;
    }
    case kBFloat16: {
      const uint16_t* s = static_cast<const uint16_t*>(base) + off;
      if (stride == 1) {
#pragma omp simd
        for (int64_t i = 0; i < len; ++i) dst[i] = T(bf16_to_f32(s[i]));
      } else {
        for (int64_t i = 0; i < len; ++i) dst[i] = T(bf16_to_f32(s[i * stride]));
      }
      break;
    }
    default: for (int64_t i = 0; i < len; ++i) dst[i] = T(0);
  }
}

template <typename T>
SEGFAST_INLINE void store_row(void* base, int code, int64_t off, int64_t stride,
                              const T* __restrict src, int64_t len) {
  switch (code) {
    case kFloat32: {
      float* d = static_cast<float*>(base) + off;
      if (stride == 1) {
#pragma omp simd
        for (int64_t i = 0; i < len; ++i) d[i] = float(src[i]);
      } else {
        for (int64_t i = 0; i < len; ++i) d[i * stride] = float(src[i]);
      }
      break;
    }
    case kFloat64: {
      double* d = static_cast<double*>(base) + off;
      for (int64_t i = 0; i < len; ++i) d[i * stride] = double(src[i]);
      break;
    }
    case kFloat16: {
      uint16_t* d = static_cast<uint16_t*>(base) + off;
      for (int64_t i = 0; i < len; ++i) d[i * stride] = f32_to_f16(float(src[i]));
      break;
    }
    case kBFloat16: {
      uint16_t* d = static_cast<uint16_t*>(base) + off;
      if (stride == 1) {
#pragma omp simd
        for (int64_t i = 0; i < len; ++i) d[i] = f32_to_bf16(float(src[i]));
      } else {
        for (int64_t i = 0; i < len; ++i) d[i * stride] = f32_to_bf16(float(src[i]));
      }
      break;
    }
    default: break;
  }
}

// ---- fresh output buffers ----------------------------------------------------------

// Ask the kernel for transparent huge pages on the whole 2 MiB pages inside
// [ptr, ptr + nbytes): a large output that malloc hands out fresh (mmap, or a
// heap that was trimmed) is otherwise faulted in 4 KiB at a time as the kernel
// first writes it, about 0.37 ms per MiB here, longer than the kernel itself.
// One 2 MiB fault costs about as much as 70 small ones. Only pages that lie
// wholly inside the buffer are advised; memory already mapped is unaffected,
// and where THP is off or 'always' this is a no-op. Returns madvise's result.
inline int advise_huge_pages(uintptr_t ptr, uint64_t nbytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(1) << 21;
  const uintptr_t lo = (ptr + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t hi = (ptr + uintptr_t(nbytes)) & ~(kHuge - 1);
  if (hi > lo) return madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#else
  (void)ptr;
  (void)nbytes;
#endif
  return 0;
}

// std::allocator that advises huge pages (above) on blocks of 2 MiB or more
// before anything touches them: for scratch vectors that a kernel allocates
// afresh on every call (the CRF's lattices and grids: tens of MB per image).
template <typename T>
struct HugePageAllocator {
  using value_type = T;
  HugePageAllocator() = default;
  template <typename U>
  HugePageAllocator(const HugePageAllocator<U>&) noexcept {}
  T* allocate(size_t n) {
    T* p = std::allocator<T>().allocate(n);
    if (n * sizeof(T) >= (size_t(2) << 20)) advise_huge_pages(reinterpret_cast<uintptr_t>(p), n * sizeof(T));
    return p;
  }
  void deallocate(T* p, size_t n) noexcept { std::allocator<T>().deallocate(p, n); }
  template <typename U>
  bool operator==(const HugePageAllocator<U>&) const noexcept { return true; }
  template <typename U>
  bool operator!=(const HugePageAllocator<U>&) const noexcept { return false; }
};

template <typename T>
using huge_vector = std::vector<T, HugePageAllocator<T>>;

// ---- argmax over the classes ----------------------------------------------------

// idx[p] = argmax over the C rows of x (dtype code, element offset off, row stride
// sC, pixel stride sS) of pixels [0, len): the first maximum wins, a NaN counts as
// the maximum (torch.argmax). best and row are [len] scratch.
template <typename T>
SEGFAST_INLINE void argmax_rows(const void* x, int code, int64_t off, int64_t sC, int64_t sS,
                                int64_t C, int64_t len, T* __restrict best,
                                int32_t* __restrict idx, T* __restrict row) {
  load_row(best, x, code, off, sS, len);
  for (int64_t p = 0; p < len; ++p) idx[p] = 0;
  for (int64_t c = 1; c < C; ++c) {
    load_row(row, x, code, off + c * sC, sS, len);
    const int32_t ci = int32_t(c);
#pragma omp simd
    for (int64_t p = 0; p < len; ++p) {
      const T v = row[p], b = best[p];
      const bool up = v > b || (v != v && b == b);
      best[p] = up ? v : b;
      idx[p] = up ? ci : idx[p];
    }
  }
}

}  // namespace cpu
}  // namespace segfast
