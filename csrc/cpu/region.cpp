// Region family, CPU kernels (C++ / OpenMP). See csrc/common/region.h for the
// math and segfast/ops/region.py for the calling side.
//
// Both passes work on tiles of pixels x all C classes. The common case
// (softmax, class-index targets, float32 / float16 / bfloat16 logits: the
// "fast path") runs in blocks of VL pixels held in GCC generic vectors; every
// other input (dense targets, sigmoid or no activation, float64) takes the
// general tile code, whose inner loops run over pixels with unit stride in
// per-thread [C][tile] buffers and vectorise (exp included: fast_expf is
// branch-free). The general path is built once per instruction set, the fast
// path for AVX-512 only (see "instruction sets" below); one build is chosen
// per process.
#include <omp.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "../common/region.h"
#include "common.h"

namespace segfast {
namespace region {
namespace {

using cpu::load_row;
using cpu::store_row;

// ---- tuning ---------------------------------------------------------------------------
//
// Every constant that sets the kernels' speed and none of their results. They
// fit x86-64 cores with 32-48 KiB of L1 and 1-2 MiB of L2 per core, measured on
// softmax Dice (+ CE) steps at [8, 21, 128, 128]; on another machine, retune them
// with bench/bench_region.py.
//
// Lanes per block of the fast path and of the general path's hand-vectorised
// sums: one AVX-512 register of floats (two AVX2, four SSE); tiles are padded to it.
constexpr int64_t W = 16;
// Bytes of one [C][tile] float buffer: the general path holds 2-4 of them per
// thread, the fast path's stash of exps 1, which then stay in L2.
constexpr int64_t kTileBytes = 128 << 10;
constexpr int64_t kTileMin = 16, kTileMax = 256;  // pixels per tile, multiples of W
// Software prefetch distance (elements) along each class row where x (dx) is
// read (written) in place: C rows whose pitch is a large power of two defeat
// the hardware prefetchers. Read and write prefetches go to L2 (locality 2):
// the C lines of a block ahead would evict each other from one L1 set.
constexpr int64_t kPrefetch = 4 * W;
// Confusion counts (ConfCounts): per-thread int32 tables up to C = kConfLocalMaxC
// (else atomics straight into the output), kConfCopies interleaved copies of
// the table while C * C <= kConfCopiesMaxCC (consecutive pixels of one class hit
// one bin: the copies break the chain of increments through memory).
constexpr int64_t kConfLocalMaxC = 1024, kConfCopies = 4, kConfCopiesMaxCC = 1024;
// Blocks of VL pixels that the grad pass from kept probabilities (grad_probs_group)
// works on together, class by class: one block's C lines share an L1 set
// whenever the row pitch is a multiple of 4 KiB, kGroup consecutive blocks
// spread over kGroup sets.
constexpr int64_t kGroup = 4;

SEGFAST_INLINE int64_t pad_len(int64_t len) { return (len + W - 1) / W * W; }

int64_t tile_for(int64_t C) {
  int64_t t = kTileBytes / int64_t(sizeof(float)) / std::max<int64_t>(C, 1);
  t = std::min<int64_t>(kTileMax, std::max<int64_t>(kTileMin, t));
  return t & ~(W - 1);
}

int resolve_threads(int64_t num_threads) {
  if (num_threads <= 0) return omp_get_max_threads();
  return int(num_threads);
}

// ---- instruction sets: SEGFAST_CPU_ISA=avx512|avx2|baseline -------------------------
//
// The general path's entries (SEGFAST_ISA_ENTRY) are built three times:
// AVX-512 (x86-64-v4), AVX2 + FMA (x86-64-v3) and baseline x86-64; the fast
// path's for AVX-512 only (SEGFAST_V4; fast_ok). The best build the CPU runs
// is chosen on the first call, once per process. SEGFAST_CPU_ISA pins one
// (the tests run all three on one machine); a value that is not one of the
// three, or a build the CPU cannot run, is a ValueError naming the value.
// ("arch=x86-64-v3", not "arch=haswell": that would be taken only on CPUs
// that are Haswell.) Builds other than GCC >= 12 on x86-64 Linux have one
// build, for the compiler's target, which region_isa() names "baseline".
#if !defined(__clang__) && defined(__GNUC__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(SEGFAST_NO_CLONES) && __GNUC__ >= 12
#define SEGFAST_AVX512 1
#define SEGFAST_V4 __attribute__((target("arch=x86-64-v4")))
#define SEGFAST_V3 __attribute__((target("arch=x86-64-v3")))
#endif
enum class Isa { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };
const char* const kIsaNames[] = {"baseline", "avx2", "avx512"};

Isa choose_isa() {
#if defined(SEGFAST_AVX512)
  const Isa best = __builtin_cpu_supports("x86-64-v4")   ? Isa::kAvx512
                   : __builtin_cpu_supports("x86-64-v3") ? Isa::kAvx2
                                                         : Isa::kBaseline;
  const char* built = "";
#else
  const Isa best = Isa::kBaseline;
  const char* built = " (this build of segfast has the baseline kernels only)";
#endif
  const char* env = std::getenv("SEGFAST_CPU_ISA");
  if (env == nullptr || *env == '\0') return best;
  const std::string want(env);
  for (int i = 0; i < 3; ++i) {
    if (want != kIsaNames[i]) continue;
    if (i > int(best))
      throw std::invalid_argument("SEGFAST_CPU_ISA='" + want + "': not supported here; the best is '" +
                                  kIsaNames[int(best)] + "'" + built);
    return Isa(i);
  }
  throw std::invalid_argument("SEGFAST_CPU_ISA='" + want + "': must be avx512, avx2 or baseline");
}

Isa cpu_isa() {
  static const Isa isa = choose_isa();  // read once (an invalid value throws on every call)
  return isa;
}

template <class F>
F pick_isa(F v4, F v3, F base) {
  const Isa isa = cpu_isa();
  return isa == Isa::kAvx512 ? v4 : isa == Isa::kAvx2 ? v3 : base;
}

// SEGFAST_ISA_ENTRY(name, impl, PARAMS, ARGS) defines name##_v4, name##_v3 and
// name##_base, void PARAMS { impl ARGS; } for each instruction set;
// SEGFAST_ISA_PICK(name) is the one cpu_isa() chose.
#if defined(SEGFAST_AVX512)
#define SEGFAST_ISA_ENTRY(name, impl, PARAMS, ARGS) \
  SEGFAST_V4 void name##_v4 PARAMS { impl ARGS; }  \
  SEGFAST_V3 void name##_v3 PARAMS { impl ARGS; }  \
  void name##_base PARAMS { impl ARGS; }
#define SEGFAST_ISA_PICK(name) pick_isa(name##_v4, name##_v3, name##_base)
#else
#define SEGFAST_ISA_ENTRY(name, impl, PARAMS, ARGS) void name##_base PARAMS { impl ARGS; }
#define SEGFAST_ISA_PICK(name) (cpu_isa(), name##_base)
#endif

// ---- confusion counts of the argmax (optional, class-index targets) ---------------
//
// out[y * C + argmax_c x] += 1 for each pixel whose label y is valid (not ignored,
// in [0, C)); the first maximum wins and a NaN counts as the maximum, as in
// torch.argmax. Counted per thread in int32 tables that stay in L1 (16 KiB; see
// kConfCopies), added to out with atomics when the thread ends (or before an
// int32 could overflow); for C > kConfLocalMaxC, atomics straight into out.

class ConfCounts {
 public:
  ConfCounts(int64_t* out, int64_t C) : out_(out), C_(C) {
    if (out && C <= kConfLocalMaxC) {
      nh_ = C * C <= kConfCopiesMaxCC ? kConfCopies : 1;
      h_.assign(nh_ * C * C, 0);
    }
  }
  explicit operator bool() const { return out_ != nullptr; }
  // Pixels [0, len): label lb[l] (-1: not counted), argmax idx[l].
  SEGFAST_INLINE void add(const int32_t* __restrict lb, const int32_t* __restrict idx, int64_t len) {
    const int64_t C = C_;
    if (h_.empty()) {
      for (int64_t l = 0; l < len; ++l)
        if (lb[l] >= 0) __atomic_fetch_add(out_ + int64_t(lb[l]) * C + idx[l], 1, __ATOMIC_RELAXED);
      return;
    }
    int32_t* __restrict h = h_.data();
    const int64_t CC = C * C, mask = nh_ - 1;
    for (int64_t l = 0; l < len; ++l)
      if (lb[l] >= 0) ++h[(l & mask) * CC + int64_t(lb[l]) * C + idx[l]];
    if ((pending_ += len) > kFlushAt) flush();
  }
  void flush() {
    const int64_t CC = C_ * C_;
    for (int64_t b = 0; b < int64_t(h_.size()) && b < CC; ++b) {
      int64_t v = 0;
      for (int64_t k = 0; k < nh_; ++k) v += h_[k * CC + b];
      if (v) __atomic_fetch_add(out_ + b, v, __ATOMIC_RELAXED);
    }
    std::fill(h_.begin(), h_.end(), 0);
    pending_ = 0;
  }

 private:
  static constexpr int64_t kFlushAt = int64_t(1) << 30;  // pixels, far below an int32 bin's limit
  int64_t* out_;
  int64_t C_, nh_ = 1, pending_ = 0;
  std::vector<int32_t> h_;
};

template <typename T>
struct Workspace {
  int64_t C = 0, tile = 0;
  std::vector<T> xb;    // [C][tile]: logits, then probabilities
  std::vector<T> tb;    // dense target [C][tile] (t, already 0 where invalid)
  std::vector<T> vbd;   // dense validity [C][tile]
  std::vector<T> ab;    // grad: dLoss/dp [C][tile]
  std::vector<T> m, r;  // per pixel: max / sum, dot
  std::vector<T> vb;    // label validity [tile]
  std::vector<int32_t> lb;  // label class index or -1 [tile]
  std::vector<T> xr;    // xent: one reloaded row of x (stats) / per pixel u (grad)
  std::vector<T> hb;    // xent: per pixel h (stats) / B (grad)
  std::vector<double> acc;  // stats: [C][KX] chunk totals
  ConfCounts conf;          // stats: the optional confusion counts
  std::vector<T> cbest, crow;     // conf: [tile] running max, one row of x
  std::vector<int32_t> cidx;      // conf: [tile] its class
  std::vector<T> qb, qs;    // grad, fused term: q_c [C][tile], sum_c q_c [tile] (fused_q)
  Workspace(int64_t C_, int64_t tile_, bool dense, bool grad, int64_t* conf_out = nullptr)
      : C(C_), tile(tile_), xb(C_ * tile_), m(tile_), r(tile_), vb(tile_), lb(tile_), xr(tile_),
        hb(tile_), conf(conf_out, C_) {
    if (conf) { cbest.resize(tile_); crow.resize(tile_); cidx.resize(tile_); }
    if (dense) { tb.resize(C_ * tile_); vbd.resize(C_ * tile_); }
    if (grad) { ab.resize(C_ * tile_); qb.resize(C_ * tile_); qs.resize(tile_); }
    else { acc.resize(C_ * KX); ab.resize(tile_); }  // stats: ab is scratch
  }
};

template <typename T, typename L>
SEGFAST_INLINE void decode_labels_typed(int32_t* __restrict lb, T* __restrict vb,
                                        const L* __restrict src,
                                        int64_t stride, int64_t len, int64_t C, int64_t off,
                                        bool has_ignore, int64_t ign) {
  for (int64_t i = 0; i < len; ++i) {
    const int64_t lab = int64_t(src[i * stride]);
    const bool bad = has_ignore && lab == ign;
    const int64_t c = lab - off;
    lb[i] = (bad || c < 0 || c >= C) ? -1 : int32_t(c);
    vb[i] = bad ? T(0) : T(1);
  }
}

// ---- one tile: load + activation ---------------------------------------------------

template <typename T>
SEGFAST_INLINE void load_targets(const Problem& pr, Workspace<T>& w, int64_t n, int64_t s0,
                                 int64_t len) {
  const int64_t tile = w.tile;
  if (pr.t_is_label) {
    const int64_t off = n * pr.tsN + s0 * pr.tsS;
    T* vb = w.vb.data();
    const int64_t ign = int64_t(pr.ignore_value);
    switch (pr.t_dtype) {
      case kUInt8:
      case kBool:
        decode_labels_typed(w.lb.data(), vb, static_cast<const uint8_t*>(pr.t) + off, pr.tsS,
                            len, pr.C, pr.label_offset, pr.has_ignore, ign);
        break;
      case kInt32:
        decode_labels_typed(w.lb.data(), vb, static_cast<const int32_t*>(pr.t) + off, pr.tsS,
                            len, pr.C, pr.label_offset, pr.has_ignore, ign);
        break;
      default:
        decode_labels_typed(w.lb.data(), vb, static_cast<const int64_t*>(pr.t) + off, pr.tsS,
                            len, pr.C, pr.label_offset, pr.has_ignore, ign);
        break;
    }
    for (int64_t i = len; i < pad_len(len); ++i) { w.lb[i] = -1; vb[i] = T(0); }
  } else {
    const T ign = T(pr.ignore_value);  // compared in the compute type, like torch does
    for (int64_t c = 0; c < pr.C; ++c) {
      T* __restrict tr = w.tb.data() + c * tile;
      T* __restrict vr = w.vbd.data() + c * tile;
      load_row(tr, pr.t, pr.t_dtype, n * pr.tsN + c * pr.tsC + s0 * pr.tsS, pr.tsS, len);
      if (pr.has_ignore) {
#pragma omp simd
        for (int64_t i = 0; i < len; ++i) {
          const bool bad = tr[i] == ign;
          vr[i] = bad ? T(0) : T(1);
          tr[i] = bad ? T(0) : tr[i];
        }
      } else {
#pragma omp simd
        for (int64_t i = 0; i < len; ++i) vr[i] = T(1);
      }
      for (int64_t i = len; i < pad_len(len); ++i) { tr[i] = T(0); vr[i] = T(0); }
    }
  }
}

// x tile -> probabilities in w.xb.
template <typename T>
SEGFAST_INLINE void load_probs(const Problem& pr, Workspace<T>& w, int64_t n, int64_t s0,
                               int64_t len) {  // fills pad_len(len) pixels (padding: x = 0)
  const int64_t C = pr.C, tile = w.tile;
  T* __restrict xb = w.xb.data();
  const int64_t lenp = pad_len(len);
  for (int64_t c = 0; c < C; ++c) {
    load_row(xb + c * tile, pr.x, pr.x_dtype, n * pr.xsN + c * pr.xsC + s0 * pr.xsS, pr.xsS, len);
    for (int64_t i = len; i < lenp; ++i) xb[c * tile + i] = T(0);
  }
  len = lenp;
  if (pr.act == kSigmoid) {
    for (int64_t c = 0; c < C; ++c) {
      T* __restrict row = xb + c * tile;
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) row[i] = sigmoid(row[i]);
    }
  } else if (pr.act == kSoftmax) {
    T* __restrict m = w.m.data();
    T* __restrict sum = w.r.data();
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) m[i] = xb[i];
    for (int64_t c = 1; c < C; ++c) {
      const T* __restrict row = xb + c * tile;
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) m[i] = row[i] > m[i] ? row[i] : m[i];
    }
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) sum[i] = T(0);
    for (int64_t c = 0; c < C; ++c) {
      T* __restrict row = xb + c * tile;
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) {
        const T e = exp_t(row[i] - m[i]);
        row[i] = e;
        sum[i] += e;
      }
    }
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) sum[i] = T(1) / sum[i];
    for (int64_t c = 0; c < C; ++c) {
      T* __restrict row = xb + c * tile;
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) row[i] *= sum[i];
    }
  }
}

// ---- fast paths: float, class-index targets, softmax ------------------------------
//
// The common case (multiclass Dice on logits with label maps). t is one-hot, so
// per (pixel, class) only P += v*p and PP += v*p^2 need every class; I (= M, as
// min(p, t) = p*t for p in [0, 1] and t in {0, 1}) and T (= TT) only involve
// the pixel's own class, done with a compare mask. Work goes in blocks of VL = 16
// pixels x all C classes, one zmm register each (GCC generic vectors; the fast
// path is built for AVX-512 only, see fast_ok): the softmax max, exp and sum
// stay in registers, and x is read straight from the input when it
// is float32 with unit pixel stride (else a converted copy of the tile is used),
// with software prefetch: C rows with a large power-of-two pitch defeat the
// hardware prefetchers. Grad: dx_c = v p_c (a_c - sum_k p_k a_k) per block, with
// a_c = gP + 2 gPP p_c + [c == label] gI + gM h, dx written
// straight to the output when it is float32 with unit pixel stride.
// Everything else (dense targets, other activations, float64) takes the
// general tile code below.

#if defined(SEGFAST_AVX512)
#define SEGFAST_VEC 1
constexpr int64_t VL = W;
typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));

SEGFAST_INLINE vf vload(const float* p) { vf v; std::memcpy(&v, p, sizeof(v)); return v; }
SEGFAST_INLINE vi viload(const int32_t* p) { vi v; std::memcpy(&v, p, sizeof(v)); return v; }
SEGFAST_INLINE void vstore(float* p, vf v) { std::memcpy(p, &v, sizeof(v)); }
SEGFAST_INLINE vf vsplat(float s) { return vf{} + s; }
// Sum of the 16 lanes as a tree (halves added as vectors): a lane-by-lane loop
// is 15 dependent adds, and the stats pass takes 4 of these per class and tile.
SEGFAST_INLINE float vhsum(vf v) {
  typedef float vf8 __attribute__((vector_size(32)));
  typedef float vf4 __attribute__((vector_size(16)));
  vf8 a, b;
  std::memcpy(&a, &v, sizeof(a));
  std::memcpy(&b, reinterpret_cast<const char*>(&v) + sizeof(a), sizeof(b));
  a += b;
  vf4 c, d;
  std::memcpy(&c, &a, sizeof(c));
  std::memcpy(&d, reinterpret_cast<const char*>(&a) + sizeof(c), sizeof(d));
  c += d;
  return (c[0] + c[2]) + (c[1] + c[3]);
}

// exp(x) for x <= 0 (softmax: x - max), lane-wise, ~2e-7 relative error (about
// fast_expf's, csrc/common/pixel_terms.h): x = n ln2 + r, |r| <= ln2/2 with
// n = round(x log2e) by vrndscaleps; only the lower clamp (a NaN-propagating
// max; the result stays normal: x >= -87); a degree-5 minimax polynomial
// 1 + r + r^2 (c2 + c3 r + c4 r^2 + c5 r^3) in Horner form; 2^n by vscalefps.
// Not always_inline: it can only be inlined into AVX-512 code, which the
// flatten attribute of the entry points below does.
SEGFAST_V4 inline vf vexp_nonpos(vf xv) {
  const __m512 x = _mm512_max_ps(_mm512_set1_ps(-87.0f), (__m512)xv);  // NaN x -> NaN
  const __m512 fn = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(fn, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(fn, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(8.3128365e-3f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1889237e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6667112e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.9999242e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return (vf)_mm512_scalef_ps(p, fn);
}

// Per-pixel max over the C classes of one block, copying x into e on the way
// (e[c * ep + l] = x[c * xp + l]); prefetches each row pf elements ahead into
// the cache level kLocality (__builtin_prefetch's). Callers take their exps
// from e: the C rows of x lie a multiple of 4 KiB apart whenever H W is a
// multiple of 1024, so the block's C lines share one L1 set and would come from
// L2 a second time.
template <int kLocality>
SEGFAST_INLINE vf max_stash(const float* __restrict x, int64_t xp, int64_t C, float* __restrict e,
                            int64_t ep, int64_t pf) {
  vf m = vload(x), m1 = m;  // two chains: vmaxps latency
  vstore(e, m);
  if (pf) __builtin_prefetch(x + pf, 0, kLocality);
  int64_t c = 1;
  for (; c + 1 < C; c += 2) {
    const vf x0 = vload(x + c * xp), x1 = vload(x + (c + 1) * xp);
    if (pf) {
      __builtin_prefetch(x + c * xp + pf, 0, kLocality);
      __builtin_prefetch(x + (c + 1) * xp + pf, 0, kLocality);
    }
    vstore(e + c * ep, x0);
    vstore(e + (c + 1) * ep, x1);
    m = x0 > m ? x0 : m;
    m1 = x1 > m1 ? x1 : m1;
  }
  if (c < C) {
    const vf x0 = vload(x + c * xp);
    if (pf) __builtin_prefetch(x + c * xp + pf, 0, kLocality);
    vstore(e + c * ep, x0);
    m = x0 > m ? x0 : m;
  }
  return m1 > m ? m1 : m;
}

// The argmax over the classes of one block of x (e[c * ep + l]: the stash of x in L1,
// or x itself): the first maximum wins, a NaN counts as the maximum
// (torch.argmax). For the confusion counts (ConfCounts).
// NaN tests on the bits (integer compares): GCC scalarises the unordered float
// compares of generic vectors.
SEGFAST_INLINE vi visnan(vf v) {
  vi b;
  std::memcpy(&b, &v, sizeof(b));
  return (b & 0x7fffffff) > 0x7f800000;
}

SEGFAST_INLINE vi argmax_stash(const float* __restrict e, int64_t ep, int64_t C) {
  vf best = vload(e);
  vi idx = vi{}, bnan = visnan(best);
  for (int64_t c = 1; c < C; ++c) {
    const vf v = vload(e + c * ep);
    const vi vnan = visnan(v);
    const vi up = (v > best) | (vnan & ~bnan);
    best = up ? v : best;
    bnan |= vnan & up;
    idx = up ? vi{} + int32_t(c) : idx;
  }
  return idx;
}

// Softmax numerators of one block: e[c * ep + l] = exp(x[c * xp + l] - max_c x);
// returns the per-pixel sums (and the max in *mout, the argmax in *am when
// asked). Prefetches into the cache level kLocality (max_stash).
template <int kLocality = 3>
SEGFAST_INLINE vf softmax_block(const float* __restrict x, int64_t xp, int64_t C,
                                float* __restrict e, int64_t ep, int64_t pf,
                                vf* mout = nullptr, vi* am = nullptr) {
  const vf m = max_stash<kLocality>(x, xp, C, e, ep, pf);
  if (mout) *mout = m;
  if (am) *am = argmax_stash(e, ep, C);
  vf s = vf{};
  for (int64_t c = 0; c < C; ++c) {
    const vf ec = vexp_nonpos(vload(e + c * ep) - m);
    vstore(e + c * ep, ec);
    s += ec;
  }
  return s;
}

struct FastWork {
  int64_t C = 0, tile = 0;
  std::vector<float> xb;    // [C][tile] converted x (when it cannot be read in place)
  std::vector<float> eb;    // stats: [C][tile] exp numerators; grad: [3][C][VL] e, a, q
                            // (grad_block, grad_block_plain) or [C][kGroup][VL] q (grad_probs)
  std::vector<float> rv;    // stats: [tile] v / sum
  std::vector<float> vb;    // [tile] v
  std::vector<int32_t> lb;  // [tile] class or -1
  std::vector<float> tail;  // [C][VL] the last partial block, zero-padded
  std::vector<float> lse;   // stats with xent: [tile] log of the sum of exp(x - max)
  std::vector<float> mx;    // stats with xent: [tile] the max (logsumexp = mx + lse)
  std::vector<float> gt;    // grad: [6][C] gP, 2 gPP, gI, gM, gS7, gS8 of the image, sum gS8, gamma
  std::vector<double> acc;  // stats: [C][KX]
  // optional float32 [N][C][S] (strides p_sN, p_sC, 1): v p, written by the stats
  // pass without a pixel term for grad_probs_cpu
  float* p_out = nullptr;
  int64_t p_sN = 0, p_sC = 0;
  ConfCounts conf;  // stats: the optional confusion counts
  FastWork(int64_t C_, int64_t tile_, bool grad, int64_t* conf_out = nullptr)
      : C(C_), tile(tile_), xb(C_ * tile_),
        eb(grad ? std::max<int64_t>(3, kGroup) * C_ * VL : C_ * tile_), rv(tile_), vb(tile_),
        lb(tile_), tail(C_ * VL), lse(tile_), mx(tile_), gt(grad ? 6 * C_ + 2 : 0), acc(grad ? 0 : C_ * KX),
        conf(conf_out, C_) {}
};

// Labels of pixels [s0, s0 + len) of image n -> lb, vb, padded with (-1, 0) to pad_len(len).
SEGFAST_INLINE void fast_labels(const Problem& pr, FastWork& w, int64_t n, int64_t s0,
                                int64_t len) {
  const int64_t off = n * pr.tsN + s0 * pr.tsS;
  const int64_t ign = int64_t(pr.ignore_value);
  float* vb = w.vb.data();
  int32_t* lb = w.lb.data();
  switch (pr.t_dtype) {
    case kUInt8:
    case kBool:
      decode_labels_typed(lb, vb, static_cast<const uint8_t*>(pr.t) + off, pr.tsS, len, pr.C,
                          pr.label_offset, pr.has_ignore, ign);
      break;
    case kInt32:
      decode_labels_typed(lb, vb, static_cast<const int32_t*>(pr.t) + off, pr.tsS, len, pr.C,
                          pr.label_offset, pr.has_ignore, ign);
      break;
    default:
      decode_labels_typed(lb, vb, static_cast<const int64_t*>(pr.t) + off, pr.tsS, len, pr.C,
                          pr.label_offset, pr.has_ignore, ign);
      break;
  }
  for (int64_t i = len; i < pad_len(len); ++i) { lb[i] = -1; vb[i] = 0.0f; }
}

// Where block-wise code reads x for pixels [s0, s0 + len) of image n: in place
// (float32, unit stride; full blocks only, the partial last block is copied
// into w.tail) or from a zero-padded converted copy in w.xb.
struct XSrc {
  const float* base;  // pixel s0, class 0
  int64_t pitch;      // between classes
  int64_t full;       // pixels readable in place from base (a multiple of VL)
};

SEGFAST_INLINE XSrc fast_xsrc(const Problem& pr, FastWork& w, int64_t n, int64_t s0,
                              int64_t len) {
  const int64_t C = pr.C;
  if (pr.x_dtype == kFloat32 && pr.xsS == 1) {
    const float* base = static_cast<const float*>(pr.x) + n * pr.xsN + s0;
    const int64_t full = len / VL * VL;
    if (full < len) {
      float* tl = w.tail.data();
      for (int64_t c = 0; c < C; ++c) {
        for (int64_t l = 0; l < VL; ++l)
          tl[c * VL + l] = full + l < len ? base[c * pr.xsC + full + l] : 0.0f;
      }
    }
    return {base, pr.xsC, full};
  }
  float* xb = w.xb.data();
  const int64_t tile = w.tile, lenp = pad_len(len);
  for (int64_t c = 0; c < C; ++c) {
    load_row(xb + c * tile, pr.x, pr.x_dtype, n * pr.xsN + c * pr.xsC + s0 * pr.xsS, pr.xsS, len);
    for (int64_t i = len; i < lenp; ++i) xb[c * tile + i] = 0.0f;
  }
  return {xb, tile, lenp};
}

// x of class c, pixels [i, i + VL) of a tile (block i), wherever fast_xsrc put it.
SEGFAST_INLINE const float* xblock(const XSrc& xs, const FastWork& w, int64_t c, int64_t i) {
  return i < xs.full ? xs.base + c * xs.pitch + i : w.tail.data() + c * VL;
}

// logsumexp of x over classes 1..C-1 of one pixel (lane l of block i), with its
// own max: for the rare pixel whose foreground exps underflow next to class 0.
SEGFAST_INLINE float lse_fg_lane(const XSrc& xs, const FastWork& w, int64_t C, int64_t i,
                                 int64_t l) {
  float m = -INFINITY, s = 0.0f;
  for (int64_t c = 1; c < C; ++c) m = std::max(m, xblock(xs, w, c, i)[l]);
  m = std::isinf(m) ? 0.0f : m;  // torch's logsumexp: all -inf gives -inf, a +inf gives +inf
  for (int64_t c = 1; c < C; ++c) s += std::exp(xblock(xs, w, c, i)[l] - m);
  return m + std::log(s);
}

// Below this sum of foreground exps (relative to the pixel's max) the fused
// term recomputes the pixel with lse_fg_lane.
constexpr float kFgTiny = 1e-30f;

template <int XK>
SEGFAST_INLINE void fast_stats_item(const Problem& pr, FastWork& w, int64_t n, int64_t P,
                                    int64_t j, float* __restrict out) {
  const int64_t C = pr.C, tile = w.tile;
  int64_t b, e;
  chunk_range(pr.S, P, j, &b, &e);
  double* __restrict acc = w.acc.data();
  std::fill(w.acc.begin(), w.acc.end(), 0.0);
  double V = 0.0;
  float* __restrict eb = w.eb.data();
  float* __restrict rv = w.rv.data();
  const Focal<float> focal = make_focal<float>(pr.gamma, -1.0);
  for (int64_t s0 = b; s0 < e; s0 += tile) {
    const int64_t len = std::min(tile, e - s0), lenp = pad_len(len);
    fast_labels(pr, w, n, s0, len);
    const XSrc xs = fast_xsrc(pr, w, n, s0, len);
    const float* __restrict vb = w.vb.data();
    vf vsum = vf{};
    float* __restrict lse = w.lse.data();
    vi am;  // the argmax (confusion counts), taken from the stash of x
    const bool conf = bool(w.conf);
    for (int64_t i = 0; i < lenp; i += VL) {
      vf m, s;
      // The prefetch goes on into the next tile of the chunk, into L2 only (as
      // the grad pass does).
      if (i < xs.full) {
        s = softmax_block<2>(xs.base + i, xs.pitch, C, eb + i, tile,
                                  s0 + i + VL + kPrefetch <= e ? kPrefetch : 0, &m, conf ? &am : nullptr);
      } else {
        s = softmax_block(w.tail.data(), VL, C, eb + i, tile, 0, &m, conf ? &am : nullptr);
      }
      if (conf) {
        int32_t ia[VL];
        std::memcpy(ia, &am, sizeof(ia));
        w.conf.add(w.lb.data() + i, ia, VL);
      }
      const vf v = vload(vb + i);
      const vf rs = 1.0f / s;
      vstore(rv + i, v * rs);
      vsum += v;
      if (XK == kXentNone) continue;
      // per pixel: -log p = (m - x) + log(sum) in torch's order, exact for huge logits
      for (int64_t l = 0; l < VL; ++l) {
        lse[i + l] = std::log(s[l]);
        w.mx[i + l] = m[l];
      }
      if (XK == kXentCE) continue;
      // focal / fused: per pixel, into the label's plane
      vf sfg = vf{};
      if (XK == kXentFused)
        for (int64_t c = 1; c < C; ++c) sfg += vload(eb + c * tile + i);
      const int32_t* __restrict lbi = w.lb.data() + i;
      for (int64_t l = 0; l < VL; ++l) {
        const int32_t y = lbi[l];
        if (y < 0) continue;  // ignored or padding
        if (XK == kXentFocal) {
          const float py = eb[y * tile + i + l] / s[l];
          const float nl = (m[l] - xblock(xs, w, y, i)[l]) + lse[i + l];
          acc[y * KX + kS7] += focal_value(py, nl, focal);
        } else if (y >= 1) {  // fused: h = -log(1 - p_0) = logsumexp - logsumexp_fg
          acc[y * KX + kS8] += sfg[l] > kFgTiny ? lse[i + l] - std::log(sfg[l])
                                                : (m[l] - lse_fg_lane(xs, w, C, i, l)) + lse[i + l];
        }
      }
    }
    V += double(vhsum(vsum));
    const int32_t* __restrict lb = w.lb.data();
    for (int64_t c = 0; c < C; ++c) {
      const float* __restrict ec = eb + c * tile;
      const int32_t cc = int32_t(c);
      float* po = XK == kXentNone && w.p_out ? w.p_out + n * w.p_sN + c * w.p_sC + s0 : nullptr;
      vf aP = vf{}, aPP = vf{}, aI = vf{}, aT = vf{};
      for (int64_t i = 0; i < lenp; i += VL) {
        const vf q = vload(ec + i) * vload(rv + i);  // v * p
        if (po) {  // prefetched for writing a tile ahead, into L2
          if (s0 + tile + i < e) __builtin_prefetch(po + tile + i, 1, 2);
          if (i + VL <= len) vstore(po + i, q);
          else for (int64_t l = 0; l < len - i; ++l) po[i + l] = q[l];
        }
        const vf t = viload(lb + i) == cc ? vsplat(1.0f) : vf{};
        aP += q;
        aPP += q * q;
        aI += q * t;  // (not a masked add: a NaN p gives a NaN I, as v*p*t does)
        aT += t;
      }
      if (XK == kXentCE || XK == kXentFused) {  // -log p = lse - x: CE on the label's class
        vf aCE = vf{}, aLP = vf{};
        for (int64_t i = 0; i < lenp; i += VL) {
          const vf nl = (vload(w.mx.data() + i) - vload(xblock(xs, w, c, i))) + vload(lse + i);
          aCE += viload(lb + i) == cc ? nl : vf{};
          if (XK == kXentCE) aLP += vload(vb + i) != 0.0f ? nl : vf{};  // LP on every valid pixel (no 0·inf)
        }
        acc[c * KX + kS7] += vhsum(aCE);
        acc[c * KX + kS8] += vhsum(aLP);
      }
      double* ac = acc + c * KX;
      const double I = vhsum(aI), T = vhsum(aT);
      ac[kI] += I;
      ac[kP] += vhsum(aP);
      ac[kT] += T;
      ac[kPP] += vhsum(aPP);
      ac[kTT] += T;
      ac[kM] += I;
    }
  }
  constexpr int64_t KO = XK ? KX : K;
  float* o = out + (n * P + j) * C * KO;
  for (int64_t c = 0; c < C; ++c) {
    acc[c * KX + kV] = V;
    for (int64_t k = 0; k < KO; ++k) o[c * KO + k] = float(acc[c * KX + k]);
  }
}

SEGFAST_V4 __attribute__((flatten)) void fast_stats_f32(const Problem& pr, FastWork& w, int64_t n,
                                                        int64_t P, int64_t j, float* out) {
  switch (pr.xent) {
    case kXentCE: fast_stats_item<kXentCE>(pr, w, n, P, j, out); break;
    case kXentFocal: fast_stats_item<kXentFocal>(pr, w, n, P, j, out); break;
    case kXentFused: fast_stats_item<kXentFused>(pr, w, n, P, j, out); break;
    default: fast_stats_item<kXentNone>(pr, w, n, P, j, out);
  }
}

// dLoss/dx of one block (softmax, labels): a_c = v (gP + 2 gPP p + [c == lb] gI + gM h),
// dx_c = p_c (a_c - sum_k p_k a_k); with a pixel term XK also + v (p_c B - b_c)
// (csrc/common/region.h). gt: [6][C] tables (fast_grad_item), then sum gS8, gamma.
template <int XK>
SEGFAST_INLINE void grad_block(const float* x, int64_t xp, int64_t C,
                               const int32_t* __restrict lbp, const float* __restrict vbp,
                               const float* __restrict gt, float* __restrict e,
                               float* dst, int64_t dp, int64_t pf) {  // dst may be x (in place)
  float* __restrict a_buf = e + C * VL;
  float* __restrict q_buf = e + 2 * C * VL;  // fused: p_c / (1 - p_0)
  const float* __restrict gP = gt;
  const float* __restrict gPP2 = gt + C;
  const float* __restrict gI = gt + 2 * C;
  const float* __restrict gM = gt + 3 * C;
  const float* __restrict g7 = gt + 4 * C;
  const float* __restrict g8 = gt + 5 * C;
  vf m;
  const vf s = softmax_block(x, xp, C, e, VL, pf, &m);
  const vf r = 1.0f / s;
  const vi lb = viload(lbp);
  const vf rv = r * vload(vbp);
  vf dot = vf{}, gy = vf{};
  for (int64_t c = 0; c < C; ++c) {  // e -> a (v omitted: dx gets it through rv)
    const vf p = vload(e + c * VL) * r;
    const vi hit = lb == int32_t(c);
    vf a = p * gPP2[c] + gP[c];
    a = hit ? a + gI[c] : a;
    const vf t = hit ? vsplat(1.0f) : vf{};
    a += gM[c] * (p < t ? vsplat(1.0f) : (p == t ? vsplat(0.5f) : vf{}));  // d min(p, t) / dp
    if (XK == kXentCE || XK == kXentFused) gy = hit ? gy + g7[c] : gy;  // gS7_y
    dot += p * a;
    vstore(a_buf + c * VL, a);
  }
  if (XK == kXentNone) {
    for (int64_t c = 0; c < C; ++c) {
      const vf pv = vload(e + c * VL) * rv;
      vstore(dst + c * dp, pv * (vload(a_buf + c * VL) - dot));
      if (pf) __builtin_prefetch(dst + c * dp + pf, 1, 3);
    }
    return;
  }
  // B = sum_c b_c per pixel; u (focal) / k (fused) per pixel
  alignas(64) float ub[VL];
  vf B;
  if (XK == kXentCE) {
    B = gy + gt[6 * C];
  } else if (XK == kXentFocal) {
    const Focal<float> focal = make_focal<float>(gt[6 * C + 1], -1.0);
    for (int64_t l = 0; l < VL; ++l) {
      const int32_t y = lbp[l];
      if (y < 0) { ub[l] = 0.0f; continue; }
      const float py = e[y * VL + l] * r[l];
      const float nl = m[l] + std::log(s[l]) - x[y * xp + l];
      ub[l] = g7[y] * focal_dlogp(py, nl, focal);
    }
    B = vload(ub);
  } else {  // fused: q_c = e_c / sum_{c >= 1} e_c, k = [y >= 1] gS8_y
    vf sfg = vf{};
    for (int64_t c = 1; c < C; ++c) sfg += vload(e + c * VL);
    const vf rf = 1.0f / sfg;
    for (int64_t c = 1; c < C; ++c) vstore(q_buf + c * VL, vload(e + c * VL) * rf);
    alignas(64) float qnan[VL] = {};
    for (int64_t l = 0; l < VL; ++l) {
      const int32_t y = lbp[l];
      ub[l] = y >= 1 ? g8[y] : 0.0f;
      if (!(sfg[l] > kFgTiny)) {  // the foreground exps underflowed: recompute this pixel
        float mf = -INFINITY, sf = 0.0f;
        for (int64_t c = 1; c < C; ++c) mf = std::max(mf, x[c * xp + l]);
        for (int64_t c = 1; c < C; ++c) sf += (q_buf[c * VL + l] = std::exp(x[c * xp + l] - mf));
        for (int64_t c = 1; c < C; ++c) q_buf[c * VL + l] /= sf;
        // every foreground logit -inf (or a NaN): q is 0/0, and, as in the
        // reference (logsumexp's backward), NaN reaches every class of the pixel
        if (!(mf > -INFINITY)) qnan[l] = NAN;
      }
    }
    B = gy + vload(ub) + vload(qnan);
  }
  dot -= B;
  const vf v = vload(vbp), u = vload(ub);
  for (int64_t c = 0; c < C; ++c) {
    const vf pv = vload(e + c * VL) * rv;
    const vi hit = lb == int32_t(c);
    vf b;
    if (XK == kXentCE) b = hit ? vsplat(g8[c] + g7[c]) : vsplat(g8[c]);
    else if (XK == kXentFocal) b = hit ? u : vf{};
    else b = (hit ? vsplat(g7[c]) : vf{}) + (c >= 1 ? u * vload(q_buf + c * VL) : vf{});
    vstore(dst + c * dp, pv * (vload(a_buf + c * VL) - dot) - v * b);
    if (pf) __builtin_prefetch(dst + c * dp + pf, 1, 3);
  }
}

// grad_block for the plain region losses (no pixel term, dLoss/dPP = dLoss/dM = 0:
// Dice, IoU, Tversky without squared_pred / soft targets): a_c = gP_c + [c == lb] gI_c,
// so sum_k p_k a_k is accumulated in the exp pass and the a pass is gone. x is
// prefetched into L2 only: the C lines of a block ahead would evict each other
// from one L1 set. x is stashed in e with the max, as in softmax_block.
SEGFAST_INLINE void grad_block_plain(const float* x, int64_t xp, int64_t C,
                                     const int32_t* __restrict lbp, const float* __restrict vbp,
                                     const float* __restrict gt, float* __restrict e, float* dst,
                                     int64_t dp, int64_t pf) {
  const float* __restrict gP = gt;
  const float* __restrict gI = gt + 2 * C;
  const vf m = max_stash<2>(x, xp, C, e, VL, pf);
  const vi lb = viload(lbp);
  vf s = vf{}, d = vf{};  // sum_c e_c, sum_c e_c a_c
  for (int64_t c = 0; c < C; ++c) {
    const vf ec = vexp_nonpos(vload(e + c * VL) - m);
    vstore(e + c * VL, ec);
    s += ec;
    d += ec * (lb == int32_t(c) ? vsplat(gP[c] + gI[c]) : vsplat(gP[c]));
  }
  const vf r = 1.0f / s;
  const vf rv = r * vload(vbp);
  const vf dot = d * r;
  for (int64_t c = 0; c < C; ++c) {
    const vf a = lb == int32_t(c) ? vsplat(gP[c] + gI[c]) : vsplat(gP[c]);
    vstore(dst + c * dp, (vload(e + c * VL) * rv) * (a - dot));
    if (pf) __builtin_prefetch(dst + c * dp + pf, 1, 2);
  }
}

// kind: kGradPlain (grad_block_plain: dLoss/dPP = dLoss/dM = 0), kGradFull (grad_block).
constexpr int kGradPlain = 0, kGradFull = 1;

template <int kKind, int XK>
SEGFAST_INLINE void fast_grad_tile(const Problem& pr, FastWork& w, int64_t n, int64_t s0,
                                   int64_t len, const XSrc& xs, void* dx, int64_t dxsN,
                                   int64_t dxsC, int64_t dxsS) {
  const int64_t C = pr.C;
  const float* gt = w.gt.data();
  float* eb = w.eb.data();
  float* xb = w.xb.data();
  // the block at tile pixel i: x (pitch xp) -> dst (pitch dp)
  auto block = [&](const float* x, int64_t xp, int64_t i, float* dst, int64_t dp, int64_t pf) {
    const int32_t* lbp = w.lb.data() + i;
    const float* vbp = w.vb.data() + i;
    if constexpr (kKind == kGradPlain && XK == kXentNone) {
      grad_block_plain(x, xp, C, lbp, vbp, gt, eb, dst, dp, pf);
    } else {
      grad_block<XK>(x, xp, C, lbp, vbp, gt, eb, dst, dp, pf);
    }
  };
  // blocks [0, full) of the tile from x (pitch xp) to dst (pitch dp); with pf_on,
  // prefetching on into the next tile.
  auto blocks = [&](const float* x, int64_t xp, float* dst, int64_t dp, int64_t full, bool pf_on) {
    for (int64_t i = 0; i < full; i += VL)
      block(x + i, xp, i, dst + i, dp, pf_on && s0 + i + VL + kPrefetch <= pr.S ? kPrefetch : 0);
  };
  const bool direct = xs.base != xb && dxsS == 1;  // x read in place (float32), dx unit stride
  if (direct) {
    float* d = static_cast<float*>(dx) + n * dxsN + s0;
    blocks(xs.base, xs.pitch, d, dxsC, xs.full, true);
    if (xs.full < len) {  // in place: x was read directly, tail from w.tail
      float* tl = w.tail.data();
      block(tl, VL, xs.full, tl, VL, 0);
      for (int64_t c = 0; c < C; ++c)
        for (int64_t i = xs.full; i < len; ++i) d[c * dxsC + i] = tl[c * VL + i - xs.full];
    }
    return;
  }
  // else dx goes through w.xb (x is there too unless it was read in place)
  const int64_t tile = w.tile, lenp = pad_len(len);
  if (xs.base != xb) {  // read in place, write to xb
    blocks(xs.base, xs.pitch, xb, tile, xs.full, false);
    if (xs.full < len) block(w.tail.data(), VL, xs.full, xb + xs.full, tile, 0);
  } else {
    blocks(xb, tile, xb, tile, lenp, false);
  }
  for (int64_t c = 0; c < C; ++c)
    store_row(dx, pr.x_dtype, n * dxsN + c * dxsC + s0 * dxsS, dxsS, xb + c * tile, len);
}

// Image n's dLoss/dStats g as the per-class tables of w.gt (FastWork::gt), built
// once per image and thread; -> the grad kind (kGradPlain / kGradFull).
SEGFAST_INLINE int grad_tables(const Problem& pr, FastWork& w, int64_t n, const float* __restrict g,
                               int64_t* gt_image) {
  const int64_t C = pr.C;
  float* gt = w.gt.data();
  if (*gt_image != n) {
    const int64_t KO = num_stats(pr);
    float sum_lp = 0.0f;
    for (int64_t c = 0; c < C; ++c) {
      const float* gc = g + (n * C + c) * KO;
      gt[c] = gc[kP];
      gt[C + c] = 2.0f * gc[kPP];
      gt[2 * C + c] = gc[kI];
      gt[3 * C + c] = gc[kM];
      gt[4 * C + c] = pr.xent ? gc[kS7] : 0.0f;
      gt[5 * C + c] = pr.xent ? gc[kS8] : 0.0f;
      sum_lp += gt[5 * C + c];
    }
    gt[6 * C] = sum_lp;
    gt[6 * C + 1] = float(pr.gamma);
    *gt_image = n;
  }
  bool has_m = false, has_pp = false;  // the plain kind: dLoss/dPP = dLoss/dM = 0
  for (int64_t c = 0; c < C; ++c) {
    has_m |= gt[3 * C + c] != 0.0f;
    has_pp |= gt[C + c] != 0.0f;
  }
  return has_m || has_pp ? kGradFull : kGradPlain;
}

SEGFAST_V4 __attribute__((flatten)) void fast_grad_f32(const Problem& pr, FastWork& w, int64_t n,
                                                       int64_t s0, const float* __restrict g, void* dx,
                                                       int64_t dxsN, int64_t dxsC, int64_t dxsS,
                                                       int64_t* gt_image) {
  const int64_t len = std::min(w.tile, pr.S - s0);
  const int kind = grad_tables(pr, w, n, g, gt_image);
  fast_labels(pr, w, n, s0, len);
  const XSrc xs = fast_xsrc(pr, w, n, s0, len);
#define SEGFAST_XK(XK)                                                                          \
  (kind == kGradFull ? fast_grad_tile<kGradFull, XK>(pr, w, n, s0, len, xs, dx, dxsN, dxsC, dxsS) \
                     : fast_grad_tile<kGradPlain, XK>(pr, w, n, s0, len, xs, dx, dxsN, dxsC, dxsS))
  switch (pr.xent) {
    case kXentCE: SEGFAST_XK(kXentCE); break;
    case kXentFocal: SEGFAST_XK(kXentFocal); break;
    case kXentFused: SEGFAST_XK(kXentFused); break;
    default: SEGFAST_XK(kXentNone);
  }
#undef SEGFAST_XK
}

// ---- grad from the stats pass's probabilities ----------------------------------------
//
// With p_out, the stats pass (labels, softmax, no pixel term) keeps q = v p, which
// the grad pass would otherwise recompute: the exps are most of the arithmetic of
// both passes. grad_probs then reads q and writes dx over it, without an exp:
// dx_c = q_c (a_c - sum_k q_k a_k), a_c = gP + 2 gPP q_c + [c == lb] gI (+ gM h),
// which is grad_block's dx, as v is 0 or 1 and a padded or ignored pixel has q = 0.

// a_c of kGroup-style blocks (see grad_block).
SEGFAST_INLINE vf probs_a(vf q, vi hit, const float* gt, int64_t C, int64_t c) {
  vf a = q * gt[C + c] + gt[c];
  a = hit ? a + gt[2 * C + c] : a;
  const vf t = hit ? vsplat(1.0f) : vf{};
  return a + gt[3 * C + c] * (q < t ? vsplat(1.0f) : (q == t ? vsplat(0.5f) : vf{}));
}

// G consecutive blocks of q (pitch qp between classes), in place, class by class
// (see kGroup); q is stashed in e on the first pass, so it is read once.
template <int G>
SEGFAST_INLINE void grad_probs_group(float* q, int64_t qp, int64_t C, const int32_t* __restrict lbp,
                                     const float* __restrict gt, float* __restrict e, int64_t pf) {
  vi lb[G];
  vf d[G];  // sum_c q_c a_c
  for (int k = 0; k < G; ++k) {
    lb[k] = viload(lbp + k * VL);
    d[k] = vf{};
  }
  for (int64_t c = 0; c < C; ++c) {
    const float* qc = q + c * qp;
    for (int k = 0; k < G; ++k) {
      if (pf) __builtin_prefetch(qc + k * VL + pf, 1, 2);
      const vf qv = vload(qc + k * VL);
      vstore(e + (c * G + k) * VL, qv);
      d[k] += qv * probs_a(qv, lb[k] == int32_t(c), gt, C, c);
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    float* qc = q + c * qp;
    for (int k = 0; k < G; ++k) {
      const vf qv = vload(e + (c * G + k) * VL);
      vstore(qc + k * VL, qv * (probs_a(qv, lb[k] == int32_t(c), gt, C, c) - d[k]));
    }
  }
}

SEGFAST_INLINE void grad_probs_tile(const Problem& pr, FastWork& w, float* q, int64_t qsC,
                                    int64_t s0, int64_t len) {
  const int64_t C = pr.C;
  const float* gt = w.gt.data();
  float* eb = w.eb.data();
  const int32_t* lb = w.lb.data();
  constexpr int64_t GL = kGroup * VL, pf = 2 * kPrefetch;
  const int64_t full = len / VL * VL;
  int64_t i = 0;
  for (; i + GL <= full; i += GL)
    grad_probs_group<kGroup>(q + i, qsC, C, lb + i, gt, eb, s0 + i + GL + pf <= pr.S ? pf : 0);
  for (; i < full; i += VL) grad_probs_group<1>(q + i, qsC, C, lb + i, gt, eb, 0);
  if (full < len) {  // the partial last block, through w.tail (padding: q = 0, lb = -1)
    float* tl = w.tail.data();
    for (int64_t c = 0; c < C; ++c)
      for (int64_t l = 0; l < VL; ++l) tl[c * VL + l] = full + l < len ? q[c * qsC + full + l] : 0.0f;
    grad_probs_group<1>(tl, VL, C, lb + full, gt, eb, 0);
    for (int64_t c = 0; c < C; ++c)
      for (int64_t l = 0; full + l < len; ++l) q[c * qsC + full + l] = tl[c * VL + l];
  }
}

// One (image n, tile at s0) work item; q = pr.x (float32, pixel stride 1).
SEGFAST_V4 __attribute__((flatten)) void grad_probs_f32(const Problem& pr, FastWork& w, int64_t n,
                                                        int64_t s0, const float* g, int64_t* gt_image) {
  const int64_t len = std::min(w.tile, pr.S - s0);
  grad_tables(pr, w, n, g, gt_image);
  fast_labels(pr, w, n, s0, len);
  float* q = const_cast<float*>(static_cast<const float*>(pr.x)) + n * pr.xsN + s0;
  grad_probs_tile(pr, w, q, pr.xsC, s0, len);
}

// The fast path runs in the AVX-512 build only: its 16-lane generic vectors
// compiled for AVX2 or baseline x86-64 run slower than the general path there.
bool fast_ok(const Problem& pr) {
  return cpu_isa() == Isa::kAvx512 && pr.t_is_label && pr.act == kSoftmax && pr.x_dtype != kFloat64 && pr.C < (int64_t(1) << 30);
}
#endif  // SEGFAST_VEC

// ---- stats: one (image, chunk) work item ---------------------------------------------

// logsumexp over the foreground classes 1..C-1 of each pixel (fused), from x
// reloaded into xr; into h. Stable: its own max.
template <typename T>
SEGFAST_INLINE void lse_fg_tile(const Problem& pr, Workspace<T>& w, int64_t n, int64_t s0,
                                int64_t len, T* __restrict h) {
  const int64_t lenp = pad_len(len);
  T* __restrict xr = w.xr.data();
  T* __restrict mx = w.ab.data();  // [tile] scratch (stats: allocated for this)
  for (int64_t i = 0; i < lenp; ++i) { mx[i] = -INFINITY; h[i] = T(0); }
  for (int64_t pass = 0; pass < 2; ++pass) {
    for (int64_t c = 1; c < pr.C; ++c) {
      load_row(xr, pr.x, pr.x_dtype, n * pr.xsN + c * pr.xsC + s0 * pr.xsS, pr.xsS, len);
      for (int64_t i = len; i < lenp; ++i) xr[i] = T(0);
      for (int64_t i = 0; i < lenp; ++i) {
        if (pass == 0) mx[i] = xr[i] > mx[i] ? xr[i] : mx[i];
        else h[i] += exp_t(xr[i] - mx[i]);
      }
    }
    if (pass == 0)  // torch's logsumexp: all -inf gives -inf, a +inf gives +inf (not NaN)
      for (int64_t i = 0; i < lenp; ++i) mx[i] = std::isinf(mx[i]) ? T(0) : mx[i];
  }
  for (int64_t i = 0; i < lenp; ++i) h[i] = mx[i] + std::log(h[i]);
}

// A pixel term's sums of one tile (labels, softmax; csrc/common/region.h) into
// acc[c * KX + kS7 / kS8]. -log p = (max - x) + log(sum) with x reloaded (w.xb holds p, and
// log p would underflow where p does). After load_probs w.m holds the max and
// w.r 1/sum; w.r becomes log(sum).
template <typename T>
SEGFAST_INLINE void xent_stats(const Problem& pr, Workspace<T>& w, int64_t n, int64_t s0,
                               int64_t len, double* acc) {
  const int64_t lenp = pad_len(len), tile = w.tile;
  // -log p = (m - x) + log(sum) in torch's order (exact for huge logits): w.m
  // keeps the max, w.r becomes log(sum)
  const T* __restrict mx = w.m.data();
  T* __restrict ls = w.r.data();
  for (int64_t i = 0; i < lenp; ++i) ls[i] = -std::log(ls[i]);
  T* __restrict h = w.hb.data();
  if (pr.xent == kXentFused) {  // h = logsumexp - logsumexp_fg
    lse_fg_tile(pr, w, n, s0, len, h);
    for (int64_t i = 0; i < lenp; ++i) h[i] = (mx[i] - h[i]) + ls[i];
  }
  T* __restrict xr = w.xr.data();
  const int32_t* __restrict lb = w.lb.data();
  const T* __restrict v = w.vb.data();
  const Focal<T> focal = make_focal<T>(pr.gamma, -1.0);
  for (int64_t c = 0; c < pr.C; ++c) {
    load_row(xr, pr.x, pr.x_dtype, n * pr.xsN + c * pr.xsC + s0 * pr.xsS, pr.xsS, len);
    for (int64_t i = len; i < lenp; ++i) xr[i] = T(0);
    const T* __restrict p = w.xb.data() + c * tile;
    T s7 = T(0), s8 = T(0);
    const int32_t cc = int32_t(c);
    for (int64_t i = 0; i < lenp; ++i) {
      const T nl = (mx[i] - xr[i]) + ls[i];
      const bool hit = lb[i] == cc;
      if (pr.xent == kXentCE) {
        s7 += hit ? nl : T(0);
        s8 += v[i] != T(0) ? nl : T(0);  // a select: nl is inf for a -inf logit
      } else if (pr.xent == kXentFocal) {
        s7 += hit ? focal_value(p[i], nl, focal) : T(0);
      } else {
        s7 += hit ? nl : T(0);
        s8 += hit && c >= 1 ? h[i] : T(0);
      }
    }
    acc[c * KX + kS7] += s7;
    acc[c * KX + kS8] += s8;
  }
}

// Per pixel of a grad tile (labels, softmax), after load_probs: B = sum_c b_c
// into w.hb and the focal u / fused k into w.xr (csrc/common/region.h); *G8.
template <typename T, typename G>
SEGFAST_INLINE void xent_grad_prep(const Problem& pr, Workspace<T>& w, int64_t n, int64_t s0,
                                   int64_t len, const G* __restrict g, T* G8) {
  const int64_t C = pr.C, tile = w.tile, KO = num_stats(pr);
  T* __restrict B = w.hb.data();
  T* __restrict u = w.xr.data();
  const int32_t* __restrict lb = w.lb.data();
  const G* gn = g + n * C * KO;
  if (pr.xent == kXentCE)
    for (int64_t c = 0; c < C; ++c) *G8 += T(gn[c * KO + kS8]);
  const Focal<T> focal = make_focal<T>(pr.gamma, -1.0);
  for (int64_t i = 0; i < len; ++i) {
    const int32_t y = lb[i];
    B[i] = u[i] = T(0);
    if (y < 0) {  // ignored: v = 0 anyway (0·B: NaN where the fused q is, as the reference)
      if (pr.xent == kXentFused) B[i] = T(0) * w.qs[i];
      continue;
    }
    const T g7 = T(gn[y * KO + kS7]), g8 = T(gn[y * KO + kS8]);
    const T py = w.xb[y * tile + i];
    if (pr.xent == kXentCE) {
      B[i] = g7 + *G8;
    } else if (pr.xent == kXentFocal) {  // -log p_y = max - log(1/sum) - x_y
      const T nl = (w.m[i] - load_x<T>(pr, n, y, s0 + i)) - std::log(w.r[i]);
      u[i] = B[i] = g7 * focal_dlogp(py, nl, focal);
    } else {  // fused: k = [y >= 1] gS8_y; b_c = k q_c with q_c = exp(x_c - lse_fg) (fused_q)
      u[i] = y >= 1 ? g8 : T(0);
      B[i] = g7 + u[i] * w.qs[i];
    }
  }
}

// The confusion counts of one tile (general path): the argmax of x, read again
// row by row (w.xb holds the probabilities, whose ties are not the logits').
template <typename T>
SEGFAST_INLINE void conf_tile(const Problem& pr, Workspace<T>& w, int64_t n, int64_t s0, int64_t len) {
  cpu::argmax_rows(pr.x, pr.x_dtype, n * pr.xsN + s0 * pr.xsS, pr.xsC, pr.xsS, pr.C, len,
                   w.cbest.data(), w.cidx.data(), w.crow.data());
  w.conf.add(w.lb.data(), w.cidx.data(), len);
}

// Fused term: q_c = p_c / (1 - p_0) = exp(x_c - lse_fg) for c >= 1 into w.qb [C][tile]
// and sum_c q_c into w.qs (1, or NaN where every foreground logit is -inf or one is
// NaN: the reference's logsumexp backward, NaN on every class of the pixel). From x,
// not from p: the p_c underflow (to 0 / 0) when class 0 leads by more than exp's range.
template <typename T>
SEGFAST_INLINE void fused_q(const Problem& pr, Workspace<T>& w, int64_t n, int64_t s0, int64_t len) {
  const int64_t tile = w.tile;
  T* __restrict lfg = w.qs.data();
  lse_fg_tile(pr, w, n, s0, len, lfg);  // uses w.xr and w.ab as scratch
  T* __restrict qs = w.hb.data();
  for (int64_t i = 0; i < len; ++i) qs[i] = T(0);
  for (int64_t c = 1; c < pr.C; ++c) {
    T* __restrict q = w.qb.data() + c * tile;
    load_row(q, pr.x, pr.x_dtype, n * pr.xsN + c * pr.xsC + s0 * pr.xsS, pr.xsS, len);
    for (int64_t i = 0; i < len; ++i) {
      q[i] = exp_t(q[i] - lfg[i]);
      qs[i] += q[i];
    }
  }
  for (int64_t i = 0; i < len; ++i) w.qs[i] = qs[i] == qs[i] ? T(1) : qs[i];
}

template <typename T, typename A>
SEGFAST_INLINE void stats_item_impl(const Problem& pr, Workspace<T>& w, int64_t n, int64_t P,
                                    int64_t j, A* __restrict out) {
  const int64_t C = pr.C, tile = w.tile;
  int64_t b, e;
  chunk_range(pr.S, P, j, &b, &e);
  double* __restrict acc = w.acc.data();
  std::fill(w.acc.begin(), w.acc.end(), 0.0);
  for (int64_t s0 = b; s0 < e; s0 += tile) {
    const int64_t len = std::min(tile, e - s0);
    load_probs(pr, w, n, s0, len);
    load_targets(pr, w, n, s0, len);
    if (w.conf) conf_tile(pr, w, n, s0, len);
    for (int64_t c = 0; c < C; ++c) {
      const T* __restrict p = w.xb.data() + c * tile;
      const int64_t lenp = pad_len(len);  // padded pixels have v = 0, t = 0
      T a[K][W] = {};  // lane l of sum k: a[k][l] (accumulate with lane stride W)
      if (pr.t_is_label) {
        const int32_t* __restrict lb = w.lb.data();
        const T* __restrict v = w.vb.data();
        const int32_t cc = int32_t(c);
        for (int64_t i0 = 0; i0 < lenp; i0 += W)
          for (int64_t l = 0; l < W; ++l)  // t = 0 on invalid pixels (lb = -1)
            accumulate(&a[0][l], p[i0 + l], T(lb[i0 + l] == cc), v[i0 + l], W);
      } else {
        const T* __restrict tt = w.tb.data() + c * tile;
        const T* __restrict v = w.vbd.data() + c * tile;
        for (int64_t i0 = 0; i0 < lenp; i0 += W)
          for (int64_t l = 0; l < W; ++l) accumulate(&a[0][l], p[i0 + l], tt[i0 + l], v[i0 + l], W);
      }
      double* ac = acc + c * KX;
      for (int k = 0; k < K; ++k) {
        T sk = T(0);
        for (int64_t l = 0; l < W; ++l) sk += a[k][l];
        ac[k] += sk;
      }
    }
    if (pr.xent) xent_stats(pr, w, n, s0, len, acc);
  }
  const int64_t KO = num_stats(pr);
  A* o = out + (n * P + j) * C * KO;
  for (int64_t c = 0; c < C; ++c)
    for (int64_t k = 0; k < KO; ++k) o[c * KO + k] = A(acc[c * KX + k]);
}

SEGFAST_ISA_ENTRY(stats_item_f32, (stats_item_impl<float, float>),
                  (const Problem& pr, Workspace<float>& w, int64_t n, int64_t P, int64_t j, float* out),
                  (pr, w, n, P, j, out))

void stats_item_f64(const Problem& pr, Workspace<double>& w, int64_t n, int64_t P, int64_t j,
                    double* out) {
  stats_item_impl<double, double>(pr, w, n, P, j, out);
}

// ---- grad: one (image, tile) work item -------------------------------------------------

template <typename T, typename G>
SEGFAST_INLINE void grad_item_impl(const Problem& pr, Workspace<T>& w, int64_t n, int64_t s0,
                                   const G* __restrict g, void* dx, int64_t dxsN, int64_t dxsC,
                                   int64_t dxsS) {
  const int64_t C = pr.C, tile = w.tile;
  const int64_t len = std::min(tile, pr.S - s0);
  load_probs(pr, w, n, s0, len);
  load_targets(pr, w, n, s0, len);
  T* __restrict dot = w.r.data();  // the softmax sums are no longer needed
  const int64_t KO = num_stats(pr);
  T* __restrict B = w.hb.data();   // xent: B = sum_c b_c per pixel
  T* __restrict u = w.xr.data();   // xent: focal u / fused k per pixel
  T G8 = T(0);                     // CE: sum_c gS8_c
  if (pr.xent == kXentFused) fused_q(pr, w, n, s0, len);
  if (pr.xent) xent_grad_prep(pr, w, n, s0, len, g, &G8);  // reads w.r: before dot
  if (pr.act == kSoftmax) {
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) dot[i] = T(0);
  }
  for (int64_t c = 0; c < C; ++c) {
    const G* gc = g + (n * C + c) * KO;
    const T gI = T(gc[kI]), gP = T(gc[kP]), gPP2 = T(2) * T(gc[kPP]), gM = T(gc[kM]);
    const T* __restrict p = w.xb.data() + c * tile;
    T* __restrict a = w.ab.data() + c * tile;
    if (pr.t_is_label) {
      const int32_t* __restrict lb = w.lb.data();
      const T* __restrict v = w.vb.data();
      const int32_t cc = int32_t(c);
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) {
        const T t = lb[i] == cc ? T(1) : T(0);
        const T h = p[i] < t ? T(1) : (p[i] == t ? T(0.5) : T(0));
        a[i] = v[i] * (gI * t + gP + gPP2 * p[i] + gM * h);
      }
    } else {
      const T* __restrict tt = w.tb.data() + c * tile;
      const T* __restrict v = w.vbd.data() + c * tile;
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) {
        const T t = tt[i];
        const T h = p[i] < t ? T(1) : (p[i] == t ? T(0.5) : T(0));
        a[i] = v[i] * (gI * t + gP + gPP2 * p[i] + gM * h);
      }
    }
    if (pr.act == kSoftmax) {
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) dot[i] += p[i] * a[i];
    } else if (pr.act == kSigmoid) {
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) a[i] = a[i] * p[i] * (T(1) - p[i]);
    }
    if (pr.act != kSoftmax)
      store_row(dx, pr.x_dtype, n * dxsN + c * dxsC + s0 * dxsS, dxsS, a, len);
  }
  if (pr.act == kSoftmax) {
    for (int64_t c = 0; c < C; ++c) {
      const T* __restrict p = w.xb.data() + c * tile;
      T* __restrict a = w.ab.data() + c * tile;
      if (pr.xent) {  // + v (p_c B - b_c), csrc/common/region.h
        const G* gc = g + (n * C + c) * KO;
        const T g7 = T(gc[kS7]), g8 = T(gc[kS8]);
        const int32_t* __restrict lb = w.lb.data();
        const T* __restrict v = w.vb.data();
        const int32_t cc = int32_t(c);
        for (int64_t i = 0; i < len; ++i) {
          const bool hit = lb[i] == cc;
          T b;
          if (pr.xent == kXentCE) b = g8 + (hit ? g7 : T(0));
          else if (pr.xent == kXentFocal) b = hit ? u[i] : T(0);
          else b = (hit ? g7 : T(0)) + (c >= 1 ? u[i] * w.qb[c * tile + i] : T(0));
          a[i] = p[i] * (a[i] - dot[i] + v[i] * B[i]) - v[i] * b;
        }
      } else {
#pragma omp simd
        for (int64_t i = 0; i < len; ++i) a[i] = p[i] * (a[i] - dot[i]);
      }
      store_row(dx, pr.x_dtype, n * dxsN + c * dxsC + s0 * dxsS, dxsS, a, len);
    }
  }
}

SEGFAST_ISA_ENTRY(grad_item_f32, (grad_item_impl<float, float>),
                  (const Problem& pr, Workspace<float>& w, int64_t n, int64_t s0, const float* g,
                   void* dx, int64_t dxsN, int64_t dxsC, int64_t dxsS),
                  (pr, w, n, s0, g, dx, dxsN, dxsC, dxsS))

void grad_item_f64(const Problem& pr, Workspace<double>& w, int64_t n, int64_t s0,
                   const double* g, void* dx, int64_t dxsN, int64_t dxsC, int64_t dxsS) {
  grad_item_impl<double, double>(pr, w, n, s0, g, dx, dxsN, dxsC, dxsS);
}

template <typename T, typename A, typename F>
void run_stats(const Problem& pr, int64_t P, A* out, int nt, F item, int64_t* conf) {
  const int64_t items = pr.N * P;
  const int64_t tile = tile_for(pr.C);
  nt = int(std::max<int64_t>(1, std::min<int64_t>(nt, items)));
#pragma omp parallel num_threads(nt)
  {
    Workspace<T> w(pr.C, tile, !pr.t_is_label, false, conf);
#pragma omp for schedule(static)
    for (int64_t it = 0; it < items; ++it) item(pr, w, it / P, P, it % P, out);
    if (w.conf) w.conf.flush();
  }
}

template <typename T, typename G, typename F>
void run_grad(const Problem& pr, const G* g, void* dx, int64_t dxsN, int64_t dxsC, int64_t dxsS,
              int nt, F item) {
  const int64_t tile = tile_for(pr.C);
  const int64_t tiles = (pr.S + tile - 1) / tile;
  const int64_t items = pr.N * tiles;
  nt = int(std::max<int64_t>(1, std::min<int64_t>(nt, items)));
#pragma omp parallel num_threads(nt)
  {
    Workspace<T> w(pr.C, tile, !pr.t_is_label, true);
#pragma omp for schedule(static)
    for (int64_t it = 0; it < items; ++it)
      item(pr, w, it / tiles, (it % tiles) * tile, g, dx, dxsN, dxsC, dxsS);
  }
}

}  // namespace

// Entry points (declared in csrc/bind/region.cpp).
void region_stats_cpu(const Problem& pr, int64_t P, void* out, int64_t num_threads, float* p_out,
                      int64_t p_sN, int64_t p_sC, int64_t* conf) {
  if (pr.N <= 0 || P <= 0 || pr.C <= 0) return;
  const int nt = resolve_threads(num_threads);
  if (pr.x_dtype == kFloat64) {
    run_stats<double>(pr, P, static_cast<double*>(out), nt, stats_item_f64, conf);
    return;
  }
#if defined(SEGFAST_VEC)
  if (fast_ok(pr)) {
    const int64_t items = pr.N * P, tile = tile_for(pr.C);
    const int ntt = int(std::max<int64_t>(1, std::min<int64_t>(nt, items)));
    float* o = static_cast<float*>(out);
    const auto item = fast_stats_f32;
#pragma omp parallel num_threads(ntt)
    {
      FastWork w(pr.C, tile, false, conf);
      w.p_out = p_out;
      w.p_sN = p_sN;
      w.p_sC = p_sC;
#pragma omp for schedule(static)
      for (int64_t it = 0; it < items; ++it) item(pr, w, it / P, P, it % P, o);
      if (w.conf) w.conf.flush();
    }
    return;
  }
#endif
  {
    run_stats<float>(pr, P, static_cast<float*>(out), nt, SEGFAST_ISA_PICK(stats_item_f32), conf);
  }
}

void region_grad_cpu(const Problem& pr, const void* g, void* dx, int64_t dxsN, int64_t dxsC,
                     int64_t dxsS, int64_t num_threads) {
  if (pr.N <= 0 || pr.C <= 0 || pr.S <= 0) return;
  const int nt = resolve_threads(num_threads);
  if (pr.x_dtype == kFloat64) {
    run_grad<double>(pr, static_cast<const double*>(g), dx, dxsN, dxsC, dxsS, nt, grad_item_f64);
    return;
  }
#if defined(SEGFAST_VEC)
  if (fast_ok(pr)) {
    const int64_t tile = tile_for(pr.C);
    const int64_t tiles = (pr.S + tile - 1) / tile, items = pr.N * tiles;
    const int ntt = int(std::max<int64_t>(1, std::min<int64_t>(nt, items)));
    const float* gf = static_cast<const float*>(g);
    const auto item = fast_grad_f32;
#pragma omp parallel num_threads(ntt)
    {
      FastWork w(pr.C, tile, true);
      int64_t gt_image = -1;
#pragma omp for schedule(static)
      for (int64_t it = 0; it < items; ++it)
        item(pr, w, it / tiles, (it % tiles) * tile, gf, dx, dxsN, dxsC, dxsS, &gt_image);
    }
    return;
  }
#endif
  {
    run_grad<float>(pr, static_cast<const float*>(g), dx, dxsN, dxsC, dxsS, nt,
                    SEGFAST_ISA_PICK(grad_item_f32));
  }
}

bool grad_probs_built() {
#if defined(SEGFAST_VEC)
  return true;
#else
  return false;
#endif
}

bool grad_probs_ok(const Problem& pr) {
#if defined(SEGFAST_VEC)
  return fast_ok(pr);
#else
  return false;
#endif
}

// What region_stats_cpu keeps for the grad pass, as bits: 2, v*p in the
// buffer that becomes dLoss/dx (its p_out, then region_grad_probs_cpu:
// float32 x with unit pixel stride, so that q and the gradient share dtype
// and layout), on the fast path without a pixel term; else 0, nothing (the
// grad pass takes its own softmax: keeping each pixel's max and 1/sum would
// save a max pass that costs as much as reading them back). The caller
// allocates what this answers: these conditions are written here only.
int64_t region_keeps(int64_t x_dtype, bool t_is_label, int64_t act, int64_t xent, int64_t C,
                     int64_t xsS) {
#if defined(SEGFAST_VEC)
  Problem pr{};
  pr.x_dtype = int(x_dtype);
  pr.t_is_label = t_is_label;
  pr.act = int(act);
  pr.C = C;
  if (xent != kXentNone || !fast_ok(pr)) return 0;
  return x_dtype == kFloat32 && xsS == 1 ? 2 : 0;
#else
  return 0;
#endif
}

void region_grad_probs_cpu(const Problem& pr, const float* g, int64_t num_threads) {
  if (pr.N <= 0 || pr.C <= 0 || pr.S <= 0) return;
#if defined(SEGFAST_VEC)
  const int64_t tile = tile_for(pr.C);
  const int64_t tiles = (pr.S + tile - 1) / tile, items = pr.N * tiles;
  const int nt = int(std::max<int64_t>(1, std::min<int64_t>(resolve_threads(num_threads), items)));
  const auto item = grad_probs_f32;
#pragma omp parallel num_threads(nt)
  {
    FastWork w(pr.C, tile, true);
    int64_t gt_image = -1;
#pragma omp for schedule(static)
    for (int64_t it = 0; it < items; ++it) item(pr, w, it / tiles, (it % tiles) * tile, g, &gt_image);
  }
#endif
}

int openmp_max_threads() { return omp_get_max_threads(); }

// The instruction set whose build the region kernels run (see "instruction sets").
const char* region_isa() { return kIsaNames[int(cpu_isa())]; }

}  // namespace region
}  // namespace segfast
