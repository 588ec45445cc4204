// DLPack capsules -> Views, and the checks of the views (view.h).
#include "bind/view.h"

#include <cstring>
#include <stdexcept>

namespace segfast {
namespace bind {

namespace {

const char* const kDTypeNames[] = {"float32", "float16", "bfloat16", "float64", "uint8", "int32", "int64", "bool"};

// The dtype code of a DLPack data type; -1 for one the kernels do not take.
int dtype_code(dl::DataType t) {
  if (t.lanes != 1) return -1;
  switch (t.code) {
    case dl::kDLFloat:
      return t.bits == 32 ? kFloat32 : t.bits == 16 ? kFloat16 : t.bits == 64 ? kFloat64 : -1;
    case dl::kDLBfloat: return t.bits == 16 ? kBFloat16 : -1;
    case dl::kDLUInt: return t.bits == 8 ? kUInt8 : -1;
    case dl::kDLInt: return t.bits == 32 ? kInt32 : t.bits == 64 ? kInt64 : -1;
    case dl::kDLBool: return t.bits == 8 ? kBool : -1;
    default: return -1;
  }
}

std::string dtype_names(DTypes dtypes) {
  std::string s;
  for (int i = 0; i <= kBool; ++i)
    if (dtypes & dtype_bit(i)) s += (s.empty() ? "" : "/") + std::string(kDTypeNames[i]);
  return s;
}

}  // namespace

View view_of(PyObject* o) {
  View v;
  if (o == Py_None) return v;
  const dl::Tensor* t = nullptr;
  if (PyCapsule_CheckExact(o)) {
    const char* name = PyCapsule_GetName(o);
    if (name && name[0] == 'd' && std::strcmp(name, "dltensor") == 0)
      t = &static_cast<dl::ManagedTensor*>(PyCapsule_GetPointer(o, name))->dl_tensor;
    else if (name && std::strcmp(name, "dltensor_versioned") == 0)
      t = &static_cast<dl::ManagedTensorVersioned*>(PyCapsule_GetPointer(o, name))->dl_tensor;
  }
  if (t == nullptr) {
    v.state = View::kNotCapsule;
    v.got = PyCapsule_CheckExact(o) ? "a capsule that is not an unused DLPack tensor" : Py_TYPE(o)->tp_name;
    return v;
  }
  v.dtype = dtype_code(t->dtype);
  if (v.dtype < 0) {
    v.state = View::kUnknownDType;
    return v;
  }
  switch (t->device.device_type) {
    case dl::kDLCPU: v.device = kCpu; break;
    case dl::kDLCUDA: case dl::kDLCUDAManaged: v.device = kCuda; break;
    default: v.state = View::kUnknownDevice; return v;
  }
  if (t->ndim < 0 || t->ndim > kMaxRank) {
    v.state = View::kTooManyDims;
    v.ndim = t->ndim;
    return v;
  }
  v.ndim = t->ndim;
  v.data = static_cast<char*>(t->data) + t->byte_offset;
  int64_t compact = 1;
  for (int i = v.ndim - 1; i >= 0; --i) {
    v.size[i] = t->shape[i];
    // a dimension of size 0 or 1 is never stepped: it gets the row-major stride whatever torch
    // exports (2.4-2.6 export 1, later releases the tensor's own), so vector-load alignment checks
    // (csrc/cuda/vec.cuh) see the same view of [1, C, S] or [N, 1, S] on every torch version
    v.stride[i] = t->strides && t->shape[i] > 1 ? t->strides[i] : compact;
    compact *= t->shape[i];
  }
  v.state = View::kOk;
  return v;
}

std::string shape_str(const View& v) {
  std::string s = "[";
  for (int i = 0; i < v.ndim; ++i) s += (i ? ", " : "") + std::to_string(v.size[i]);
  return s + "]";
}

std::string Checker::strides_str(const View& v) {
  std::string s = "(";
  for (int i = 0; i < v.ndim; ++i) s += (i ? ", " : "") + std::to_string(v.stride[i]);
  return s + ")";
}

void Checker::fail(const std::string& what) const {
  throw std::invalid_argument(std::string("segfast._C ") + entry_ + ": " + what);
}

void Checker::explain(const View& v, const char* name, int rank, DTypes dtypes) const {
  const std::string arg(name);
  switch (v.state) {
    case View::kAbsent: fail(arg + " is required (got None)");
    case View::kNotCapsule:
      fail(arg + " must be a tensor's DLPack capsule (segfast.backends.view(t)) or None, got " + v.got);
    case View::kUnknownDType: fail(arg + " has a dtype the kernels do not take (expected " + dtype_names(dtypes) + ")");
    case View::kUnknownDevice: fail(arg + " is on a device that is neither the CPU nor a CUDA GPU");
    case View::kTooManyDims:
      fail(arg + " has " + std::to_string(v.ndim) + " dimensions, more than " + std::to_string(kMaxRank));
    case View::kOk: break;
  }
  if (rank >= 0 && v.ndim != rank)
    fail(arg + " must have " + std::to_string(rank) + " dimensions, got shape " + shape_str(v));
  if (!(dtypes & dtype_bit(v.dtype)))
    fail(arg + " must be " + dtype_names(dtypes) + ", got " + kDTypeNames[v.dtype]);
  fail(arg + " must be on the " + (device_ == kCuda ? "GPU" : "CPU") + ", got a " +
       (v.device == kCuda ? "GPU" : "CPU") + " tensor");
}

void Checker::differ(const View& a, const char* an, int i, const View& b, const char* bn, int j) const {
  fail(std::string(an) + " " + shape_str(a) + " and " + bn + " " + shape_str(b) + " differ in size (dimension " +
       std::to_string(i) + " of " + an + ", " + std::to_string(j) + " of " + bn + ")");
}

void Checker::shape(const View& v, const char* name, std::initializer_list<int64_t> sizes) const {
  bool ok = int64_t(sizes.size()) == v.ndim;
  int i = 0;
  for (int64_t s : sizes) ok = ok && v.size[i++] == s;
  if (ok) return;
  std::string want = "[";
  i = 0;
  for (int64_t s : sizes) want += (i++ ? ", " : "") + std::to_string(s);
  fail(std::string(name) + " must have shape " + want + "], got " + shape_str(v));
}

}  // namespace bind
}  // namespace segfast
