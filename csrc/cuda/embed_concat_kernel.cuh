// Part of the unity build: included once, by kernels.cpp / kernels.cu (see there).
#pragma once
// CUDA kernels of embed_concat and its backward (MTL-UE Sec. 4.3).  Labels are range-checked BEFORE any
// launch: on the host when they live on the CPU, else with one reduction on the device and a single
// synchronisation; the first bad label is then reported (IndexError naming task, value and sample).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/Atomic.cuh>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "../embed_concat_common.h"
#include "../ops.h"
#include "cuda_utils.cuh"

namespace mtlguard {
namespace cuda {
namespace {

// Labels on `device` (int64, contiguous), checked against each task's class count before use.
at::Tensor checked_labels(const at::Tensor& labels, const EmbedGeometry& g, c10::Device device) {
  if (labels.device().is_cpu()) {
    at::Tensor lab = labels.to(at::kLong).contiguous();
    check_labels_host(lab, g);
    return lab.to(device);
  }
  at::Tensor lab = labels.to(device, at::kLong).contiguous();
  std::vector<int64_t> sizes(g.K);
  for (int64_t k = 0; k < g.K; ++k) sizes[k] = g.offsets[k + 1] - g.offsets[k];
  at::Tensor sizes_dev = at::from_blob(sizes.data(), {g.K}, at::TensorOptions().dtype(at::kLong)).to(device);
  const bool bad = lab.lt(-1).logical_or(lab.ge(sizes_dev.unsqueeze(0))).any().item<bool>();
  if (bad) check_labels_host(lab.cpu(), g);  // throws IndexError with the first bad label
  return lab;
}

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
    means[i] = static_cast<scalar_t>(s / static_cast<acc_t>(off[k + 1] - off[k]));
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
    const int64_t y = labels[b * K + k];
    const int64_t row = y >= 0 ? off[k] + y : rows + k;  // rows + k: task k's mean accumulator
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
    grad_table[i] = static_cast<scalar_t>(acc[i] + acc[(rows + k) * F + col] / cnt);
  }
}

at::Tensor embed_concat_cuda(const at::Tensor& z_in, const at::Tensor& table_in, const at::Tensor& labels,
                             const at::Tensor& offsets, at::IntArrayRef emb_shape) {
  TORCH_CHECK_VALUE(table_in.dim() == 2, "embed_concat: table must be 2-D [rows, E*h*w], got ", table_in.sizes());
  const EmbedGeometry g = embed_geometry(z_in, table_in.size(0), table_in.size(1), labels, offsets, emb_shape);
  TORCH_CHECK_VALUE(table_in.scalar_type() == z_in.scalar_type(), "embed_concat: table (", table_in.scalar_type(),
                    ") and z (", z_in.scalar_type(), ") differ in dtype");
  TORCH_CHECK_VALUE(table_in.device() == z_in.device(), "embed_concat: table and z are on different devices");
  c10::cuda::CUDAGuard guard(z_in.device());
  at::Tensor lab = checked_labels(labels, g, z_in.device());
  at::Tensor off = offsets_on(g, z_in.device());
  at::Tensor z = z_in.contiguous(), table = table_in.contiguous();
  const int64_t C = g.Cz + g.K * g.E;
  at::Tensor out = at::empty({g.B, C, z.size(2), z.size(3)}, z.options());
  const int64_t n = out.numel();
  if (n == 0) return out;
  cudaStream_t stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, z.scalar_type(), "embed_concat_cuda", [&] {
    at::Tensor means = at::empty({g.K, g.F}, z.options());
    if (g.K * g.F > 0) {
      task_means_kernel<scalar_t><<<blocks_for(g.K * g.F), kThreads, 0, stream>>>(
          table.const_data_ptr<scalar_t>(), off.const_data_ptr<int64_t>(), g.K, g.F, means.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    embed_concat_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
        z.const_data_ptr<scalar_t>(), table.const_data_ptr<scalar_t>(), means.const_data_ptr<scalar_t>(),
        lab.const_data_ptr<int64_t>(), off.const_data_ptr<int64_t>(), out.mutable_data_ptr<scalar_t>(), n, g.Cz, g.K,
        g.E, g.hw);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> embed_concat_backward_cuda(const at::Tensor& grad_out_in, const at::Tensor& labels,
                                                              const at::Tensor& offsets, int64_t table_rows,
                                                              int64_t z_channels, at::IntArrayRef emb_shape) {
  TORCH_CHECK_VALUE(emb_shape.size() == 3, "embed_concat_backward: emb_shape must be (E, h, w), got ", emb_shape);
  const int64_t E = emb_shape[0], h = emb_shape[1], w = emb_shape[2];
  const int64_t K = offsets.numel() - 1;
  TORCH_CHECK_VALUE(grad_out_in.dim() == 4 && grad_out_in.size(1) == z_channels + K * E &&
                        grad_out_in.size(2) == h && grad_out_in.size(3) == w,
                    "embed_concat_backward: grad_out must be [B, ", z_channels + K * E, ", ", h, ", ", w, "], got ",
                    grad_out_in.sizes());
  c10::cuda::CUDAGuard guard(grad_out_in.device());
  const at::Tensor zshape = at::empty({grad_out_in.size(0), z_channels, h, w}, grad_out_in.options().device(at::kMeta));
  const EmbedGeometry g = embed_geometry(zshape, table_rows, E * h * w, labels, offsets, emb_shape);
  at::Tensor lab = checked_labels(labels, g, grad_out_in.device());
  at::Tensor off = offsets_on(g, grad_out_in.device());
  at::Tensor go = grad_out_in.contiguous();
  at::Tensor grad_z = go.narrow(1, 0, g.Cz).contiguous();
  at::Tensor grad_table = at::empty({table_rows, g.F}, go.options());
  if (table_rows * g.F == 0) return {grad_z, grad_table};
  const at::ScalarType acc_type = go.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor acc = at::zeros({table_rows + g.K, g.F}, go.options().dtype(acc_type));
  cudaStream_t stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, go.scalar_type(), "embed_concat_backward_cuda", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const int64_t n = g.B * g.K * g.F;
    if (n > 0) {
      embed_scatter_kernel<scalar_t, acc_t><<<blocks_for(n), kThreads, 0, stream>>>(
          go.const_data_ptr<scalar_t>(), lab.const_data_ptr<int64_t>(), off.const_data_ptr<int64_t>(),
          acc.mutable_data_ptr<acc_t>(), table_rows, g.B, g.Cz, g.K, g.E, g.hw);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    embed_finalize_kernel<scalar_t, acc_t><<<blocks_for(table_rows * g.F), kThreads, 0, stream>>>(
        acc.const_data_ptr<acc_t>(), off.const_data_ptr<int64_t>(), table_rows, g.K, g.F,
        grad_table.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_z, grad_table};
}

}  // namespace

TORCH_LIBRARY_IMPL(mtlguard, CUDA, m) {
  m.impl("embed_concat", &embed_concat_cuda);
  m.impl("embed_concat_backward", &embed_concat_backward_cuda);
}

}  // namespace cuda
}  // namespace mtlguard
