"""LS: linear scalarization with uniform weights (MTL-UE Sec. 5.1, the default victim).

``sum_k L_k / K`` -- the update equals the mean of the task gradients.
"""
from __future__ import annotations

import torch

from .base import LossWeighting


class LS(LossWeighting):
    name = "ls"

    def loss_weights(self, losses):
        w = 1.0 / len(losses)
        return {n: torch.tensor(w) for n in losses}
