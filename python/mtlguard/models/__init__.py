"""Victim models (HPS multi-task and single-task), per-task losses, save / load.

``build_model(tasks, arch="resnet18", in_channels=3, image_size=64, pretrained=False)`` -> :class:`HPSModel`.
"""
from .backbones import ARCHS, build_backbone
from .factory import build_model, build_model_from_config, load_model, save_model
from .hps import DenseHead, HPSModel
from .losses import multi_task_losses, task_loss

__all__ = ["ARCHS", "HPSModel", "DenseHead", "build_backbone", "build_model", "build_model_from_config",
           "load_model", "save_model", "task_loss", "multi_task_losses"]
