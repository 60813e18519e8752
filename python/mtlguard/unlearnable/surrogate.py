"""Surrogate MTL models for the surrogate-dependent UE methods (EM / TAP / SEP, Sec. 3 and A.1).

The surrogate is the project's HPS victim model (``mtlguard.models.build_model``, LS weighting).
This module only holds what the fitting loops need and the shared trainer does not provide:
a few optimizer steps at a time (EM's alternation, Alg. 1) and clean training that keeps
evenly spaced weight snapshots (SEP's checkpoint ensemble).
"""
from __future__ import annotations

import copy
from typing import Callable, Iterator, Mapping, Sequence

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from ..data.tasks import TaskSpec
from .augment import differentiable_augment
from .base_losses import em_loss


def build_surrogate(tasks: Sequence[TaskSpec], in_channels: int = 3, image_size: int | Sequence[int] = 32,
                    arch: str = "resnet18") -> nn.Module:
    """The surrogate MTL model: ``mtlguard.models.build_model(tasks, arch, in_channels, image_size)``."""
    try:
        from ..models import build_model
    except ImportError as exc:  # pragma: no cover - depends on the models package being present
        raise ImportError("mtlguard.models.build_model is not available; pass a surrogate model explicitly") from exc
    size = image_size if isinstance(image_size, int) else int(image_size[0])
    return build_model(tasks, arch=arch, in_channels=in_channels, image_size=size, pretrained=False)


class Indexed(Dataset):
    """Wrap a dataset so items are ``(image, targets, index)``: per-sample results can be stored by index."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        x, y = self.ds[i]
        return x, y, i


def make_loader(dataset: Dataset, batch_size: int, seed: int, shuffle: bool = True, drop_last: bool = False) -> DataLoader:
    """Deterministic single-process loader (shuffle order fixed by ``seed``)."""
    g = torch.Generator().manual_seed(int(seed))
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, generator=g, num_workers=0)


def infinite_batches(dataset: Dataset, batch_size: int, seed: int) -> Iterator:
    """Endless shuffled batches; epoch ``e`` uses seed ``seed + e``."""
    epoch = 0
    while True:
        for batch in make_loader(dataset, batch_size, seed + epoch):
            yield batch
        epoch += 1


def to_device(targets: Mapping[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in targets.items()}


def pgd_view(model: nn.Module, tasks: Sequence[TaskSpec], x: torch.Tensor, targets: Mapping[str, torch.Tensor],
             eps: float, steps: int) -> torch.Tensor:
    """Madry PGD on the summed task losses (L-inf ``eps``, ``steps`` steps of ``2.5 eps / steps``, random start,
    eval-mode statistics): the adversarial batch an adversarially trained surrogate learns from."""
    was_training = model.training
    model.eval()
    delta = torch.empty_like(x).uniform_(-eps, eps)
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = em_loss(tasks, model((x + delta).clamp(0, 1)), targets)
        (g,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + 2.5 * eps / steps * g.sign()).clamp(-eps, eps)
    model.train(was_training)
    return (x + delta).clamp(0, 1).detach()


def train_step(model: nn.Module, tasks: Sequence[TaskSpec], optimizer: torch.optim.Optimizer, x: torch.Tensor,
               targets: Mapping[str, torch.Tensor], augment: bool | Callable = True, rng: torch.Generator | None = None,
               grad_clip: float | None = 5.0, adversarial: tuple[float, int] | None = None) -> float:
    """One LS training step of ``model`` on ``(x, targets)`` (x already on the device).

    ``augment``: ``True`` = crop + flip (A.2), or a callable ``(x, rng) -> x`` (e.g. an EOT
    :class:`mtlguard.unlearnable.eot.VictimView`), or ``False``.  ``adversarial = (eps, steps)``: train on
    :func:`pgd_view` of the augmented batch (PGD-AT)."""
    model.train()
    if callable(augment):
        x = augment(x, rng)
    elif augment:
        x = differentiable_augment(x, rng)
    if adversarial is not None and adversarial[0] > 0:
        x = pgd_view(model, tasks, x, targets, *adversarial)
    loss = em_loss(tasks, model(x), targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return float(loss.detach())


def train_clean_surrogate(model: nn.Module, tasks: Sequence[TaskSpec], dataset: Dataset, epochs: int = 10,
                          batch_size: int = 64, lr: float = 1e-3, seed: int = 0, device: str | torch.device = "cpu",
                          n_snapshots: int = 15, augment: bool | Callable = True, progress: bool = True,
                          adversarial: tuple[float, int] | None = None) -> list[dict]:
    """Train ``model`` on clean data with Adam + MultiStepLR(0.6, 0.8 of training, gamma 0.1) (A.2)
    and return ``n_snapshots`` weight snapshots taken at evenly spaced steps (the last is the final
    model).  The snapshots are SEP's checkpoint ensemble (15 for classification, 10 for dense, A.1).
    ``adversarial = (eps, steps)``: PGD-AT (every batch replaced by :func:`pgd_view`), e.g. to fine-tune a
    clean surrogate into a robust one."""
    from tqdm.auto import tqdm

    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = len(make_loader(dataset, batch_size, seed))
    total = max(1, epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[int(0.6 * total), int(0.8 * total)], gamma=0.1)
    n_snapshots = max(1, min(int(n_snapshots), total))
    marks = {max(1, round((i + 1) * total / n_snapshots)) for i in range(n_snapshots)}
    snapshots: list[dict] = []
    rng = torch.Generator().manual_seed(int(seed) + 7919)
    step = 0
    bar = tqdm(total=total, desc="adversarial surrogate" if adversarial else "clean surrogate", disable=not progress,
               leave=False)
    for epoch in range(epochs):
        for x, targets in make_loader(dataset, batch_size, seed + epoch):
            loss = train_step(model, tasks, opt, x.to(device), to_device(targets, device), augment, rng,
                              adversarial=adversarial)
            sched.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")
            if step in marks:
                snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    bar.close()
    model.eval()
    return snapshots


def ensemble_from_snapshots(model: nn.Module, snapshots: Sequence[Mapping[str, torch.Tensor]]) -> list[nn.Module]:
    """Frozen eval-mode copies of ``model`` holding each snapshot's weights."""
    out = []
    for s in snapshots:
        m = copy.deepcopy(model)
        m.load_state_dict(s)
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)
        out.append(m)
    return out
