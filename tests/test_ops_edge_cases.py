"""Edge cases of the fused ops: eps = 0, T = 1, zero/negative/NaN losses, empty batch, bad labels,
shape mismatches and bad modes -- each gives the documented result or a clear error."""
from __future__ import annotations

import pytest
import torch

from mtlguard import ops
from mtlguard.ops import reference as R

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA GPU not available on this machine")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


@pytest.mark.parametrize("device", DEVICES)
def test_eps_zero_returns_clean_image(device):
    x = torch.rand(3, 3, 8, 8, device=device) * 1.2 - 0.1  # some pixels outside [0, 1]
    delta = torch.randn_like(x)
    x_adv, d = ops.project_linf(x, delta, 0.0)
    assert torch.equal(x_adv, x.clamp(0, 1))
    assert torch.equal(d, x.clamp(0, 1) - x)
    direction = torch.ones_like(x, dtype=torch.int8)
    assert torch.equal(ops.pgd_step(x.clamp(0, 1), x, direction, 0.5, 0.0), x.clamp(0, 1))
    assert torch.equal(ops.pgd_step(x, x, direction, 0.5, torch.zeros(3, device=device)), x.clamp(0, 1))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", R.MODES)
def test_single_task_is_sign_of_its_gradient(mode, device):
    g = torch.randn(1, 6, 3, 5, 5, device=device)
    g[0, 0, 0, 0, :2] = 0.0
    losses = torch.rand(1, 6, device=device) + 0.5
    weights = torch.rand(1, 6, device=device) + 0.1 if mode == "weighted" else None
    out = ops.balanced_sign(g, losses, mode, weights)
    assert torch.equal(out, torch.sign(g[0]).to(torch.int8))


def test_loss_floor_negative_and_nan_losses():
    g = torch.tensor([[[1.0, -1.0, 2.0]], [[-3.0, 1.0, -1.0]]])  # T=2, B=1, 3 elements
    # zero and negative losses are clamped to LOSS_FLOOR (weight 1e6): task 0 dominates, no inf/NaN
    for bad in (0.0, -5.0):
        out = ops.balanced_sign(g, torch.tensor([[bad], [1.0]]), "gbmta")
        assert out.tolist() == [[1, -1, 1]]
    # both floored -> plain sum of gradients
    assert ops.balanced_sign(g, torch.tensor([[0.0], [-1.0]]), "gbmta").tolist() == [[-1, 0, 1]]
    # NaN / inf loss drops that task for that sample
    for bad in (float("nan"), float("inf"), float("-inf")):
        out = ops.balanced_sign(g, torch.tensor([[bad], [1.0]]), "gbmta")
        assert out.tolist() == [[-1, 1, -1]]
    assert ops.balanced_sign(g, torch.full((2, 1), float("nan")), "gbmta").tolist() == [[0, 0, 0]]
    # per-sample: the floor/NaN rule applies per sample, not per batch
    g2 = torch.cat([g, g], 1)
    out = ops.balanced_sign(g2, torch.tensor([[float("nan"), 1.0], [1.0, 1e9]]), "gbmta")
    assert out.tolist() == [[-1, 1, -1], [1, -1, 1]]
    assert R.LOSS_FLOOR == 1e-6


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch(device):
    x = torch.rand(0, 3, 4, 4, device=device)
    a, d = ops.project_linf(x, x.clone(), 0.1)
    assert a.shape == d.shape == x.shape
    assert ops.pgd_step(x, x, x.to(torch.int8), 0.1, 0.1).shape == x.shape
    assert ops.pgd_step_(x.clone(), x, x.to(torch.int8), 0.1, torch.zeros(0, device=device)).shape == x.shape
    out = ops.balanced_sign(torch.rand(3, 0, 5, device=device), torch.rand(3, 0, device=device), "gbmta")
    assert out.shape == (0, 5) and out.dtype == torch.int8
    z = torch.rand(0, 2, 3, 3, device=device)
    e = ops.embed_concat(z, torch.rand(5, 9, device=device), torch.zeros(0, 2, dtype=torch.int64, device=device),
                         torch.tensor([0, 2, 5], device=device), (1, 3, 3))
    assert e.shape == (0, 4, 3, 3)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bad", [3, -2, 100])
def test_labels_out_of_range_name_task_and_value(bad, device):
    z = torch.rand(4, 2, 3, 3, device=device)
    table = torch.rand(5, 9, device=device)
    offsets = torch.tensor([0, 2, 5], device=device)  # task #0: 2 classes, task #1: 3 classes
    labels = torch.tensor([[0, 1], [1, 2], [-1, bad], [0, 0]], device=device)
    with pytest.raises(IndexError, match=rf"label {bad} of task #1 \(sample 2\) is out of range \[-1, 3\)"):
        ops.embed_concat(z, table, labels, offsets, (1, 3, 3))
    with pytest.raises(IndexError, match=rf"label {bad} of task #1"):
        R.embed_concat(z, table, labels, offsets, (1, 3, 3))


def test_shape_mismatches_and_bad_arguments_raise_clear_errors():
    x = torch.rand(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"project_linf: x \(2, 3, 4, 4\) and delta \(2, 3, 4, 5\)"):
        ops.project_linf(x, torch.rand(2, 3, 4, 5), 0.1)
    with pytest.raises(ValueError, match=r"per-sample eps must have shape \[B\]=2"):
        ops.project_linf(x, x, torch.rand(3))
    with pytest.raises(ValueError, match=r"eps must be >= 0"):
        ops.project_linf(x, x, -0.1)
    with pytest.raises(ValueError, match=r"pgd_step: x_adv .* direction \(2, 3, 4\)"):
        ops.pgd_step(x, x, torch.ones(2, 3, 4, dtype=torch.int8), 0.1, 0.1)
    with pytest.raises(ValueError, match=r"per-sample step must have shape"):
        ops.pgd_step_(x, x, x.sign(), torch.rand(5), 0.1)
    g = torch.rand(3, 2, 5)
    with pytest.raises(ValueError, match=r"unknown mode 'bogus'"):
        ops.balanced_sign(g, torch.rand(3, 2), "bogus")
    with pytest.raises(ValueError, match=r"losses must be \[T, B\] = \[3, 2\]"):
        ops.balanced_sign(g, torch.rand(2, 3), "gbmta")
    with pytest.raises(ValueError, match=r"task gradient 1 has shape"):
        ops.balanced_sign([g[0], torch.rand(2, 4)], torch.rand(2, 2), "total")
    with pytest.raises(ValueError, match=r"needs weights"):
        ops.balanced_sign(g, torch.rand(3, 2), "weighted")
    with pytest.raises(ValueError, match=r"weights shape \(2,\)"):
        ops.balanced_sign(g, torch.rand(3, 2), "weighted", torch.rand(2))
    z, table, offsets = torch.rand(2, 1, 3, 3), torch.rand(5, 9), torch.tensor([0, 2, 5])
    with pytest.raises(ValueError, match=r"labels must be \[B, K\] = \[2, 2\]"):
        ops.embed_concat(z, table, torch.zeros(2, 3, dtype=torch.int64), offsets, (1, 3, 3))
    with pytest.raises(ValueError, match=r"table must be \[rows, 18\]"):
        ops.embed_concat(z, table, torch.zeros(2, 2, dtype=torch.int64), offsets, (2, 3, 3))
    with pytest.raises(ValueError, match=r"z must be \[B, Cz, 4, 4\]"):
        ops.embed_concat(z, table, torch.zeros(2, 2, dtype=torch.int64), offsets, (1, 4, 4))
    with pytest.raises(ValueError, match=r"offsets\[-1\]=4 != table rows 5"):
        ops.embed_concat(z, table, torch.zeros(2, 2, dtype=torch.int64), torch.tensor([0, 2, 4]), (1, 3, 3))


def test_inputs_are_not_modified():
    x = torch.rand(2, 3, 4, 4)
    delta = torch.randn_like(x)
    direction = torch.randint(-1, 2, x.shape, dtype=torch.int8)
    copies = [t.clone() for t in (x, delta, direction)]
    ops.project_linf(x, delta, 0.05)
    ops.pgd_step(x, x, direction, 0.1, 0.05)
    ops.balanced_sign(torch.stack([x, delta]), torch.rand(2, 2), "gbmta")
    for a, b in zip((x, delta, direction), copies):
        assert torch.equal(a, b)
