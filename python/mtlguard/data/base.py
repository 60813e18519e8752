"""The multi-task dataset base classes every loader builds on.

An item is ``(image, targets)``: ``image`` is ``float32 [C, H, W]`` in ``[0, 1]`` and ``targets`` is
``{task name: target}`` with the shapes/dtypes of the table in :mod:`mtlguard.data.tasks`
(binary/multiclass: int64 scalar; multilabel: float32 ``[C]``; regression: float32 scalar;
segmentation: int64 ``[H, W]``; depth: float32 ``[1, H, W]``; normal: float32 ``[3, H, W]``).
The default ``DataLoader`` collate gives ``(images [B, C, H, W], {task: [B, ...]})``.

Writing a protected copy
------------------------
File-backed datasets expose ``.root`` and ``.files`` (paths relative to ``root``, one per item, in
item order) and ``.load_uint8(i)`` (the decoded, resized ``uint8 [H, W, C]`` image the model sees).
``mtlguard poison`` reads ``load_uint8``/``images_uint8`` and ``labels_tensor``, perturbs, and writes
the result with :func:`mtlguard.data.folder.write_folder_dataset` under the same relative names.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .imageio import _as_size, cached_array, decode_image, decode_many, default_cache_dir, file_list_key
from .tasks import TaskSpec, validate_tasks


def image_to_tensor(arr: np.ndarray) -> torch.Tensor:
    """``uint8 [H, W, C]`` -> ``float32 [C, H, W]`` in ``[0, 1]`` (a fresh, writable tensor)."""
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32)).div_(255.0)


def target_to_tensor(spec: TaskSpec, value) -> torch.Tensor:
    """A per-image label (numpy scalar/array) -> the tensor the table in :mod:`tasks` prescribes."""
    if spec.kind in ("binary", "multiclass", "segmentation"):
        return torch.as_tensor(np.asarray(value, dtype=np.int64))
    return torch.as_tensor(np.asarray(value, dtype=np.float32))


class MultiTaskDataset(Dataset):
    """Base of all mtlguard datasets.

    Subclasses set :attr:`tasks`, :attr:`num_channels`, :attr:`image_size` and implement
    :meth:`__len__`, :meth:`load_uint8` and :meth:`targets`.  Per-image labels stored as
    ``self.label_arrays[task] -> np.ndarray [N, ...]`` get :meth:`targets` and
    :meth:`labels_tensor` for free.

    Attributes:
        tasks: tuple of :class:`~mtlguard.data.tasks.TaskSpec`, in head/label order.
        num_channels: image channels (3 RGB, 1 grayscale).
        image_size: ``(H, W)`` of every image this dataset returns.
        root: folder the files live in (``None`` for generated data).
        files: relative paths (POSIX style) of the items under ``root``, in item order, or ``None``.
    """

    tasks: tuple[TaskSpec, ...] = ()
    num_channels: int = 3
    image_size: tuple[int, int] = (0, 0)
    root: Path | None = None
    files: tuple[str, ...] | None = None
    label_arrays: dict[str, np.ndarray]

    # ---- to implement --------------------------------------------------------------------------
    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def load_uint8(self, i: int) -> np.ndarray:  # pragma: no cover - abstract
        """The image of item ``i`` as ``uint8 [H, W, C]`` (decoded, converted, resized)."""
        raise NotImplementedError

    def targets(self, i: int) -> dict[str, torch.Tensor]:
        """``{task: target tensor}`` of item ``i`` (default: from :attr:`label_arrays`)."""
        return {t.name: target_to_tensor(t, self.label_arrays[t.name][i]) for t in self.tasks}

    # ---- provided ------------------------------------------------------------------------------
    def __getitem__(self, i: int):
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for a dataset of {n} items")
        i = int(i) % n
        return image_to_tensor(self.load_uint8(i)), self.targets(i)

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tasks)

    @property
    def classification_tasks(self) -> tuple[TaskSpec, ...]:
        """The binary/multiclass tasks: the columns of :meth:`labels_tensor`."""
        return tuple(t for t in self.tasks if t.is_classification)

    def class_labels(self, task: str) -> np.ndarray:
        """int64 ``[N]`` class labels of one classification task (``-1`` = no label)."""
        return np.asarray(self.label_arrays[task], dtype=np.int64)

    def labels_tensor(self) -> torch.Tensor:
        """int64 ``[N, K]``: the class labels of the K classification tasks, in task order.

        This is what the MTL-UE generator embeds (MTL-UE Sec. 4, ``labels[:, k]``); ``-1`` marks an
        image without a label for that task (e.g. Office-31 images of another domain).  A dataset
        with no classification task (dense scenes) gives ``[N, 0]``.
        """
        cols = [self.class_labels(t.name) for t in self.classification_tasks]
        if not cols:
            return torch.zeros((len(self), 0), dtype=torch.int64)
        return torch.from_numpy(np.stack(cols, axis=1).astype(np.int64))

    def images_uint8(self, progress: bool = True) -> np.ndarray:
        """All images as one ``uint8 [N, H, W, C]`` array (subclasses may return a cached mmap)."""
        from tqdm.auto import tqdm

        h, w = self.image_size
        out = np.empty((len(self), h, w, self.num_channels), np.uint8)
        for i in tqdm(range(len(self)), desc="loading images", disable=not progress):
            out[i] = self.load_uint8(i)
        return out

    def images_tensor(self) -> torch.Tensor:
        """All images as ``float32 [N, C, H, W]`` in ``[0, 1]`` (small datasets only)."""
        arr = self.images_uint8(progress=False)
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2))).float().div_(255.0)

    def subset(self, indices) -> "MultiTaskSubset":
        """A view of the items ``indices`` that keeps ``.tasks``, ``.files``, ``labels_tensor()`` etc.
        (unlike ``torch.utils.data.Subset``)."""
        return MultiTaskSubset(self, indices)

    def describe(self) -> dict:
        """JSON-able summary (name, size, image size, channels, tasks)."""
        return {
            "dataset": type(self).__name__,
            "num_items": len(self),
            "image_size": list(self.image_size),
            "num_channels": self.num_channels,
            "root": str(self.root) if self.root is not None else None,
            "tasks": [t.to_dict() for t in self.tasks],
        }

    def __repr__(self) -> str:
        tasks = ", ".join(f"{t.name}:{t.kind}" for t in self.tasks)
        return (f"{type(self).__name__}(n={len(self)}, image_size={tuple(self.image_size)}, "
                f"channels={self.num_channels}, tasks=[{tasks}])")


class MultiTaskSubset(MultiTaskDataset):
    """Items ``indices`` of ``dataset`` (see :meth:`MultiTaskDataset.subset`)."""

    def __init__(self, dataset: MultiTaskDataset, indices) -> None:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(dataset)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"subset indices must be in [-{n}, {n}), got min {idx.min()} max {idx.max()}")
        self.dataset = dataset
        self.indices = idx % n if n else idx
        self.tasks = dataset.tasks
        self.num_channels = dataset.num_channels
        self.image_size = dataset.image_size
        self.root = dataset.root
        self.files = tuple(dataset.files[i] for i in self.indices) if dataset.files is not None else None
        self.label_arrays = {k: np.asarray(v)[self.indices] for k, v in getattr(dataset, "label_arrays", {}).items()}

    def __len__(self) -> int:
        return len(self.indices)

    def load_uint8(self, i: int) -> np.ndarray:
        return self.dataset.load_uint8(int(self.indices[i]))

    def targets(self, i: int) -> dict[str, torch.Tensor]:
        return self.dataset.targets(int(self.indices[i]))

    def images_uint8(self, progress: bool = True) -> np.ndarray:
        return np.asarray(self.dataset.images_uint8(progress)[self.indices])


class ImageFileDataset(MultiTaskDataset):
    """A dataset of image files under ``root`` with per-image labels (the base of the file loaders).

    Args:
        root: folder holding the files.
        files: relative paths of the items (already validated by the subclass).
        label_arrays: ``{task: np.ndarray [N, ...]}`` per-image labels.
        tasks: the task specs (order = head/label order).
        image_size: ``None`` (keep the stored size; all images must then share it), int or ``(H, W)``.
        num_channels: 1 or 3.
        preload: decode everything at construction (with the cache); otherwise decode per item
            (:meth:`images_uint8` then decodes everything once, in memory).
        cache_dir: folder of the decoded-image cache (one ``uint8 [N, H, W, C]`` ``.npy`` per file
            list / size / channels, written atomically, memory-mapped on a hit).  ``None`` = the
            default folder (:func:`~mtlguard.data.imageio.default_cache_dir`) when ``preload``, else
            no cache; ``False`` = no cache; a path = that folder (also used by :meth:`images_uint8`).
        cache_name: readable prefix of the cache file name (dataset, split, subset, seed).
        num_workers: decoding threads (default ``min(8, cpu_count)``).
        progress: show a tqdm bar while decoding.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        files: Sequence[str],
        label_arrays: Mapping[str, np.ndarray],
        tasks: Sequence[TaskSpec],
        image_size=None,
        num_channels: int = 3,
        preload: bool = False,
        cache_dir: str | os.PathLike | bool | None = None,
        cache_name: str = "images",
        num_workers: int | None = None,
        progress: bool = True,
    ) -> None:
        self.root = Path(root)
        self.files = tuple(files)
        self.tasks = validate_tasks(tasks)
        self.num_channels = int(num_channels)
        if self.num_channels not in (1, 3):
            raise ValueError(f"num_channels must be 1 or 3, got {num_channels}")
        self.label_arrays = {k: np.asarray(v) for k, v in label_arrays.items()}
        for t in self.tasks:
            if t.name not in self.label_arrays:
                raise ValueError(f"no labels for task {t.name!r}")
            if len(self.label_arrays[t.name]) != len(self.files):
                raise ValueError(f"task {t.name!r}: {len(self.label_arrays[t.name])} labels for {len(self.files)} files")
        self._size = _as_size(image_size)
        self.num_workers = num_workers
        self.progress = progress
        self._images: np.ndarray | None = None
        #: True when the decoded images came from the cache file (set by :meth:`preload`)
        self.cache_hit: bool | None = None
        self.cache_path: Path | None = None
        if self._size is not None:
            self.image_size = self._size
        elif self.files:
            self.image_size = tuple(decode_image(self.path(0), None, self.num_channels).shape[:2])
        else:
            self.image_size = (0, 0)
        if cache_dir is False or (cache_dir is None and not preload):
            self._cache_dir = None
        else:
            self._cache_dir = Path(cache_dir) if cache_dir not in (None, True) else default_cache_dir()
        self._cache_name = cache_name
        if preload:
            self.preload()

    def __len__(self) -> int:
        return len(self.files)

    def path(self, i: int) -> Path:
        """Absolute path of item ``i``."""
        return self.root / self.files[i]

    def preload(self) -> np.ndarray:
        """Decode all images once (or load them from the cache) and keep them in memory."""
        if self._images is not None:
            return self._images
        n = len(self.files)
        h, w = self.image_size
        shape = (n, h, w, self.num_channels)
        cache_path = None
        if self._cache_dir is not None and n:
            key = file_list_key(self.root, self.files, {"size": [h, w], "channels": self.num_channels,
                                                        "resize": self._size is not None})
            cache_path = self._cache_dir / f"{self._cache_name}_{h}x{w}x{self.num_channels}_n{n}_{key[:16]}.npy"
        self.cache_path = cache_path
        paths = [self.path(i) for i in range(n)]
        self._images, self.cache_hit = cached_array(
            cache_path, shape,
            lambda: decode_many(paths, self._size, self.num_channels, self.num_workers, self.progress,
                                desc=f"decoding {self._cache_name}"),
        )
        return self._images

    def load_uint8(self, i: int) -> np.ndarray:
        if self._images is not None:
            return np.asarray(self._images[i])
        arr = decode_image(self.path(i), self._size, self.num_channels)
        if self._size is None and arr.shape[:2] != tuple(self.image_size):
            raise ValueError(f"image {str(self.path(i))!r} has size {arr.shape[:2]} but the dataset's "
                             f"image_size is {tuple(self.image_size)}; pass image_size=(H, W) to resize")
        return arr

    def images_uint8(self, progress: bool = True) -> np.ndarray:
        return self.preload()
