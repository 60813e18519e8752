"""The README's Python API tour runs as written (scaled down: 64 images, 1 epoch)."""
import torch

from mtlguard.attacks import PGD, AutoSAGE, MultiTaskAutoAttack
from mtlguard.data import UTKFace
from mtlguard.metrics import adversarial_vulnerability, evaluate
from mtlguard.models import build_model
from mtlguard.training import Trainer, TrainConfig, load_model, train
from mtlguard.unlearnable import MTLUEGenerator


def test_api_tour(utkface_root, tmp_path):
    train_set = UTKFace(utkface_root, split="train", image_size=32, subset=64, cache_dir=tmp_path / "c")
    test_set = UTKFace(utkface_root, split="test", image_size=32, subset=32, cache_dir=tmp_path / "c")
    model = build_model(train_set.tasks, arch="resnet18", image_size=32)
    train(model, train_set.tasks, train_set, test_set, weighting="ls", epochs=1, batch_size=32,
          out_dir=tmp_path / "mtl")
    reloaded = load_model(tmp_path / "mtl")
    loader = torch.utils.data.DataLoader(test_set, batch_size=16)
    m1, m2 = evaluate(model, train_set.tasks, loader), evaluate(reloaded, train_set.tasks, loader)
    assert {t.name for t in train_set.tasks} <= set(m1)
    for t in train_set.tasks:
        assert m1[t.name]["accuracy"] == m2[t.name]["accuracy"]
    cfg = TrainConfig(weighting="uw", epochs=1, batch_size=32, schedule="none")
    uw = Trainer(build_model(train_set.tasks, arch="resnet18", image_size=32), train_set.tasks, train_set, test_set, cfg,
                 out_dir=tmp_path / "uw")
    assert set(uw.fit()) >= {t.name for t in train_set.tasks} and uw.weighting.name.lower() == "uw"

    x, y = next(iter(loader))
    atk = PGD(model, train_set.tasks, eps=8 / 255, steps=2, step_size=2 / 255, aggregation="gbmta")
    x_adv = atk(x, y)
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6 and not torch.equal(x_adv, x)

    gen = MTLUEGenerator(train_set.tasks, in_channels=3, image_size=(32, 32), eps=8 / 255)
    protected, delta = gen(x, test_set.labels_tensor()[: len(x)])
    assert protected.shape == x.shape and delta.abs().max() <= 8 / 255 + 1e-6

    # other victim architectures, Auto-SAGE, the AutoAttack-style ensemble, Def. 1 (scaled down)
    from mtlguard.models import BranchedModel, MTANModel

    mtan = build_model(train_set.tasks, arch="resnet18", image_size=32, mtl="mtan")
    tree = build_model(train_set.tasks, arch="resnet18", image_size=32, mtl="branched:age+gender@3,race@1")
    assert isinstance(mtan, MTANModel) and isinstance(tree, BranchedModel)
    xs, ys = x[:4], {k: v[:4] for k, v in y.items()}
    x_sage = AutoSAGE(model, train_set.tasks, eps=8 / 255, steps=2, aggregation="gbmta")(xs, ys)
    x_auto = MultiTaskAutoAttack(model, train_set.tasks, eps=8 / 255, steps=2, n_queries=3)(xs, ys)
    for xa in (x_sage, x_auto):
        assert (xa - xs).abs().max() <= 8 / 255 + 1e-6
    assert adversarial_vulnerability(model, train_set.tasks, [(xs, ys)], eps=8 / 255) > 0
