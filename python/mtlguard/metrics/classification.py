"""Per-image classification metrics: accuracy and AUC-ROC (streaming accumulators)."""
from __future__ import annotations

import math

import torch


def auc_roc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve of one binary problem (Mann-Whitney U with average ranks for ties).

    Returns ``nan`` when ``labels`` holds a single class (AUC undefined).  Equals
    ``sklearn.metrics.roc_auc_score``.
    """
    s = scores.detach().reshape(-1).double().cpu()
    y = labels.detach().reshape(-1).cpu() > 0.5
    n_pos = int(y.sum())
    n_neg = y.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = torch.argsort(s)
    s_sorted = s[order]
    ranks = torch.empty_like(s)
    # average ranks of ties (1-based)
    _, inverse, counts = torch.unique_consecutive(s_sorted, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    avg = ends - (counts.double() - 1) / 2
    ranks[order] = avg[inverse]
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


class ClassificationMeter:
    """Accuracy (+ AUC for binary/multilabel) of one task, accumulated over batches.

    * ``binary``: output ``[B]`` logit, target ``[B]`` in {0,1}; accuracy at logit > 0; AUC of the logit.
    * ``multiclass``: output ``[B, C]``; accuracy of argmax; targets equal to ``ignore_index`` are skipped.
    * ``multilabel``: output/target ``[B, C]``; accuracy over all labels; AUC per label and their mean
      over labels that have both classes (``auc_labels`` counts them).
    """

    def __init__(self, kind: str, ignore_index: int = -1, want_auc: bool = True) -> None:
        if kind not in ("binary", "multiclass", "multilabel"):
            raise ValueError(f"ClassificationMeter: unsupported kind {kind!r}")
        self.kind, self.ignore_index, self.want_auc = kind, ignore_index, want_auc
        self.correct = 0
        self.total = 0
        self._scores: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    @torch.no_grad()
    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        output, target = output.detach().float(), target.detach()
        if self.kind == "multiclass":
            keep = target != self.ignore_index
            pred = output.argmax(1)
            self.correct += int((pred[keep] == target[keep]).sum())
            self.total += int(keep.sum())
            return
        out = output.reshape(target.shape)
        y = target.float()
        self.correct += int(((out > 0).float() == y).sum())
        self.total += y.numel()
        if self.want_auc:
            self._scores.append(out.cpu())
            self._labels.append(y.cpu())

    def compute(self) -> dict[str, float]:
        res = {"accuracy": self.correct / self.total if self.total else math.nan}
        if self.kind != "multiclass" and self.want_auc and self._scores:
            s, y = torch.cat(self._scores), torch.cat(self._labels)
            if self.kind == "binary":
                res["auc"] = auc_roc(s, y)
            else:
                per = [auc_roc(s[:, c], y[:, c]) for c in range(s.shape[1])]
                valid = [a for a in per if not math.isnan(a)]
                res["auc"] = sum(valid) / len(valid) if valid else math.nan
                res["auc_labels"] = float(len(valid))
                res["auc_per_label"] = per  # type: ignore[assignment]
        return res


class RegressionMeter:
    """Mean absolute error of a per-image regression task."""

    def __init__(self) -> None:
        self.abs_sum = 0.0
        self.n = 0

    @torch.no_grad()
    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        self.abs_sum += float((output.detach().float().reshape(target.shape) - target.float()).abs().sum())
        self.n += target.numel()

    def compute(self) -> dict[str, float]:
        return {"mae": self.abs_sum / self.n if self.n else math.nan}
