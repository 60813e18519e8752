"""UW: uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018, Eq. 7 with ``s_k = log sigma_k^2``).

Loss ``sum_k exp(-s_k) L_k + s_k`` with learnable log-variances ``s_k`` (initialized at 0) trained by the
same optimizer as the model.  For fixed ``L_k`` the optimum is ``s_k = log L_k`` (d/ds: ``-e^{-s}L + 1 = 0``),
so each task's effective weight ``exp(-s_k)`` tends to ``1 / L_k``.  (LibMTL's variant halves both terms,
which has the same optimum.)
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .base import LossWeighting


class UW(LossWeighting):
    name = "uw"

    def __init__(self, task_names: Sequence[str]) -> None:
        if not task_names:
            raise ValueError("UW needs the task names (one learnable log-variance per task)")
        super().__init__(task_names)
        self.log_vars = nn.Parameter(torch.zeros(len(task_names)))

    def _s(self, name: str) -> torch.Tensor:
        return self.log_vars[self.task_names.index(name)]

    def loss_weights(self, losses):
        return {n: torch.exp(-self._s(n)) for n in losses}

    def extra_loss(self, losses):
        return sum(self._s(n) for n in losses)
