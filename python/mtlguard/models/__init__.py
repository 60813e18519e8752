"""Victim models (HPS multi-task and single-task) and per-task losses."""
from .losses import multi_task_losses, task_loss

__all__ = ["task_loss", "multi_task_losses"]
