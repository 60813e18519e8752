"""RLW: random loss weighting (Lin et al., TMLR 2022, Alg. 2): ``w = softmax(lambda)``, ``lambda ~ N(0, I)``.

Fresh weights every batch; they are positive and sum to 1.  Sampled with the global torch RNG (seeded by
the Trainer per epoch, so runs are reproducible).  Equivalent to torchjd's ``RandomWeighting`` applied to
the loss vector, but done on losses so it costs a single backward.
"""
from __future__ import annotations

import torch

from .base import LossWeighting


class RLW(LossWeighting):
    name = "rlw"

    def loss_weights(self, losses):
        names = list(losses)
        w = torch.softmax(torch.randn(len(names)), dim=0)
        return {n: w[i] for i, n in enumerate(names)}
