// Metrics family entries: the confusion matrix of the argmax of logits
// (csrc/cpu/metrics.cpp). The smallest example of the pattern in bind/view.h.
#include <pybind11/stl.h>

#include <optional>

#include "bind/view.h"

namespace segfast {
namespace metrics {
void confusion_logits(uintptr_t x, int64_t x_code, int64_t N, int64_t C, int64_t S, int64_t sN, int64_t sC,
                      int64_t sS, uintptr_t t, int64_t t_code, int64_t tsN, int64_t tsS, bool has_ignore,
                      int64_t ignore, uintptr_t out, int64_t num_threads);
}  // namespace metrics

namespace bind {

void bind_metrics(Modules& m) {
  m.cpu.def(
      "confusion_logits",
      [](const View& x, const View& t, std::optional<int64_t> ignore, const View& out, int64_t num_threads) {
        const Checker c("cpu.confusion_logits", kCpu);
        c.need(x, "x", 3, kFloats);                    // logits [N, C, S], any strides
        c.need(t, "t", 2, kLabels);                    // labels [N, S], any strides
        c.same(t, "t", 0, x, "x", 0);
        c.same(t, "t", 1, x, "x", 2);
        c.need(out, "out", 1, dtype_bit(kInt64));      // counts, added to
        c.contiguous(out, "out");
        const int64_t C = x.size[1];
        c.require(C >= 1, "x must have at least one class");
        c.shape(out, "out", {C * C + 1});
        metrics::confusion_logits(reinterpret_cast<uintptr_t>(x.data), x.dtype, x.size[0], C, x.size[2],
                                  x.stride[0], x.stride[1], x.stride[2], reinterpret_cast<uintptr_t>(t.data),
                                  t.dtype, t.stride[0], t.stride[1], ignore.has_value(), ignore.value_or(0),
                                  reinterpret_cast<uintptr_t>(out.data), num_threads);  // releases the GIL
      },
      "out[target * C + argmax_c x] += 1 over the pixels (int64 [C*C + 1], contiguous; the last slot counts "
      "targets outside [0, C) that are not ignore) from logits x [N, C, S] and targets t [N, S] (any "
      "strides), in one read of the logits. ignore: the ignored label or None.",
      pybind11::arg("x"), pybind11::arg("t"), pybind11::arg("ignore"), pybind11::arg("out"),
      pybind11::arg("num_threads"));
}

}  // namespace bind
}  // namespace segfast
