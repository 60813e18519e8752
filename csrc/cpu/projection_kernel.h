// Part of the unity build: included once, by kernels.cpp / kernels.cu (see there).
#pragma once
// CPU kernels of project_linf, pgd_step and pgd_step_ (one pass over memory, no temporaries).
//
//   project_linf: d = clamp(delta, -eps, eps); x_adv = clamp(x + d, lo, hi); delta_out = x_adv - x
//   pgd_step:     x_adv <- clamp(clamp(x_adv + step * dir, x - eps, x + eps), lo, hi)   (GB-MTA Alg. 3, P(.))
//
// Arithmetic in at::opmath_type (float for bf16/half), rounded once on store.  The operand order of
// std::min/std::max keeps a NaN in the data (first operand) propagating, as torch.clamp does.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>

#include "../ops.h"
#include "cpu_utils.h"

namespace mtlguard {
namespace cpu {
namespace {

template <typename scalar_t>
void project_linf_loop(const scalar_t* x, const scalar_t* delta, scalar_t* x_adv, scalar_t* delta_out,
                       int64_t numel, int64_t inner, double eps, const scalar_t* eps_b, double lo, double hi) {
  using opmath_t = at::opmath_type<scalar_t>;
  const opmath_t lo_ = static_cast<opmath_t>(lo), hi_ = static_cast<opmath_t>(hi);
  for_each_sample_segment(numel, inner, [&](int64_t b, int64_t begin, int64_t end) {
    const opmath_t e = eps_b ? static_cast<opmath_t>(eps_b[b]) : static_cast<opmath_t>(eps);
    const opmath_t ne = -e;
    for (int64_t i = begin; i < end; ++i) {
      const opmath_t xv = static_cast<opmath_t>(x[i]);
      const opmath_t d = std::max(std::min(static_cast<opmath_t>(delta[i]), e), ne);
      const scalar_t a = static_cast<scalar_t>(std::min(std::max(xv + d, lo_), hi_));
      x_adv[i] = a;
      delta_out[i] = static_cast<scalar_t>(static_cast<opmath_t>(a) - xv);
    }
  });
}

template <typename scalar_t, typename dir_t>
void pgd_step_loop(const scalar_t* xa, const scalar_t* x, const dir_t* dir, scalar_t* out, int64_t numel,
                   int64_t inner, double step, const scalar_t* step_b, double eps, const scalar_t* eps_b, double lo,
                   double hi) {
  using opmath_t = at::opmath_type<scalar_t>;
  const opmath_t lo_ = static_cast<opmath_t>(lo), hi_ = static_cast<opmath_t>(hi);
  for_each_sample_segment(numel, inner, [&](int64_t b, int64_t begin, int64_t end) {
    const opmath_t s = step_b ? static_cast<opmath_t>(step_b[b]) : static_cast<opmath_t>(step);
    const opmath_t e = eps_b ? static_cast<opmath_t>(eps_b[b]) : static_cast<opmath_t>(eps);
    for (int64_t i = begin; i < end; ++i) {
      const opmath_t xv = static_cast<opmath_t>(x[i]);
      const opmath_t sd = s * static_cast<opmath_t>(dir[i]);
      opmath_t y = static_cast<opmath_t>(xa[i]) + sd;
      y = std::min(std::max(y, xv - e), xv + e);
      out[i] = static_cast<scalar_t>(std::min(std::max(y, lo_), hi_));
    }
  });
}

std::tuple<at::Tensor, at::Tensor> project_linf_cpu(const at::Tensor& x_in, const at::Tensor& delta_in, double eps,
                                                    const c10::optional<at::Tensor>& eps_per_sample, double lo,
                                                    double hi) {
  check_same_shape("project_linf", "x", x_in, "delta", delta_in);
  TORCH_CHECK_VALUE(x_in.scalar_type() == delta_in.scalar_type(), "project_linf: x (", x_in.scalar_type(),
                    ") and delta (", delta_in.scalar_type(), ") differ in dtype");
  at::Tensor x = x_in, delta = delta_in;
  if (!shared_blocked_layout({x, delta})) {
    x = x.contiguous();
    delta = delta.contiguous();
  }
  const int64_t B = x.dim() ? x.size(0) : 1;
  at::Tensor eps_t = per_sample_tensor("project_linf", "eps", eps_per_sample, B, x.scalar_type(), x.device());
  at::Tensor x_adv = at::empty_like(x), delta_out = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "project_linf_cpu", [&] {
    project_linf_loop<scalar_t>(x.const_data_ptr<scalar_t>(), delta.const_data_ptr<scalar_t>(),
                                x_adv.mutable_data_ptr<scalar_t>(), delta_out.mutable_data_ptr<scalar_t>(), x.numel(),
                                per_sample(x), eps, eps_t.defined() ? eps_t.const_data_ptr<scalar_t>() : nullptr, lo,
                                hi);
  });
  return {x_adv, delta_out};
}

// Writes the step into `out` (which may be x_adv itself); all tensors share one sample-blocked layout.
void pgd_step_into(const at::Tensor& x_adv, const at::Tensor& x, const at::Tensor& dir, const at::Tensor& out,
                   double step, const at::Tensor& step_t, double eps, const at::Tensor& eps_t, double lo, double hi) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "pgd_step_cpu", [&] {
    const scalar_t* sp = step_t.defined() ? step_t.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* ep = eps_t.defined() ? eps_t.const_data_ptr<scalar_t>() : nullptr;
    if (dir.scalar_type() == at::kChar) {
      pgd_step_loop<scalar_t, int8_t>(x_adv.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                                      dir.const_data_ptr<int8_t>(), out.mutable_data_ptr<scalar_t>(), x.numel(),
                                      per_sample(x), step, sp, eps, ep, lo, hi);
    } else {
      pgd_step_loop<scalar_t, scalar_t>(x_adv.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                                        dir.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), x.numel(),
                                        per_sample(x), step, sp, eps, ep, lo, hi);
    }
  });
}

// Shared checks; returns the direction as int8 or in x's dtype.
at::Tensor pgd_prepare(const char* op, const at::Tensor& x_adv, const at::Tensor& x, const at::Tensor& direction) {
  check_same_shape(op, "x_adv", x_adv, "x", x);
  check_same_shape(op, "x_adv", x_adv, "direction", direction);
  TORCH_CHECK_VALUE(x_adv.scalar_type() == x.scalar_type(), op, ": x_adv (", x_adv.scalar_type(), ") and x (",
                    x.scalar_type(), ") differ in dtype");
  if (direction.scalar_type() == at::kChar || direction.scalar_type() == x.scalar_type()) return direction;
  return direction.to(x.scalar_type());
}

at::Tensor pgd_step_cpu(const at::Tensor& x_adv_in, const at::Tensor& x_in, const at::Tensor& direction, double step,
                        const c10::optional<at::Tensor>& step_per_sample, double eps,
                        const c10::optional<at::Tensor>& eps_per_sample, double lo, double hi) {
  at::Tensor dir = pgd_prepare("pgd_step", x_adv_in, x_in, direction);
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

void pgd_step_inplace_cpu(const at::Tensor& x_adv, const at::Tensor& x_in, const at::Tensor& direction, double step,
                          const c10::optional<at::Tensor>& step_per_sample, double eps,
                          const c10::optional<at::Tensor>& eps_per_sample, double lo, double hi) {
  at::Tensor dir = pgd_prepare("pgd_step_", x_adv, x_in, direction);
  at::Tensor x = x_in;
  if (!shared_blocked_layout({x_adv, x, dir})) {
    // x_adv is walked in its own layout only when it is sample-blocked; otherwise compute and copy back.
    if (!sample_blocked(x_adv)) {
      x_adv.copy_(pgd_step_cpu(x_adv, x_in, direction, step, step_per_sample, eps, eps_per_sample, lo, hi));
      return;
    }
    x = x.contiguous(x_adv.suggest_memory_format());
    dir = dir.contiguous(x_adv.suggest_memory_format());
    if (!shared_blocked_layout({x_adv, x, dir})) {
      x_adv.copy_(pgd_step_cpu(x_adv, x_in, direction, step, step_per_sample, eps, eps_per_sample, lo, hi));
      return;
    }
  }
  const int64_t B = x.dim() ? x.size(0) : 1;
  at::Tensor step_t = per_sample_tensor("pgd_step_", "step", step_per_sample, B, x.scalar_type(), x.device());
  at::Tensor eps_t = per_sample_tensor("pgd_step_", "eps", eps_per_sample, B, x.scalar_type(), x.device());
  pgd_step_into(x_adv, x, dir, x_adv, step, step_t, eps, eps_t, lo, hi);
}

}  // namespace

TORCH_LIBRARY_IMPL(mtlguard, CPU, m) {
  m.impl("project_linf", &project_linf_cpu);
  m.impl("pgd_step", &pgd_step_cpu);
  m.impl("pgd_step_", &pgd_step_inplace_cpu);
}

}  // namespace cpu
}  // namespace mtlguard
