"""Per-task losses built from :class:`~mtlguard.data.tasks.TaskSpec`.

Every loss supports ``reduction="none"``, which returns one value **per sample** (``[B]``): the
attacks (GB-MTA Eq. 9 divides each task gradient by that sample's own loss) and the MTL-UE
generator need per-sample losses.  Dense losses average over the valid pixels of each sample.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from ..data.tasks import TaskSpec


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return per_sample
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    raise ValueError(f"unknown reduction {reduction!r}; expected 'none', 'mean' or 'sum'")


def _masked_pixel_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` [B, ...] over ``valid`` pixels of each sample (0 where none is valid)."""
    b = values.shape[0]
    v = (values * valid).reshape(b, -1).sum(1)
    n = valid.reshape(b, -1).sum(1).to(values.dtype)
    return v / n.clamp_min(1)


def task_loss(spec: TaskSpec, output: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Loss of one task (``spec.loss``) between a head output and its target.

    Shapes follow the table in :mod:`mtlguard.data.tasks`.
    """
    loss = spec.loss
    if loss == "ce":
        per = F.cross_entropy(output, target.long(), reduction="none", ignore_index=spec.ignore_index)
    elif loss == "bce":
        out = output.reshape(target.shape) if output.numel() == target.numel() else output
        per = F.binary_cross_entropy_with_logits(out, target.to(out.dtype), reduction="none")
        if per.dim() > 1:
            per = per.reshape(per.shape[0], -1).mean(1)
    elif loss == "pixel_ce":
        tgt = target.long()
        pix = F.cross_entropy(output, tgt, reduction="none", ignore_index=spec.ignore_index)
        per = _masked_pixel_mean(pix, (tgt != spec.ignore_index).to(pix.dtype))
    elif loss in ("l1", "mse"):
        if spec.kind == "depth":
            valid = (target > 0).to(output.dtype)
            diff = output - target
            pix = diff.abs() if loss == "l1" else diff.square()
            per = _masked_pixel_mean(pix, valid)
        else:
            out = output.reshape(target.shape)
            diff = out - target.to(out.dtype)
            per = diff.abs() if loss == "l1" else diff.square()
            if per.dim() > 1:
                per = per.reshape(per.shape[0], -1).mean(1)
    elif loss == "cosine":
        valid = (target.abs().sum(1, keepdim=True) > 0).to(output.dtype)
        pred = F.normalize(output, dim=1)
        tgt = F.normalize(target.to(output.dtype), dim=1)
        pix = 1.0 - (pred * tgt).sum(1, keepdim=True)
        per = _masked_pixel_mean(pix, valid)
    else:
        raise ValueError(f"task {spec.name!r}: unknown loss {loss!r}")
    return _reduce(per, reduction)


def multi_task_losses(
    tasks: Sequence[TaskSpec],
    outputs: Mapping[str, torch.Tensor],
    targets: Mapping[str, torch.Tensor],
    reduction: str = "mean",
) -> dict[str, torch.Tensor]:
    """``{task name: loss}`` for every task in ``tasks`` (missing outputs/targets raise KeyError)."""
    losses = {}
    for spec in tasks:
        if spec.name not in outputs:
            raise KeyError(f"model output has no entry for task {spec.name!r} (has {list(outputs)})")
        if spec.name not in targets:
            raise KeyError(f"targets have no entry for task {spec.name!r} (has {list(targets)})")
        losses[spec.name] = task_loss(spec, outputs[spec.name], targets[spec.name], reduction)
    return losses
