"""PCGrad (Yu et al., NeurIPS 2020, Alg. 1): project away conflicting gradient components.

For each task ``i`` (in random order over the others), whenever ``g_i^PC . g_j < 0`` the projection
``g_i^PC -= (g_i^PC . g_j) / ||g_j||^2 g_j`` is applied; the update is ``sum_i g_i^PC``.

We use :class:`torchjd.aggregation.PCGradWeighting` (torchjd 0.18): it performs exactly these
projections in Gramian space (the projected gradient is tracked as a weight vector over the original
``g_j``), and returns the summed weights, so ``G^T alpha = sum_i g_i^PC``.  Its random order uses the
global torch RNG (seeded by the Trainer).
"""
from __future__ import annotations

import torch
from torchjd.aggregation import PCGradWeighting

from .base import GradientWeighting


class PCGrad(GradientWeighting):
    name = "pcgrad"

    def __init__(self, task_names=None) -> None:
        super().__init__(task_names)
        self._w = PCGradWeighting()

    def gramian_weights(self, gramian: torch.Tensor) -> torch.Tensor:
        return self._w(gramian)
