// The loss families' common input (common/problem.h Inputs) from views:
// logits x [N, C, S] and targets t, class indices [N, S] or dense [N, C, S]
// (the target's rank says which).
#pragma once

#include <optional>

#include "bind/view.h"
#include "common/problem.h"

namespace segfast {
namespace bind {

inline Inputs make_inputs(const Checker& c, const View& x, const View& t, int64_t label_offset,
                          std::optional<double> ignore) {
  c.need(x, "x", 3, kFloats);
  const bool label = t.present() && t.state == View::kOk && t.ndim == 2;
  c.need(t, "t", label ? 2 : 3, label ? kLabels : kFloats | kBytes);
  c.same(t, "t", 0, x, "x", 0);
  c.same(t, "t", t.ndim - 1, x, "x", 2);
  if (!label) c.same(t, "t", 1, x, "x", 1);
  Inputs in;
  in.x = x.data;
  in.x_dtype = x.dtype;
  in.xsN = x.stride[0]; in.xsC = x.stride[1]; in.xsS = x.stride[2];
  in.t = t.data;
  in.t_dtype = t.dtype;
  in.t_is_label = label;
  in.tsN = t.stride[0];
  in.tsC = label ? 0 : t.stride[1];
  in.tsS = t.stride[t.ndim - 1];
  in.N = x.size[0]; in.C = x.size[1]; in.S = x.size[2];
  in.label_offset = label_offset;
  in.has_ignore = ignore.has_value();
  in.ignore_value = ignore.value_or(0.0);
  return in;
}

}  // namespace bind
}  // namespace segfast
