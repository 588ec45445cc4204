// Dense CRF, CPU kernels (C++ / OpenMP): per image, one permutohedral lattice
// per pairwise kernel, built once and reused by every iteration and label (the
// spatial kernel's depends only on the image size: once per call); then mean
// field. See csrc/common/crf.h for the lattice math and
// segfast/reference/crf.py for the semantics (pydensecrf's DenseCRF2D).
//
// Layout: label values are pixel-major rows of Cp (C rounded up to 8,
// padding lanes kept at 0) and lattice values [M+1][G] (G = C rounded up to
// 2, 4 or 8k: grid_width; row M is the "missing neighbour", always 0), so
// every inner loop runs over labels with unit stride and vectorises. An image's pixels are split in static bands,
// one per thread: each band fills a hash table of its own while the lattice
// is built (merged in band order), and scatters (splats) its pixels' new
// marginals into grid parts of its own right after computing them; the parts
// are summed point by point before the blur. Results are deterministic for a
// given thread count; other counts change only the order of those sums.
// Keys are int32.
#include <omp.h>

#include <algorithm>
#include <exception>
#include <memory>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <vector>

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"  // v8f values never cross a non-inlined call
#endif

#include "../common/crf.h"
#include "../common/region.h"  // expf_reduced
#include "common.h"

namespace segfast {
namespace crf {
namespace {

constexpr int64_t kChunk = 256;  // items per OpenMP work unit
constexpr int64_t kImageSplitPixels = 65536;  // from this size an image is split across threads
constexpr int64_t kLanes = 8;    // Cp is a multiple of 8: label loops run in whole 8-wide blocks

// Label loops run in blocks of exactly 8 lanes when Cp allows (a loop over a
// runtime Cp such as 24 would run its AVX-512 body once and the rest in a scalar
// epilogue); Cp = 1 (the normalisation filter) takes the plain loop.
// 8 float lanes (GCC/Clang vector extension; 2 SSE or 1 AVX register), unaligned access.
typedef float v8f __attribute__((vector_size(32), aligned(4)));
SEGFAST_INLINE v8f load8(const float* p) {
  v8f v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
SEGFAST_INLINE void store8(float* p, v8f v) { std::memcpy(p, &v, sizeof(v)); }

SEGFAST_INLINE void axpy_lanes(float* __restrict y, const float* __restrict x, float a, int64_t Cp) {
  if (Cp == 2) {  // the grid rows of two labels (see grid_width)
    y[0] += a * x[0];
    y[1] += a * x[1];
    return;
  }
  if (Cp % kLanes) {
    for (int64_t c = 0; c < Cp; ++c) y[c] += a * x[c];
    return;
  }
  for (int64_t c0 = 0; c0 < Cp; c0 += kLanes) store8(y + c0, load8(y + c0) + a * load8(x + c0));
}

SEGFAST_INLINE void blur_lanes(float* __restrict t, const float* __restrict o, const float* __restrict a,
                               const float* __restrict b, int64_t Cp) {
  if (Cp == 2) {
    t[0] = o[0] + 0.5f * (a[0] + b[0]);
    t[1] = o[1] + 0.5f * (a[1] + b[1]);
    return;
  }
  if (Cp % kLanes) {
    for (int64_t c = 0; c < Cp; ++c) t[c] = o[c] + 0.5f * (a[c] + b[c]);
    return;
  }
  for (int64_t c0 = 0; c0 < Cp; c0 += kLanes)
    store8(t + c0, load8(o + c0) + 0.5f * (load8(a + c0) + load8(b + c0)));
}

typedef int32_t v8i __attribute__((vector_size(32), aligned(4)));

// Lattice values (grids) hold G floats per point, G = grid_width(C): the
// labels rounded up to 2, 4 or a multiple of 8, not always to 8 as the pixel
// rows are. On a noisy image nearly every pixel adds lattice points of its
// own (M is several times N), and the blur, the sums of the threads' parts
// and the scatter/slice then move M x G floats per pass: padding 2 labels to
// 8 lanes moved four times the bytes (and held four times the memory).
int64_t grid_width(int64_t C) { return C <= 1 ? 1 : C <= 2 ? 2 : C <= 4 ? 4 : (C + 7) / 8 * 8; }

// 8 lanes of a grid row of width G (G < 8: the rest 0); G >= 8: lanes [0, 8).
SEGFAST_INLINE v8f load_grid8(const float* p, int64_t G) {
  if (G >= kLanes) return load8(p);
  v8f v = {};
  if (G == 4) std::memcpy(&v, p, 4 * sizeof(float));
  else if (G == 2) std::memcpy(&v, p, 2 * sizeof(float));
  else v[0] = p[0];
  return v;
}

// region::fast_expf lane by lane (x <= 88): the same reduction and polynomial,
// written on vectors so that it vectorises wherever it is inlined.
SEGFAST_INLINE v8f exp8(v8f x) {
  const v8f lo = v8f{} - 87.0f;
  x = x < lo ? lo : x;
  const float magic = 12582912.0f;  // 1.5 * 2^23: round to nearest even
  const v8f t = x * 1.44269504088896341f + magic;
  const v8i n = (v8i)t - 0x4B400000;
  const v8f fn = t - magic;
  v8f r = x - fn * 0.693359375f;
  r = r - fn * -2.12194440e-4f;
  return region::expf_reduced(r) * (v8f)((n + 127) << 23);
}

// Lane sum / max of 8 as a tree: a lane-by-lane loop is 7 dependent
// operations, twice per pixel and iteration.
typedef float v4f __attribute__((vector_size(16), aligned(4)));
SEGFAST_INLINE void halves(v8f v, v4f& a, v4f& b) {
  std::memcpy(&a, &v, sizeof(a));
  std::memcpy(&b, reinterpret_cast<const char*>(&v) + sizeof(a), sizeof(b));
}
SEGFAST_INLINE float hsum8(v8f v) {
  v4f a, b;
  halves(v, a, b);
  a += b;
  return (a[0] + a[2]) + (a[1] + a[3]);
}
SEGFAST_INLINE float hmax8(v8f v) {
  v4f a, b;
  halves(v, a, b);
  a = a < b ? b : a;
  return std::max(std::max(a[0], a[2]), std::max(a[1], a[3]));
}

// q = softmax of m over its first C lanes, 0 in the padding (Cp % 8 == 0); m
// is overwritten with the exps (q may be m).
SEGFAST_INLINE void softmax_lanes(float* m, float* q, int64_t C, int64_t Cp) {
  const v8i lane = {0, 1, 2, 3, 4, 5, 6, 7};
  const v8f ninf = v8f{} - INFINITY;
  v8f mx = ninf;
  for (int64_t c0 = 0; c0 < Cp; c0 += kLanes) {
    const v8f x = (lane + int32_t(c0)) < int32_t(C) ? load8(m + c0) : ninf;
    mx = mx < x ? x : mx;
  }
  const float mxs = hmax8(mx);
  v8f s = {};
  for (int64_t c0 = 0; c0 < Cp; c0 += kLanes) {
    const v8f e = (lane + int32_t(c0)) < int32_t(C) ? exp8(load8(m + c0) - mxs) : v8f{};
    store8(m + c0, e);
    s += e;
  }
  const float inv = 1.f / hsum8(s);
  for (int64_t c0 = 0; c0 < Cp; c0 += kLanes) store8(q + c0, load8(m + c0) * inv);
}

template <typename F>
void parallel_chunks(int64_t n, int nt, F&& fn) {
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  if (nt <= 1 || chunks <= 1) {  // same chunks, one thread: fn may rely on ranges <= kChunk
    for (int64_t c = 0; c < chunks; ++c) fn(c * kChunk, std::min(n, (c + 1) * kChunk));
    return;
  }
#pragma omp parallel for schedule(dynamic, 4) num_threads(nt)
  for (int64_t c = 0; c < chunks; ++c) fn(c * kChunk, std::min(n, (c + 1) * kChunk));
}

// Open addressing, linear probing; keys stored once per point. A slot holds
// the point's index and the low 32 bits of its key's hash, so a probe reads a
// key (a second random access, into [M][d]) only when those agree, and the
// table grows without reading keys. On a noisy image the table outgrows the
// caches, and the lookups of absent blur neighbours and the slots passed
// over on the way each cost a memory access fewer.
struct HashTable {
  static constexpr uint64_t kEmpty = ~uint64_t(0);
  int d;
  std::vector<int32_t> keys;   // [M][d]
  std::vector<uint64_t> slot;  // low 32 bits of the hash << 32 | point index, or kEmpty
  uint64_t mask = 0;
  int32_t size = 0;

  HashTable(int d_, int64_t expect) : d(d_) {
    uint64_t cap = 1024;
    while (cap < uint64_t(2 * expect)) cap <<= 1;
    slot.assign(cap, kEmpty);
    mask = cap - 1;
    keys.reserve(size_t(expect) * d_);
  }
  static uint64_t tag(uint64_t h) { return h << 32; }  // of a hash; a slot's is s & ~0xffffffff
  bool same(int32_t p, const int32_t* k) const {
    const int32_t* q = &keys[size_t(p) * d];
    for (int i = 0; i < d; ++i)
      if (q[i] != k[i]) return false;
    return true;
  }
  int32_t find(const int32_t* k) const {
    const uint64_t hv = hash_key(k, d);
    for (uint64_t h = hv & mask;; h = (h + 1) & mask) {
      const uint64_t s = slot[h];
      if (s == kEmpty) return -1;
      if ((s & ~uint64_t(0xffffffffu)) == tag(hv) && same(int32_t(uint32_t(s)), k)) return int32_t(uint32_t(s));
    }
  }
  int32_t insert(const int32_t* k) {
    if (uint64_t(2) * uint64_t(size + 1) > mask + 1) grow();
    const uint64_t hv = hash_key(k, d);
    for (uint64_t h = hv & mask;; h = (h + 1) & mask) {
      const uint64_t s = slot[h];
      if (s == kEmpty) {
        if (size == INT32_MAX) throw std::length_error("segfast: CRF lattice has more than 2^31 points");
        keys.insert(keys.end(), k, k + d);
        slot[h] = tag(hv) | uint32_t(size);
        return size++;
      }
      if ((s & ~uint64_t(0xffffffffu)) == tag(hv) && same(int32_t(uint32_t(s)), k)) return int32_t(uint32_t(s));
    }
  }
  // the slot where a probe for hash hv starts, and (when it holds a point with the
  // same tag) that point's key: what find will read first
  void prefetch(uint64_t hv) const { __builtin_prefetch(&slot[hv & mask]); }
  void prefetch_key(uint64_t hv) const {
    const uint64_t s = slot[hv & mask];
    if (s != kEmpty && (s & ~uint64_t(0xffffffffu)) == tag(hv)) __builtin_prefetch(&keys[size_t(uint32_t(s)) * d]);
  }
  void grow() {
    std::vector<uint64_t> old(2 * (mask + 1), kEmpty);
    slot.swap(old);
    mask = slot.size() - 1;
    for (uint64_t s : old) {
      if (s == kEmpty) continue;
      for (uint64_t h = (s >> 32) & mask;; h = (h + 1) & mask)
        if (slot[h] == kEmpty) {
          slot[h] = s;
          break;
        }
    }
  }
};

// Scratch that is allocated afresh on each call (tens of MB per image) takes
// huge pages: see cpu::HugePageAllocator.
using fvec = cpu::huge_vector<float>;
using ivec = cpu::huge_vector<int32_t>;

struct Lattice {
  int d = 0;
  int64_t N = 0;
  int32_t M = 0;
  ivec offset;  // [N][d+1] point of each simplex vertex
  fvec weight;  // [N][d+1] barycentric weights
  ivec blur;    // [d+1][M][2] neighbours along each direction (M: none)
};

// Runs fn(t) for t < n on n threads (one each); an exception in any is rethrown here.
template <typename F>
void per_band(int n, F&& fn) {
  if (n == 1) {
    fn(0);
    return;
  }
  std::vector<std::exception_ptr> err(n);
#pragma omp parallel for schedule(static, 1) num_threads(n)
  for (int t = 0; t < n; ++t) {
    try {
      fn(t);
    } catch (...) {
      err[t] = std::current_exception();
    }
  }
  for (auto& e : err)
    if (e) std::rethrow_exception(e);
}

// A pixel's d+1 vertex keys are fixed by its simplex: the remainder-0 point and
// the ranks of its first d coordinates. Pixels of a smooth region keep falling
// into the few simplices seen just before, so a small direct-mapped cache of
// simplex -> vertex ids answers most pixels with one probe instead of d+1
// (at d = 5, 73% of vertices differ from the previous pixel's).
struct SimplexCache {
  static constexpr int kBits = 12;
  struct Entry {
    uint64_t rank = ~uint64_t(0);  // 4 bits per coordinate; ~0: empty
    int32_t rem0[kMaxD];
    int32_t id[kMaxD + 1];
  };
  std::vector<Entry> e = std::vector<Entry>(size_t(1) << kBits);
};

// Step 1 of build_lattice for pixels [i0, i1): locate each one and insert its
// vertices into the band's table h (local ids into offset, weights into weight).
template <int DD>
void insert_band(const float* feat, int d_rt, const float* scale, int64_t i0, int64_t i1, HashTable& h,
                 int32_t* offset, float* weight) {
  const int d = DD > 0 ? DD : d_rt;
  const int D1 = d + 1;
  SimplexCache cache;
  Simplex s;
  int32_t key[kMaxD];
  for (int64_t i = i0; i < i1; ++i) {
    locate_t<DD>(feat + i * d, d, scale, s);
    uint64_t rk = 0, hv = 0;
    for (int q = 0; q < d; ++q) {
      rk |= uint64_t(s.rank[q]) << (4 * q);
      hv = (hv + uint64_t(uint32_t(s.rem0[q]))) * 0x9e3779b97f4a7c15ull;
    }
    hv ^= rk * 0xc2b2ae3d27d4eb4full;
    SimplexCache::Entry& e = cache.e[hv >> (64 - SimplexCache::kBits)];
    bool hit = e.rank == rk;
    for (int q = 0; q < d; ++q) hit &= e.rem0[q] == s.rem0[q];
    if (!hit) {
      e.rank = rk;
      for (int q = 0; q < d; ++q) e.rem0[q] = s.rem0[q];
      for (int r = 0; r < D1; ++r) {
        vertex_key(s, d, r, key);
        e.id[r] = h.insert(key);
      }
    }
    for (int r = 0; r < D1; ++r) {
      offset[i * D1 + r] = e.id[r];
      weight[i * D1 + r] = s.bary[r];
    }
  }
}

// Bands of pixels, one per thread, each with a hash table of its own: no
// per-entry key array (a pixel's keys go straight into its band's table).
// Point numbering (band order, then first appearance) depends on the band
// count; no result does.
void build_lattice(Lattice& L, const float* feat, int64_t N, int d, int nt) {
  L.d = d;
  L.N = N;
  const int D1 = d + 1;
  const int64_t E = N * D1;
  if (E >= INT32_MAX) throw std::length_error("segfast: CRF image too large (pixels x (d+1) >= 2^31)");
  float scale[kMaxD];
  lattice_scale(d, scale);
  L.offset.resize(E);
  L.weight.resize(E);
  const int bands = int(std::max<int64_t>(1, std::min<int64_t>(nt, N / 4096)));
  auto lo = [&](int t) { return N * t / bands; };
  // 1. locate each pixel and insert its vertices into its band's table (local ids)
  std::vector<std::unique_ptr<HashTable>> local(bands);
  per_band(bands, [&](int t) {
    local[t].reset(new HashTable(d, std::max<int64_t>(N / bands / 2, 16)));
    auto* run = d == 2 ? insert_band<2> : d == 5 ? insert_band<5> : insert_band<0>;
    run(feat, d, scale, lo(t), lo(t + 1), *local[t], L.offset.data(), L.weight.data());
  });
  // 2. one table: the bands' points in band order (band 0's table is kept as is)
  std::vector<std::vector<int32_t>> remap(bands);
  std::unique_ptr<HashTable> table = std::move(local[0]);
  for (int t = 1; t < bands; ++t) {
    HashTable& h = *local[t];
    remap[t].resize(h.size);
    for (int32_t p = 0; p < h.size; ++p) remap[t][p] = table->insert(&h.keys[size_t(p) * d]);
    local[t].reset();
  }
  const int32_t M = table->size;
  L.M = M;
  // 3. global ids
  if (bands > 1)
    per_band(bands, [&](int t) {
      if (t == 0) return;
      const int32_t* map = remap[t].data();
      for (int64_t k = lo(t) * D1; k < lo(t + 1) * D1; ++k) L.offset[k] = map[L.offset[k]];
    });
  // 4. blur neighbours. Along direction j the point after key k is n2(k) and the
  // one before it n1(k), with n1(n2(k)) = k: one lookup per point and direction
  // finds both links (q = n2(p) gives q's n1 = p; a point has at most one
  // predecessor, so no two threads write the same entry). On a noisy image the
  // table and the keys are far larger than the caches and each lookup's slot is
  // a cache miss that the core cannot overlap (probe, compare, then the next):
  // the d+1 slots of the point kAhead ahead are prefetched, and kAhead / 2 ahead
  // (the slots then cached) the keys of the points they name.
  L.blur.assign(size_t(D1) * M * 2, M);  // M: no neighbour
  const HashTable& tb = *table;
  constexpr int64_t kAhead = 8;
  auto next_key = [d](const int32_t* key, int j, int32_t* n2) {
    for (int k = 0; k < d; ++k) n2[k] = key[k] + 1;
    if (j < d) n2[j] = key[j] - d;
  };
  int32_t* blur = L.blur.data();
  parallel_chunks(M, nt, [&](int64_t p0, int64_t p1) {
    int32_t n2[kMaxD];
    for (int64_t p = p0; p < p1; ++p) {
      if (p + kAhead < p1) {
        const int32_t* ka = &tb.keys[size_t(p + kAhead) * d];
        for (int j = 0; j < D1; ++j) {
          next_key(ka, j, n2);
          tb.prefetch(hash_key(n2, d));
        }
      }
      if (p + kAhead / 2 < p1) {
        const int32_t* kb = &tb.keys[size_t(p + kAhead / 2) * d];
        for (int j = 0; j < D1; ++j) {
          next_key(kb, j, n2);
          tb.prefetch_key(hash_key(n2, d));
        }
      }
      const int32_t* key = &tb.keys[size_t(p) * d];
      for (int j = 0; j < D1; ++j) {
        next_key(key, j, n2);
        const int32_t q = tb.find(n2);
        if (q < 0) continue;
        blur[(size_t(j) * M + p) * 2 + 1] = q;
        blur[(size_t(j) * M + q) * 2 + 0] = int32_t(p);
      }
    }
  });
}

// ---- the filter steps (vectorised over Cp labels) -----------------------------------

// Splat is a scatter in pixel order: each thread adds its band of pixels into
// a grid of its own (no atomics, no per-point entry lists), and the grids are
// summed point by point before the blur. A pixel is scattered right after its
// marginals are computed, so Q is never re-read (nor, by default, stored).

// grid rows off[r] += (weight[r] * s) * q for the d+1 vertices of one pixel (G lanes)
SEGFAST_INLINE void scatter_pixel(const int32_t* __restrict off, const float* __restrict w, int D1, float s,
                                  const float* __restrict q, float* __restrict grid, int64_t G) {
  for (int r = 0; r < D1; ++r) axpy_lanes(grid + int64_t(off[r]) * G, q, w[r] * s, G);
}

// scatter_pixel for pixels [i0, i1) (rows of q, Cp apart) with weight factors pre
// into a grid of width G; D = d at compile time (0: read from L), so the vertex loop unrolls.
template <int D>
SEGFAST_CLONES void scatter_rows_d(const Lattice& L, const float* __restrict pre, const float* __restrict q,
                                   float* __restrict grid, int64_t Cp, int64_t G, int64_t i0, int64_t i1) {
  const int D1 = (D > 0 ? D : L.d) + 1;
  for (int64_t i = i0; i < i1; ++i)
    scatter_pixel(&L.offset[i * D1], &L.weight[i * D1], D1, pre[i], q + (i - i0) * Cp, grid, G);
}

void scatter_rows(const Lattice& L, const float* pre, const float* q, float* grid, int64_t Cp, int64_t G,
                  int64_t i0, int64_t i1) {
  if (L.d == 2) scatter_rows_d<2>(L, pre, q, grid, Cp, G, i0, i1);
  else if (L.d == 5) scatter_rows_d<5>(L, pre, q, grid, Cp, G, i0, i1);
  else scatter_rows_d<0>(L, pre, q, grid, Cp, G, i0, i1);
}

SEGFAST_CLONES void blur_range(const int32_t* __restrict nb, const float* __restrict src, float* __restrict dst,
                               int64_t G, int64_t p0, int64_t p1) {
  for (int64_t p = p0; p < p1; ++p) {
    const float* __restrict a = src + int64_t(nb[2 * p]) * G;
    const float* __restrict b = src + int64_t(nb[2 * p + 1]) * G;
    const float* __restrict o = src + p * G;
    float* __restrict t = dst + p * G;
    blur_lanes(t, o, a, b, G);
  }
}

// grid[p] = sum over threads t of part[t][p] (then part[t][p] = 0, ready for
// the next scatter), p < M, rows of G.
SEGFAST_CLONES void gather_parts(float* const* part, int nparts, float* __restrict grid, int64_t G, int64_t p0,
                                 int64_t p1) {
  float* __restrict a = part[0];
  for (int64_t k = p0 * G; k < p1 * G; ++k) {
    grid[k] = a[k];
    a[k] = 0.f;
  }
  for (int t = 1; t < nparts; ++t) {
    float* __restrict b = part[t];
    for (int64_t k = p0 * G; k < p1 * G; ++k) {
      grid[k] += b[k];
      b[k] = 0.f;
    }
  }
}

// grid = B(sum of the threads' scattered parts); grid, tmp: [M+1][G], row M stays 0.
void sum_blur(const Lattice& L, std::vector<fvec>& parts, int64_t G, fvec& grid, fvec& tmp, int nt) {
  const int64_t M = L.M;
  grid.resize(size_t(M + 1) * G);
  tmp.resize(size_t(M + 1) * G);
  std::fill(grid.begin() + M * G, grid.end(), 0.f);  // the missing neighbour
  std::fill(tmp.begin() + M * G, tmp.end(), 0.f);
  std::vector<float*> part;
  for (auto& p : parts) part.push_back(p.data());
  parallel_chunks(M, nt, [&](int64_t a, int64_t b) { gather_parts(part.data(), int(part.size()), grid.data(), G, a, b); });
  for (int j = 0; j <= L.d; ++j) {
    const int32_t* nb = L.blur.data() + size_t(j) * M * 2;
    parallel_chunks(M, nt, [&](int64_t a, int64_t b) { blur_range(nb, grid.data(), tmp.data(), G, a, b); });
    grid.swap(tmp);
  }
}

// Per-thread scratch of at least n floats, kept between calls (a chunk's worth).
float* thread_scratch(size_t n) {
  static thread_local std::vector<float> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

#if defined(__has_builtin)
#if __has_builtin(__builtin_shufflevector)
#define SEGFAST_SHUFFLE 1
#endif
#endif

// dst row j (at dst + j * ds) = column j of the 8 x 8 block whose row k is at
// src + k * ss; rows k >= rows read as 0.
SEGFAST_INLINE void transpose8(const float* src, int64_t ss, float* dst, int64_t ds, int rows = 8) {
#if defined(SEGFAST_SHUFFLE)
  v8f r[8], t[8], u[8];
  for (int k = 0; k < 8; ++k) r[k] = k < rows ? load8(src + k * ss) : v8f{};
  for (int k = 0; k < 8; k += 2) {  // pairs of rows interleaved
    t[k] = __builtin_shufflevector(r[k], r[k + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[k + 1] = __builtin_shufflevector(r[k], r[k + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int k = 0; k < 8; k += 4)
    for (int h = 0; h < 2; ++h) {  // quads: columns h, h + 4 / h + 2, h + 6 of rows k..k+3
      u[k + 2 * h] = __builtin_shufflevector(t[k + h], t[k + h + 2], 0, 1, 8, 9, 4, 5, 12, 13);
      u[k + 2 * h + 1] = __builtin_shufflevector(t[k + h], t[k + h + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    }
  for (int j = 0; j < 4; ++j) {  // u[j]: columns (j, j + 4) of rows 0..3, u[4 + j]: of rows 4..7
    store8(dst + j * ds, __builtin_shufflevector(u[j], u[4 + j], 0, 1, 2, 3, 8, 9, 10, 11));
    store8(dst + (j + 4) * ds, __builtin_shufflevector(u[j], u[4 + j], 4, 5, 6, 7, 12, 13, 14, 15));
  }
#else
  for (int j = 0; j < 8; ++j)
    for (int k = 0; k < 8; ++k) dst[j * ds + k] = k < rows ? src[k * ss + j] : 0.f;
#endif
}

// [len][Cp] tile of U for pixels [i0, i0 + len) of image b, padding lanes 0; row: scratch [len].
// Float32 with unit pixel stride (the usual case) goes through 8 x 8 block transposes.
SEGFAST_CLONES void load_u_tile(const void* U, int u_dtype, int64_t usB, int64_t usC, int64_t usS, int64_t b, int64_t C,
                 int64_t Cp, int64_t i0, int64_t len, float* __restrict tile, float* __restrict row) {
  int64_t done = 0;
  if (u_dtype == kFloat32 && usS == 1) {
    const float* base = static_cast<const float*>(U) + b * usB + i0;
    done = len / 8 * 8;
    for (int64_t i = 0; i < done; i += 8)
      for (int64_t c0 = 0; c0 < Cp; c0 += 8)  // the last block of labels: rows past C read as 0
        transpose8(base + c0 * usC + i, usC, tile + i * Cp + c0, Cp, int(std::min<int64_t>(8, C - c0)));
  }
  if (done == len) return;
  for (int64_t i = done; i < len; ++i)
    for (int64_t c = C; c < Cp; ++c) tile[i * Cp + c] = 0.f;
  for (int64_t c = 0; c < C; ++c) {
    cpu::load_row(row, U, u_dtype, b * usB + c * usC + (i0 + done) * usS, usS, len - done);
    for (int64_t i = done; i < len; ++i) tile[i * Cp + c] = row[i - done];
  }
}

// out[c * N + i0 + i] = tile[i * Cp + c]: a chunk of marginals into the [C][N] output
SEGFAST_CLONES void store_q_tile(const float* __restrict tile, int64_t C, int64_t Cp, int64_t N, int64_t i0, int64_t len,
                  float* __restrict out) {
  const int64_t done = len / 8 * 8;
  float blk[64];
  for (int64_t i = 0; i < done; i += 8)
    for (int64_t c0 = 0; c0 < C; c0 += 8) {
      if (c0 + 8 <= C) {
        transpose8(tile + i * Cp + c0, Cp, out + c0 * N + i0 + i, N);
      } else {
        transpose8(tile + i * Cp + c0, Cp, blk, 8);
        for (int64_t k = 0; c0 + k < C; ++k)
          for (int64_t j = 0; j < 8; ++j) out[(c0 + k) * N + i0 + i + j] = blk[k * 8 + j];
      }
    }
  for (int64_t c = 0; c < C; ++c)
    for (int64_t i = done; i < len; ++i) out[c * N + i0 + i] = tile[i * Cp + c];
}

// q rows = softmax(-u rows), len rows of Cp (q may be u).
SEGFAST_CLONES void softmax_neg_rows(float* u, float* q, int64_t len, int64_t C, int64_t Cp) {
  for (int64_t i = 0; i < len; ++i) {
    float* r = u + i * Cp;
    for (int64_t c0 = 0; c0 < Cp; c0 += kLanes) store8(r + c0, -load8(r + c0));
    softmax_lanes(r, q + i * Cp, C, Cp);
  }
}

// One kernel's part of an iteration: its blurred grid, the per-pixel slice
// factor (alpha x post-normalisation, x the Potts weight), its compatibility
// (Potts, or a matrix mu), and where the new marginals are scattered for the
// next iteration (splat weight factor pre, this thread's grid part).
struct KernelRun {
  const Lattice* L;
  const float* fac;    // [N]
  const float* grid;
  const float* mu;     // [C][C] symmetric, or nullptr (Potts)
  const float* selfw;  // [N] the i = j term of K~, or nullptr (self-message kept)
  float potts;
  const float* pre;    // [N]
  float* part;         // this thread's [M][G] scatter target, or nullptr (last iteration)
  int64_t G;           // grid row width (grid_width(C))
};

constexpr int kMaxKernels = 2;  // gaussian and bilateral

// One iteration, per pixel: the messages sliced from every kernel's grid
// (never stored for the whole image), then softmax(-U + msg) into qout rows
// (Q itself, in place, when the old marginals are needed: the grids already
// hold everything read from them; else the chunk's U tile, each row read
// before it is written), then scattered into the next iteration's grid parts.
// u: the chunk's U tile [i1 - i0][Cp]; m, t: scratch [Cp].
SEGFAST_CLONES void meanfield_range(const KernelRun* kr, int K, const float* ut, const float* Q,
                                    float* qout, int64_t qstride, int64_t C, int64_t Cp, float* __restrict m,
                                    float* __restrict t, int64_t i0, int64_t i1) {
  for (int64_t i = i0; i < i1; ++i) {
    const float* q = Q ? Q + i * Cp : nullptr;  // the old marginals (self-message removal only)
    const float* __restrict u = ut + (i - i0) * Cp;
    // each kernel's slice weights (barycentric x per-pixel factor) and grid rows
    float w[kMaxKernels][kMaxD + 1];
    const float* g[kMaxKernels][kMaxD + 1];
    for (int k = 0; k < K; ++k) {
      const KernelRun& r = kr[k];
      const int D1 = r.L->d + 1;
      const int32_t* off = r.L->offset.data() + i * D1;
      const float* bw = r.L->weight.data() + i * D1;
      for (int v = 0; v < D1; ++v) {
        w[k][v] = bw[v] * r.fac[i];
        g[k][v] = r.grid + int64_t(off[v]) * r.G;
      }
    }
    // Potts kernels: 8 lanes at a time, accumulated in registers over every kernel's vertices
    for (int64_t c0 = 0; c0 < Cp; c0 += kLanes) {
      v8f a = -load8(u + c0);
      for (int k = 0; k < K; ++k) {
        const KernelRun& r = kr[k];
        if (r.mu) continue;
        const int D1 = r.L->d + 1;
        for (int v = 0; v < D1; ++v) a += w[k][v] * load_grid8(g[k][v] + c0, r.G);
        if (r.selfw) a -= (r.selfw[i] * r.potts) * load8(q + c0);
      }
      store8(m + c0, a);
    }
    // matrix compatibilities: m -= mu (K~Q - s Q)
    for (int k = 0; k < K; ++k) {
      const KernelRun& r = kr[k];
      if (!r.mu) continue;
      const int D1 = r.L->d + 1;
      for (int64_t c = 0; c < Cp; ++c) t[c] = 0.f;
      for (int v = 0; v < D1; ++v) axpy_lanes(t, g[k][v], w[k][v], r.G);
      if (r.selfw) axpy_lanes(t, q, -r.selfw[i], Cp);
      for (int64_t l = 0; l < C; ++l) {
        const float* __restrict row = r.mu + l * C;
        float a = 0.f;
#pragma omp simd reduction(+ : a)
        for (int64_t c = 0; c < C; ++c) a += row[c] * t[c];
        m[l] -= a;
      }
    }
    float* qn = qout + (i - i0) * qstride;
    softmax_lanes(m, qn, C, Cp);
    for (int k = 0; k < K; ++k) {
      const KernelRun& r = kr[k];
      if (!r.part) continue;
      const int D1 = r.L->d + 1;
      scatter_pixel(r.L->offset.data() + i * D1, r.L->weight.data() + i * D1, D1, r.pre[i], qn, r.part, r.G);
    }
  }
}

// meanfield_range for the usual case: one or two Potts kernels (d = DA, DB; DB = 0:
// one kernel), the self-message kept and qout = ut, with the vertex loops
// unrolled (a runtime d + 1 made the compiler branch per vertex).
template <int DA, int DB>
SEGFAST_CLONES void meanfield_potts(const KernelRun* kr, const float* ut, float* qout, int64_t C, int64_t Cp,
                                    int64_t i0, int64_t i1) {
  constexpr int NA = DA + 1, NB = DB > 0 ? DB + 1 : 0;
  const KernelRun& ra = kr[0];
  const KernelRun& rb = kr[DB > 0 ? 1 : 0];
  const int64_t G = ra.G;  // both grids: grid_width(C)
  // three passes over the chunk (slice, softmax, scatter): each loop's pixels are
  // independent, so the core overlaps them (one fused loop is latency-bound)
  for (int64_t i = i0; i < i1; ++i) {
    const float* u = ut + (i - i0) * Cp;  // may be qn: each block is read before it is written
    const int32_t* oa = ra.L->offset.data() + i * NA;
    const int32_t* ob = rb.L->offset.data() + i * NB;
    const float* ba = ra.L->weight.data() + i * NA;
    const float* bb = rb.L->weight.data() + i * NB;
    float wa[NA], wb[NB > 0 ? NB : 1];
    const float* ga[NA];
    const float* gb[NB > 0 ? NB : 1];
    for (int v = 0; v < NA; ++v) {
      wa[v] = ba[v] * ra.fac[i];
      ga[v] = ra.grid + int64_t(oa[v]) * G;
    }
    for (int v = 0; v < NB; ++v) {
      wb[v] = bb[v] * rb.fac[i];
      gb[v] = rb.grid + int64_t(ob[v]) * G;
    }
    float* qn = qout + (i - i0) * Cp;
    for (int64_t c0 = 0; c0 < Cp; c0 += kLanes) {
      v8f a = -load8(u + c0);
      for (int v = 0; v < NA; ++v) a += wa[v] * load_grid8(ga[v] + c0, G);
      for (int v = 0; v < NB; ++v) a += wb[v] * load_grid8(gb[v] + c0, G);
      store8(qn + c0, a);
    }
  }
  for (int64_t i = i0; i < i1; ++i) softmax_lanes(qout + (i - i0) * Cp, qout + (i - i0) * Cp, C, Cp);
  if (!ra.part) return;
  scatter_rows_d<DA>(*ra.L, ra.pre, qout, ra.part, Cp, G, i0, i1);
  if (DB > 0) scatter_rows_d<DB>(*rb.L, rb.pre, qout, rb.part, Cp, G, i0, i1);
}

using PottsRange = void (*)(const KernelRun*, const float*, float*, int64_t, int64_t, int64_t, int64_t);

// The meanfield_potts instance for these kernels, or nullptr (use meanfield_range).
PottsRange potts_range(const KernelRun* kr, int K, bool self_removed) {
  if (self_removed || K < 1 || K > 2) return nullptr;
  for (int k = 0; k < K; ++k)
    if (kr[k].mu || (kr[k].L->d != 2 && kr[k].L->d != 5)) return nullptr;
  const int a = kr[0].L->d, b = K == 2 ? kr[1].L->d : 0;
  if (a == 2) return b == 0 ? meanfield_potts<2, 0> : b == 2 ? meanfield_potts<2, 2> : meanfield_potts<2, 5>;
  return b == 0 ? meanfield_potts<5, 0> : b == 2 ? meanfield_potts<5, 2> : meanfield_potts<5, 5>;
}

struct KernelSpec {
  double sx, sy, sr, sg, sb;
  bool bilateral;
  double potts;      // used when mu == nullptr
  const float* mu;   // [C][C] symmetric compatibility, or nullptr (Potts)
};

}  // namespace

// The buffers of one image's run, kept from image to image of a batch: the grids
// are tens of MB each (over malloc's mmap threshold), and faulting them in afresh
// for every image would cost a noticeable share of a batch's time.
struct ImageBuffers {
  std::vector<Lattice> lat;
  std::vector<fvec> pre, fac, selfw, grids;
  std::vector<std::vector<fvec>> parts;  // [kernel][band] -> [M][G]
  fvec feat, tmp, post, Q;
  // per kernel: its lattice and factors hold for every image of the call (the
  // spatial kernel: its features are pixel positions only)
  std::vector<char> same_for_all;
  void for_kernels(size_t K) {
    for (auto* v : {&pre, &fac, &selfw, &grids}) v->resize(K);
    same_for_all.resize(K, 0);
    lat.resize(K);
    parts.resize(K);
  }
  // kernel m's nb parts of n floats, zeroed (capacity kept)
  void zero_parts(size_t m, int nb, size_t n) {
    parts[m].resize(nb);
    for (auto& p : parts[m]) p.assign(n, 0.f);
  }
};

// Whole problem: B images, energies U [B, C, S] (strided, any float dtype, POS
// already applied), image [B, 3, S] (strided, uint8 or float, 0..255), Q out
// [B, C, S] float32 contiguous.
//
// Memory: per kernel the lattice's [S][d+1] offsets and weights and a grid
// part per thread; the marginals are never stored for the whole image (only
// with self-message removal, which needs the old ones). U is read from the
// input a chunk at a time (transposed in cache) and the last iteration writes
// straight to the output: first-touch page faults cost about as much per MB
// as the filtering itself, and every pass over Q costs as much as its
// arithmetic.
void dense_crf_cpu(const void* U, int u_dtype, int64_t usB, int64_t usC, int64_t usS, const void* img,
                   int im_dtype, int64_t isB, int64_t isC, int64_t isS, int64_t B, int64_t C, int64_t H,
                   int64_t W, const std::vector<double>& kparams, const std::vector<uintptr_t>& compat_ptrs,
                   int64_t iterations, int normalization, bool self_message, float* Qout, int64_t num_threads) {
  const int nt_all = num_threads > 0 ? int(num_threads) : omp_get_max_threads();
  const int64_t N = H * W;
  const int64_t Cp = (C + 7) / 8 * 8;
  const int64_t G = grid_width(C);
  const size_t K = compat_ptrs.size();
  if (K > size_t(kMaxKernels)) throw std::invalid_argument("segfast: at most 2 CRF kernels");
  std::vector<KernelSpec> ks(K);
  for (size_t m = 0; m < K; ++m) {
    const double* p = &kparams[m * 7];
    ks[m] = KernelSpec{p[0], p[1], p[2], p[3], p[4], p[5] != 0.0, p[6],
                       reinterpret_cast<const float*>(compat_ptrs[m])};
  }
  // One image with nt threads, in buffers bf kept from its previous image. Pixels are split in
  // nt static bands, one per thread, each scattering into grid parts of its own.
  auto run_image = [&](int64_t b, int nt, ImageBuffers& bf) {
    float* out = Qout + b * C * N;
    const int nb = int(std::max<int64_t>(1, std::min<int64_t>(nt, N / kChunk)));
    // fn(t, i0, i1) over band t's pixels in chunks, band t on thread t
    auto bands = [&](auto&& fn) {
      per_band(nb, [&](int t) {
        const int64_t lo = N * t / nb, hi = N * (t + 1) / nb;
        for (int64_t i0 = lo; i0 < hi; i0 += kChunk) fn(t, i0, std::min(hi, i0 + kChunk));
      });
    };
    if (iterations <= 0 || K == 0) {  // softmax(-U) only
      parallel_chunks(N, nt, [&](int64_t i0, int64_t i1) {
        const int64_t len = i1 - i0;
        float* ut = thread_scratch(size_t(len) * (Cp + 1));
        load_u_tile(U, u_dtype, usB, usC, usS, b, C, Cp, i0, len, ut, ut + len * Cp);
        softmax_neg_rows(ut, ut, len, C, Cp);
        store_q_tile(ut, C, Cp, N, i0, len, out);
      });
      return;
    }
    // lattices, and per pixel the splat (pre) and slice (fac) normalisation factors
    bf.for_kernels(K);
    auto& lat = bf.lat;
    auto& pre = bf.pre;
    auto& fac = bf.fac;
    auto& selfw = bf.selfw;
    auto& grids = bf.grids;
    auto& parts = bf.parts;
    auto& feat = bf.feat;
    auto& tmp = bf.tmp;
    for (size_t m = 0; m < K; ++m) {
      const KernelSpec& k = ks[m];
      if (bf.same_for_all[m]) {  // the spatial kernel's lattice and factors, from the previous image
        bf.zero_parts(m, nb, size_t(lat[m].M) * G);
        continue;
      }
      const int d = k.bilateral ? 5 : 2;
      const int D1 = d + 1;
      feat.resize(size_t(N) * d);
      parallel_chunks(N, nt, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
          float* f = &feat[size_t(i) * d];
          f[0] = float(i % W) / float(k.sx);
          f[1] = float(i / W) / float(k.sy);
          if (k.bilateral) {
            const float s[3] = {float(k.sr), float(k.sg), float(k.sb)};
            for (int ch = 0; ch < 3; ++ch) f[2 + ch] = load_f32(img, im_dtype, b * isB + ch * isC + i * isS) / s[ch];
          }
        }
      });
      Lattice& L = lat[m];
      build_lattice(L, feat.data(), N, d, nt);
      const float alpha = slice_alpha(d);
      const float scale = k.mu ? 1.f : float(k.potts);  // Potts: fold the weight into the slice
      // norm = 1/sqrt(K 1) (symmetric) or 1/(K 1); K 1 filtered with one value per pixel
      pre[m].assign(N, 1.f);
      fvec& post = bf.post;
      post.assign(N, 1.f);
      if (normalization != kNone) {
        bf.zero_parts(m, nb, size_t(L.M));
        const float one = 1.f;
        bands([&](int t, int64_t i0, int64_t i1) {
          for (int64_t i = i0; i < i1; ++i)
            scatter_pixel(&L.offset[i * D1], &L.weight[i * D1], D1, 1.f, &one, parts[m][t].data(), 1);
        });
        sum_blur(L, parts[m], 1, grids[m], tmp, nt);
        const float* g1 = grids[m].data();
        parallel_chunks(N, nt, [&](int64_t i0, int64_t i1) {
          for (int64_t i = i0; i < i1; ++i) {
            float k1 = 0.f;
            for (int r = 0; r < D1; ++r) k1 += (alpha * L.weight[i * D1 + r]) * g1[L.offset[i * D1 + r]];
            if (normalization == kSymmetric) pre[m][i] = post[i] = 1.f / std::sqrt(k1 + 1e-20f);
            else if (normalization == kAfter) post[i] = 1.f / (k1 + 1e-20f);
            else pre[m][i] = 1.f / (k1 + 1e-20f);
          }
        });
      }
      fac[m].resize(N);
      for (int64_t i = 0; i < N; ++i) fac[m][i] = alpha * post[i] * scale;
      if (!self_message) {  // the i = j term with K_ii = 1
        selfw[m].resize(N);
        for (int64_t i = 0; i < N; ++i) selfw[m][i] = pre[m][i] * post[i];
      }
      bf.zero_parts(m, nb, size_t(L.M) * G);
      bf.same_for_all[m] = !k.bilateral;
    }
    // [N][Cp] marginals, kept only for the self-message removal
    if (!self_message) bf.Q.resize(size_t(N) * Cp);
    float* const Q = self_message ? nullptr : bf.Q.data();
    // Q0 = softmax(-U), scattered into the grid parts
    bands([&](int t, int64_t i0, int64_t i1) {
      const int64_t len = i1 - i0;
      float* ut = thread_scratch(size_t(len) * (Cp + 1));
      load_u_tile(U, u_dtype, usB, usC, usS, b, C, Cp, i0, len, ut, ut + len * Cp);
      float* q0 = Q ? Q + i0 * Cp : ut;
      softmax_neg_rows(ut, q0, len, C, Cp);
      for (size_t m = 0; m < K; ++m) scatter_rows(lat[m], pre[m].data(), q0, parts[m][t].data(), Cp, G, i0, i1);
    });
    for (int64_t it = 0; it < iterations; ++it) {
      const bool last = it + 1 == iterations;
      for (size_t m = 0; m < K; ++m) sum_blur(lat[m], parts[m], G, grids[m], tmp, nt);
      bands([&](int t, int64_t i0, int64_t i1) {
        KernelRun runs[kMaxKernels];
        for (size_t m = 0; m < K; ++m)
          runs[m] = KernelRun{&lat[m], fac[m].data(), grids[m].data(), ks[m].mu,
                              self_message ? nullptr : selfw[m].data(), float(ks[m].potts), pre[m].data(),
                              last ? nullptr : parts[m][t].data(), G};
        const int64_t len = i1 - i0;
        float* ut = thread_scratch(size_t(len) * (Cp + 1) + 2 * Cp);
        float* sc = ut + len * (Cp + 1);
        load_u_tile(U, u_dtype, usB, usC, usS, b, C, Cp, i0, len, ut, ut + len * Cp);
        const bool keep = Q && !last;
        // (both kernels' parts are scattered, or neither: the last iteration)
        auto fast = potts_range(runs, int(K), Q != nullptr);
        if (fast) fast(runs, ut, ut, C, Cp, i0, i1);
        else meanfield_range(runs, int(K), ut, Q, keep ? Q + i0 * Cp : ut, Cp, C, Cp, sc, sc + Cp, i0, i1);
        if (last) store_q_tile(ut, C, Cp, N, i0, len, out);
      });
    }
  };
  // Large images: one at a time on every thread (measured faster at 512 x 512:
  // two images at once compete for the caches, and page-fault their buffers
  // twice over); small ones: whole images per thread, no barrier inside one.
  if (B >= 2 && nt_all >= 2 && N < kImageSplitPixels) {
    bool failed = false;
    const int nt = int(std::min<int64_t>(nt_all, B));
    std::vector<ImageBuffers> bufs(nt);
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
    for (int64_t b = 0; b < B; ++b) {
      try {
        run_image(b, 1, bufs[omp_get_thread_num()]);
      } catch (...) {
#pragma omp atomic write
        failed = true;
      }
    }
    if (failed) throw std::runtime_error("segfast: dense CRF failed on an image (lattice too large?)");
  } else {
    ImageBuffers bf;
    for (int64_t b = 0; b < B; ++b) run_image(b, nt_all, bf);
  }
}

// The lattice of one feature set, for tests and for other backends:
// offset/weight [N][d+1], blur [d+1][M][2]; returns M (buffers sized by the caller
// after a first call with null pointers would need two builds, so the caller
// passes blur capacity (d+1)*cap*2 and gets -M-1 if cap is too small).
int64_t crf_lattice_cpu(const float* feat, int64_t N, int d, int32_t* offset, float* weight, int32_t* blur,
                        int64_t cap, int64_t num_threads) {
  const int nt = num_threads > 0 ? int(num_threads) : omp_get_max_threads();
  Lattice L;
  build_lattice(L, feat, N, d, nt);
  const int64_t E = N * (d + 1);
  std::memcpy(offset, L.offset.data(), sizeof(int32_t) * E);
  std::memcpy(weight, L.weight.data(), sizeof(float) * E);
  if (L.M > cap) return -int64_t(L.M) - 1;
  std::memcpy(blur, L.blur.data(), sizeof(int32_t) * L.blur.size());
  return L.M;
}

}  // namespace crf
}  // namespace segfast
