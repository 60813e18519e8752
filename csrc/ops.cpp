// Operator schemas of the mtlguard library (torchvision csrc/ops style).  Kernels: cpu/*.cpp (CPU) and
// cuda/*.cu (CUDA), sharing their per-element math (MTLG_HOST_DEVICE functions) and host side (checks, layout,
// outputs) through common/*.h; fake (meta) kernels and autograd formulas: python/mtlguard/ops/_meta.py.
#include <torch/library.h>

#include <atomic>

#include "ops.h"

namespace mtlguard {

bool cuda_kernels_compiled() {
#ifdef MTLGUARD_WITH_CUDA
  return true;
#else
  return false;
#endif
}

namespace {
std::atomic<bool> g_bench_legacy_clamp{false};
}  // namespace

bool bench_legacy_clamp() { return g_bench_legacy_clamp.load(std::memory_order_relaxed); }
void set_bench_legacy_clamp(bool on) { g_bench_legacy_clamp.store(on, std::memory_order_relaxed); }

TORCH_LIBRARY(mtlguard, m) {
  // register_fake / register_autograd for these ops live in this Python module.
  m.set_python_module("mtlguard.ops._meta");
  // eps: float, or per-sample tensor [B] (eps_per_sample, overrides eps when given).
  m.def("project_linf(Tensor x, Tensor delta, float eps, Tensor? eps_per_sample=None, float lo=0., "
        "float hi=1.) -> (Tensor, Tensor)");
  m.def("pgd_step(Tensor x_adv, Tensor x, Tensor direction, float step, Tensor? step_per_sample, float eps, "
        "Tensor? eps_per_sample, float lo=0., float hi=1.) -> Tensor");
  m.def("pgd_step_(Tensor(a!) x_adv, Tensor x, Tensor direction, float step, Tensor? step_per_sample, "
        "float eps, Tensor? eps_per_sample, float lo=0., float hi=1.) -> ()");
  m.def("balanced_sign(Tensor[] grads, Tensor losses, str mode, Tensor? weights=None) -> Tensor");
  m.def("embed_concat(Tensor z, Tensor table, Tensor labels, Tensor offsets, int[] emb_shape) -> Tensor");
  m.def("embed_concat_backward(Tensor grad_out, Tensor labels, Tensor offsets, int table_rows, "
        "int z_channels, int[] emb_shape) -> (Tensor, Tensor)");
  // image uint8 [N, H, W, C], delta float32 [N, C or 1, h, w] -> protected uint8 [N, H, W, C].
  m.def("apply_delta_u8(Tensor image, Tensor delta, float eps) -> Tensor");
}

}  // namespace mtlguard
