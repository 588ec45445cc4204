// Box matching (box_iou_max) and NMS, CUDA kernels. Same rules and the same
// unfused IoU (iou_rn) as the CPU kernels: csrc/common/boxes_match.h.
//
// box_iou_max: grid (anchor block, image). One thread per anchor; the block
//   stages kGtTile gts at a time in shared memory (xyxy, area, valid) and
//   every thread sweeps them in increasing index: strict > keeps the lowest
//   index among ties. Per-gt max: a warp max of the IoU bits (IoU >= 0, so
//   the unsigned order of the bit patterns is the float order), one shared
//   atomicMax per warp and gt, one global atomicMax per block and gt. Memory:
//   the O(N + M) outputs only.
// nms: (1) mask kernel, grid (column block, row block) of 64 x 64 boxes:
//   bit k of word mask[i, c] says box i suppresses box 64c + k (> i);
//   (2) one block walks the 64-box blocks in order: a single thread resolves
//   the block's own 64 boxes from the diagonal words (staged in shared
//   memory), then all threads OR the rows of the kept boxes into the later
//   `removed` words (shared memory when they fit, else the global scratch).
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "../common/boxes_match.h"
#include "clang_compat.h"

namespace segfast {
namespace boxes {
namespace {

constexpr int kThreads = 256;  // anchors per block
constexpr int kGtTile = 256;   // gts staged per shared-memory tile
constexpr int kMaxGridY = 65535;
constexpr int kReduceThreads = 256;
// nms_reduce_kernel's shared memory is all dynamic: the kNmsWord diagonal
// words and the kept word always, then the cb `removed` words when the whole
// fits in the 48 KiB a launch may take without the opt-in attribute
// (cudaFuncAttributeMaxDynamicSharedMemorySize); otherwise `removed` lives in
// the global scratch. So no launch asks for more than 48 KiB.
constexpr int64_t kDefaultSharedBytes = 48 * 1024;
constexpr int64_t kReduceFixedWords = kNmsWord + 1;
constexpr bool nms_removed_in_shared(int64_t cb) {
  return (kReduceFixedWords + cb) * int64_t(sizeof(unsigned long long)) <= kDefaultSharedBytes;
}
constexpr size_t nms_reduce_shared_bytes(int64_t cb) {
  return size_t(kReduceFixedWords + (nms_removed_in_shared(cb) ? cb : 0)) * sizeof(unsigned long long);
}
// The largest request: the last cb that still keeps `removed` in shared memory.
constexpr int64_t kMaxSharedRemovedWords = kDefaultSharedBytes / 8 - kReduceFixedWords;
constexpr size_t kNmsReduceMaxSharedBytes = nms_reduce_shared_bytes(kMaxSharedRemovedWords);
static_assert(nms_removed_in_shared(kMaxSharedRemovedWords) && !nms_removed_in_shared(kMaxSharedRemovedWords + 1),
              "nms: the shared / global switch-over");
static_assert(kNmsReduceMaxSharedBytes <= size_t(kDefaultSharedBytes), "nms: over 48 KiB without the opt-in");

template <typename T> struct BitsOf;
template <> struct BitsOf<float> { using U = unsigned int; };
template <> struct BitsOf<double> { using U = unsigned long long; };

__device__ __forceinline__ unsigned int to_bits(float v) { return __float_as_uint(v); }
__device__ __forceinline__ unsigned long long to_bits(double v) {
  return static_cast<unsigned long long>(__double_as_longlong(v));
}

__device__ __forceinline__ unsigned int warp_max(unsigned int v) {
#if __CUDA_ARCH__ >= 800
  return __reduce_max_sync(0xffffffffu, v);
#else
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
#endif
}
__device__ __forceinline__ unsigned long long warp_max(unsigned long long v) {
  for (int o = 16; o > 0; o >>= 1) {
    const unsigned long long w = __shfl_xor_sync(0xffffffffu, v, o);
    v = w > v ? w : v;
  }
  return v;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) iou_max_kernel(IouMaxProblem p) {
  using U = typename BitsOf<T>::U;
  __shared__ T sx1[kGtTile], sy1[kGtTile], sx2[kGtTile], sy2[kGtTile], sar[kGtTile];
  __shared__ int sval[kGtTile];
  __shared__ U smax[kGtTile];
  const int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  const bool in = i < p.N;
  const int lane = threadIdx.x & 31;
  for (int64_t b = blockIdx.y; b < p.B; b += gridDim.y) {
    Box<T> a{T(0), T(0), T(0), T(0)};
    T aa = T(0);
    if (in) {
      a = load_box<T>(p.a, p.a_dtype, b * p.asB + i * p.asN, p.as4, p.fmt);
      aa = area_rn(a);
    }
    T best = T(-1);
    int64_t arg = -1;
    for (int64_t m0 = 0; m0 < p.M; m0 += kGtTile) {
      const int mt = int(p.M - m0 < kGtTile ? p.M - m0 : kGtTile);
      __syncthreads();  // the previous tile is no longer read
      for (int t = threadIdx.x; t < mt; t += kThreads) {
        const int64_t j = m0 + t;
        const Box<T> g = load_box<T>(p.g, p.a_dtype, b * p.gsB + j * p.gsM, p.gs4, p.fmt);
        sx1[t] = g.x1; sy1[t] = g.y1; sx2[t] = g.x2; sy2[t] = g.y2;
        sar[t] = area_rn(g);
        sval[t] = p.valid ? int(p.valid[b * p.vsB + j * p.vsM] != 0) : 1;
        smax[t] = 0;
      }
      __syncthreads();
#pragma unroll 4  // ptxas's own unrolling spills a few bytes (float, sm_90)
      for (int t = 0; t < mt; ++t) {
        if (!sval[t]) continue;  // uniform over the block
        const Box<T> g{sx1[t], sy1[t], sx2[t], sy2[t]};
        const T v = in ? iou_rn(a, g, aa, sar[t]) : T(0);
        if (v > best) { best = v; arg = m0 + t; }
        const U m = warp_max(to_bits(v));
        if (lane == 0 && m != 0) atomicMax(&smax[t], m);
      }
      __syncthreads();
      U* gout = reinterpret_cast<U*>(static_cast<T*>(p.gmax) + b * p.M + m0);
      for (int t = threadIdx.x; t < mt; t += kThreads)
        if (smax[t] != 0) atomicMax(gout + t, smax[t]);
    }
    if (in) {
      static_cast<T*>(p.mx)[b * p.N + i] = best < T(0) ? T(0) : best;
      p.arg[b * p.N + i] = arg;
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kNmsWord) nms_mask_kernel(NmsProblem p, int64_t cb,
                                                            unsigned long long* mask) {
  const int64_t rb = blockIdx.y, c = blockIdx.x;
  if (c < rb) return;  // below the diagonal: never read
  __shared__ T sx1[kNmsWord], sy1[kNmsWord], sx2[kNmsWord], sy2[kNmsWord], sar[kNmsWord];
  __shared__ int64_t scls[kNmsWord];
  const int64_t j0 = c * kNmsWord;
  const int ncol = int(p.N - j0 < kNmsWord ? p.N - j0 : kNmsWord);
  if (threadIdx.x < ncol) {
    const Box<T> g = load_box<T>(p.b, p.dtype, (j0 + threadIdx.x) * p.s0, p.s4, p.fmt);
    sx1[threadIdx.x] = g.x1; sy1[threadIdx.x] = g.y1;
    sx2[threadIdx.x] = g.x2; sy2[threadIdx.x] = g.y2;
    sar[threadIdx.x] = area_rn(g);
    scls[threadIdx.x] = p.cls ? p.cls[j0 + threadIdx.x] : 0;
  }
  __syncthreads();
  const int64_t i = rb * kNmsWord + threadIdx.x;
  if (i >= p.N) return;
  const Box<T> bi = load_box<T>(p.b, p.dtype, i * p.s0, p.s4, p.fmt);
  const T ai = area_rn(bi);
  const int64_t ci = p.cls ? p.cls[i] : 0;
  const T thr = T(p.threshold);
  unsigned long long word = 0;
#pragma unroll 1  // unrolled, ptxas spills a few bytes (double on sm_90, float on sm_80)
  for (int k = (c == rb ? threadIdx.x + 1 : 0); k < ncol; ++k) {
    const Box<T> bj{sx1[k], sy1[k], sx2[k], sy2[k]};
    if (suppresses(iou_rn(bi, bj, ai, sar[k]), thr, ci, scls[k])) word |= 1ull << k;
  }
  mask[i * cb + c] = word;
}

__global__ void __launch_bounds__(kReduceThreads)
    nms_reduce_kernel(const unsigned long long* __restrict__ mask, int64_t N, int64_t cb,
                      unsigned long long* removed_global, int use_shared, uint8_t* keep) {
  extern __shared__ unsigned long long smem[];  // nms_reduce_shared_bytes(cb): no static shared memory
  unsigned long long* diag = smem;                 // [kNmsWord]
  unsigned long long& kept_word = smem[kNmsWord];
  unsigned long long* removed = use_shared ? smem + kReduceFixedWords : removed_global;
  for (int64_t w = threadIdx.x; w < cb; w += kReduceThreads) removed[w] = 0;
  __syncthreads();
  for (int64_t ib = 0; ib < cb; ++ib) {
    const int64_t i0 = ib * kNmsWord;
    const int nrow = int(N - i0 < kNmsWord ? N - i0 : kNmsWord);
    if (threadIdx.x < nrow) diag[threadIdx.x] = mask[(i0 + threadIdx.x) * cb + ib];
    __syncthreads();
    if (threadIdx.x == 0) {
      unsigned long long r = removed[ib], kept = 0;
      for (int k = 0; k < nrow; ++k) {
        if (!((r >> k) & 1ull)) { kept |= 1ull << k; r |= diag[k]; }
      }
      kept_word = kept;
    }
    __syncthreads();
    const unsigned long long kept = kept_word;
    if (threadIdx.x < nrow) keep[i0 + threadIdx.x] = uint8_t((kept >> threadIdx.x) & 1ull);
    for (int64_t w = ib + 1 + threadIdx.x; w < cb; w += kReduceThreads) {
      unsigned long long acc = removed[w];
      for (unsigned long long k = kept; k; k &= k - 1) acc |= mask[(i0 + __ffsll(k) - 1) * cb + w];
      removed[w] = acc;
    }
    __syncthreads();
  }
}

void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("segfast: ") + what + " launch failed: " +
                             cudaGetErrorString(err));
}

}  // namespace

void box_iou_max_cuda(const IouMaxProblem& p, uintptr_t stream) {
  if (p.B == 0 || p.N == 0) return;
  const int64_t blocks = (p.N + kThreads - 1) / kThreads;
  if (blocks > int64_t(0x7fffffff)) throw std::invalid_argument("segfast: N too large");
  const dim3 grid{unsigned(blocks), unsigned(p.B < kMaxGridY ? p.B : kMaxGridY)};
  cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  if (p.a_dtype == kFloat64) iou_max_kernel<double><<<grid, kThreads, 0, st>>>(p);
  else iou_max_kernel<float><<<grid, kThreads, 0, st>>>(p);
  check_launch("box_iou_max");
}

void nms_cuda(const NmsProblem& p, void* mask, void* removed, uintptr_t stream) {
  if (p.N == 0) return;
  const int64_t cb = (p.N + kNmsWord - 1) / kNmsWord;
  if (cb > kMaxGridY) throw std::invalid_argument("segfast: nms supports at most 65535 * 64 boxes");
  cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  auto* m = static_cast<unsigned long long*>(mask);
  const dim3 grid{unsigned(cb), unsigned(cb)};
  if (p.dtype == kFloat64) nms_mask_kernel<double><<<grid, kNmsWord, 0, st>>>(p, cb, m);
  else nms_mask_kernel<float><<<grid, kNmsWord, 0, st>>>(p, cb, m);
  check_launch("nms mask");
  const int use_shared = nms_removed_in_shared(cb);
  const size_t smem = nms_reduce_shared_bytes(cb);
  nms_reduce_kernel<<<1, kReduceThreads, smem, st>>>(m, p.N, cb,
                                                     static_cast<unsigned long long*>(removed),
                                                     use_shared, p.keep);
  check_launch("nms reduce");
}

}  // namespace boxes
}  // namespace segfast
