// Part of the unity build: included once, by kernels.cpp / kernels.cu (see there).
#pragma once
// CPU kernel of balanced_sign: out = sign(sum_t w_tb * g_t) as int8 (GB-MTA Eq. 8-9 and the TOTAL,
// SIGNTOTAL and weighted baselines).  One read of the T gradients and one int8 write: each parallel task
// accumulates a tile of TILE elements in a stack buffer (L1-resident) over the T tasks, then stores the sign.
//
// The per-task, per-sample weights w [T, B] are computed first (tiny): gbmta w = 1 / max(L, LOSS_FLOOR),
// 0 where L is NaN/inf; total w = 1; weighted w = given weights.  Accumulation is in float (double for
// double gradients), in task order, as acc = acc + g * w -- the same rounding as the reference.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "../ops.h"
#include "cpu_utils.h"

namespace mtlguard {
namespace cpu {
namespace {

constexpr int64_t kTile = 4096;  // long runs per task stream: with T = 40 streams short tiles defeat the prefetcher

template <typename acc_t>
std::vector<acc_t> task_weights(const at::Tensor& losses, SignMode mode, const c10::optional<at::Tensor>& weights,
                                int64_t T, int64_t B) {
  const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
  std::vector<acc_t> w(static_cast<size_t>(T * B), acc_t(1));
  if (mode == SignMode::kGbmta) {
    at::Tensor l = losses.to(at::kCPU, acc_type).contiguous();
    const acc_t* lp = l.const_data_ptr<acc_t>();
    const acc_t floor = static_cast<acc_t>(kLossFloor);
    for (int64_t i = 0; i < T * B; ++i) {
      const acc_t v = lp[i];
      w[i] = std::isfinite(v) ? acc_t(1) / (v > floor ? v : floor) : acc_t(0);
    }
  } else if (mode == SignMode::kWeighted) {
    TORCH_CHECK_VALUE(weights.has_value() && weights->defined(),
                      "balanced_sign: mode 'weighted' needs weights ([T] or [T, B])");
    at::Tensor wt = weights->to(at::kCPU, acc_type);
    if (wt.dim() == 1 && wt.size(0) == T) wt = wt.unsqueeze(1).expand({T, B});
    TORCH_CHECK_VALUE(wt.dim() == 2 && wt.size(0) == T && wt.size(1) == B, "balanced_sign: weights shape ",
                      weights->sizes(), " != losses shape [", T, ", ", B, "] (or [T]=[", T, "])");
    wt = wt.contiguous();
    std::copy(wt.const_data_ptr<acc_t>(), wt.const_data_ptr<acc_t>() + T * B, w.begin());
  }
  return w;
}

template <typename scalar_t, typename acc_t>
void balanced_sign_loop(const std::vector<const scalar_t*>& g, const acc_t* w, int8_t* out, int64_t numel,
                        int64_t inner, int64_t B) {
  const int64_t T = static_cast<int64_t>(g.size());
  for_each_sample_segment(numel, inner, [&](int64_t b, int64_t begin, int64_t end) {
    acc_t acc[kTile];
    for (int64_t i0 = begin; i0 < end; i0 += kTile) {
      const int64_t n = std::min(kTile, end - i0);
      for (int64_t t = 0; t < T; ++t) {
        const scalar_t* gp = g[t] + i0;
        if (w == nullptr) {  // signtotal: sum of signs
          if (t == 0) {
            for (int64_t j = 0; j < n; ++j) {
              const acc_t v = static_cast<acc_t>(gp[j]);
              acc[j] = static_cast<acc_t>((v > acc_t(0)) - (v < acc_t(0)));
            }
          } else {
            for (int64_t j = 0; j < n; ++j) {
              const acc_t v = static_cast<acc_t>(gp[j]);
              acc[j] += static_cast<acc_t>((v > acc_t(0)) - (v < acc_t(0)));
            }
          }
        } else {
          const acc_t wt = w[t * B + b];
          if (t == 0) {
            for (int64_t j = 0; j < n; ++j) acc[j] = static_cast<acc_t>(gp[j]) * wt;
          } else {
            for (int64_t j = 0; j < n; ++j) acc[j] += static_cast<acc_t>(gp[j]) * wt;
          }
        }
      }
      int8_t* op = out + i0;
      for (int64_t j = 0; j < n; ++j) op[j] = static_cast<int8_t>((acc[j] > acc_t(0)) - (acc[j] < acc_t(0)));
    }
  });
}

at::Tensor balanced_sign_cpu(at::TensorList grads_in, const at::Tensor& losses, c10::string_view mode_sv,
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
  }
  TORCH_CHECK_VALUE(losses.dim() == 2 && losses.size(0) == T && losses.size(1) == B,
                    "balanced_sign: losses must be [T, B] = [", T, ", ", B, "], got ", losses.sizes());
  std::vector<at::Tensor> grads(grads_in.begin(), grads_in.end());
  if (!shared_blocked_layout(grads)) {
    for (auto& g : grads) g = g.contiguous();
  }
  at::Tensor out = at::empty_like(grads[0], grads[0].options().dtype(at::kChar));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, g0.scalar_type(), "balanced_sign_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    std::vector<acc_t> w;
    if (mode != SignMode::kSignTotal) w = task_weights<acc_t>(losses, mode, weights, T, B);
    std::vector<const scalar_t*> ptrs;
    for (const auto& g : grads) ptrs.push_back(g.const_data_ptr<scalar_t>());
    balanced_sign_loop<scalar_t, acc_t>(ptrs, mode == SignMode::kSignTotal ? nullptr : w.data(),
                                        out.mutable_data_ptr<int8_t>(), out.numel(), per_sample(out), B);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mtlguard, CPU, m) { m.impl("balanced_sign", &balanced_sign_cpu); }

}  // namespace cpu
}  // namespace mtlguard
