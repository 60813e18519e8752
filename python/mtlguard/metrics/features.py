"""Relative intra-class feature std (MTL-UE Sec. 4.2, Table 1).

For the encoder features ``z in R^D`` and each dimension ``d``:
``r_d = 1 / (sum_k C_k) * sum_k sum_{y^k} std[z_d | y^k] / E[z_d | y^k]``; Table 1 reports the average
and maximum of ``r_d`` over ``d``.  Streaming: per (task, class) sums and sums of squares.
Conventions (not stated by the paper): ``std`` is the unbiased sample std; classes with fewer than two
samples are skipped (and not counted in ``sum_k C_k``); a (class, dim) with ``E = 0`` (a dead ReLU unit)
contributes nothing to ``r_d`` and a dim whose all class means are 0 is ``nan`` and excluded from the
average/max.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch


class IntraClassStdMeter:
    def __init__(self, num_classes: Sequence[int]) -> None:
        self.num_classes = [int(c) for c in num_classes]
        self.sums: list[torch.Tensor] | None = None
        self.sqs: list[torch.Tensor] | None = None
        self.counts = [torch.zeros(c, dtype=torch.float64) for c in self.num_classes]

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """``features`` [B, D]; ``labels`` [B, K] int64 class labels (``-1`` = unlabeled, skipped)."""
        z = features.detach().double().cpu().reshape(features.shape[0], -1)
        labels = labels.detach().cpu().long().reshape(z.shape[0], -1)
        if labels.shape[1] != len(self.num_classes):
            raise ValueError(f"labels have {labels.shape[1]} tasks, meter built for {len(self.num_classes)}")
        if self.sums is None:
            self.sums = [torch.zeros(c, z.shape[1], dtype=torch.float64) for c in self.num_classes]
            self.sqs = [torch.zeros(c, z.shape[1], dtype=torch.float64) for c in self.num_classes]
        for k, c in enumerate(self.num_classes):
            y = labels[:, k]
            keep = (y >= 0) & (y < c)
            if (y[keep] >= c).any():
                raise ValueError(f"task {k}: label >= {c}")
            self.sums[k].index_add_(0, y[keep], z[keep])
            self.sqs[k].index_add_(0, y[keep], z[keep] ** 2)
            self.counts[k] += torch.bincount(y[keep], minlength=c).double()

    def per_dim(self) -> torch.Tensor:
        if self.sums is None:
            raise ValueError("IntraClassStdMeter: no features seen")
        ratios, n_classes = 0.0, 0
        valid_any = None
        for s, q, n in zip(self.sums, self.sqs, self.counts):
            ok = n >= 2
            n_classes += int(ok.sum())
            n_ = n[ok].unsqueeze(1)
            mean = s[ok] / n_
            var = ((q[ok] - n_ * mean ** 2) / (n_ - 1)).clamp_min(0)
            nz = mean != 0
            r = torch.where(nz, var.sqrt() / torch.where(nz, mean, torch.ones_like(mean)), torch.zeros_like(mean))
            ratios = ratios + r.sum(0)
            v = nz.any(0)
            valid_any = v if valid_any is None else valid_any | v
        if n_classes == 0:
            raise ValueError("IntraClassStdMeter: no class has two samples")
        out = ratios / n_classes
        return torch.where(valid_any, out, torch.full_like(out, math.nan))

    def compute(self) -> dict[str, float]:
        r = self.per_dim()
        ok = ~torch.isnan(r)
        return {"average": float(r[ok].mean()), "maximum": float(r[ok].max()), "dims": int(ok.sum())}


@torch.no_grad()
def intra_class_std(model, loader, tasks, device="cpu") -> dict[str, float]:
    """Table 1 statistic of ``model.features`` over a loader, using its classification tasks' labels."""
    cls = [t for t in tasks if t.is_classification]
    if not cls:
        raise ValueError("intra_class_std needs at least one binary/multiclass task")
    meter = IntraClassStdMeter([t.num_classes for t in cls])
    model.eval()
    for x, y in loader:
        z = model.features(x.to(device))
        meter.update(z, torch.stack([y[t.name].reshape(-1).long() for t in cls], 1))
    return meter.compute()
