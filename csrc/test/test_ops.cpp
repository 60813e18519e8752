// Native tests of the mtlguard ops (run by ctest): every op is called through the c10 dispatcher, exactly
// as a C++ user of libmtlguard_ops would, and compared with an ATen composition of the same formula.
// Exit status 0 when every check passes, 1 otherwise.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>

#include <cstdio>
#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace {

int g_failures = 0, g_checks = 0;

void check(bool ok, const std::string& what) {
  ++g_checks;
  if (!ok) {
    ++g_failures;
    std::fprintf(stderr, "FAIL: %s\n", what.c_str());
  } else {
    std::printf("ok   %s\n", what.c_str());
  }
}

bool close(const at::Tensor& a, const at::Tensor& b, double atol = 1e-6) {
  return a.sizes() == b.sizes() && a.scalar_type() == b.scalar_type() &&
         at::allclose(a.to(at::kDouble), b.to(at::kDouble), /*rtol=*/0.0, atol);
}

c10::OperatorHandle op(const char* name) { return c10::Dispatcher::singleton().findSchemaOrThrow(name, ""); }

using OptT = std::optional<at::Tensor>;

std::tuple<at::Tensor, at::Tensor> project_linf(const at::Tensor& x, const at::Tensor& d, double eps, const OptT& e,
                                                double lo, double hi) {
  static auto h = op("mtlguard::project_linf")
                      .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, double,
                                                                const OptT&, double, double)>();
  return h.call(x, d, eps, e, lo, hi);
}

at::Tensor pgd_step(const at::Tensor& xa, const at::Tensor& x, const at::Tensor& dir, double s, const OptT& st,
                    double e, const OptT& et) {
  static auto h = op("mtlguard::pgd_step")
                      .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, double, const OptT&,
                                        double, const OptT&, double, double)>();
  return h.call(xa, x, dir, s, st, e, et, 0.0, 1.0);
}

void pgd_step_(const at::Tensor& xa, const at::Tensor& x, const at::Tensor& dir, double s, double e) {
  static auto h = op("mtlguard::pgd_step_")
                      .typed<void(const at::Tensor&, const at::Tensor&, const at::Tensor&, double, const OptT&, double,
                                  const OptT&, double, double)>();
  h.call(xa, x, dir, s, std::nullopt, e, std::nullopt, 0.0, 1.0);
}

at::Tensor balanced_sign(const std::vector<at::Tensor>& g, const at::Tensor& losses, const std::string& mode,
                         const OptT& w) {
  static auto h = op("mtlguard::balanced_sign")
                      .typed<at::Tensor(at::TensorList, const at::Tensor&, c10::string_view, const OptT&)>();
  return h.call(g, losses, mode, w);
}

at::Tensor embed_concat(const at::Tensor& z, const at::Tensor& table, const at::Tensor& labels,
                        const at::Tensor& offsets, std::vector<int64_t> es) {
  static auto h = op("mtlguard::embed_concat")
                      .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                        at::IntArrayRef)>();
  return h.call(z, table, labels, offsets, es);
}

std::tuple<at::Tensor, at::Tensor> embed_concat_backward(const at::Tensor& g, const at::Tensor& labels,
                                                         const at::Tensor& offsets, int64_t rows, int64_t cz,
                                                         std::vector<int64_t> es) {
  static auto h = op("mtlguard::embed_concat_backward")
                      .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                const at::Tensor&, int64_t, int64_t, at::IntArrayRef)>();
  return h.call(g, labels, offsets, rows, cz, es);
}

at::Tensor apply_delta_u8(const at::Tensor& img, const at::Tensor& d, double eps) {
  static auto h = op("mtlguard::apply_delta_u8").typed<at::Tensor(const at::Tensor&, const at::Tensor&, double)>();
  return h.call(img, d, eps);
}

// ATen compositions (the formulas of python/mtlguard/ops/reference.py).
at::Tensor ref_pgd(const at::Tensor& xa, const at::Tensor& x, const at::Tensor& dir, const at::Tensor& s,
                   const at::Tensor& e) {
  at::Tensor y = xa + s * dir.to(xa.scalar_type());
  y = at::minimum(at::maximum(y, x - e), x + e);
  return y.clamp(0.0, 1.0);
}

at::Tensor ref_sign(const std::vector<at::Tensor>& g, const at::Tensor& losses, const std::string& mode,
                    const at::Tensor& weights) {
  at::Tensor w;
  if (mode == "gbmta") {
    w = at::where(losses.isfinite(), 1.0 / losses.clamp_min(1e-6), at::zeros_like(losses));
  } else if (mode == "total") {
    w = at::ones_like(losses);
  } else if (mode == "weighted") {
    w = weights;
  }
  at::Tensor acc = at::zeros_like(g[0], g[0].options().dtype(at::kFloat));
  for (size_t t = 0; t < g.size(); ++t) {
    at::Tensor gt = g[t].to(at::kFloat);
    acc += w.defined() ? gt * w[t].reshape({-1, 1, 1, 1}) : gt.sign();
  }
  return acc.sign().to(at::kChar);
}

void test_project_linf() {
  at::manual_seed(0);
  for (auto dtype : {at::kFloat, at::kDouble, at::kBFloat16}) {
    const double atol = dtype == at::kBFloat16 ? 1.6e-2 : 1e-6;
    at::Tensor x = at::rand({4, 3, 9, 7}).to(dtype), d = (at::randn({4, 3, 9, 7}) * 0.05).to(dtype);
    auto [a, o] = project_linf(x, d, 0.03, std::nullopt, 0.0, 1.0);
    at::Tensor ra = (x + d.clamp(-0.03, 0.03)).clamp(0.0, 1.0);
    check(close(a, ra, atol) && close(o, ra - x, atol), std::string("project_linf scalar eps ") + c10::toString(dtype));
    at::Tensor e = (at::rand({4}) * 0.05).to(dtype);
    auto [a2, o2] = project_linf(x, d, 0.0, e, 0.0, 1.0);
    at::Tensor ev = e.reshape({4, 1, 1, 1});
    at::Tensor ra2 = (x + at::maximum(at::minimum(d, ev), -ev)).clamp(0.0, 1.0);
    check(close(a2, ra2, atol) && close(o2, ra2 - x, atol),
          std::string("project_linf per-sample eps ") + c10::toString(dtype));
  }
  at::Tensor x = at::rand({2, 3, 8, 8}).contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor d = at::randn({2, 3, 8, 8}).contiguous(at::MemoryFormat::ChannelsLast) * 0.1;
  auto [a, o] = project_linf(x, d, 0.05, std::nullopt, 0.0, 1.0);
  check(a.is_contiguous(at::MemoryFormat::ChannelsLast) && close(a, (x + d.clamp(-0.05, 0.05)).clamp(0.0, 1.0)),
        "project_linf channels_last keeps layout");
  at::Tensor xt = at::rand({5, 6}).t();  // non-contiguous
  auto [a3, o3] = project_linf(xt, xt * 0.5, 0.1, std::nullopt, 0.0, 1.0);
  check(close(a3, (xt + (xt * 0.5).clamp(-0.1, 0.1)).clamp(0.0, 1.0)), "project_linf non-contiguous");
}

void test_pgd_step() {
  at::manual_seed(1);
  for (auto dtype : {at::kFloat, at::kDouble, at::kBFloat16}) {
    const double atol = dtype == at::kBFloat16 ? 1.6e-2 : 1e-6;
    at::Tensor x = at::rand({3, 3, 5, 6}).to(dtype);
    at::Tensor xa = (x + at::randn({3, 3, 5, 6}).to(dtype) * 0.02).clamp(0.0, 1.0);
    at::Tensor dir = at::randint(-1, 2, {3, 3, 5, 6}).to(at::kChar);
    at::Tensor s = at::full({3, 1, 1, 1}, 0.01).to(dtype), e = at::full({3, 1, 1, 1}, 0.03).to(dtype);
    at::Tensor want = ref_pgd(xa, x, dir, s, e);
    check(close(pgd_step(xa, x, dir, 0.01, std::nullopt, 0.03, std::nullopt), want, atol),
          std::string("pgd_step int8 direction ") + c10::toString(dtype));
    check(close(pgd_step(xa, x, dir.to(dtype), 0.0, s.reshape({3}), 0.0, e.reshape({3})), want, atol),
          std::string("pgd_step float direction, per-sample step/eps ") + c10::toString(dtype));
    at::Tensor inplace = xa.clone();
    pgd_step_(inplace, x, dir, 0.01, 0.03);
    check(close(inplace, want, atol), std::string("pgd_step_ in place ") + c10::toString(dtype));
  }
}

void test_balanced_sign() {
  at::manual_seed(2);
  for (int64_t T : {1, 3, 10}) {
    std::vector<at::Tensor> g;
    for (int64_t t = 0; t < T; ++t) g.push_back(at::randn({4, 3, 6, 6}));
    at::Tensor losses = at::rand({T, 4}) * 2;
    losses.index_put_({0, 1}, 0.0);
    if (T > 1) losses.index_put_({1, 2}, std::numeric_limits<float>::quiet_NaN());
    at::Tensor weights = at::rand({T, 4});
    for (const std::string mode : {"gbmta", "total", "signtotal", "weighted"}) {
      at::Tensor got = balanced_sign(g, losses, mode, mode == "weighted" ? OptT(weights) : OptT());
      at::Tensor want = ref_sign(g, losses, mode, weights);
      check(got.scalar_type() == at::kChar && at::equal(got, want),
            "balanced_sign mode=" + mode + " T=" + std::to_string(T));
    }
    if (T == 1) {
      at::Tensor got = balanced_sign(g, at::ones({1, 4}), "gbmta", std::nullopt);
      check(at::equal(got, g[0].sign().to(at::kChar)), "balanced_sign T=1 is sign(g)");
    }
  }
  bool threw = false;
  try {
    balanced_sign({at::randn({2, 3})}, at::rand({1, 2}), "bogus", std::nullopt);
  } catch (const c10::ValueError&) {
    threw = true;
  }
  check(threw, "balanced_sign bad mode raises ValueError");
}

void test_embed_concat() {
  at::manual_seed(3);
  const int64_t B = 5, Cz = 2, E = 3, h = 4, w = 4;
  at::Tensor offsets = at::tensor(std::vector<int64_t>{0, 2, 5});
  at::Tensor z = at::randn({B, Cz, h, w}), table = at::randn({5, E * h * w});
  at::Tensor labels = at::tensor(std::vector<int64_t>{0, 2, -1, 1, 1, -1, 0, 0, -1, -1}).reshape({B, 2});
  at::Tensor out = embed_concat(z, table, labels, offsets, {E, h, w});
  std::vector<at::Tensor> parts{z};
  for (int64_t k = 0; k < 2; ++k) {
    const int64_t lo = k == 0 ? 0 : 2, hi = k == 0 ? 2 : 5;
    at::Tensor rows = table.slice(0, lo, hi), lab = labels.select(1, k);
    at::Tensor picked = rows.index_select(0, lab.clamp_min(0));
    at::Tensor mean = rows.mean(0, true).expand({B, -1});
    parts.push_back(at::where(lab.ge(0).unsqueeze(1), picked, mean).reshape({B, E, h, w}));
  }
  check(close(out, at::cat(parts, 1)), "embed_concat == cat(z, picked/mean rows)");

  at::Tensor g = at::randn({B, Cz + 2 * E, h, w});
  auto [gz, gt] = embed_concat_backward(g, labels, offsets, 5, Cz, {E, h, w});
  at::Tensor want_gt = at::zeros_like(table);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t k = 0; k < 2; ++k) {
      const int64_t lo = k == 0 ? 0 : 2, c = k == 0 ? 2 : 3, y = labels[b][k].item<int64_t>();
      at::Tensor gk = g[b].slice(0, Cz + k * E, Cz + (k + 1) * E).reshape({-1});
      if (y >= 0) {
        want_gt[lo + y] += gk;
      } else {
        want_gt.slice(0, lo, lo + c) += gk / static_cast<double>(c);
      }
    }
  }
  check(close(gz, g.slice(1, 0, Cz)) && close(gt, want_gt, 1e-5), "embed_concat_backward scatter-add + mean spread");

  bool named = false;
  try {
    at::Tensor bad = labels.clone();
    bad.index_put_({3, 1}, 7);
    embed_concat(z, table, bad, offsets, {E, h, w});
  } catch (const c10::IndexError& e) {
    const std::string msg = e.what_without_backtrace();
    named = msg.find("label 7 of task #1 (sample 3)") != std::string::npos;
  }
  check(named, "embed_concat out-of-range label raises IndexError naming task, value and sample");
}

void test_nan_propagation() {
  // A NaN bound (per-sample eps, lo) propagates like torch.maximum/minimum in the reference (issue 15).
  const double nan = std::numeric_limits<double>::quiet_NaN();
  at::Tensor x = at::rand({3, 2, 4, 4}), xa = (x + 0.01).clamp(0.0, 1.0);
  at::Tensor dir = at::randint(-1, 2, {3, 2, 4, 4}).to(at::kChar);
  at::Tensor e = at::tensor(std::vector<float>{0.03f, static_cast<float>(nan), 0.02f});
  at::Tensor got = pgd_step(xa, x, dir, 0.01, std::nullopt, 0.0, e);
  at::Tensor want = ref_pgd(xa, x, dir, at::full({3, 1, 1, 1}, 0.01), e.reshape({3, 1, 1, 1}));
  check(at::equal(got.isnan(), want.isnan()) && got[1].isnan().all().item<bool>() &&
            at::allclose(got, want, 0.0, 1e-6, /*equal_nan=*/true),
        "pgd_step NaN per-sample eps propagates");
  at::Tensor xn = x.clone();
  xn.index_put_({0, 0, 0, 0}, nan);
  at::Tensor got2 = pgd_step(xa, xn, dir, 0.01, std::nullopt, 0.03, std::nullopt);
  check(got2.isnan().sum().item<int64_t>() == 1 && got2[0][0][0][0].isnan().item<bool>(), "pgd_step NaN x propagates");
  auto [a, o] = project_linf(x, x * 0.1, 0.0, e, 0.0, 1.0);
  check(a[1].isnan().all().item<bool>() && !a[0].isnan().any().item<bool>(), "project_linf NaN per-sample eps propagates");
  auto [a2, o2] = project_linf(x, x * 0.1, 0.03, std::nullopt, nan, 1.0);
  check(a2.isnan().all().item<bool>(), "project_linf NaN lo propagates");
}

void test_apply_delta_u8() {
  at::manual_seed(4);
  at::Tensor img = at::randint(0, 256, {2, 8, 8, 3}).to(at::kByte);
  at::Tensor d = at::randn({2, 3, 8, 8}) * 0.05;
  const double eps = 8.0 / 255.0;
  const float e = static_cast<float>(eps * 255.0);
  // same size: u = d * 255 (one tap of weight 1), then clip, add, round half to even, clip
  at::Tensor u = (d * 255.0f).clamp(-e, e).permute({0, 2, 3, 1});
  at::Tensor want = (u + img.to(at::kFloat)).round().clamp(0.0, 255.0).to(at::kByte);
  at::Tensor got = apply_delta_u8(img, d, eps);
  check(got.scalar_type() == at::kByte && at::equal(got, want), "apply_delta_u8 same size == clip/add/round/clip");
  at::Tensor luma = apply_delta_u8(img, d.narrow(1, 0, 1), eps);
  at::Tensor want_l = (u.narrow(3, 0, 1) + img.to(at::kFloat)).round().clamp(0.0, 255.0).to(at::kByte);
  check(at::equal(luma, want_l), "apply_delta_u8 luma delta on every channel");
  // 2x enlargement of a constant delta stays constant (weights sum to 1), and the bound holds
  at::Tensor c = apply_delta_u8(img.repeat({1, 2, 2, 1}).contiguous(), at::full({2, 3, 4, 4}, 0.5), eps);
  at::Tensor diff = c.to(at::kShort) - img.repeat({1, 2, 2, 1}).to(at::kShort);
  check(diff.abs().max().item<int64_t>() <= 8, "apply_delta_u8 enlarge keeps |diff| <= ceil(eps * 255)");
  bool threw = false;
  try {
    apply_delta_u8(img, at::randn({2, 2, 4, 4}), eps);
  } catch (const c10::ValueError&) {
    threw = true;
  }
  check(threw, "apply_delta_u8 channel mismatch raises ValueError");
}

}  // namespace

int main() {
  const std::vector<std::pair<const char*, std::function<void()>>> suites = {
      {"project_linf", test_project_linf},
      {"pgd_step", test_pgd_step},
      {"balanced_sign", test_balanced_sign},
      {"embed_concat", test_embed_concat},
      {"nan_propagation", test_nan_propagation},
      {"apply_delta_u8", test_apply_delta_u8},
  };
  for (const auto& [name, fn] : suites) {
    try {
      fn();
    } catch (const std::exception& e) {
      check(false, std::string(name) + " threw: " + e.what());
    }
  }
  std::printf("%d checks, %d failures\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
