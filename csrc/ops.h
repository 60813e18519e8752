// mtlguard fused ops: shared declarations and layout helpers (header-only, no Python).
//
// The ops (schemas in ops.cpp, semantics in python/mtlguard/ops/reference.py):
//   project_linf   L-inf projection + image box, one pass           (MTL-UE Alg. 1, Clip(D(.), -eps, eps))
//   pgd_step(_)    signed PGD step with both projections            (GB-MTA Alg. 3, P(x + eta * beta))
//   balanced_sign  sign(sum_t w_tb g_t) over T task gradients        (GB-MTA Eq. 8-9)
//   embed_concat   concat(z, e^1_{y1}, ..., e^K_{yK}) (+ backward)  (MTL-UE Sec. 4.3, Fig. 3)
//   apply_delta_u8 the engine's native-resolution step: Pillow-bilinear upsampling of a model-resolution delta,
//                  clip to +-eps, add to uint8 pixels, round half to even, clip to [0, 255]  (engine/perturb.py)
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <string>
#include <vector>

namespace mtlguard {

//: Losses at or below this value are clamped to it in balanced_sign "gbmta" mode (== reference.LOSS_FLOOR).
constexpr double kLossFloor = 1e-6;

//: True when the CUDA kernels were compiled into this library.
bool cuda_kernels_compiled();

//: Benchmarks only (bench/ops.py, through mtlguard._C._bench_legacy_clamp): when set, the CPU pgd_step /
//: pgd_step_ kernels use the pre-issue-15 clamp form that drops a NaN bound (element_ops.h LegacyClamp), so the
//: NaN-propagating form can be timed against it in one process.  Off by default; nothing else sets it.
bool bench_legacy_clamp();
void set_bench_legacy_clamp(bool on);

// Aggregation modes of balanced_sign.
enum class SignMode { kGbmta = 0, kTotal = 1, kSignTotal = 2, kWeighted = 3 };

inline SignMode parse_mode(const std::string& mode) {
  if (mode == "gbmta") return SignMode::kGbmta;
  if (mode == "total") return SignMode::kTotal;
  if (mode == "signtotal") return SignMode::kSignTotal;
  if (mode == "weighted") return SignMode::kWeighted;
  TORCH_CHECK_VALUE(false, "balanced_sign: unknown mode '", mode,
                    "'; expected one of gbmta, total, signtotal, weighted");
}

// Every sample (index along dim 0) is one contiguous block of numel/B elements: true for contiguous and
// channels_last (NHWC keeps N outermost) tensors.  Kernels then walk raw memory and find the sample of
// element i as i / (numel / B).
inline bool sample_blocked(const at::Tensor& t) {
  if (!t.is_non_overlapping_and_dense()) return false;
  if (t.dim() == 0 || t.size(0) <= 1) return true;
  return t.stride(0) == t.numel() / t.size(0);
}

// The tensors can be walked together in raw memory order: all sample-blocked with identical strides.
inline bool shared_blocked_layout(const std::vector<at::Tensor>& ts) {
  for (const auto& t : ts) {
    if (!sample_blocked(t) || t.strides() != ts[0].strides()) return false;
  }
  return true;
}

// Elements per sample (numel / B); 0 for an empty tensor.
inline int64_t per_sample(const at::Tensor& t) {
  if (t.numel() == 0) return 0;
  return t.dim() == 0 ? 1 : t.numel() / t.size(0);
}

inline void check_same_shape(const char* op, const char* a_name, const at::Tensor& a, const char* b_name,
                             const at::Tensor& b) {
  TORCH_CHECK_VALUE(a.sizes() == b.sizes(), op, ": ", a_name, " ", a.sizes(), " and ", b_name, " ", b.sizes(),
                    " differ in shape");
}

// The data of an optional tensor (a per-sample eps / step, task weights), nullptr when it is undefined.
template <typename T>
const T* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

// A per-sample value (eps, step): either the float or, when given, a tensor [B] (or a scalar tensor).
// Returns the tensor converted to `dtype`, contiguous, on `device`, expanded to [B]; undefined if absent.
inline at::Tensor per_sample_tensor(const char* op, const char* name, const c10::optional<at::Tensor>& t,
                                    int64_t B, at::ScalarType dtype, c10::Device device) {
  if (!t.has_value() || !t->defined()) return at::Tensor();
  const at::Tensor& v = *t;
  TORCH_CHECK_VALUE(v.dim() == 0 || (v.dim() == 1 && v.size(0) == B), op, ": per-sample ", name,
                    " must have shape [B]=[", B, "] (or be a scalar), got ", v.sizes());
  at::Tensor out = v.to(device, dtype);
  if (out.dim() == 0) out = out.reshape({1}).expand({B});
  return out.contiguous();
}

}  // namespace mtlguard
