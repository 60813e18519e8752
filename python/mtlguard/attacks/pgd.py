"""PGD (Madry et al. 2018) over any task aggregation, with random start and restarts (GB-MTA Eq. 2, 4)."""
from __future__ import annotations

import torch

from .base import Attack, _check_int, _check_scalar


class PGD(Attack):
    """Projected gradient ascent: ``x_{k+1} = P(x_k + step_size * d(x_k))``.

    Args (beyond :class:`~mtlguard.attacks.base.Attack`):
        steps: iterations per restart.
        step_size: step length (linf: per-coordinate; l2: L2 length).  Default ``2.5 * eps / steps``.
        random_start: start from a uniform point of the eps-ball (else from ``x``).
        restarts: independent runs; the result keeps, per sample, the final iterate with the highest
            attack objective (:meth:`Aggregation.objective`: GB-MTA's relative loss for
            ``gbmta``/``wgd``, the (weighted) loss sum otherwise).  With ``restarts=1`` the final
            iterate is returned as is (plain PGD).
    """

    name = "PGD"

    def __init__(self, model, tasks, eps=8 / 255, steps=10, step_size=None, random_start=True,
                 restarts=1, **kw) -> None:
        super().__init__(model, tasks, eps=eps, **kw)
        self.steps = _check_int("steps", steps, 1)
        self.step_size = 2.5 * self.eps / self.steps if step_size is None else _check_scalar("step_size", step_size)
        self.random_start = bool(random_start)
        self.restarts = _check_int("restarts", restarts, 1)

    def run_once(self, x, y, restart: int = 0) -> torch.Tensor:
        x_adv = self.random_init(x) if self.random_start else x.clone()
        for k in range(self.steps):
            losses, grads = self.losses_and_grads(x_adv, y)
            self._log(restart=restart, it=k, objective=self.objective(losses))
            x_adv = self.step(x_adv, x, self.direction(grads, losses), self.step_size)
        return x_adv

    def perturb(self, x, y):
        self.begin(x, y)
        best = self.run_once(x, y, 0)
        if self.restarts == 1:
            return best
        best_obj = self.objective(self.losses(best, y))
        for r in range(1, self.restarts):
            cand = self.run_once(x, y, r)
            obj = self.objective(self.losses(cand, y))
            better = obj > best_obj
            best = torch.where(better.reshape((-1,) + (1,) * (x.dim() - 1)), cand, best)
            best_obj = torch.where(better, obj, best_obj)
        return best
