"""The task-weighting interface (LibMTL style: one small class per strategy).

A :class:`Weighting` turns the per-task losses of one batch into gradients on the model's parameters:

    weights = strategy.backward(losses, shared_params)   # fills .grad, returns {task: weight}

* **loss-based** strategies (LS, UW, RLW) back-propagate a weighted sum ``sum_k w_k L_k`` once;
* **gradient-based** strategies (Aligned-MTL, FairGrad, PCGrad) compute the per-task gradients of the
  shared parameters ``G = [g_1 .. g_K]`` (one backward per task, as LibMTL does), combine them into
  the shared update ``G @ alpha``, and leave the task-specific heads with the plain gradient of their
  own loss (each head only sees its task's loss).  ``weights`` then reports ``alpha``.

Strategies with learnable state (UW's log-variances) are ``nn.Module`` parameters: the Trainer adds
``strategy.parameters()`` to the optimizer and saves ``strategy.state_dict()`` in checkpoints.

``scale`` is the AMP loss scale (fp16 ``GradScaler``): losses are multiplied by it before backward;
gradient-based strategies compute their weights on unscaled gradients.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn as nn


def _check_losses(losses: Mapping[str, torch.Tensor], task_names: Sequence[str] | None) -> list[str]:
    names = list(losses)
    if not names:
        raise ValueError("no task losses given")
    if task_names is not None and set(names) != set(task_names):
        raise KeyError(f"losses for tasks {sorted(names)} but the strategy was built for {sorted(task_names)}")
    for n, v in losses.items():
        if v.dim() != 0:
            raise ValueError(f"loss of task {n!r} must be a scalar, got shape {tuple(v.shape)}")
    return names


class Weighting(nn.Module):
    """Base class.  Subclasses implement :meth:`backward`."""

    name = "base"
    gradient_based = False

    def __init__(self, task_names: Sequence[str] | None = None) -> None:
        super().__init__()
        self.task_names = list(task_names) if task_names is not None else None

    def backward(self, losses: Mapping[str, torch.Tensor], shared_params: Sequence[torch.Tensor],
                 scale: float = 1.0) -> dict[str, float]:  # pragma: no cover - abstract
        raise NotImplementedError


class LossWeighting(Weighting):
    """Back-propagate ``sum_k w_k L_k (+ extra)`` once; subclasses give :meth:`loss_weights`."""

    def loss_weights(self, losses: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def extra_loss(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor | float:
        return 0.0

    def backward(self, losses, shared_params=(), scale: float = 1.0) -> dict[str, float]:
        names = _check_losses(losses, self.task_names)
        w = self.loss_weights(losses)
        total = sum(w[n] * losses[n] for n in names) + self.extra_loss(losses)
        (total * scale).backward()
        return {n: float(w[n].detach()) if torch.is_tensor(w[n]) else float(w[n]) for n in names}


class GradientWeighting(Weighting):
    """Combine the per-task gradients of the shared parameters with weights from the Gramian ``G^T G``."""

    gradient_based = True

    def gramian_weights(self, gramian: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, losses, shared_params: Sequence[torch.Tensor], scale: float = 1.0) -> dict[str, float]:
        names = _check_losses(losses, self.task_names)
        if shared_params is None:
            raise ValueError(f"{self.name}: gradient-based weighting needs the model's shared parameters")
        params = [p for p in shared_params if p.requires_grad]
        if not params:
            # nothing is shared (e.g. a branched model with every task on its own branch): no parameter gets
            # two tasks' gradients, so there is nothing to combine -- each task trains its own parameters
            (sum(losses[n] for n in names) * scale).backward()
            return {n: 1.0 for n in names}
        for p in params:  # shared grads are rebuilt below; heads accumulate their own loss's gradient
            p.grad = None
        rows = []
        for i, n in enumerate(names):
            (losses[n] * scale).backward(retain_graph=i < len(names) - 1)
            rows.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
                                   for p in params]) / scale)
            for p in params:
                p.grad = None
        G = torch.stack(rows)  # [K, P]
        alpha = self.gramian_weights((G @ G.T).double()).to(G.dtype)
        shared = (alpha @ G) * scale
        offset = 0
        for p in params:
            k = p.numel()
            p.grad = shared[offset:offset + k].view_as(p).to(p.dtype)
            offset += k
        return {n: float(a) for n, a in zip(names, alpha)}

    def aggregate(self, G: torch.Tensor) -> torch.Tensor:
        """The shared update ``G^T alpha`` for a gradient matrix ``G`` [K, P] (used by tests/analysis)."""
        alpha = self.gramian_weights((G @ G.T).double()).to(G.dtype)
        return alpha @ G
