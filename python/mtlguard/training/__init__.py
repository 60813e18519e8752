"""Training of MTL / STL victims: :class:`Trainer` (its options: :class:`TrainConfig`), :func:`train`,
:func:`load_model`, augmentation."""
from ..models.factory import load_model, save_model
from .augment import random_crop_flip
from .config import TrainConfig
from .trainer import Trainer, seed_everything, train

__all__ = ["Trainer", "TrainConfig", "train", "load_model", "save_model", "random_crop_flip", "seed_everything"]
