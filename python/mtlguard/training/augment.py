"""Batch-level RandomCrop(padding) + RandomHorizontalFlip applied identically to images and dense targets.

MTL-UE A.2 trains every victim with RandomCrop and RandomHorizontalFlip.  Here both are one gather per
tensor: each sample gets a crop offset ``(oy, ox)`` in ``[0, 2*pad]`` and a flip bit, and every tensor
of the batch (image, segmentation, depth, normals) is cropped/flipped with the same indices.  Padding
values: 0 for images; ``ignore_index`` for segmentation; 0 (= invalid) for depth and normals, so padded
pixels never count in losses or metrics.  A horizontal flip negates the x component (channel 0) of
surface normals.  Per-image targets (classes, multilabel, regression) are unchanged.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from ..data.tasks import TaskSpec


def _gather(t: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, pad: int, value: float) -> torch.Tensor:
    """``t`` [B, C, H, W] -> padded, then ``out[b, c, i, j] = padded[b, c, rows[b, i], cols[b, j]]``."""
    if pad:
        t = F.pad(t, (pad, pad, pad, pad), value=value)
    b = torch.arange(t.shape[0], device=t.device)[:, None, None]
    out = t.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous()


def crop_flip_indices(batch: int, size: tuple[int, int], pad: int, flip: bool,
                      generator: torch.Generator | None = None, device=None):
    """Random ``(rows [B, H], cols [B, W], flipped [B] bool)`` into the padded image."""
    h, w = size
    oy = torch.randint(0, 2 * pad + 1, (batch,), generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (batch,), generator=generator)
    flipped = (torch.rand(batch, generator=generator) < 0.5) if flip else torch.zeros(batch, dtype=torch.bool)
    ar_h, ar_w = torch.arange(h), torch.arange(w)
    rows = oy[:, None] + ar_h[None]
    cols = torch.where(flipped[:, None], ox[:, None] + (w - 1 - ar_w)[None], ox[:, None] + ar_w[None])
    return rows.to(device), cols.to(device), flipped.to(device)


def random_crop_flip(images: torch.Tensor, targets: Mapping[str, torch.Tensor], tasks: Sequence[TaskSpec],
                     padding: int = 4, flip: bool = True, generator: torch.Generator | None = None):
    """Augment a batch; returns ``(images, targets)`` (new tensors; inputs untouched).

    ``generator`` (CPU) makes the draw reproducible (the Trainer seeds one per epoch).
    """
    if images.dim() != 4:
        raise ValueError(f"images must be [B, C, H, W], got {tuple(images.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    bsz, _, h, w = images.shape
    rows, cols, flipped = crop_flip_indices(bsz, (h, w), padding, flip, generator, images.device)
    out_img = _gather(images, rows, cols, padding, 0.0)
    out_t = dict(targets)
    for spec in tasks:
        if not spec.is_dense or spec.name not in targets:
            continue
        t = targets[spec.name]
        if spec.kind == "segmentation":
            if t.shape[-2:] != (h, w):
                raise ValueError(f"task {spec.name!r}: target {tuple(t.shape)} does not match image size {(h, w)}")
            out_t[spec.name] = _gather(t.unsqueeze(1), rows, cols, padding, float(spec.ignore_index)).squeeze(1)
        else:
            if t.shape[-2:] != (h, w):
                raise ValueError(f"task {spec.name!r}: target {tuple(t.shape)} does not match image size {(h, w)}")
            g = _gather(t, rows, cols, padding, 0.0)
            if spec.kind == "normal":
                sign = torch.where(flipped, -1.0, 1.0).to(g.dtype)
                g[:, 0] = g[:, 0] * sign[:, None, None]
            out_t[spec.name] = g
    return out_img, out_t
