// Lovász family, CPU kernels (C++ / OpenMP): the sort + weights step of
// segfast/ops/lovasz.py for every segment of a batch. Math in
// csrc/common/lovasz.h. Two entry points share the per-row work:
//   lovasz_weights_cpu       errors, fg, valid tensors -> w (lovasz_sort_weights);
//   lovasz_softmax_rows_cpu  probabilities + labels -> per-row loss, T and the
//                            signed weights dLoss/dp (the fused Lovász-softmax:
//                            no error / fg / valid tensors, no e·w pass in torch).
//
// One segment (row) per task, rows spread over the threads (dynamic: rows
// differ in how many pixels must be sorted). Per row, in per-thread buffers:
//   1. load the errors and fg (-1 where not valid) as the compute type (any
//      dtype and strides); the sort keys, T = Σ fg over valid pixels and the
//      threshold key: the smallest foreground error (the largest valid error
//      when there is no foreground), as branch-free reductions;
//   2. compact the candidates: valid pixels with fg > 0 or error >= the
//      threshold. Every other pixel ranks after the last foreground pixel,
//      where every weight is 0, so it is never sorted;
//   3. sort the candidates by error descending: an LSD radix sort of the
//      error's bits (11-bit digits; a digit all keys share is skipped). LSD
//      radix is stable and the candidates are compacted in pixel order, so
//      ties keep the pixels' original order: the torch backend's order, and
//      the results match it up to rounding;
//   4. one pass in sorted order: cumulative fg (double), the weight (and the
//      loss Σ e·w), written to the pixel's slot of the (zeroed) output row.
//
// Not done: splitting one long row over threads (the hinge with
// per_image=False is a single row and runs on one thread).
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <vector>

#include "../common/lovasz.h"
#include "common.h"

namespace segfast {
namespace lovasz {
namespace {

using cpu::load_row;

constexpr int kDigitBits = 11;
constexpr int64_t kSmallSort = 48;  // insertion sort below this many candidates

template <typename K> struct KeyOf;
template <> struct KeyOf<float> { using type = uint32_t; static constexpr int bits = 31; };
template <> struct KeyOf<double> { using type = uint64_t; static constexpr int bits = 63; };

// Stable sort of (key, value) pairs by key ascending. Returns true if the result
// ended in (kt, vt), false if in (k, v).
template <int DIGIT, typename K, typename I>
bool radix_passes(K* k, I* v, K* kt, I* vt, int64_t n, int key_bits, std::vector<int64_t>& hist) {
  constexpr int64_t kB = int64_t(1) << DIGIT;
  const int passes = (key_bits + DIGIT - 1) / DIGIT;
  hist.assign(size_t(passes * kB), 0);
  for (int64_t i = 0; i < n; ++i) {
    const K key = k[i];
    for (int p = 0; p < passes; ++p) ++hist[p * kB + int64_t((key >> (p * DIGIT)) & (kB - 1))];
  }
  bool swapped = false;
  for (int p = 0; p < passes; ++p) {
    int64_t* h = hist.data() + p * kB;
    const int shift = p * DIGIT;
    if (h[(k[0] >> shift) & (kB - 1)] == n) continue;  // every key has this digit
    int64_t sum = 0;
    for (int64_t b = 0; b < kB; ++b) { const int64_t c = h[b]; h[b] = sum; sum += c; }
    for (int64_t i = 0; i < n; ++i) {
      const K key = k[i];
      const int64_t d = h[(key >> shift) & (kB - 1)]++;
      kt[d] = key;
      vt[d] = v[i];
    }
    std::swap(k, kt);
    std::swap(v, vt);
    swapped = !swapped;
  }
  return swapped;
}

// Stable sort of (key, value) pairs by key ascending (LSD radix; insertion sort
// when short). Returns true if the result ended in (kt, vt), false if in (k, v).
// 11-bit digits: 3 passes for float32 keys (8-bit digits, 4 passes, measured
// slower even on rows of 131K candidates).
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
  return radix_passes<kDigitBits>(k, v, kt, vt, n, key_bits, hist);
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

// Where a row's outputs go: w at out + b*osb + s*oss, optionally signed
// (-w on foreground: dLoss/dp of the softmax errors), and the row's loss and T.
template <typename O>
struct RowOut {
  O* out;
  int64_t osb, oss;
  bool is_signed;
  O* loss;   // or null
  O* total;  // or null
};

// Steps 1 (after the load) to 4 on the row in ws.e / ws.f (fg < 0: not valid).
template <typename E, typename I, typename O>
void sort_and_weigh(Work<E, I>& ws, int64_t B, int64_t S, const RowOut<O>& ro) {
  using K = typename KeyOf<E>::type;
  const int64_t L = B * S;
  const E* __restrict eb = ws.e.data();
  const E* __restrict fb = ws.f.data();
  const bool flat = ro.osb == S * ro.oss;
  O* __restrict out = ro.out;
  if (flat && ro.oss == 1) {
    std::memset(out, 0, size_t(L) * sizeof(O));
  } else {
    for (int64_t b = 0; b < B; ++b)
      for (int64_t s = 0; s < S; ++s) out[b * ro.osb + s * ro.oss] = O(0);
  }
  // Keys once (into k1, which the radix sort uses as scratch only later); T and the
  // threshold key (largest key of a foreground pixel, else smallest valid key) as
  // branch-free reductions.
  K* __restrict kb = ws.k1.data();
  double total = 0;
  K fg_key = 0, any_key = ~K(0);
  int64_t n_fg = 0, n_valid = 0;
#pragma omp simd reduction(+ : total, n_fg, n_valid) reduction(max : fg_key) reduction(min : any_key)
  for (int64_t j = 0; j < L; ++j) {
    const E f = fb[j];
    const K key = desc_key(eb[j]);
    kb[j] = key;
    // masks and products, not branches: fg is unpredictable pixel to pixel
    const K pos = K(f > E(0)), valid = K(f >= E(0));
    total += double(f) * double(pos);
    n_fg += int64_t(pos);
    n_valid += int64_t(valid);
    fg_key = std::max(fg_key, key & (K(0) - pos));
    any_key = std::min(any_key, key | (valid - K(1)));
  }
  double loss = 0;
  if (n_valid > 0) {
    const K thr = n_fg > 0 ? fg_key : any_key;
    K* __restrict kc = ws.k0.data();
    I* __restrict ic = ws.i0.data();
    int64_t m = 0;
    for (int64_t j = 0; j < L; ++j) {
      const E f = fb[j];
      const K key = kb[j];
      const int64_t cand = int64_t(f > E(0)) | (int64_t(f == E(0)) & int64_t(key <= thr));
      kc[m] = key;
      ic[m] = I(j);
      m += cand;
    }
    const bool in_tmp = radix_sort(kc, ic, ws.k1.data(), ws.i1.data(), m, KeyOf<E>::bits, ws.hist);
    const I* __restrict order = in_tmp ? ws.i1.data() : ws.i0.data();
    double cum = 0;
    for (int64_t r = 0; r < m; ++r) {
      const I j = order[r];
      const double f = double(fb[j]);
      cum += f;
      const double w = weight<double>(total, cum, double(r + 1), f);
      loss += double(eb[j]) * w;
      const int64_t o = flat ? int64_t(j) * ro.oss : int64_t(j / S) * ro.osb + int64_t(j % S) * ro.oss;
      out[o] = O(ro.is_signed && f > 0 ? -w : w);
    }
  }
  if (ro.loss) *ro.loss = O(loss);
  if (ro.total) *ro.total = O(total);
}

// Generic rows: errors, fg and valid tensors.
template <typename E, typename I, typename O>
void one_row(const Rows& a, int64_t g, Work<E, I>& ws) {
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
  RowOut<O> ro{static_cast<O*>(a.w) + g * L, S, 1, false, nullptr, nullptr};
  sort_and_weigh<E, I, O>(ws, a.B, S, ro);
}

// Softmax rows: errors and fg from probabilities and labels (step 1 fused).
template <typename E, typename I, typename O>
void one_row(const SoftmaxRows& a, int64_t g, Work<E, I>& ws) {
  const int64_t S = a.S;
  const int64_t r1 = g / a.R2, r2 = g % a.R2;
  E* __restrict eb = ws.e.data();
  E* __restrict fb = ws.f.data();
  // labels compared as E: exact for labels and ignore values below 2^24 in size
  const E cls = E(a.cls[r2]);
  const E ign = E(a.ignore_value);
  const bool has_ign = a.has_ignore;
  for (int64_t b = 0; b < a.B; ++b) {
    E* __restrict e = eb + b * S;
    E* __restrict f = fb + b * S;
    load_row(e, a.p, a.p_dtype, r1 * a.ps[0] + r2 * a.ps[1] + b * a.ps[2], a.ps[3], S);
    load_row(f, a.lab, a.lab_dtype, r1 * a.ls[0] + r2 * a.ls[1] + b * a.ls[2], a.ls[3], S);
#pragma omp simd
    for (int64_t s = 0; s < S; ++s) {
      const E lab = f[s];
      const bool fg = lab == cls;
      e[s] = fg ? E(1) - e[s] : e[s];  // |fg - p|, as the torch backend computes it
      f[s] = (has_ign && lab == ign) ? E(-1) : (fg ? E(1) : E(0));
    }
  }
  O* wsp = static_cast<O*>(a.ws) + r1 * a.wss[0] + r2 * a.wss[1];
  RowOut<O> ro{wsp, a.wss[2], a.wss[3], true, static_cast<O*>(a.loss) + g,
               static_cast<O*>(a.total) + g};
  // sort_and_weigh addresses (b, s) as b*osb + s*oss from the row's base
  sort_and_weigh<E, I, O>(ws, a.B, S, ro);
}

template <typename E, typename I, typename O, typename A>
void run(const A& a, int nt) {
  const int64_t G = a.R1 * a.R2, L = a.B * a.S;
  bool out_of_memory = false;
#pragma omp parallel num_threads(nt)
  {
    // An exception must not leave the parallel region (std::terminate): a failed
    // allocation is reported after it, as a MemoryError in Python.
    std::unique_ptr<Work<E, I>> ws;
    try {
      ws.reset(new Work<E, I>(L));
    } catch (const std::bad_alloc&) {
#pragma omp atomic write
      out_of_memory = true;
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t g = 0; g < G; ++g)
      if (ws) one_row<E, I, O>(a, g, *ws);
  }
  if (out_of_memory) throw std::bad_alloc();
}

template <typename A>
void dispatch(const A& a, int e_dtype, int w_dtype, int64_t num_threads) {
  const int64_t G = a.R1 * a.R2, L = a.B * a.S;
  if (G == 0 || L == 0) return;
  int nt = num_threads <= 0 ? omp_get_max_threads() : int(num_threads);
  nt = int(std::max<int64_t>(1, std::min<int64_t>(nt, G)));
  const bool small = L <= int64_t(UINT32_MAX);
  const bool e64 = e_dtype == kFloat64, w64 = w_dtype == kFloat64;
#define SEGFAST_LOVASZ_RUN(E, O) \
  (small ? run<E, uint32_t, O>(a, nt) : run<E, uint64_t, O>(a, nt))
  if (e64) {
    if (w64) SEGFAST_LOVASZ_RUN(double, double);
    else SEGFAST_LOVASZ_RUN(double, float);
  } else {
    if (w64) SEGFAST_LOVASZ_RUN(float, double);
    else SEGFAST_LOVASZ_RUN(float, float);
  }
#undef SEGFAST_LOVASZ_RUN
}

}  // namespace

// Entry points (declared in csrc/bindings.cpp). Checked there: dtypes, sizes.
void lovasz_weights_cpu(const Rows& a, int64_t num_threads) {
  dispatch(a, a.e_dtype, a.w_dtype, num_threads);
}

void lovasz_softmax_rows_cpu(const SoftmaxRows& a, int64_t num_threads) {
  dispatch(a, a.p_dtype, a.w_dtype, num_threads);
}

}  // namespace lovasz
}  // namespace segfast
