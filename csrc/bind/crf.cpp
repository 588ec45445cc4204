// Dense CRF family entries: the CPU mean field and lattice
// (csrc/cpu/crf.cpp) and the CUDA lattice steps (csrc/cuda/crf.cu). The
// pattern: bind/view.h.
#include <cmath>
#include <vector>

#include <pybind11/stl.h>

#include "bind/view.h"
#include "common/crf.h"

namespace segfast {
namespace crf {
void dense_crf_cpu(const void* U, int u_dtype, int64_t usB, int64_t usC, int64_t usS, const void* img, int im_dtype,
                   int64_t isB, int64_t isC, int64_t isS, int64_t B, int64_t C, int64_t H, int64_t W,
                   const std::vector<double>& kparams, const std::vector<uintptr_t>& compat_ptrs,
                   int64_t iterations, int normalization, bool self_message, float* Qout, int64_t num_threads);
int64_t crf_lattice_cpu(const float* feat, int64_t N, int d, int32_t* offset, float* weight, int32_t* blur,
                        int64_t cap, int64_t num_threads);
#ifdef SEGFAST_WITH_CUDA
void crf_splat_cuda(const float* q, const int32_t* off, const float* w, float* grid, int64_t P, int64_t C, int D1,
                    uintptr_t stream);
void crf_blur_cuda(const float* src, float* dst, const int32_t* nb, int64_t M, int64_t C, uintptr_t stream);
void crf_update_cuda(const float* U, float* Q, const float* extra, const int32_t* off1, const float* w1,
                     const float* grid1, int D1a, const int32_t* off2, const float* w2, const float* grid2, int D1b,
                     int nk, int64_t P, int64_t C, uintptr_t stream);
#endif
}  // namespace crf

namespace bind {
namespace {

constexpr DTypes kF32 = dtype_bit(kFloat32);
constexpr DTypes kI32 = dtype_bit(kInt32);

// A contiguous [rows, cols] view; cols < 0: any.
const View& rows_of(const Checker& c, const View& v, const char* name, DTypes dtypes, int64_t rows, int64_t cols) {
  c.need(v, name, 2, dtypes);
  c.contiguous(v, name);
  c.require((rows < 0 || v.size[0] == rows) && (cols < 0 || v.size[1] == cols),
            std::string(name) + " has the wrong shape " + shape_str(v));
  return v;
}

}  // namespace

void bind_crf(Modules& m) {
  namespace a = pybind11;
  m.cpu.def(
      "dense_crf",
      [](const View& u, const View& im, int64_t H, int64_t W, const std::vector<double>& kparams, const View& mat,
         int64_t iterations, int64_t normalization, bool self_message, const View& out, int64_t num_threads) {
        const Checker c("cpu.dense_crf", kCpu);
        c.need(u, "u", 3, kFloats);
        c.need(im, "image", 3, kFloats | dtype_bit(kUInt8));
        const int64_t B = u.size[0], C = u.size[1];
        c.same(im, "image", 0, u, "u", 0);
        c.same(im, "image", 2, u, "u", 2);
        c.require(im.size[1] == 3, "image must be [B, 3, H*W], got " + shape_str(im));
        c.require(H >= 0 && W >= 0 && H * W == u.size[2], "u must be [B, C, H*W]");
        c.require(C >= 1 && iterations >= 0, "C must be >= 1 and iterations >= 0");
        c.require(H * W * 6 < (int64_t(1) << 31), "image too large for int32 lattices");
        c.require(normalization >= 0 && normalization <= 3, "bad normalization code");
        c.require(kparams.size() % 8 == 0, "8 parameters per kernel");
        const size_t K = kparams.size() / 8;
        c.need(mat, "mat", 3, kF32);
        c.contiguous(mat, "mat");
        c.require(mat.size[0] == int64_t(K) && mat.size[1] == C && mat.size[2] == C,
                  "mat must be [kernels, C, C], got " + shape_str(mat));
        std::vector<double> kp;
        std::vector<uintptr_t> compat;
        for (size_t k = 0; k < K; ++k) {
          for (size_t i = 0; i < 7; ++i) {
            const double v = kparams[8 * k + i];
            c.require(std::isfinite(v), "kernel parameters must be finite");
            c.require(i >= 5 || v > 0, "kernel scales must be > 0");
            kp.push_back(v);
          }
          compat.push_back(kparams[8 * k + 7] ? reinterpret_cast<uintptr_t>(mat.ptr<float>() + k * C * C) : 0);
        }
        c.need(out, "out", 4, kF32);
        c.contiguous(out, "out");
        c.require(out.size[0] == B && out.size[1] == C && out.size[2] == H && out.size[3] == W,
                  "out must be [B, C, H, W], got " + shape_str(out));
        py::gil_scoped_release nogil;
        crf::dense_crf_cpu(u.data, u.dtype, u.stride[0], u.stride[1], u.stride[2], im.data, im.dtype, im.stride[0],
                           im.stride[1], im.stride[2], B, C, H, W, kp, compat, iterations, int(normalization),
                           self_message, out.ptr<float>(), num_threads);
      },
      "Dense CRF mean field (segfast/ops/crf.py): energies u [B, C, H*W] (any strides), image [B, 3, H*W] "
      "(uint8/float, 0-255), kparams 8 per kernel (sx, sy, sr, sg, sb, bilateral, Potts weight, uses mat[k]), "
      "mat [kernels, C, C] float32 contiguous symmetric compatibilities; writes out [B, C, H, W] float32 "
      "contiguous.",
      a::arg("u"), a::arg("image"), a::arg("H"), a::arg("W"), a::arg("kparams"), a::arg("mat"),
      a::arg("iterations"), a::arg("normalization"), a::arg("self_message"), a::arg("out"), a::arg("num_threads"));
  m.cpu.def(
      "crf_lattice",
      [](const View& feat, const View& offset, const View& weight, const View& blur, int64_t num_threads) {
        const Checker c("cpu.crf_lattice", kCpu);
        rows_of(c, feat, "features", kF32, -1, -1);
        const int64_t N = feat.size[0], d = feat.size[1];
        c.require(d >= 1 && d <= crf::kMaxD, "features must have 1 to 8 columns");
        c.require(N * (d + 1) < (int64_t(1) << 31), "too many pixels for an int32 lattice");
        rows_of(c, offset, "offset", kI32, N, d + 1);
        rows_of(c, weight, "weight", kF32, N, d + 1);
        c.need(blur, "blur", 1, kI32);
        c.contiguous(blur, "blur");
        const int64_t cap = blur.size[0] / ((d + 1) * 2);
        py::gil_scoped_release nogil;
        return crf::crf_lattice_cpu(feat.ptr<const float>(), N, int(d), offset.ptr<int32_t>(), weight.ptr<float>(),
                                    blur.ptr<int32_t>(), cap, num_threads);
      },
      "Permutohedral lattice of float32 features [N, d]: writes offset [N, d+1] int32, weight [N, d+1] "
      "float32, blur [(d+1) * cap * 2] int32 (cap points); returns M (-M-1 if M > cap).",
      a::arg("features"), a::arg("offset"), a::arg("weight"), a::arg("blur"), a::arg("num_threads"));
#ifdef SEGFAST_WITH_CUDA
  m.cuda.def(
      "crf_splat",
      [](const View& q, const View& off, const View& w, const View& grid, uintptr_t stream) {
        const Checker c("cuda.crf_splat", kCudaDevice);
        rows_of(c, q, "q", kF32, -1, -1);
        const int64_t P = q.size[0], C = q.size[1];
        rows_of(c, off, "off", kI32, P, -1);
        const int64_t D1 = off.size[1];
        c.require(D1 >= 1 && D1 <= crf::kMaxD + 1, "off must be [P, d+1], d <= 8");
        rows_of(c, w, "w", kF32, P, D1);
        rows_of(c, grid, "grid", kF32, -1, C);
        py::gil_scoped_release nogil;
        crf::crf_splat_cuda(q.ptr<const float>(), off.ptr<const int32_t>(), w.ptr<const float>(), grid.ptr<float>(),
                            P, C, int(D1), stream);
      },
      "CRF lattice splat: grid[off[i, r], c] += w[i, r] q[i, c]; q [P, C], off and w [P, d+1], grid [M+1, C].",
      a::arg("q"), a::arg("off"), a::arg("w"), a::arg("grid"), a::arg("stream"));
  m.cuda.def(
      "crf_blur",
      [](const View& src, const View& dst, const View& nb, uintptr_t stream) {
        const Checker c("cuda.crf_blur", kCudaDevice);
        rows_of(c, src, "src", kF32, -1, -1);
        rows_of(c, dst, "dst", kF32, src.size[0], src.size[1]);
        rows_of(c, nb, "nb", kI32, -1, 2);
        c.require(nb.size[0] < src.size[0], "nb must have fewer rows than src");
        py::gil_scoped_release nogil;
        crf::crf_blur_cuda(src.ptr<const float>(), dst.ptr<float>(), nb.ptr<const int32_t>(), nb.size[0],
                           src.size[1], stream);
      },
      "CRF lattice blur along one direction: dst[p] = src[p] + (src[nb[p, 0]] + src[nb[p, 1]]) / 2 for the M "
      "rows of nb [M, 2]; src, dst [M+1, C].",
      a::arg("src"), a::arg("dst"), a::arg("nb"), a::arg("stream"));
  m.cuda.def(
      "crf_update",
      [](const View& U, const View& Q, const View& extra, const View& off1, const View& w1, const View& grid1,
         const View& off2, const View& w2, const View& grid2, uintptr_t stream) {
        const Checker c("cuda.crf_update", kCudaDevice);
        rows_of(c, U, "U", kF32, -1, -1);
        const int64_t P = U.size[0], C = U.size[1];
        rows_of(c, Q, "Q", kF32, P, C);
        if (extra.present()) rows_of(c, extra, "extra", kF32, P, C);
        int nk = 0;
        for (const View* run : {&off1, &off2}) {
          const bool first = run == &off1;
          const View &w = first ? w1 : w2, &grid = first ? grid1 : grid2;
          if (!run->present()) continue;
          c.require(first || off1.present(), "off2 needs off1");
          rows_of(c, *run, first ? "off1" : "off2", kI32, P, -1);
          rows_of(c, w, first ? "w1" : "w2", kF32, P, run->size[1]);
          rows_of(c, grid, first ? "grid1" : "grid2", kF32, -1, C);
          ++nk;
        }
        const int D1a = off1.present() ? int(off1.size[1]) : 1, D1b = off2.present() ? int(off2.size[1]) : 1;
        py::gil_scoped_release nogil;
        crf::crf_update_cuda(U.ptr<const float>(), Q.ptr<float>(), extra.ptr<const float>(),
                             off1.ptr<const int32_t>(), w1.ptr<const float>(), grid1.ptr<const float>(), D1a,
                             off2.ptr<const int32_t>(), w2.ptr<const float>(), grid2.ptr<const float>(), D1b, nk, P,
                             C, stream);
      },
      "CRF fused slice + softmax: Q = softmax(-U + slice(run 1) + slice(run 2) + extra), [P, C] each; a run "
      "is (off [P, d+1] int32, w [P, d+1], grid [M+1, C]) or Nones.",
      a::arg("U"), a::arg("Q"), a::arg("extra"), a::arg("off1"), a::arg("w1"), a::arg("grid1"), a::arg("off2"),
      a::arg("w2"), a::arg("grid2"), a::arg("stream"));
#endif
}

}  // namespace bind
}  // namespace segfast
