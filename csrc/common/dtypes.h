// Dtype codes shared with segfast/backends.py (DTYPE_CODES) and the
// host/device conversion helpers every kernel uses. No libtorch, no CUDA
// headers: fp16/bf16 are handled as raw 16-bit patterns.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define SEGFAST_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// always_inline: the CPU kernels need these inside their vectorised loops.
#define SEGFAST_HD inline __attribute__((always_inline))
#else
#define SEGFAST_HD inline
#endif

namespace segfast {

// Must match segfast/backends.py DTYPE_CODES.
enum DType : int {
  kFloat32 = 0,
  kFloat16 = 1,
  kBFloat16 = 2,
  kFloat64 = 3,
  kUInt8 = 4,
  kInt32 = 5,
  kInt64 = 6,
  kBool = 7,  // one byte, 0 or 1, read like uint8
};

SEGFAST_HD int dtype_size(int code) {
  switch (code) {
    case kFloat32: case kInt32: return 4;
    case kFloat16: case kBFloat16: return 2;
    case kFloat64: case kInt64: return 8;
    case kUInt8: case kBool: return 1;
    default: return 0;
  }
}

SEGFAST_HD bool dtype_is_float(int code) {
  return code == kFloat32 || code == kFloat16 || code == kBFloat16 || code == kFloat64;
}

// ---- bit casts -----------------------------------------------------------
SEGFAST_HD uint32_t f32_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}
SEGFAST_HD float bits_f32(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

// ---- bfloat16 --------------------------------------------------------------
SEGFAST_HD float bf16_to_f32(uint16_t h) { return bits_f32(uint32_t(h) << 16); }

// Round to nearest even; NaN stays a (quiet) NaN.
SEGFAST_HD uint16_t f32_to_bf16(float f) {
  uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x0040u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

// ---- IEEE half -------------------------------------------------------------
SEGFAST_HD float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  if (exp == 0x1fu)  // inf / nan
    return bits_f32(sign | 0x7f800000u | (man << 13));
  if (exp == 0) {
    // zero or subnormal: man * 2^-24, exact in float
    float v = float(man) * 5.9604644775390625e-08f;
    return sign ? -v : v;
  }
  return bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
}

// Round to nearest even, with overflow to inf and correct subnormals.
SEGFAST_HD uint16_t f32_to_f16(float f) {
  const uint32_t u = f32_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return uint16_t(sign | 0x7e00u);        // nan
  if (a >= 0x477ff000u) return uint16_t(sign | 0x7c00u);       // >= 65520: inf
  if (a < 0x38800000u) {                                       // < 2^-14: subnormal half
    if (a < 0x33000000u) return uint16_t(sign);                // < 2^-25: rounds to 0
    const uint32_t e = a >> 23;                                // 102..112
    const uint32_t m = (a & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - e;                           // 14..24
    uint32_t r = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u);
    const uint32_t half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (r & 1u))) ++r;
    return uint16_t(sign | r);
  }
  uint32_t r = a - 0x38000000u;  // rebias exponent 127 -> 15 (in place, <<13)
  r += 0xfffu + ((r >> 13) & 1u);
  return uint16_t(sign | (r >> 13));
}

// ---- generic element access (element offsets, 64-bit) ---------------------
SEGFAST_HD float load_f32(const void* base, int code, int64_t i) {
  switch (code) {
    case kFloat32: return static_cast<const float*>(base)[i];
    case kFloat16: return f16_to_f32(static_cast<const uint16_t*>(base)[i]);
    case kBFloat16: return bf16_to_f32(static_cast<const uint16_t*>(base)[i]);
    case kFloat64: return float(static_cast<const double*>(base)[i]);
    case kUInt8: case kBool: return float(static_cast<const uint8_t*>(base)[i]);
    case kInt32: return float(static_cast<const int32_t*>(base)[i]);
    case kInt64: return float(static_cast<const int64_t*>(base)[i]);
    default: return 0.f;
  }
}

SEGFAST_HD double load_f64(const void* base, int code, int64_t i) {
  switch (code) {
    case kFloat64: return static_cast<const double*>(base)[i];
    case kInt32: return double(static_cast<const int32_t*>(base)[i]);
    case kInt64: return double(static_cast<const int64_t*>(base)[i]);
    default: return double(load_f32(base, code, i));
  }
}

SEGFAST_HD int64_t load_i64(const void* base, int code, int64_t i) {
  switch (code) {
    case kUInt8: case kBool: return int64_t(static_cast<const uint8_t*>(base)[i]);
    case kInt32: return int64_t(static_cast<const int32_t*>(base)[i]);
    case kInt64: return static_cast<const int64_t*>(base)[i];
    default: return int64_t(load_f64(base, code, i));
  }
}

SEGFAST_HD void store_f32(void* base, int code, int64_t i, float v) {
  switch (code) {
    case kFloat32: static_cast<float*>(base)[i] = v; break;
    case kFloat16: static_cast<uint16_t*>(base)[i] = f32_to_f16(v); break;
    case kBFloat16: static_cast<uint16_t*>(base)[i] = f32_to_bf16(v); break;
    case kFloat64: static_cast<double*>(base)[i] = double(v); break;
    default: break;
  }
}

SEGFAST_HD void store_f64(void* base, int code, int64_t i, double v) {
  if (code == kFloat64) static_cast<double*>(base)[i] = v;
  else store_f32(base, code, i, float(v));
}

// Overloads picked by the compute type of a kernel (float or double).
SEGFAST_HD void load_as(const void* b, int code, int64_t i, float& out) { out = load_f32(b, code, i); }
SEGFAST_HD void load_as(const void* b, int code, int64_t i, double& out) { out = load_f64(b, code, i); }
SEGFAST_HD void store_as(void* b, int code, int64_t i, float v) { store_f32(b, code, i, v); }
SEGFAST_HD void store_as(void* b, int code, int64_t i, double v) { store_f64(b, code, i, v); }

}  // namespace segfast
