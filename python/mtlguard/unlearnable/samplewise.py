"""Sample-wise surrogate-dependent baselines (MTL-UE Sec. 4.2, A.1): EM, TAP and SEP with PGD.

The surrogate is an MTL model with LS weighting; the per-sample perturbation minimizes the base
loss of :mod:`.base_losses` (sum over tasks) with signed PGD steps through :func:`mtlguard.ops.pgd_step`.

* EM (Huang et al., 2021): repeat {``train_steps`` (10) surrogate steps on ``x + delta``; 20 PGD steps
  of 0.8/255 minimizing the loss on every sample} until the surrogate's accuracy on ``x + delta``
  reaches ``stop_acc`` (99%) or ``max_rounds``.
* TAP (Fowl et al., 2021): 250 PGD steps of 0.064/255 towards ``(y + C//2) % C`` on the clean-trained
  surrogate (untargeted for depth/normals).
* SEP (Chen et al., 2023): TAP against the checkpoint ensemble (mean loss).

Defaults are the paper's; pass fewer ``steps`` for quick CPU runs.  Deltas are returned as
``float32 [N, C, H, W]`` in dataset order with ``|delta| <= eps``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from .. import ops
from ..data.tasks import TaskSpec
from .base_losses import base_loss, classification_accuracy
from .surrogate import Indexed, make_loader, to_device, train_step


def _pgd(models, tasks, base, x, targets, delta0, steps, step_size, eps):
    x_adv = (x + delta0).clamp(0, 1)
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        loss = base_loss(base, models, tasks, x_adv, targets)
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = ops.pgd_step(x_adv.detach(), x, -grad.sign(), step_size, eps)
    return (x_adv - x).detach()


def _sample_shape(ds):
    x, _ = ds[0]
    return tuple(x.shape)


def samplewise_tap(models: Sequence[nn.Module], tasks: Sequence[TaskSpec], dataset: Dataset, steps: int = 250,
                   step_size: float = 0.064 / 255, eps: float = 8 / 255, batch_size: int = 128,
                   device: str | torch.device = "cpu", progress: bool = True) -> torch.Tensor:
    """TAP (one model) or SEP (checkpoint ensemble) sample-wise perturbations ``[N, C, H, W]``."""
    from tqdm.auto import tqdm

    base = "sep" if len(models) > 1 else "tap"
    for m in models:
        m.to(device).eval()
        for p in m.parameters():
            p.requires_grad_(False)
    deltas = torch.zeros((len(dataset),) + _sample_shape(dataset))
    loader = make_loader(Indexed(dataset), batch_size, 0, shuffle=False)
    for x, targets, idx in tqdm(loader, desc=f"sample-wise {base.upper()}", disable=not progress, leave=False):
        x = x.to(device)
        targets = to_device(targets, device)
        deltas[idx] = _pgd(models, tasks, base, x, targets, torch.zeros_like(x), steps, step_size, eps).cpu()
    return deltas


def samplewise_em(model: nn.Module, tasks: Sequence[TaskSpec], dataset: Dataset, steps: int = 20,
                  step_size: float = 0.8 / 255, eps: float = 8 / 255, train_steps: int = 10, stop_acc: float = 0.99,
                  max_rounds: int = 10, batch_size: int = 128, lr: float = 1e-3, seed: int = 0,
                  device: str | torch.device = "cpu", progress: bool = True) -> tuple[torch.Tensor, list[dict]]:
    """Sample-wise error-minimizing noise; returns ``(deltas [N, C, H, W], history)``."""
    from tqdm.auto import tqdm

    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    deltas = torch.zeros((len(dataset),) + _sample_shape(dataset))
    rng = torch.Generator().manual_seed(seed)
    history = []
    for rnd in range(max_rounds):
        batches = iter(make_loader(Indexed(dataset), batch_size, seed + 1000 + rnd))
        for p in model.parameters():
            p.requires_grad_(True)
        for _ in range(train_steps):
            try:
                x, targets, idx = next(batches)
            except StopIteration:
                batches = iter(make_loader(Indexed(dataset), batch_size, seed + 2000 + rnd))
                x, targets, idx = next(batches)
            x = (x + deltas[idx]).clamp(0, 1).to(device)
            train_step(model, tasks, opt, x, to_device(targets, device), True, rng)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        correct, n = 0.0, 0
        cls = [t for t in tasks if t.is_classification]
        for x, targets, idx in tqdm(make_loader(Indexed(dataset), batch_size, 0, shuffle=False),
                                    desc=f"sample-wise EM round {rnd + 1}", disable=not progress, leave=False):
            x = x.to(device)
            targets = to_device(targets, device)
            d = _pgd([model], tasks, "em", x, targets, deltas[idx].to(device), steps, step_size, eps)
            deltas[idx] = d.cpu()
            with torch.no_grad():
                acc = classification_accuracy(cls, model((x + d).clamp(0, 1)), targets)
            correct += sum(float(v) for v in acc.values()) / max(len(cls), 1)
            n += x.shape[0]
        history.append({"round": rnd + 1, "train_acc": correct / max(n, 1)})
        if cls and correct / max(n, 1) >= stop_acc:
            break
    return deltas, history
