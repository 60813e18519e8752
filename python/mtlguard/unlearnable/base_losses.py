"""Base UE losses that MTL-UE plugs into (Sec. 3, A.1): EM, TAP (targeted AP) and SEP.

All losses are *minimized* by the perturbation (generator or PGD), summed over tasks (linear
scalarization with uniform weights, the surrogate's LS weighting).

* EM (Huang et al., 2021): ``sum_k L_k(F(x + delta), y^k)``.
* TAP (Fowl et al., 2021): ``sum_k L_k(F(x + delta), t^k)`` with target ``t^k = (y^k + C_k // 2) % C_k``
  for classification / segmentation; for depth and normals (no natural target, A.1) the loss is
  untargeted: ``-L_k(F(x + delta), y^k)``.
* SEP (Chen et al., 2023): TAP's loss averaged over an ensemble of checkpoints of the clean surrogate.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn as nn

from ..data.tasks import TaskSpec
from ..models.losses import task_loss

BASE_LOSSES = ("em", "tap", "sep")


def target_labels(spec: TaskSpec, target: torch.Tensor) -> torch.Tensor:
    """TAP target ``(y + C//2) % C`` (ignored segmentation pixels stay ignored); identity for regression tasks."""
    if spec.kind in ("binary", "multiclass"):
        c = spec.num_classes
        return (target.long() + c // 2) % c
    if spec.kind == "segmentation":
        t = target.long()
        c = spec.num_classes
        return torch.where(t == spec.ignore_index, t, (t + c // 2) % c)
    return target


def is_targeted(spec: TaskSpec) -> bool:
    """True where TAP uses a target class; False (untargeted maximization) for depth/normal/regression."""
    return spec.kind in ("binary", "multiclass", "segmentation")


def em_loss(tasks: Sequence[TaskSpec], outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor],
            reduction: str = "mean") -> torch.Tensor:
    """EM: sum over tasks of the task losses on the true labels."""
    return sum(task_loss(t, outputs[t.name], targets[t.name], reduction) for t in tasks)


def tap_loss(tasks: Sequence[TaskSpec], outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor],
             reduction: str = "mean") -> torch.Tensor:
    """TAP: targeted loss towards ``(y + C//2) % C``; negated (untargeted) loss for depth/normals."""
    total = 0
    for t in tasks:
        if is_targeted(t):
            total = total + task_loss(t, outputs[t.name], target_labels(t, targets[t.name]), reduction)
        else:
            total = total - task_loss(t, outputs[t.name], targets[t.name], reduction)
    return total


def ensemble_tap_loss(models: Sequence[nn.Module], tasks: Sequence[TaskSpec], x: torch.Tensor,
                      targets: Mapping[str, torch.Tensor], reduction: str = "mean") -> torch.Tensor:
    """SEP: TAP's loss averaged over ``models`` (checkpoints of the clean surrogate)."""
    if not models:
        raise ValueError("ensemble_tap_loss: empty checkpoint ensemble")
    return sum(tap_loss(tasks, m(x), targets, reduction) for m in models) / len(models)


def base_loss(name: str, models: Sequence[nn.Module], tasks: Sequence[TaskSpec], x: torch.Tensor,
              targets: Mapping[str, torch.Tensor], reduction: str = "mean") -> torch.Tensor:
    """``L_b`` of Alg. 1 for ``name`` in ``("em", "tap", "sep")`` on the (augmented) protected batch ``x``.

    ``models``: ``[surrogate]`` for EM/TAP (several: the mean of their losses, an ensemble over
    architectures), the checkpoint ensemble for SEP.
    """
    if not models:
        raise ValueError("base_loss: no surrogate model")
    if name == "em":
        return sum(em_loss(tasks, m(x), targets, reduction) for m in models) / len(models)
    if name in ("tap", "sep"):
        return ensemble_tap_loss(models, tasks, x, targets, reduction)
    raise ValueError(f"unknown base loss {name!r}; expected one of {BASE_LOSSES}")


@torch.no_grad()
def classification_accuracy(tasks: Sequence[TaskSpec], outputs: Mapping[str, torch.Tensor],
                            targets: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{task: number of correct samples}`` for binary/multiclass tasks (sums, not means)."""
    out = {}
    for t in tasks:
        if t.kind == "binary":
            pred = (outputs[t.name].reshape(-1) > 0).long()
        elif t.kind == "multiclass":
            pred = outputs[t.name].argmax(1)
        else:
            continue
        out[t.name] = (pred == targets[t.name].reshape(-1).long()).sum()
    return out
