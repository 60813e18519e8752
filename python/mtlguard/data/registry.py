"""Build any mtlguard dataset by name: ``build_dataset(name, root, split=..., image_size=..., **kw)``.

=================== ================================== ===================================================
name (aliases)      class                              tasks
=================== ================================== ===================================================
``utkface``         :class:`~.utkface.UTKFace`         age (9), gender (2), race (5): multiclass
``celeba``          :class:`~.celeba.CelebA`           40 binary attributes
``chestxray14``     :class:`~.chestxray.ChestXray14`   14 binary findings (1 channel)
``nyuv2``           :class:`~.nyuv2.NYUv2`             segmentation (13), depth, normal
``office31``        :class:`~.office31.Office31`       amazon / dslr / webcam (31 classes each)
``synthetic``       :class:`~.synthetic.SyntheticScenes` segmentation (4), depth, normal (``root`` unused)
``folder``          :class:`~.folder.FolderDataset`    from ``tasks.json``
=================== ================================== ===================================================
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from .base import MultiTaskDataset
from .tasks import TaskSpec

CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips",
    "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin",
    "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open",
    "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)

_ALIASES = {
    "utkface": "utkface", "utk": "utkface",
    "celeba": "celeba",
    "chestxray14": "chestxray14", "chestx-ray14": "chestxray14", "chestx14": "chestxray14", "chestxray": "chestxray14",
    "nyuv2": "nyuv2", "nyu": "nyuv2",
    "office31": "office31", "office-31": "office31",
    "synthetic": "synthetic", "synthetic_scenes": "synthetic", "scenes": "synthetic",
    "folder": "folder",
}
DATASETS = tuple(sorted(set(_ALIASES.values())))


def canonical_name(name: str) -> str:
    key = name.strip().lower().replace(" ", "")
    if key not in _ALIASES:
        raise KeyError(f"unknown dataset {name!r}; available: {list(DATASETS)}")
    return _ALIASES[key]


def _builders() -> dict[str, Callable[..., MultiTaskDataset]]:
    from .celeba import CelebA
    from .chestxray import ChestXray14
    from .folder import FolderDataset
    from .nyuv2 import NYUv2
    from .office31 import Office31
    from .synthetic import SyntheticScenes
    from .utkface import UTKFace

    def synthetic(root, split, image_size, n=None, **kw):
        n = n if n is not None else (512 if split == "train" else 128)
        return SyntheticScenes(n, image_size=64 if image_size is None else image_size, split=split, **kw)

    def folder(root, split, image_size, **kw):
        return FolderDataset(root, image_size=image_size, split=split, **kw)

    def with_split(cls, default_size):
        def build(root, split, image_size, **kw):
            return cls(root, split=split or "train", image_size=default_size if image_size is None else image_size, **kw)
        return build

    return {
        "utkface": with_split(UTKFace, 64),
        "celeba": with_split(CelebA, 64),
        "chestxray14": with_split(ChestXray14, 64),
        "nyuv2": with_split(NYUv2, None),
        "office31": with_split(Office31, 64),
        "synthetic": synthetic,
        "folder": folder,
    }


def build_dataset(name: str, root: str | os.PathLike | None = None, split: str | None = "train",
                  image_size=None, **kw) -> MultiTaskDataset:
    """Build dataset ``name`` (see the module table) from ``root``.

    ``image_size=None`` uses the loader's default (64 for the classification datasets and the
    synthetic scenes, the stored size for NYUv2 and folders).  For ``folder``, ``split=None`` keeps
    every row.  Extra keyword arguments go to the loader (e.g. ``subset``, ``seed``, ``cache_dir``, ``n``).
    """
    key = canonical_name(name)
    if key != "synthetic" and root is None:
        raise ValueError(f"dataset {name!r} needs a root folder")
    if key == "folder" and split == "train" and root is not None:
        import csv

        csv_path = Path(root) / kw.get("labels_csv", "labels.csv")
        if csv_path.is_file():
            with open(csv_path, newline="", encoding="utf-8-sig") as f:
                header = next(csv.reader(f), [])
            if "split" not in [h.strip() for h in header]:
                split = None  # a folder without a split column: use every row
    return _builders()[key](root, split, image_size, **kw)


def dataset_tasks(name: str, root: str | os.PathLike | None = None, **kw) -> tuple[TaskSpec, ...]:
    """The task specs of dataset ``name`` without loading it (``folder`` reads ``root/tasks.json``)."""
    key = canonical_name(name)
    if key == "utkface":
        from .utkface import UTKFACE_TASKS
        return UTKFACE_TASKS
    if key == "celeba":
        attrs = kw.get("attributes") or CELEBA_ATTRIBUTES
        return tuple(TaskSpec(a, "binary", class_names=("no", "yes")) for a in attrs)
    if key == "chestxray14":
        from .chestxray import CHESTX_FINDINGS
        return tuple(TaskSpec(f, "binary", class_names=("absent", "present")) for f in kw.get("findings") or CHESTX_FINDINGS)
    if key == "nyuv2":
        from .nyuv2 import NYUV2_TASKS
        return NYUV2_TASKS
    if key == "office31":
        from .office31 import OFFICE31_CLASSES, OFFICE31_DOMAINS
        if kw.get("tasks_as", "domains") == "category":
            return (TaskSpec("category", "multiclass", 31, OFFICE31_CLASSES),)
        return tuple(TaskSpec(d, "multiclass", 31, OFFICE31_CLASSES, ignore_index=-1)
                     for d in kw.get("domains") or OFFICE31_DOMAINS)
    if key == "synthetic":
        from .synthetic import SCENE_TASKS
        return SCENE_TASKS
    if root is None:
        raise ValueError("dataset_tasks('folder', root=...) needs the folder holding tasks.json")
    from .folder import read_task_file
    return read_task_file(Path(root) / kw.get("tasks", "tasks.json"))[0]


def dataset_num_channels(name: str) -> int:
    """Image channels of a named dataset (1 for ChestX-ray14, 3 otherwise; folders: see tasks.json)."""
    return 1 if canonical_name(name) == "chestxray14" else 3
