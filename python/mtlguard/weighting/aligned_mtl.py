"""Aligned-MTL (Senushkin et al., CVPR 2023, Alg. 1): align the task gradients' principal components.

With the Gramian ``M = G G^T = V Lambda V^T`` (rank ``R``), the balance transformation is
``B = sqrt(lambda_min) V Lambda^{-1/2} V^T``; the aligned gradient matrix ``G_hat = B G`` has all its
non-zero singular values equal to ``sqrt(lambda_min)`` (condition number 1) and the update is
``G_hat^T w`` for the preference vector ``w`` (uniform), i.e. task weights ``alpha = B w``.

We use :class:`torchjd.aggregation.AlignedMTLWeighting` (torchjd 0.18), adapted from the authors'
SamsungLabs/MTL code; it implements exactly the algorithm above (``scale_mode="min"`` = the paper's
``sqrt(lambda_min)``), checked line by line against Alg. 1.
"""
from __future__ import annotations

import torch
from torchjd.aggregation import AlignedMTLWeighting

from .base import GradientWeighting


class AlignedMTL(GradientWeighting):
    name = "aligned_mtl"

    def __init__(self, task_names=None, scale_mode: str = "min") -> None:
        super().__init__(task_names)
        self._w = AlignedMTLWeighting(scale_mode=scale_mode)

    def gramian_weights(self, gramian: torch.Tensor) -> torch.Tensor:
        return self._w(gramian)

    @staticmethod
    def balance_transformation(gramian: torch.Tensor) -> torch.Tensor:
        """``B`` of Alg. 1 (exposed for tests: ``B G`` has equal singular values)."""
        return AlignedMTLWeighting._compute_balance_transformation(gramian, "min")
