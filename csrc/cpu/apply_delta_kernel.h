// Part of the unity build: included once, by kernels.cpp (see there).
#pragma once
// CPU kernel of apply_delta_u8 (the engine's native-resolution step).  The W pass runs on the small delta
// (h rows, into a [N, h, W, Cd] float buffer); the H pass is fused with the clip, the add, the rounding and the
// uint8 store: each parallel task takes whole output rows, accumulates a tile of a row from its K source rows
// into an L1-resident buffer (one simple loop per tap, so g++ vectorizes each), then writes the pixels; an AVX2
// build of that loop nest is chosen at run time where the CPU has it.
// Per-element math, tap tables and host side: ../common/apply_delta_common.h.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>

#include "../common/apply_delta_common.h"
#include "cpu_utils.h"

namespace mtlguard {
namespace cpu {
namespace {

constexpr int64_t kRowTile = 2048;  // floats of an output row accumulated at once (8 KiB)


// t[n, y, X, c] = sum_k d[n, c, y, iw[X, k]] * ww[X, k]
void apply_delta_w_pass(const ApplyDeltaArgs& a, float* t) {
  const float* d = a.delta.const_data_ptr<float>();
  const int64_t K = a.tw.k, W = a.W, Cd = a.Cd, h = a.h, w = a.w;
  const int32_t* idx = a.tw.idx.data();
  const float* wt = a.tw.w.data();
  const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(1, W * Cd * K));
  at::parallel_for(0, a.N * h, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / h, y = r % h;
      float* trow = t + r * W * Cd;
      for (int64_t c = 0; c < Cd; ++c) {
        const float* src = d + ((n * Cd + c) * h + y) * w;
        for (int64_t X = 0; X < W; ++X) {
          const int32_t* ix = idx + X * K;
          const float* wx = wt + X * K;
          float acc = mul_rn(src[ix[0]], wx[0]);
          for (int64_t k = 1; k < K; ++k) acc = add_rn(acc, mul_rn(src[ix[k]], wx[k]));
          trow[X * Cd + c] = acc;
        }
      }
    }
  });
}

// Output rows [r0, r1) of the H pass (fused with clip/add/round/store).  Plain loops, one per tap, that g++
// vectorizes; compiled twice (h_rows_sse2, h_rows_avx2) and chosen at run time: with AVX2 the selects become
// vblendvps and the loops run about 2x faster.  (target("avx2") enables no FMA, so the products still round
// before the adds.)  Value parameters only: uint8 stores may alias anything, so inside a lambda g++ would reload
// every captured value per element and not vectorize.
struct HRows {
  const float* t;       // [N, h, W * Cd]
  const int32_t* ih;    // [H, K]
  const float* wh;      // [H, K], in uint8 steps
  const uint8_t* img;   // [N * H, W * C]
  uint8_t* out;
  int64_t H, W, C, Cd, h, K;
  float e;
};

MTLG_CPU_INLINE void h_rows_body(const HRows& p, int64_t r0, int64_t r1) {
  float acc[kRowTile];
  float wide[kRowTile];
  const int64_t H = p.H, W = p.W, C = p.C, Cd = p.Cd, K = p.K, row_in = W * Cd, row_out = W * C;
  const float e = p.e;
  const int64_t tile_px = kRowTile / C;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / H, Y = r % H;
    const float* tn = p.t + n * p.h * row_in;
    const int32_t* iy = p.ih + Y * K;
    const float* wy = p.wh + Y * K;
    const uint8_t* src = p.img + r * row_out;
    uint8_t* dst = p.out + r * row_out;
    for (int64_t p0 = 0; p0 < W; p0 += tile_px) {
      const int64_t np = std::min(tile_px, W - p0);
      const int64_t n_in = np * Cd, off_in = p0 * Cd;
      const float* __restrict s0 = tn + iy[0] * row_in + off_in;
      const float w0 = wy[0];
      for (int64_t j = 0; j < n_in; ++j) acc[j] = mul_rn(s0[j], w0);
      for (int64_t k = 1; k < K; ++k) {
        const float* __restrict sk = tn + iy[k] * row_in + off_in;
        const float wk = wy[k];
        for (int64_t j = 0; j < n_in; ++j) acc[j] = add_rn(acc[j], mul_rn(sk[j], wk));
      }
      const float* __restrict u = acc;
      if (Cd != C) {  // a 1-channel (luma) delta on every channel
        for (int64_t q = 0; q < np; ++q) {
          for (int64_t c = 0; c < C; ++c) wide[q * C + c] = acc[q];
        }
        u = wide;
      }
      const int64_t n_out = np * C;
      const uint8_t* __restrict sp = src + p0 * C;
      uint8_t* __restrict dp = dst + p0 * C;
      for (int64_t j = 0; j < n_out; ++j) dp[j] = protect_u8(u[j], e, sp[j]);
    }
  }
}

void h_rows_sse2(const HRows& p, int64_t r0, int64_t r1) { h_rows_body(p, r0, r1); }

#ifdef MTLG_CPU_X86
MTLG_TARGET_AVX2 void h_rows_avx2(const HRows& p, int64_t r0, int64_t r1) { h_rows_body(p, r0, r1); }
#endif

using HRowsFn = void (*)(const HRows&, int64_t, int64_t);

HRowsFn h_rows_fn() {
#ifdef MTLG_CPU_X86
  if (cpu_has_avx2()) return h_rows_avx2;
#endif
  return h_rows_sse2;
}

void apply_delta_run(const ApplyDeltaArgs& a) {
  const int64_t N = a.N, H = a.H, W = a.W, C = a.C, Cd = a.Cd, h = a.h;
  at::Tensor tbuf = at::empty({N, h, W, Cd}, a.delta.options());
  float* t = tbuf.mutable_data_ptr<float>();
  apply_delta_w_pass(a, t);

  std::vector<float> wh(a.th.w.size());
  for (size_t i = 0; i < wh.size(); ++i) wh[i] = weight_u8_steps(a.th.w[i]);
  const HRows p{t, a.th.idx.data(), wh.data(), a.image.const_data_ptr<uint8_t>(), a.out.mutable_data_ptr<uint8_t>(),
                H, W, C, Cd, h, a.th.k, a.e};
  const HRowsFn fn = h_rows_fn();
  const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(1, W * C));
  at::parallel_for(0, N * H, grain, [&](int64_t r0, int64_t r1) { fn(p, r0, r1); });
}

}  // namespace

TORCH_LIBRARY_IMPL(mtlguard, CPU, m) {
  m.impl("apply_delta_u8", &apply_delta_u8_impl<NoGuard, apply_delta_run>);
}

}  // namespace cpu
}  // namespace mtlguard
