// Part of the unity build: included once, by kernels.cu (see there).
#pragma once
// CUDA kernel of apply_delta_u8 (the engine's native-resolution step): a W pass over the small delta into a
// [N, h, W, Cd] float buffer, then one thread per output byte for the H pass fused with the clip, the add, the
// rounding (__float2int_rn: half to even) and the store.  The tap tables are built on the host, exactly as the CPU
// kernel's, and copied once per call; mul_rn/add_rn keep nvcc from contracting into FMAs, so the result is
// bit-identical to the CPU kernel and to the numpy path.  Host side: ../common/apply_delta_common.h.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <torch/library.h>

#include <vector>

#include "../common/apply_delta_common.h"
#include "cuda_utils.cuh"

namespace mtlguard {
namespace cuda {
namespace {

__global__ void apply_delta_w_kernel(const float* __restrict__ d, const int32_t* __restrict__ iw,
                                     const float* __restrict__ ww, float* __restrict__ t, int64_t total, int64_t K,
                                     int64_t W, int64_t Cd, int64_t h, int64_t w) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int64_t c = i % Cd, X = (i / Cd) % W, r = i / (Cd * W);  // r = n * h + y
    const int64_t n = r / h, y = r % h;
    const float* src = d + ((n * Cd + c) * h + y) * w;
    float acc = mul_rn(src[iw[X * K]], ww[X * K]);
    for (int64_t k = 1; k < K; ++k) acc = add_rn(acc, mul_rn(src[iw[X * K + k]], ww[X * K + k]));
    t[i] = acc;
  }
}

// wh: the H taps' weights already in uint8 steps (weight_u8_steps).
__global__ void apply_delta_h_kernel(const float* __restrict__ t, const int32_t* __restrict__ ih,
                                     const float* __restrict__ wh, const uint8_t* __restrict__ img,
                                     uint8_t* __restrict__ out, int64_t total, int64_t K, int64_t H, int64_t W,
                                     int64_t C, int64_t Cd, int64_t h, float e) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int64_t c = i % C, X = (i / C) % W, r = i / (C * W);  // r = n * H + Y
    const int64_t n = r / H, Y = r % H;
    const int64_t col = X * Cd + (Cd == 1 ? 0 : c);
    const float* tn = t + n * h * W * Cd;
    float acc = mul_rn(tn[ih[Y * K] * W * Cd + col], wh[Y * K]);
    for (int64_t k = 1; k < K; ++k) acc = add_rn(acc, mul_rn(tn[ih[Y * K + k] * W * Cd + col], wh[Y * K + k]));
    out[i] = protect_u8(acc, e, img[i]);
  }
}

template <typename T>
at::Tensor to_device(const std::vector<T>& v, at::ScalarType dtype, c10::Device device) {
  return at::from_blob(const_cast<T*>(v.data()), {static_cast<int64_t>(v.size())}, at::TensorOptions().dtype(dtype))
      .to(device);
}

void apply_delta_run(const ApplyDeltaArgs& a) {
  const c10::Device dev = a.image.device();
  std::vector<float> wh(a.th.w.size());
  for (size_t i = 0; i < wh.size(); ++i) wh[i] = weight_u8_steps(a.th.w[i]);
  at::Tensor iw = to_device(a.tw.idx, at::kInt, dev), ww = to_device(a.tw.w, at::kFloat, dev);
  at::Tensor ih = to_device(a.th.idx, at::kInt, dev), whd = to_device(wh, at::kFloat, dev);
  at::Tensor t = at::empty({a.N, a.h, a.W, a.Cd}, a.delta.options());
  cudaStream_t stream = current_stream();
  const int64_t nt = t.numel(), no = a.out.numel();
  apply_delta_w_kernel<<<blocks_for(nt), kThreads, 0, stream>>>(
      a.delta.const_data_ptr<float>(), iw.const_data_ptr<int32_t>(), ww.const_data_ptr<float>(),
      t.mutable_data_ptr<float>(), nt, a.tw.k, a.W, a.Cd, a.h, a.w);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  apply_delta_h_kernel<<<blocks_for(no), kThreads, 0, stream>>>(
      t.const_data_ptr<float>(), ih.const_data_ptr<int32_t>(), whd.const_data_ptr<float>(),
      a.image.const_data_ptr<uint8_t>(), a.out.mutable_data_ptr<uint8_t>(), no, a.th.k, a.H, a.W, a.C, a.Cd, a.h,
      a.e);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

TORCH_LIBRARY_IMPL(mtlguard, CUDA, m) {
  m.impl("apply_delta_u8", &apply_delta_u8_impl<c10::cuda::CUDAGuard, apply_delta_run>);
}

}  // namespace cuda
}  // namespace mtlguard
