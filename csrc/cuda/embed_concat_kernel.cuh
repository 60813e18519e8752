// Part of the unity build: included once, by kernels.cu (see there).
#pragma once
// CUDA kernels of embed_concat and its backward (MTL-UE Sec. 4.3): one thread per output element, and an
// atomic scatter-add into a float accumulator.  Labels are range-checked BEFORE any launch (checked_labels).
// Per-element math and host side (the same as the CPU kernels'): ../common/embed_concat_common.h.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/Atomic.cuh>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <type_traits>
#include <vector>

#include "../common/embed_concat_common.h"
#include "cuda_utils.cuh"

namespace mtlguard {
namespace cuda {
namespace {

at::Tensor offsets_on(const EmbedGeometry& g, c10::Device device) {
  std::vector<int64_t> off(g.offsets);
  return at::from_blob(off.data(), {g.K + 1}, at::TensorOptions().dtype(at::kLong)).to(device);
}

template <typename scalar_t>
__global__ void task_means_kernel(const scalar_t* __restrict__ table, const int64_t* __restrict__ off, int64_t K,
                                  int64_t F, scalar_t* __restrict__ means) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < K * F; i += stride) {
    const int64_t k = i / F, j = i % F;
    acc_t s = 0;
    for (int64_t r = off[k]; r < off[k + 1]; ++r) s += static_cast<acc_t>(table[r * F + j]);
    means[i] = embed_mean<scalar_t>(s, static_cast<acc_t>(off[k + 1] - off[k]));
  }
}

template <typename scalar_t>
__global__ void embed_concat_kernel(const scalar_t* __restrict__ z, const scalar_t* __restrict__ table,
                                    const scalar_t* __restrict__ means, const int64_t* __restrict__ labels,
                                    const int64_t* __restrict__ off, scalar_t* __restrict__ out, int64_t n, int64_t Cz,
                                    int64_t K, int64_t E, int64_t hw) {
  const int64_t C = Cz + K * E, F = E * hw;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t b = i / (C * hw), r = i % (C * hw), c = r / hw, p = r % hw;
    if (c < Cz) {
      out[i] = z[(b * Cz + c) * hw + p];
    } else {
      const int64_t k = (c - Cz) / E, col = ((c - Cz) % E) * hw + p;
      const int64_t y = labels[b * K + k];
      out[i] = y >= 0 ? table[(off[k] + y) * F + col] : means[k * F + col];
    }
  }
}

template <typename scalar_t, typename acc_t>
__global__ void embed_scatter_kernel(const scalar_t* __restrict__ grad, const int64_t* __restrict__ labels,
                                     const int64_t* __restrict__ off, acc_t* __restrict__ acc, int64_t rows,
                                     int64_t B, int64_t Cz, int64_t K, int64_t E, int64_t hw) {
  const int64_t C = Cz + K * E, F = E * hw, n = B * K * F;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t b = i / (K * F), k = (i / F) % K, col = i % F;
    const int64_t row = embed_grad_row(labels[b * K + k], off, rows, k);
    gpuAtomicAdd(acc + row * F + col, static_cast<acc_t>(grad[b * C * hw + Cz * hw + k * F + col]));
  }
}

template <typename scalar_t, typename acc_t>
__global__ void embed_finalize_kernel(const acc_t* __restrict__ acc, const int64_t* __restrict__ off, int64_t rows,
                                      int64_t K, int64_t F, scalar_t* __restrict__ grad_table) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < rows * F; i += stride) {
    const int64_t r = i / F, col = i % F;
    int64_t k = 0;
    while (k + 1 < K && off[k + 1] <= r) ++k;
    const acc_t cnt = static_cast<acc_t>(off[k + 1] - off[k]);
    grad_table[i] = embed_table_grad<scalar_t>(acc[i], acc[(rows + k) * F + col], cnt);
  }
}

void embed_concat_run(const EmbedConcatArgs& a) {
  const EmbedGeometry& g = a.g;
  at::Tensor off = offsets_on(g, a.z.device());
  const int64_t n = a.out.numel();
  if (n == 0) return;
  cudaStream_t stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a.z.scalar_type(), "embed_concat_cuda", [&] {
    at::Tensor means = at::empty({g.K, g.F}, a.z.options());
    if (g.K * g.F > 0) {
      task_means_kernel<scalar_t><<<blocks_for(g.K * g.F), kThreads, 0, stream>>>(
          a.table.const_data_ptr<scalar_t>(), off.const_data_ptr<int64_t>(), g.K, g.F,
          means.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    embed_concat_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
        a.z.const_data_ptr<scalar_t>(), a.table.const_data_ptr<scalar_t>(), means.const_data_ptr<scalar_t>(),
        a.labels.const_data_ptr<int64_t>(), off.const_data_ptr<int64_t>(), a.out.mutable_data_ptr<scalar_t>(), n,
        g.Cz, g.K, g.E, g.hw);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

at::Tensor embed_concat_backward_run(const EmbedBackwardArgs& a) {
  const EmbedGeometry& g = a.g;
  const at::Tensor& go = a.grad_out;
  at::Tensor off = offsets_on(g, go.device());
  at::Tensor grad_z = go.narrow(1, 0, g.Cz).contiguous();
  const int64_t rows = a.table_rows;
  if (rows * g.F == 0) return grad_z;
  const at::ScalarType acc_type = go.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor acc = at::zeros({rows + g.K, g.F}, go.options().dtype(acc_type));
  cudaStream_t stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, go.scalar_type(), "embed_concat_backward_cuda", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const int64_t n = g.B * g.K * g.F;
    if (n > 0) {
      embed_scatter_kernel<scalar_t, acc_t><<<blocks_for(n), kThreads, 0, stream>>>(
          go.const_data_ptr<scalar_t>(), a.labels.const_data_ptr<int64_t>(), off.const_data_ptr<int64_t>(),
          acc.mutable_data_ptr<acc_t>(), rows, g.B, g.Cz, g.K, g.E, g.hw);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    embed_finalize_kernel<scalar_t, acc_t><<<blocks_for(rows * g.F), kThreads, 0, stream>>>(
        acc.const_data_ptr<acc_t>(), off.const_data_ptr<int64_t>(), rows, g.K, g.F,
        a.grad_table.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_z;
}

}  // namespace

TORCH_LIBRARY_IMPL(mtlguard, CUDA, m) {
  m.impl("embed_concat", &embed_concat_impl<c10::cuda::CUDAGuard, embed_concat_run>);
  m.impl("embed_concat_backward", &embed_concat_backward_impl<c10::cuda::CUDAGuard, embed_concat_backward_run>);
}

}  // namespace cuda
}  // namespace mtlguard
