// embed_concat and its backward: the per-element math and the host side (input checks, label range check,
// outputs) shared by the CPU kernels (cpu/embed_concat_kernel.h) and the CUDA kernels
// (cuda/embed_concat_kernel.cuh).  The checks run on the host, before any launch.
//
// out = concat(z, e^1_{y1}, ..., e^K_{yK}) along channels (MTL-UE Sec. 4.3, the decoder input).  Label -1 =
// task not protected: that task's mean class embedding is used (partial protection), so in the backward its
// gradient is spread as 1/C_k to each of the task's rows.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/util/Exception.h>

#include <tuple>
#include <utility>
#include <vector>

#include "host_device.h"

namespace mtlguard {

// ---- per element ------------------------------------------------------------------------------------------

// Mean class embedding of a task, one column: the sum of its C_k rows over C_k, rounded to scalar_t like the
// reference's rows.mean(0).
template <typename scalar_t, typename acc_t>
MTLG_HOST_DEVICE inline scalar_t embed_mean(acc_t sum, acc_t count) {
  return static_cast<scalar_t>(sum / count);
}

// Backward accumulator row of (task k, label y) over [table rows; K mean rows]: the label's own row, or task
// k's mean row (rows + k) for y = -1.
MTLG_HOST_DEVICE inline int64_t embed_grad_row(int64_t y, const int64_t* offsets, int64_t rows, int64_t k) {
  return y >= 0 ? offsets[k] + y : rows + k;
}

// Gradient of one table entry of task k: its own accumulated gradient plus 1/C_k of the mean row's.
template <typename scalar_t, typename acc_t>
MTLG_HOST_DEVICE inline scalar_t embed_table_grad(acc_t own, acc_t mean, acc_t count) {
  return static_cast<scalar_t>(own + mean / count);
}

// ---- host side ----------------------------------------------------------------------------------------------

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

// The labels as int64, contiguous, on `device`, checked against each task's class count: on the host when
// they live on the CPU, else with one reduction on the device and a single synchronisation (the first bad
// label is then reported by check_labels_host).
inline at::Tensor checked_labels(const at::Tensor& labels, const EmbedGeometry& g, c10::Device device) {
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

// embed_concat_impl and embed_concat_backward_impl are the ops a backend registers, instantiated with its device
// guard type (c10::cuda::CUDAGuard; cpu::NoGuard), constructed after the first checks, and its kernel launcher.

// embed_concat's arguments once checked: z and table contiguous, labels from checked_labels, out [B, C, h, w].
struct EmbedConcatArgs {
  EmbedGeometry g;
  at::Tensor z, table, labels, out;
};

// Fills a.out.
using EmbedConcatKernel = void (*)(const EmbedConcatArgs& a);

template <typename Guard, EmbedConcatKernel kernel>
at::Tensor embed_concat_impl(const at::Tensor& z_in, const at::Tensor& table_in, const at::Tensor& labels,
                             const at::Tensor& offsets, at::IntArrayRef emb_shape) {
  TORCH_CHECK_VALUE(table_in.dim() == 2, "embed_concat: table must be 2-D [rows, E*h*w], got ", table_in.sizes());
  EmbedGeometry g = embed_geometry(z_in, table_in.size(0), table_in.size(1), labels, offsets, emb_shape);
  TORCH_CHECK_VALUE(table_in.scalar_type() == z_in.scalar_type(), "embed_concat: table (", table_in.scalar_type(),
                    ") and z (", z_in.scalar_type(), ") differ in dtype");
  TORCH_CHECK_VALUE(table_in.device() == z_in.device(), "embed_concat: table and z are on different devices");
  Guard guard(z_in.device());
  at::Tensor lab = checked_labels(labels, g, z_in.device());
  at::Tensor z = z_in.contiguous(), table = table_in.contiguous();
  at::Tensor out = at::empty({g.B, g.Cz + g.K * g.E, z.size(2), z.size(3)}, z.options());
  kernel(EmbedConcatArgs{std::move(g), z, table, lab, out});
  return out;
}

// embed_concat_backward's arguments once checked: grad_out contiguous, labels from checked_labels, and the
// table's gradient [table_rows, F] to fill.
struct EmbedBackwardArgs {
  EmbedGeometry g;
  int64_t table_rows;
  at::Tensor grad_out, labels, grad_table;
};

// Fills a.grad_table and returns grad_z, the first Cz channels of grad_out [B, Cz, h, w].
using EmbedBackwardKernel = at::Tensor (*)(const EmbedBackwardArgs& a);

template <typename Guard, EmbedBackwardKernel kernel>
std::tuple<at::Tensor, at::Tensor> embed_concat_backward_impl(const at::Tensor& grad_out_in, const at::Tensor& labels,
                                                              const at::Tensor& offsets, int64_t table_rows,
                                                              int64_t z_channels, at::IntArrayRef emb_shape) {
  TORCH_CHECK_VALUE(emb_shape.size() == 3, "embed_concat_backward: emb_shape must be (E, h, w), got ", emb_shape);
  const int64_t E = emb_shape[0], h = emb_shape[1], w = emb_shape[2];
  const int64_t K = offsets.numel() - 1;
  TORCH_CHECK_VALUE(grad_out_in.dim() == 4 && grad_out_in.size(1) == z_channels + K * E &&
                        grad_out_in.size(2) == h && grad_out_in.size(3) == w,
                    "embed_concat_backward: grad_out must be [B, ", z_channels + K * E, ", ", h, ", ", w, "], got ",
                    grad_out_in.sizes());
  Guard guard(grad_out_in.device());
  const at::Tensor zshape = at::empty({grad_out_in.size(0), z_channels, h, w}, grad_out_in.options().device(at::kMeta));
  EmbedGeometry g = embed_geometry(zshape, table_rows, E * h * w, labels, offsets, emb_shape);
  at::Tensor lab = checked_labels(labels, g, grad_out_in.device());
  at::Tensor go = grad_out_in.contiguous();
  at::Tensor grad_table = at::empty({table_rows, g.F}, go.options());
  at::Tensor grad_z = kernel(EmbedBackwardArgs{std::move(g), table_rows, go, lab, grad_table});
  return {grad_z, grad_table};
}

}  // namespace mtlguard
