// apply_delta_u8: the engine's native-resolution step, shared by the CPU kernel (cpu/apply_delta_kernel.h) and
// the CUDA kernel (cuda/apply_delta_kernel.cuh).  Bit-identical to the numpy path of engine/perturb.py
// (apply_delta_batch: upsample_delta + clip + add + np.rint + clip + astype(uint8)):
//
//   1. W pass  t[n, y, X, c] = sum_k d[n, c, y, iw[X, k]] * ww[X, k]             (float32, taps in order)
//   2. H pass  u[n, Y, X, c] = sum_k t[n, ih[Y, k], X, c] * float32(wh[Y, k] * 255)
//   3. out = uint8(clip(rint(clip(u, -e, e) + image), 0, 255)),  e = float32(eps * 255)
//
// Pillow's BILINEAR weights (half-pixel centres, support widened when shrinking) as tap tables built exactly as
// perturb.bilinear_taps builds them: float64 arithmetic, numpy's pairwise summation for the normalization, then
// rounded to float32, zero-weight padding taps included (they read a valid index, as numpy's gathers do).
// Every sum is evaluated left to right with each product rounded first (mul_rn/add_rn: no FMA).  A 1-channel
// delta on a C-channel image is added to every channel (the engine's luma delta).  A NaN delta gives 0 (what
// numpy's NaN -> uint8 cast gives on x86-64).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "element_ops.h"
#include "host_device.h"

namespace mtlguard {

// ---- tap tables (host) ------------------------------------------------------------------------------------

// numpy's pairwise summation of float64 (numpy/_core/src/umath/loops_utils.h, PW_BLOCKSIZE 128): what
// ndarray.sum() returns for a contiguous float64 array.
inline double numpy_pairwise_sum(const double* a, int64_t n) {
  if (n < 8) {
    double res = 0.;
    for (int64_t i = 0; i < n; ++i) res += a[i];
    return res;
  }
  if (n <= 128) {
    double r[8];
    for (int j = 0; j < 8; ++j) r[j] = a[j];
    int64_t i = 8;
    for (; i < n - (n % 8); i += 8) {
      for (int j = 0; j < 8; ++j) r[j] += a[i + j];
    }
    double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; ++i) res += a[i];
    return res;
  }
  int64_t n2 = n / 2;
  n2 -= n2 % 8;
  return numpy_pairwise_sum(a, n2) + numpy_pairwise_sum(a + n2, n - n2);
}

// out[i] = sum_k w[i * k_max + k] * in[idx[i * k_max + k]] resamples n_in samples to n_out (perturb.bilinear_taps).
struct Taps {
  int64_t n_out = 0, k = 0;
  std::vector<int32_t> idx;
  std::vector<float> w;
};

inline Taps bilinear_taps(int64_t n_in, int64_t n_out) {
  TORCH_CHECK_VALUE(n_in >= 1 && n_out >= 1, "apply_delta_u8: sizes must be >= 1, got ", n_in, " -> ", n_out);
  const double scale = static_cast<double>(n_in) / static_cast<double>(n_out);
  const double filterscale = std::max(scale, 1.0);
  const double support = filterscale;
  std::vector<int64_t> starts(n_out);
  std::vector<std::vector<double>> rows(n_out);
  std::vector<double> x;
  int64_t kmax = 1;
  for (int64_t i = 0; i < n_out; ++i) {
    const double center = (static_cast<double>(i) + 0.5) * scale;
    const int64_t lo = std::max<int64_t>(static_cast<int64_t>(center - support + 0.5), 0);
    const int64_t hi = std::max<int64_t>(std::min<int64_t>(static_cast<int64_t>(center + support + 0.5), n_in), lo + 1);
    x.assign(static_cast<size_t>(hi - lo), 0.0);
    int64_t first = -1, last = -1;
    for (int64_t j = lo; j < hi; ++j) {
      const double v = std::max(0.0, 1.0 - std::fabs((static_cast<double>(j) - center + 0.5) / filterscale));
      x[j - lo] = v;
      if (v != 0.0) {
        if (first < 0) first = j - lo;
        last = j - lo;
      }
    }
    std::vector<double> wts;
    if (first < 0) {  // cannot happen for bilinear (perturb.py keeps one tap of weight 1 as well)
      wts.assign(1, 1.0);
      first = 0;
    } else {
      wts.assign(x.begin() + first, x.begin() + last + 1);
    }
    const double total = numpy_pairwise_sum(wts.data(), static_cast<int64_t>(wts.size()));
    for (double& v : wts) v = v / total;
    starts[i] = lo + first;
    kmax = std::max<int64_t>(kmax, static_cast<int64_t>(wts.size()));
    rows[i] = std::move(wts);
  }
  Taps t;
  t.n_out = n_out;
  t.k = kmax;
  t.idx.assign(static_cast<size_t>(n_out * kmax), 0);
  t.w.assign(static_cast<size_t>(n_out * kmax), 0.0f);
  for (int64_t i = 0; i < n_out; ++i) {
    const auto len = static_cast<int64_t>(rows[i].size());
    for (int64_t k = 0; k < kmax; ++k) {
      t.idx[i * kmax + k] = static_cast<int32_t>(k < len ? starts[i] + k : starts[i]);  // padding: weight 0
      t.w[i * kmax + k] = k < len ? static_cast<float>(rows[i][k]) : 0.0f;
    }
  }
  return t;
}

// ---- per element ------------------------------------------------------------------------------------------

// The H pass's weights in uint8 steps: float32(w * 255), as numpy's (wt * np.float32(255.0)).
MTLG_HOST_DEVICE inline float weight_u8_steps(float w) { return mul_rn(w, 255.0f); }

// One protected pixel value: u = the upsampled delta in uint8 steps, e = float32(eps * 255), px the original.
// clip(u, -e, e) keeps a NaN (numpy's clip does), which then gives 0; rint rounds half to even.  Rounding before
// the [0, 255] clip equals numpy's order (rint, then clip): rint is monotonic and 0 and 255 are integers.
MTLG_HOST_DEVICE inline uint8_t protect_u8(float u, float e, uint8_t px) {
  float c = e < u ? e : u;  // min(u, e); NaN stays
  c = c < -e ? -e : c;      // max(c, -e); NaN stays
  float v = add_rn(c, static_cast<float>(px));
#ifdef __CUDA_ARCH__
  v = rintf(v);
#else
  // Adding and subtracting 1.5 * 2^23 rounds to an integer, half to even (the default rounding mode), exactly
  // for |v| < 2^22; larger |v| (a huge eps) keeps its sign, so the clip below still gives 0 or 255.  Unlike
  // std::nearbyint this vectorizes (SSE2), and in this order (round, then clip) g++ vectorizes the whole loop.
  constexpr float kMagic = 12582912.0f;
  v = (v + kMagic) - kMagic;
#endif
  v = v > 0.0f ? v : 0.0f;  // NaN -> 0
  v = v < 255.0f ? v : 255.0f;
  return static_cast<uint8_t>(static_cast<int32_t>(v));
}

// ---- host side ----------------------------------------------------------------------------------------------

// apply_delta_u8's arguments once checked: image [N, H, W, C] uint8 and delta [N, Cd, h, w] float32 contiguous,
// Cd == C or 1, the tap tables of both axes, e = float32(eps * 255), out [N, H, W, C] uint8 to fill.
struct ApplyDeltaArgs {
  at::Tensor image, delta, out;
  Taps tw, th;
  float e;
  int64_t N, H, W, C, Cd, h, w;
};

using ApplyDeltaKernel = void (*)(const ApplyDeltaArgs& a);

template <typename Guard, ApplyDeltaKernel kernel>
at::Tensor apply_delta_u8_impl(const at::Tensor& image_in, const at::Tensor& delta_in, double eps) {
  TORCH_CHECK_VALUE(image_in.dim() == 4 && image_in.scalar_type() == at::kByte,
                    "apply_delta_u8: image must be uint8 [N, H, W, C], got ", image_in.scalar_type(), " ",
                    image_in.sizes());
  TORCH_CHECK_VALUE(delta_in.dim() == 4 && delta_in.scalar_type() == at::kFloat,
                    "apply_delta_u8: delta must be float32 [N, C, h, w], got ", delta_in.scalar_type(), " ",
                    delta_in.sizes());
  const int64_t N = image_in.size(0), H = image_in.size(1), W = image_in.size(2), C = image_in.size(3);
  const int64_t Cd = delta_in.size(1), h = delta_in.size(2), w = delta_in.size(3);
  TORCH_CHECK_VALUE(delta_in.size(0) == N, "apply_delta_u8: image has ", N, " images, delta ", delta_in.size(0));
  TORCH_CHECK_VALUE(Cd == C || Cd == 1, "apply_delta_u8: delta has ", Cd, " channels, the image ", C,
                    " (expected ", C, ", or 1 for a luma delta)");
  TORCH_CHECK_VALUE(eps >= 0.0, "apply_delta_u8: eps must be >= 0, got ", eps);
  TORCH_CHECK_VALUE(image_in.device() == delta_in.device(), "apply_delta_u8: image and delta are on different devices");
  Guard guard(image_in.device());
  at::Tensor image = image_in.contiguous();
  at::Tensor out = at::empty({N, H, W, C}, image.options());
  if (out.numel() == 0) return out;
  TORCH_CHECK_VALUE(h >= 1 && w >= 1, "apply_delta_u8: delta must have h, w >= 1, got ", delta_in.sizes());
  ApplyDeltaArgs a{image, delta_in.contiguous(), out, bilinear_taps(w, W), bilinear_taps(h, H),
                   static_cast<float>(eps * 255.0), N, H, W, C, Cd, h, w};
  kernel(a);
  return out;
}

}  // namespace mtlguard
