"""The options of one training run (:class:`TrainConfig`) and the learning-rate schedule they describe.

Defaults follow MTL-UE A.2 for CelebA / ChestX-ray14 / UTKFace: Adam, lr 1e-3, MultiStepLR with gamma 0.1 at
60% and 80% of the epochs, batch 512, RandomCrop + RandomHorizontalFlip.  NYUv2 uses ``schedule="step"``
(StepLR at half the epochs; lr 1e-4 and batch 8 in the paper).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..options import with_overrides

SCHEDULES = ("multistep", "step", "none")


@dataclass(frozen=True)
class TrainConfig:
    """How a :class:`~mtlguard.training.Trainer` trains (everything but the model, data, device and hooks).

    Args:
        weighting: a name for :func:`mtlguard.weighting.build_weighting` or a :class:`~mtlguard.weighting.Weighting`.
        weighting_kwargs: keyword arguments of the named weighting.
        epochs, lr, batch_size, weight_decay: optimisation (Adam).
        schedule: ``"multistep"`` (milestones = ``milestones`` fractions of ``epochs``, A.2),
            ``"step"`` (StepLR every ``step_size`` epochs, default epochs // 2; NYUv2), or ``"none"``.
        gamma: the schedule's learning-rate factor.
        augment: RandomCrop (``crop_padding`` pixels, default ``H // 8``) + horizontal flip (``flip``).
        amp: mixed precision on CUDA (bf16 when supported, else fp16 + GradScaler); ignored on CPU.
        grad_clip: max global gradient norm (``None`` = no clipping).
        seed: seeds the weights' draws done by the trainer, each epoch's shuffling and augmentation.
        num_workers: DataLoader workers.
        eval_every: evaluate on the test set every N epochs (and always after the last one).
        eval_batch_size: evaluation batch (default ``batch_size``).
        max_batches: cap on training batches per epoch (tests / smoke runs).
        progress: progress bars and one line per epoch.
    """

    weighting: object = "ls"
    weighting_kwargs: dict | None = None
    epochs: int = 60
    lr: float = 1e-3
    batch_size: int = 512
    weight_decay: float = 0.0
    schedule: str = "multistep"
    milestones: Sequence[float] = (0.6, 0.8)
    gamma: float = 0.1
    step_size: int | None = None
    augment: bool = True
    crop_padding: int | None = None
    flip: bool = True
    amp: bool = True
    grad_clip: float | None = 10.0
    seed: int = 0
    num_workers: int = 0
    eval_every: int = 1
    eval_batch_size: int | None = None
    max_batches: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.eval_every < 1:
            raise ValueError(f"eval_every must be >= 1, got {self.eval_every}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; expected 'multistep', 'step' or 'none'")

    @classmethod
    def with_options(cls, base: "TrainConfig | None" = None, **options) -> "TrainConfig":
        """``base`` (default: the defaults) with ``options`` replaced; an unknown option is a ``TypeError``
        naming it and the known ones."""
        return with_overrides(cls, base, **options)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig):
    """The learning-rate scheduler ``cfg.schedule`` names (stepped once per epoch)."""
    sched = torch.optim.lr_scheduler
    if cfg.schedule == "multistep":
        milestones = sorted({max(1, int(round(f * cfg.epochs))) for f in cfg.milestones if 0 < f < 1})
        return sched.MultiStepLR(optimizer, milestones, cfg.gamma)
    if cfg.schedule == "step":
        return sched.StepLR(optimizer, cfg.step_size or max(1, cfg.epochs // 2), cfg.gamma)
    return sched.LambdaLR(optimizer, lambda epoch: 1.0)
