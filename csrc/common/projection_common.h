// project_linf, pgd_step and pgd_step_: the per-element math and the host side (checks, layout, per-sample
// values, outputs) shared by the CPU kernels (cpu/projection_kernel.h) and the CUDA kernels
// (cuda/projection_kernel.cuh).
//
//   project_linf: d = clamp(delta, -eps, eps); x_adv = clamp(x + d, lo, hi); delta_out = x_adv - x
//                 (MTL-UE Alg. 1, Clip(D(.), -eps, eps))
//   pgd_step:     x_adv <- clamp(clamp(x_adv + step * dir, x - eps, x + eps), lo, hi)   (GB-MTA Alg. 3, P(.))
//
// Arithmetic in at::opmath_type (float for bf16/half), rounded once on store; s * dir is rounded before the
// add (element_ops.h).  A NaN in the data or in a bound (x, eps, lo, hi) propagates, as in the reference.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>

#include <tuple>

#include "../ops.h"
#include "element_ops.h"

namespace mtlguard {

// ---- per element ------------------------------------------------------------------------------------------

template <typename scalar_t, typename opmath_t>
MTLG_HOST_DEVICE inline void project_linf_element(scalar_t x, scalar_t delta, opmath_t eps, opmath_t lo, opmath_t hi,
                                                  scalar_t& x_adv, scalar_t& delta_out) {
  const opmath_t xv = static_cast<opmath_t>(x);
  const opmath_t d = max_op(min_op(static_cast<opmath_t>(delta), eps), -eps);
  const scalar_t a = static_cast<scalar_t>(min_op(max_op(xv + d, lo), hi));
  x_adv = a;
  delta_out = static_cast<scalar_t>(static_cast<opmath_t>(a) - xv);
}

// Clamp: NanClamp (every kernel) or LegacyClamp (the CPU kernel's pre-issue-15 form, benchmarks only).
template <typename Clamp = NanClamp, typename scalar_t, typename dir_t, typename opmath_t>
MTLG_HOST_DEVICE inline scalar_t pgd_step_element(scalar_t x_adv, scalar_t x, dir_t dir, opmath_t step, opmath_t eps,
                                                  opmath_t lo, opmath_t hi) {
  const opmath_t xv = static_cast<opmath_t>(x);
  opmath_t y = add_rn(static_cast<opmath_t>(x_adv), mul_rn(step, static_cast<opmath_t>(dir)));
  y = Clamp::min(Clamp::max(y, xv - eps), xv + eps);
  return static_cast<scalar_t>(Clamp::min(Clamp::max(y, lo), hi));
}

// ---- host side ----------------------------------------------------------------------------------------------
// project_linf_impl, pgd_step_impl and pgd_step_inplace_impl are the ops a backend registers, instantiated with
// its device guard type (c10::cuda::CUDAGuard; cpu::NoGuard), constructed right after the argument checks, and
// its kernel launcher, called on the checked and prepared tensors.

// project_linf's tensors once checked: x and delta walked in one sample-blocked layout, eps_t the per-sample
// eps ([B] in x's dtype, undefined when absent), x_adv and delta_out freshly allocated like x.
struct ProjectLinfTensors {
  at::Tensor x, delta, eps_t, x_adv, delta_out;
};

// Fills t.x_adv and t.delta_out.
using ProjectLinfKernel = void (*)(const ProjectLinfTensors& t, double eps, double lo, double hi);

template <typename Guard, ProjectLinfKernel kernel>
std::tuple<at::Tensor, at::Tensor> project_linf_impl(const at::Tensor& x_in, const at::Tensor& delta_in, double eps,
                                                     const c10::optional<at::Tensor>& eps_per_sample, double lo,
                                                     double hi) {
  check_same_shape("project_linf", "x", x_in, "delta", delta_in);
  TORCH_CHECK_VALUE(x_in.scalar_type() == delta_in.scalar_type(), "project_linf: x (", x_in.scalar_type(),
                    ") and delta (", delta_in.scalar_type(), ") differ in dtype");
  TORCH_CHECK_VALUE(delta_in.device() == x_in.device(), "project_linf: x and delta are on different devices");
  Guard guard(x_in.device());
  ProjectLinfTensors t{x_in, delta_in, {}, {}, {}};
  if (!shared_blocked_layout({t.x, t.delta})) {
    t.x = t.x.contiguous();
    t.delta = t.delta.contiguous();
  }
  const int64_t B = t.x.dim() ? t.x.size(0) : 1;
  t.eps_t = per_sample_tensor("project_linf", "eps", eps_per_sample, B, t.x.scalar_type(), t.x.device());
  t.x_adv = at::empty_like(t.x);
  t.delta_out = at::empty_like(t.x);
  kernel(t, eps, lo, hi);
  return {t.x_adv, t.delta_out};
}

// pgd_step's tensors once checked: x_adv, x and dir share one sample-blocked layout; the step is written to
// `out` (x_adv itself for pgd_step_); step_t / eps_t as ProjectLinfTensors::eps_t.
struct PgdStepTensors {
  at::Tensor x_adv, x, dir, out, step_t, eps_t;
};

// Writes the step into t.out.
using PgdStepKernel = void (*)(const PgdStepTensors& t, double step, double eps, double lo, double hi);

// Checks shared by pgd_step and pgd_step_; returns the direction as int8 or in x's dtype.
inline at::Tensor pgd_prepare(const char* op, const at::Tensor& x_adv, const at::Tensor& x,
                              const at::Tensor& direction) {
  check_same_shape(op, "x_adv", x_adv, "x", x);
  check_same_shape(op, "x_adv", x_adv, "direction", direction);
  TORCH_CHECK_VALUE(x_adv.scalar_type() == x.scalar_type(), op, ": x_adv (", x_adv.scalar_type(), ") and x (",
                    x.scalar_type(), ") differ in dtype");
  TORCH_CHECK_VALUE(x.device() == x_adv.device() && direction.device() == x_adv.device(), op,
                    ": x_adv, x and direction must be on the same device");
  if (direction.scalar_type() == at::kChar || direction.scalar_type() == x.scalar_type()) return direction;
  return direction.to(x.scalar_type());
}

// Calls f(dir_t{}) with the element type of a direction from pgd_prepare: int8_t, else scalar_t.
template <typename scalar_t, typename F>
void dispatch_direction(const at::Tensor& dir, const F& f) {
  if (dir.scalar_type() == at::kChar) {
    f(int8_t{});
  } else {
    f(scalar_t{});
  }
}

inline void pgd_per_sample(const char* op, PgdStepTensors& t, const c10::optional<at::Tensor>& step_per_sample,
                           const c10::optional<at::Tensor>& eps_per_sample) {
  const int64_t B = t.x.dim() ? t.x.size(0) : 1;
  t.step_t = per_sample_tensor(op, "step", step_per_sample, B, t.x.scalar_type(), t.x.device());
  t.eps_t = per_sample_tensor(op, "eps", eps_per_sample, B, t.x.scalar_type(), t.x.device());
}

template <typename Guard, PgdStepKernel kernel>
at::Tensor pgd_step_impl(const at::Tensor& x_adv_in, const at::Tensor& x_in, const at::Tensor& direction, double step,
                         const c10::optional<at::Tensor>& step_per_sample, double eps,
                         const c10::optional<at::Tensor>& eps_per_sample, double lo, double hi) {
  at::Tensor dir = pgd_prepare("pgd_step", x_adv_in, x_in, direction);
  Guard guard(x_in.device());
  PgdStepTensors t{x_adv_in, x_in, dir, {}, {}, {}};
  if (!shared_blocked_layout({t.x_adv, t.x, t.dir})) {
    t.x_adv = t.x_adv.contiguous();
    t.x = t.x.contiguous();
    t.dir = t.dir.contiguous();
  }
  pgd_per_sample("pgd_step", t, step_per_sample, eps_per_sample);
  t.out = at::empty_like(t.x_adv);
  kernel(t, step, eps, lo, hi);
  return t.out;
}

// In place: x_adv is walked in its own layout when it is sample-blocked (x and dir are brought to it);
// otherwise the out-of-place result is copied into it.
template <typename Guard, PgdStepKernel kernel>
void pgd_step_inplace_impl(const at::Tensor& x_adv, const at::Tensor& x_in, const at::Tensor& direction, double step,
                           const c10::optional<at::Tensor>& step_per_sample, double eps,
                           const c10::optional<at::Tensor>& eps_per_sample, double lo, double hi) {
  at::Tensor dir = pgd_prepare("pgd_step_", x_adv, x_in, direction);
  Guard guard(x_adv.device());
  PgdStepTensors t{x_adv, x_in, dir, x_adv, {}, {}};
  if (!shared_blocked_layout({t.x_adv, t.x, t.dir})) {
    if (sample_blocked(x_adv)) {
      t.x = t.x.contiguous(x_adv.suggest_memory_format());
      t.dir = t.dir.contiguous(x_adv.suggest_memory_format());
    }
    if (!shared_blocked_layout({t.x_adv, t.x, t.dir})) {
      x_adv.copy_(pgd_step_impl<Guard, kernel>(x_adv, x_in, direction, step, step_per_sample, eps, eps_per_sample,
                                               lo, hi));
      return;
    }
  }
  pgd_per_sample("pgd_step_", t, step_per_sample, eps_per_sample);
  kernel(t, step, eps, lo, hi);
}

}  // namespace mtlguard
