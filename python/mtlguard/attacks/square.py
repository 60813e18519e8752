"""Square Attack (Andriushchenko et al., ECCV 2020), L-inf, score-based black box, over any task aggregation.

The attack only queries the model's outputs (no gradients).  It starts from vertical stripes of
``+-eps`` (one random sign per column and channel) and at every query draws a square window of side
``s = round(sqrt(p * H * W))`` at a random position and a random ``+-eps`` per channel for it; the candidate
is kept for a sample when it increases the attack objective.  ``p`` follows the paper's schedule (``p_init``
halved at iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 of 10,000, rescaled to ``n_queries``).

The objective is :meth:`~mtlguard.attacks.aggregation.Aggregation.objective` (the paper uses the margin
loss of one classifier): the loss sum for ``total`` / ``signtotal`` / ``single:X``, the weighted sum for
``weighted``, GB-MTA's relative loss ``sum_i (L_i(x') - L_i(x)) / L_i(x)`` for ``gbmta`` and the WGD
variants -- so the same aggregations as the white-box attacks, and it needs no gradient at all.
"""
from __future__ import annotations

import math

import torch

from .base import Attack, _check_int, _check_scalar


def p_selection(p_init: float, it: int, n_queries: int) -> float:
    """The paper's schedule of the square's area fraction at query ``it`` of ``n_queries``."""
    it = int(it / n_queries * 10000)
    for bound, div in ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128),
                       (8000, 256)):
        if it <= bound:
            return p_init / div
    return p_init / 512


class Square(Attack):
    """Square Attack, L-inf.  ``n_queries``: model evaluations after the initial one; ``p_init``: 0.8.

    ``self.last_queries`` = number of forward passes of the last call; the result keeps, per sample, the
    best point found (the objective never decreases).
    """

    name = "Square"

    def __init__(self, model, tasks, eps=8 / 255, n_queries: int = 100, p_init: float = 0.8, **kw) -> None:
        if str(kw.get("norm", "linf")).lower() not in ("linf", "inf"):
            raise ValueError("Square: only the L-inf version is implemented (norm='linf')")
        super().__init__(model, tasks, eps=eps, **kw)
        self.n_queries = _check_int("n_queries", n_queries, 1)
        self.p_init = _check_scalar("p_init", p_init, strict=True)
        if self.p_init > 1:
            raise ValueError(f"p_init must be in (0, 1], got {p_init}")
        self.last_queries = 0

    def _rand(self, shape, x):
        return torch.rand(shape, generator=self._gen, device=x.device, dtype=x.dtype)

    def _signs(self, shape, x):
        return torch.where(self._rand(shape, x) < 0.5, -1.0, 1.0).to(x.dtype)

    def perturb(self, x, y):
        self.begin(x, y)
        b, c, h, w = x.shape
        eps = self.eps
        x_best = (x + eps * self._signs((b, c, 1, w), x)).clamp(0, 1)  # vertical stripes
        f_best = self.objective(self.losses(x_best, y))
        queries = 1
        for i in range(self.n_queries):
            p = p_selection(self.p_init, i, self.n_queries)
            s = max(int(round(math.sqrt(p * h * w))), 1)
            s = min(s, h - 1 if h > 1 else 1, w - 1 if w > 1 else 1)
            vh = torch.randint(0, h - s + 1, (b,), generator=self._gen, device=x.device)
            vw = torch.randint(0, w - s + 1, (b,), generator=self._gen, device=x.device)
            rows = torch.arange(h, device=x.device)[None, :]
            cols = torch.arange(w, device=x.device)[None, :]
            win = (((rows >= vh[:, None]) & (rows < vh[:, None] + s))[:, :, None]
                   & ((cols >= vw[:, None]) & (cols < vw[:, None] + s))[:, None, :])[:, None]  # [B, 1, H, W]
            delta = x_best - x
            new = eps * self._signs((b, c, 1, 1), x)
            # resample channels whose window would not change (delta already equal there), as the paper
            same = ((delta - new).abs() < 1e-7) | ~win
            unchanged = same.flatten(2).all(2)  # [B, C]
            if bool(unchanged.any()):
                new = torch.where(unchanged[:, :, None, None], -new, new)
            cand = (x + torch.where(win, new, delta)).clamp(0, 1)
            f = self.objective(self.losses(cand, y))
            queries += 1
            better = f > f_best
            x_best = torch.where(better.reshape(-1, 1, 1, 1), cand, x_best)
            f_best = torch.where(better, f, f_best)
            self._log(it=i, p=p, side=s, f_best=f_best)
        self.last_queries = queries
        return x_best
