// Helpers shared by the CUDA kernels: launch geometry, vectorized (16-byte) access, NaN-propagating
// min/max and round-to-nearest multiply/add (no FMA contraction, so results round like the reference ops).
#pragma once

// Only light c10 CUDA headers: ATen/cuda/CUDAContext.h would pull cuBLAS/cuSPARSE headers, which a bare CUDA
// toolkit (the pip torch keeps them under nvidia/cu13) may not have.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>

namespace mtlguard {
namespace cuda {

constexpr int kThreads = 256;

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

// Grid for a grid-stride loop over n items: enough blocks to fill the device, never more than needed.
inline int64_t sm_count() {
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, c10::cuda::current_device()));
  return sms > 0 ? sms : 1;
}

inline int blocks_for(int64_t n) {
  const int64_t sms = sm_count();
  const int64_t need = (n + kThreads - 1) / kThreads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(need, sms * 16)));
}

template <typename T, int N>
struct alignas(sizeof(T) * N) aligned_vec {
  T v[N];
};

// Elements per 16-byte access for scalar_t.
template <typename scalar_t>
constexpr int vec_width() {
  return 16 / sizeof(scalar_t) > 0 ? static_cast<int>(16 / sizeof(scalar_t)) : 1;
}

inline bool aligned_to(const void* p, int bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

template <typename T>
__device__ __forceinline__ T max_p(T a, T b) {  // like torch.maximum: NaN in either operand propagates
  return (a != a || a > b) ? a : b;
}
template <typename T>
__device__ __forceinline__ T min_p(T a, T b) {  // like torch.minimum
  return (a != a || a < b) ? a : b;
}

__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }

template <typename T>
__device__ __forceinline__ int8_t sign_i8(T v) {
  return static_cast<int8_t>((v > T(0)) - (v < T(0)));
}

}  // namespace cuda
}  // namespace mtlguard
