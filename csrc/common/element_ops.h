// Arithmetic primitives of the per-element functions shared by the CPU and CUDA kernels.
//
// NaN rule (the reference's): max_op/min_op return NaN when EITHER operand is NaN (like torch.maximum /
// torch.minimum), on both backends.  Host code uses the select form (a < b || b != b) ? b : a, which g++
// vectorizes into compare/or/blend instructions (no branch); a NaN in the first operand falls through to `a`.
// Device code keeps its (a != a || a > b) ? a : b form.  mul_rn/add_rn: round-to-nearest intrinsics on the device,
// so nvcc cannot contract a * b + c into an FMA and the results round like the reference ops; plain * and + on
// the host (the extension is compiled without FMA instructions).
//
// legacy_max_op/legacy_min_op are the host form before issue 15 (std::max/std::min: a NaN in the SECOND operand,
// a bound, was dropped); the CPU pgd_step kernel keeps an instantiation with them only so bench/ops.py can time
// the NaN-propagating form against it in one run (mtlguard._C._bench_legacy_clamp).
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
  return (a < b || b != b) ? b : a;
#endif
}

template <typename T>
MTLG_HOST_DEVICE inline T min_op(T a, T b) {
#ifdef __CUDA_ARCH__
  return (a != a || a < b) ? a : b;
#else
  return (b < a || b != b) ? b : a;
#endif
}

template <typename T>
inline T legacy_max_op(T a, T b) {
  return std::max(a, b);
}

template <typename T>
inline T legacy_min_op(T a, T b) {
  return std::min(a, b);
}

// Clamp policies of the per-element functions: NanClamp (max_op/min_op, the default everywhere) and, on the
// host only, LegacyClamp (see above).
struct NanClamp {
  template <typename T>
  MTLG_HOST_DEVICE static T max(T a, T b) { return max_op(a, b); }
  template <typename T>
  MTLG_HOST_DEVICE static T min(T a, T b) { return min_op(a, b); }
};

struct LegacyClamp {
  template <typename T>
  static T max(T a, T b) { return legacy_max_op(a, b); }
  template <typename T>
  static T min(T a, T b) { return legacy_min_op(a, b); }
};

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
