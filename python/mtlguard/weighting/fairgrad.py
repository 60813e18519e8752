"""FairGrad (Ban & Ji, ICML 2024, Eq. 4 / Alg. 1): alpha-fair resource allocation across tasks.

The task weights ``w > 0`` solve ``G G^T w = w^{-1/alpha}`` (elementwise power), i.e. each task's utility
(the inner product of its gradient with the update ``d = G^T w``) equals ``w_k^{-1/alpha}``.  ``alpha=0``
is LS, ``alpha=1`` proportional fairness, ``alpha -> inf`` max-min fairness.  MTL-UE does not state
alpha; we default to ``alpha=2`` (an assumption: pass ``alpha=`` to change it).

We use :class:`torchjd.aggregation.FairGradWeighting` (torchjd 0.18), adapted from the authors' code:
it solves the same nonlinear system with ``scipy.optimize.least_squares`` (bounds ``w >= 0``) started
at the uniform vector, and returns ``w``; the shared update is ``G^T w``.  Checked against Eq. 4.
"""
from __future__ import annotations

import torch
from torchjd.aggregation import FairGradWeighting

from .base import GradientWeighting


class FairGrad(GradientWeighting):
    name = "fairgrad"

    def __init__(self, task_names=None, alpha: float = 2.0, max_iters: int | None = None) -> None:
        super().__init__(task_names)
        if alpha < 0:
            raise ValueError(f"FairGrad alpha must be >= 0, got {alpha}")
        self.alpha = float(alpha)
        self._w = FairGradWeighting(alpha=self.alpha, max_iters=max_iters)

    def gramian_weights(self, gramian: torch.Tensor) -> torch.Tensor:
        return self._w(gramian)
