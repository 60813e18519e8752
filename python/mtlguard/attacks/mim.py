"""MIM, momentum iterative method (Dong et al. 2018) over any task aggregation."""
from __future__ import annotations

import torch

from .base import Attack, _check_int, _check_scalar, normalize_l2


class MIM(Attack):
    """``m_{k+1} = mu * m_k + a_k / mean|a_k|``, ``x_{k+1} = P(x_k + step_size * sign(m_{k+1}))``.

    ``a_k`` is the *un-signed* aggregate of the task gradients (:meth:`Aggregation.vector`, e.g.
    ``sum_i g_i / L_i`` for GB-MTA) because momentum needs magnitudes; the final sign is taken of the
    momentum (l2: ``m / ||m||_2``).  No random start (as in the original MIM).
    """

    name = "MIM"

    def __init__(self, model, tasks, eps=8 / 255, steps=10, step_size=None, decay=1.0, **kw) -> None:
        super().__init__(model, tasks, eps=eps, **kw)
        self.steps = _check_int("steps", steps, 1)
        self.step_size = self.eps / self.steps if step_size is None else _check_scalar("step_size", step_size)
        self.decay = _check_scalar("decay", decay)

    def perturb(self, x, y):
        self.begin(x, y)
        x_adv = x.clone()
        mom = torch.zeros_like(x, dtype=torch.float32 if x.dtype != torch.float64 else x.dtype)
        for k in range(self.steps):
            losses, grads = self.losses_and_grads(x_adv, y)
            a = self.aggregation.vector(grads, losses)
            l1 = a.abs().flatten(1).mean(1).reshape((-1,) + (1,) * (x.dim() - 1)).clamp_min(1e-12)
            mom = self.decay * mom + a / l1
            self._log(it=k, objective=self.objective(losses))
            d = torch.sign(mom).to(torch.int8) if self.norm == "linf" else normalize_l2(mom).to(x.dtype)
            x_adv = self.step(x_adv, x, d, self.step_size)
        return x_adv
