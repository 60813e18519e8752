"""HPS / STL model construction: output shapes for every task kind and architecture, activations,
normalization inside the model, save/load, and the no-download rule."""
from __future__ import annotations

import pytest
import torch
import torchvision

from mtlguard.data.tasks import TaskSpec
from mtlguard.models import ARCHS, build_model, load_model, save_model


pytestmark = pytest.mark.usefixtures("one_thread")


ALL_KINDS = [TaskSpec("age", "multiclass", 9), TaskSpec("gender", "binary"), TaskSpec("attrs", "multilabel", 4),
             TaskSpec("seg", "segmentation", 5), TaskSpec("depth", "depth"), TaskSpec("normal", "normal"),
             TaskSpec("score", "regression")]


def _expected(spec: TaskSpec, b: int, h: int, w: int):
    return {"multiclass": (b, spec.num_classes), "binary": (b,), "multilabel": (b, spec.num_classes),
            "segmentation": (b, spec.num_classes, h, w), "depth": (b, 1, h, w), "normal": (b, 3, h, w),
            "regression": (b,)}[spec.kind]


def test_resnet18_every_task_kind_shapes_and_activations():
    torch.manual_seed(0)
    model = build_model(ALL_KINDS, "resnet18", image_size=32).eval()
    x = torch.rand(2, 3, 32, 40)
    with torch.no_grad():
        out = model(x)
    assert list(out) == [t.name for t in ALL_KINDS]
    for t in ALL_KINDS:
        assert tuple(out[t.name].shape) == _expected(t, 2, 32, 40), t.name
    assert (out["depth"] > 0).all()
    torch.testing.assert_close(out["normal"].norm(dim=1), torch.ones(2, 32, 40))
    assert model.features(x).shape == (2, 512)
    shared = {id(p) for p in model.shared_parameters()}
    assert shared and not shared & {id(p) for p in model.task_parameters()}
    assert set(model.heads) == {t.name for t in ALL_KINDS}


@pytest.mark.parametrize("arch,feat", [("resnet50", 2048), ("vgg11", 512), ("vgg16", 512), ("densenet121", 1024),
                                       ("mobilenet_v3_small", 576), ("vit_b_16", 768)])
def test_other_archs_small_inputs(arch, feat):
    tasks = [TaskSpec("c", "multiclass", 3), TaskSpec("seg", "segmentation", 2)]
    model = build_model(tasks, arch, image_size=32).eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
    assert out["c"].shape == (1, 3) and out["seg"].shape == (1, 2, 32, 32)
    assert model.features(x).shape == (1, feat)


def test_stl_grayscale_and_normalization_inside():
    model = build_model([TaskSpec("f", "binary")], "resnet18", in_channels=1, image_size=32).eval()
    assert list(model.heads) == ["f"]
    assert model(torch.rand(3, 1, 32, 32))["f"].shape == (3,)
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        model(torch.rand(3, 3, 32, 32))
    # normalization lives in the model: an input of the ImageNet mean maps to zeros before the stem
    m3 = build_model([TaskSpec("f", "binary")], "resnet18").eval()
    seen = {}
    m3.backbone.register_forward_pre_hook(lambda mod, args: seen.setdefault("x", args[0]))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1).expand(1, 3, 8, 8)
    with torch.no_grad():
        m3(mean.contiguous())
    assert seen["x"].abs().max() < 1e-6


def test_cifar_stem_keeps_resolution():
    m = build_model([TaskSpec("c", "multiclass", 2)], "resnet18", stem="cifar")
    assert m.backbone.stem[0].stride == (1, 1) and isinstance(m.backbone.stem[3], torch.nn.Identity)


def test_pretrained_never_downloads_and_local_weights_load(tmp_path):
    with pytest.raises(ValueError, match="weights_path"):
        build_model([TaskSpec("c", "multiclass", 2)], "resnet18", pretrained=True)
    with pytest.raises(ValueError, match="unknown arch"):
        build_model([TaskSpec("c", "multiclass", 2)], "alexnet")
    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pt"
    torch.save(ref.state_dict(), path)
    m = build_model([TaskSpec("c", "multiclass", 2)], "resnet18", pretrained=True, weights_path=path)
    torch.testing.assert_close(m.backbone.layer3[0].conv1.weight, ref.layer3[0].conv1.weight)
    assert set(ARCHS) == {"resnet18", "resnet50", "resnet101", "resnet152", "wide_resnet50_2", "vgg11", "vgg16",
                          "densenet121", "mobilenet_v3_small", "vit_b_16", "small_cnn"}


def test_save_and_load_model_roundtrip(tmp_path):
    tasks = [TaskSpec("c", "multiclass", 3), TaskSpec("d", "depth")]
    m = build_model(tasks, "resnet18", image_size=32).eval()
    save_model(m, tmp_path / "run")
    m2 = load_model(tmp_path / "run")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        a, b = m(x), m2(x)
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    assert m2.tasks == m.tasks
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing")
