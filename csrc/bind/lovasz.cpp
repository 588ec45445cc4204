// Lovász family entries (the sorted rows' weights): kernels in
// csrc/cpu/lovasz.cpp and csrc/cuda/lovasz.cu. The pattern: bind/view.h.
#include <optional>

#include <pybind11/stl.h>

#include "bind/view.h"
#include "common/lovasz.h"

namespace segfast {
namespace lovasz {
void lovasz_weights_cpu(const Rows& a, int64_t num_threads);
void lovasz_softmax_rows_cpu(const SoftmaxRows& a, int64_t num_threads);
#ifdef SEGFAST_WITH_CUDA
void lovasz_weights_cuda(int64_t G, int64_t L, const int64_t* perm, const void* f, int f_dtype, const void* v,
                         int v_dtype, const double* total, void* w, int w_dtype, uintptr_t stream);
#endif
}  // namespace lovasz

namespace bind {
namespace {

// A contiguous output of n elements (any rank) -> its data.
void* flat_out(const Checker& c, const View& v, const char* name, int64_t n, DTypes dtypes) {
  c.need(v, name, -1, dtypes);
  c.contiguous(v, name);
  c.require(v.numel() == n, std::string(name) + " must have " + std::to_string(n) + " elements, got " +
                                shape_str(v));
  return v.data;
}

}  // namespace

void bind_lovasz(Modules& m) {
  namespace a = pybind11;
  const DTypes fg_dtypes = kFloats | kLabels | kBytes;
  const DTypes valid_dtypes = dtype_bit(kBool) | dtype_bit(kUInt8);
  m.cpu.def(
      "lovasz_weights",
      [=](const View& e, const View& f, const View& v, const View& w, int64_t num_threads) {
        const Checker c("cpu.lovasz_weights", kCpu);
        c.need(e, "errors", 4, kAcc);
        c.need(f, "fg", 4, fg_dtypes);
        lovasz::Rows r{};
        r.R1 = e.size[0]; r.R2 = e.size[1]; r.B = e.size[2]; r.S = e.size[3];
        strided_from(c, e, "errors", e, "errors", r.e, r.e_dtype, r.es);
        strided_from(c, f, "fg", e, "errors", r.f, r.f_dtype, r.fs);
        r.v_dtype = kBool;  // null v: every pixel valid
        if (c.may(v, "valid", 4, valid_dtypes).present())
          strided_from(c, v, "valid", e, "errors", r.v, r.v_dtype, r.vs);
        r.w = flat_out(c, w, "w", e.numel(), kAcc);
        r.w_dtype = w.dtype;
        py::gil_scoped_release nogil;
        lovasz::lovasz_weights_cpu(r, num_threads);
      },
      "Lovász weights (segfast/ops/lovasz.py lovasz_sort_weights) of the segments (r1, r2) of pixels (b, s): "
      "errors, fg, valid (None: all valid) [R1, R2, B, S], any strides; w written contiguous "
      "[R1*R2, B*S] (any shape of that many elements).",
      a::arg("errors"), a::arg("fg"), a::arg("valid"), a::arg("w"), a::arg("num_threads"));
  m.cpu.def(
      "lovasz_softmax_rows",
      [](const View& p, const View& lab, const View& cls, std::optional<double> ignore, const View& ws,
         const View& loss, const View& total, int64_t num_threads) {
        const Checker c("cpu.lovasz_softmax_rows", kCpu);
        c.need(p, "p", 4, kAcc);
        c.need(lab, "labels", 4, kLabels);
        c.need(ws, "ws", 4, kAcc);
        lovasz::SoftmaxRows r{};
        r.R1 = p.size[0]; r.R2 = p.size[1]; r.B = p.size[2]; r.S = p.size[3];
        strided_from(c, p, "p", p, "p", r.p, r.p_dtype, r.ps);
        strided_from(c, lab, "labels", p, "p", r.lab, r.lab_dtype, r.ls);
        c.need(cls, "cls", 1, dtype_bit(kInt64));
        c.contiguous(cls, "cls");
        c.same(cls, "cls", 0, p, "p", 1);
        r.cls = cls.ptr<const int64_t>();
        r.has_ignore = ignore.has_value();
        r.ignore_value = ignore.value_or(0.0);
        strided_from(c, ws, "ws", p, "p", r.ws, r.w_dtype, r.wss);
        r.loss = flat_out(c, loss, "loss", r.R1 * r.R2, DTypes(dtype_bit(ws.dtype)));
        r.total = flat_out(c, total, "total", r.R1 * r.R2, DTypes(dtype_bit(ws.dtype)));
        py::gil_scoped_release nogil;
        lovasz::lovasz_softmax_rows_cpu(r, num_threads);
      },
      "Fused Lovász-softmax rows (csrc/common/lovasz.h SoftmaxRows): from probabilities p and labels "
      "[R1, R2, B, S] (any strides), per segment (r1, r2) = class cls[r2]: ws = dLoss/dp (signed weights, "
      "[R1, R2, B, S], any strides), loss and total [R1*R2] contiguous in ws's dtype.",
      a::arg("p"), a::arg("labels"), a::arg("cls"), a::arg("ignore"), a::arg("ws"), a::arg("loss"),
      a::arg("total"), a::arg("num_threads"));
#ifdef SEGFAST_WITH_CUDA
  m.cuda.def(
      "lovasz_weights_sorted",
      [=](const View& perm, const View& f, const View& v, const View& total, const View& w, uintptr_t stream) {
        const Checker c("cuda.lovasz_weights_sorted", kCudaDevice);
        c.need(perm, "perm", 2, dtype_bit(kInt64));
        c.contiguous(perm, "perm");
        const int64_t G = perm.size[0], L = perm.size[1];
        flat_out(c, f, "fg", G * L, fg_dtypes);
        if (v.present()) flat_out(c, v, "valid", G * L, valid_dtypes);
        flat_out(c, total, "total", G, dtype_bit(kFloat64));
        flat_out(c, w, "w", G * L, kAcc);
        py::gil_scoped_release nogil;
        lovasz::lovasz_weights_cuda(G, L, perm.ptr<const int64_t>(), f.data, f.dtype, v.data,
                                    v.present() ? v.dtype : int(kUInt8), total.ptr<const double>(), w.data,
                                    w.dtype, stream);
      },
      "Lovász weights of G rows of L pixels from perm [G, L] int64 (flat indices sorting each row by error "
      "descending, invalid pixels last), contiguous fg / valid (None: all valid) of G*L elements and total "
      "[G] float64 (the sum of valid fg); writes w (G*L elements, contiguous) through perm.",
      a::arg("perm"), a::arg("fg"), a::arg("valid"), a::arg("total"), a::arg("w"), a::arg("stream"));
#endif
}

}  // namespace bind
}  // namespace segfast
