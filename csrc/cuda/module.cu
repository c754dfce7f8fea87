// The Python module leedl_fast._C_cuda (built by setup.py only where torch has CUDA): one
// PYBIND11_MODULE for all the CUDA C++ families. Each family's binding (<family>.cu) defines
// bind_<family>(m), which adds its functions; a new family adds one declaration and one call.
#include <pybind11/pybind11.h>

namespace leedl_fast {
void bind_norm(pybind11::module_& m);  // norm.cu
void bind_rnn(pybind11::module_& m);   // rnn.cu
}  // namespace leedl_fast

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "leedl_fast CUDA C++ kernels; called through leedl_fast._ops";
  leedl_fast::bind_norm(m);
  leedl_fast::bind_rnn(m);
}
