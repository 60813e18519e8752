"""Differentiable training augmentation (RandomCrop with zero padding + RandomHorizontalFlip, A.2).

The official MTL-UE code optimizes the perturbation through the victims' training transform, so
the learned shortcut survives crops and flips.  Per-sample shifts/flips are drawn from ``rng``.
"""
from __future__ import annotations

import torch


def differentiable_augment(x: torch.Tensor, rng: torch.Generator | None = None, pad: int | None = None,
                           flip: bool = True) -> torch.Tensor:
    """Random crop (pad ``pad`` = H//8 by default, zeros) and horizontal flip of ``x`` [B, C, H, W]."""
    b, c, h, w = x.shape
    p = max(1, h // 8) if pad is None else int(pad)
    dev = x.device
    if p > 0:
        xp = torch.nn.functional.pad(x, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (b,), generator=rng).to(dev)
        dx = torch.randint(0, 2 * p + 1, (b,), generator=rng).to(dev)
        iy = torch.arange(h, device=dev)[None, :] + dy[:, None]  # [B, H]
        ix = torch.arange(w, device=dev)[None, :] + dx[:, None]  # [B, W]
        bi = torch.arange(b, device=dev)[:, None, None]
        x = xp.permute(0, 2, 3, 1)[bi, iy[:, :, None], ix[:, None, :]].permute(0, 3, 1, 2)
    if flip:
        f = (torch.rand(b, generator=rng) < 0.5).to(dev)
        x = torch.where(f[:, None, None, None], x.flip(3), x)
    return x
