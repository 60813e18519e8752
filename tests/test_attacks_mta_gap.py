"""MTA as specified: universal perturbations independent of the other tasks' noise; the GAP baseline
(independent single-task generators); the transfer evaluation (trained on one model, tested on another)."""
from __future__ import annotations

import pytest
import torch

from mtlguard.attacks.mta import (GAPGenerator, MTAGenerator, evaluate_mta, evaluate_transfer, fooling_losses,
                                  load_generator, train_mta)
from mtlguard.data.tasks import TaskSpec
from mtlguard.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

TASKS = (TaskSpec("age", "multiclass", 4), TaskSpec("gender", "binary"), TaskSpec("race", "multiclass", 3))


def _data(n=8, hw=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, hw, hw, generator=g), {"age": torch.randint(0, 4, (n,), generator=g),
                                                   "gender": torch.randint(0, 2, (n,), generator=g),
                                                   "race": torch.randint(0, 3, (n,), generator=g)}


@pytest.mark.parametrize("training", [True, False])
def test_universal_perturbation_ignores_the_other_tasks_noise(training):
    torch.manual_seed(0)
    g = MTAGenerator(TASKS, image_size=16, eps=8 / 255, mode="universal", ngf=4, n_blocks=1).train(training)
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        before = g(x)
        g.patterns[1].uniform_()  # change only Z_gender
        g.patterns[2].mul_(0.1)  # and Z_race
        after = g(x)
    torch.testing.assert_close(after[0], before[0], rtol=0, atol=0)  # v_age: bit-identical
    assert not torch.allclose(after[1], before[1])  # v_gender did change with its own pattern
    # the patterns are normalized with their own statistics: running statistics stay untouched
    bn = next(m for m in g.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))


def test_universal_independence_holds_after_training_and_train_equals_eval():
    torch.manual_seed(0)
    victim = build_model(TASKS, "small_cnn", image_size=16).eval()
    g = MTAGenerator(TASKS, image_size=16, eps=16 / 255, mode="universal", ngf=4, n_blocks=1)
    x, y = _data()
    train_mta(g, TASKS, victim, [(x, y)] * 2, epochs=1, lr=1e-3, progress=False)
    with torch.no_grad():
        v_eval = g.eval()(x)
        v_train = g.train()(x)
        for a, b in zip(v_eval, v_train):
            torch.testing.assert_close(a, b)  # the deployed perturbation is the trained one
        g.patterns[0].uniform_()
        for a, b in zip(g(x)[1:], v_train[1:]):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_gap_baseline_is_one_independent_generator_per_task(tmp_path):
    torch.manual_seed(0)
    victim = build_model(TASKS, "small_cnn", image_size=16).eval()
    gap = GAPGenerator(TASKS, image_size=16, eps=16 / 255, ngf=4, n_blocks=1)
    mta = MTAGenerator(TASKS, image_size=16, eps=16 / 255, ngf=4, n_blocks=1)
    assert len(gap.generators) == 3 and all(len(s.decoders) == 1 for s in gap.generators)
    n_gap = sum(p.numel() for p in gap.parameters())
    n_mta = sum(p.numel() for p in mta.parameters())
    assert n_gap > n_mta  # M encoders instead of one shared encoder (MTA Table 7)
    x, y = _data()
    # task gender's fooling loss reaches only gender's generator
    _, per = fooling_losses(gap, TASKS, victim, x, y)
    per["gender"].backward()
    touched = [any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in s.parameters()) for s in gap.generators]
    assert touched == [False, True, False]
    gap.zero_grad(set_to_none=True)
    with torch.no_grad():
        before, _ = fooling_losses(gap.eval(), TASKS, victim, x, y)
    train_mta(gap, TASKS, victim, [(x, y)] * 3, epochs=2, lr=2e-3, out_dir=tmp_path, progress=False)
    with torch.no_grad():
        after, _ = fooling_losses(gap.eval(), TASKS, victim, x, y)
    assert float(after) < float(before)
    res = evaluate_mta(gap, TASKS, victim, [(x, y)])
    assert set(res["per_task"]) == {t.name for t in TASKS}
    for v in gap(x):
        assert float(v.abs().max()) <= 16 / 255 * (1 + 1e-5)
    loaded = load_generator(tmp_path / "mta_generator.safetensors")
    assert isinstance(loaded, GAPGenerator)
    with torch.no_grad():
        for a, b in zip(loaded.eval()(x), gap.eval()(x)):
            torch.testing.assert_close(a, b)


def test_transfer_row_trains_on_hps_and_evaluates_on_mtan():
    torch.manual_seed(0)
    source = build_model(TASKS, "small_cnn", image_size=16).eval()
    target = build_model(TASKS, "small_cnn", image_size=16, mtl="mtan").eval()
    g = MTAGenerator(TASKS, image_size=16, eps=32 / 255, ngf=4, n_blocks=1)
    x, y = _data()
    train_mta(g, TASKS, source, [(x, y)] * 2, epochs=1, lr=2e-3, progress=False)
    res = evaluate_transfer(g, TASKS, source, target, [(x, y)])
    ref_src = evaluate_mta(g, TASKS, source, [(x, y)])
    ref_tgt = evaluate_mta(g, TASKS, target, [(x, y)])
    for n in ("age", "gender", "race"):
        assert res["source"]["per_task"][n]["fooling_ratio"] == ref_src["per_task"][n]["fooling_ratio"]
        assert res["target"]["per_task"][n]["fooling_ratio"] == ref_tgt["per_task"][n]["fooling_ratio"]
        fs, ft = ref_src["per_task"][n]["fooling_ratio"], ref_tgt["per_task"][n]["fooling_ratio"]
        assert res["transfer_ratio"][n] == pytest.approx(ft / fs if fs > 0 else float("nan"), nan_ok=True)
