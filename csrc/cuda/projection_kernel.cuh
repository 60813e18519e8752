// Part of the unity build: included once, by kernels.cu (see there).
#pragma once
// CUDA kernels of project_linf, pgd_step and pgd_step_: grid-stride loops, 16-byte vectorized loads and
// stores when every pointer is aligned and a sample's size is a multiple of the vector width.
// Per-element math and host side (the same as the CPU kernels'): ../common/projection_common.h.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "../common/projection_common.h"
#include "../ops.h"
#include "cuda_utils.cuh"

namespace mtlguard {
namespace cuda {
namespace {

template <typename scalar_t, int N>
__global__ void project_linf_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ delta,
                                    scalar_t* __restrict__ x_adv, scalar_t* __restrict__ delta_out, int64_t nvec,
                                    int64_t inner, at::opmath_type<scalar_t> eps, const scalar_t* __restrict__ eps_b,
                                    at::opmath_type<scalar_t> lo, at::opmath_type<scalar_t> hi) {
  using opmath_t = at::opmath_type<scalar_t>;
  using V = aligned_vec<scalar_t, N>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t v = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; v < nvec; v += stride) {
    const int64_t b = (v * N) / inner;
    const opmath_t e = eps_b ? static_cast<opmath_t>(eps_b[b]) : eps;
    const V xv = reinterpret_cast<const V*>(x)[v];
    const V dv = reinterpret_cast<const V*>(delta)[v];
    V a, o;
#pragma unroll
    for (int k = 0; k < N; ++k) project_linf_element(xv.v[k], dv.v[k], e, lo, hi, a.v[k], o.v[k]);
    reinterpret_cast<V*>(x_adv)[v] = a;
    reinterpret_cast<V*>(delta_out)[v] = o;
  }
}

template <typename scalar_t, typename dir_t, int N>
__global__ void pgd_step_kernel(const scalar_t* xa, const scalar_t* __restrict__ x, const dir_t* __restrict__ dir,
                                scalar_t* out, int64_t nvec, int64_t inner, at::opmath_type<scalar_t> step,
                                const scalar_t* __restrict__ step_b, at::opmath_type<scalar_t> eps,
                                const scalar_t* __restrict__ eps_b, at::opmath_type<scalar_t> lo,
                                at::opmath_type<scalar_t> hi) {
  using opmath_t = at::opmath_type<scalar_t>;
  using V = aligned_vec<scalar_t, N>;
  using D = aligned_vec<dir_t, N>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t v = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; v < nvec; v += stride) {
    const int64_t b = (v * N) / inner;
    const opmath_t s = step_b ? static_cast<opmath_t>(step_b[b]) : step;
    const opmath_t e = eps_b ? static_cast<opmath_t>(eps_b[b]) : eps;
    const V av = reinterpret_cast<const V*>(xa)[v];
    const V xv = reinterpret_cast<const V*>(x)[v];
    const D dv = reinterpret_cast<const D*>(dir)[v];
    V o;
#pragma unroll
    for (int k = 0; k < N; ++k) o.v[k] = pgd_step_element(av.v[k], xv.v[k], dv.v[k], s, e, lo, hi);
    reinterpret_cast<V*>(out)[v] = o;
  }
}

template <int N>
bool can_vec(int64_t numel, int64_t inner, std::initializer_list<std::pair<const void*, int>> ptrs) {
  if (N == 1) return true;
  if (inner % N != 0 || numel % N != 0) return false;
  for (const auto& p : ptrs) {
    if (!aligned_to(p.first, p.second * N)) return false;
  }
  return true;
}

void project_linf_run(const ProjectLinfTensors& t, double eps, double lo, double hi) {
  const int64_t n = t.x.numel(), inner = per_sample(t.x);
  if (n == 0) return;
  cudaStream_t stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, t.x.scalar_type(), "project_linf_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    constexpr int N = vec_width<scalar_t>();
    const scalar_t* ep = data_or_null<scalar_t>(t.eps_t);
    const auto* xp = t.x.const_data_ptr<scalar_t>();
    const auto* dp = t.delta.const_data_ptr<scalar_t>();
    auto* ap = t.x_adv.mutable_data_ptr<scalar_t>();
    auto* op = t.delta_out.mutable_data_ptr<scalar_t>();
    const int es = sizeof(scalar_t);
    with_vec_width<N>(can_vec<N>(n, inner, {{xp, es}, {dp, es}, {ap, es}, {op, es}}), [&](auto width) {
      constexpr int W = decltype(width)::value;
      project_linf_kernel<scalar_t, W><<<blocks_for(n / W), kThreads, 0, stream>>>(
          xp, dp, ap, op, n / W, inner, static_cast<opmath_t>(eps), ep, static_cast<opmath_t>(lo),
          static_cast<opmath_t>(hi));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

void pgd_step_run(const PgdStepTensors& t, double step, double eps, double lo, double hi) {
  const int64_t n = t.x.numel(), inner = per_sample(t.x);
  if (n == 0) return;
  cudaStream_t stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, t.x.scalar_type(), "pgd_step_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    constexpr int N = vec_width<scalar_t>();
    const scalar_t* sp = data_or_null<scalar_t>(t.step_t);
    const scalar_t* ep = data_or_null<scalar_t>(t.eps_t);
    const auto* ap = t.x_adv.const_data_ptr<scalar_t>();
    const auto* xp = t.x.const_data_ptr<scalar_t>();
    auto* op = t.out.mutable_data_ptr<scalar_t>();
    const int es = sizeof(scalar_t);
    dispatch_direction<scalar_t>(t.dir, [&](auto dir_tag) {
      using dir_t = decltype(dir_tag);
      const dir_t* dp = t.dir.const_data_ptr<dir_t>();
      const bool vec = can_vec<N>(n, inner, {{ap, es}, {xp, es}, {op, es}, {dp, static_cast<int>(sizeof(dir_t))}});
      with_vec_width<N>(vec, [&](auto width) {
        constexpr int W = decltype(width)::value;
        pgd_step_kernel<scalar_t, dir_t, W><<<blocks_for(n / W), kThreads, 0, stream>>>(
            ap, xp, dp, op, n / W, inner, static_cast<opmath_t>(step), sp, static_cast<opmath_t>(eps), ep,
            static_cast<opmath_t>(lo), static_cast<opmath_t>(hi));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(mtlguard, CUDA, m) {
  m.impl("project_linf", &project_linf_impl<c10::cuda::CUDAGuard, project_linf_run>);
  m.impl("pgd_step", &pgd_step_impl<c10::cuda::CUDAGuard, pgd_step_run>);
  m.impl("pgd_step_", &pgd_step_inplace_impl<c10::cuda::CUDAGuard, pgd_step_run>);
}

}  // namespace cuda
}  // namespace mtlguard
