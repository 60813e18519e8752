// Helpers shared by the CUDA kernels: launch geometry and vectorized (16-byte) access.  The per-element
// primitives (NaN-propagating min/max, round-to-nearest multiply/add, sign) are in ../common/element_ops.h.
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
#include <type_traits>

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

// Calls launch(std::integral_constant<int, N>{}) when `vec` (every access can be N elements wide), else with
// width 1: the launch picks its kernel instantiation and grid from the width.
template <int N, typename F>
void with_vec_width(bool vec, const F& launch) {
  if (vec) {
    launch(std::integral_constant<int, N>{});
  } else {
    launch(std::integral_constant<int, 1>{});
  }
}

}  // namespace cuda
}  // namespace mtlguard
