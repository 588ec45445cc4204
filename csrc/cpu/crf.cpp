// Dense CRF, CPU kernels (C++ / OpenMP): per image, one permutohedral lattice
// per pairwise kernel, built once and reused by every iteration and label;
// then mean field. See csrc/common/crf.h for the lattice math and
// segfast/reference/crf.py for the semantics (pydensecrf's DenseCRF2D).
//
// Layout: label values are stored pixel-major, [N][Cp] and lattice values
// [M+1][Cp] (Cp = C rounded up to 8, padding lanes kept at 0; row M is the
// "missing neighbour", always 0), so every inner loop runs over labels with
// unit stride and vectorises. Parallel over pixels (slice, update), lattice
// points (splat, blur) and, while the lattice is built, pixels (location);
// the hash table is filled by one thread in pixel order, so point numbering
// and every sum are deterministic. Splat is a gather: each point keeps the
// list (CSR) of its (pixel, weight) entries. Keys are int32.
#include <omp.h>

#include <algorithm>
#include <memory>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <vector>

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"  // v8f values never cross a non-inlined call
#endif

#include "../common/crf.h"
#include "../common/region.h"  // fast_expf
#include "common.h"

namespace segfast {
namespace crf {
namespace {

constexpr int64_t kChunk = 256;  // items per OpenMP work unit
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
  if (Cp % kLanes) {
    for (int64_t c = 0; c < Cp; ++c) y[c] += a * x[c];
    return;
  }
  for (int64_t c0 = 0; c0 < Cp; c0 += kLanes) store8(y + c0, load8(y + c0) + a * load8(x + c0));
}

SEGFAST_INLINE void blur_lanes(float* __restrict t, const float* __restrict o, const float* __restrict a,
                               const float* __restrict b, int64_t Cp) {
  if (Cp % kLanes) {
    for (int64_t c = 0; c < Cp; ++c) t[c] = o[c] + 0.5f * (a[c] + b[c]);
    return;
  }
  for (int64_t c0 = 0; c0 < Cp; c0 += kLanes)
    store8(t + c0, load8(o + c0) + 0.5f * (load8(a + c0) + load8(b + c0)));
}

// In place: m = softmax over the first C lanes, 0 in the padding (Cp % 8 == 0).
SEGFAST_INLINE void softmax_lanes(float* m, float* q, int64_t C, int64_t Cp) {
  float mx8[kLanes], s8[kLanes];
  for (int64_t l = 0; l < kLanes; ++l) mx8[l] = -INFINITY, s8[l] = 0.f;
  for (int64_t c0 = 0; c0 < Cp; c0 += kLanes) {
#pragma omp simd
    for (int64_t l = 0; l < kLanes; ++l) mx8[l] = std::max(mx8[l], c0 + l < C ? m[c0 + l] : -INFINITY);
  }
  float mx = mx8[0];
  for (int64_t l = 1; l < kLanes; ++l) mx = std::max(mx, mx8[l]);
  for (int64_t c0 = 0; c0 < Cp; c0 += kLanes) {
#pragma omp simd
    for (int64_t l = 0; l < kLanes; ++l) {
      const float e = c0 + l < C ? region::fast_expf(m[c0 + l] - mx) : 0.f;
      m[c0 + l] = e;
      s8[l] += e;
    }
  }
  float s = 0.f;
  for (int64_t l = 0; l < kLanes; ++l) s += s8[l];
  const float inv = 1.f / s;
  for (int64_t c0 = 0; c0 < Cp; c0 += kLanes) {
#pragma omp simd
    for (int64_t l = 0; l < kLanes; ++l) q[c0 + l] = m[c0 + l] * inv;
  }
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

// Open addressing, linear probing; keys stored once per point.
struct HashTable {
  int d;
  std::vector<int32_t> keys;  // [M][d]
  std::vector<int32_t> slot;  // point index or -1
  uint64_t mask = 0;
  int32_t size = 0;

  HashTable(int d_, int64_t expect) : d(d_) {
    uint64_t cap = 1024;
    while (cap < uint64_t(2 * expect)) cap <<= 1;
    slot.assign(cap, -1);
    mask = cap - 1;
    keys.reserve(size_t(expect) * d_);
  }
  bool same(int32_t p, const int32_t* k) const {
    const int32_t* q = &keys[size_t(p) * d];
    for (int i = 0; i < d; ++i)
      if (q[i] != k[i]) return false;
    return true;
  }
  int32_t find(const int32_t* k) const {
    for (uint64_t h = hash_key(k, d) & mask;; h = (h + 1) & mask) {
      const int32_t p = slot[h];
      if (p < 0) return -1;
      if (same(p, k)) return p;
    }
  }
  int32_t insert(const int32_t* k) {
    if (uint64_t(2) * uint64_t(size + 1) > mask + 1) grow();
    for (uint64_t h = hash_key(k, d) & mask;; h = (h + 1) & mask) {
      const int32_t p = slot[h];
      if (p < 0) {
        if (size == INT32_MAX) throw std::length_error("segfast: CRF lattice has more than 2^31 points");
        keys.insert(keys.end(), k, k + d);
        slot[h] = size;
        return size++;
      }
      if (same(p, k)) return p;
    }
  }
  void grow() {
    std::vector<int32_t> old(2 * (mask + 1), -1);
    slot.swap(old);
    mask = slot.size() - 1;
    for (int32_t p = 0; p < size; ++p)
      for (uint64_t h = hash_key(&keys[size_t(p) * d], d) & mask;; h = (h + 1) & mask)
        if (slot[h] < 0) {
          slot[h] = p;
          break;
        }
  }
};

struct Lattice {
  int d = 0;
  int64_t N = 0;
  int32_t M = 0;
  std::vector<int32_t> offset;  // [N][d+1] point of each simplex vertex
  std::vector<float> weight;    // [N][d+1] barycentric weights
  std::vector<int32_t> blur;    // [d+1][M][2] neighbours along each direction (M: none)
  std::vector<int32_t> start;   // [M+1] CSR of the splat entries of each point
  std::vector<int32_t> pix;     // [N(d+1)] pixel of each entry, in pixel order within a point
  std::vector<int32_t> ent;     // [N(d+1)] flat (pixel, vertex) index of each entry
};

void build_lattice(Lattice& L, const float* feat, int64_t N, int d, int nt) {
  L.d = d;
  L.N = N;
  const int D1 = d + 1;
  const int64_t E = N * D1;
  float scale[kMaxD];
  lattice_scale(d, scale);
  std::vector<int32_t> keys(size_t(E) * d);
  L.offset.resize(E);
  L.weight.resize(E);
  parallel_chunks(N, nt, [&](int64_t i0, int64_t i1) {
    Simplex s;
    for (int64_t i = i0; i < i1; ++i) {
      locate(feat + i * d, d, scale, s);
      for (int r = 0; r < D1; ++r) {
        vertex_key(s, d, r, &keys[size_t(i * D1 + r) * d]);
        L.weight[i * D1 + r] = s.bary[r];
      }
    }
  });
  // Insertion: each thread fills a table of its own for a band of pixels (local
  // point ids), then one thread merges the bands' points into the image's table
  // (band order, then local order) and the local ids are remapped in parallel.
  // Neighbouring pixels mostly share their vertices: compare with the previous
  // pixel's vertex of the same remainder before probing a table. The point
  // numbering never changes a result (sums run in pixel order per point).
  const int bands = int(std::max<int64_t>(1, std::min<int64_t>(nt, N / 4096)));
  HashTable table(d, std::max<int64_t>(N / 2, 16));
  std::vector<std::vector<int32_t>> remap(bands);
  std::vector<HashTable*> local(bands, nullptr);
  auto fill_band = [&](int t, HashTable& h) {
    const int64_t i0 = N * t / bands, i1 = N * (t + 1) / bands;
    for (int64_t k = i0 * D1; k < i1 * D1; ++k) {
      const int32_t* key = &keys[size_t(k) * d];
      if (k >= i0 * D1 + D1 && std::equal(key, key + d, key - size_t(D1) * d)) {
        L.offset[k] = L.offset[k - D1];
      } else {
        L.offset[k] = h.insert(key);
      }
    }
  };
  if (bands == 1) {
    fill_band(0, table);
  } else {
#pragma omp parallel for schedule(static, 1) num_threads(bands)
    for (int t = 0; t < bands; ++t) {
      local[t] = new HashTable(d, std::max<int64_t>(N / bands / 2, 16));
      fill_band(t, *local[t]);
    }
    for (int t = 0; t < bands; ++t) {
      HashTable& h = *local[t];
      remap[t].resize(h.size);
      for (int32_t p = 0; p < h.size; ++p) remap[t][p] = table.insert(&h.keys[size_t(p) * d]);
      delete local[t];
      local[t] = nullptr;
    }
#pragma omp parallel for schedule(static, 1) num_threads(bands)
    for (int t = 0; t < bands; ++t) {
      const int64_t i0 = N * t / bands, i1 = N * (t + 1) / bands;
      const int32_t* map = remap[t].data();
      for (int64_t k = i0 * D1; k < i1 * D1; ++k) L.offset[k] = map[L.offset[k]];
    }
  }
  std::vector<int32_t>().swap(keys);
  const int32_t M = table.size;
  L.M = M;
  L.blur.resize(size_t(D1) * M * 2);
  parallel_chunks(M, nt, [&](int64_t p0, int64_t p1) {
    int32_t n1[kMaxD], n2[kMaxD];
    for (int64_t p = p0; p < p1; ++p) {
      const int32_t* key = &table.keys[size_t(p) * d];
      for (int j = 0; j < D1; ++j) {
        for (int k = 0; k < d; ++k) {
          n1[k] = key[k] - 1;
          n2[k] = key[k] + 1;
        }
        if (j < d) {
          n1[j] = key[j] + d;
          n2[j] = key[j] - d;
        }
        const int32_t a = table.find(n1), b = table.find(n2);
        L.blur[(size_t(j) * M + p) * 2 + 0] = a < 0 ? M : a;
        L.blur[(size_t(j) * M + p) * 2 + 1] = b < 0 ? M : b;
      }
    }
  });
  // CSR by point, entries in pixel order (a counting sort)
  L.start.assign(size_t(M) + 1, 0);
  for (int64_t k = 0; k < E; ++k) ++L.start[L.offset[k] + 1];
  for (int32_t p = 0; p < M; ++p) L.start[p + 1] += L.start[p];
  std::vector<int32_t> fill(L.start.begin(), L.start.end() - 1);
  L.pix.resize(E);
  L.ent.resize(E);
  for (int64_t k = 0; k < E; ++k) {
    const int32_t at = fill[L.offset[k]]++;
    L.pix[at] = int32_t(k / D1);
    L.ent[at] = int32_t(k);
  }
}

// ---- the filter steps (vectorised over Cp labels) -----------------------------------

// grid[p] = sum over p's entries e of sw[e] * in[pix[e]]
SEGFAST_CLONES void splat_range(const Lattice& L, const float* __restrict sw, const float* __restrict in,
                                float* __restrict grid, int64_t Cp, int64_t p0, int64_t p1) {
  for (int64_t p = p0; p < p1; ++p) {
    float* __restrict g = grid + p * Cp;
    const int32_t e0 = L.start[p], e1 = L.start[p + 1];
    if (Cp % kLanes) {
      for (int64_t c = 0; c < Cp; ++c) g[c] = 0.f;
      for (int32_t e = e0; e < e1; ++e) axpy_lanes(g, in + int64_t(L.pix[e]) * Cp, sw[e], Cp);
      continue;
    }
    for (int64_t c0 = 0; c0 < Cp; c0 += kLanes) {  // 8 lanes in registers across the entries
      v8f a = {};
      for (int32_t e = e0; e < e1; ++e) a += sw[e] * load8(in + int64_t(L.pix[e]) * Cp + c0);
      store8(g + c0, a);
    }
  }
}

SEGFAST_CLONES void blur_range(const int32_t* __restrict nb, const float* __restrict src, float* __restrict dst,
                               int64_t Cp, int64_t p0, int64_t p1) {
  for (int64_t p = p0; p < p1; ++p) {
    const float* __restrict a = src + int64_t(nb[2 * p]) * Cp;
    const float* __restrict b = src + int64_t(nb[2 * p + 1]) * Cp;
    const float* __restrict o = src + p * Cp;
    float* __restrict t = dst + p * Cp;
    blur_lanes(t, o, a, b, Cp);
  }
}

// out[i] (+)= sum_r slw[i, r] * grid[offset[i, r]]
SEGFAST_CLONES void slice_range(const Lattice& L, const float* __restrict slw, const float* __restrict grid,
                                float* __restrict out, int64_t Cp, bool accumulate, int64_t i0, int64_t i1) {
  const int D1 = L.d + 1;
  for (int64_t i = i0; i < i1; ++i) {
    float* __restrict o = out + i * Cp;
    if (!accumulate)
      for (int64_t c = 0; c < Cp; ++c) o[c] = 0.f;
    for (int r = 0; r < D1; ++r) {
      const float w = slw[i * D1 + r];
      const float* __restrict g = grid + int64_t(L.offset[i * D1 + r]) * Cp;
      axpy_lanes(o, g, w, Cp);
    }
  }
}

// splat + blur: grid = B(splat(in)) with the folded splat weights; grid, tmp: [M+1][Cp].
void splat_blur(const Lattice& L, const float* sw, const float* in, int64_t Cp, std::vector<float>& grid,
                std::vector<float>& tmp, int nt) {
  const int64_t M = L.M;
  grid.resize(size_t(M + 1) * Cp);
  tmp.resize(size_t(M + 1) * Cp);
  std::fill(grid.begin() + M * Cp, grid.begin() + (M + 1) * Cp, 0.f);
  std::fill(tmp.begin() + M * Cp, tmp.begin() + (M + 1) * Cp, 0.f);
  parallel_chunks(M, nt, [&](int64_t a, int64_t b) { splat_range(L, sw, in, grid.data(), Cp, a, b); });
  for (int j = 0; j <= L.d; ++j) {
    const int32_t* nb = L.blur.data() + size_t(j) * M * 2;
    parallel_chunks(M, nt, [&](int64_t a, int64_t b) { blur_range(nb, grid.data(), tmp.data(), Cp, a, b); });
    grid.swap(tmp);
  }
}

// One filter: out = slice(blur(splat(in))) with the folded weights.
void filter(const Lattice& L, const float* sw, const float* slw, const float* in, float* out, int64_t Cp,
            std::vector<float>& grid, std::vector<float>& tmp, int nt) {
  splat_blur(L, sw, in, Cp, grid, tmp, nt);
  parallel_chunks(L.N, nt, [&](int64_t a, int64_t b) { slice_range(L, slw, grid.data(), out, Cp, false, a, b); });
}

// logits = -U + msg; Q = softmax over the C real labels (padding lanes set to 0)
SEGFAST_CLONES void update_range(const float* __restrict U, const float* __restrict msg, float* __restrict Q,
                                 int64_t C, int64_t Cp, int64_t i0, int64_t i1) {
  for (int64_t i = i0; i < i1; ++i) {
    const float* __restrict u = U + i * Cp;
    float* __restrict q = Q + i * Cp;
    if (msg) {
      const float* __restrict m = msg + i * Cp;
#pragma omp simd
      for (int64_t c = 0; c < Cp; ++c) q[c] = m[c] - u[c];
    } else {
#pragma omp simd
      for (int64_t c = 0; c < Cp; ++c) q[c] = -u[c];
    }
    softmax_lanes(q, q, C, Cp);
  }
}

// One kernel's part of an iteration: its blurred grid, the folded slice weights,
// and its compatibility (Potts weight folded into slw, or a matrix mu).
struct KernelRun {
  const Lattice* L;
  const float* slw;
  const float* grid;
  const float* mu;     // [C][C] symmetric, or nullptr (Potts)
  const float* selfw;  // [N] the i = j term of K~, or nullptr (self-message kept)
  float potts;
};

// The fused end of an iteration, per pixel: the messages sliced from every
// kernel's grid (never stored for the whole image), then Q = softmax(-U + msg)
// in place (the grids already hold everything read from the old Q).
// m, t: scratch [Cp].
SEGFAST_CLONES void meanfield_range(const KernelRun* kr, int K, const float* __restrict U, float* __restrict Q,
                                    int64_t C, int64_t Cp, float* __restrict m, float* __restrict t, int64_t i0,
                                    int64_t i1) {
  for (int64_t i = i0; i < i1; ++i) {
    float* __restrict q = Q + i * Cp;
    const float* __restrict u = U + i * Cp;
    // Potts kernels: 8 lanes at a time, accumulated in registers over every kernel's vertices
    for (int64_t c0 = 0; c0 < Cp; c0 += kLanes) {
      v8f a = -load8(u + c0);
      for (int k = 0; k < K; ++k) {
        const KernelRun& r = kr[k];
        if (r.mu) continue;
        const int D1 = r.L->d + 1;
        const int32_t* off = r.L->offset.data() + i * D1;
        const float* w = r.slw + i * D1;
        for (int v = 0; v < D1; ++v) a += w[v] * load8(r.grid + int64_t(off[v]) * Cp + c0);
        if (r.selfw) a -= (r.selfw[i] * r.potts) * load8(q + c0);
      }
      store8(m + c0, a);
    }
    // matrix compatibilities: m -= mu (K~Q - s Q)
    for (int k = 0; k < K; ++k) {
      const KernelRun& r = kr[k];
      if (!r.mu) continue;
      const int D1 = r.L->d + 1;
      const int32_t* off = r.L->offset.data() + i * D1;
      const float* w = r.slw + i * D1;
      for (int64_t c = 0; c < Cp; ++c) t[c] = 0.f;
      for (int v = 0; v < D1; ++v) axpy_lanes(t, r.grid + int64_t(off[v]) * Cp, w[v], Cp);
      if (r.selfw) axpy_lanes(t, q, -r.selfw[i], Cp);
      for (int64_t l = 0; l < C; ++l) {
        const float* __restrict row = r.mu + l * C;
        float a = 0.f;
#pragma omp simd reduction(+ : a)
        for (int64_t c = 0; c < C; ++c) a += row[c] * t[c];
        m[l] -= a;
      }
    }
    softmax_lanes(m, q, C, Cp);
  }
}

struct KernelSpec {
  double sx, sy, sr, sg, sb;
  bool bilateral;
  double potts;      // used when mu == nullptr
  const float* mu;   // [C][C] symmetric compatibility, or nullptr (Potts)
};

}  // namespace

// Whole problem: B images, energies U [B, C, S] (strided, any float dtype, POS
// already applied), image [B, 3, S] (strided, uint8 or float, 0..255), Q out
// [B, C, S] float32 contiguous.
void dense_crf_cpu(const void* U, int u_dtype, int64_t usB, int64_t usC, int64_t usS, const void* img,
                   int im_dtype, int64_t isB, int64_t isC, int64_t isS, int64_t B, int64_t C, int64_t H,
                   int64_t W, const std::vector<double>& kparams, const std::vector<uintptr_t>& compat_ptrs,
                   int64_t iterations, int normalization, bool self_message, float* Qout, int64_t num_threads) {
  const int nt_all = num_threads > 0 ? int(num_threads) : omp_get_max_threads();
  const int64_t N = H * W;
  const int64_t Cp = (C + 7) / 8 * 8;
  const size_t K = compat_ptrs.size();
  std::vector<KernelSpec> ks(K);
  for (size_t m = 0; m < K; ++m) {
    const double* p = &kparams[m * 7];
    ks[m] = KernelSpec{p[0], p[1], p[2], p[3], p[4], p[5] != 0.0, p[6],
                       reinterpret_cast<const float*>(compat_ptrs[m])};
  }
  // One image with nt threads (its buffers are its own).
  auto run_image = [&](int64_t b, int nt) {
    // [N][Cp] energies and marginals: not zero-filled (every lane is written before it is read)
    std::unique_ptr<float[]> Ub(new float[size_t(N) * Cp]), Q(new float[size_t(N) * Cp]);
    std::vector<float> grid, tmp, feat;
    std::vector<std::vector<float>> grids(K);
    // energies, transposed to [N][Cp] through a [C][chunk] tile read row by row
    parallel_chunks(N, nt, [&](int64_t i0, int64_t i1) {
      float tile[kChunk];
      for (int64_t i = i0; i < i1; ++i)
        for (int64_t c = C; c < Cp; ++c) Ub[size_t(i) * Cp + c] = 0.f;
      for (int64_t c = 0; c < C; ++c) {
        cpu::load_row(tile, U, u_dtype, b * usB + c * usC + i0 * usS, usS, i1 - i0);
        for (int64_t i = i0; i < i1; ++i) Ub[size_t(i) * Cp + c] = tile[i - i0];
      }
    });
    parallel_chunks(N, nt, [&](int64_t a, int64_t e) { update_range(Ub.get(), nullptr, Q.get(), C, Cp, a, e); });
    if (iterations > 0 && K > 0) {
      // lattices and their folded weights
      std::vector<Lattice> lat(K);
      std::vector<std::vector<float>> sw(K), slw(K), selfw(K);
      for (size_t m = 0; m < K; ++m) {
        const KernelSpec& k = ks[m];
        const int d = k.bilateral ? 5 : 2;
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
        const int D1 = d + 1;
        const int64_t E = N * D1;
        const float alpha = slice_alpha(d);
        // norm = 1/sqrt(K 1) (symmetric) or 1/(K 1); K 1 filtered with one value per pixel
        std::vector<float> pre(N, 1.f), post(N, 1.f), sws(E), ones(N, 1.f), k1(N);
        if (normalization != kNone) {
          for (int64_t e = 0; e < E; ++e) sws[e] = L.weight[L.ent[e]];
          std::vector<float> sl(E);
          for (int64_t e = 0; e < E; ++e) sl[e] = alpha * L.weight[e];
          filter(L, sws.data(), sl.data(), ones.data(), k1.data(), 1, grid, tmp, nt);
          for (int64_t i = 0; i < N; ++i) {
            if (normalization == kSymmetric) {
              const float n = 1.f / std::sqrt(k1[i] + 1e-20f);
              pre[i] = post[i] = n;
            } else if (normalization == kAfter) {
              post[i] = 1.f / (k1[i] + 1e-20f);
            } else {
              pre[i] = 1.f / (k1[i] + 1e-20f);
            }
          }
        }
        const float scale = k.mu ? 1.f : float(k.potts);  // Potts: fold the weight into the slice
        sw[m].resize(E);
        slw[m].resize(E);
        parallel_chunks(E, nt, [&](int64_t e0, int64_t e1) {
          for (int64_t e = e0; e < e1; ++e) sw[m][e] = L.weight[L.ent[e]] * pre[L.pix[e]];
        });
        parallel_chunks(N, nt, [&](int64_t i0, int64_t i1) {
          for (int64_t i = i0; i < i1; ++i)
            for (int r = 0; r < D1; ++r) slw[m][i * D1 + r] = alpha * L.weight[i * D1 + r] * post[i] * scale;
        });
        if (!self_message) {  // the i = j term with K_ii = 1
          selfw[m].resize(N);
          for (int64_t i = 0; i < N; ++i) selfw[m][i] = pre[i] * post[i];
        }
      }
      std::vector<KernelRun> runs(K);
      for (int64_t it = 0; it < iterations; ++it) {
        for (size_t m = 0; m < K; ++m) {
          splat_blur(lat[m], sw[m].data(), Q.get(), Cp, grids[m], tmp, nt);
          runs[m] = KernelRun{&lat[m], slw[m].data(), grids[m].data(), ks[m].mu,
                              self_message ? nullptr : selfw[m].data(), float(ks[m].potts)};
        }
        parallel_chunks(N, nt, [&](int64_t a, int64_t e) {
          std::vector<float> scratch(2 * Cp);
          meanfield_range(runs.data(), int(K), Ub.get(), Q.get(), C, Cp, scratch.data(), scratch.data() + Cp, a, e);
        });
      }
    }
    // Q -> out [b, C, N]
    float* out = Qout + b * C * N;
    parallel_chunks(N, nt, [&](int64_t i0, int64_t i1) {
      for (int64_t c = 0; c < C; ++c)
        for (int64_t i = i0; i < i1; ++i) out[c * N + i] = Q[size_t(i) * Cp + c];
    });
  };
  if (B >= 2 && nt_all >= 2) {  // whole images per thread: no barrier inside an image
    bool failed = false;
#pragma omp parallel for schedule(dynamic, 1) num_threads(int(std::min<int64_t>(nt_all, B)))
    for (int64_t b = 0; b < B; ++b) {
      try {
        run_image(b, 1);
      } catch (...) {
#pragma omp atomic write
        failed = true;
      }
    }
    if (failed) throw std::runtime_error("segfast: dense CRF failed on an image (lattice too large?)");
  } else {
    for (int64_t b = 0; b < B; ++b) run_image(b, nt_all);
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
