"""Office-31 (Saenko et al., ECCV 2010): three domains sharing 31 object classes (MTA Sec. 4.1).

On-disk format (the standard release)
-------------------------------------
::

    root/amazon/images/<class>/<file>.jpg     # 2,817 product photos
    root/dslr/images/<class>/<file>.jpg       #   498 DSLR photos
    root/webcam/images/<class>/<file>.jpg     #   795 webcam photos

``<class>`` is one of the 31 folder names in :data:`OFFICE31_CLASSES` (``back_pack`` ... ``trash_can``);
the class index is the position in that sorted list, the same in every domain.  An unknown class
folder is an error.  No official split exists: each domain is split 80/20 by a hash of the
relative path (see :func:`~mtlguard.data.splits.split_test_mask`).

Framing as a multi-task dataset (MTA, Guo et al.)
-------------------------------------------------
MTA treats the three domains as three tasks "with different inputs but the same label space": a
classifier ``K_t`` per domain ``t`` trained on ``D_t``.  In mtlguard's item contract (one image, a
target per task) this becomes, with ``tasks_as="domains"`` (default), one ``multiclass`` task per
domain named ``amazon`` / ``dslr`` / ``webcam``: an image's target is its class for the task of its
own domain and ``-1`` (the tasks' ``ignore_index``, ignored by CE, "unprotected" for MTL-UE) for the
other two.  An HPS model then has one head per domain and each head only learns from its domain.
``.domain`` holds each item's domain index.  ``tasks_as="category"`` instead gives one task
``category`` over the pooled domains (single-task view).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .base import ImageFileDataset
from .imageio import is_image_file
from .splits import split_test_mask
from .tasks import TaskSpec

OFFICE31_DOMAINS = ("amazon", "dslr", "webcam")
OFFICE31_CLASSES = (
    "back_pack", "bike", "bike_helmet", "bookcase", "bottle", "calculator", "desk_chair", "desk_lamp",
    "desktop_computer", "file_cabinet", "headphones", "keyboard", "laptop_computer", "letter_tray",
    "mobile_phone", "monitor", "mouse", "mug", "paper_notebook", "pen", "phone", "printer", "projector",
    "punchers", "ring_binder", "ruler", "scissors", "speaker", "stapler", "tape_dispenser", "trash_can",
)


class Office31(ImageFileDataset):
    """Office-31 with one 31-class task per domain (or one pooled ``category`` task).

    Args:
        root: folder holding ``amazon/``, ``dslr/``, ``webcam/``.
        split: ``train``, ``test`` or ``all`` (80/20 per domain, hash of the path; ``split_seed``).
        image_size: int or ``(H, W)``.
        domains: the domains to load (default all three).
        tasks_as: ``"domains"`` (one task per domain, -1 for other domains) or ``"category"``.
        test_fraction: fraction of each domain in the test split.
        preload, cache_dir, num_workers, progress: see :class:`~mtlguard.data.base.ImageFileDataset`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        image_size=64,
        domains: Sequence[str] = OFFICE31_DOMAINS,
        tasks_as: str = "domains",
        test_fraction: float = 0.2,
        split_seed: int = 0,
        preload: bool = False,
        cache_dir: str | os.PathLike | bool | None = None,
        num_workers: int | None = None,
        progress: bool = True,
    ) -> None:
        if split not in ("train", "test", "all"):
            raise ValueError(f"Office-31 split must be 'train', 'test' or 'all', got {split!r}")
        if tasks_as not in ("domains", "category"):
            raise ValueError(f"tasks_as must be 'domains' or 'category', got {tasks_as!r}")
        unknown = [d for d in domains if d not in OFFICE31_DOMAINS]
        if unknown or not domains:
            raise ValueError(f"unknown Office-31 domain(s) {unknown or domains}; expected some of {OFFICE31_DOMAINS}")
        root = Path(root)
        files: list[str] = []
        cls: list[int] = []
        dom: list[int] = []
        for d in domains:
            img_root = root / d / "images"
            if not img_root.is_dir():
                raise FileNotFoundError(f"Office-31: domain folder {str(img_root)!r} not found")
            dfiles, dcls = [], []
            for cdir in sorted(p for p in img_root.iterdir() if p.is_dir()):
                if cdir.name not in OFFICE31_CLASSES:
                    raise ValueError(f"Office-31: unknown class folder {str(cdir)!r}; expected one of the 31 "
                                     f"classes {list(OFFICE31_CLASSES)}")
                for f in sorted(os.listdir(cdir)):
                    if is_image_file(f):
                        dfiles.append(f"{d}/images/{cdir.name}/{f}")
                        dcls.append(OFFICE31_CLASSES.index(cdir.name))
            if not dfiles:
                raise FileNotFoundError(f"Office-31: no images in {str(img_root)!r}")
            if split != "all":
                test = split_test_mask(dfiles, test_fraction, split_seed)
                keep = test if split == "test" else ~test
                dfiles = [f for f, k in zip(dfiles, keep) if k]
                dcls = [c for c, k in zip(dcls, keep) if k]
            files += dfiles
            cls += dcls
            dom += [OFFICE31_DOMAINS.index(d)] * len(dfiles)
        self.split = split
        self.domain = np.asarray(dom, dtype=np.int64)
        self.tasks_as = tasks_as
        cls_arr = np.asarray(cls, dtype=np.int64)
        if tasks_as == "category":
            tasks = [TaskSpec("category", "multiclass", 31, OFFICE31_CLASSES)]
            labels = {"category": cls_arr}
        else:
            tasks = [TaskSpec(d, "multiclass", 31, OFFICE31_CLASSES, ignore_index=-1) for d in domains]
            labels = {d: np.where(self.domain == OFFICE31_DOMAINS.index(d), cls_arr, -1) for d in domains}
        super().__init__(root, files, labels, tasks, image_size=image_size, num_channels=3, preload=preload,
                         cache_dir=cache_dir, cache_name=f"office31_{split}_{'-'.join(domains)}",
                         num_workers=num_workers, progress=progress)
