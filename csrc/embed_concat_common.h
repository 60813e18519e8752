// Input checks of embed_concat shared by the CPU and CUDA kernels (run on the host, before any launch).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <vector>

namespace mtlguard {

struct EmbedGeometry {
  int64_t B, Cz, K, E, hw, F;    // F = E * h * w, the length of one embedding row
  std::vector<int64_t> offsets;  // host copy, K + 1 entries
};

inline EmbedGeometry embed_geometry(const at::Tensor& z, int64_t table_rows, int64_t table_cols,
                                    const at::Tensor& labels, const at::Tensor& offsets, at::IntArrayRef emb_shape) {
  TORCH_CHECK_VALUE(emb_shape.size() == 3, "embed_concat: emb_shape must be (E, h, w), got ", emb_shape);
  const int64_t E = emb_shape[0], h = emb_shape[1], w = emb_shape[2];
  TORCH_CHECK_VALUE(z.dim() == 4 && z.size(2) == h && z.size(3) == w, "embed_concat: z must be [B, Cz, ", h, ", ", w,
                    "], got ", z.sizes());
  TORCH_CHECK_VALUE(table_cols == E * h * w, "embed_concat: table must be [rows, ", E * h * w, "], got [", table_rows,
                    ", ", table_cols, "]");
  TORCH_CHECK_VALUE(offsets.dim() == 1 && offsets.numel() >= 1, "embed_concat: offsets must be [K + 1], got ",
                    offsets.sizes());
  const int64_t K = offsets.numel() - 1;
  TORCH_CHECK_VALUE(labels.dim() == 2 && labels.size(0) == z.size(0) && labels.size(1) == K,
                    "embed_concat: labels must be [B, K] = [", z.size(0), ", ", K, "], got ", labels.sizes());
  TORCH_CHECK_VALUE(!at::isFloatingType(labels.scalar_type()) && labels.scalar_type() != at::kBool,
                    "embed_concat: labels must be an integer tensor (int64), got ", labels.scalar_type());
  at::Tensor off = offsets.to(at::kCPU, at::kLong).contiguous();
  EmbedGeometry g{z.size(0), z.size(1), K, E, h * w, E * h * w, {}};
  g.offsets.assign(off.const_data_ptr<int64_t>(), off.const_data_ptr<int64_t>() + K + 1);
  TORCH_CHECK_VALUE(g.offsets[0] == 0, "embed_concat: offsets[0] must be 0, got ", g.offsets[0]);
  for (int64_t k = 0; k < K; ++k) {
    TORCH_CHECK_VALUE(g.offsets[k + 1] > g.offsets[k], "embed_concat: task #", k, " has no class rows (offsets[",
                      k, "]=", g.offsets[k], ", offsets[", k + 1, "]=", g.offsets[k + 1], ")");
  }
  TORCH_CHECK_VALUE(g.offsets[K] == table_rows, "embed_concat: offsets[-1]=", g.offsets[K], " != table rows ",
                    table_rows);
  return g;
}

// Raises IndexError naming the task, value and sample of the first label outside [-1, C_k).
// `labels_cpu` is a contiguous int64 CPU tensor [B, K].
inline void check_labels_host(const at::Tensor& labels_cpu, const EmbedGeometry& g) {
  const int64_t* lp = labels_cpu.const_data_ptr<int64_t>();
  for (int64_t b = 0; b < g.B; ++b) {
    for (int64_t k = 0; k < g.K; ++k) {
      const int64_t v = lp[b * g.K + k], c = g.offsets[k + 1] - g.offsets[k];
      TORCH_CHECK_INDEX(v >= -1 && v < c, "embed_concat: label ", v, " of task #", k, " (sample ", b,
                        ") is out of range [-1, ", c, ")");
    }
  }
}

}  // namespace mtlguard
