// Part of the unity build: included once, by kernels.cu (see there).
#pragma once
// CUDA kernel of balanced_sign (GB-MTA Eq. 8-9 and baselines).  The T gradient pointers travel in the kernel
// arguments (up to kMaxTasks per launch; more tasks are processed in chunks through a float accumulator).
// One read of each gradient, one int8 write; add_rn/mul_rn: no FMA, the same rounding as the reference.
// Per-element math, task weights and host side (the same as the CPU kernel's): ../common/balanced_sign_common.h.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../common/balanced_sign_common.h"
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
        for (int k = 0; k < N; ++k) acc[k] = add_rn(acc[k], sign_term(static_cast<acc_t>(gv.v[k])));
      } else {
        const acc_t wt = w[(t0 + t) * B + b];
#pragma unroll
        for (int k = 0; k < N; ++k) acc[k] = add_rn(acc[k], weighted_term(static_cast<acc_t>(gv.v[k]), wt));
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

void balanced_sign_run(const BalancedSignArgs& a) {
  const at::Tensor& out = a.out;
  const int64_t n = out.numel(), inner = per_sample(out), T = a.T;
  if (n == 0) return;
  const at::ScalarType dtype = a.grads[0].scalar_type(), acc_type = sign_acc_type(dtype);
  at::Tensor w = task_weights(a.losses, a.mode, a.weights, T, a.B, acc_type, a.grads[0].device());
  cudaStream_t stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "balanced_sign_cuda", [&] {
    using acc_t = sign_acc_t<scalar_t>;
    constexpr int N = vec_width<scalar_t>() < 4 ? vec_width<scalar_t>() : 4;  // 4 int8 = one 32-bit store
    bool vec = (inner % N == 0) && (n % N == 0) && aligned_to(out.const_data_ptr(), N);
    for (const auto& g : a.grads) vec = vec && aligned_to(g.const_data_ptr(), sizeof(scalar_t) * N);
    const acc_t* wp = data_or_null<acc_t>(w);
    at::Tensor acc_a, acc_b;
    if (T > kMaxTasks) {
      acc_a = at::empty({n}, out.options().dtype(acc_type));
      acc_b = at::empty({n}, out.options().dtype(acc_type));
    }
    const acc_t* acc_in = nullptr;
    for (int64_t t0 = 0; t0 < T; t0 += kMaxTasks) {
      const int nt = static_cast<int>(std::min<int64_t>(kMaxTasks, T - t0));
      TaskPtrs<scalar_t> ptrs{};
      for (int t = 0; t < nt; ++t) ptrs.p[t] = a.grads[t0 + t].const_data_ptr<scalar_t>();
      const bool last = t0 + nt >= T;
      acc_t* acc_out = last ? nullptr : ((t0 / kMaxTasks) % 2 == 0 ? acc_a : acc_b).mutable_data_ptr<acc_t>();
      int8_t* op = out.mutable_data_ptr<int8_t>();
      with_vec_width<N>(vec, [&](auto width) {
        constexpr int W = decltype(width)::value;
        balanced_sign_kernel<scalar_t, acc_t, W><<<blocks_for(n / W), kThreads, 0, stream>>>(
            ptrs, nt, static_cast<int>(t0), wp, a.B, acc_in, acc_out, op, n / W, inner);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
      acc_in = acc_out;
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(mtlguard, CUDA, m) {
  m.impl("balanced_sign", &balanced_sign_impl<c10::cuda::CUDAGuard, balanced_sign_run>);
}

}  // namespace cuda
}  // namespace mtlguard
