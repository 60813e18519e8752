"""UTKFace (Zhang, Song & Qi, CVPR 2017): age / gender / race from the file names (MTL-UE Sec. 5.1).

On-disk format
--------------
``root/images/<age>_<gender>_<race>_<date&time>.jpg.chip.jpg`` (``root`` may also be the
``images`` folder itself): aligned and cropped 200x200 RGB JPEGs whose labels live only in the name:

* age: integer years, binned into 9 classes (Karkkainen & Joo 2021, as MTL-UE):
  ``<=2, 3-9, 10-19, 20-29, 30-39, 40-49, 50-59, 60-69, 70+`` (:func:`age_to_bin`);
* gender: 0 male, 1 female;
* race: 0 White, 1 Black, 2 Asian, 3 Indian, 4 Others.

Malformed names
---------------
A name is used iff it matches ``^<age>_<gender in 0-1>_<race in 0-4>_`` and ends with ``.jpg``
(case-insensitive).  The labels are the three leading fields; the rest (the timestamp) is not
read.  Hence the release's two names with a damaged *timestamp* part are **kept**, because their
labels are unambiguous: ``55_0_0_20170116232725357jpg.chip.jpg`` (no dot before ``jpg``) and
``24_0_1_20170116220224657 .jpg.chip.jpg`` (a space).  Names with only two label fields
(``39_1_20170116174525125.jpg.chip.jpg`` etc., race missing) and anything else that does not match
are skipped with ONE logged warning giving the count and a few examples; they are listed in
``.skipped``.

Split
-----
No official split exists; MTL-UE uses 80/20.  Each valid name gets the key
``sha256(f"{split_seed}:{name}")``; the ``round(test_fraction * N)`` names with the smallest keys
are the test set, the rest the train set.  The split therefore does not depend on the order the
file system lists the files in, nor on ``seed``; items of a split are sorted by name.
``subset=N`` then draws N items of the split, stratified by (age bin, gender, race) with the
generator ``numpy.random.default_rng(seed)`` (proportional allocation, random within a stratum).

Decoding
--------
Images are decoded with Pillow (JPEG draft mode), resized to ``image_size`` (MTL-UE: 140x140; CPU
runs here use 64x64) and kept in memory as one ``uint8`` array, cached as ``.npy`` in ``cache_dir``
(see :class:`~mtlguard.data.base.ImageFileDataset`).
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np

from .base import ImageFileDataset
from .splits import split_test_mask, stratified_subset
from .tasks import TaskSpec

log = logging.getLogger("mtlguard.data")

AGE_BIN_NAMES = ("0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "70+")
GENDER_NAMES = ("male", "female")
RACE_NAMES = ("White", "Black", "Asian", "Indian", "Others")

UTKFACE_TASKS = (
    TaskSpec("age", "multiclass", 9, AGE_BIN_NAMES),
    TaskSpec("gender", "multiclass", 2, GENDER_NAMES),
    TaskSpec("race", "multiclass", 5, RACE_NAMES),
)

_NAME_RE = re.compile(r"^(\d{1,3})_([01])_([0-4])_")


def age_to_bin(age: int) -> int:
    """Age in years -> one of the 9 bins ``<=2, 3-9, 10-19, ..., 60-69, 70+`` (0..8)."""
    age = int(age)
    if age < 0:
        raise ValueError(f"negative age {age}")
    if age <= 2:
        return 0
    if age <= 9:
        return 1
    return min(age // 10 + 1, 8)


def parse_utkface_name(name: str) -> tuple[int, int, int] | None:
    """``(age_years, gender, race)`` from a UTKFace file name, or ``None`` if it is malformed."""
    if not name.lower().endswith(".jpg"):
        return None
    m = _NAME_RE.match(name)
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def _images_dir(root: Path) -> Path:
    if (root / "images").is_dir():
        return root / "images"
    if root.is_dir():
        return root
    raise FileNotFoundError(f"UTKFace folder {str(root)!r} not found (expected <root>/images/*.jpg.chip.jpg)")


_SCAN_MEMO: dict[tuple[str, int], tuple[list[str], np.ndarray, list[str]]] = {}


def scan_utkface(images_dir: str | os.PathLike) -> tuple[list[str], np.ndarray, list[str]]:
    """Parse every name in ``images_dir``: ``(sorted valid names, int64 [N, 3] (age, gender, race), skipped)``.

    Logs one warning with the count and examples of skipped (malformed) names.  The result is
    memoized per process, keyed by the folder and its modification time.
    """
    key = (str(Path(images_dir).resolve()), os.stat(images_dir).st_mtime_ns)
    if key in _SCAN_MEMO:
        good, arr, skipped = _SCAN_MEMO[key]
        if skipped:
            log.warning("UTKFace: skipped %d malformed file name(s) in %s, e.g. %s",
                        len(skipped), images_dir, ", ".join(repr(s) for s in skipped[:5]))
        return list(good), arr.copy(), list(skipped)
    names = sorted(e.name for e in os.scandir(images_dir) if e.is_file())
    good, labels, skipped = [], [], []
    for n in names:
        parsed = parse_utkface_name(n)
        if parsed is None:
            skipped.append(n)
        else:
            good.append(n)
            labels.append(parsed)
    if skipped:
        log.warning("UTKFace: skipped %d malformed file name(s) in %s, e.g. %s",
                    len(skipped), images_dir, ", ".join(repr(s) for s in skipped[:5]))
    arr = np.asarray(labels, dtype=np.int64).reshape(-1, 3)
    _SCAN_MEMO[key] = (list(good), arr.copy(), list(skipped))
    return good, arr, skipped


class UTKFace(ImageFileDataset):
    """UTKFace with tasks ``age`` (9 bins), ``gender`` (2), ``race`` (5), all multiclass CE.

    Args:
        root: folder holding ``images/`` (or the images folder itself).
        split: ``"train"``, ``"test"`` or ``"all"``.
        image_size: int or ``(H, W)``; MTL-UE uses 140, CPU runs 64.
        subset: keep ``subset`` items of the split (stratified by labels, drawn with ``seed``).
        seed: seed of the subset draw.
        cache_dir: decoded-image cache folder (``None`` = ``$MTLGUARD_CACHE`` or
            ``~/.cache/mtlguard``; ``False`` = no cache).
        test_fraction: fraction of the test split (0.2 as MTL-UE).
        split_seed: changes the 80/20 split (default 0 = the project's split).
        preload: decode all images at construction (default) rather than per item.
        num_workers, progress: decoding threads and progress bar.

    Attributes:
        ages: int64 ``[N]`` ages in years; ``skipped``: malformed names of the folder.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        image_size=64,
        subset: int | None = None,
        seed: int = 0,
        cache_dir: str | os.PathLike | bool | None = None,
        test_fraction: float = 0.2,
        split_seed: int = 0,
        preload: bool = True,
        num_workers: int | None = None,
        progress: bool = True,
    ) -> None:
        if split not in ("train", "test", "all"):
            raise ValueError(f"UTKFace split must be 'train', 'test' or 'all', got {split!r}")
        images_dir = _images_dir(Path(root))
        names, raw, self.skipped = scan_utkface(images_dir)
        if not names:
            raise FileNotFoundError(f"no UTKFace images (<age>_<gender>_<race>_*.jpg) in {str(images_dir)!r}")
        if split == "all":
            keep = np.ones(len(names), bool)
        else:
            test = split_test_mask(names, test_fraction, split_seed)
            keep = test if split == "test" else ~test
        idx = np.flatnonzero(keep)
        bins = np.array([age_to_bin(a) for a in raw[:, 0]], dtype=np.int64)
        if subset is not None:
            strata = np.stack([bins[idx], raw[idx, 1], raw[idx, 2]], axis=1)
            idx = idx[stratified_subset(strata, int(subset), seed)]
        self.split = split
        self.ages = raw[idx, 0].copy()
        tag = f"utkface_{split}{'' if split == 'all' else f'{test_fraction:g}s{split_seed}'}"
        if subset is not None:
            tag += f"_sub{int(subset)}s{seed}"
        super().__init__(
            root=images_dir,
            files=[names[i] for i in idx],
            label_arrays={"age": bins[idx], "gender": raw[idx, 1], "race": raw[idx, 2]},
            tasks=UTKFACE_TASKS,
            image_size=image_size,
            num_channels=3,
            preload=preload,
            cache_dir=cache_dir,
            cache_name=tag,
            num_workers=num_workers,
            progress=progress,
        )
