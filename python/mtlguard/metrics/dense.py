"""Dense-prediction metrics (GB-MTA appendix "Evaluation Metrics"; MTL-UE Sec. 5.1 for NYUv2).

* segmentation: mIoU (mean over classes present in prediction or target) and pixel accuracy, from a
  streaming confusion matrix; ``ignore_index`` pixels are skipped.
* depth: absolute error ``mean|p - g|``, relative error ``mean |p - g| / g`` and
  ``delta_k = frac(max(p/g, g/p) < 1.25^k)``, k = 1, 2, 3, over valid pixels (``g > 0``), pooled over
  all pixels of the split.
* normals: angle between prediction and target (degrees) over valid pixels (target norm > 0):
  mean, median, and the fraction within 11.25 / 22.5 / 30 degrees.  The median comes from a
  0.01-degree histogram (exact to 0.01 degree) so evaluation is one streaming pass.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class SegmentationMeter:
    def __init__(self, num_classes: int, ignore_index: int = -1) -> None:
        self.C, self.ignore_index = int(num_classes), ignore_index
        self.confusion = torch.zeros(self.C, self.C, dtype=torch.int64)  # [target, pred]

    @torch.no_grad()
    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        pred = output.detach().argmax(1) if output.dim() == target.dim() + 1 else output.detach()
        t = target.detach().reshape(-1).long()
        p = pred.reshape(-1).long()
        keep = (t != self.ignore_index) & (t >= 0) & (t < self.C)
        idx = t[keep] * self.C + p[keep]
        self.confusion += torch.bincount(idx.cpu(), minlength=self.C * self.C).reshape(self.C, self.C)

    def compute(self) -> dict[str, float]:
        cm = self.confusion.double()
        tp = cm.diag()
        union = cm.sum(0) + cm.sum(1) - tp
        present = union > 0
        miou = float((tp[present] / union[present]).mean()) if present.any() else math.nan
        total = cm.sum()
        return {"miou": miou, "pixel_acc": float(tp.sum() / total) if total > 0 else math.nan}


class DepthMeter:
    def __init__(self) -> None:
        self.abs_sum = self.rel_sum = 0.0
        self.within = [0, 0, 0]
        self.n = 0

    @torch.no_grad()
    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        p, g = output.detach().float(), target.detach().float()
        valid = g > 0
        p, g = p[valid], g[valid]
        err = (p - g).abs()
        self.abs_sum += float(err.sum())
        self.rel_sum += float((err / g).sum())
        ratio = torch.maximum(p / g, g / p.clamp_min(1e-12))
        for k in range(3):
            self.within[k] += int((ratio < 1.25 ** (k + 1)).sum())
        self.n += int(valid.sum())

    def compute(self) -> dict[str, float]:
        if self.n == 0:
            return {"abs_err": math.nan, "rel_err": math.nan, "delta1": math.nan, "delta2": math.nan,
                    "delta3": math.nan}
        return {"abs_err": self.abs_sum / self.n, "rel_err": self.rel_sum / self.n,
                **{f"delta{k + 1}": self.within[k] / self.n for k in range(3)}}


class NormalMeter:
    BINS_PER_DEGREE = 100

    def __init__(self) -> None:
        self.hist = torch.zeros(180 * self.BINS_PER_DEGREE + 1, dtype=torch.int64)
        self.sum = 0.0
        self.n = 0
        self.within = {11.25: 0, 22.5: 0, 30.0: 0}

    @torch.no_grad()
    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        t = target.detach().float()
        valid = t.norm(dim=1) > 0
        cos = (F.normalize(output.detach().float(), dim=1) * F.normalize(t, dim=1)).sum(1).clamp(-1, 1)
        ang = torch.rad2deg(torch.acos(cos[valid])).cpu().double()
        self.sum += float(ang.sum())
        self.n += ang.numel()
        for thr in self.within:
            self.within[thr] += int((ang < thr).sum())
        bins = torch.round(ang * self.BINS_PER_DEGREE).long().clamp(0, self.hist.numel() - 1)
        self.hist += torch.bincount(bins, minlength=self.hist.numel())

    def compute(self) -> dict[str, float]:
        if self.n == 0:
            return {k: math.nan for k in ("mean_angle", "median_angle", "within_11.25", "within_22.5", "within_30")}
        cdf = torch.cumsum(self.hist, 0)
        # lower median (the ceil(n/2)-th smallest angle), at histogram resolution
        med_bin = int(torch.searchsorted(cdf, torch.tensor((self.n + 1) // 2)))
        res = {"mean_angle": self.sum / self.n, "median_angle": med_bin / self.BINS_PER_DEGREE}
        for thr, c in self.within.items():
            res[f"within_{thr:g}"] = c / self.n
        return res
