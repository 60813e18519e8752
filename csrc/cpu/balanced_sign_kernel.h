// Part of the unity build: included once, by kernels.cpp (see there).
#pragma once
// CPU kernel of balanced_sign (GB-MTA Eq. 8-9 and baselines).  One read of the T gradients and one int8
// write: each parallel task accumulates a tile of kTile elements in a stack buffer (L1-resident) over the T
// tasks, then stores the sign.  Per-element math, task weights and host side: ../common/balanced_sign_common.h.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <vector>

#include "../common/balanced_sign_common.h"
#include "../ops.h"
#include "cpu_utils.h"

namespace mtlguard {
namespace cpu {
namespace {

constexpr int64_t kTile = 4096;  // long runs per task stream: with T = 40 streams short tiles defeat the prefetcher

// w: [T, B] task weights, nullptr in signtotal mode.
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
        if (w == nullptr) {
          if (t == 0) {
            for (int64_t j = 0; j < n; ++j) acc[j] = sign_term(static_cast<acc_t>(gp[j]));
          } else {
            for (int64_t j = 0; j < n; ++j) acc[j] = add_rn(acc[j], sign_term(static_cast<acc_t>(gp[j])));
          }
        } else {
          const acc_t wt = w[t * B + b];
          if (t == 0) {
            for (int64_t j = 0; j < n; ++j) acc[j] = weighted_term(static_cast<acc_t>(gp[j]), wt);
          } else {
            for (int64_t j = 0; j < n; ++j) acc[j] = add_rn(acc[j], weighted_term(static_cast<acc_t>(gp[j]), wt));
          }
        }
      }
      int8_t* op = out + i0;
      for (int64_t j = 0; j < n; ++j) op[j] = sign_i8(acc[j]);
    }
  });
}

void balanced_sign_run(const BalancedSignArgs& a) {
  const at::ScalarType dtype = a.grads[0].scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "balanced_sign_cpu", [&] {
    using acc_t = sign_acc_t<scalar_t>;
    const at::Tensor w = task_weights(a.losses, a.mode, a.weights, a.T, a.B, sign_acc_type(dtype), at::kCPU);
    std::vector<const scalar_t*> ptrs;
    for (const auto& g : a.grads) ptrs.push_back(g.const_data_ptr<scalar_t>());
    balanced_sign_loop<scalar_t, acc_t>(ptrs, data_or_null<acc_t>(w), a.out.mutable_data_ptr<int8_t>(), a.out.numel(),
                                        per_sample(a.out), a.B);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(mtlguard, CPU, m) {
  m.impl("balanced_sign", &balanced_sign_impl<NoGuard, balanced_sign_run>);
}

}  // namespace cpu
}  // namespace mtlguard
