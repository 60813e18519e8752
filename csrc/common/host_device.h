// MTLG_HOST_DEVICE marks the per-element functions of csrc/common/ that both the CPU kernels (g++) and the
// CUDA kernels (nvcc) call: __host__ __device__ under nvcc, nothing otherwise (torchvision csrc/ops style).
#pragma once

#ifdef __CUDACC__
#define MTLG_HOST_DEVICE __host__ __device__
#else
#define MTLG_HOST_DEVICE
#endif
