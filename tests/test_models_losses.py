"""Per-task losses (models/losses.py) against hand-computed values."""
from __future__ import annotations

import math

import pytest
import torch

from mtlguard.data.tasks import TaskSpec
from mtlguard.models import multi_task_losses, task_loss


def test_ce_and_bce_hand():
    ce = task_loss(TaskSpec("c", "multiclass", 2), torch.tensor([[0.0, 0.0], [2.0, 0.0]]), torch.tensor([0, 1]), "none")
    torch.testing.assert_close(ce, torch.tensor([math.log(2), math.log(1 + math.exp(2))]))
    bce = task_loss(TaskSpec("b", "binary"), torch.tensor([0.0, 1.0]), torch.tensor([1, 0]), "mean")
    assert bce.item() == pytest.approx((math.log(2) + math.log(1 + math.e)) / 2)


def test_pixel_ce_ignores_and_averages_per_sample():
    spec = TaskSpec("s", "segmentation", 2, ignore_index=-1)
    logits = torch.zeros(1, 2, 1, 3)
    logits[0, 0, 0, 0] = 2.0
    tgt = torch.tensor([[[0, 1, -1]]])
    per = task_loss(spec, logits, tgt, "none")
    expected = (math.log(1 + math.exp(-2)) + math.log(2)) / 2  # ignored pixel excluded
    assert per.shape == (1,) and per.item() == pytest.approx(expected, rel=1e-6)


def test_depth_l1_valid_pixels_and_normal_cosine():
    d = task_loss(TaskSpec("d", "depth"), torch.tensor([[[[1.0, 5.0, 2.0]]]]), torch.tensor([[[[2.0, 0.0, 2.5]]]]), "none")
    assert d.item() == pytest.approx((1.0 + 0.5) / 2)
    pred = torch.zeros(1, 3, 1, 2)
    pred[0, 0, 0, 0] = 1.0  # (1,0,0) vs (0,0,1): 1 - cos = 1
    pred[0, 2, 0, 1] = 2.0  # (0,0,2) vs (0,0,1): 0
    tgt = torch.zeros(1, 3, 1, 2)
    tgt[0, 2] = 1.0
    n = task_loss(TaskSpec("n", "normal"), pred, tgt, "mean")
    assert n.item() == pytest.approx(0.5)


def test_multi_task_losses_missing_output_names_task():
    specs = [TaskSpec("a", "binary"), TaskSpec("b", "binary")]
    with pytest.raises(KeyError, match="'b'"):
        multi_task_losses(specs, {"a": torch.zeros(2)}, {"a": torch.zeros(2), "b": torch.zeros(2)})
