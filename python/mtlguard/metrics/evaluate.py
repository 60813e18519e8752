"""One-pass evaluation of a multi-task model over a loader: ``evaluate(model, tasks, loader, device)``."""
from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Sequence

import torch
from tqdm.auto import tqdm

from ..data.tasks import TaskSpec
from .classification import ClassificationMeter, RegressionMeter
from .dense import DepthMeter, NormalMeter, SegmentationMeter


def build_meter(spec: TaskSpec):
    """The streaming meter for ``spec.kind``."""
    if spec.kind in ("binary", "multiclass", "multilabel"):
        return ClassificationMeter(spec.kind, spec.ignore_index, want_auc="auc" in spec.metrics or spec.kind != "multiclass")
    if spec.kind == "segmentation":
        return SegmentationMeter(spec.num_classes, spec.ignore_index)
    if spec.kind == "depth":
        return DepthMeter()
    if spec.kind == "normal":
        return NormalMeter()
    if spec.kind == "regression":
        return RegressionMeter()
    raise ValueError(f"task {spec.name!r}: no meter for kind {spec.kind!r}")


class MultiTaskMeter:
    """A meter per task: ``update(outputs, targets)``; ``compute() -> {task: {metric: value}, "average": ...}``."""

    def __init__(self, tasks: Sequence[TaskSpec]) -> None:
        self.tasks = tuple(tasks)
        self.meters = {t.name: build_meter(t) for t in self.tasks}

    def update(self, outputs, targets) -> None:
        for t in self.tasks:
            self.meters[t.name].update(outputs[t.name], targets[t.name])

    def compute(self, with_average: bool = True) -> dict:
        res = {t.name: self.meters[t.name].compute() for t in self.tasks}
        if with_average:
            res["average"] = average_metrics(res)
        return res


def average_metrics(results: dict) -> dict[str, float]:
    """Mean of each metric over the tasks that report it (nan entries skipped)."""
    acc: dict[str, list[float]] = {}
    for task, ms in results.items():
        if task == "average":
            continue
        for m, v in ms.items():
            if isinstance(v, (int, float)) and not math.isnan(v) and m != "auc_labels":
                acc.setdefault(m, []).append(float(v))
    return {m: sum(v) / len(v) for m, v in acc.items()}


@torch.no_grad()
def evaluate(model: torch.nn.Module, tasks: Sequence[TaskSpec], loader, device: str | torch.device = "cpu",
             amp: bool = False, transform=None, progress: bool = False, with_average: bool = True) -> dict:
    """``{task: {metric: value}}`` over ``loader`` (one pass), plus ``"average"`` (mean per metric).

    ``transform(images) -> images`` is applied to each batch first (e.g. an ISS defense or an attack
    wrapper that needs no gradients).  ``amp`` uses bf16 autocast on CUDA.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    meter = MultiTaskMeter(tasks)
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if (amp and device.type == "cuda") else nullcontext()
    for x, y in tqdm(loader, desc="eval", leave=False, disable=not progress):
        x = x.to(device, non_blocking=True)
        if transform is not None:
            x = transform(x)
        with ctx:
            out = model(x)
        meter.update({k: v.float() for k, v in out.items()}, {k: v.to(device) for k, v in y.items()})
    model.train(was_training)
    return meter.compute(with_average)
