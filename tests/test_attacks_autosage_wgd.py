"""Auto-SAGE / GB-MTA-Auto-SAGE (Eq. 15-16) against hand-computed weights, the WGD variants against
hand-computed steps, the Square attack, the AutoAttack-style ensemble and ``attack-eval --attacks auto``."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from mtlguard.attacks import (PGD, Aggregation, AutoSAGE, ModelSet, MultiTaskAutoAttack, Square, build_attack)
from mtlguard.data.tasks import TaskSpec
from mtlguard.models.losses import task_loss

pytestmark = pytest.mark.usefixtures("one_thread")

REG = (TaskSpec("a", "regression", loss="mse"), TaskSpec("b", "regression", loss="mse"))


class Lin(nn.Module):
    """Two linear regression heads on the flattened image: L_i = (w_i . x - y_i)^2, grad = 2 (w_i . x - y_i) w_i."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float64))

    def forward(self, x):
        f = x.flatten(1)
        return {"a": f @ self.w[0], "b": f @ self.w[1]}


def _t(*v):
    return torch.tensor(v, dtype=torch.float64)


# ----------------------------------------------------------------------------------- Auto-SAGE, Eq. 15 / 16
@pytest.mark.parametrize("aggregation", ["gbmta", "total"])
def test_autosage_weights_follow_eq16_on_a_hand_computed_case(aggregation):
    m = Lin([[1.0, -2.0], [3.0, 1.0]])
    x = _t(0.5, 0.5).reshape(1, 1, 1, 2)
    y = {"a": _t(0.0), "b": _t(1.0)}
    eta, kappa, lr = 0.05, 0.1, 10.0
    atk = AutoSAGE(m, REG, eps=0.1, steps=1, step_size=eta, fitting_factor=kappa, alpha_lr=lr,
                   aggregation=aggregation, record_history=True)
    x1 = atk(x, y)
    # by hand: at x, out_a = -0.5 (L_a = 0.25, grad -1, 2), out_b = 1 (L_b = 1, grad 6, 2)
    gbm = aggregation == "gbmta"
    g_a = _t(-1.0, 2.0) / (0.25 if gbm else 1.0)  # Eq. 16 divides by the sample's own loss
    g_b = _t(6.0, 2.0) / (1.0 if gbm else 1.0)
    s = g_a + g_b  # alpha = 1
    assert bool((s > 0).all())  # look-ahead x' = x + eta = (0.55, 0.55)
    # at x': out_a = -0.55 (L_a = 0.3025, grad -1.1, 2.2); out_b = 1.2 (L_b = 1.44, grad 7.2, 2.4)
    ga_l = _t(-1.1, 2.2) / (0.3025 if gbm else 1.0)
    gb_l = _t(7.2, 2.4) / (1.44 if gbm else 1.0)
    d_f = -(ga_l + gb_l)
    sech2 = torch.tensor([1 - math.tanh(kappa * float(v)) ** 2 for v in s], dtype=torch.float64)
    alpha_a = 1 - lr * d_f * kappa * eta * g_a * sech2
    alpha_b = 1 - lr * d_f * kappa * eta * g_b * sech2
    torch.testing.assert_close(atk.alpha[0].flatten(), alpha_a)
    torch.testing.assert_close(atk.alpha[1].flatten(), alpha_b)
    torch.testing.assert_close(atk.history[0]["x_look"].flatten(), _t(0.55, 0.55))
    blend = alpha_a * g_a + alpha_b * g_b
    torch.testing.assert_close(x1.flatten(), (x.flatten() + eta * torch.sign(blend)).clamp(0.4, 0.6))
    assert not torch.allclose(alpha_a, torch.ones(2, dtype=torch.float64))  # the weights moved


def test_autosage_aliases_modelsets_and_refusals():
    torch.manual_seed(0)
    m1, m2 = Lin([[1.0, -2.0], [3.0, 1.0]]), Lin([[0.5, 1.0], [-1.0, 2.0]])
    x = torch.rand(3, 1, 1, 2, dtype=torch.float64) * 0.5 + 0.25
    y = {"a": torch.zeros(3, dtype=torch.float64), "b": torch.ones(3, dtype=torch.float64)}
    assert AutoSAGE(m1, REG, aggregation="gbmta_autosage").balanced
    assert not AutoSAGE(m1, REG, aggregation="autosage").balanced
    atk = AutoSAGE([m1, m2], REG, eps=0.05, steps=4, step_size=0.02)
    assert atk.attack_tasks == ("m0:a", "m0:b", "m1:a", "m1:b") and atk.alpha is None
    x_adv = atk(x, y)  # per-task targets are expanded to every model
    assert atk.alpha.shape == (4,) + tuple(x.shape)
    assert float((x_adv - x).abs().max()) <= 0.05 + 1e-9
    for mod in (m1, m2):
        with torch.no_grad():
            before = sum(task_loss(t, mod(x)[t.name], y[t.name], "sum") for t in REG)
            after = sum(task_loss(t, mod(x_adv)[t.name], y[t.name], "sum") for t in REG)
        assert float(after) > float(before)
    ms = ModelSet({"p": m1, "q": m2}, REG)
    assert [t.name for t in ms.tasks] == ["p:a", "p:b", "q:a", "q:b"]
    assert set(ms(x)) == {"p:a", "p:b", "q:a", "q:b"}
    with pytest.raises(ValueError, match="composes with"):
        AutoSAGE(m1, REG, aggregation="signtotal")
    with pytest.raises(ValueError, match="L-inf"):
        AutoSAGE(m1, REG, norm="l2")
    assert isinstance(build_attack("autosage", m1, REG, aggregation="gbmta"), AutoSAGE)


def test_autosage_eot_components_average_over_the_transform():
    m = Lin([[1.0, -2.0], [3.0, 1.0]])
    x = _t(0.5, 0.5).reshape(1, 1, 1, 2)
    y = {"a": _t(0.0), "b": _t(1.0)}
    calls = []

    def flip(z):  # deterministic "random" transform: x -> reversed pixels
        calls.append(1)
        return z.flip(-1)

    atk = AutoSAGE(m, REG, eps=0.1, steps=1, step_size=0.05, aggregation="total", transform=flip, eot_tasks=["b"],
                   eot_samples=2)
    _, g = atk.blend_terms(x, y)
    assert len(calls) == 2
    # task b through the flip: out = 3 * x1 + 1 * x0 -> grad 2 * (2 - 1) * (1, 3)
    torch.testing.assert_close(g[1].flatten(), _t(2.0, 6.0))
    torch.testing.assert_close(g[0].flatten(), _t(-1.0, 2.0))


# ----------------------------------------------------------------------------------- WGD variants
W_OFF = [[0.66, 0.27, 0.06], [0.62, -0.45, -0.17]]


def _lin_losses_grads(w, x, y):
    f = x.flatten(1)
    out = {}
    for i, n in enumerate(("a", "b")):
        r = f @ w[i] - y[n]
        out[n] = (r ** 2, (2 * r)[:, None] * w[i][None])
    return out


def test_wgd_official_matches_a_hand_computed_two_step_case():
    w = torch.tensor(W_OFF, dtype=torch.float64)
    m = Lin(W_OFF)
    x = _t(0.5, 0.4, 0.6, 0.3, 0.7, 0.5).reshape(2, 1, 1, 3)
    y = {"a": _t(-1.52, 0.38), "b": _t(-0.31, -0.17)}
    eps, step, seed = 0.1, 0.06, 3
    res = {agg: PGD(m, REG, eps=eps, steps=2, step_size=step, aggregation=agg, seed=seed)(x, y)
           for agg in ("wgd_official", "total", "wgd_initial")}
    # by hand: the random start (same generator draw as PGD.random_init), then taskaugment's two steps
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x_rs = (x + (2 * u - 1) * eps).clamp(0, 1)
    proj = lambda z: torch.min(torch.max(z, x - eps), x + eps).clamp(0, 1)  # noqa: E731
    lg = _lin_losses_grads(w, x_rs, y)
    base = {n: lg[n][0].mean() for n in ("a", "b")}  # batch-mean loss at the random-start iterate
    x1 = proj(x_rs + step * torch.sign(lg["a"][1] + lg["b"][1]).reshape(x.shape))  # step 0: plain sum
    lg = _lin_losses_grads(w, x1, y)
    d2 = torch.sign(lg["a"][1] / base["a"] + lg["b"][1] / base["b"]).reshape(x.shape)
    x2 = proj(x1 + step * d2)
    torch.testing.assert_close(res["wgd_official"], x2)
    assert not torch.allclose(res["wgd_official"], res["total"])  # the case tells the variants apart
    assert not torch.allclose(res["wgd_official"], res["wgd_initial"])


def test_wgd_official_records_base_at_first_direction_and_resets_per_call():
    agg = Aggregation.parse("wgd_official", REG)
    agg.begin(_t(1.0, 1.0, 1.0, 1.0).reshape(2, 2))
    mode, w = agg.op_weights(_t(1.0, 3.0, 4.0, 8.0).reshape(2, 2))
    assert mode == "total" and w is None
    torch.testing.assert_close(agg.official_base, _t(2.0, 6.0))
    mode, w = agg.op_weights(_t(9.0, 9.0, 9.0, 9.0).reshape(2, 2))
    torch.testing.assert_close(w, _t(0.5, 0.5, 1 / 6, 1 / 6).reshape(2, 2))  # constant per task, whole batch
    agg.begin(_t(1.0, 1.0, 1.0, 1.0).reshape(2, 2))
    assert agg.official_base is None


def test_wgd_as_meant_helps_the_lagging_task_and_literal_does_not():
    # one sample, two tasks with orthogonal gradients: a's loss has tripled, b's is unchanged
    agg, lit = Aggregation.parse("wgd", REG), Aggregation.parse("wgd_literal", REG)
    l0, lt = _t(1.0, 1.0).reshape(2, 1), _t(3.0, 1.0).reshape(2, 1)
    g = [_t(1.0, 0.0).reshape(1, 2), _t(0.0, 1.0).reshape(1, 2)]
    for a in (agg, lit):
        a.begin(l0)
    v, vl = agg.vector(g, lt), lit.vector(g, lt)
    assert float(v[0, 1]) > float(v[0, 0])  # more of b (lagging)
    assert float(vl[0, 0]) > float(vl[0, 1])  # literal: more of a (already winning)


# ----------------------------------------------------------------------------------- Square + ensemble
def _toy_classifier():
    torch.manual_seed(0)
    from mtlguard.models import build_model

    tasks = (TaskSpec("age", "multiclass", 4), TaskSpec("gender", "binary"))
    return build_model(tasks, "small_cnn", image_size=16).eval(), tasks


class NoGrad(nn.Module):
    """Answers queries only: outputs carry no gradient (a black box)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        with torch.no_grad():
            return self.inner(x)


@pytest.mark.parametrize("aggregation", ["total", "gbmta", "single:age"])
def test_square_is_black_box_monotone_and_in_the_ball(aggregation):
    m, tasks = _toy_classifier()
    x = torch.rand(4, 3, 16, 16)
    y = {"age": torch.randint(0, 4, (4,)), "gender": torch.randint(0, 2, (4,))}
    atk = Square(NoGrad(m), tasks, eps=8 / 255, n_queries=30, aggregation=aggregation, seed=0, record_history=True)
    x_adv = atk(x, y)
    assert float((x_adv - x).abs().max()) <= 8 / 255 + 1e-6 and atk.last_queries == 31
    f = torch.stack([h["f_best"] for h in atk.history])
    assert bool((f[1:] >= f[:-1]).all())  # the kept objective never decreases
    atk.begin(x, y)
    assert bool((atk.objective(atk.losses(x_adv, y)) > atk.objective(atk.losses(x, y))).all())
    with pytest.raises(ValueError, match="L-inf"):
        Square(m, tasks, norm="l2")


def test_auto_ensemble_keeps_the_per_sample_worst_case():
    m, tasks = _toy_classifier()
    x = torch.rand(5, 3, 16, 16)
    y = {"age": torch.randint(0, 4, (5,)), "gender": torch.randint(0, 2, (5,))}
    atk = MultiTaskAutoAttack(m, tasks, eps=8 / 255, steps=4, n_target_classes=2, n_queries=10,
                              aggregation="gbmta", seed=0)
    x_adv = atk(x, y)
    assert float((x_adv - x).abs().max()) <= 8 / 255 + 1e-6
    rep = atk.last_report
    assert set(rep) == {"clean", "apgd", "apgd-t1", "square"}  # binary gender has a single wrong class
    assert sum(r["wins"] for r in rep.values()) == 5
    atk.begin(x, y)
    f, n = atk.objective(atk.losses(x_adv, y)), atk.fooled_tasks(x_adv, y)
    assert float(n.float().mean()) >= max(r["mean_fooled"] for r in rep.values()) - 1e-6
    # per image, lexicographically (fooled tasks, objective) at least APGD's -- and the clean image's
    for cand in (build_attack("apgd", m, tasks, eps=8 / 255, steps=4, aggregation="gbmta", seed=0)(x, y), x):
        fc, nc = atk.objective(atk.losses(cand, y)), atk.fooled_tasks(cand, y)
        assert bool(((n > nc) | ((n == nc) & (f >= fc - 1e-6))).all())
    # selection="objective": the per-image maximum of the objective alone
    atk_o = MultiTaskAutoAttack(m, tasks, eps=8 / 255, steps=4, n_target_classes=2, n_queries=10,
                                aggregation="gbmta", seed=0, selection="objective")
    x_o = atk_o(x, y)
    atk_o.begin(x, y)
    f_o = atk_o.objective(atk_o.losses(x_o, y))
    assert float(f_o.mean()) >= max(r["mean_objective"] for r in atk_o.last_report.values()) - 1e-6
    with pytest.raises(ValueError, match="untargeted"):
        MultiTaskAutoAttack(m, tasks, targeted=True)


def test_attack_eval_auto_autosage_and_transferability_matrix(tmp_path):
    from mtlguard.attacks.evaluation import run_attack_eval, write_reports
    from mtlguard.cli.main import main
    from mtlguard.data import SyntheticScenes
    from mtlguard.models import save_model

    m, tasks = _toy_classifier()
    g = torch.Generator().manual_seed(1)
    loader = [(torch.rand(4, 3, 16, 16, generator=g),
               {"age": torch.randint(0, 4, (4,), generator=g), "gender": torch.randint(0, 2, (4,), generator=g)})]
    res = run_attack_eval(m, tasks, loader, attacks=("pgd", "auto", "square"),
                          aggregations=("single:*", "gbmta", "autosage", "gbmta_autosage"), eps_list=(8 / 255,),
                          steps=2, queries=5, progress=False)
    got = {(r["attack"], r["aggregation"]) for r in res["results"]}
    assert ("autosage", "autosage") in got and ("autosage", "gbmta_autosage") in got and ("auto", "gbmta") in got
    assert ("pgd", "autosage") not in got and res["attacks"] == ["pgd", "auto", "square", "autosage"]
    mats = {mm["attack"]: mm["matrix"] for mm in res["transferability_matrix"]}
    assert set(mats) == {"pgd", "auto", "square"}
    for a, mat in mats.items():
        row = next(r for r in res["results"] if r["attack"] == a and r["aggregation"] == "single:age")
        ratio = row["task_arp"]["gender"] / row["task_arp"]["age"] if row["task_arp"]["age"] else float("nan")
        assert mat["age"]["age"] == 1.0
        assert mat["age"]["gender"] == pytest.approx(ratio, nan_ok=True)
    paths = write_reports(res, tmp_path, prefix="t", command="pytest")
    md = open(paths["md"]).read()
    assert "GB-MTA-Auto-SAGE" in md and "Transferability matrix" in md
    assert open(paths["transfer_pgd_8_png"], "rb").read(4) == b"\x89PNG"
    # the CLI
    ds = SyntheticScenes(2, image_size=(16, 16), seed=0, split="test", progress=False)
    from mtlguard.models import build_model

    save_model(build_model(ds.tasks, arch="small_cnn", image_size=16), tmp_path / "model")
    assert main(["attack-eval", "--model", str(tmp_path / "model"), "--data", "synthetic", "--subset", "2",
                 "--attacks", "auto", "--aggregations", "gbmta", "--eps", "8", "--steps", "2", "--queries", "3",
                 "--batch-size", "2", "--out", str(tmp_path / "rep"), "--prefix", "auto", "--no-progress"]) == 0
    data = json.loads((tmp_path / "rep" / "auto.json").read_text())
    assert data["attacks"] == ["auto"] and data["queries"] == 3
