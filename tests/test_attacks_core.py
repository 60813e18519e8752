"""mtlguard.attacks: bases x aggregations (GB-MTA Eq. 4, 8-9, Alg. 3; Ghamizi Def. 5)."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from mtlguard.attacks import APGD, FGSM, MIM, PGD, Aggregation, apgd_checkpoints
from mtlguard.data.tasks import TaskSpec

TASKS = (TaskSpec("age", "multiclass", 5), TaskSpec("gender", "binary"), TaskSpec("depth", "depth"))
AGGS = ("total", "signtotal", "gbmta", "wgd", "wgd_literal", "wgd_initial", "wgd_official")


class TinyMTL(nn.Module):
    """Shared conv trunk (with BatchNorm, so train/eval mode matters) + one head per task."""

    def __init__(self, tasks, c=3):
        super().__init__()
        self.tasks = tasks
        self.body = nn.Sequential(nn.Conv2d(c, 6, 3, padding=1), nn.BatchNorm2d(6), nn.Tanh())
        self.heads = nn.ModuleDict({
            t.name: (nn.Conv2d(6, t.out_channels, 1) if t.is_dense
                     else nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, t.out_channels)))
            for t in tasks})

    def forward(self, x):
        h = self.body(x)
        out = {}
        for t in self.tasks:
            o = self.heads[t.name](h)
            out[t.name] = o.squeeze(1) if t.kind == "binary" else (F.softplus(o) if t.kind == "depth" else o)
        return out


def batch(b=4, hw=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, hw, hw, generator=g)
    y = {"age": torch.randint(0, 5, (b,), generator=g), "gender": torch.randint(0, 2, (b,), generator=g),
         "depth": torch.rand(b, 1, hw, hw, generator=g) + 0.2}
    return x, y


def model_for(tasks=TASKS, seed=0):
    torch.manual_seed(seed)
    m = TinyMTL(tasks)
    with torch.no_grad():  # non-trivial BN statistics
        m.body[1].running_mean.uniform_(-0.2, 0.2)
        m.body[1].running_var.uniform_(0.5, 2.0)
    return m


def plain_pgd(model, x, y, eps, steps, step_size, random_start, seed):
    """Textbook single-task linf PGD on task 'age' (CE), written independently of mtlguard."""
    model.eval()
    torch.manual_seed(seed)
    x_adv = (x + (2 * torch.rand(x.shape) - 1) * eps).clamp(0, 1) if random_start else x.clone()
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        loss = F.cross_entropy(model(x_adv)["age"], y["age"], reduction="none").sum()
        g, = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + step_size * g.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()


# ----------------------------------------------------------------------------- one task == plain
@pytest.mark.parametrize("multi", [False, True], ids=["1-task-model", "3-task-model,attack_tasks=[age]"])
def test_one_task_every_aggregation_is_plain_pgd_and_fgsm(multi):
    tasks = TASKS if multi else TASKS[:1]
    m = model_for(tasks)
    x, y = batch()
    eps, steps, step = 8 / 255, 3, 2 / 255
    ref_pgd = plain_pgd(m, x, y, eps, steps, step, True, seed=7)
    ref_fgsm = plain_pgd(m, x, y, eps, 1, eps, False, seed=7)
    assert not torch.equal(ref_pgd, x)
    specs = [(a, {"attack_tasks": ["age"]}) for a in AGGS] + [("single:age", {}), ("weighted", {"weights": {"age": 3.0}})]
    for agg, kw in specs:
        torch.manual_seed(7)
        out = PGD(m, tasks, eps=eps, steps=steps, step_size=step, aggregation=agg, **kw)(x, y)
        assert torch.equal(out, ref_pgd), agg
        out = FGSM(m, tasks, eps=eps, aggregation=agg, **kw)(x, y)
        assert torch.equal(out, ref_fgsm), agg


# ----------------------------------------------------------------------------- GB-MTA optimality
def test_gbmta_maximizes_first_order_relative_objective_over_all_sign_vectors():
    g = torch.Generator().manual_seed(3)
    t, b, d = 3, 6, 8
    # task 0 has gradients 100x larger and a large loss: TOTAL is dominated by it (GB-MTA Sec. 3)
    grads = torch.randn(t, b, d, generator=g) * torch.tensor([100.0, 1.0, 0.5])[:, None, None]
    losses = torch.rand(t, b, generator=g) * torch.tensor([50.0, 1.0, 0.5])[:, None] + 0.05
    betas = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=d)))  # all 2^d sign vectors
    c = (grads / losses[:, :, None]).sum(0)  # [B, D]: sum_i g_i / L_i
    best = (c @ betas.T).amax(1)  # brute-force optimum of sum_i beta . g_i / L_i per sample
    objective = {}
    for mode in ("gbmta", "total", "signtotal"):
        agg = Aggregation.parse(mode, [TaskSpec(f"t{i}", "regression") for i in range(t)])
        beta = agg.sign(list(grads), losses).float()
        assert set(beta.unique().tolist()) <= {-1.0, 1.0}
        objective[mode] = (c * beta).sum(1)
    torch.testing.assert_close(objective["gbmta"], best)
    assert bool((objective["total"] <= best + 1e-5).all()) and bool((objective["signtotal"] <= best + 1e-5).all())
    assert float(objective["total"].sum()) < float(best.sum()) - 1e-3
    assert float(objective["signtotal"].sum()) < float(best.sum()) - 1e-3


def test_wgd_weights_follow_def5_and_wgd_initial_uses_inverse_initial_loss():
    tasks = [TaskSpec("a", "regression"), TaskSpec("b", "regression")]
    l0 = torch.tensor([[1.0, 2.0], [4.0, 1.0]])  # [T, B]
    lt = torch.tensor([[3.0, 2.0], [4.0, 4.0]])
    rate = lt / l0  # Lt_i(t) = L_i(t) / L_i(0)
    r = rate / rate.mean(0, keepdim=True)  # Def. 5's relative inverse attack rate
    lit = Aggregation.parse("wgd_literal", tasks)
    lit.begin(l0)
    torch.testing.assert_close(lit.op_weights(lt)[1], r)
    agg = Aggregation.parse("wgd", tasks)  # as meant: more weight to the task whose loss grew least
    agg.begin(l0)
    _, w = agg.op_weights(lt)
    torch.testing.assert_close(w, 1.0 / r)
    assert float(w[1, 0]) > float(w[0, 0])  # sample 0: a tripled, b unchanged -> b weighs more
    agg0 = Aggregation.parse("wgd_initial", tasks)
    agg0.begin(l0)
    torch.testing.assert_close(agg0.op_weights(lt)[1], 1.0 / l0)


# ----------------------------------------------------------------------------- APGD schedule
def test_apgd_checkpoints_match_croce_hein_schedule():
    # p = 0, .22, .41, .57, .70, .80, .87, .93, .99 -> w_j = ceil(p_j * N)
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert apgd_checkpoints(20) == [5, 9, 12, 14, 16, 18, 19]


@pytest.mark.parametrize("norm,eps", [("linf", 16 / 255), ("l2", 1.0)])
def test_apgd_step_size_halving_and_restart_from_best_follow_the_schedule(norm, eps):
    m = model_for()
    x, y = batch(b=6)
    atk = APGD(m, TASKS, eps=eps, norm=norm, steps=20, aggregation="gbmta", record_history=True, keep_points=True)
    x_adv = atk(x, y)
    h = atk.history
    assert [e["it"] for e in h] == list(range(21))
    assert [e["it"] for e in h if e["checkpoint"]] == apgd_checkpoints(20)
    torch.testing.assert_close(h[0]["f"], torch.zeros(6))  # relative objective at x^(0) = x (Alg. 3 line 4)
    eta = torch.full((6,), 2 * eps)
    reduced_last = torch.zeros(6, dtype=torch.bool)
    last_w, n_reduced = 0, 0
    fbest = [torch.stack([e["f"] for e in h[: k + 1]]).amax(0) for k in range(21)]
    for k in range(1, 21):
        e = h[k]
        if e["checkpoint"]:
            succ = sum((h[i + 1]["f"] > h[i]["f"]).long() for i in range(last_w, k))
            cond1 = succ < 0.75 * (k - last_w)
            cond2 = ~reduced_last & (fbest[k] <= fbest[last_w])
            expect = cond1 | cond2
            assert torch.equal(e["reduced"], expect), k
            eta = torch.where(expect, eta / 2, eta)
            reduced_last, last_w = expect, k
            n_reduced += int(expect.sum())
            for s in range(6):  # restart from the best point found so far (argmax of recorded f)
                if expect[s]:
                    j = int(torch.stack([h[i]["f"][s] for i in range(k + 1)]).argmax())
                    assert torch.equal(e["x_base"][s], h[j]["x"][s])
                else:
                    assert torch.equal(e["x_base"][s], e["x"][s])
        torch.testing.assert_close(e["eta"], eta)
    assert n_reduced > 0
    # the returned point is the best one seen (best-point tracking)
    final_f = atk.objective(_losses_eval(atk, x_adv, y))
    torch.testing.assert_close(final_f, fbest[20], rtol=1e-4, atol=1e-5)


def _losses_eval(atk, x, y):
    atk.model.eval()
    return atk.losses(x, y)


# ----------------------------------------------------------------------------- bounds (property test)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cls=st.sampled_from([FGSM, PGD, MIM, APGD]), norm=st.sampled_from(["linf", "l2"]),
       agg=st.sampled_from(AGGS + ("single:gender", "weighted")), eps=st.floats(0.0, 0.6),
       seed=st.integers(0, 1000))
def test_outputs_respect_eps_ball_and_image_box(cls, norm, agg, eps, seed):
    m = model_for()
    x, y = batch(b=3, hw=5, seed=seed)
    x[0, 0, 0, 0], x[1, 1, 1, 1] = 0.0, 1.0  # saturated pixels
    kw = {"weights": [1.0, 2.0, 0.5]} if agg == "weighted" else {}
    if cls is not FGSM:
        kw["steps"] = 3
    x_adv = cls(m, TASKS, eps=eps, norm=norm, aggregation=agg, **kw)(x, y)
    assert x_adv.shape == x.shape and bool(torch.isfinite(x_adv).all())
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    d = (x_adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    assert bool((size <= eps * (1 + 1e-5) + 1e-6).all()), (size, eps)


# ----------------------------------------------------------------------------- attack strength
@pytest.mark.parametrize("cls", [FGSM, PGD, MIM, APGD])
def test_attacks_increase_their_objective(cls):
    m = model_for()
    x, y = batch(b=4)
    atk = cls(m, TASKS, eps=16 / 255, aggregation="gbmta", **({} if cls is FGSM else {"steps": 5}))
    x_adv = atk(x, y)
    m.eval()
    atk.begin(x, y)
    assert float(atk.objective(atk.losses(x_adv, y)).mean()) > 0.0


def test_targeted_attack_moves_towards_target_class():
    m = model_for()
    x, y = batch(b=4)
    target = {"age": torch.tensor([0, 1, 2, 3]), "gender": torch.tensor([1, 0, 1, 0])}
    atk = PGD(m, TASKS, eps=32 / 255, steps=8, step_size=4 / 255, targeted=True, attack_tasks=["age", "gender"],
              aggregation="gbmta", random_start=False)
    x_adv = atk(x, y, target_labels=target)
    m.eval()
    with torch.no_grad():
        ce = lambda xx: F.cross_entropy(m(xx)["age"], target["age"], reduction="none")  # noqa: E731
        assert bool((ce(x_adv) < ce(x)).all())
    with pytest.raises(ValueError, match="classification"):
        PGD(m, TASKS, targeted=True)  # depth cannot be targeted


# ----------------------------------------------------------------------------- mode and checks
def test_model_mode_and_requires_grad_restored_even_on_error():
    m = model_for()
    m.train()
    m.heads["age"].requires_grad_(False)
    flags = [p.requires_grad for p in m.parameters()]
    x, y = batch()
    for cls in (FGSM, PGD, MIM, APGD):
        kw = {} if cls is FGSM else {"steps": 2}
        cls(m, TASKS, **kw)(x, y)
        assert m.training and all(mod.training for mod in m.modules())
        assert [p.requires_grad for p in m.parameters()] == flags

    class Broken(TinyMTL):
        def forward(self, x):
            out = super().forward(x)
            out.pop("depth")
            return out

    b = Broken(TASKS).train()
    with pytest.raises(KeyError, match="depth"):
        PGD(b, TASKS, steps=2)(x, y)
    assert b.training and all(p.requires_grad for p in b.parameters())


def test_input_checks_raise_clear_errors():
    m = model_for()
    x, y = batch()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        PGD(m, TASKS)(x * 2, y)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        PGD(m, TASKS)(bad, y)
    with pytest.raises(ValueError, match="batch size"):
        PGD(m, TASKS)(x, {**y, "age": y["age"][:2]})
    with pytest.raises(KeyError, match="gender"):
        PGD(m, TASKS)(x, {"age": y["age"], "depth": y["depth"]})
    with pytest.raises(ValueError, match="eps"):
        PGD(m, TASKS, eps=-0.1)
    with pytest.raises(ValueError, match="unknown task"):
        PGD(m, TASKS, attack_tasks=["nope"])
    with pytest.raises(ValueError, match="unknown task"):
        PGD(m, TASKS, aggregation="single:nope")
    with pytest.raises(ValueError, match="unknown aggregation"):
        PGD(m, TASKS, aggregation="mean")
    with pytest.raises(ValueError, match="norm"):
        PGD(m, TASKS, norm="l7")
    with pytest.raises(ValueError, match="steps"):
        PGD(m, TASKS, steps=0)
    with pytest.raises(TypeError, match="floating"):
        PGD(m, TASKS)((x * 255).to(torch.uint8), y)
    # eps = 0 returns the input unchanged
    assert torch.equal(PGD(m, TASKS, eps=0.0)(x, y), x)
