// Part of the unity build: included once, by kernels.cpp / kernels.cu (see there).
#pragma once
// CPU kernels of embed_concat and its backward (MTL-UE Sec. 4.3: the decoder input concat(z, e^1_{y1}, ...,
// e^K_{yK})).  Label -1 = task not protected: that task's mean class embedding is used (partial protection),
// so in the backward its gradient is spread as 1/C_k to each of the task's rows.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cstring>
#include <vector>

#include "../embed_concat_common.h"
#include "../ops.h"
#include "cpu_utils.h"

namespace mtlguard {
namespace cpu {
namespace {

at::Tensor embed_concat_cpu(const at::Tensor& z_in, const at::Tensor& table_in, const at::Tensor& labels,
                            const at::Tensor& offsets, at::IntArrayRef emb_shape) {
  TORCH_CHECK_VALUE(table_in.dim() == 2, "embed_concat: table must be 2-D [rows, E*h*w], got ", table_in.sizes());
  const EmbedGeometry g = embed_geometry(z_in, table_in.size(0), table_in.size(1), labels, offsets, emb_shape);
  TORCH_CHECK_VALUE(table_in.scalar_type() == z_in.scalar_type(), "embed_concat: table (", table_in.scalar_type(),
                    ") and z (", z_in.scalar_type(), ") differ in dtype");
  at::Tensor lab = labels.to(at::kCPU, at::kLong).contiguous();
  check_labels_host(lab, g);
  at::Tensor z = z_in.contiguous(), table = table_in.contiguous();
  const int64_t C = g.Cz + g.K * g.E;
  at::Tensor out = at::empty({g.B, C, z.size(2), z.size(3)}, z.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, z.scalar_type(), "embed_concat_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* tp = table.const_data_ptr<scalar_t>();
    // Mean class embedding of each task (K rows), rounded to scalar_t like the reference's rows.mean(0).
    std::vector<scalar_t> means(static_cast<size_t>(g.K * g.F));
    at::parallel_for(0, g.F, 4096, [&](int64_t j0, int64_t j1) {
      std::vector<acc_t> s(static_cast<size_t>(j1 - j0));
      for (int64_t k = 0; k < g.K; ++k) {
        std::fill(s.begin(), s.end(), acc_t(0));
        for (int64_t r = g.offsets[k]; r < g.offsets[k + 1]; ++r) {
          const scalar_t* row = tp + r * g.F;
          for (int64_t j = j0; j < j1; ++j) s[j - j0] += static_cast<acc_t>(row[j]);
        }
        const acc_t n = static_cast<acc_t>(g.offsets[k + 1] - g.offsets[k]);
        for (int64_t j = j0; j < j1; ++j) means[k * g.F + j] = static_cast<scalar_t>(s[j - j0] / n);
      }
    });
    const scalar_t* zp = z.const_data_ptr<scalar_t>();
    const int64_t* lp = lab.const_data_ptr<int64_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    const int64_t zblock = g.Cz * g.hw, oblock = C * g.hw;
    const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(1, oblock));
    at::parallel_for(0, g.B, grain, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        scalar_t* ob = op + b * oblock;
        if (zblock) std::memcpy(ob, zp + b * zblock, sizeof(scalar_t) * zblock);
        for (int64_t k = 0; k < g.K; ++k) {
          const int64_t y = lp[b * g.K + k];
          const scalar_t* src = y >= 0 ? tp + (g.offsets[k] + y) * g.F : means.data() + k * g.F;
          if (g.F) std::memcpy(ob + zblock + k * g.F, src, sizeof(scalar_t) * g.F);
        }
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> embed_concat_backward_cpu(const at::Tensor& grad_out_in, const at::Tensor& labels,
                                                             const at::Tensor& offsets, int64_t table_rows,
                                                             int64_t z_channels, at::IntArrayRef emb_shape) {
  TORCH_CHECK_VALUE(emb_shape.size() == 3, "embed_concat_backward: emb_shape must be (E, h, w), got ", emb_shape);
  const int64_t E = emb_shape[0], h = emb_shape[1], w = emb_shape[2];
  const int64_t K = offsets.numel() - 1;
  TORCH_CHECK_VALUE(grad_out_in.dim() == 4 && grad_out_in.size(1) == z_channels + K * E &&
                        grad_out_in.size(2) == h && grad_out_in.size(3) == w,
                    "embed_concat_backward: grad_out must be [B, ", z_channels + K * E, ", ", h, ", ", w, "], got ",
                    grad_out_in.sizes());
  const at::Tensor zshape = at::empty({grad_out_in.size(0), z_channels, h, w}, grad_out_in.options().device(at::kMeta));
  const EmbedGeometry g = embed_geometry(zshape, table_rows, E * h * w, labels, offsets, emb_shape);
  at::Tensor lab = labels.to(at::kCPU, at::kLong).contiguous();
  check_labels_host(lab, g);
  at::Tensor go = grad_out_in.contiguous();
  at::Tensor grad_z = at::empty({g.B, g.Cz, h, w}, go.options());
  at::Tensor grad_table = at::empty({table_rows, g.F}, go.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, go.scalar_type(), "embed_concat_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gp = go.const_data_ptr<scalar_t>();
    const int64_t* lp = lab.const_data_ptr<int64_t>();
    const int64_t C = g.Cz + g.K * g.E, zblock = g.Cz * g.hw, oblock = C * g.hw;
    scalar_t* gz = grad_z.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, g.B, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, zblock)), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        if (zblock) std::memcpy(gz + b * zblock, gp + b * oblock, sizeof(scalar_t) * zblock);
      }
    });
    // Scatter-add: parallel over embedding columns (no two threads touch the same accumulator).
    scalar_t* gt = grad_table.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, g.F, 2048, [&](int64_t j0, int64_t j1) {
      const int64_t n = j1 - j0;
      std::vector<acc_t> acc(static_cast<size_t>((table_rows + g.K) * n), acc_t(0));  // rows, then K mean rows
      for (int64_t b = 0; b < g.B; ++b) {
        for (int64_t k = 0; k < g.K; ++k) {
          const int64_t y = lp[b * g.K + k];
          acc_t* dst = acc.data() + (y >= 0 ? g.offsets[k] + y : table_rows + k) * n;
          const scalar_t* src = gp + b * oblock + zblock + k * g.F + j0;
          for (int64_t j = 0; j < n; ++j) dst[j] += static_cast<acc_t>(src[j]);
        }
      }
      for (int64_t k = 0; k < g.K; ++k) {
        const acc_t cnt = static_cast<acc_t>(g.offsets[k + 1] - g.offsets[k]);
        const acc_t* mean = acc.data() + (table_rows + k) * n;
        for (int64_t r = g.offsets[k]; r < g.offsets[k + 1]; ++r) {
          const acc_t* a = acc.data() + r * n;
          scalar_t* o = gt + r * g.F + j0;
          for (int64_t j = 0; j < n; ++j) o[j] = static_cast<scalar_t>(a[j] + mean[j] / cnt);
        }
      }
    });
  });
  return {grad_z, grad_table};
}

}  // namespace

TORCH_LIBRARY_IMPL(mtlguard, CPU, m) {
  m.impl("embed_concat", &embed_concat_cpu);
  m.impl("embed_concat_backward", &embed_concat_backward_cpu);
}

}  // namespace cpu
}  // namespace mtlguard
