"""Metrics against hand-computed values and scikit-learn."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, roc_auc_score

from mtlguard.data.tasks import TaskSpec
from mtlguard.metrics import (ClassificationMeter, DepthMeter, IntraClassStdMeter, MultiTaskMeter, NormalMeter,
                              SegmentationMeter, arp, attack_transferability, auc_roc, delta_acc, delta_m,
                              evaluate, relative_task_vulnerability)


def test_auc_hand_and_sklearn_with_ties():
    # hand: pos scores {0.8, 0.4}, neg {0.4, 0.1}: pairs (0.8>0.4,0.8>0.1,0.4=0.4 -> .5, 0.4>0.1) = 3.5/4
    assert auc_roc(torch.tensor([0.8, 0.4, 0.4, 0.1]), torch.tensor([1, 1, 0, 0])) == pytest.approx(0.875)
    g = torch.Generator().manual_seed(0)
    s = torch.randint(0, 5, (200,), generator=g).float()  # many ties
    y = torch.randint(0, 2, (200,), generator=g)
    assert auc_roc(s, y) == pytest.approx(roc_auc_score(y.numpy(), s.numpy()), abs=1e-12)


def test_auc_single_class_is_nan_and_excluded_from_mean():
    assert math.isnan(auc_roc(torch.tensor([0.1, 0.9]), torch.tensor([1, 1])))
    m = ClassificationMeter("multilabel")
    m.update(torch.tensor([[2.0, 1.0], [-1.0, 0.5], [0.5, -2.0]]), torch.tensor([[1.0, 1.0], [0.0, 1.0], [1.0, 1.0]]))
    r = m.compute()
    assert math.isnan(r["auc_per_label"][1])  # label 1 is all-positive
    assert r["auc"] == pytest.approx(roc_auc_score([1, 0, 1], [2.0, -1.0, 0.5]))  # label 0 only
    assert r["auc_labels"] == 1
    # accuracy over all 6 label decisions: preds [[1,1],[0,1],[1,0]] vs targets -> 5/6
    assert r["accuracy"] == pytest.approx(5 / 6)


def test_accuracy_streaming_matches_sklearn_and_binary_threshold():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(50, 4, generator=g)
    y = torch.randint(0, 4, (50,), generator=g)
    m = ClassificationMeter("multiclass")
    m.update(logits[:17], y[:17])
    m.update(logits[17:], y[17:])
    assert m.compute()["accuracy"] == pytest.approx(accuracy_score(y.numpy(), logits.argmax(1).numpy()))
    b = ClassificationMeter("binary")
    b.update(torch.tensor([-0.5, 0.2, 3.0, -2.0]), torch.tensor([0, 0, 1, 1]))
    r = b.compute()
    assert r["accuracy"] == pytest.approx(0.5)
    assert r["auc"] == pytest.approx(0.5)  # pos {3,-2} vs neg {-0.5,0.2}: 2 of 4 pairs


def test_segmentation_miou_hand_and_confusion_matrix():
    tgt = torch.tensor([[[0, 0, 1], [1, 2, -1]]])  # one ignored pixel
    pred = torch.tensor([[[0, 1, 1], [1, 1, 2]]])
    logits = torch.nn.functional.one_hot(pred, 3).permute(0, 3, 1, 2).float()
    m = SegmentationMeter(3, ignore_index=-1)
    m.update(logits, tgt)
    r = m.compute()
    # class0: tp1 fp0 fn1 -> 1/2; class1: tp2 fp2(pred1 at t0,t2) fn0 -> 2/4; class2: tp0 fp0 fn1 -> 0
    assert r["miou"] == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    assert r["pixel_acc"] == pytest.approx(3 / 5)
    keep = tgt.reshape(-1) != -1
    cm = confusion_matrix(tgt.reshape(-1)[keep].numpy(), pred.reshape(-1)[keep].numpy(), labels=[0, 1, 2])
    tp = np.diag(cm)
    iou = tp / (cm.sum(0) + cm.sum(1) - tp)
    assert r["miou"] == pytest.approx(iou.mean())


def test_depth_metrics_hand():
    gt = torch.tensor([[[[1.0, 2.0], [4.0, 0.0]]]])  # last pixel invalid
    pr = torch.tensor([[[[1.2, 1.0], [4.0, 9.0]]]])
    m = DepthMeter()
    m.update(pr, gt)
    r = m.compute()
    assert r["abs_err"] == pytest.approx((0.2 + 1.0 + 0.0) / 3)
    assert r["rel_err"] == pytest.approx((0.2 + 0.5 + 0.0) / 3)
    # ratios 1.2, 2.0, 1.0 -> <1.25: 2/3; <1.5625: 2/3; <1.953: 2/3 (2.0 is not < 1.953)
    assert r["delta1"] == pytest.approx(2 / 3) and r["delta3"] == pytest.approx(2 / 3)


def test_normal_angles_hand():
    gt = torch.zeros(1, 3, 1, 4)
    gt[0, 2] = 1.0  # all (0, 0, 1); pixel 3 invalid below
    gt[0, :, 0, 3] = 0.0
    ang = torch.tensor([0.0, 20.0, 45.0])
    pr = torch.zeros(1, 3, 1, 4)
    pr[0, 0, 0, :3] = torch.sin(torch.deg2rad(ang))
    pr[0, 2, 0, :3] = torch.cos(torch.deg2rad(ang))
    pr[0, 2, 0, 3] = -1.0
    m = NormalMeter()
    m.update(pr, gt)
    r = m.compute()
    assert r["mean_angle"] == pytest.approx(65 / 3, abs=1e-3)
    assert r["median_angle"] == pytest.approx(20.0, abs=0.01)
    assert r["within_11.25"] == pytest.approx(1 / 3)
    assert r["within_22.5"] == pytest.approx(2 / 3)
    assert r["within_30"] == pytest.approx(2 / 3)


def test_arp_eq10_delta_and_transferability_eq11():
    before = {"seg": {"miou": 0.5, "pixel_acc": 0.8}, "depth": {"abs_err": 1.0}}
    after = {"seg": {"miou": 0.25, "pixel_acc": 0.4}, "depth": {"abs_err": 1.5}}
    r = arp(before, after)
    assert r["seg"] == pytest.approx(50.0)  # both higher-is-better metrics halve: +50%
    assert r["depth"] == pytest.approx(50.0)  # error +50%
    assert r["arp"] == pytest.approx(50.0)
    assert delta_m(after, before) == pytest.approx(-50.0)
    assert attack_transferability({"a": 40.0, "b": 10.0, "c": 20.0}, "a") == pytest.approx((0.25 + 0.5) / 2)
    d = delta_acc({"x": {"accuracy": 0.9}, "y": {"accuracy": 0.6}}, {"x": {"accuracy": 0.5}, "y": {"accuracy": 0.5}})
    assert d["x"] == pytest.approx(40.0) and d["mean"] == pytest.approx(25.0)
    with pytest.raises(KeyError, match="depth"):
        arp(before, {"seg": after["seg"]})


def test_relative_task_vulnerability():
    assert relative_task_vulnerability(torch.tensor([1.0, 2.0]), torch.tensor([1.5, 2.0]),
                                       reduction="per_sample") == pytest.approx(0.25)
    assert relative_task_vulnerability(torch.tensor([1.0, 2.0]), torch.tensor([1.5, 2.0])) == pytest.approx(0.5 / 3)
    with pytest.raises(ValueError, match="shape"):
        relative_task_vulnerability(torch.ones(2), torch.ones(3))


def test_intra_class_std_hand():
    # one task, 2 classes, D=2; class0 dim0 {1,3} mean 2 std sqrt(2); class1 dim0 {2,2} std 0
    z = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 1.0], [2.0, 3.0]])
    y = torch.tensor([[0], [0], [1], [1]])
    m = IntraClassStdMeter([2])
    m.update(z[:3], y[:3])
    m.update(z[3:], y[3:])
    r = m.per_dim()
    assert r[0] == pytest.approx((math.sqrt(2) / 2 + 0) / 2)
    # dim1: class0 mean 0 (skipped ratio), class1 mean 2 std sqrt(2) -> (0 + sqrt2/2) / 2
    assert r[1] == pytest.approx((math.sqrt(2) / 2) / 2)
    assert m.compute()["maximum"] == pytest.approx(math.sqrt(2) / 4)


def test_evaluate_one_pass_over_loader_matches_meter():
    tasks = [TaskSpec("c", "multiclass", 3), TaskSpec("b", "binary")]

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return {"c": x[:, 0, 0, :3], "b": x[:, 0, 1, 0]}

    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 1, 2, 3, generator=g)
    y = {"c": torch.randint(0, 3, (10,), generator=g), "b": torch.randint(0, 2, (10,), generator=g)}
    loader = [(x[:4], {k: v[:4] for k, v in y.items()}), (x[4:], {k: v[4:] for k, v in y.items()})]
    res = evaluate(Fixed(), tasks, loader)
    assert res["c"]["accuracy"] == pytest.approx(float((x[:, 0, 0, :3].argmax(1) == y["c"]).float().mean()))
    assert res["b"]["auc"] == pytest.approx(roc_auc_score(y["b"].numpy(), x[:, 0, 1, 0].numpy()))
    assert res["average"]["accuracy"] == pytest.approx((res["c"]["accuracy"] + res["b"]["accuracy"]) / 2)
    mm = MultiTaskMeter(tasks)
    mm.update(Fixed()(x), y)
    assert mm.compute()["c"] == res["c"]
