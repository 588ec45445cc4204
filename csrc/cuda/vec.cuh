// Four consecutive elements of a pixel row in one access: the streaming
// kernels (region.cu, pixel.cu) give each thread runs of kVec pixels, and where
// a row is contiguous and aligned (vec_ok, checked on the host) read them with
// one vector load: 128-bit for 4-byte dtypes (float32, int32), two 128-bit
// loads for 8-byte ones (float64, int64), 64-bit for float16 / bfloat16,
// 32-bit for uint8 / bool. Elsewhere (a stride, a misaligned view, a run cut
// by the end of the chunk) the element loads of dtypes.h.
#pragma once

#include <cstdint>
#include <type_traits>

#include "../common/dtypes.h"

namespace segfast {
namespace vec {

constexpr int kVec = 4;  // pixels per run

template <typename E, int L>
struct alignas(sizeof(E) * L) Pack {
  E v[L];
};

// p[0..3], p aligned to 4 * sizeof(E) bytes (16 at most: two loads for 8-byte E).
template <typename E>
__device__ __forceinline__ void ld4(const E* p, E out[kVec]) {
  if (sizeof(E) * kVec <= 16) {
    const Pack<E, kVec> a = *reinterpret_cast<const Pack<E, kVec>*>(p);
#pragma unroll
    for (int i = 0; i < kVec; ++i) out[i] = a.v[i];
  } else {
    const Pack<E, 2> a = *reinterpret_cast<const Pack<E, 2>*>(p);
    const Pack<E, 2> b = *reinterpret_cast<const Pack<E, 2>*>(p + 2);
    out[0] = a.v[0], out[1] = a.v[1], out[2] = b.v[0], out[3] = b.v[1];
  }
}

template <typename E>
__device__ __forceinline__ void st4(E* p, const E in[kVec]) {
  if (sizeof(E) * kVec <= 16) {
    Pack<E, kVec> a;
#pragma unroll
    for (int i = 0; i < kVec; ++i) a.v[i] = in[i];
    *reinterpret_cast<Pack<E, kVec>*>(p) = a;
  } else {
    Pack<E, 2> a, b;
    a.v[0] = in[0], a.v[1] = in[1], b.v[0] = in[2], b.v[1] = in[3];
    *reinterpret_cast<Pack<E, 2>*>(p) = a;
    *reinterpret_cast<Pack<E, 2>*>(p + 2) = b;
  }
}

// out[i] = T(p[off + i]), one vector load.
template <typename E, typename T>
__device__ __forceinline__ void ld4_as(const void* base, int64_t off, T out[kVec]) {
  E r[kVec];
  ld4(static_cast<const E*>(base) + off, r);
#pragma unroll
  for (int i = 0; i < kVec; ++i) out[i] = T(r[i]);
}

// out[i] = element off + i * stride of base (dtype code) in T, for i < cnt
// (the others: fill); one vector load when vec (stride 1, aligned) and cnt == kVec.
template <typename T>
__device__ __forceinline__ void load4(const void* base, int code, int64_t off, int64_t stride, bool vec, int cnt,
                                      T out[kVec], T fill = T(0)) {
  if (vec && cnt == kVec) {
    switch (code) {
      case kFloat32: return ld4_as<float>(base, off, out);
      case kFloat64: return ld4_as<double>(base, off, out);
      case kInt32: return ld4_as<int32_t>(base, off, out);
      case kInt64: return ld4_as<int64_t>(base, off, out);
      case kFloat16:
      case kBFloat16: {
        uint16_t r[kVec];
        ld4(static_cast<const uint16_t*>(base) + off, r);
#pragma unroll
        for (int i = 0; i < kVec; ++i) out[i] = T(code == kFloat16 ? f16_to_f32(r[i]) : bf16_to_f32(r[i]));
        return;
      }
      default: return ld4_as<uint8_t>(base, off, out);  // uint8, bool
    }
  }
#pragma unroll
  for (int i = 0; i < kVec; ++i) {
    if (i < cnt) {
      if constexpr (std::is_integral<T>::value) out[i] = T(load_i64(base, code, off + i * stride));
      else load_as(base, code, off + i * stride, out[i]);
    } else {
      out[i] = fill;
    }
  }
}

// Element off + i * stride of base (dtype code) = v[i] for i < cnt; one vector
// store when vec and cnt == kVec.
template <typename T>
__device__ __forceinline__ void store4(void* base, int code, int64_t off, int64_t stride, bool vec, int cnt,
                                       const T v[kVec]) {
  if (vec && cnt == kVec && (code == kFloat32 || code == kFloat64)) {
    if (code == kFloat32) {
      float r[kVec];
#pragma unroll
      for (int i = 0; i < kVec; ++i) r[i] = float(v[i]);
      st4(static_cast<float*>(base) + off, r);
    } else {
      double r[kVec];
#pragma unroll
      for (int i = 0; i < kVec; ++i) r[i] = double(v[i]);
      st4(static_cast<double*>(base) + off, r);
    }
    return;
  }
  if (vec && cnt == kVec && (code == kFloat16 || code == kBFloat16)) {
    uint16_t r[kVec];
#pragma unroll
    for (int i = 0; i < kVec; ++i) r[i] = code == kFloat16 ? f32_to_f16(float(v[i])) : f32_to_bf16(float(v[i]));
    st4(static_cast<uint16_t*>(base) + off, r);
    return;
  }
#pragma unroll
  for (int i = 0; i < kVec; ++i)
    if (i < cnt) store_as(base, code, off + i * stride, v[i]);
}

// Chunk j of P over S pixels in whole runs: the length of chunk_range rounded
// up to a multiple of kVec, so that every run starts at a multiple of kVec.
__device__ __forceinline__ void run_chunk(int64_t S, int64_t P, int64_t j, int64_t* begin, int64_t* end) {
  int64_t L = (S + P - 1) / P;
  L = (L + kVec - 1) / kVec * kVec;
  const int64_t b = j * L, e = b + L;
  *begin = b < S ? b : S;
  *end = e < S ? e : S;
}

// Pixels of the run at s before the end e: kVec, fewer at the end, 0 past it.
__device__ __forceinline__ int run_count(int64_t s, int64_t e) {
  return e - s >= kVec ? kVec : (e > s ? int(e - s) : 0);
}

// Whether runs of kVec elements starting at multiples of kVec along a
// stride-1 axis are aligned for one vector access: the base and the other
// axes' strides (elements) multiples of the run's bytes (16 at most).
inline bool vec_ok(const void* base, int code, int64_t stride, int64_t s1, int64_t s2 = 0) {
  const int64_t es = dtype_size(code);
  const int64_t a = es * kVec < 16 ? es * kVec : 16;
  if (es == 0 || stride != 1) return false;
  return reinterpret_cast<uintptr_t>(base) % uint64_t(a) == 0 && (s1 * es) % a == 0 && (s2 * es) % a == 0;
}

}  // namespace vec
}  // namespace segfast
