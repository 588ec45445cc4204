// The label range check in one read (csrc/cpu/labels.cpp). The pattern: bind/view.h.
#include <pybind11/stl.h>

#include <optional>

#include "bind/view.h"

namespace segfast {
namespace cpu {
void label_range(const void* t, int dtype, int64_t rows, int64_t len, int64_t sR, int64_t sL, bool has_ignore,
                 int64_t ign, int nt, int64_t* lo, int64_t* hi);
}  // namespace cpu

namespace bind {

void bind_labels(Modules& m) {
  m.cpu.def(
      "label_range",
      [](const View& t, std::optional<int64_t> ignore, int64_t num_threads) {
        const Checker c("cpu.label_range", kCpu);
        c.need(t, "t", 2, kLabels | dtype_bit(kBool));
        int64_t lo = 0, hi = 0;
        {
          py::gil_scoped_release nogil;
          cpu::label_range(t.data, t.dtype, t.size[0], t.size[1], t.stride[0], t.stride[1], ignore.has_value(),
                           ignore.value_or(0), int(num_threads > 0 ? num_threads : 1), &lo, &hi);
        }
        return py::make_tuple(lo, hi);
      },
      "(min, max) of the labels t [rows, len] (any strides); labels equal to ignore (None: none) count as 0 "
      "or not at all (min > max when nothing else is left).",
      pybind11::arg("t"), pybind11::arg("ignore"), pybind11::arg("num_threads"));
}

}  // namespace bind
}  // namespace segfast
