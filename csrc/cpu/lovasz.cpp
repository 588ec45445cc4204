// Lovász family, CPU kernel (C++ / OpenMP): the sort + weights step of
// segfast/ops/lovasz.py (lovasz_sort_weights) for every segment of a batch.
// Math in csrc/common/lovasz.h.
//
// One segment (row) per task, rows spread over the threads (dynamic: rows
// differ in how many pixels must be sorted). Per row, in per-thread buffers:
//   1. load errors / fg / valid (any dtype and strides) as the compute type;
//      T = Σ fg over valid pixels; the threshold key: the smallest
//      foreground error (the largest valid error when there is no
//      foreground);
//   2. compact the candidates: valid pixels with fg > 0 or error >= the
//      threshold. Every other pixel ranks after the last foreground pixel,
//      where every weight is 0, so it is never sorted;
//   3. sort the candidates by error descending: an LSD radix sort of the
//      error's bits (11-bit digits; a digit all keys share is skipped). LSD
//      radix is stable and the candidates are compacted in pixel order, so
//      ties keep the pixels' original order: the torch backend's order, and
//      the results match it up to rounding;
//   4. one pass in sorted order: cumulative fg (double), the weight, written
//      to the pixel's slot of the (zeroed) output row.
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "../common/lovasz.h"
#include "common.h"

namespace segfast {
namespace lovasz {
namespace {

using cpu::load_row;

constexpr int kDigitBits = 11;
constexpr int64_t kBuckets = int64_t(1) << kDigitBits;
constexpr int64_t kSmallSort = 48;  // insertion sort below this many candidates

template <typename K> struct KeyOf;
template <> struct KeyOf<float> { using type = uint32_t; static constexpr int bits = 31; };
template <> struct KeyOf<double> { using type = uint64_t; static constexpr int bits = 63; };

// Stable sort of (key, value) pairs by key ascending. Returns true if the result
// ended in (kt, vt), false if in (k, v).
template <typename K, typename I>
bool radix_sort(K* k, I* v, K* kt, I* vt, int64_t n, int key_bits, std::vector<int64_t>& hist) {
  if (n <= kSmallSort) {  // stable insertion sort
    for (int64_t i = 1; i < n; ++i) {
      const K key = k[i];
      const I val = v[i];
      int64_t j = i - 1;
      while (j >= 0 && k[j] > key) { k[j + 1] = k[j]; v[j + 1] = v[j]; --j; }
      k[j + 1] = key;
      v[j + 1] = val;
    }
    return false;
  }
  const int passes = (key_bits + kDigitBits - 1) / kDigitBits;
  hist.assign(size_t(passes * kBuckets), 0);
  for (int64_t i = 0; i < n; ++i) {
    const K key = k[i];
    for (int p = 0; p < passes; ++p) ++hist[p * kBuckets + int64_t((key >> (p * kDigitBits)) & (kBuckets - 1))];
  }
  bool swapped = false;
  for (int p = 0; p < passes; ++p) {
    int64_t* h = hist.data() + p * kBuckets;
    const int shift = p * kDigitBits;
    if (h[(k[0] >> shift) & (kBuckets - 1)] == n) continue;  // every key has this digit
    int64_t sum = 0;
    for (int64_t b = 0; b < kBuckets; ++b) { const int64_t c = h[b]; h[b] = sum; sum += c; }
    for (int64_t i = 0; i < n; ++i) {
      const K key = k[i];
      const int64_t d = h[(key >> shift) & (kBuckets - 1)]++;
      kt[d] = key;
      vt[d] = v[i];
    }
    std::swap(k, kt);
    std::swap(v, vt);
    swapped = !swapped;
  }
  return swapped;
}

template <typename E, typename I>
struct Work {
  using K = typename KeyOf<E>::type;
  std::vector<E> e, f, v;  // one row: errors, fg (-1 where not valid), valid
  std::vector<K> k0, k1;
  std::vector<I> i0, i1;
  std::vector<int64_t> hist;
  explicit Work(int64_t L) : e(L), f(L), v(L), k0(L), k1(L), i0(L), i1(L) {}
};

template <typename E, typename I, typename O>
void one_row(const Rows& a, int64_t g, Work<E, I>& ws) {
  using K = typename KeyOf<E>::type;
  const int64_t S = a.S, L = a.B * a.S;
  const int64_t r1 = g / a.R2, r2 = g % a.R2;
  E* __restrict eb = ws.e.data();
  E* __restrict fb = ws.f.data();
  for (int64_t b = 0; b < a.B; ++b) {
    load_row(eb + b * S, a.e, a.e_dtype, r1 * a.es[0] + r2 * a.es[1] + b * a.es[2], a.es[3], S);
    load_row(fb + b * S, a.f, a.f_dtype, r1 * a.fs[0] + r2 * a.fs[1] + b * a.fs[2], a.fs[3], S);
  }
  if (a.v) {
    E* __restrict vb = ws.v.data();
    for (int64_t b = 0; b < a.B; ++b)
      load_row(vb + b * S, a.v, a.v_dtype, r1 * a.vs[0] + r2 * a.vs[1] + b * a.vs[2], a.vs[3], S);
    for (int64_t j = 0; j < L; ++j) fb[j] = vb[j] != E(0) ? fb[j] : E(-1);
  }
  // T, the threshold key (largest key of a foreground pixel, else smallest valid key)
  double total = 0;
  K fg_key = 0, any_key = ~K(0);
  bool has_fg = false, has_valid = false;
  for (int64_t j = 0; j < L; ++j) {
    const E f = fb[j];
    if (f < E(0)) continue;
    has_valid = true;
    const K key = desc_key(eb[j]);
    any_key = std::min(any_key, key);
    if (f > E(0)) {
      total += double(f);
      fg_key = std::max(fg_key, key);
      has_fg = true;
    }
  }
  O* __restrict out = static_cast<O*>(a.w) + g * L;
  std::memset(out, 0, size_t(L) * sizeof(O));
  if (!has_valid) return;
  const K thr = has_fg ? fg_key : any_key;
  K* __restrict kc = ws.k0.data();
  I* __restrict ic = ws.i0.data();
  int64_t m = 0;
  for (int64_t j = 0; j < L; ++j) {
    const E f = fb[j];
    const K key = desc_key(eb[j]);
    const bool cand = f > E(0) || (f == E(0) && key <= thr);
    kc[m] = key;
    ic[m] = I(j);
    m += cand ? 1 : 0;
  }
  const bool in_tmp = radix_sort(kc, ic, ws.k1.data(), ws.i1.data(), m, KeyOf<E>::bits, ws.hist);
  const I* __restrict order = in_tmp ? ws.i1.data() : ws.i0.data();
  double cum = 0;
  for (int64_t r = 0; r < m; ++r) {
    const I j = order[r];
    const double f = double(fb[j]);
    cum += f;
    out[j] = O(weight<double>(total, cum, double(r + 1), f));
  }
}

template <typename E, typename I, typename O>
void run(const Rows& a, int nt) {
  const int64_t G = a.R1 * a.R2, L = a.B * a.S;
#pragma omp parallel num_threads(nt)
  {
    Work<E, I> ws(L);
#pragma omp for schedule(dynamic, 1)
    for (int64_t g = 0; g < G; ++g) one_row<E, I, O>(a, g, ws);
  }
}

template <typename E, typename O>
void run_idx(const Rows& a, int nt) {
  if (a.B * a.S <= int64_t(UINT32_MAX)) run<E, uint32_t, O>(a, nt);
  else run<E, uint64_t, O>(a, nt);
}

}  // namespace

// Entry point (declared in csrc/bindings.cpp). Checked there: dtypes, sizes.
void lovasz_weights_cpu(const Rows& a, int64_t num_threads) {
  const int64_t G = a.R1 * a.R2;
  if (G == 0 || a.B * a.S == 0) return;
  int nt = num_threads <= 0 ? omp_get_max_threads() : int(num_threads);
  nt = int(std::max<int64_t>(1, std::min<int64_t>(nt, G)));
  const bool e64 = a.e_dtype == kFloat64, w64 = a.w_dtype == kFloat64;
  if (e64) {
    if (w64) run_idx<double, double>(a, nt);
    else run_idx<double, float>(a, nt);
  } else {
    if (w64) run_idx<float, double>(a, nt);
    else run_idx<float, float>(a, nt);
  }
}

}  // namespace lovasz
}  // namespace segfast
