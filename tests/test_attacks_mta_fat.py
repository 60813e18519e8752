"""MTA generator (Guo et al.: Pi_eps, shared encoder + task decoders, Eq. 2-5) and FAT (early-stopped PGD)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from mtlguard.attacks import EarlyStopPGD, FATPerturb
from mtlguard.attacks.mta import MTAGenerator, evaluate_mta, fooling_losses, scale_to_ball, train_mta
from mtlguard.data.tasks import TaskSpec
from test_attacks_core import TASKS, batch, model_for

CLS_TASKS = (TaskSpec("age", "multiclass", 5), TaskSpec("gender", "binary"))


def small_gen(tasks=TASKS, mode="instance", eps=8 / 255, norm="linf", hw=8):
    torch.manual_seed(0)
    return MTAGenerator(tasks, image_size=hw, eps=eps, norm=norm, mode=mode, ngf=4, n_blocks=1)


@pytest.mark.parametrize("mode", ["instance", "universal"])
@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("l2", 0.3)])
def test_generator_outputs_one_perturbation_per_task_within_eps(mode, norm, eps):
    g = small_gen(mode=mode, eps=eps, norm=norm)
    x = torch.rand(3, 3, 8, 8)
    with torch.no_grad():
        vs = g(x)
        advs = g.adversarial(x)
    assert len(vs) == len(TASKS)
    for v in vs:
        assert v.shape == x.shape
        size = v.flatten(1).abs().amax(1) if norm == "linf" else v.flatten(1).norm(dim=1)
        assert bool((size <= eps * (1 + 1e-5)).all())
    if mode == "universal":  # the same perturbation for every image, different per task
        assert torch.equal(vs[0][0], vs[0][2]) and not torch.equal(vs[0], vs[1])
    else:  # per-instance perturbations depend on the image
        assert not torch.equal(vs[0][0], vs[0][1])
    for xa in advs.values():
        assert float(xa.min()) >= 0 and float(xa.max()) <= 1


def test_scale_to_ball_is_the_min_one_eps_over_norm_map():
    v = torch.tensor([[0.5, -2.0], [0.01, 0.02]])
    out = scale_to_ball(v, 1.0, "linf")
    torch.testing.assert_close(out, torch.tensor([[0.25, -1.0], [0.01, 0.02]]))  # only the big one is scaled


def test_tanh_head_can_use_the_full_linf_budget_and_linear_head_cannot_without_flat_output():
    """Pi_eps divides by the largest entry, so only a saturating head reaches +-eps on every pixel
    (the ResNet generator's tanh, MTA Sec. 3.1 / GAP); a linear head leaves most pixels far below eps."""
    eps = 8 / 255
    x = torch.rand(2, 3, 8, 8)
    used = {}
    for output in ("tanh", "linear"):
        torch.manual_seed(0)
        g = MTAGenerator(TASKS, image_size=8, eps=eps, ngf=4, n_blocks=1, output=output).eval()
        assert g.config()["output"] == output
        assert isinstance(g.decoders[0][-1], nn.Tanh) == (output == "tanh")
        with torch.no_grad():  # large pre-activations: what training does to reach the ball's corners
            for dec in g.decoders:
                dec[-1 if output == "linear" else -2].weight.mul_(1e4)
            v = g(x)[0]
        assert float(v.abs().max()) <= eps * (1 + 1e-5)
        used[output] = float(v.abs().mean()) / eps
    assert used["tanh"] > 0.9  # saturated: v = +-eps almost everywhere (seeds 0-4: 0.92-1.0)
    assert used["linear"] < 0.6  # the same scaling of a linear output: only the max entry reaches eps (0.28-0.48)


def test_generators_saved_without_output_option_load_as_linear(tmp_path):
    import json

    g = MTAGenerator(TASKS, image_size=8, ngf=4, n_blocks=1, output="linear").eval()
    path = tmp_path / "old.safetensors"
    g.save(path)
    cfg_path = tmp_path / "old.safetensors.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["output"]  # a config written before the option existed
    cfg_path.write_text(json.dumps(cfg))
    g2 = MTAGenerator.load(path).eval()
    assert g2.config()["output"] == "linear"
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        for a, b in zip(g(x), g2(x)):
            torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="output"):
        MTAGenerator(TASKS, image_size=8, output="sigmoid")


def test_generator_rejects_bad_config():
    with pytest.raises(ValueError, match="multiples of 4"):
        MTAGenerator(TASKS, image_size=10)
    with pytest.raises(ValueError, match="mode"):
        MTAGenerator(TASKS, image_size=8, mode="both")


def test_training_raises_the_fooling_objective_and_resumes(tmp_path):
    victim = model_for()
    x, y = batch(b=8, hw=8)
    g = small_gen(eps=16 / 255)
    victim.eval()
    with torch.no_grad():
        before, per0 = fooling_losses(g, TASKS, victim, x, y)
    loader = [(x, y)] * 4
    seen = []

    def on_epoch_end(gen, log):
        assert gen is g and log["epoch"] == len(seen) + 1
        seen.append(gen.training)
        gen.eval()  # an evaluation inside the hook; training must go on in train mode
        with torch.no_grad():
            return {"val": float(fooling_losses(gen, TASKS, victim, x, y)[0])}

    logs = train_mta(g, TASKS, victim, loader, epochs=2, lr=2e-3, out_dir=tmp_path, progress=False, max_steps=None,
                     on_epoch_end=on_epoch_end)
    assert len(logs) == 2 and len(seen) == 2
    assert all("val" in entry for entry in logs)  # the hook's dict is merged into the epoch log
    with torch.no_grad():
        after, per1 = fooling_losses(g, TASKS, victim, x, y)
    assert float(after) < float(before)  # -log(task loss) went down: the task losses went up (Eq. 2-3)
    # saved generator reloads to the same function
    g2 = MTAGenerator.load(tmp_path / "mta_generator.safetensors")
    g.eval(), g2.eval()
    with torch.no_grad():
        for a, b in zip(g(x), g2(x)):
            torch.testing.assert_close(a, b)
    # resuming a finished run does no more epochs; asking for one more trains exactly one
    logs2 = train_mta(small_gen(eps=16 / 255), TASKS, victim, loader, epochs=3, lr=2e-3, out_dir=tmp_path,
                      progress=False)
    assert [entry["epoch"] for entry in logs2] == [1, 2, 3]


def test_train_mta_restores_victim_mode_and_targeted_loss_needs_classes():
    victim = model_for()
    victim.train()
    x, y = batch(b=4, hw=8)
    g = small_gen(CLS_TASKS)
    train_mta(g, CLS_TASKS, victim, [(x, y)], epochs=1, progress=False)
    assert victim.training and all(p.requires_grad for p in victim.parameters())
    with pytest.raises(KeyError, match="target class"):
        fooling_losses(g, CLS_TASKS, victim, x, y, targeted=True)
    loss, per = fooling_losses(g, CLS_TASKS, victim, x, y, targeted=True, target_classes={"age": 1, "gender": 0})
    assert set(per) == {"age", "gender"} and torch.isfinite(loss)


def test_independent_single_task_victims_and_evaluation():
    victims = {"age": model_for(CLS_TASKS[:1], seed=1), "gender": model_for(CLS_TASKS[1:], seed=2)}
    x, y = batch(b=4, hw=8)
    g = small_gen(CLS_TASKS, eps=64 / 255)
    res = evaluate_mta(g, CLS_TASKS, victims, [(x, y)])
    for name in ("age", "gender"):
        r = res["per_task"][name]
        assert 0.0 <= r["fooling_ratio"] <= 1.0 and 0.0 <= r["acc_adv"] <= 1.0
        with torch.no_grad():
            v = dict(zip(g.task_names, g.eval()(x)))[name]
        assert r["budget_use"] == pytest.approx(float(v.abs().mean()) / (64 / 255), rel=1e-5)
        assert 0.0 < r["budget_use"] <= 1.0 + 1e-6
    assert res["images"] == 4 and res["seconds_per_image"] > 0


# ----------------------------------------------------------------------------------- FAT
def test_fat_early_stops_fooled_samples_and_runs_others_full():
    m = model_for(CLS_TASKS)
    m.eval()
    x, _ = batch(b=6, hw=6)
    with torch.no_grad():
        out = m(x)
    pred_age, pred_gender = out["age"].argmax(1), (out["gender"] > 0).long()
    # samples 0-2: labels = predictions (not fooled); samples 3-5: both labels wrong (fooled at x)
    y = {"age": torch.cat([pred_age[:3], (pred_age[3:] + 1) % 5]), "gender": torch.cat([pred_gender[:3], 1 - pred_gender[3:]])}
    atk = EarlyStopPGD(m, CLS_TASKS, eps=1 / 255, steps=4, step_size=0.25 / 255, tau=0, random_start=False,
                       aggregation="gbmta")
    x_adv = atk(x, y)
    assert atk.last_steps[3:].tolist() == [0, 0, 0]
    assert torch.equal(x_adv[3:], x[3:])  # fooled at the start with tau = 0: returned unchanged
    assert atk.last_steps[:3].tolist() == [4, 4, 4]  # eps too small to fool both tasks: all K steps
    atk_tau = EarlyStopPGD(m, CLS_TASKS, eps=1 / 255, steps=4, step_size=0.25 / 255, tau=2, random_start=False)
    atk_tau(x, y)
    assert atk_tau.last_steps[3:].tolist() == [2, 2, 2]  # tau extra steps after being fooled


def test_fat_perturb_is_a_trainer_hook_callable():
    m = model_for()
    m.train()
    x, y = batch(b=4)
    perturb = FATPerturb(TASKS, eps=8 / 255, steps=3, step_size=2 / 255, tau=1, aggregation="gbmta")
    x_adv = perturb(m, x, y)
    assert m.training
    assert float((x_adv - x).abs().max()) <= 8 / 255 + 1e-6 and float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    assert 0 <= perturb.mean_steps <= 3
    with pytest.raises(ValueError, match="unknown aggregation"):
        FATPerturb(TASKS, aggregation="bogus")


def test_per_instance_generator_exports_to_onnx(tmp_path):
    import warnings

    import numpy as np
    import onnxruntime as ort

    g = small_gen(hw=8).eval()
    x = torch.rand(2, 3, 8, 8)
    path = tmp_path / "mta.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(g, (x,), str(path), input_names=["image"], output_names=list(g.task_names),
                          dynamic_axes={"image": {0: "batch"}}, dynamo=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x3 = torch.rand(3, 3, 8, 8)
    outs = sess.run(None, {"image": x3.numpy()})
    with torch.no_grad():
        ref = g(x3)
    assert len(outs) == len(TASKS)
    for o, r in zip(outs, ref):
        assert o.shape == (3, 3, 8, 8)
        np.testing.assert_allclose(o, r.numpy(), atol=1e-5)
