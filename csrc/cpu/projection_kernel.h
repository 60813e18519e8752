// Part of the unity build: included once, by kernels.cpp (see there).
#pragma once
// CPU kernels of project_linf, pgd_step and pgd_step_: one pass over memory, no temporaries, parallel over
// (sample, segment) pieces.  Per-element math and host side: ../common/projection_common.h.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <type_traits>

#include "../common/projection_common.h"
#include "../ops.h"
#include "cpu_utils.h"

namespace mtlguard {
namespace cpu {
namespace {

// The per-segment loops, compiled twice (default = SSE2 on x86-64, and AVX2) and chosen at run time: with the
// NaN-propagating clamps (element_ops.h) each select is one vblendvps under AVX2 instead of and/andnot/or, which
// keeps these memory-bound loops as fast as the previous std::max/std::min form (bench/results/ops_cpu.json
// "nan_fix").  The LegacyClamp instantiation (benchmarks only) keeps the previous default build.
template <typename scalar_t, typename opmath_t>
MTLG_CPU_INLINE void project_linf_range(const scalar_t* x, const scalar_t* delta, scalar_t* x_adv,
                                        scalar_t* delta_out, int64_t begin, int64_t end, opmath_t e, opmath_t lo,
                                        opmath_t hi) {
  for (int64_t i = begin; i < end; ++i) project_linf_element(x[i], delta[i], e, lo, hi, x_adv[i], delta_out[i]);
}

template <typename scalar_t, typename opmath_t>
void project_linf_range_default(const scalar_t* x, const scalar_t* delta, scalar_t* x_adv, scalar_t* delta_out,
                                int64_t begin, int64_t end, opmath_t e, opmath_t lo, opmath_t hi) {
  project_linf_range(x, delta, x_adv, delta_out, begin, end, e, lo, hi);
}

template <typename Clamp, typename scalar_t, typename dir_t, typename opmath_t>
MTLG_CPU_INLINE void pgd_step_range(const scalar_t* xa, const scalar_t* x, const dir_t* dir, scalar_t* out,
                                    int64_t begin, int64_t end, opmath_t s, opmath_t e, opmath_t lo, opmath_t hi) {
  for (int64_t i = begin; i < end; ++i) out[i] = pgd_step_element<Clamp>(xa[i], x[i], dir[i], s, e, lo, hi);
}

template <typename Clamp, typename scalar_t, typename dir_t, typename opmath_t>
void pgd_step_range_default(const scalar_t* xa, const scalar_t* x, const dir_t* dir, scalar_t* out, int64_t begin,
                            int64_t end, opmath_t s, opmath_t e, opmath_t lo, opmath_t hi) {
  pgd_step_range<Clamp>(xa, x, dir, out, begin, end, s, e, lo, hi);
}

#ifdef MTLG_CPU_X86
template <typename scalar_t, typename opmath_t>
MTLG_TARGET_AVX2 void project_linf_range_avx2(const scalar_t* x, const scalar_t* delta, scalar_t* x_adv,
                                              scalar_t* delta_out, int64_t begin, int64_t end, opmath_t e,
                                              opmath_t lo, opmath_t hi) {
  project_linf_range(x, delta, x_adv, delta_out, begin, end, e, lo, hi);
}

template <typename Clamp, typename scalar_t, typename dir_t, typename opmath_t>
MTLG_TARGET_AVX2 void pgd_step_range_avx2(const scalar_t* xa, const scalar_t* x, const dir_t* dir, scalar_t* out,
                                          int64_t begin, int64_t end, opmath_t s, opmath_t e, opmath_t lo,
                                          opmath_t hi) {
  pgd_step_range<Clamp>(xa, x, dir, out, begin, end, s, e, lo, hi);
}
#endif

template <typename scalar_t>
void project_linf_loop(const scalar_t* x, const scalar_t* delta, scalar_t* x_adv, scalar_t* delta_out,
                       int64_t numel, int64_t inner, double eps, const scalar_t* eps_b, double lo, double hi) {
  using opmath_t = at::opmath_type<scalar_t>;
  const opmath_t lo_ = static_cast<opmath_t>(lo), hi_ = static_cast<opmath_t>(hi);
  auto* range = &project_linf_range_default<scalar_t, opmath_t>;
#ifdef MTLG_CPU_X86
  if (cpu_has_avx2()) range = &project_linf_range_avx2<scalar_t, opmath_t>;
#endif
  for_each_sample_segment(numel, inner, [&](int64_t b, int64_t begin, int64_t end) {
    const opmath_t e = eps_b ? static_cast<opmath_t>(eps_b[b]) : static_cast<opmath_t>(eps);
    range(x, delta, x_adv, delta_out, begin, end, e, lo_, hi_);
  });
}

template <typename Clamp, typename scalar_t, typename dir_t>
void pgd_step_loop(const scalar_t* xa, const scalar_t* x, const dir_t* dir, scalar_t* out, int64_t numel,
                   int64_t inner, double step, const scalar_t* step_b, double eps, const scalar_t* eps_b, double lo,
                   double hi) {
  using opmath_t = at::opmath_type<scalar_t>;
  const opmath_t lo_ = static_cast<opmath_t>(lo), hi_ = static_cast<opmath_t>(hi);
  auto* range = &pgd_step_range_default<Clamp, scalar_t, dir_t, opmath_t>;
#ifdef MTLG_CPU_X86
  if constexpr (std::is_same_v<Clamp, NanClamp>) {
    if (cpu_has_avx2()) range = &pgd_step_range_avx2<Clamp, scalar_t, dir_t, opmath_t>;
  }
#endif
  for_each_sample_segment(numel, inner, [&](int64_t b, int64_t begin, int64_t end) {
    const opmath_t s = step_b ? static_cast<opmath_t>(step_b[b]) : static_cast<opmath_t>(step);
    const opmath_t e = eps_b ? static_cast<opmath_t>(eps_b[b]) : static_cast<opmath_t>(eps);
    range(xa, x, dir, out, begin, end, s, e, lo_, hi_);
  });
}

void project_linf_run(const ProjectLinfTensors& t, double eps, double lo, double hi) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, t.x.scalar_type(), "project_linf_cpu", [&] {
    project_linf_loop<scalar_t>(t.x.const_data_ptr<scalar_t>(), t.delta.const_data_ptr<scalar_t>(),
                                t.x_adv.mutable_data_ptr<scalar_t>(), t.delta_out.mutable_data_ptr<scalar_t>(),
                                t.x.numel(), per_sample(t.x), eps, data_or_null<scalar_t>(t.eps_t), lo, hi);
  });
}

void pgd_step_run(const PgdStepTensors& t, double step, double eps, double lo, double hi) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, t.x.scalar_type(), "pgd_step_cpu", [&] {
    dispatch_direction<scalar_t>(t.dir, [&](auto dir_tag) {
      using dir_t = decltype(dir_tag);
      // bench_legacy_clamp(): the pre-issue-15 clamp form, only ever set by bench/ops.py (element_ops.h).
      auto* loop = bench_legacy_clamp() ? &pgd_step_loop<LegacyClamp, scalar_t, dir_t>
                                        : &pgd_step_loop<NanClamp, scalar_t, dir_t>;
      loop(t.x_adv.const_data_ptr<scalar_t>(), t.x.const_data_ptr<scalar_t>(), t.dir.const_data_ptr<dir_t>(),
           t.out.mutable_data_ptr<scalar_t>(), t.x.numel(), per_sample(t.x), step, data_or_null<scalar_t>(t.step_t),
           eps, data_or_null<scalar_t>(t.eps_t), lo, hi);
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(mtlguard, CPU, m) {
  m.impl("project_linf", &project_linf_impl<NoGuard, project_linf_run>);
  m.impl("pgd_step", &pgd_step_impl<NoGuard, pgd_step_run>);
  m.impl("pgd_step_", &pgd_step_inplace_impl<NoGuard, pgd_step_run>);
}

}  // namespace cpu
}  // namespace mtlguard
