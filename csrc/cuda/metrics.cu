// metrics family, CUDA kernels: the segmentation confusion matrix and the COCO
// box matching. The rules are csrc/common/metrics.h, shared with the CPU pass
// (csrc/cpu/metrics.cpp); segfast/metrics/ validates and lays out the inputs.
//
// confusion: grid (pixel chunk, image); a block counts its chunk of each of
//   its images (blocks stride over the images by gridDim.y), one pixel per
//   thread at a time, coalesced over the pixels. From logits each thread takes
//   the argmax over the C class rows of its pixel (torch.argmax's order:
//   the first NaN, else the first maximum) in the logits' read itself: no
//   argmax tensor. The counts go to a shared-memory histogram of the block
//   (every bin when (C * C + 1) counts fit 48 KiB, i.e. C <= 110; else the
//   diagonal and the bad-label slot, the rest straight to the global matrix),
//   added at the end into the int64 [C * C + 1] output with one relaxed
//   atomicAdd per nonzero bin (no fence: the sums are read after the kernel).
//   Above 12287 classes every pixel adds to the global matrix.
// coco_match: one block per (category, image) group with detections (blocks
//   take groups in turn when there are more groups than blocks). The block
//   keeps the group's per-gt state (coco_match_layout) in shared memory, or
//   in a global scratch slot when it does not fit; for each detection in
//   score order all threads fill the IoU row (unfused, coco_iou), then one
//   thread per (area range, threshold) pair runs pycocotools' greedy match
//   (coco_greedy) over that row with its own matched bits and writes the
//   code. Float64 throughout: the codes are the CPU pass's bit for bit.
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "../common/metrics.h"
#include "clang_compat.h"

namespace segfast {
namespace metrics {
namespace {

constexpr int kConfThreads = 256;
constexpr int kConfMinChunk = kConfThreads * 16;  // pixels per block and image, at least
constexpr int64_t kConfSharedBins = 12288;        // uint32 counts in 48 KiB of shared memory
constexpr int64_t kConfTargetBlocks = 2048;       // blocks a launch aims at (images shared out)
constexpr int kMaxGridY = 65535;
constexpr int kCocoThreads = 128;

// Which bins the block counts in shared memory.
enum ConfMode : int { kConfAllShared = 0, kConfDiagShared = 1, kConfGlobal = 2 };

__host__ __device__ constexpr ConfMode conf_mode(int64_t C) {
  return C * C + 1 <= kConfSharedBins ? kConfAllShared : (C + 1 <= kConfSharedBins ? kConfDiagShared : kConfGlobal);
}
__host__ __device__ constexpr int64_t conf_shared_bins(int64_t C) {
  return conf_mode(C) == kConfAllShared ? C * C + 1 : (conf_mode(C) == kConfDiagShared ? C + 1 : 0);
}
constexpr size_t kConfMaxSharedBytes = size_t(kConfSharedBins) * sizeof(unsigned);
static_assert(kConfMaxSharedBytes <= size_t(kCocoSharedBytes), "confusion: over 48 KiB without the opt-in");

// The predicted class of pixel (n, s): the argmax of its logits in the compute
// type T (float, double for float64: fp16 / bf16 widen exactly, so the order
// and the first maximum are kept), or the class index.
template <typename T>
__device__ __forceinline__ int64_t predicted(const ConfusionProblem& p, int64_t n, int64_t s) {
  const int64_t base = n * p.xsN + s * p.xsS;
  if (!p.logits) return load_i64(p.x, p.x_dtype, base);
  T best;
  load_as(p.x, p.x_dtype, base, best);
  int64_t arg = 0;
  for (int64_t c = 1; c < p.C; ++c) {
    T v;
    load_as(p.x, p.x_dtype, base + c * p.xsC, v);
    if (argmax_takes(v, best)) {
      best = v;
      arg = c;
    }
  }
  return arg;
}

template <typename T>
__global__ void confusion_kernel(const ConfusionProblem p, int64_t chunk) {
  extern __shared__ unsigned sm_bins[];  // conf_shared_bins(C) counts; no static shared memory
  const int64_t C = p.C, bad = C * C;
  const ConfMode mode = conf_mode(C);
  const int64_t nsh = conf_shared_bins(C);
  auto* out = reinterpret_cast<unsigned long long*>(p.out);
  for (int64_t i = threadIdx.x; i < nsh; i += kConfThreads) sm_bins[i] = 0u;
  __syncthreads();
  const int64_t s0 = int64_t(blockIdx.x) * chunk;
  const int64_t s1 = s0 + chunk < p.S ? s0 + chunk : p.S;
  for (int64_t n = blockIdx.y; n < p.N; n += gridDim.y) {
    for (int64_t s = s0 + threadIdx.x; s < s1; s += kConfThreads) {
      const int64_t y = load_i64(p.t, p.t_dtype, n * p.tsN + s * p.tsS);
      if (p.has_ignore && y == p.ignore) continue;  // skip the logits of an ignored pixel
      const int64_t pred = predicted<T>(p, n, s);
      const int64_t bin = confusion_bin(y, pred, C, false, 0);
      if (mode == kConfAllShared)
        atomicAdd(&sm_bins[bin == kConfBad ? bad : bin], 1u);
      else if (mode == kConfDiagShared && (bin == kConfBad || y == pred))
        atomicAdd(&sm_bins[bin == kConfBad ? C : y], 1u);  // the diagonal, then the bad slot
      else
        atomicAdd(&out[bin == kConfBad ? bad : bin], 1ull);
    }
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < nsh; i += kConfThreads) {
    const unsigned v = sm_bins[i];
    if (v == 0u) continue;
    const int64_t o = mode == kConfAllShared ? i : (i == C ? bad : i * (C + 1));
    atomicAdd(&out[o], static_cast<unsigned long long>(v));
  }
}

__global__ void coco_match_kernel(const CocoMatchProblem p, uint8_t* scratch) {
  extern __shared__ double sm_coco[];  // coco_match_layout(...).bytes when no scratch; no static shared memory
  const CocoMatchLayout L = coco_match_layout(p.max_gts, p.A, p.T);
  uint8_t* base = scratch ? scratch + int64_t(blockIdx.x) * L.bytes : reinterpret_cast<uint8_t*>(sm_coco);
  double* iou = reinterpret_cast<double*>(base);
  uint8_t* crowd = base + L.crowd;
  uint8_t* idnz = base + L.idnz;
  uint8_t* ignored = base + L.ignored;  // [A, max_gts]
  uint32_t* matched = reinterpret_cast<uint32_t*>(base + L.matched);  // [A * T, words]
  const int64_t A = p.A, T = p.T, stride = p.max_gts > 1 ? p.max_gts : 1;
  for (int64_t gi = blockIdx.x; gi < p.n_groups; gi += gridDim.x) {
    const int64_t g = p.groups[gi];
    const int64_t g0 = p.gt_off[g], ng = p.gt_off[g + 1] - g0;
    const int64_t d0 = p.dt_off[g], nd = p.dt_off[g + 1] - d0;
    __syncthreads();  // the previous group's state is no longer read
    for (int64_t j = threadIdx.x; j < ng; j += kCocoThreads) {
      crowd[j] = p.gt_crowd[g0 + j] != 0;
      idnz[j] = p.gt_idnz[g0 + j] != 0;
    }
    for (int64_t i = threadIdx.x; i < A * ng; i += kCocoThreads) {
      const int64_t a = i / ng, j = i - a * ng;
      const double area = p.gt_area[g0 + j];
      ignored[a * stride + j] = p.gt_crowd[g0 + j] != 0 || area < p.area_rng[2 * a] || area > p.area_rng[2 * a + 1];
    }
    for (int64_t i = threadIdx.x; i < A * T * L.words; i += kCocoThreads) matched[i] = 0u;
    __syncthreads();
    for (int64_t d = 0; d < nd; ++d) {
      const double* B = p.dt_box + 4 * (d0 + d);
      for (int64_t j = threadIdx.x; j < ng; j += kCocoThreads)
        iou[j] = coco_iou(B, p.gt_box + 4 * (g0 + j), crowd[j] != 0);
      __syncthreads();
      const double area = coco_mul(B[2], B[3]);
      for (int64_t q = threadIdx.x; q < A * T; q += kCocoThreads) {
        const int64_t a = q / T, t = q - a * T;
        uint32_t* bits = matched + q * L.words;
        const uint8_t* ig = ignored + a * stride;
        const auto is_matched = [bits](int64_t j) { return ((bits[j >> 5] >> (j & 31)) & 1u) != 0u; };
        const int64_t m = coco_greedy(iou, ig, crowd, ng, p.thr[t], is_matched);
        if (m > -1) bits[m >> 5] |= 1u << (m & 31);
        p.code[((d0 + d) * A + a) * T + t] = coco_code(m, ig, idnz, area, p.area_rng[2 * a], p.area_rng[2 * a + 1]);
      }
      __syncthreads();  // the next detection rewrites the IoU row
    }
  }
}

void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("segfast: ") + what + " launch failed: " + cudaGetErrorString(err));
}

}  // namespace

void confusion_cuda(const ConfusionProblem& p, uintptr_t stream) {
  if (p.N == 0 || p.S == 0) return;
  const int64_t C = p.C;
  // pixels per block and image: at least 4 per bin the block flushes
  int64_t chunk = 4 * conf_shared_bins(C);
  chunk = chunk < kConfMinChunk ? kConfMinChunk : (chunk + kConfThreads - 1) / kConfThreads * kConfThreads;
  const int64_t gx = (p.S + chunk - 1) / chunk;
  if (gx > int64_t(0x7fffffff)) throw std::invalid_argument("segfast: confusion_matrix: too many pixels per image");
  int64_t gy = (kConfTargetBlocks + gx - 1) / gx;
  // the block's uint32 counts take at most chunk * ceil(N / gy) pixels
  const int64_t per_block = (int64_t(1) << 32) - 1;
  const int64_t min_gy = (p.N * chunk + per_block - 1) / per_block;
  gy = gy < min_gy ? min_gy : gy;
  gy = gy < p.N ? gy : p.N;
  if (gy > kMaxGridY) gy = kMaxGridY;
  if ((p.N + gy - 1) / gy * chunk > per_block)
    throw std::invalid_argument("segfast: confusion_matrix: too many images for the per-block counts");
  const dim3 grid{unsigned(gx), unsigned(gy)};
  const size_t smem = size_t(conf_shared_bins(C)) * sizeof(unsigned);
  cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  if (p.logits && p.x_dtype == kFloat64)
    confusion_kernel<double><<<grid, kConfThreads, smem, st>>>(p, chunk);
  else
    confusion_kernel<float><<<grid, kConfThreads, smem, st>>>(p, chunk);
  check_launch("confusion_matrix");
}

void coco_match_cuda(const CocoMatchProblem& p, void* scratch, int64_t scratch_bytes, uintptr_t stream) {
  if (p.n_groups == 0) return;
  const CocoMatchLayout L = coco_match_layout(p.max_gts, p.A, p.T);
  const int64_t need = coco_match_scratch_bytes(p.max_gts, p.A, p.T, p.n_groups);
  if (need > 0 && (scratch == nullptr || scratch_bytes < need))
    throw std::invalid_argument("segfast: coco_match: the scratch is smaller than coco_match_scratch_bytes()");
  int64_t blocks = need > 0 ? need / L.bytes : p.n_groups;
  if (blocks > int64_t(0x7fffffff)) blocks = 0x7fffffff;
  const size_t smem = need > 0 ? 0 : size_t(L.bytes);
  cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  coco_match_kernel<<<unsigned(blocks), kCocoThreads, smem, st>>>(p, need > 0 ? static_cast<uint8_t*>(scratch)
                                                                               : nullptr);
  check_launch("coco_match");
}

}  // namespace metrics
}  // namespace segfast
