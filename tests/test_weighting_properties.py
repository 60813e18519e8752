"""Each weighting strategy's defining property on a small problem (not just that it runs)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mtlguard.weighting import WEIGHTINGS, AlignedMTL, build_weighting


def _linear_problem(G: torch.Tensor):
    """Shared theta with L_k = g_k . theta (so grad_theta L_k = g_k) plus a head scalar per task."""
    theta = torch.nn.Parameter(torch.zeros(G.shape[1], dtype=G.dtype))
    heads = torch.nn.Parameter(torch.zeros(G.shape[0], dtype=G.dtype))
    losses = {f"t{k}": G[k] @ theta + (k + 1.0) * heads[k] + 1.0 for k in range(G.shape[0])}
    return theta, heads, losses


def test_registry_and_unknown_name():
    assert set(WEIGHTINGS) == {"ls", "uw", "rlw", "aligned_mtl", "fairgrad", "pcgrad"}
    assert build_weighting("Align", ["a"]).name == "aligned_mtl"
    with pytest.raises(ValueError, match="nope"):
        build_weighting("nope", ["a"])


def test_ls_update_is_the_mean_gradient():
    G = torch.randn(3, 5, dtype=torch.float64)
    theta, heads, losses = _linear_problem(G)
    w = build_weighting("ls", list(losses)).backward(losses, [theta])
    assert all(v == pytest.approx(1 / 3) for v in w.values())
    torch.testing.assert_close(theta.grad, G.mean(0))


def test_rlw_weights_positive_sum_to_one_and_vary():
    strat = build_weighting("rlw", ["a", "b", "c"])
    seen = []
    for _ in range(5):
        p = torch.nn.Parameter(torch.ones(3))
        losses = {n: p[i] * (i + 1.0) for i, n in enumerate("abc")}
        w = strat.backward(losses, [p])
        assert sum(w.values()) == pytest.approx(1.0, abs=1e-6) and min(w.values()) > 0
        torch.testing.assert_close(p.grad, torch.tensor([w["a"] * 1.0, w["b"] * 2.0, w["c"] * 3.0]))
        seen.append(tuple(w.values()))
    assert len(set(seen)) == 5


def test_uw_log_variances_converge_to_log_loss_scale():
    strat = build_weighting("uw", ["big", "small"])
    opt = torch.optim.Adam(strat.parameters(), lr=0.05)
    for _ in range(500):
        opt.zero_grad()
        strat.backward({"big": torch.tensor(4.0), "small": torch.tensor(0.25)}, [])
        opt.step()
    s = strat.log_vars.detach()
    assert s[0].item() == pytest.approx(math.log(4.0), abs=0.02)
    assert s[1].item() == pytest.approx(math.log(0.25), abs=0.02)


def test_aligned_mtl_equalizes_singular_values_and_update():
    torch.manual_seed(0)
    G = torch.randn(3, 8, dtype=torch.float64) * torch.tensor([[10.0], [1.0], [0.1]])  # badly conditioned
    M = G @ G.T
    B = AlignedMTL.balance_transformation(M)
    sv = torch.linalg.svdvals(B @ G)
    assert torch.linalg.cond(G) > 50
    assert (sv.max() / sv.min()).item() == pytest.approx(1.0, abs=1e-8)  # condition number 1
    assert sv.min().item() == pytest.approx(torch.linalg.eigvalsh(M).min().sqrt().item(), rel=1e-8)
    # independent numpy computation of Alg. 1: alpha = sqrt(l_min) V L^-1/2 V^T (1/K)
    lam, V = np.linalg.eigh(M.numpy())
    alpha = math.sqrt(lam.min()) * V @ np.diag(lam ** -0.5) @ V.T @ (np.ones(3) / 3)
    theta, heads, losses = _linear_problem(G)
    w = build_weighting("aligned_mtl", list(losses)).backward(losses, [theta])
    np.testing.assert_allclose(np.array(list(w.values())), alpha, rtol=1e-6)
    torch.testing.assert_close(theta.grad, torch.from_numpy(alpha) @ G)
    # heads keep the plain gradient of their own loss
    torch.testing.assert_close(heads.grad, torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))


@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_fairgrad_solution_satisfies_alpha_fairness(alpha):
    torch.manual_seed(1)
    G = torch.randn(3, 6, dtype=torch.float64) * torch.tensor([[3.0], [1.0], [0.3]])
    theta, heads, losses = _linear_problem(G)
    w = torch.tensor(list(build_weighting("fairgrad", list(losses), alpha=alpha).backward(losses, [theta]).values()),
                     dtype=torch.float64)
    assert (w > 0).all()
    # FairGrad Eq. 4: G G^T w = w^(-1/alpha); i.e. each task's utility g_k . d equals w_k^(-1/alpha)
    torch.testing.assert_close(G @ G.T @ w, w.pow(-1.0 / alpha), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(theta.grad, w @ G)


def test_pcgrad_removes_conflicting_components():
    g1 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    g2 = torch.tensor([-1.0, 1.0], dtype=torch.float64)  # g1 . g2 = -1 < 0: conflict
    theta, heads, losses = _linear_problem(torch.stack([g1, g2]))
    build_weighting("pcgrad", list(losses)).backward(losses, [theta])
    p1 = g1 - (g1 @ g2) / (g2 @ g2) * g2
    p2 = g2 - (g2 @ g1) / (g1 @ g1) * g1
    assert abs(float(p1 @ g2)) < 1e-12 and abs(float(p2 @ g1)) < 1e-12
    torch.testing.assert_close(theta.grad, p1 + p2)
    # no conflict -> plain sum
    G = torch.tensor([[1.0, 0.2], [0.5, 1.0]], dtype=torch.float64)
    theta, heads, losses = _linear_problem(G)
    build_weighting("pcgrad", list(losses)).backward(losses, [theta])
    torch.testing.assert_close(theta.grad, G.sum(0))


def test_gradient_weighting_with_amp_scale_is_scale_invariant():
    G = torch.randn(3, 4, dtype=torch.float64)
    theta, _, losses = _linear_problem(G)
    build_weighting("aligned_mtl", list(losses)).backward(losses, [theta], scale=1.0)
    ref = theta.grad.clone()
    theta2, _, losses2 = _linear_problem(G)
    build_weighting("aligned_mtl", list(losses2)).backward(losses2, [theta2], scale=1024.0)
    torch.testing.assert_close(theta2.grad / 1024.0, ref)
