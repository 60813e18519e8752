"""TaskSpec validation/serialization and per-task losses against hand-computed values."""
import math

import pytest
import torch
import torch.nn.functional as F

from mtlguard.data.tasks import TaskSpec, select_tasks, tasks_from_json, tasks_to_json, validate_tasks
from mtlguard.models.losses import multi_task_losses, task_loss


def test_defaults_by_kind():
    assert TaskSpec("g", "binary").num_classes == 2
    assert TaskSpec("g", "binary").out_channels == 1
    assert TaskSpec("g", "binary").loss == "bce"
    assert TaskSpec("a", "multiclass", 9).loss == "ce"
    assert TaskSpec("d", "depth").out_channels == 1
    assert TaskSpec("n", "normal").out_channels == 3
    assert TaskSpec("s", "segmentation", 13, ignore_index=-1).metrics == ("miou", "pixel_acc")
    assert TaskSpec("a", "multiclass", 9).is_classification
    assert TaskSpec("s", "segmentation", 13).is_dense


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(name="", kind="binary"), "non-empty"),
        (dict(name="x", kind="bogus"), "unknown kind 'bogus'"),
        (dict(name="x", kind="binary", num_classes=3), "binary task has num_classes=2"),
        (dict(name="x", kind="multiclass", num_classes=1), "needs num_classes >= 2"),
        (dict(name="x", kind="multiclass", num_classes=3, class_names=("a", "b")), "2 class_names for 3"),
    ],
)
def test_bad_specs_name_the_problem(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TaskSpec(**kwargs)


def test_json_roundtrip_and_validation():
    tasks = (TaskSpec("age", "multiclass", 3, class_names=("y", "m", "o")), TaskSpec("g", "binary"))
    assert tasks_from_json(tasks_to_json(tasks)) == tasks
    with pytest.raises(ValueError, match="duplicate task names"):
        validate_tasks([tasks[0], tasks[0]])
    with pytest.raises(ValueError, match="unknown keys"):
        TaskSpec.from_dict({"name": "a", "kind": "binary", "colour": 1})
    with pytest.raises(KeyError, match="unknown task"):
        select_tasks(tasks, ["nope"])
    assert select_tasks(tasks, ["g"]) == (tasks[1],)


def test_classification_losses_per_sample():
    ce = TaskSpec("a", "multiclass", 3)
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    y = torch.tensor([0, 2])
    expected = torch.tensor([-math.log(math.e**2 / (math.e**2 + 2)), -math.log(1 / (math.e + 2))])
    torch.testing.assert_close(task_loss(ce, logits, y, "none"), expected)
    torch.testing.assert_close(task_loss(ce, logits, y), expected.mean())

    bce = TaskSpec("g", "binary")
    z = torch.tensor([0.0, 2.0])
    t = torch.tensor([1, 0])
    expected = torch.tensor([math.log(2.0), math.log(1 + math.e**2)])
    torch.testing.assert_close(task_loss(bce, z, t, "none"), expected)


def test_dense_losses_respect_validity():
    seg = TaskSpec("s", "segmentation", 2, ignore_index=255)
    out = torch.zeros(1, 2, 1, 2)
    out[0, 0, 0, 0] = 1.0
    tgt = torch.tensor([[[0, 255]]])
    expected = -math.log(math.e / (math.e + 1))  # only the first pixel counts
    assert task_loss(seg, out, tgt, "none").item() == pytest.approx(expected, rel=1e-6)

    depth = TaskSpec("d", "depth")
    pred = torch.tensor([[[[1.0, 5.0], [2.0, 0.0]]]])
    gt = torch.tensor([[[[2.0, 0.0], [4.0, 0.0]]]])  # zeros are invalid
    assert task_loss(depth, pred, gt, "none").item() == pytest.approx((1.0 + 2.0) / 2)

    normal = TaskSpec("n", "normal")
    pred = torch.zeros(1, 3, 1, 2)
    pred[0, 2] = 1.0  # both pixels predict +z
    gt = torch.zeros(1, 3, 1, 2)
    gt[0, 0, 0, 0] = 1.0  # first pixel +x (90 degrees off), second invalid
    assert task_loss(normal, pred, gt, "none").item() == pytest.approx(1.0)


def test_multi_task_losses_names_missing_task():
    tasks = (TaskSpec("a", "multiclass", 3), TaskSpec("g", "binary"))
    outs = {"a": torch.randn(4, 3)}
    with pytest.raises(KeyError, match="no entry for task 'g'"):
        multi_task_losses(tasks, outs, {"a": torch.zeros(4, dtype=torch.long), "g": torch.zeros(4)})
    outs["g"] = torch.randn(4)
    losses = multi_task_losses(tasks, outs, {"a": torch.zeros(4, dtype=torch.long), "g": torch.ones(4)}, "none")
    assert set(losses) == {"a", "g"} and all(v.shape == (4,) for v in losses.values())
    torch.testing.assert_close(losses["g"], F.binary_cross_entropy_with_logits(outs["g"], torch.ones(4), reduction="none"))
