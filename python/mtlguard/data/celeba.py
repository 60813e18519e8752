"""CelebA (Liu et al., ICCV 2015): 40 binary face attributes (MTL-UE Sec. 5.1: 162,770 train / 19,962 test, 70x70).

On-disk format (the official "Align&Cropped" release; ``root`` or ``root/celeba``)
-----------------------------------------------------------------------------
::

    img_align_celeba/000001.jpg ...          # 178x218 RGB JPEGs
    list_attr_celeba.txt                     # line 1: image count N
                                             # line 2: the 40 attribute names (whitespace separated)
                                             # then N lines: "<file> v1 ... v40", v in {-1, 1}
    list_eval_partition.txt                  # "<file> <0 train | 1 val | 2 test>" per line

Each attribute becomes a ``binary`` task named like the attribute (``5_o_Clock_Shadow``,
``Arched_Eyebrows``, ...), target ``1`` for ``1`` and ``0`` for ``-1`` (``0`` is also read as 0).
Splits: ``train`` (0), ``val`` (1), ``test`` (2), ``trainval`` (0+1), ``all``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .base import ImageFileDataset
from .splits import stratified_subset
from .tasks import TaskSpec

CELEBA_SPLITS = {"train": (0,), "val": (1,), "test": (2,), "trainval": (0, 1), "all": (0, 1, 2)}


def _celeba_root(root: Path) -> Path:
    for cand in (root, root / "celeba"):
        if (cand / "list_attr_celeba.txt").is_file():
            return cand
    raise FileNotFoundError(f"CelebA: {str(root / 'list_attr_celeba.txt')!r} not found")


def read_celeba_attributes(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """Parse ``list_attr_celeba.txt`` -> ``(attribute names, files, int64 [N, 40] in {0, 1})``."""
    lines = path.read_text().splitlines()
    if len(lines) < 2:
        raise ValueError(f"{str(path)!r}: expected a count line and an attribute-name line")
    try:
        count = int(lines[0].strip())
    except ValueError:
        raise ValueError(f"{str(path)!r}: line 1: expected the image count, got {lines[0]!r}") from None
    names = lines[1].split()
    if not names or len(set(names)) != len(names):
        raise ValueError(f"{str(path)!r}: line 2: attribute names missing or duplicated: {names}")
    files, rows = [], []
    for ln, line in enumerate(lines[2:], start=3):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != len(names) + 1:
            raise ValueError(f"{str(path)!r}: line {ln}: {len(parts) - 1} values for {len(names)} attributes")
        vals = []
        for name, v in zip(names, parts[1:]):
            if v not in ("1", "-1", "0"):
                raise ValueError(f"{str(path)!r}: line {ln}, attribute {name!r}: value {v!r} is not -1 or 1")
            vals.append(1 if v == "1" else 0)
        files.append(parts[0])
        rows.append(vals)
    if len(files) != count:
        raise ValueError(f"{str(path)!r}: line 1 announces {count} images but {len(files)} are listed")
    return names, files, np.asarray(rows, dtype=np.int64).reshape(-1, len(names))


def read_partition(path: Path) -> dict[str, int]:
    """Parse ``list_eval_partition.txt`` -> ``{file: 0|1|2}``."""
    out = {}
    for ln, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise ValueError(f"{str(path)!r}: line {ln}: expected '<file> 0|1|2', got {line!r}")
        out[parts[0]] = int(parts[1])
    return out


class CelebA(ImageFileDataset):
    """CelebA with 40 ``binary`` attribute tasks (or the ``attributes`` chosen).

    Args:
        root: folder with ``img_align_celeba/``, ``list_attr_celeba.txt``, ``list_eval_partition.txt``.
        split: ``train``/``val``/``test``/``trainval``/``all``.
        image_size: int or ``(H, W)`` (MTL-UE: 70).
        attributes: keep these attributes as tasks (in this order); default all 40.
        subset: keep a seeded random subset of this many images of the split.
        seed: seed of the subset.
        check_files: verify that every image of the split exists.
        preload, cache_dir, num_workers, progress: see :class:`~mtlguard.data.base.ImageFileDataset`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        image_size=64,
        attributes: Sequence[str] | None = None,
        subset: int | None = None,
        seed: int = 0,
        check_files: bool = True,
        preload: bool = False,
        cache_dir: str | os.PathLike | bool | None = None,
        num_workers: int | None = None,
        progress: bool = True,
    ) -> None:
        if split not in CELEBA_SPLITS:
            raise ValueError(f"CelebA split must be one of {list(CELEBA_SPLITS)}, got {split!r}")
        base = _celeba_root(Path(root))
        names, files, values = read_celeba_attributes(base / "list_attr_celeba.txt")
        part_path = base / "list_eval_partition.txt"
        if not part_path.is_file():
            raise FileNotFoundError(f"CelebA: {str(part_path)!r} not found")
        part = read_partition(part_path)
        missing = [f for f in files if f not in part]
        if missing:
            raise ValueError(f"{str(part_path)!r}: {len(missing)} image(s) of list_attr_celeba.txt have no "
                             f"partition, e.g. {missing[:3]}")
        keep = np.array([part[f] in CELEBA_SPLITS[split] for f in files], bool)
        idx = np.flatnonzero(keep)
        if subset is not None:
            idx = idx[stratified_subset(np.zeros((len(idx), 1)), int(subset), seed)]
        if attributes is None:
            attributes = names
        unknown = [a for a in attributes if a not in names]
        if unknown:
            raise KeyError(f"unknown CelebA attribute(s) {unknown}; available: {names}")
        cols = [names.index(a) for a in attributes]
        img_dir = base / "img_align_celeba"
        sel = [files[i] for i in idx]
        if check_files:
            absent = [f for f in sel if not (img_dir / f).is_file()]
            if absent:
                raise FileNotFoundError(f"CelebA: {len(absent)} image(s) of split {split!r} missing in "
                                        f"{str(img_dir)!r}, e.g. {absent[:3]}")
        self.split = split
        self.partition = np.array([part[f] for f in sel], dtype=np.int64)
        tasks = [TaskSpec(a, "binary", class_names=("no", "yes")) for a in attributes]
        tag = f"celeba_{split}" + (f"_sub{int(subset)}s{seed}" if subset is not None else "")
        super().__init__(img_dir, sel, {a: values[idx, c] for a, c in zip(attributes, cols)}, tasks,
                         image_size=image_size, num_channels=3, preload=preload, cache_dir=cache_dir,
                         cache_name=tag, num_workers=num_workers, progress=progress)
