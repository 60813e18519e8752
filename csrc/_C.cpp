// The Python extension module mtlguard._C.  Importing it loads this shared library, whose static
// TORCH_LIBRARY / TORCH_LIBRARY_IMPL blocks register torch.ops.mtlguard.*.  Plain CPython API (no pybind11)
// keeps the build light; the CMake build (libmtlguard_ops.so) leaves this file out.
#include <Python.h>

namespace mtlguard {
bool cuda_kernels_compiled();  // ops.cpp (no torch headers here: this unit compiles in a second)
bool bench_legacy_clamp();
void set_bench_legacy_clamp(bool on);
}  // namespace mtlguard

namespace {

PyObject* cuda_kernels_compiled(PyObject* /*self*/, PyObject* /*args*/) {
  return PyBool_FromLong(mtlguard::cuda_kernels_compiled() ? 1 : 0);
}

// _bench_legacy_clamp(on: bool) -> previous value.  Benchmarks only (ops.h).
PyObject* bench_legacy_clamp(PyObject* /*self*/, PyObject* arg) {
  const int on = PyObject_IsTrue(arg);
  if (on < 0) return nullptr;
  const bool prev = mtlguard::bench_legacy_clamp();
  mtlguard::set_bench_legacy_clamp(on != 0);
  return PyBool_FromLong(prev ? 1 : 0);
}

PyMethodDef methods[] = {
    {"cuda_kernels_compiled", cuda_kernels_compiled, METH_NOARGS,
     "True when the CUDA kernels of the mtlguard ops were compiled into this extension."},
    {"_bench_legacy_clamp", bench_legacy_clamp, METH_O,
     "Benchmarks only: CPU pgd_step kernels use the pre-issue-15 clamp form (drops a NaN bound); returns the "
     "previous setting."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_C", "Fused mtlguard kernels (registers torch.ops.mtlguard.*).", -1, methods,
};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module_def); }
