"""Thin ``nn.Module`` wrappers fixing the exported signature ``(image, labels) -> (protected, delta)``."""
from __future__ import annotations

import torch
from torch import nn


class FloatIO(nn.Module):
    """``image`` float32 [N, C, H, W] in [0, 1], ``labels`` int64 [N, K] (-1 = unprotected)
    -> ``protected`` = clip(image + delta, 0, 1), ``delta`` (both float32 [N, C, H, W])."""

    def __init__(self, generator: nn.Module):
        super().__init__()
        self.generator = generator

    def forward(self, image: torch.Tensor, labels: torch.Tensor):
        protected, delta = self.generator(image, labels)
        return protected, delta


def example_inputs(facts, batch: int = 2, uint8_io: bool = False, device="cpu"):
    """Deterministic example inputs (batch >= 2 so the batch dimension is not specialised)."""
    h, w = facts.image_size
    g = torch.Generator().manual_seed(0)
    if uint8_io:
        image = torch.randint(0, 256, (batch, h, w, facts.in_channels), generator=g, dtype=torch.uint8)
    else:
        image = torch.rand(batch, facts.in_channels, h, w, generator=g)
    labels = torch.stack([torch.randint(-1, max(n, 1), (batch,), generator=g) for n in facts.num_classes], 1) \
        if facts.tasks else torch.zeros(batch, 0, dtype=torch.int64)
    return image.to(device), labels.to(torch.int64).to(device)
