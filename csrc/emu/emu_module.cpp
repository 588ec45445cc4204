// The extras of segfast._C_emu: the thread schedule and the self-tests of the
// emulation layer. Called from the module definition in csrc/bindings.cpp.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

namespace segfast_emu {
void set_schedule(const std::string& name, uint64_t seed);
std::string schedule_name();
}  // namespace segfast_emu
namespace segfast_emu_selftest {
std::vector<double> run(const std::string& name, int64_t arg);
}

namespace py = pybind11;

void segfast_emu_register(py::module_& m) {
  m.attr("EMULATED") = true;
  m.def("set_schedule", &segfast_emu::set_schedule, py::arg("schedule"), py::arg("seed") = 0,
        "Order in which the emulator runs the threads of a block between sync points: "
        "'forward', 'reverse' or 'shuffle' (seeded). Default: SEGFAST_EMU_SCHEDULE, else forward.");
  m.def("schedule", &segfast_emu::schedule_name, "The current thread schedule.");
  m.def(
      "selftest",
      [](const std::string& name, int64_t arg) {
        py::gil_scoped_release nogil;
        return segfast_emu_selftest::run(name, arg);
      },
      py::arg("name"), py::arg("arg") = 0, "Run one self-test kernel of the emulator (tests/test_cuda_emu.py).");
}
