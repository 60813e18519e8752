"""MTL architectures beyond HPS (MTAN, Cross-stitch, branched) and the large backbones: each one's
defining property, save/load, the trainer with every weighting, the attacks and ONNX export."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from mtlguard.attacks import PGD
from mtlguard.data.tasks import TaskSpec
from mtlguard.models import (BranchedModel, CrossStitchModel, MTANModel, build_model, load_model,
                             parse_branched, save_model)
from mtlguard.models.losses import multi_task_losses
from mtlguard.training import Trainer
from mtlguard.weighting import WEIGHTINGS

pytestmark = pytest.mark.usefixtures("one_thread")

TASKS = (TaskSpec("age", "multiclass", 4), TaskSpec("gender", "binary"), TaskSpec("race", "multiclass", 3))
DENSE = TASKS + (TaskSpec("seg", "segmentation", 3),)
MTLS = ("hps", "mtan", "cross_stitch", "branched:age+gender@3,race@1")


class Toy(Dataset):
    """Learnable toy faces: age brightens a quadrant, gender / race shift channels."""

    tasks = TASKS

    def __init__(self, n: int = 24, size: int = 16, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.y = {"age": torch.randint(0, 4, (n,), generator=g), "gender": torch.randint(0, 2, (n,), generator=g),
                  "race": torch.randint(0, 3, (n,), generator=g)}
        self.x = torch.rand(n, 3, size, size, generator=g) * 0.6
        for i in range(n):
            a, r = int(self.y["age"][i]), int(self.y["race"][i])
            self.x[i, :, (a // 2) * size // 2:(a // 2 + 1) * size // 2, (a % 2) * size // 2:(a % 2 + 1) * size // 2] += 0.2
            self.x[i, r] += 0.1 + 0.1 * float(self.y["gender"][i])
        self.x = self.x.clamp(0, 1)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], {k: v[i] for k, v in self.y.items()}


def _batch(n=4, size=16):
    ds = Toy(n, size)
    return ds.x, ds.y


# ----------------------------------------------------------------------------------- construction / reload
@pytest.mark.parametrize("mtl", MTLS + ("branched:age@0,gender@2,race@4",))
def test_every_architecture_builds_every_task_kind_and_reloads(mtl, tmp_path):
    tasks = DENSE
    spec = mtl if not mtl.startswith("branched") else mtl.replace("race@", "race+seg@")
    torch.manual_seed(0)
    m = build_model(tasks, "small_cnn", image_size=16, mtl=spec).eval()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        out = m(x)
    assert out["age"].shape == (2, 4) and out["gender"].shape == (2,) and out["seg"].shape == (2, 3, 16, 16)
    assert m.features(x).shape[0] == 2
    assert (mtl == "hps") == ("mtl" not in m.config)  # HPS configs keep their historical keys
    save_model(m, tmp_path / "m")
    m2 = load_model(tmp_path / "m")
    assert type(m2) is type(m) and m2.config == m.config
    with torch.no_grad():
        out2 = m2(x)
    for k in out:
        torch.testing.assert_close(out2[k], out[k])
    assert json.loads((tmp_path / "m" / "model_config.json").read_text()).get("mtl", "hps") == m.config.get("mtl", "hps")


def test_arch_slash_mtl_spelling_and_errors():
    assert isinstance(build_model(TASKS, "small_cnn/mtan", image_size=16), MTANModel)
    assert isinstance(build_model(TASKS, "small_cnn", image_size=16, mtl="cross-stitch"), CrossStitchModel)
    with pytest.raises(ValueError, match="unknown mtl"):
        build_model(TASKS, "small_cnn", mtl="nope")
    with pytest.raises(ValueError, match="CNN backbone"):
        build_model(TASKS, "vit_b_16", image_size=16, mtl="mtan")
    with pytest.raises(ValueError, match="in no group"):
        parse_branched("branched:age@1,gender@2", ["age", "gender", "race"])
    with pytest.raises(ValueError, match="more than one group"):
        parse_branched("branched:age+gender@1,gender+race@2", ["age", "gender", "race"])
    with pytest.raises(ValueError, match="k=5"):
        parse_branched("branched:age@5,gender+race@2", ["age", "gender", "race"])
    with pytest.raises(ValueError, match="unknown task"):
        parse_branched("branched:age+nose@1,gender+race@2", ["age", "gender", "race"])
    assert parse_branched("branched:age+gender@3,race@1", ["age", "gender", "race"]) == [(("age", "gender"), 3),
                                                                                         (("race",), 1)]


# ----------------------------------------------------------------------------------- branched: splits where it says
def _grad_reach(model, task):
    x, y = _batch()
    model.zero_grad(set_to_none=True)
    loss = multi_task_losses([t for t in model.tasks if t.name == task], model(x), y)[task]
    loss.backward()
    return lambda mod: any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in mod.parameters())


def test_branched_spec_splits_where_it_says():
    torch.manual_seed(0)
    m = build_model(TASKS, "small_cnn", image_size=16, mtl="branched:age+gender@3,race@1").train()
    assert isinstance(m, BranchedModel)
    assert len(m.trunk) == 3  # blocks 1-3 are trunk modules (used by someone)
    assert [len(m.branches[k]) for k in ("g0", "g1")] == [1, 3]  # age+gender own block 4, race blocks 2-4
    users = m.block_users()
    assert users["trunk.1"] == {"age", "gender", "race"} and users["trunk.2"] == users["trunk.3"] == {"age", "gender"}
    reach = _grad_reach(m, "race")
    assert reach(m.trunk[0]) and not reach(m.trunk[1]) and not reach(m.trunk[2])
    assert reach(m.branches["g1"]) and not reach(m.branches["g0"])
    reach = _grad_reach(m, "age")
    assert all(reach(b) for b in m.trunk) and reach(m.branches["g0"]) and not reach(m.branches["g1"])
    # parameter roles: race's private blocks are its own; block 1 is shared by all three tasks
    shared = {id(p) for p in m.shared_parameters()}
    assert {id(p) for p in m.trunk[0].parameters()} <= shared
    race_own = {id(p) for p in m.task_parameters("race")}
    assert {id(p) for p in m.branches["g1"].parameters()} <= race_own and not race_own & shared
    # k = 0 for everyone: independent columns, nothing shared
    ind = build_model(TASKS, "small_cnn", image_size=16, mtl="branched:age@0,gender@0,race@0")
    assert len(ind.trunk) == 0 and ind.shared_parameters() == []


def test_branched_all_at_4_is_hps():
    torch.manual_seed(0)
    hps = build_model(TASKS, "small_cnn", image_size=16).eval()
    br = build_model(TASKS, "small_cnn", image_size=16, mtl="branched:age@4,gender@4,race@4").eval()
    assert sum(p.numel() for p in br.parameters()) == sum(p.numel() for p in hps.parameters())
    src, dst = hps.state_dict(), br.state_dict()
    assert [v.shape for v in src.values()] == [v.shape for v in dst.values()]
    br.load_state_dict(dict(zip(dst, src.values())))
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        a, b = hps(x), br(x)
        torch.testing.assert_close(hps.features(x), br.features(x))
    for k in a:
        torch.testing.assert_close(a[k], b[k])


# ----------------------------------------------------------------------------------- cross-stitch
def test_cross_stitch_units_start_identity_like_and_learn():
    torch.manual_seed(0)
    m = build_model(TASKS, "small_cnn", image_size=16, mtl="cross_stitch")
    assert len(m.columns) == 3 and len(m.units) == 4
    for u in m.units:
        a = u.detach()
        torch.testing.assert_close(a.diagonal(0, 0, 1), torch.full((a.shape[2], 3), 0.9))
        off = a[~torch.eye(3, dtype=torch.bool)]
        torch.testing.assert_close(off, torch.full_like(off, 0.05))
        torch.testing.assert_close(a.sum(1), torch.ones(3, a.shape[2]))  # each output is a convex mix
    before = [u.detach().clone() for u in m.units]
    Trainer(m, TASKS, Toy(16), epochs=1, batch_size=8, lr=1e-2, progress=False, augment=False).fit()
    assert all(not torch.equal(b, u.detach()) for b, u in zip(before, m.units))


def test_cross_stitch_columns_interact_only_through_the_units():
    torch.manual_seed(0)
    m = build_model(TASKS, "small_cnn", image_size=16, mtl="cross_stitch").eval()
    with torch.no_grad():
        for u in m.units:
            u.copy_(torch.eye(3)[:, :, None].expand_as(u))
    # with identity units, task t's output is its own column alone: an STL model with the same weights
    stl = build_model(TASKS[2:], "small_cnn", image_size=16).eval()
    col = m.columns[2]
    stl.backbone.load_state_dict(col.state_dict())
    stl.heads["race"].load_state_dict(m.heads["race"].state_dict())
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(m(x)["race"], stl(x)["race"])
        m.units[1][2, 0] += 0.5  # a non-identity unit makes race depend on the other columns
        assert not torch.allclose(m(x)["race"], stl(x)["race"])


# ----------------------------------------------------------------------------------- MTAN
def test_mtan_task_features_are_masks_times_the_shared_trunk():
    torch.manual_seed(0)
    m = build_model(TASKS, "small_cnn", image_size=16, mtl="mtan").eval()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        masks = m.masks(x)
        hs = m.shared_stages((x - m.mean) / m.std)
        enc = m.encode(x)
    for t in TASKS:
        assert len(masks[t.name]) == 4
        for a, h in zip(masks[t.name], hs):
            assert a.shape == h.shape and bool((a > 0).all() and (a < 1).all())
        torch.testing.assert_close(enc[t.name].maps[-1], masks[t.name][3] * hs[3])
        torch.testing.assert_close(enc[t.name].pooled, (masks[t.name][3] * hs[3]).mean((2, 3)))
    m.train()
    reach = _grad_reach(m, "gender")
    assert reach(m.backbone) and reach(m.attention["gender"]) and not reach(m.attention["age"])
    assert {id(p) for p in m.backbone.parameters()} == {id(p) for p in m.shared_parameters()}
    assert {id(p) for p in m.attention["age"].parameters()} <= {id(p) for p in m.task_parameters("age")}


# ----------------------------------------------------------------------------------- backbones of MTL-UE Table 13
@pytest.mark.parametrize("arch", ["resnet101", "resnet152", "wide_resnet50_2"])
def test_large_backbones_build_and_train_on_cpu_at_32px(arch):
    torch.manual_seed(0)
    m = build_model(TASKS, arch, image_size=32)
    with torch.no_grad():
        assert m.eval().features(torch.rand(1, 3, 32, 32)).shape == (1, 2048)
    before = m.backbone.layer4[0].conv1.weight.detach().clone()
    Trainer(m, TASKS, Toy(4, 32), epochs=1, batch_size=4, progress=False, augment=False).fit()
    assert not torch.equal(before, m.backbone.layer4[0].conv1.weight.detach())


# ----------------------------------------------------------------------------------- trainer x weighting, attacks, ONNX
@pytest.mark.parametrize("mtl", MTLS + ("branched:age@0,gender@0,race@0",))
@pytest.mark.parametrize("weighting", sorted(WEIGHTINGS))
def test_every_architecture_trains_with_every_weighting(mtl, weighting):
    torch.manual_seed(0)
    m = build_model(TASKS, "small_cnn", image_size=16, mtl=mtl)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    tr = Trainer(m, TASKS, Toy(16), weighting=weighting, epochs=1, batch_size=8, progress=False, max_batches=1)
    tr.fit()
    moved = [n for n, p in m.named_parameters() if not torch.equal(before[n], p.detach())]
    assert any(n.startswith("heads.") for n in moved) and any(not n.startswith("heads.") for n in moved)
    assert set(tr.history[-1]["task_weights"]) == {t.name for t in TASKS}


@pytest.mark.parametrize("mtl", MTLS)
def test_attacks_work_on_every_architecture(mtl):
    torch.manual_seed(0)
    m = build_model(TASKS, "small_cnn", image_size=16, mtl=mtl).eval()
    x, y = _batch(6)
    with torch.no_grad():
        clean = sum(multi_task_losses(TASKS, m(x), y, "sum").values())
    x_adv = PGD(m, TASKS, eps=8 / 255, steps=3, step_size=3 / 255, aggregation="gbmta", seed=0)(x, y)
    assert float((x_adv - x).abs().max()) <= 8 / 255 + 1e-6
    with torch.no_grad():
        adv = sum(multi_task_losses(TASKS, m(x_adv), y, "sum").values())
    assert float(adv) > float(clean)
    assert not m.training  # mode restored


@pytest.mark.parametrize("mtl", MTLS)
def test_every_architecture_exports_to_onnx(mtl, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    m = build_model(DENSE, "small_cnn", image_size=16,
                    mtl=mtl.replace("race@", "race+seg@") if mtl.startswith("branched") else mtl).eval()
    x = torch.rand(2, 3, 16, 16)
    names = [t.name for t in DENSE]

    class Wrap(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, img):
            out = self.inner(img)
            return tuple(out[n] for n in names)

    path = tmp_path / "m.onnx"
    torch.onnx.export(Wrap(m).eval(), (x,), str(path), input_names=["image"], output_names=names, dynamo=False,
                      opset_version=17)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"image": x.numpy()})
    with torch.no_grad():
        ref = m(x)
    for n, g in zip(names, got):
        np.testing.assert_allclose(g, ref[n].numpy(), rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------- static task weights, CLI
def test_ls_static_task_weights_give_the_weighted_gradient():
    from mtlguard.weighting import build_weighting
    from mtlguard.weighting.ls import parse_task_weights

    G = torch.randn(3, 5, dtype=torch.float64)
    theta = torch.nn.Parameter(torch.zeros(5, dtype=torch.float64))
    losses = {n: G[k] @ theta + 1.0 for k, n in enumerate(("age", "gender", "race"))}
    tw = parse_task_weights("age=2, gender=1")  # race left out: weight 1
    assert tw == {"age": 2.0, "gender": 1.0}
    w = build_weighting("ls", list(losses), task_weights=tw).backward(losses, [theta])
    assert w == pytest.approx({"age": 0.5, "gender": 0.25, "race": 0.25})
    torch.testing.assert_close(theta.grad, 0.5 * G[0] + 0.25 * G[1] + 0.25 * G[2])
    theta.grad = None  # uniform weights are exactly the default LS
    build_weighting("ls", list(losses), task_weights={"age": 3, "gender": 3, "race": 3}).backward(
        {n: G[k] @ theta + 1.0 for k, n in enumerate(("age", "gender", "race"))}, [theta])
    torch.testing.assert_close(theta.grad, G.mean(0))
    for bad, msg in (("age", "TASK=WEIGHT"), ("age=x", "not a number")):
        with pytest.raises(ValueError, match=msg):
            parse_task_weights(bad)
    with pytest.raises(ValueError, match="unknown task"):
        build_weighting("ls", ["age"], task_weights={"nose": 1})
    with pytest.raises(ValueError, match=">= 0"):
        build_weighting("ls", ["age"], task_weights={"age": -1})


def test_train_cli_mtl_and_task_weights(tmp_path):
    from mtlguard.cli.main import main
    from mtlguard.training import load_model

    base = ["train", "--data", "synthetic", "--synthetic-n", "8", "4", "--image-size", "16", "--arch", "small_cnn",
            "--epochs", "1", "--batch-size", "8", "--no-progress"]
    out = tmp_path / "mtan"
    assert main(base + ["--mtl", "mtan", "--weighting", "ls", "--task-weights", "depth=2,normal=1",
                        "--out", str(out)]) == 0
    res = json.loads((out / "result.json").read_text())
    assert res["mtl"] == "mtan" and res["task_weights"] == {"depth": 2.0, "normal": 1.0}
    assert json.loads((out / "train_config.json").read_text())["weighting_kwargs"] == {"task_weights": res["task_weights"]}
    assert isinstance(load_model(out), MTANModel)
    metrics = json.loads((out / "metrics.json").read_text())
    w = metrics["epochs"][0]["task_weights"]
    assert w["depth"] == pytest.approx(0.5) and w["normal"] == pytest.approx(0.25)
    out = tmp_path / "br"
    assert main(base + ["--mtl", "branched:segmentation+depth@2,normal@0", "--out", str(out)]) == 0
    assert isinstance(load_model(out), BranchedModel)
    with pytest.raises(SystemExit, match="--mtl"):
        main(base + ["--mtl", "branched:depth@2", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="--task-weights"):
        main(base + ["--weighting", "uw", "--task-weights", "depth=2", "--out", str(tmp_path / "y")])
    with pytest.raises(SystemExit, match="unknown task"):
        main(base + ["--task-weights", "nose=2", "--out", str(tmp_path / "z")])
