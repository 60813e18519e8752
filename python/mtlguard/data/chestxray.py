"""NIH ChestX-ray14 (Wang et al., CVPR 2017): 14 binary thoracic findings, grayscale (MTL-UE Sec. 5.1, 256x256).

On-disk format (the NIH release)
--------------------------------
::

    images/00000001_000.png ...        # 1024x1024 PNGs (8-bit grayscale; a few are RGBA -> converted)
      (or the split archives: images_001/images/*.png ... images_012/images/*.png)
    Data_Entry_2017.csv                # columns include 'Image Index' and 'Finding Labels'
                                       # ('Effusion|Mass' or 'No Finding'); other columns are ignored
    train_val_list.txt                 # official split: one image name per line
    test_list.txt

The 14 findings become ``binary`` tasks in the usual order :data:`CHESTX_FINDINGS`; an image's task
is ``1`` iff its ``Finding Labels`` lists it.  ``No Finding`` means all zeros.  Splits: ``train``
(train_val_list.txt), ``test`` (test_list.txt), ``all``.  Images are 1-channel.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .base import ImageFileDataset
from .splits import stratified_subset
from .tasks import TaskSpec

CHESTX_FINDINGS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)
_SPLIT_FILES = {"train": ("train_val_list.txt",), "test": ("test_list.txt",),
                "all": ("train_val_list.txt", "test_list.txt")}


def _index_images(root: Path) -> dict[str, str]:
    """``{image name: path relative to root}`` over ``images/`` and ``images_*/images/``."""
    found: dict[str, str] = {}
    dirs = [root / "images"] + sorted(p / "images" for p in root.glob("images_*") if p.is_dir())
    for d in dirs:
        if d.is_dir():
            rel = d.relative_to(root).as_posix()
            for e in os.scandir(d):
                if e.name.lower().endswith(".png"):
                    found.setdefault(e.name, f"{rel}/{e.name}")
    return found


def read_chestx_entries(path: Path, findings: Sequence[str] = CHESTX_FINDINGS) -> dict[str, np.ndarray]:
    """Parse ``Data_Entry_2017.csv`` -> ``{image name: int64 [14] 0/1}``."""
    if not path.is_file():
        raise FileNotFoundError(f"ChestX-ray14: {str(path)!r} not found")
    out: dict[str, np.ndarray] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        for col in ("Image Index", "Finding Labels"):
            if col not in (reader.fieldnames or []):
                raise ValueError(f"{str(path)!r}: line 1: missing column {col!r} (columns: {reader.fieldnames})")
        for ln, row in enumerate(reader, start=2):
            name = (row["Image Index"] or "").strip()
            labels = (row["Finding Labels"] or "").strip()
            if not name:
                raise ValueError(f"{str(path)!r}: line {ln}, column 'Image Index': empty value")
            if not labels:
                raise ValueError(f"{str(path)!r}: line {ln}, column 'Finding Labels': empty value")
            vec = np.zeros(len(findings), np.int64)
            if labels != "No Finding":
                for lab in labels.split("|"):
                    lab = lab.strip()
                    if lab not in findings:
                        raise ValueError(f"{str(path)!r}: line {ln}, column 'Finding Labels': unknown finding "
                                         f"{lab!r}; expected one of {list(findings)} or 'No Finding'")
                    vec[findings.index(lab)] = 1
            if name in out:
                raise ValueError(f"{str(path)!r}: line {ln}: duplicate image {name!r}")
            out[name] = vec
    return out


class ChestXray14(ImageFileDataset):
    """ChestX-ray14 with 14 ``binary`` finding tasks, 1-channel images.

    Args:
        root: folder with ``images/`` (or ``images_0xx/images/``), ``Data_Entry_2017.csv`` and the lists.
        split: ``train`` (train_val_list.txt), ``test`` (test_list.txt) or ``all``.
        image_size: int or ``(H, W)`` (MTL-UE: 256).
        findings: keep these findings as tasks (in this order); default all 14.
        subset: keep a seeded random subset of this many images; ``seed`` seeds it.
        preload, cache_dir, num_workers, progress: see :class:`~mtlguard.data.base.ImageFileDataset`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        image_size=64,
        findings: Sequence[str] | None = None,
        subset: int | None = None,
        seed: int = 0,
        preload: bool = False,
        cache_dir: str | os.PathLike | bool | None = None,
        num_workers: int | None = None,
        progress: bool = True,
    ) -> None:
        if split not in _SPLIT_FILES:
            raise ValueError(f"ChestX-ray14 split must be one of {list(_SPLIT_FILES)}, got {split!r}")
        root = Path(root)
        entries = read_chestx_entries(root / "Data_Entry_2017.csv")
        names: list[str] = []
        for fn in _SPLIT_FILES[split]:
            p = root / fn
            if not p.is_file():
                raise FileNotFoundError(f"ChestX-ray14: split list {str(p)!r} not found")
            for ln, line in enumerate(p.read_text().splitlines(), start=1):
                n = line.strip()
                if not n:
                    continue
                if n not in entries:
                    raise ValueError(f"{str(p)!r}: line {ln}: image {n!r} is not in Data_Entry_2017.csv")
                names.append(n)
        if len(set(names)) != len(names):
            raise ValueError(f"ChestX-ray14: an image is listed twice in {_SPLIT_FILES[split]}")
        names.sort()
        index = _index_images(root)
        absent = [n for n in names if n not in index]
        if absent:
            raise FileNotFoundError(f"ChestX-ray14: {len(absent)} image(s) of split {split!r} not found under "
                                    f"{str(root / 'images')!r}, e.g. {absent[:3]}")
        if subset is not None:
            names = [names[i] for i in stratified_subset(np.zeros((len(names), 1)), int(subset), seed)]
        if findings is None:
            findings = CHESTX_FINDINGS
        unknown = [f for f in findings if f not in CHESTX_FINDINGS]
        if unknown:
            raise KeyError(f"unknown finding(s) {unknown}; available: {list(CHESTX_FINDINGS)}")
        mat = np.stack([entries[n] for n in names]) if names else np.zeros((0, 14), np.int64)
        self.split = split
        tasks = [TaskSpec(f, "binary", class_names=("absent", "present")) for f in findings]
        labels = {f: mat[:, CHESTX_FINDINGS.index(f)] for f in findings}
        tag = f"chestx14_{split}" + (f"_sub{int(subset)}s{seed}" if subset is not None else "")
        super().__init__(root, [index[n] for n in names], labels, tasks, image_size=image_size, num_channels=1,
                         preload=preload, cache_dir=cache_dir, cache_name=tag, num_workers=num_workers,
                         progress=progress)
