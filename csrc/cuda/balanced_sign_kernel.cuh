// Part of the unity build: included once, by kernels.cpp / kernels.cu (see there).
#pragma once
// CUDA kernel of balanced_sign: out = sign(sum_t w_tb * g_t) as int8 (GB-MTA Eq. 8-9 and baselines).
// The T gradient pointers travel in the kernel arguments (up to kMaxTasks per launch; more tasks are
// processed in chunks through a float accumulator).  One read of each gradient, one int8 write.
// acc = acc + g * w with explicit round-to-nearest multiply and add (no FMA): same rounding as the reference.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/where.h>
#include <torch/library.h>

#include <vector>

#include "../ops.h"
#include "cuda_utils.cuh"

namespace mtlguard {
namespace cuda {
namespace {

constexpr int kMaxTasks = 64;

template <typename scalar_t>
struct TaskPtrs {
  const scalar_t* p[kMaxTasks];
};

// acc_in: previous chunks' partial sums (nullptr for the first chunk); acc_out != nullptr: store partial sums
// instead of the sign (not the last chunk).  w: [T, B] weights (nullptr: signtotal).
template <typename scalar_t, typename acc_t, int N>
__global__ void balanced_sign_kernel(TaskPtrs<scalar_t> g, int ntasks, int t0, const acc_t* __restrict__ w,
                                     int64_t B, const acc_t* __restrict__ acc_in, acc_t* __restrict__ acc_out,
                                     int8_t* __restrict__ out, int64_t nvec, int64_t inner) {
  using V = aligned_vec<scalar_t, N>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t v = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; v < nvec; v += stride) {
    const int64_t b = (v * N) / inner;
    acc_t acc[N];
#pragma unroll
    for (int k = 0; k < N; ++k) acc[k] = acc_in ? acc_in[v * N + k] : acc_t(0);
    for (int t = 0; t < ntasks; ++t) {
      const V gv = reinterpret_cast<const V*>(g.p[t])[v];
      if (w == nullptr) {
#pragma unroll
        for (int k = 0; k < N; ++k) acc[k] = add_rn(acc[k], static_cast<acc_t>(sign_i8(static_cast<acc_t>(gv.v[k]))));
      } else {
        const acc_t wt = w[(t0 + t) * B + b];
#pragma unroll
        for (int k = 0; k < N; ++k) acc[k] = add_rn(acc[k], mul_rn(static_cast<acc_t>(gv.v[k]), wt));
      }
    }
    if (acc_out) {
#pragma unroll
      for (int k = 0; k < N; ++k) acc_out[v * N + k] = acc[k];
    } else {
      aligned_vec<int8_t, N> o;
#pragma unroll
      for (int k = 0; k < N; ++k) o.v[k] = sign_i8(acc[k]);
      reinterpret_cast<aligned_vec<int8_t, N>*>(out)[v] = o;
    }
  }
}

at::Tensor task_weights(const at::Tensor& losses, SignMode mode, const c10::optional<at::Tensor>& weights, int64_t T,
                        int64_t B, at::ScalarType acc_type, c10::Device device) {
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

at::Tensor balanced_sign_cuda(at::TensorList grads_in, const at::Tensor& losses, c10::string_view mode_sv,
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
  c10::cuda::CUDAGuard guard(g0.device());
  std::vector<at::Tensor> grads(grads_in.begin(), grads_in.end());
  if (!shared_blocked_layout(grads)) {
    for (auto& g : grads) g = g.contiguous();
  }
  at::Tensor out = at::empty_like(grads[0], grads[0].options().dtype(at::kChar));
  const int64_t n = out.numel(), inner = per_sample(out);
  if (n == 0) return out;
  const at::ScalarType acc_type = g0.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor w = task_weights(losses, mode, weights, T, B, acc_type, g0.device());
  cudaStream_t stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, g0.scalar_type(), "balanced_sign_cuda", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    constexpr int N = vec_width<scalar_t>() < 4 ? vec_width<scalar_t>() : 4;  // 4 int8 = one 32-bit store
    bool vec = (inner % N == 0) && (n % N == 0) && aligned_to(out.const_data_ptr(), N);
    for (const auto& g : grads) vec = vec && aligned_to(g.const_data_ptr(), sizeof(scalar_t) * N);
    const acc_t* wp = w.defined() ? w.const_data_ptr<acc_t>() : nullptr;
    at::Tensor acc_a, acc_b;
    if (T > kMaxTasks) {
      acc_a = at::empty({n}, out.options().dtype(acc_type));
      acc_b = at::empty({n}, out.options().dtype(acc_type));
    }
    const acc_t* acc_in = nullptr;
    for (int64_t t0 = 0; t0 < T; t0 += kMaxTasks) {
      const int nt = static_cast<int>(std::min<int64_t>(kMaxTasks, T - t0));
      TaskPtrs<scalar_t> ptrs{};
      for (int t = 0; t < nt; ++t) ptrs.p[t] = grads[t0 + t].const_data_ptr<scalar_t>();
      const bool last = t0 + nt >= T;
      acc_t* acc_out = last ? nullptr : ((t0 / kMaxTasks) % 2 == 0 ? acc_a : acc_b).mutable_data_ptr<acc_t>();
      int8_t* op = out.mutable_data_ptr<int8_t>();
      if (vec) {
        balanced_sign_kernel<scalar_t, acc_t, N><<<blocks_for(n / N), kThreads, 0, stream>>>(
            ptrs, nt, static_cast<int>(t0), wp, B, acc_in, acc_out, op, n / N, inner);
      } else {
        balanced_sign_kernel<scalar_t, acc_t, 1><<<blocks_for(n), kThreads, 0, stream>>>(
            ptrs, nt, static_cast<int>(t0), wp, B, acc_in, acc_out, op, n, inner);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      acc_in = acc_out;
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mtlguard, CUDA, m) { m.impl("balanced_sign", &balanced_sign_cuda); }

}  // namespace cuda
}  // namespace mtlguard
