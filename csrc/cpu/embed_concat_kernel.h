// Part of the unity build: included once, by kernels.cpp (see there).
#pragma once
// CPU kernels of embed_concat and its backward (MTL-UE Sec. 4.3): copies of z and of the chosen class rows
// (or task means), and a scatter-add parallel over embedding columns.  Per-element math and host side:
// ../common/embed_concat_common.h.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cstring>
#include <vector>

#include "../common/embed_concat_common.h"
#include "cpu_utils.h"

namespace mtlguard {
namespace cpu {
namespace {

void embed_concat_run(const EmbedConcatArgs& a) {
  const EmbedGeometry& g = a.g;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a.z.scalar_type(), "embed_concat_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* tp = a.table.const_data_ptr<scalar_t>();
    // Mean class embedding of each task (K rows).
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
        for (int64_t j = j0; j < j1; ++j) means[k * g.F + j] = embed_mean<scalar_t>(s[j - j0], n);
      }
    });
    const scalar_t* zp = a.z.const_data_ptr<scalar_t>();
    const int64_t* lp = a.labels.const_data_ptr<int64_t>();
    scalar_t* op = a.out.mutable_data_ptr<scalar_t>();
    const int64_t zblock = g.Cz * g.hw, oblock = (g.Cz + g.K * g.E) * g.hw;
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
}

at::Tensor embed_concat_backward_run(const EmbedBackwardArgs& a) {
  const EmbedGeometry& g = a.g;
  const at::Tensor& go = a.grad_out;
  at::Tensor grad_z = at::empty({g.B, g.Cz, go.size(2), go.size(3)}, go.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, go.scalar_type(), "embed_concat_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gp = go.const_data_ptr<scalar_t>();
    const int64_t* lp = a.labels.const_data_ptr<int64_t>();
    const int64_t C = g.Cz + g.K * g.E, zblock = g.Cz * g.hw, oblock = C * g.hw;
    scalar_t* gz = grad_z.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, g.B, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, zblock)), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        if (zblock) std::memcpy(gz + b * zblock, gp + b * oblock, sizeof(scalar_t) * zblock);
      }
    });
    // Scatter-add: parallel over embedding columns (no two threads touch the same accumulator).
    scalar_t* gt = a.grad_table.mutable_data_ptr<scalar_t>();
    const int64_t rows = a.table_rows;
    at::parallel_for(0, g.F, 2048, [&](int64_t j0, int64_t j1) {
      const int64_t n = j1 - j0;
      std::vector<acc_t> acc(static_cast<size_t>((rows + g.K) * n), acc_t(0));  // rows, then K mean rows
      for (int64_t b = 0; b < g.B; ++b) {
        for (int64_t k = 0; k < g.K; ++k) {
          acc_t* dst = acc.data() + embed_grad_row(lp[b * g.K + k], g.offsets.data(), rows, k) * n;
          const scalar_t* src = gp + b * oblock + zblock + k * g.F + j0;
          for (int64_t j = 0; j < n; ++j) dst[j] += static_cast<acc_t>(src[j]);
        }
      }
      for (int64_t k = 0; k < g.K; ++k) {
        const acc_t cnt = static_cast<acc_t>(g.offsets[k + 1] - g.offsets[k]);
        const acc_t* mean = acc.data() + (rows + k) * n;
        for (int64_t r = g.offsets[k]; r < g.offsets[k + 1]; ++r) {
          const acc_t* own = acc.data() + r * n;
          scalar_t* o = gt + r * g.F + j0;
          for (int64_t j = 0; j < n; ++j) o[j] = embed_table_grad<scalar_t>(own[j], mean[j], cnt);
        }
      }
    });
  });
  return grad_z;
}

}  // namespace

TORCH_LIBRARY_IMPL(mtlguard, CPU, m) {
  m.impl("embed_concat", &embed_concat_impl<NoGuard, embed_concat_run>);
  m.impl("embed_concat_backward", &embed_concat_backward_impl<NoGuard, embed_concat_backward_run>);
}

}  // namespace cpu
}  // namespace mtlguard
