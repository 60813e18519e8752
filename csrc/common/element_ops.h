// Arithmetic primitives of the per-element functions shared by the CPU and CUDA kernels.
//
// Each keeps the rounding and NaN rule its backend has always had:
//   * device code (nvcc, __CUDA_ARCH__): max_op/min_op propagate a NaN in either operand (like torch.maximum);
//     mul_rn/add_rn are round-to-nearest intrinsics, so nvcc cannot contract a * b + c into an FMA and the
//     results round like the reference ops;
//   * host code (the CPU kernels): max_op/min_op are std::max/std::min -- a NaN in the first operand (the
//     data) propagates, one in the second (a bound) does not -- and mul_rn/add_rn are plain * and +.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "host_device.h"

namespace mtlguard {

template <typename T>
MTLG_HOST_DEVICE inline T max_op(T a, T b) {
#ifdef __CUDA_ARCH__
  return (a != a || a > b) ? a : b;
#else
  return std::max(a, b);
#endif
}

template <typename T>
MTLG_HOST_DEVICE inline T min_op(T a, T b) {
#ifdef __CUDA_ARCH__
  return (a != a || a < b) ? a : b;
#else
  return std::min(a, b);
#endif
}

template <typename T>
MTLG_HOST_DEVICE inline T mul_rn(T a, T b) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "mul_rn: float or double (opmath) only");
#ifdef __CUDA_ARCH__
  if constexpr (std::is_same_v<T, float>) return __fmul_rn(a, b);
  else return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

template <typename T>
MTLG_HOST_DEVICE inline T add_rn(T a, T b) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "add_rn: float or double (opmath) only");
#ifdef __CUDA_ARCH__
  if constexpr (std::is_same_v<T, float>) return __fadd_rn(a, b);
  else return __dadd_rn(a, b);
#else
  return a + b;
#endif
}

// -1, 0 or +1 (0 for NaN).
template <typename T>
MTLG_HOST_DEVICE inline int8_t sign_i8(T v) {
  return static_cast<int8_t>((v > T(0)) - (v < T(0)));
}

}  // namespace mtlguard
