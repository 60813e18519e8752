"""NYUv2 in the MTAN pre-processed ``.npy`` layout (Liu et al., CVPR 2019; MTL-UE Sec. 5.1: 795 train / 654 test, 288x384).

On-disk format (as MTAN's ``create_dataset.py`` reads it)
--------------------------------------------------------
::

    root/train/image/{i}.npy    float [288, 384, 3], RGB in [0, 1]
    root/train/label/{i}.npy    float/int [288, 384], 13 classes 0..12, -1 = ignore
    root/train/depth/{i}.npy    float [288, 384, 1], metres, 0 = invalid
    root/train/normal/{i}.npy   float [288, 384, 3], unit normals in [-1, 1], 0 = invalid
    root/val/...                the same for the 654 test images (MTAN calls the test set "val")

``i`` runs over 0..N-1 (MTAN counts the ``image/*.npy`` files and loads ``{index}.npy``).  MTAN
moves the channel axis first (``np.moveaxis(x, -1, 0)``); its depth and normal losses mask pixels
whose target sums to 0 and its segmentation loss uses ``ignore_index=-1``, which is exactly the
target convention of :mod:`mtlguard.data.tasks`.  An image stored in 0..255 instead of [0, 1]
(max > 1) is divided by 255.

Tasks: ``segmentation`` (13 classes, ignore -1), ``depth``, ``normal``.  Splits: ``train`` ->
``train/``, ``test`` (or ``val``) -> ``val/``.  With ``image_size`` the image is resized bilinearly
(antialiased) and the targets with nearest-neighbour sampling (no mixing of valid/invalid pixels).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .base import MultiTaskDataset
from .imageio import _as_size
from .tasks import TaskSpec

NYU_CLASSES = 13
NYUV2_TASKS = (
    TaskSpec("segmentation", "segmentation", NYU_CLASSES, ignore_index=-1),
    TaskSpec("depth", "depth"),
    TaskSpec("normal", "normal"),
)
_KINDS = ("image", "label", "depth", "normal")


class NYUv2(MultiTaskDataset):
    """NYUv2 (MTAN ``.npy`` layout) with tasks segmentation / depth / normal.

    Args:
        root: folder holding ``train/`` and ``val/``.
        split: ``train`` or ``test`` (alias ``val``).
        image_size: ``None`` keeps 288x384; an int or ``(H, W)`` resizes.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", image_size=None) -> None:
        if split not in ("train", "test", "val"):
            raise ValueError(f"NYUv2 split must be 'train' or 'test' (alias 'val'), got {split!r}")
        self.root = Path(root)
        sub = "train" if split == "train" else "val"
        self.split = split
        base = self.root / sub
        for k in _KINDS:
            if not (base / k).is_dir():
                raise FileNotFoundError(f"NYUv2: folder {str(base / k)!r} not found (MTAN layout {sub}/{k}/<i>.npy)")
        ids = []
        for e in os.scandir(base / "image"):
            if e.name.endswith(".npy"):
                if not re.fullmatch(r"\d+\.npy", e.name):
                    raise ValueError(f"NYUv2: unexpected file {str(base / 'image' / e.name)!r} (expected <index>.npy)")
                ids.append(int(e.name[:-4]))
        ids.sort()
        if not ids:
            raise FileNotFoundError(f"NYUv2: no .npy images in {str(base / 'image')!r}")
        if ids != list(range(len(ids))):
            raise ValueError(f"NYUv2: {sub}/image must hold 0.npy..{len(ids) - 1}.npy (MTAN indexing); "
                             f"got {len(ids)} files with indices {ids[:3]}...{ids[-3:]}")
        for k in _KINDS[1:]:
            absent = [i for i in ids if not (base / k / f"{i}.npy").is_file()]
            if absent:
                raise FileNotFoundError(f"NYUv2: {len(absent)} file(s) missing in {str(base / k)!r}, e.g. "
                                        f"{[f'{i}.npy' for i in absent[:3]]}")
        self.files = tuple(f"{sub}/image/{i}.npy" for i in ids)
        self.tasks = NYUV2_TASKS
        self.num_channels = 3
        self.label_arrays = {}
        self._size = _as_size(image_size)
        native = self._load("image", 0).shape[:2]
        self.native_size = tuple(native)
        self.image_size = self._size or tuple(native)

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, kind: str, i: int) -> np.ndarray:
        path = self.root / self.files[i].replace("/image/", f"/{kind}/")
        arr = np.load(path, allow_pickle=False)
        expect = {"image": 3, "label": None, "depth": 1, "normal": 3}[kind]
        if kind == "label":
            if arr.ndim == 3 and arr.shape[-1] == 1:
                arr = arr[..., 0]
            ok = arr.ndim == 2
        else:
            if kind == "depth" and arr.ndim == 2:
                arr = arr[..., None]
            ok = arr.ndim == 3 and arr.shape[-1] == expect
        if not ok:
            raise ValueError(f"NYUv2: {str(path)!r} has shape {arr.shape}; expected "
                             f"{'[H, W]' if kind == 'label' else f'[H, W, {expect}]'}")
        return arr

    def _resize(self, t: torch.Tensor, mode: str) -> torch.Tensor:
        """``[C, H, W]`` -> ``[C, *image_size]``."""
        if self._size is None or tuple(t.shape[-2:]) == self._size:
            return t
        if mode == "nearest":
            return F.interpolate(t[None].double(), size=self._size, mode="nearest-exact")[0].to(t.dtype)
        return F.interpolate(t[None], size=self._size, mode="bilinear", align_corners=False, antialias=True)[0]

    def load_uint8(self, i: int) -> np.ndarray:
        img = self._load("image", i).astype(np.float32)
        if img.max() > 1.0 + 1e-3:
            img = img / 255.0
        t = self._resize(torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))), "bilinear")
        return np.clip(np.rint(t.numpy().transpose(1, 2, 0) * 255.0), 0, 255).astype(np.uint8)

    def targets(self, i: int) -> dict[str, torch.Tensor]:
        lab = self._load("label", i)
        seg = np.rint(lab).astype(np.int64)
        bad = (seg != -1) & ((seg < 0) | (seg >= NYU_CLASSES))
        if bad.any():
            raise ValueError(f"NYUv2: label {self.files[i].replace('/image/', '/label/')!r} has class "
                             f"{int(seg[bad][0])} outside 0..12 / -1")
        depth = self._load("depth", i).astype(np.float32).transpose(2, 0, 1)
        normal = self._load("normal", i).astype(np.float32).transpose(2, 0, 1)
        return {
            "segmentation": self._resize(torch.from_numpy(seg)[None], "nearest")[0],
            "depth": self._resize(torch.from_numpy(np.ascontiguousarray(depth)), "nearest"),
            "normal": self._resize(torch.from_numpy(np.ascontiguousarray(normal)), "nearest"),
        }
