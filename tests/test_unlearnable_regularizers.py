"""Intra-ER (Eq. 4) and Inter-ER (Eq. 5) against hand-computed values."""
import math

import pytest
import torch

from mtlguard.unlearnable import inter_er, intra_er


def _tasks():
    # task 1 (C=3): e1=[1,0], e2=[0,1], e3=[1,1];  task 2 (C=2): [1,0], [-1,0]
    t1 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    t2 = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    return t1, t2


def test_intra_er_hand_computed():
    t1, t2 = _tasks()
    # task 1 pairs: cos(e1,e2)=0, cos(e1,e3)=cos(e2,e3)=1/sqrt2 -> sqrt2 ; task 2: cos=-1
    # Eq. 4: 2 / (3*2 + 2*1) * (sqrt2 - 1)
    expected = 2.0 / 8.0 * (math.sqrt(2) - 1)
    assert float(intra_er([t1, t2])) == pytest.approx(expected, rel=1e-6)
    # single task: 2 / 6 * sqrt2
    assert float(intra_er([t1])) == pytest.approx(math.sqrt(2) / 3, rel=1e-6)


def test_inter_er_hand_computed():
    t1, t2 = _tasks()
    # |cos| between task-1 rows and task-2 rows: e1 -> 1, 1 ; e2 -> 0, 0 ; e3 -> 1/sqrt2, 1/sqrt2
    expected = (2 + math.sqrt(2)) / (3 * 2)
    assert float(inter_er([t1, t2])) == pytest.approx(expected, rel=1e-6)
    assert float(inter_er([t1])) == 0.0


def test_inter_er_three_tasks_normalization():
    a = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    b = torch.tensor([[1.0, 0.0, 0.0]])
    c = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    # pairs (a,b): |cos| 1, 0 -> 1 ; (a,c): a1 vs c: 0,0,1 ; a2 vs c: 0,1,0 -> 2 ; (b,c): 0,0,1 -> 1
    expected = (1 + 2 + 1) / (2 * 1 + 2 * 3 + 1 * 3)
    assert float(inter_er([a, b, c])) == pytest.approx(expected, rel=1e-6)
    # Eq. 4 over tasks with 2, 1, 3 classes: a: cos 0 ; b: none ; c: all 0 -> 0
    assert float(intra_er([a, b, c])) == pytest.approx(0.0, abs=1e-7)


def test_regularizers_are_scale_invariant_and_differentiable():
    g = torch.Generator().manual_seed(0)
    t1 = torch.randn(4, 10, generator=g, requires_grad=True)
    t2 = torch.randn(3, 10, generator=g, requires_grad=True)
    loss = 20 * intra_er([t1, t2]) + 100 * inter_er([t1, t2])
    loss.backward()
    assert torch.isfinite(t1.grad).all() and t1.grad.abs().sum() > 0
    with torch.no_grad():
        assert float(intra_er([3 * t1, t2])) == pytest.approx(float(intra_er([t1, t2])), rel=1e-5)
        assert float(inter_er([t1, 0.5 * t2])) == pytest.approx(float(inter_er([t1, t2])), rel=1e-5)
