// The Python extension module mtlguard._C.  Importing it loads this shared library, whose static
// TORCH_LIBRARY / TORCH_LIBRARY_IMPL blocks register torch.ops.mtlguard.*.  Plain CPython API (no pybind11)
// keeps the build light; the CMake build (libmtlguard_ops.so) leaves this file out.
#include <Python.h>

namespace mtlguard {
bool cuda_kernels_compiled();  // ops.cpp (no torch headers here: this unit compiles in a second)
}  // namespace mtlguard

namespace {

PyObject* cuda_kernels_compiled(PyObject* /*self*/, PyObject* /*args*/) {
  return PyBool_FromLong(mtlguard::cuda_kernels_compiled() ? 1 : 0);
}

PyMethodDef methods[] = {
    {"cuda_kernels_compiled", cuda_kernels_compiled, METH_NOARGS,
     "True when the CUDA kernels of the mtlguard ops were compiled into this extension."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_C", "Fused mtlguard kernels (registers torch.ops.mtlguard.*).", -1, methods,
};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module_def); }
