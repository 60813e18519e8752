"""Alg. 1 end to end on a few REAL UTKFace images (16x16): EM lowers the surrogate's loss on the
protected images, TAP lowers the targeted loss, and a fit interrupted after one round resumes to
exactly the uninterrupted result."""
import copy
import json

import pytest
import torch

from mtlguard.data.utkface import UTKFace
from mtlguard.models import build_model
from mtlguard.unlearnable import (FitConfig, MTLUEGenerator, fit_generator, tap_loss, train_clean_surrogate)

SIZE = 16


@pytest.fixture(scope="module")
def tiny_utk(utkface_root, tmp_path_factory):
    return UTKFace(utkface_root, split="train", image_size=SIZE, subset=24, seed=0,
                   cache_dir=tmp_path_factory.mktemp("cache"), progress=False)


def _batch(ds):
    xs, ys = zip(*[ds[i] for i in range(len(ds))])
    return torch.stack(xs), {k: torch.stack([y[k] for y in ys]) for k in ys[0]}


def _em_run(ds, out, stop_after=None, delta_units="eps"):
    torch.manual_seed(0)
    gen = MTLUEGenerator(ds.tasks, image_size=SIZE, delta_units=delta_units)
    sur = build_model(ds.tasks, arch="resnet18", image_size=SIZE)
    cfg = FitConfig(base="em", epochs=2, batch_size=24, train_steps=3, stop_acc=1.01, seed=0)
    res = fit_generator(gen, ds, sur, cfg, out_dir=out, progress=False, stop_after=stop_after)
    return gen, res


def test_em_fit_lowers_surrogate_loss_and_resumes_exactly(tiny_utk, tmp_path):
    _, part = _em_run(tiny_utk, tmp_path / "a", stop_after=1)
    assert part.rounds == 1
    resumed, res = _em_run(tiny_utk, tmp_path / "a")  # fresh objects: the state comes from fit_state.pt
    assert res.rounds == 2 and len(res.history) == 2
    losses = [h["base"] for h in res.history]
    assert losses[-1] < losses[0], losses
    assert all(0.0 <= h["train_acc"] <= 1.0 for h in res.history)
    assert (tmp_path / "a" / "fit_state.pt").is_file() and (tmp_path / "a" / "fit_history.json").is_file()
    full, res_b = _em_run(tiny_utk, tmp_path / "b")  # uninterrupted run: identical result
    for (k, va), vb in zip(resumed.state_dict().items(), full.state_dict().values()):
        assert torch.allclose(va, vb, atol=1e-6), k
    # a state saved before MTLUEGenerator.delta_units existed (no key in its fingerprint) resumes as "raw"
    _em_run(tiny_utk, tmp_path / "c", stop_after=1, delta_units="raw")
    st = torch.load(tmp_path / "c" / "fit_state.pt", weights_only=True)
    fp = json.loads(st["fingerprint"])
    assert fp["generator"].pop("delta_units") == "raw"
    st["fingerprint"] = json.dumps(fp, sort_keys=True)
    torch.save(st, tmp_path / "c" / "fit_state.pt")
    with pytest.raises(ValueError, match="different fit configuration"):  # not as today's default "eps"
        _em_run(tiny_utk, tmp_path / "c")
    _, res_l = _em_run(tiny_utk, tmp_path / "c", delta_units="raw")
    assert res_l.rounds == 2 and res_l.history[0] == json.loads(st["history"])[0]  # resumed after round 1
    with pytest.raises(ValueError, match="different fit configuration"):
        gen = MTLUEGenerator(tiny_utk.tasks, image_size=SIZE, eps=4 / 255)
        fit_generator(gen, tiny_utk, build_model(tiny_utk.tasks, image_size=SIZE),
                      FitConfig(base="em", epochs=2, batch_size=24, seed=0), out_dir=tmp_path / "a", progress=False)


def test_tap_fit_lowers_targeted_loss(tiny_utk):
    torch.manual_seed(0)
    tasks = tiny_utk.tasks
    sur = build_model(tasks, arch="resnet18", image_size=SIZE)
    snaps = train_clean_surrogate(sur, tasks, tiny_utk, epochs=1, batch_size=12, n_snapshots=2, progress=False)
    assert len(snaps) == 2
    gen = MTLUEGenerator(tasks, image_size=SIZE)
    x, y = _batch(tiny_utk)
    labels = gen.labels_from_targets(y)

    def targeted():
        gen.eval()
        with torch.no_grad():
            return float(tap_loss(tasks, sur(gen(x, labels)[0]), y))

    before = targeted()
    cfg = FitConfig(base="tap", epochs=2, batch_size=12, lr=1e-3, augment=False, seed=0)
    fit_generator(gen, tiny_utk, sur, cfg, progress=False)
    after = targeted()
    assert after < before, (before, after)
    assert not any(p.requires_grad for p in sur.parameters())  # TAP keeps the surrogate frozen
