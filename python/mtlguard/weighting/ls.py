"""LS: linear scalarization (MTL-UE Sec. 5.1, the default victim), uniform or with static task weights.

``sum_k w_k L_k`` with ``w_k = 1 / K`` by default: the update equals the mean of the task gradients.
``task_weights={"age": 2, "gender": 1}`` gives non-uniform static weights (Ghamizi et al.'s weighted models,
``L = sum_i w_i L_i``): tasks left out weigh 1, and the weights are normalized to sum to 1
(``w_k = u_k / sum_j u_j``), so uniform weights give exactly the default LS and the loss keeps its scale.
"""
from __future__ import annotations

import math
from typing import Mapping

import torch

from .base import LossWeighting


def parse_task_weights(text: str) -> dict[str, float]:
    """``"age=2,gender=1"`` -> ``{"age": 2.0, "gender": 1.0}`` (``ValueError`` naming the bad item)."""
    out: dict[str, float] = {}
    for item in (s.strip() for s in str(text).split(",")):
        if not item:
            continue
        name, sep, val = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"task weight {item!r} is not TASK=WEIGHT")
        try:
            out[name.strip()] = float(val)
        except ValueError:
            raise ValueError(f"task weight {item!r}: {val!r} is not a number") from None
    if not out:
        raise ValueError("no task weights given (expected TASK=WEIGHT[,TASK=WEIGHT...])")
    return out


class LS(LossWeighting):
    name = "ls"

    def __init__(self, task_names=None, task_weights: Mapping[str, float] | None = None) -> None:
        super().__init__(task_names)
        self.task_weights = None
        if task_weights:
            tw = {str(k): float(v) for k, v in dict(task_weights).items()}
            if task_names is not None:
                unknown = [k for k in tw if k not in task_names]
                if unknown:
                    raise ValueError(f"task_weights: unknown task(s) {unknown}; the tasks are {list(task_names)}")
            bad = [k for k, v in tw.items() if not math.isfinite(v) or v < 0]
            if bad:
                raise ValueError(f"task_weights: weights must be finite and >= 0 (bad: {bad})")
            names = list(task_names) if task_names is not None else list(tw)
            if sum(tw.get(n, 1.0) for n in names) <= 0:
                raise ValueError("task_weights: the weights sum to 0")
            self.task_weights = tw

    def loss_weights(self, losses):
        if not self.task_weights:
            w = 1.0 / len(losses)
            return {n: torch.tensor(w) for n in losses}
        raw = {n: self.task_weights.get(n, 1.0) for n in losses}
        total = sum(raw.values())
        return {n: torch.tensor(v / total) for n, v in raw.items()}
