// The typed interface between Python and the kernels. A tensor crosses the
// binding as a DLPack capsule (torch.utils.dlpack.to_dlpack, made by
// segfast.backends.view: a published ABI, declared below, so the module links
// no libtorch and one binary serves every PyTorch version). The type caster at
// the end of this file reads the capsule's DLTensor without consuming it (the
// capsule keeps its tensor alive for the call, and its own destructor frees
// it) and yields a View: data pointer, dtype code (csrc/common/dtypes.h),
// sizes, element strides, device. None is an absent optional tensor.
//
// Conversion never fails on its own: a malformed argument (not a capsule, a
// dtype or device the kernels do not know, a rank above kMaxRank) becomes a
// View that records why, and the entry's Checker reports it with the entry's
// and the argument's names, as every other check of a tensor argument.
//
// How to add an entry (one pattern for every family; csrc/bind/metrics.cpp is
// the smallest example):
//   1. csrc/bind/<family>.cpp defines `void bind_<family>(Modules& m)` and
//      registers `m.cpu.def(...)`; CUDA entries go in the same function under
//      `#ifdef SEGFAST_WITH_CUDA` as `m.cuda.def(...)`. The name carries no
//      backend suffix: Python calls segfast._C.cpu.<name> or, through
//      backends.cuda_launch, <_C or _C_emu>.cuda.<name>.
//   2. Tensors are `const View&` parameters, checked first thing:
//        const Checker c("cpu.region_stats", kCpu);  // kCudaDevice in CUDA entries
//        c.need(x, "x", 3, kFloats);                 // required: rank 3, a float dtype
//        c.may(conf, "conf", 2, DTypes(dtype_bit(kInt64)));  // optional: None is allowed
//      Sizes come from the views (N = x.size[0]); sizes two views share are
//      checked equal (c.same), layouts a kernel assumes are checked
//      (c.contiguous). Errors are ValueErrors "segfast._C <entry>: <arg> ...".
//   3. The last argument is the launch: num_threads (cpu) or the stream (cuda).
//   4. Release the GIL around the kernel call (py::gil_scoped_release).
//   5. Add the family to SEGFAST_FAMILIES in csrc/bindings.cpp.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <initializer_list>
#include <string>

#include "common/dtypes.h"

namespace segfast {
namespace bind {

namespace py = pybind11;

// ---- the DLPack ABI (dlpack.h; the unversioned "dltensor" capsule and the
// versioned "dltensor_versioned" one of DLPack 1.0) --------------------------
namespace dl {
struct Device {
  int32_t device_type, device_id;
};
struct DataType {
  uint8_t code, bits;
  uint16_t lanes;
};
struct Tensor {
  void* data;
  Device device;
  int32_t ndim;
  DataType dtype;
  int64_t* shape;
  int64_t* strides;  // element strides; null: compact row-major
  uint64_t byte_offset;
};
struct ManagedTensor {
  Tensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(ManagedTensor*);
};
struct Version {
  uint32_t major, minor;
};
struct ManagedTensorVersioned {
  Version version;
  void* manager_ctx;
  void (*deleter)(ManagedTensorVersioned*);
  uint64_t flags;
  Tensor dl_tensor;
};
enum DeviceType : int32_t { kDLCPU = 1, kDLCUDA = 2, kDLCUDAHost = 3, kDLCUDAManaged = 13 };
enum TypeCode : uint8_t { kDLInt = 0, kDLUInt = 1, kDLFloat = 2, kDLBfloat = 4, kDLBool = 6 };
}  // namespace dl

constexpr int kMaxRank = 6;
enum Device : int32_t { kCpu = 0, kCuda = 1 };
// The device the `cuda` entries' views live on: the GPU, or the CPU for the
// emulator module (segfast._C_emu runs the CUDA kernels on CPU tensors).
#ifdef SEGFAST_CUDA_EMU
constexpr Device kCudaDevice = kCpu;
#else
constexpr Device kCudaDevice = kCuda;
#endif

// A set of dtype codes (bit i: code i).
using DTypes = uint32_t;
constexpr DTypes dtype_bit(int code) { return DTypes(1) << code; }
constexpr DTypes kFloats = dtype_bit(kFloat32) | dtype_bit(kFloat16) | dtype_bit(kBFloat16) | dtype_bit(kFloat64);
constexpr DTypes kAcc = dtype_bit(kFloat32) | dtype_bit(kFloat64);  // accumulation dtypes
constexpr DTypes kLabels = dtype_bit(kUInt8) | dtype_bit(kInt32) | dtype_bit(kInt64);
constexpr DTypes kBytes = dtype_bit(kUInt8) | dtype_bit(kBool);

struct View {
  enum State : int8_t { kAbsent, kOk, kNotCapsule, kUnknownDType, kUnknownDevice, kTooManyDims };
  void* data = nullptr;
  int32_t dtype = -1;
  int32_t ndim = 0;
  int32_t device = kCpu;
  State state = kAbsent;
  const char* got = nullptr;  // what was passed when not a capsule (its type's name)
  int64_t size[kMaxRank] = {};
  int64_t stride[kMaxRank] = {};

  bool present() const { return state != kAbsent; }
  template <class T = void>
  T* ptr() const { return static_cast<T*>(data); }  // nullptr when absent
  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= size[i];
    return n;
  }
  bool contiguous() const {  // row-major, as torch's is_contiguous (size-1 dims: any stride; empty: any)
    if (numel() == 0) return true;
    int64_t expect = 1;
    for (int i = ndim - 1; i >= 0; --i) {
      if (size[i] != 1 && stride[i] != expect) return false;
      expect *= size[i];
    }
    return true;
  }
};

// The View of a DLPack capsule (or None), as the type caster makes it.
View view_of(PyObject* o);

std::string shape_str(const View& v);

// Checks of an entry's arguments; errors (ValueError) read "segfast._C <entry>: <arg> ...".
class Checker {
 public:
  Checker(const char* entry, Device device) : entry_(entry), device_(device) {}
  // v must be present, of rank `rank` (-1: any), a dtype in `dtypes`, on the entry's device.
  const View& need(const View& v, const char* name, int rank, DTypes dtypes) const {
    if (v.state != View::kOk || (rank >= 0 && v.ndim != rank) || !(dtypes & dtype_bit(v.dtype)) ||
        v.device != device_)
      explain(v, name, rank, dtypes);
    return v;
  }
  // As need, but None (absent) is allowed.
  const View& may(const View& v, const char* name, int rank, DTypes dtypes) const {
    return v.present() ? need(v, name, rank, dtypes) : v;
  }
  // a.size[i] == b.size[j]
  void same(const View& a, const char* an, int i, const View& b, const char* bn, int j) const {
    if (a.size[i] != b.size[j]) differ(a, an, i, b, bn, j);
  }
  // v's sizes are exactly `sizes` (n of them)
  void shape(const View& v, const char* name, std::initializer_list<int64_t> sizes) const;
  // v contiguous (row-major, as torch's is_contiguous)
  void contiguous(const View& v, const char* name) const {
    if (!v.contiguous()) fail(std::string(name) + " must be contiguous, got shape " + shape_str(v) + " strides " +
                              strides_str(v));
  }
  // a scalar argument's condition
  void require(bool ok, const char* what) const {
    if (!ok) fail(what);
  }
  void require(bool ok, const std::string& what) const {
    if (!ok) fail(what);
  }
  [[noreturn]] void fail(const std::string& what) const;

 private:
  [[noreturn]] void explain(const View& v, const char* name, int rank, DTypes dtypes) const;
  [[noreturn]] void differ(const View& a, const char* an, int i, const View& b, const char* bn, int j) const;
  static std::string strides_str(const View& v);
  const char* entry_;
  Device device_;
};

// A tensor argument as a kernel's struct holds it: data pointer, dtype code and
// its first R element strides; v's first R sizes are checked equal to `like`'s
// (the view that sets the sizes; v itself skips the check).
template <class P, size_t R>
void strided_from(const Checker& c, const View& v, const char* name, const View& like, const char* like_name,
                  P*& data, int& dtype, int64_t (&stride)[R]) {
  for (size_t i = 0; i < R; ++i) {
    if (&v != &like) c.same(v, name, int(i), like, like_name, int(i));
    stride[i] = v.stride[i];
  }
  data = static_cast<P*>(v.data);
  dtype = v.dtype;
}

// The modules the families register into: segfast._C.cpu and, when built
// with CUDA (or as the emulator), segfast._C.cuda.
struct Modules {
  py::module_ cpu;
  py::module_ cuda;  // a null handle without CUDA
};

}  // namespace bind
}  // namespace segfast

namespace pybind11 {
namespace detail {

// A DLPack capsule or None -> View (never fails: see view_of).
template <>
struct type_caster<segfast::bind::View> {
  PYBIND11_TYPE_CASTER(segfast::bind::View, const_name("DLPackCapsule | None"));

  bool load(handle src, bool) {
    value = segfast::bind::view_of(src.ptr());
    return true;
  }

  static handle cast(const segfast::bind::View&, return_value_policy, handle) {
    throw type_error("segfast._C: a View is not returned to Python");
  }
};

}  // namespace detail
}  // namespace pybind11
