"""The T per-task input gradients of an attack come from one batched backward pass (issue 15) and give the
SAME adversarial examples as one backward pass per task, for every aggregation and base attack; models whose
backward cannot be batched fall back to the loop with the reason recorded."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtlguard.attacks import APGD, FGSM, MIM, PGD
from mtlguard.attacks.aggregation import AGGREGATIONS
from mtlguard.data.tasks import TaskSpec
from mtlguard.models.factory import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

TASKS = (TaskSpec("age", "multiclass", 5), TaskSpec("gender", "binary"), TaskSpec("race", "multiclass", 4),
         TaskSpec("depth", "depth"))


class SmallMTL(nn.Module):
    """Shared conv trunk with BatchNorm + heads of every kind (classification, binary, dense)."""

    def __init__(self, tasks, train_bn: bool = False):
        super().__init__()
        self.tasks, self.train_bn = tasks, train_bn
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, padding=1), nn.Tanh())
        self.heads = nn.ModuleDict({
            t.name: (nn.Conv2d(8, t.out_channels, 1) if t.is_dense
                     else nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, t.out_channels)))
            for t in tasks})

    def train(self, mode: bool = True):
        super().train(mode)
        if self.train_bn:  # a model that keeps its BatchNorm in train mode even under eval()
            self.body[1].training = True
        return self

    def forward(self, x):
        h = self.body(x)
        out = {}
        for t in self.tasks:
            o = self.heads[t.name](h)
            out[t.name] = o.squeeze(1) if t.kind == "binary" else (F.softplus(o) if t.kind == "depth" else o)
        return out


def _data(tasks=TASKS, b=4, hw=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, hw, hw, generator=g)
    y = {}
    for t in tasks:
        if t.kind == "multiclass":
            y[t.name] = torch.randint(0, t.num_classes, (b,), generator=g)
        elif t.kind == "binary":
            y[t.name] = torch.randint(0, 2, (b,), generator=g)
        else:
            y[t.name] = torch.rand(b, 1, hw, hw, generator=g) + 0.2
    return x, y


def _pair(cls, model, tasks, x, y, **kw):
    out = {}
    for batched in (True, False):
        atk = cls(model, tasks, seed=0, batched_grads=batched, **kw)
        out[batched] = (atk(x, y), atk)
    return out


def _kw(agg, tasks):
    return {"aggregation": agg, **({"weights": [0.5 + i for i in range(len(tasks))]} if agg == "weighted" else {})}


@pytest.mark.parametrize("agg", AGGREGATIONS)
def test_pgd_identical_to_the_loop_for_every_aggregation(agg):
    torch.manual_seed(0)
    model = SmallMTL(TASKS)
    x, y = _data()
    res = _pair(PGD, model, TASKS, x, y, eps=8 / 255, steps=4, **_kw(agg, TASKS))
    (xb, ab), (xl, al) = res[True], res[False]
    assert ab.batched_grads_used and ab.batched_grads_reason is None
    assert al.batched_grads_used is False and "disabled" in al.batched_grads_reason
    assert torch.equal(xb, xl)


@pytest.mark.parametrize("agg", ["gbmta", "signtotal", "total", "wgd", "wgd_initial", "weighted"])
def test_resnet18_hps_identical_to_the_loop(agg):
    """The benchmark's model (ResNet-18 HPS) at 32 px, 3 tasks."""
    tasks = (TaskSpec("age", "multiclass", 9), TaskSpec("gender", "binary"), TaskSpec("race", "multiclass", 5))
    torch.manual_seed(0)
    model = build_model(tasks, "resnet18", image_size=32).eval()
    x, y = _data(tasks, b=4, hw=32)
    res = _pair(PGD, model, tasks, x, y, eps=8 / 255, steps=2, **_kw(agg, tasks))
    assert res[True][1].batched_grads_used
    assert torch.equal(res[True][0], res[False][0])


@pytest.mark.parametrize("cls,kw", [(FGSM, {}), (MIM, {"steps": 3}), (APGD, {"steps": 4}),
                                    (PGD, {"steps": 3, "norm": "l2", "eps": 0.5}),
                                    (PGD, {"steps": 3, "targeted": True, "aggregation": "gbmta"}),
                                    (PGD, {"steps": 3, "aggregation": "single:age"})])
def test_other_attacks_identical_to_the_loop(cls, kw):
    torch.manual_seed(0)
    tasks = TASKS if not kw.get("targeted") else TASKS[:3]
    model = SmallMTL(tasks)
    x, y = _data(tasks)
    res = _pair(cls, model, tasks, x, y, **kw)
    assert torch.equal(res[True][0], res[False][0])


def test_grads_are_one_tensor_read_without_copies():
    torch.manual_seed(0)
    model = SmallMTL(TASKS).eval()
    atk = PGD(model, TASKS, steps=1, batched_grads=True)
    x, y = _data()
    losses, grads = atk.losses_and_grads(x, y)
    assert isinstance(grads, torch.Tensor) and grads.shape == (len(TASKS),) + tuple(x.shape)
    views = list(grads)  # what Aggregation.sign hands to balanced_sign
    assert all(v.data_ptr() == grads[i].data_ptr() for i, v in enumerate(views))
    _, loop = PGD(model, TASKS, steps=1, batched_grads=False).losses_and_grads(x, y)
    assert isinstance(loop, list)
    for g, h in zip(grads, loop):
        assert torch.equal(g, h)
    assert losses.shape == (len(TASKS), x.shape[0])


def test_batchnorm_in_train_mode_falls_back_with_a_reason():
    torch.manual_seed(0)
    model = SmallMTL(TASKS, train_bn=True)
    x, y = _data()
    res = _pair(PGD, model, TASKS, x, y, steps=2)
    atk = res[True][1]
    assert atk.batched_grads_used is False and "BatchNorm" in atk.batched_grads_reason
    assert torch.equal(res[True][0], res[False][0])


class _NoVmap(torch.autograd.Function):
    """A custom op whose backward cannot run under vmap (.item() on the incoming gradient)."""

    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, g):
        return g * (2.0 if g.abs().max().item() >= 0 else 0.0)


class _NoVmapModel(SmallMTL):
    def forward(self, x):
        return super().forward(_NoVmap.apply(x) * 0.5)


def test_unbatchable_backward_falls_back_with_a_reason():
    torch.manual_seed(0)
    model = _NoVmapModel(TASKS)
    x, y = _data()
    res = _pair(PGD, model, TASKS, x, y, steps=3)
    atk = res[True][1]
    assert atk.batched_grads_used is False and atk.batched_grads_reason
    assert torch.equal(res[True][0], res[False][0])
    # the decision sticks: later calls go straight to the loop
    atk(x, y)
    assert atk.batched_grads_used is False


def test_single_task_uses_one_plain_pass():
    tasks = (TaskSpec("age", "multiclass", 5),)
    torch.manual_seed(0)
    model = SmallMTL(tasks)
    x, y = _data(tasks)
    atk = PGD(model, tasks, steps=2, seed=0)
    out = atk(x, y)
    assert atk.batched_grads_used is False  # T = 1: nothing to batch
    assert torch.equal(out, PGD(model, tasks, steps=2, seed=0, batched_grads=False)(x, y))


def test_auto_loops_on_the_cpu_and_rejects_bad_values():
    torch.manual_seed(0)
    model = SmallMTL(TASKS)
    x, y = _data()
    atk = PGD(model, TASKS, steps=2, seed=0)
    assert atk.batched_grads == "auto"
    out = atk(x, y)
    assert atk.batched_grads_used is False and atk.batched_grads_reason.startswith("auto")
    assert torch.equal(out, PGD(model, TASKS, steps=2, seed=0, batched_grads=True)(x, y))
    with pytest.raises(ValueError, match="batched_grads"):
        PGD(model, TASKS, batched_grads="yes")
