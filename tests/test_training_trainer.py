"""Trainer: augmentation consistency, checkpoint/resume equivalence, hooks, CLI."""
from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import Dataset

from mtlguard.data.tasks import TaskSpec
from mtlguard.models import build_model
from mtlguard.training import Trainer, load_model, random_crop_flip, train


pytestmark = pytest.mark.usefixtures("one_thread")


TASKS = (TaskSpec("cls", "multiclass", 3), TaskSpec("seg", "segmentation", 3), TaskSpec("depth", "depth"),
         TaskSpec("normal", "normal"))


class TinyScenes(Dataset):
    """Learnable toy data made in memory: class k brightens channel k; dense targets derived from pixels."""

    tasks = TASKS

    def __init__(self, n: int, size: int = 16, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.cls = torch.randint(0, 3, (n,), generator=g)
        self.x = torch.rand(n, 3, size, size, generator=g) * 0.7
        self.x[torch.arange(n), self.cls] += 0.3  # class k brightens channel k
        self.seg = self.x.argmax(1)
        self.depth = 1.0 + self.x[:, :1]
        self.normal = torch.nn.functional.normalize(self.x - 0.5, dim=1)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], {"cls": self.cls[i], "seg": self.seg[i], "depth": self.depth[i], "normal": self.normal[i]}


def test_augmentation_is_consistent_across_image_and_dense_targets():
    b, h, w = 6, 8, 10
    img = torch.rand(b, 3, h, w)
    # dense targets that are deterministic functions of pixel position, so we can check alignment
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    img[:, 0] = (yy * w + xx).float()  # channel 0 encodes the position
    seg = (yy * w + xx).expand(b, h, w).clone()
    depth = 1.0 + (yy * w + xx).float().expand(b, 1, h, w).clone()
    normal = torch.nn.functional.normalize(torch.rand(b, 3, h, w) + 0.1, dim=1)
    normal_orig = normal.clone()
    spec = (TaskSpec("seg", "segmentation", h * w, ignore_index=-1), TaskSpec("depth", "depth"),
            TaskSpec("normal", "normal"), TaskSpec("c", "binary"))
    targets = {"seg": seg, "depth": depth, "normal": normal, "c": torch.ones(b, dtype=torch.long)}
    g = torch.Generator().manual_seed(3)
    ai, at = random_crop_flip(img, targets, spec, padding=2, generator=g)
    assert torch.equal(normal, normal_orig)  # inputs untouched
    valid = at["seg"] != -1
    assert torch.equal(ai[:, 0][valid], at["seg"][valid].float())
    assert torch.equal(at["depth"][:, 0][valid], at["seg"][valid].float() + 1)
    assert (ai[:, 0][~valid] == 0).all() and (at["depth"][:, 0][~valid] == 0).all()
    assert torch.equal(at["c"], targets["c"])
    flipped_any = False
    for i in range(b):
        pos = at["seg"][i]
        ok = pos != -1
        src = normal_orig[i].reshape(3, -1)[:, pos[ok]]  # the original normal at each output pixel
        got = at["normal"][i][:, ok]
        cols = pos % w
        row_ok = ok.any(1).nonzero()[0, 0]
        c = cols[row_ok][ok[row_ok]]
        is_flipped = bool(len(c) > 1 and c[1] < c[0])
        flipped_any |= is_flipped
        sign = -1.0 if is_flipped else 1.0
        torch.testing.assert_close(got[0], sign * src[0])  # x negated exactly when flipped
        torch.testing.assert_close(got[1:], src[1:])
        assert (at["normal"][i][:, ~ok] == 0).all()
    assert flipped_any


def _trainer(tmp_path, name, epochs=2, **kw):
    torch.manual_seed(0)
    model = build_model(TASKS, "small_cnn", image_size=16)
    return Trainer(model, TASKS, TinyScenes(24), TinyScenes(8, seed=1), epochs=epochs, batch_size=8, lr=1e-3,
                   out_dir=tmp_path / name, seed=5, progress=False, **kw)


def test_resume_equals_uninterrupted_run(tmp_path):
    full = _trainer(tmp_path, "full", weighting="rlw")
    full.fit()
    part = _trainer(tmp_path, "part", weighting="rlw", max_batches=None)
    part.fit(until_epoch=1)  # stop after one epoch (the scheduler milestones are the 2-epoch run's)
    with pytest.raises(FileExistsError, match="resume=True"):
        _trainer(tmp_path, "part", weighting="rlw")
    resumed = _trainer(tmp_path, "part", weighting="rlw", resume=True)
    assert resumed.start_epoch == 1
    resumed.fit()
    for (k, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        torch.testing.assert_close(a, b, msg=k)
    assert full.history[-1]["train_loss"] == resumed.history[-1]["train_loss"]
    metrics = json.loads((tmp_path / "part" / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2] and "miou" in metrics["final"]["seg"]
    reloaded = load_model(tmp_path / "part")
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(reloaded(x)["depth"], resumed.model.eval()(x)["depth"])


def test_hooks_and_gradient_weighting_stl(tmp_path):
    calls = {"perturb": 0, "transform": 0}

    def transform(x):
        calls["transform"] += 1
        return x.mean(1, keepdim=True).expand_as(x)  # grayscale (an ISS defense)

    def perturb(model, x, targets):
        calls["perturb"] += 1
        assert model.training and x.shape[1:] == (3, 16, 16) and set(targets) == {"cls"}
        return (x + 0.01).clamp(0, 1)

    stl = (TASKS[0],)
    res = train(build_model(stl, "small_cnn", image_size=16), stl, TinyScenes(16), TinyScenes(8, seed=1),
                weighting="aligned_mtl", epochs=1, batch_size=8, out_dir=tmp_path / "stl", progress=False,
                transform=transform, perturb=perturb)
    assert calls == {"perturb": 2, "transform": 2}
    assert 0.0 <= res["final"]["cls"]["accuracy"] <= 1.0
    with pytest.raises(KeyError, match="nope"):
        Trainer(build_model(stl, "small_cnn", image_size=16), (TaskSpec("nope", "binary"),), TinyScenes(4), progress=False)


def test_training_learns_a_learnable_task(tmp_path):
    stl = (TASKS[0],)
    torch.manual_seed(0)
    model = build_model(stl, "small_cnn", image_size=16)
    tr = Trainer(model, stl, TinyScenes(96), TinyScenes(64, seed=1), epochs=3, batch_size=16, lr=3e-3,
                 schedule="none", augment=False, progress=False, seed=0)
    before = tr.evaluate()["cls"]["accuracy"]
    after = tr.fit()["cls"]["accuracy"]
    assert after > max(before + 0.2, 0.7), (before, after)


def test_train_config_checks_its_options_and_the_trainer_takes_them_whole_or_one_by_one():
    """One options object (:class:`TrainConfig`): bad values and unknown names fail before any work, naming
    what is wrong; ``Trainer(config=cfg, lr=...)`` is ``cfg`` with that option replaced."""
    from mtlguard.training import TrainConfig

    with pytest.raises(ValueError, match="epochs must be >= 1, got 0"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="unknown schedule 'cosine'"):
        TrainConfig(schedule="cosine")
    with pytest.raises(TypeError, match=r"unknown TrainConfig option\(s\) \['epoch'\]"):
        TrainConfig.with_options(epoch=3)
    cfg = TrainConfig(epochs=4, batch_size=8, schedule="step", step_size=1, gamma=0.5, augment=False, progress=False)
    tr = Trainer(build_model(TASKS, "small_cnn", image_size=16), TASKS, TinyScenes(16), config=cfg, lr=2e-3)
    assert tr.cfg == TrainConfig.with_options(cfg, lr=2e-3) and tr.cfg.epochs == 4
    assert tr.config["schedule"] == "step" and tr.config["lr"] == 2e-3
    lrs = []
    for _ in range(3):
        lrs.append(tr.optimizer.param_groups[0]["lr"])
        tr.scheduler.step()
    assert lrs == pytest.approx([2e-3, 1e-3, 5e-4])  # StepLR every step_size=1 epoch, gamma 0.5
