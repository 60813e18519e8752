// balanced_sign: the per-element math and the host side (checks, layout, output, task weights) shared by
// the CPU kernel (cpu/balanced_sign_kernel.h) and the CUDA kernel (cuda/balanced_sign_kernel.cuh).
//
// out = sign(sum_t w_tb * g_t) as int8 (GB-MTA Eq. 8-9; the TOTAL, SIGNTOTAL and weighted baselines), with
// w [T, B]: gbmta 1 / max(L, LOSS_FLOOR), 0 where L is NaN/inf (Eq. 9); total 1; weighted the given weights;
// signtotal sums sign(g_t) instead.  Accumulation in float (double for double gradients), in task order, as
// acc = acc + g * w with the product rounded before the add -- the same rounding as the reference.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/where.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <string>
#include <type_traits>
#include <vector>

#include "../ops.h"
#include "element_ops.h"

namespace mtlguard {

// ---- per element ------------------------------------------------------------------------------------------

// Accumulator type of balanced_sign: float, double for double gradients (the reference's acc_dtype).
template <typename scalar_t>
using sign_acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

inline at::ScalarType sign_acc_type(at::ScalarType grad_type) {
  return grad_type == at::kDouble ? at::kDouble : at::kFloat;
}

// Task t's term of the sum for one element: g * w_tb ...
template <typename acc_t>
MTLG_HOST_DEVICE inline acc_t weighted_term(acc_t g, acc_t w) {
  return mul_rn(g, w);
}

// ... or, in signtotal mode, sign(g) (-1, 0 or +1; 0 for NaN).
template <typename acc_t>
MTLG_HOST_DEVICE inline acc_t sign_term(acc_t g) {
  return static_cast<acc_t>((g > acc_t(0)) - (g < acc_t(0)));  // not via int8: keeps the CPU loop vectorized
}

// ---- host side ----------------------------------------------------------------------------------------------

// The task weights w [T, B] (acc_type, contiguous, on `device`); undefined in signtotal mode.
inline at::Tensor task_weights(const at::Tensor& losses, SignMode mode, const c10::optional<at::Tensor>& weights,
                               int64_t T, int64_t B, at::ScalarType acc_type, c10::Device device) {
  if (mode == SignMode::kGbmta) {
    at::Tensor l = losses.to(device, acc_type);
    return at::where(l.isfinite(), l.clamp_min(kLossFloor).reciprocal(), at::Scalar(0.0)).contiguous();
  }
  if (mode == SignMode::kWeighted) {
    TORCH_CHECK_VALUE(weights.has_value() && weights->defined(),
                      "balanced_sign: mode 'weighted' needs weights ([T] or [T, B])");
    at::Tensor wt = weights->to(device, acc_type);
    if (wt.dim() == 1 && wt.size(0) == T) wt = wt.unsqueeze(1).expand({T, B});
    TORCH_CHECK_VALUE(wt.dim() == 2 && wt.size(0) == T && wt.size(1) == B, "balanced_sign: weights shape ",
                      weights->sizes(), " != losses shape [", T, ", ", B, "] (or [T]=[", T, "])");
    return wt.contiguous();
  }
  if (mode == SignMode::kTotal) return at::empty({T, B}, losses.options().dtype(acc_type).device(device)).fill_(1);
  return at::Tensor();  // signtotal
}

// balanced_sign's arguments once checked: the T gradients [B, ...] in one shared sample-blocked layout and
// the int8 output, allocated like them.
struct BalancedSignArgs {
  SignMode mode;
  std::vector<at::Tensor> grads;
  at::Tensor out, losses;
  c10::optional<at::Tensor> weights;
  int64_t T, B;
};

// Fills a.out (computing the weights with task_weights).
using BalancedSignKernel = void (*)(const BalancedSignArgs& a);

// The op a backend registers, instantiated with its device guard type (c10::cuda::CUDAGuard; cpu::NoGuard),
// constructed after the checks, and its kernel launcher.
template <typename Guard, BalancedSignKernel kernel>
at::Tensor balanced_sign_impl(at::TensorList grads_in, const at::Tensor& losses, c10::string_view mode_sv,
                              const c10::optional<at::Tensor>& weights) {
  const SignMode mode = parse_mode(std::string(mode_sv));
  TORCH_CHECK_VALUE(!grads_in.empty(), "balanced_sign: empty list of task gradients");
  const at::Tensor& g0 = grads_in[0];
  TORCH_CHECK_VALUE(g0.dim() >= 1, "balanced_sign: task gradients must be [B, ...], got shape ", g0.sizes());
  const int64_t T = static_cast<int64_t>(grads_in.size()), B = g0.size(0);
  for (int64_t t = 0; t < T; ++t) {
    TORCH_CHECK_VALUE(grads_in[t].sizes() == g0.sizes(), "balanced_sign: task gradient ", t, " has shape ",
                      grads_in[t].sizes(), ", task 0 has ", g0.sizes());
    TORCH_CHECK_VALUE(grads_in[t].scalar_type() == g0.scalar_type(), "balanced_sign: task gradient ", t,
                      " has dtype ", grads_in[t].scalar_type(), ", task 0 has ", g0.scalar_type());
    TORCH_CHECK_VALUE(grads_in[t].device() == g0.device(), "balanced_sign: task gradient ", t, " is on ",
                      grads_in[t].device(), ", task 0 on ", g0.device());
  }
  TORCH_CHECK_VALUE(losses.dim() == 2 && losses.size(0) == T && losses.size(1) == B,
                    "balanced_sign: losses must be [T, B] = [", T, ", ", B, "], got ", losses.sizes());
  Guard guard(g0.device());
  BalancedSignArgs a{mode, std::vector<at::Tensor>(grads_in.begin(), grads_in.end()), {}, losses, weights, T, B};
  if (!shared_blocked_layout(a.grads)) {
    for (auto& g : a.grads) g = g.contiguous();
  }
  a.out = at::empty_like(a.grads[0], a.grads[0].options().dtype(at::kChar));
  kernel(a);
  return a.out;
}

}  // namespace mtlguard
