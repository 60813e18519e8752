"""APGD (Croce & Hein 2020) over any task aggregation; with ``aggregation="gbmta"`` this is GB-MTA-APGD
(GB-MTA Alg. 3).

Step-size schedule (Croce & Hein 2020, Sec. 3.2): checkpoints ``w_j = ceil(p_j * N_iter)`` with
``p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``; at a checkpoint the step size
``eta`` (initially ``2 * eps``) is halved and the iterate restarts from the best point ``x_max`` when

1. the objective increased in fewer than ``rho * (w_j - w_{j-1})`` of the steps since ``w_{j-1}``
   (``rho = 0.75``), or
2. the step size was not reduced at ``w_{j-1}`` and the best objective did not improve since then.

Both conditions, the step size and the best point are tracked **per sample** (as in the official
implementation).  Momentum: ``x_{k+1} = P(x_k + alpha (z_{k+1} - x_k) + (1 - alpha)(x_k - x_{k-1}))``
with ``alpha = 0.75`` (the first step has none).  The tracked objective is
:meth:`Aggregation.objective`: GB-MTA's relative loss ``sum_i (L_i(x') - L_i(x)) / L_i(x)`` for
``gbmta``/``wgd`` (Alg. 3 lines 4, 14; ``L_i(x)`` = clean loss), the loss sum for the baselines (Alg. 2).
"""
from __future__ import annotations

import math

import torch

from .base import Attack, _check_int, _check_scalar


def apgd_checkpoints(n_iter: int) -> list[int]:
    """Checkpoint iterations ``w_1 < w_2 < ... < n_iter`` (``w_0 = 0`` excluded)."""
    ps = [0.0, 0.22]
    while ps[-1] < 1.0:
        ps.append(ps[-1] + max(ps[-1] - ps[-2] - 0.03, 0.06))
    ws = sorted({math.ceil(round(p * n_iter, 9)) for p in ps[1:]})
    return [w for w in ws if 0 < w < n_iter]


class APGD(Attack):
    """Auto-PGD (linf and l2) with per-sample step sizes, checkpoints and best-point restarts.

    Args (beyond :class:`~mtlguard.attacks.base.Attack`):
        steps: ``N_iter`` iterations (gradient evaluations: ``steps + 1`` per restart).
        restarts: independent runs; the point with the best objective per sample is kept.
            Runs after the first always start from a random point.
        random_start: start the first run from a random point (Alg. 3 starts from ``x``).
        rho: condition-1 threshold (0.75); alpha: momentum weight (0.75).
        keep_points: also store the evaluated points in ``history`` (tests; memory heavy).
    """

    name = "APGD"

    def __init__(self, model, tasks, eps=8 / 255, steps=100, restarts=1, random_start=False,
                 rho=0.75, alpha=0.75, keep_points=False, **kw) -> None:
        super().__init__(model, tasks, eps=eps, **kw)
        self.steps = _check_int("steps", steps, 1)
        self.restarts = _check_int("restarts", restarts, 1)
        self.random_start = bool(random_start)
        self.rho = _check_scalar("rho", rho)
        self.alpha = _check_scalar("alpha", alpha)
        self.keep_points = bool(keep_points)
        self.checkpoints = apgd_checkpoints(self.steps)

    def perturb(self, x, y):
        self.begin(x, y)
        best, best_f = self.run_once(x, y, 0, self.random_start)
        for r in range(1, self.restarts):
            cand, f = self.run_once(x, y, r, True)
            better = f > best_f
            best = torch.where(_bmask(better, x), cand, best)
            best_f = torch.where(better, f, best_f)
        return best

    def run_once(self, x, y, restart: int, random_start: bool):
        mask = lambda m: _bmask(m, x)  # noqa: E731
        b = x.shape[0]
        x_cur = self.random_init(x) if random_start else x.clone()
        losses, grads = self.losses_and_grads(x_cur, y)
        f = self.objective(losses)
        d = self.direction(grads, losses)
        x_best, f_best, d_best = x_cur.clone(), f.clone(), d.clone()
        f_hist = [f]
        eta = torch.full((b,), 2.0 * self.eps, device=x.device, dtype=x.dtype)
        ckpts = set(self.checkpoints)
        last_w = 0
        f_best_last = f_best.clone()
        reduced_last = torch.zeros(b, dtype=torch.bool, device=x.device)
        self._log(restart=restart, it=0, eta=eta, f=f, f_best=f_best, checkpoint=False,
                  reduced=torch.zeros_like(reduced_last), **({"x": x_cur, "x_base": x_cur} if self.keep_points else {}))
        x_prev = x_cur
        x_cur = self.step(x_cur, x, d, eta)  # x^(1): no momentum
        for k in range(1, self.steps + 1):
            losses, grads = self.losses_and_grads(x_cur, y)
            f = self.objective(losses)
            d = self.direction(grads, losses)
            f_hist.append(f)
            up = f > f_best
            x_best = torch.where(mask(up), x_cur, x_best)
            d_best = torch.where(mask(up), d, d_best)
            f_best = torch.where(up, f, f_best)
            x_eval = x_cur
            is_ckpt = k in ckpts and k < self.steps
            reduce = torch.zeros_like(reduced_last)
            if is_ckpt:
                succ = torch.stack([f_hist[i + 1] > f_hist[i] for i in range(last_w, k)]).sum(0)
                cond1 = succ.to(x.dtype) < self.rho * (k - last_w)
                cond2 = (~reduced_last) & (f_best <= f_best_last)
                reduce = cond1 | cond2
                eta = torch.where(reduce, eta / 2, eta)
                x_cur = torch.where(mask(reduce), x_best, x_cur)
                d = torch.where(mask(reduce), d_best, d)
                reduced_last, f_best_last, last_w = reduce, f_best.clone(), k
            self._log(restart=restart, it=k, eta=eta, f=f, f_best=f_best, checkpoint=is_ckpt, reduced=reduce,
                      **({"x": x_eval, "x_base": x_cur} if self.keep_points else {}))
            if k == self.steps:
                break
            z = self.step(x_cur, x, d, eta)
            x_new = self.project(x, x_cur + self.alpha * (z - x_cur) + (1 - self.alpha) * (x_cur - x_prev))
            x_prev, x_cur = x_cur, x_new
        return x_best, f_best


def _bmask(m: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return m.reshape((-1,) + (1,) * (like.dim() - 1))
