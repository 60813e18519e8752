"""Victim models (multi-task and single-task), per-task losses, save / load.

``build_model(tasks, arch="resnet18", in_channels=3, image_size=64, pretrained=False, mtl="hps")``:
:class:`HPSModel` (``mtl="hps"``), :class:`MTANModel` (``"mtan"``), :class:`CrossStitchModel`
(``"cross_stitch"``) or :class:`BranchedModel` (``"branched:age+gender@3,race@1"``).
"""
from .backbones import ARCHS, build_backbone
from .factory import build_model, build_model_from_config, load_model, save_model
from .hps import DenseHead, HPSModel
from .losses import multi_task_losses, task_loss
from .mtl_archs import (MTL_ARCHS, BranchedModel, CrossStitchModel, MTANModel, canonical_mtl, parse_branched,
                        split_arch, split_arch_list)

__all__ = ["ARCHS", "MTL_ARCHS", "HPSModel", "MTANModel", "CrossStitchModel", "BranchedModel", "DenseHead",
           "build_backbone", "build_model", "build_model_from_config", "load_model", "save_model", "task_loss",
           "multi_task_losses", "canonical_mtl", "parse_branched", "split_arch", "split_arch_list"]
