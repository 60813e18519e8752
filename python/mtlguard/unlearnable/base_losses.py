"""Base UE losses that MTL-UE plugs into (Sec. 3, A.1): EM, TAP (targeted AP) and SEP.

All losses are *minimized* by the perturbation (generator or PGD), summed over tasks (linear
scalarization with uniform weights, the surrogate's LS weighting).

* EM (Huang et al., 2021): ``sum_k L_k(F(x + delta), y^k)``.
* TAP (Fowl et al., 2021): ``sum_k L_k(F(x + delta), t^k)`` with target ``t^k = (y^k + C_k // 2) % C_k``
  for classification / segmentation; for depth and normals (no natural target, A.1) the loss is
  untargeted: ``-L_k(F(x + delta), y^k)``.
* SEP (Chen et al., 2023): TAP's loss averaged over an ensemble of checkpoints of the clean surrogate.

Task balance (our option, ``balance``; default ``"sum"`` = the paper's uniform LS sum).  GB-MTA (Zhang et al.,
Eq. 8-9) attacks along ``sum_i grad L_i / L_i`` so that the task that has moved least leads; MTA (Guo et al.,
Eq. 2-5) balances its tasks by their log losses.  The perturbation here *minimizes* a targeted loss, which turns
the same formula around, so two options:

* ``"log"``: ``sum_k sign_k * log L_k``, GB-MTA's formula as written (each gradient divided by its loss).  For a
  targeted (minimized) loss this weights the task already *closest* to its target most.  Measured on the
  deployment protocol (adversarial views + split delta, seed 0, ``reports/protection_deploy_zoo_screen.md``): age,
  the task with the largest targeted loss, lost its protection on ResNet-18@64 (PR 0.35 vs 0.73 with ``"sum"``).
* ``"lagging"``: GB-MTA's principle for minimized losses: ``sum_k sign_k * w_k * L_k`` with ``w_k`` proportional
  to ``L_k`` for a targeted task (the task furthest from its target leads) and to ``1 / L_k`` for an untargeted
  one (= GB-MTA), both detached and normalized to mean 1.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn as nn

from ..data.tasks import TaskSpec
from ..models.losses import task_loss

BASE_LOSSES = ("em", "tap", "sep")
#: how the per-task terms of L_b are combined: the paper's sum, GB-MTA's log balance, or the lagging task first
TASK_BALANCES = ("sum", "log", "lagging")


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


def task_terms(name: str, tasks: Sequence[TaskSpec], outputs: Mapping[str, torch.Tensor],
               targets: Mapping[str, torch.Tensor], reduction: str = "mean") -> list[tuple[torch.Tensor, float]]:
    """``(L_k, sign)`` per task of ``L_b = sum_k sign * L_k``: EM ``(L_k(y), +1)``; TAP / SEP ``(L_k(t), +1)``
    for a targeted task, ``(L_k(y), -1)`` for depth / normals (untargeted)."""
    if name == "em":
        return [(task_loss(t, outputs[t.name], targets[t.name], reduction), 1.0) for t in tasks]
    return [(task_loss(t, outputs[t.name], target_labels(t, targets[t.name]), reduction), 1.0) if is_targeted(t)
            else (task_loss(t, outputs[t.name], targets[t.name], reduction), -1.0) for t in tasks]


def em_loss(tasks: Sequence[TaskSpec], outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor],
            reduction: str = "mean") -> torch.Tensor:
    """EM: sum over tasks of the task losses on the true labels."""
    return sum(sign * loss for loss, sign in task_terms("em", tasks, outputs, targets, reduction))


def tap_loss(tasks: Sequence[TaskSpec], outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor],
             reduction: str = "mean") -> torch.Tensor:
    """TAP: targeted loss towards ``(y + C//2) % C``; negated (untargeted) loss for depth/normals."""
    return sum(sign * loss for loss, sign in task_terms("tap", tasks, outputs, targets, reduction))


def ensemble_tap_loss(models: Sequence[nn.Module], tasks: Sequence[TaskSpec], x: torch.Tensor,
                      targets: Mapping[str, torch.Tensor], reduction: str = "mean") -> torch.Tensor:
    """SEP: TAP's loss averaged over ``models`` (checkpoints of the clean surrogate)."""
    if not models:
        raise ValueError("ensemble_tap_loss: empty checkpoint ensemble")
    return sum(tap_loss(tasks, m(x), targets, reduction) for m in models) / len(models)


def base_loss(name: str, models: Sequence[nn.Module], tasks: Sequence[TaskSpec], x: torch.Tensor,
              targets: Mapping[str, torch.Tensor], reduction: str = "mean", balance: str = "sum") -> torch.Tensor:
    """``L_b`` of Alg. 1 for ``name`` in ``("em", "tap", "sep")`` on the (augmented) protected batch ``x``.

    ``models``: ``[surrogate]`` for EM/TAP (several: the mean of their losses, an ensemble over
    architectures), the checkpoint ensemble for SEP.  ``balance``: ``"log"`` / ``"lagging"`` combine the
    ensemble's mean task losses ``L_k`` as in the module notes (GB-MTA Eq. 8-9).
    """
    if not models:
        raise ValueError("base_loss: no surrogate model")
    if name not in BASE_LOSSES:
        raise ValueError(f"unknown base loss {name!r}; expected one of {BASE_LOSSES}")
    if balance not in TASK_BALANCES:
        raise ValueError(f"unknown task balance {balance!r}; expected one of {TASK_BALANCES}")
    if balance == "sum":
        if name == "em":
            return sum(em_loss(tasks, m(x), targets, reduction) for m in models) / len(models)
        return ensemble_tap_loss(models, tasks, x, targets, reduction)
    per_model = [task_terms(name, tasks, m(x), targets, reduction) for m in models]
    mean_terms = [(sum(terms[k][0] for terms in per_model) / len(models), per_model[0][k][1])
                  for k in range(len(tasks))]
    if balance == "log":
        return sum(sign * torch.log(loss.clamp_min(1e-6)) for loss, sign in mean_terms)
    w = [loss.detach().mean().clamp_min(1e-6) ** sign for loss, sign in mean_terms]  # L_k, or 1 / L_k untargeted
    norm = sum(w) / len(w)
    return sum(sign * (wk / norm) * loss for wk, (loss, sign) in zip(w, mean_terms))


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
