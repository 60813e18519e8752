// Part of the unity build: included once, by kernels.cpp / kernels.cu (see there).
#pragma once
// CUDA kernels of project_linf, pgd_step and pgd_step_: grid-stride loops, 16-byte vectorized loads and
// stores when every pointer is aligned and a sample's size is a multiple of the vector width.
// Same arithmetic as the CPU kernels (opmath, NaN-propagating clamps, s * dir rounded before the add).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

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
    for (int k = 0; k < N; ++k) {
      const opmath_t xx = static_cast<opmath_t>(xv.v[k]);
      const opmath_t d = max_p(min_p(static_cast<opmath_t>(dv.v[k]), e), -e);
      a.v[k] = static_cast<scalar_t>(min_p(max_p(xx + d, lo), hi));
      o.v[k] = static_cast<scalar_t>(static_cast<opmath_t>(a.v[k]) - xx);
    }
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
    for (int k = 0; k < N; ++k) {
      const opmath_t xx = static_cast<opmath_t>(xv.v[k]);
      opmath_t y = add_rn(static_cast<opmath_t>(av.v[k]), mul_rn(s, static_cast<opmath_t>(dv.v[k])));
      y = min_p(max_p(y, xx - e), xx + e);
      o.v[k] = static_cast<scalar_t>(min_p(max_p(y, lo), hi));
    }
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

std::tuple<at::Tensor, at::Tensor> project_linf_cuda(const at::Tensor& x_in, const at::Tensor& delta_in, double eps,
                                                     const c10::optional<at::Tensor>& eps_per_sample, double lo,
                                                     double hi) {
  check_same_shape("project_linf", "x", x_in, "delta", delta_in);
  TORCH_CHECK_VALUE(x_in.scalar_type() == delta_in.scalar_type(), "project_linf: x (", x_in.scalar_type(),
                    ") and delta (", delta_in.scalar_type(), ") differ in dtype");
  TORCH_CHECK_VALUE(delta_in.device() == x_in.device(), "project_linf: x and delta are on different devices");
  c10::cuda::CUDAGuard guard(x_in.device());
  at::Tensor x = x_in, delta = delta_in;
  if (!shared_blocked_layout({x, delta})) {
    x = x.contiguous();
    delta = delta.contiguous();
  }
  const int64_t B = x.dim() ? x.size(0) : 1;
  at::Tensor eps_t = per_sample_tensor("project_linf", "eps", eps_per_sample, B, x.scalar_type(), x.device());
  at::Tensor x_adv = at::empty_like(x), delta_out = at::empty_like(x);
  const int64_t n = x.numel(), inner = per_sample(x);
  if (n == 0) return {x_adv, delta_out};
  cudaStream_t stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "project_linf_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    constexpr int N = vec_width<scalar_t>();
    const scalar_t* ep = eps_t.defined() ? eps_t.const_data_ptr<scalar_t>() : nullptr;
    const auto* xp = x.const_data_ptr<scalar_t>();
    const auto* dp = delta.const_data_ptr<scalar_t>();
    auto* ap = x_adv.mutable_data_ptr<scalar_t>();
    auto* op = delta_out.mutable_data_ptr<scalar_t>();
    const int es = sizeof(scalar_t);
    if (can_vec<N>(n, inner, {{xp, es}, {dp, es}, {ap, es}, {op, es}})) {
      project_linf_kernel<scalar_t, N><<<blocks_for(n / N), kThreads, 0, stream>>>(
          xp, dp, ap, op, n / N, inner, static_cast<opmath_t>(eps), ep, static_cast<opmath_t>(lo),
          static_cast<opmath_t>(hi));
    } else {
      project_linf_kernel<scalar_t, 1><<<blocks_for(n), kThreads, 0, stream>>>(
          xp, dp, ap, op, n, inner, static_cast<opmath_t>(eps), ep, static_cast<opmath_t>(lo),
          static_cast<opmath_t>(hi));
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {x_adv, delta_out};
}

void pgd_step_into(const at::Tensor& x_adv, const at::Tensor& x, const at::Tensor& dir, const at::Tensor& out,
                   double step, const at::Tensor& step_t, double eps, const at::Tensor& eps_t, double lo, double hi) {
  const int64_t n = x.numel(), inner = per_sample(x);
  if (n == 0) return;
  cudaStream_t stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "pgd_step_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    constexpr int N = vec_width<scalar_t>();
    const scalar_t* sp = step_t.defined() ? step_t.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* ep = eps_t.defined() ? eps_t.const_data_ptr<scalar_t>() : nullptr;
    const auto* ap = x_adv.const_data_ptr<scalar_t>();
    const auto* xp = x.const_data_ptr<scalar_t>();
    auto* op = out.mutable_data_ptr<scalar_t>();
    const int es = sizeof(scalar_t);
    auto launch = [&](auto dir_tag) {
      using dir_t = decltype(dir_tag);
      const dir_t* dp = dir.const_data_ptr<dir_t>();
      if (can_vec<N>(n, inner, {{ap, es}, {xp, es}, {op, es}, {dp, static_cast<int>(sizeof(dir_t))}})) {
        pgd_step_kernel<scalar_t, dir_t, N><<<blocks_for(n / N), kThreads, 0, stream>>>(
            ap, xp, dp, op, n / N, inner, static_cast<opmath_t>(step), sp, static_cast<opmath_t>(eps), ep,
            static_cast<opmath_t>(lo), static_cast<opmath_t>(hi));
      } else {
        pgd_step_kernel<scalar_t, dir_t, 1><<<blocks_for(n), kThreads, 0, stream>>>(
            ap, xp, dp, op, n, inner, static_cast<opmath_t>(step), sp, static_cast<opmath_t>(eps), ep,
            static_cast<opmath_t>(lo), static_cast<opmath_t>(hi));
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (dir.scalar_type() == at::kChar) {
      launch(int8_t{});
    } else {
      launch(scalar_t{});
    }
  });
}

at::Tensor pgd_prepare(const char* op, const at::Tensor& x_adv, const at::Tensor& x, const at::Tensor& direction) {
  check_same_shape(op, "x_adv", x_adv, "x", x);
  check_same_shape(op, "x_adv", x_adv, "direction", direction);
  TORCH_CHECK_VALUE(x_adv.scalar_type() == x.scalar_type(), op, ": x_adv (", x_adv.scalar_type(), ") and x (",
                    x.scalar_type(), ") differ in dtype");
  TORCH_CHECK_VALUE(x.device() == x_adv.device() && direction.device() == x_adv.device(), op,
                    ": x_adv, x and direction must be on the same device");
  if (direction.scalar_type() == at::kChar || direction.scalar_type() == x.scalar_type()) return direction;
  return direction.to(x.scalar_type());
}

at::Tensor pgd_step_cuda(const at::Tensor& x_adv_in, const at::Tensor& x_in, const at::Tensor& direction, double step,
                         const c10::optional<at::Tensor>& step_per_sample, double eps,
                         const c10::optional<at::Tensor>& eps_per_sample, double lo, double hi) {
  at::Tensor dir = pgd_prepare("pgd_step", x_adv_in, x_in, direction);
  c10::cuda::CUDAGuard guard(x_in.device());
  at::Tensor x_adv = x_adv_in, x = x_in;
  if (!shared_blocked_layout({x_adv, x, dir})) {
    x_adv = x_adv.contiguous();
    x = x.contiguous();
    dir = dir.contiguous();
  }
  const int64_t B = x.dim() ? x.size(0) : 1;
  at::Tensor step_t = per_sample_tensor("pgd_step", "step", step_per_sample, B, x.scalar_type(), x.device());
  at::Tensor eps_t = per_sample_tensor("pgd_step", "eps", eps_per_sample, B, x.scalar_type(), x.device());
  at::Tensor out = at::empty_like(x_adv);
  pgd_step_into(x_adv, x, dir, out, step, step_t, eps, eps_t, lo, hi);
  return out;
}

void pgd_step_inplace_cuda(const at::Tensor& x_adv, const at::Tensor& x_in, const at::Tensor& direction, double step,
                           const c10::optional<at::Tensor>& step_per_sample, double eps,
                           const c10::optional<at::Tensor>& eps_per_sample, double lo, double hi) {
  at::Tensor dir = pgd_prepare("pgd_step_", x_adv, x_in, direction);
  c10::cuda::CUDAGuard guard(x_adv.device());
  at::Tensor x = x_in;
  if (!shared_blocked_layout({x_adv, x, dir})) {
    if (sample_blocked(x_adv)) {
      x = x.contiguous(x_adv.suggest_memory_format());
      dir = dir.contiguous(x_adv.suggest_memory_format());
    }
    if (!shared_blocked_layout({x_adv, x, dir})) {
      x_adv.copy_(pgd_step_cuda(x_adv, x_in, direction, step, step_per_sample, eps, eps_per_sample, lo, hi));
      return;
    }
  }
  const int64_t B = x.dim() ? x.size(0) : 1;
  at::Tensor step_t = per_sample_tensor("pgd_step_", "step", step_per_sample, B, x.scalar_type(), x.device());
  at::Tensor eps_t = per_sample_tensor("pgd_step_", "eps", eps_per_sample, B, x.scalar_type(), x.device());
  pgd_step_into(x_adv, x, dir, x_adv, step, step_t, eps, eps_t, lo, hi);
}

}  // namespace

TORCH_LIBRARY_IMPL(mtlguard, CUDA, m) {
  m.impl("project_linf", &project_linf_cuda);
  m.impl("pgd_step", &pgd_step_cuda);
  m.impl("pgd_step_", &pgd_step_inplace_cuda);
}

}  // namespace cuda
}  // namespace mtlguard
