// segfast._C: the pybind11 module. It does not link libtorch: tensors cross
// as views (csrc/bind/view.h: data pointer, dtype code, sizes, strides,
// device) built by segfast.backends.view, and segfast/ops/* validate every
// argument first. Each family registers its entries in csrc/bind/<family>.cpp
// (bind_<family>, the pattern at the top of csrc/bind/view.h) into the
// backend submodules segfast._C.cpu and, when built with CUDA,
// segfast._C.cuda; this file holds the module-wide utilities.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "bind/view.h"
#include "cpu/block_cache.h"
#include "cpu/common.h"

namespace py = pybind11;

// One line per family: adding a family adds its csrc/bind/<family>.cpp and a line here.
#define SEGFAST_FAMILIES(X) X(region) X(pixel) X(labels) X(boxes) X(boxes_match) X(lovasz) X(crf) X(metrics)

namespace segfast {
namespace region {
int openmp_max_threads();
const char* region_isa();
}  // namespace region
namespace bind {
#define SEGFAST_DECLARE(family) void bind_##family(Modules& m);
SEGFAST_FAMILIES(SEGFAST_DECLARE)
#undef SEGFAST_DECLARE
}  // namespace bind
}  // namespace segfast

namespace {

std::vector<std::string> cuda_archs() {
  std::vector<std::string> out;
#if defined(SEGFAST_WITH_CUDA) && defined(SEGFAST_CUDA_ARCHS)
  const std::string s = SEGFAST_CUDA_ARCHS;
  size_t b = 0;
  while (b <= s.size()) {
    size_t e = s.find_first_of(";, ", b);
    if (e == std::string::npos) e = s.size();
    if (e > b) out.push_back(s.substr(b, e - b));
    b = e + 1;
  }
#endif
  return out;
}

}  // namespace

// ---- build and runtime versions (csrc/cuda/runtime_info.cu) -----------------------
#ifdef SEGFAST_WITH_CUDA
namespace segfast {
namespace cuda {
int runtime_version();
int driver_version();
}  // namespace cuda
}  // namespace segfast
#endif

namespace {
int cuda_runtime_version() {
#ifdef SEGFAST_WITH_CUDA
  return segfast::cuda::runtime_version();
#else
  return 0;
#endif
}

int cuda_driver_version() {
#ifdef SEGFAST_WITH_CUDA
  return segfast::cuda::driver_version();
#else
  return 0;
#endif
}
}  // namespace
// ---- end of build and runtime versions ---------------------------------------------

// ---- cached CPU blocks as DLPack tensors (csrc/cpu/block_cache.h) ----------------
// The DLPack structs of csrc/bind/view.h: torch.from_dlpack takes the
// capsule, renames it "used_dltensor" and calls the deleter when its storage dies.
namespace dlpack {
using segfast::bind::dl::ManagedTensor;
constexpr int32_t kCPU = segfast::bind::dl::kDLCPU;
constexpr uint8_t kUInt = segfast::bind::dl::kDLUInt;

struct Block {  // one 1-D uint8 tensor over a cached block
  ManagedTensor mt;
  int64_t shape[1], strides[1];
};

void delete_block(ManagedTensor* t) {
  segfast::cpu::block_release(t->dl_tensor.data);
  delete static_cast<Block*>(t->manager_ctx);
}

py::capsule cpu_block(int64_t nbytes) {
  if (nbytes <= 0) throw std::invalid_argument("cpu_block: nbytes must be > 0");
  std::unique_ptr<Block> owner(new Block);
  void* p = segfast::cpu::block_acquire(uint64_t(nbytes));
  if (p == nullptr) throw std::bad_alloc();
  Block* b = owner.release();
  b->shape[0] = nbytes;
  b->strides[0] = 1;
  b->mt.dl_tensor = {p, {kCPU, 0}, 1, {kUInt, 8, 1}, b->shape, b->strides, 0};
  b->mt.manager_ctx = b;
  b->mt.deleter = delete_block;
  PyObject* cap = PyCapsule_New(&b->mt, "dltensor", [](PyObject* c) {
    if (PyCapsule_IsValid(c, "dltensor")) {  // never consumed: the capsule owns the block
      auto* t = static_cast<ManagedTensor*>(PyCapsule_GetPointer(c, "dltensor"));
      t->deleter(t);
    }
  });
  if (cap == nullptr) {
    delete_block(&b->mt);
    throw py::error_already_set();
  }
  return py::reinterpret_steal<py::capsule>(cap);
}
}  // namespace dlpack

#ifdef SEGFAST_CUDA_EMU
// segfast._C_emu: this file again, with the csrc/cuda kernels compiled as C++
// against the CUDA emulation layer (csrc/emu) and run on the CPU.
void segfast_emu_register(py::module_& m);
#define SEGFAST_MODULE_NAME _C_emu
#else
#define SEGFAST_MODULE_NAME _C
#endif

PYBIND11_MODULE(SEGFAST_MODULE_NAME, m) {
  m.doc() = "segfast compiled kernels (CPU/OpenMP and, when built, CUDA); no libtorch";
#ifdef SEGFAST_CUDA_EMU
  segfast_emu_register(m);
#endif

  m.def("has_cuda", []() {
#ifdef SEGFAST_WITH_CUDA
    return true;
#else
    return false;
#endif
  }, "True if the CUDA kernels were compiled in.");
  m.def("cuda_archs", &cuda_archs,
        "CUDA architectures compiled in (CMAKE_CUDA_ARCHITECTURES entries); [] without CUDA.");
  m.def("cuda_runtime_version", &cuda_runtime_version,
        "CUDA runtime (cudart, linked statically) the kernels were built with, as 1000 * major + "
        "10 * minor (12080: 12.8); 0 without CUDA.");
  m.def("cuda_driver_version", &cuda_driver_version,
        "CUDA version the installed driver supports (cudaDriverGetVersion, same encoding); 0 without "
        "CUDA kernels or without a driver.");
  m.def("manylinux_build", []() {
#ifdef SEGFAST_MANYLINUX
    return true;
#else
    return false;
#endif
  }, "True if built with SEGFAST_MANYLINUX=ON (static libstdc++, glibc symbols <= 2.28).");
  m.def("openmp_max_threads", &segfast::region::openmp_max_threads,
        "omp_get_max_threads() in the extension's OpenMP runtime.");
  m.def("region_isa", &segfast::region::region_isa,
        "The instruction set whose build the CPU region kernels run: 'avx512', 'avx2' or 'baseline' "
        "(SEGFAST_CPU_ISA, else the best the CPU has; read once per process). ValueError for a "
        "SEGFAST_CPU_ISA that is not one of these or that this CPU or build cannot run.");
  m.def("advise_huge_pages", &segfast::cpu::advise_huge_pages,
        "madvise(MADV_HUGEPAGE) on the whole 2 MiB pages inside [ptr, ptr + nbytes) (Linux; "
        "else a no-op); 0 or madvise's -1.",
        py::arg("ptr"), py::arg("nbytes"));
  m.def("cpu_block", &dlpack::cpu_block,
        "A DLPack capsule of a 1-D uint8 CPU tensor of nbytes over a block of the output "
        "cache (csrc/cpu/block_cache.h): page-aligned, uninitialised, returned to the cache "
        "when the tensor is freed.",
        py::arg("nbytes"));
  m.def("block_cache_trim", &segfast::cpu::block_cache_trim,
        "Free every cached block; returns the bytes freed.");
  m.def("block_cache_set_limit", &segfast::cpu::block_cache_set_limit,
        "Most bytes the cache keeps (0: none); frees the oldest blocks beyond it.",
        py::arg("bytes"));
  m.def("block_cache_stats", []() {
    const auto s = segfast::cpu::block_cache_stats();
    py::dict d;
    d["cached_bytes"] = s.cached_bytes;
    d["cached_blocks"] = s.cached_blocks;
    d["live_bytes"] = s.live_bytes;
    d["live_blocks"] = s.live_blocks;
    d["hits"] = s.hits;
    d["misses"] = s.misses;
    d["limit"] = s.limit;
    return d;
  }, "The output cache's counters.");

  segfast::bind::Modules families{
      m.def_submodule("cpu", "The cpu backend's kernels (C++, OpenMP); the last argument is num_threads."),
      py::module_()};
#ifdef SEGFAST_WITH_CUDA
  families.cuda = m.def_submodule(
      "cuda", "The cuda backend's kernels (CUDA C++); the last argument is the CUDA stream.");
#endif
#define SEGFAST_BIND(family) segfast::bind::bind_##family(families);
  SEGFAST_FAMILIES(SEGFAST_BIND)
#undef SEGFAST_BIND
}
