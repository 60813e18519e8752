"""Hard-parameter-sharing multi-task model (MTL-UE Sec. 5.1 "Models"): shared encoder + task heads.

A single-task (STL) model is the same class with one task.  Inputs are images in [0, 1]; ImageNet
mean/std normalization happens inside :meth:`HPSModel.forward`.

Heads (built from each :class:`~mtlguard.data.tasks.TaskSpec`):

* classification / multilabel / regression: one ``Linear`` on the pooled shared features ``z``;
* segmentation / depth / normal: :class:`DenseHead`, a small decoder that upsamples the last feature
  map to stride 4, fuses it with the stride-4 map (DeepLabv3+-style skip), and upsamples bilinearly to
  the input size.  Depth goes through ``softplus`` (positive); normals are L2-normalized per pixel.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.tasks import TaskSpec, validate_tasks
from .backbones import Backbone

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DenseHead(nn.Module):
    """Upsampling decoder for one dense task: high map -> stride 4 (+ low skip) -> input size."""

    def __init__(self, high_channels: int, low_channels: int, out_channels: int, kind: str, width: int = 64):
        super().__init__()
        self.kind = kind
        self.reduce = nn.Sequential(nn.Conv2d(high_channels, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.skip = nn.Sequential(nn.Conv2d(low_channels, width // 2, 1, bias=False), nn.BatchNorm2d(width // 2), nn.ReLU())
        self.fuse = nn.Sequential(
            nn.Conv2d(width + width // 2, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        )
        self.out = nn.Conv2d(width, out_channels, 1)

    def forward(self, low: torch.Tensor, high: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        y = F.interpolate(self.reduce(high), size=low.shape[-2:], mode="bilinear", align_corners=False)
        y = self.fuse(torch.cat([y, self.skip(low)], 1))
        y = F.interpolate(self.out(y), size=size, mode="bilinear", align_corners=False)
        if self.kind == "depth":
            y = F.softplus(y)
        elif self.kind == "normal":
            y = F.normalize(y.float(), dim=1).to(y.dtype)
        return y


class LinearHead(nn.Module):
    def __init__(self, in_dim: int, spec: TaskSpec):
        super().__init__()
        self.squeeze = spec.kind in ("binary", "regression")
        self.fc = nn.Linear(in_dim, spec.out_channels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        y = self.fc(z)
        return y.squeeze(1) if self.squeeze else y


class HPSModel(nn.Module):
    """Shared ``backbone`` + ``heads[task]``; ``forward(x) -> {task: output}`` (shapes: data/tasks.py).

    Attributes used by the weighting strategies and the attacks: ``backbone`` (shared),
    :meth:`shared_parameters`, ``heads`` (``nn.ModuleDict``), :meth:`task_parameters`,
    :meth:`features` (shared representation ``z`` ``[B, D]``), ``tasks``, ``config`` (JSON-able,
    rebuilds the model via :func:`mtlguard.models.build_model_from_config`).
    """

    def __init__(self, tasks: Sequence[TaskSpec], backbone: Backbone, in_channels: int = 3, config: dict | None = None):
        super().__init__()
        self.tasks = validate_tasks(tasks)
        self.backbone = backbone
        self.config = dict(config or {})
        mean = torch.tensor(IMAGENET_MEAN if in_channels == 3 else [sum(IMAGENET_MEAN) / 3] * in_channels)
        std = torch.tensor(IMAGENET_STD if in_channels == 3 else [sum(IMAGENET_STD) / 3] * in_channels)
        self.register_buffer("mean", mean.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std.view(1, -1, 1, 1), persistent=False)
        heads = {}
        for t in self.tasks:
            if t.is_dense:
                heads[t.name] = DenseHead(backbone.high_channels, backbone.low_channels, t.out_channels, t.kind)
            else:
                heads[t.name] = LinearHead(backbone.out_dim, t)
        self.heads = nn.ModuleDict(heads)
        self.in_channels = in_channels

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected images [B, {self.in_channels}, H, W], got shape {tuple(x.shape)}")

    def encode(self, x: torch.Tensor):
        self._check(x)
        return self.backbone((x - self.mean) / self.std)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Shared representation ``z`` ``[B, D]`` (pooled encoder features; MTL-UE Table 1)."""
        return self.encode(x).pooled

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        enc = self.encode(x)
        size = x.shape[-2:]
        out = {}
        for t in self.tasks:
            head = self.heads[t.name]
            out[t.name] = head(enc.maps[0], enc.maps[-1], size) if t.is_dense else head(enc.pooled)
        return out

    def shared_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.backbone.parameters() if p.requires_grad]

    def task_parameters(self, task: str | None = None) -> list[nn.Parameter]:
        mods = [self.heads[task]] if task is not None else list(self.heads.values())
        return [p for m in mods for p in m.parameters() if p.requires_grad]
