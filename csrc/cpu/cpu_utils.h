// Helpers shared by the CPU kernels: parallel walk over (sample, contiguous segment) pieces, and the (empty)
// device guard the ops of ../common/ (*_impl) are instantiated with.
#pragma once

#include <ATen/Parallel.h>
#include <c10/core/Device.h>

#include <algorithm>
#include <cstdint>

namespace mtlguard {
namespace cpu {

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define MTLG_CPU_X86 1
// A second, AVX2 build of a loop nest (target("avx2") enables no FMA: products still round before the adds).
#define MTLG_TARGET_AVX2 __attribute__((target("avx2")))
#endif
#define MTLG_CPU_INLINE inline __attribute__((always_inline))

// True when the CPU has AVX2 (checked once): the kernels then call their AVX2 builds.
inline bool cpu_has_avx2() {
#ifdef MTLG_CPU_X86
  static const bool avx2 = __builtin_cpu_supports("avx2");
  return avx2;
#else
  return false;
#endif
}

// Elements per parallel task: large enough to amortise the OpenMP fork, small enough to balance 2+ threads.
constexpr int64_t kGrain = 32768;

// The CPU kernels need no device guard: stands in for c10::cuda::CUDAGuard in the ops of ../common/.
struct NoGuard {
  explicit NoGuard(c10::Device /*device*/) {}
};

// Calls f(b, begin, end) over [0, numel) split into pieces that never cross a sample boundary
// (sample b covers [b * inner, (b + 1) * inner)), in parallel (at::parallel_for, OpenMP).
template <typename F>
inline void for_each_sample_segment(int64_t numel, int64_t inner, const F& f) {
  if (numel == 0 || inner == 0) return;
  at::parallel_for(0, numel, kGrain, [&](int64_t begin, int64_t end) {
    int64_t i = begin;
    while (i < end) {
      const int64_t b = i / inner;
      const int64_t seg_end = std::min(end, (b + 1) * inner);
      f(b, i, seg_end);
      i = seg_end;
    }
  });
}

}  // namespace cpu
}  // namespace mtlguard
