// megatron_speech._C: C++ hot paths bound with pybind11.
#include <pybind11/pybind11.h>

#include "indexed_builder.h"

#include <string>

namespace py = pybind11;

namespace {

std::string build_info() {
  std::string info = "megatron_speech._C built with ";
#if defined(__clang__)
  info += "clang " __clang_version__;
#elif defined(__GNUC__)
  info += "gcc " __VERSION__;
#else
  info += "an unknown compiler";
#endif
  info += ", C++" + std::to_string(__cplusplus / 100 % 100);
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "C++ hot paths of megatron_speech";
  m.def("build_info", &build_info, "Compiler and standard the extension was built with.");
  megatron_speech::bind_indexed_builder(m);
}
