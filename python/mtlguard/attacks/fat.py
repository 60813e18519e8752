"""Friendly adversarial training (FAT, Zhang et al. 2020) with any task aggregation; FAT GB-MTA is
GB-MTA Alg. 4 (adversarial data from early-stopped GB-MTA-PGD).

:class:`EarlyStopPGD` is FAT's PGD-K-tau: each sample stops iterating once it is *fooled* and has used
its ``tau`` extra steps (Zhang et al. 2020, Alg. 1).  In the multi-task setting a sample is fooled
when every attacked task is fooled (``fool_rule="all"``, default) or when any is (``"any"``):

* ``binary`` / ``multiclass``: the prediction differs from the label (untargeted) or equals the target
  class (targeted);
* other kinds (dense, multilabel, regression): the task loss reached ``(1 + loss_ratio)`` times its
  clean loss (default ``loss_ratio = 1``: doubled).

:class:`FATPerturb` is the callable ``perturb(model, x, targets) -> x_adv`` for the shared trainer's
per-batch adversarial-training hook: it attacks in eval mode and restores the model's mode, so the
trainer's update sees the model as it left it.  The trainer then fits the model on ``x_adv``.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

from ..data.tasks import TaskSpec
from .aggregation import RELATIVE_OBJECTIVE
from .base import _check_int, _check_scalar
from .pgd import PGD


def task_fooled(spec: TaskSpec, output: torch.Tensor, y: torch.Tensor, loss: torch.Tensor,
                clean_loss: torch.Tensor, targeted: bool, loss_ratio: float) -> torch.Tensor:
    """Per-sample bool [B]: is task ``spec`` fooled at this point (see module docstring)."""
    if spec.kind == "multiclass":
        pred = output.argmax(1)
    elif spec.kind == "binary":
        pred = (output.reshape(y.shape[0], -1)[:, 0] > 0).long()
    else:
        return loss >= (1.0 + loss_ratio) * clean_loss
    hit = pred == y.long()
    return hit if targeted else ~hit


class EarlyStopPGD(PGD):
    """FAT's PGD-K-tau over any aggregation.  ``steps`` = K; ``tau`` extra steps after being fooled.

    ``self.last_steps`` ([B] int) records how many steps each sample took in the last call.
    """

    name = "EarlyStopPGD"

    def __init__(self, model, tasks, eps=8 / 255, steps=10, step_size=2 / 255, tau=0, fool_rule="all",
                 loss_ratio=1.0, random_start=True, **kw) -> None:
        super().__init__(model, tasks, eps=eps, steps=steps, step_size=step_size, random_start=random_start,
                         restarts=1, **kw)
        self.tau = _check_int("tau", tau, 0)
        if fool_rule not in ("all", "any"):
            raise ValueError(f"fool_rule must be 'all' or 'any', got {fool_rule!r}")
        self.fool_rule = fool_rule
        self.loss_ratio = _check_scalar("loss_ratio", loss_ratio)
        self.last_steps: torch.Tensor | None = None

    def _fooled(self, x_adv, y, clean) -> torch.Tensor:
        with torch.no_grad():
            out = self._outputs(x_adv)
            from ..models.losses import task_loss
            flags = []
            for i, spec in enumerate(self.aggregation.tasks):
                loss = task_loss(spec, out[spec.name], y[spec.name], "none").float()
                flags.append(task_fooled(spec, out[spec.name], y[spec.name], loss, clean[i], self.targeted,
                                         self.loss_ratio))
            f = torch.stack(flags)
            return f.all(0) if self.fool_rule == "all" else f.any(0)

    def perturb(self, x, y):
        clean = self.begin(x, y)
        b = x.shape[0]
        x_adv = self.random_init(x) if self.random_start else x.clone()
        budget = torch.full((b,), self.tau, dtype=torch.long, device=x.device)
        active = torch.ones(b, dtype=torch.bool, device=x.device)
        taken = torch.zeros(b, dtype=torch.long, device=x.device)
        for k in range(self.steps):
            fooled = self._fooled(x_adv, y, clean)
            stop = fooled & (budget == 0)
            budget = torch.where(fooled & active & ~stop, budget - 1, budget)
            active = active & ~stop
            self._log(it=k, active=active, fooled=fooled)
            if not bool(active.any()):
                break
            idx = active.nonzero().squeeze(1)
            xa, xs = x_adv[idx], x[idx]
            ya = {n: v[idx] for n, v in y.items()}
            losses, grads = self.losses_and_grads(xa, ya)
            if self.aggregation.clean_losses is not None and self.aggregation.mode in RELATIVE_OBJECTIVE:
                full = self.aggregation.clean_losses
                self.aggregation.clean_losses = full[:, idx]
                d = self.direction(grads, losses)
                self.aggregation.clean_losses = full
            else:
                d = self.direction(grads, losses)
            x_adv = x_adv.clone()
            x_adv[idx] = self.step(xa, xs, d, self.step_size)
            taken = taken + active.long()
        self.last_steps = taken
        return x_adv


class FATPerturb:
    """``perturb(model, x, targets) -> x_adv``: FAT adversarial data for the trainer's hook.

    Example (FAT GB-MTA, GB-MTA Alg. 4 with K = tau = 20 as in its Table 3)::

        perturb = FATPerturb(tasks, eps=8/255, steps=20, step_size=2/255, tau=20, aggregation="gbmta")
        x_adv = perturb(model, x, targets)   # model mode and requires_grad flags are restored

    ``aggregation`` / ``attack_tasks`` / ``weights`` / ``norm`` as in :class:`~mtlguard.attacks.base.Attack`.
    ``self.mean_steps`` is the mean number of PGD steps per sample of the last call.
    """

    def __init__(self, tasks: Sequence[TaskSpec], eps: float = 8 / 255, steps: int = 10, step_size: float = 2 / 255,
                 tau: int = 0, aggregation: str | None = "gbmta", attack_tasks: Sequence[str] | None = None,
                 weights: Mapping[str, float] | Sequence[float] | None = None, norm: str = "linf",
                 fool_rule: str = "all", loss_ratio: float = 1.0, random_start: bool = True) -> None:
        self.tasks = tuple(tasks)
        self.kw = dict(eps=eps, steps=steps, step_size=step_size, tau=tau, aggregation=aggregation,
                       attack_tasks=attack_tasks, weights=weights, norm=norm, fool_rule=fool_rule,
                       loss_ratio=loss_ratio, random_start=random_start)
        # validate eagerly (a bad option fails at construction, not at the first batch)
        EarlyStopPGD(torch.nn.Identity(), self.tasks, **self.kw)
        self.mean_steps = float("nan")

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, targets: Mapping[str, torch.Tensor]) -> torch.Tensor:
        atk = EarlyStopPGD(model, self.tasks, **self.kw)
        x_adv = atk(x, targets)
        self.mean_steps = float(atk.last_steps.float().mean()) if atk.last_steps is not None else float("nan")
        return x_adv

    def __repr__(self) -> str:
        return f"FATPerturb({', '.join(f'{k}={v!r}' for k, v in self.kw.items())})"
