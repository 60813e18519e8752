"""Build multi-task (HPS, MTAN, Cross-stitch, branched) and STL models from task specs, and save / load them
(safetensors weights + JSON config)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import torch

from ..atomic import atomic_write, atomic_write_text
from ..data.tasks import TaskSpec, validate_tasks
from .backbones import ARCHS, build_backbone
from .hps import HPSModel
from .mtl_archs import BranchedModel, CrossStitchModel, MTANModel, parse_branched, split_arch

CONFIG_NAME = "model_config.json"
WEIGHTS_NAME = "model.safetensors"


def build_model(
    tasks: Sequence[TaskSpec],
    arch: str = "resnet18",
    in_channels: int = 3,
    image_size: int = 64,
    pretrained: bool = False,
    *,
    stem: str = "imagenet",
    weights_path: str | os.PathLike | None = None,
    patch_size: int | None = None,
    mtl: str | None = None,
) -> torch.nn.Module:
    """Multi-task model over an ``arch`` encoder with one head per task (one task = an STL model).

    Args:
        tasks: task specs (heads, output shapes and activations follow ``spec.kind``).
        arch: one of :data:`~mtlguard.models.backbones.ARCHS` (``resnet18/50/101/152``, ``wide_resnet50_2``,
            ``vgg11/16``, ``densenet121``, ``mobilenet_v3_small``, ``vit_b_16``, ``small_cnn``); ``"ARCH/MTL"``
            (e.g. ``"resnet18/mtan"``) also names the multi-task architecture.
        mtl: ``"hps"`` (default: :class:`HPSModel`, shared encoder + heads), ``"mtan"``, ``"cross_stitch"`` or
            ``"branched:<group>@<k>[,...]"`` (see :mod:`mtlguard.models.mtl_archs`; CNN backbones only).
        in_channels: image channels (1 for grayscale, e.g. ChestX-ray14).
        image_size: input side length (used by ViT to size its positional embedding).
        pretrained: load a *local* torchvision state dict from ``weights_path`` (never downloads).
        stem: ResNet stem, ``"imagenet"`` (7x7/2 + maxpool, default: cheap on CPU) or ``"cifar"``.
        patch_size: ViT patch size (default ``image_size // 8`` capped at 16).
    """
    tasks = validate_tasks(tasks)
    arch, mtl = split_arch(arch, mtl)
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHS}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")

    def backbone():
        return build_backbone(arch, in_channels, int(image_size), stem, pretrained, weights_path, patch_size)

    config = {
        "tasks": [t.to_dict() for t in tasks], "arch": arch, "in_channels": int(in_channels),
        "image_size": int(image_size), "stem": stem, "patch_size": patch_size,
    }
    if mtl == "hps":  # configs of HPS models keep their historical keys (no "mtl")
        return HPSModel(tasks, backbone(), in_channels, config)
    config["mtl"] = mtl
    if mtl == "mtan":
        return MTANModel(tasks, backbone(), in_channels, config, int(image_size))
    if mtl == "cross_stitch":
        return CrossStitchModel(tasks, [backbone() for _ in tasks], in_channels, config, int(image_size))
    groups = parse_branched(mtl, [t.name for t in tasks])
    return BranchedModel(tasks, groups, backbone, in_channels, config, int(image_size))


def build_model_from_config(config: dict) -> torch.nn.Module:
    """Inverse of ``model.config`` (weights are random: load them with :func:`load_model`).  Configs without
    ``"mtl"`` (every HPS model, and those saved before the other architectures existed) build HPS."""
    tasks = [TaskSpec.from_dict(d) for d in config["tasks"]]
    return build_model(tasks, config["arch"], config["in_channels"], config["image_size"],
                       stem=config.get("stem", "imagenet"), patch_size=config.get("patch_size"),
                       mtl=config.get("mtl", "hps"))


def save_model(model: torch.nn.Module, directory: str | os.PathLike) -> Path:
    """Write ``model.safetensors`` + ``model_config.json`` into ``directory`` (atomically). Returns the dir."""
    from safetensors.torch import save_file

    d = Path(directory)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(d / WEIGHTS_NAME, lambda p: save_file(state, p))
    text = json.dumps(model.config, indent=2)
    atomic_write_text(d / CONFIG_NAME, text)
    return d


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild a model saved by :func:`save_model` / the Trainer.

    ``path`` is a run/model directory (holding ``model.safetensors`` + ``model_config.json``) or the
    ``.safetensors`` file itself (the config is read from the same directory).
    """
    from safetensors.torch import load_file

    p = Path(path)
    d = p if p.is_dir() else p.parent
    weights = p if p.is_file() else d / WEIGHTS_NAME
    cfg_path = d / CONFIG_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"no model weights at {weights}")
    if not cfg_path.is_file():
        raise FileNotFoundError(f"no model config {CONFIG_NAME} beside {weights}")
    model = build_model_from_config(json.loads(cfg_path.read_text()))
    state = load_file(str(weights), device=str(map_location))
    model.load_state_dict(state)
    return model.to(map_location).eval()
