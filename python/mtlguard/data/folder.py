"""The generic folder format users bring (and ``mtlguard poison`` writes): images + ``labels.csv`` + ``tasks.json``.

On-disk format
--------------
::

    root/
      tasks.json        # task specs: a JSON list of TaskSpec dicts, or {"tasks": [...], "num_channels": 1|3}
      labels.csv        # header: file,<task 1>,<task 2>,...[,split][,any other column]
      any/sub/dirs/img_0001.jpg ...

* ``file``: image path relative to ``root`` (POSIX ``/`` separators).  Absolute paths, ``..``
  components and symlinks resolving outside ``root`` are rejected; each file may appear once.
* one column per task, named like the task.  A cell holds:

  - ``binary`` / ``multiclass``: a class name from ``class_names`` or a class index.  A value that
    equals a class name is read as the name, otherwise an integer is read as an index.  Binary
    tasks also accept ``true``/``false``.  A multiclass cell may hold the task's ``ignore_index``
    (``-1``: "no label", ignored by CE and unprotected by MTL-UE).
  - ``multilabel``: ``|``-separated class names or indices (``a|c``); an empty cell = no positive label.
  - ``regression``: a finite float.
  - ``segmentation`` / ``depth`` / ``normal``: a path (relative to ``root``) of a target file:
    ``.npy`` (segmentation int ``[H, W]``; depth float ``[H, W]`` or ``[H, W, 1]``, 0 = invalid;
    normal float ``[H, W, 3]``, 0 = invalid) or, for segmentation, a PNG of class indices
    (255 = ``ignore_index``).  Dense targets are resized with nearest-neighbour sampling.
* ``split`` (optional): e.g. ``train``/``test``; ``FolderDataset(..., split="train")`` keeps those rows.
* other columns are ignored.  Every other cell must be non-empty.

Every problem raises ``ValueError`` naming the CSV file, the line (header = line 1) and the column.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import posixpath
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from .base import ImageFileDataset, target_to_tensor
from ..atomic import atomic_write_bytes
from .imageio import safe_join
from .tasks import TaskSpec, tasks_from_json, tasks_to_json, validate_tasks

_TRUE = {"true", "yes"}
_FALSE = {"false", "no"}


def _norm_rel(path: str) -> str:
    """POSIX-normalised relative path (``a/./b.jpg`` -> ``a/b.jpg``) for duplicate detection."""
    return posixpath.normpath(path.strip().replace("\\", "/"))


def read_task_file(path: str | os.PathLike) -> tuple[tuple[TaskSpec, ...], int | None]:
    """Read a task-spec JSON file -> ``(tasks, num_channels or None)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"task-spec file {str(path)!r} not found")
    text = path.read_text()
    try:
        data = json.loads(text)
        tasks = tasks_from_json(text)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{str(path)!r}: invalid task-spec file: {e}") from e
    channels = data.get("num_channels") if isinstance(data, dict) else None
    if channels is not None and channels not in (1, 3):
        raise ValueError(f"{str(path)!r}: num_channels must be 1 or 3, got {channels!r}")
    return tasks, channels


def parse_label(spec: TaskSpec, value: str):
    """Parse one CSV cell of a non-dense task (see the module docstring); ValueError if invalid."""
    v = value.strip()
    names = spec.class_names or ()
    if spec.kind in ("binary", "multiclass"):
        if v in names:
            return names.index(v)
        if spec.kind == "binary" and v.lower() in _TRUE | _FALSE:
            return int(v.lower() in _TRUE)
        try:
            k = int(v)
        except ValueError:
            k = None
        if k is not None and (0 <= k < spec.num_classes or (spec.kind == "multiclass" and k == spec.ignore_index)):
            return k
        lowered = [n.lower() for n in names]
        if v.lower() in lowered and lowered.count(v.lower()) == 1:
            return lowered.index(v.lower())
        valid = f"class names {list(names)} or " if names else ""
        raise ValueError(f"unknown label {value!r}; expected {valid}an index in [0, {spec.num_classes})")
    if spec.kind == "multilabel":
        out = np.zeros(spec.num_classes, np.float32)
        for part in filter(None, (p.strip() for p in v.split("|"))):
            sub = TaskSpec(spec.name, "multiclass", spec.num_classes, spec.class_names, ignore_index=-10**9)
            out[parse_label(sub, part)] = 1.0
        return out
    if spec.kind == "regression":
        try:
            f = float(v)
        except ValueError:
            f = math.nan
        if not math.isfinite(f):
            raise ValueError(f"invalid number {value!r} (a finite float is required)")
        return f
    raise ValueError(f"task kind {spec.kind!r} has no scalar label")


def _resize_nearest(arr: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """Nearest-neighbour resize of ``[H, W]`` or ``[H, W, C]`` to ``size`` (keeps exact values)."""
    if size is None or arr.shape[:2] == tuple(size):
        return arr
    t = torch.from_numpy(np.ascontiguousarray(arr))
    t = t[None, None] if t.dim() == 2 else t.permute(2, 0, 1)[None]
    out = torch.nn.functional.interpolate(t.double(), size=size, mode="nearest-exact")[0]
    out = out[0] if arr.ndim == 2 else out.permute(1, 2, 0)
    return out.numpy().astype(arr.dtype)


def load_dense_target(spec: TaskSpec, path: Path, size: tuple[int, int] | None) -> torch.Tensor:
    """Load a dense target file (``.npy``, or PNG for segmentation) in the shape of the task table."""
    if path.suffix.lower() == ".npy":
        arr = np.load(path, allow_pickle=False)
    elif spec.kind == "segmentation":
        with Image.open(path) as img:
            arr = np.asarray(img).astype(np.int64)
        if arr.ndim != 2:
            raise ValueError(f"segmentation PNG {str(path)!r} must be single-channel (class indices)")
        arr[arr == 255] = spec.ignore_index
    else:
        raise ValueError(f"{spec.kind} target {str(path)!r} must be a .npy file")
    if spec.kind == "segmentation":
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim != 2:
            raise ValueError(f"segmentation target {str(path)!r} has shape {arr.shape}, expected [H, W]")
        arr = arr.astype(np.int64)
        bad = (arr != spec.ignore_index) & ((arr < 0) | (arr >= spec.num_classes))
        if bad.any():
            raise ValueError(f"segmentation target {str(path)!r} has class {int(arr[bad][0])} outside "
                             f"[0, {spec.num_classes}) and != ignore_index {spec.ignore_index}")
        return torch.from_numpy(_resize_nearest(arr, size))
    if spec.kind == "depth":
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim != 2:
            raise ValueError(f"depth target {str(path)!r} has shape {arr.shape}, expected [H, W] or [H, W, 1]")
        return torch.from_numpy(_resize_nearest(arr.astype(np.float32), size)[None].copy())
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"normal target {str(path)!r} has shape {arr.shape}, expected [H, W, 3]")
    out = _resize_nearest(arr.astype(np.float32), size)
    return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))


class FolderDataset(ImageFileDataset):
    """A folder of images with ``labels.csv`` and ``tasks.json`` (format in the module docstring).

    Args:
        root: the dataset folder.
        labels_csv: the label table, relative to ``root`` (or absolute).
        tasks: the task-spec file relative to ``root`` (or absolute), or a sequence of TaskSpec.
        image_size: ``None`` keeps the stored size (all images must then share it), int or ``(H, W)``.
        num_channels: 1 or 3; default: ``num_channels`` of the task file, else 3.
        split: keep only rows whose ``split`` column equals this value.
        task_names: keep only these tasks (in this order).
        subset: keep this many rows (of the split), drawn with ``seed`` and stratified by the
            classification labels (:func:`~mtlguard.data.splits.stratified_subset`), in file order.
        seed: seed of the subset draw.
        check_files: verify at construction that every image (and dense target) file exists.
        preload, cache_dir, num_workers, progress: see :class:`~mtlguard.data.base.ImageFileDataset`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        labels_csv: str | os.PathLike = "labels.csv",
        tasks: str | os.PathLike | Sequence[TaskSpec] = "tasks.json",
        image_size=None,
        num_channels: int | None = None,
        split: str | None = None,
        task_names: Sequence[str] | None = None,
        check_files: bool = True,
        preload: bool = False,
        cache_dir: str | os.PathLike | bool | None = None,
        num_workers: int | None = None,
        progress: bool = True,
        subset: int | None = None,
        seed: int = 0,
    ) -> None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"dataset folder {str(root)!r} not found")
        file_channels = None
        if isinstance(tasks, (str, os.PathLike)):
            specs, file_channels = read_task_file(root / tasks)
        else:
            specs = validate_tasks(tasks)
        if task_names is not None:
            by = {t.name: t for t in specs}
            missing = [n for n in task_names if n not in by]
            if missing:
                raise KeyError(f"unknown task(s) {missing}; the task file defines {list(by)}")
            specs = tuple(by[n] for n in task_names)
        channels = num_channels or file_channels or 3
        csv_path = root / labels_csv
        files, labels, dense = self._read_csv(root, csv_path, specs, split, check_files)
        if subset is not None:
            files, labels, dense = _subset_rows(csv_path, specs, files, labels, dense, int(subset), seed)
        self.csv_path = csv_path
        self.split = split
        self._dense = dense  # task -> list of relative target paths
        label_arrays = {}
        for t in specs:
            if t.is_dense:
                label_arrays[t.name] = np.asarray(dense[t.name], dtype=object)
            elif t.kind == "multilabel":
                label_arrays[t.name] = np.stack(labels[t.name]) if labels[t.name] else np.zeros((0, t.num_classes), np.float32)
            elif t.kind == "regression":
                label_arrays[t.name] = np.asarray(labels[t.name], dtype=np.float32)
            else:
                label_arrays[t.name] = np.asarray(labels[t.name], dtype=np.int64)
        super().__init__(root, files, label_arrays, specs, image_size=image_size, num_channels=channels,
                         preload=preload, cache_dir=cache_dir,
                         cache_name=(f"folder_{root.resolve().name}{'_' + split if split else ''}"
                                     + (f"_sub{int(subset)}s{seed}" if subset is not None else "")),
                         num_workers=num_workers, progress=progress)

    @staticmethod
    def _read_csv(root: Path, csv_path: Path, specs, split, check_files):
        if not csv_path.is_file():
            raise FileNotFoundError(f"label table {str(csv_path)!r} not found")
        where = str(csv_path)
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            try:
                header = [h.strip() for h in next(reader)]
            except StopIteration:
                raise ValueError(f"{where}: empty file (expected a header line 'file,<task>,...')") from None
            rows = list(reader)
        if "" in header:
            raise ValueError(f"{where}: line 1: empty column name in column {header.index('') + 1}")
        dup = sorted({h for h in header if header.count(h) > 1})
        if dup:
            raise ValueError(f"{where}: line 1: duplicate column(s) {dup}")
        if "file" not in header:
            raise ValueError(f"{where}: line 1: missing column 'file' (columns: {header})")
        for t in specs:
            if t.name not in header:
                raise ValueError(f"{where}: line 1: missing column {t.name!r} for task {t.name!r} (columns: {header})")
        if split is not None and "split" not in header:
            raise ValueError(f"{where}: split={split!r} requested but there is no 'split' column")
        col = {h: i for i, h in enumerate(header)}
        files: list[str] = []
        labels: dict[str, list] = {t.name: [] for t in specs if not t.is_dense}
        dense: dict[str, list[str]] = {t.name: [] for t in specs if t.is_dense}
        seen: dict[str, int] = {}
        for line, row in enumerate(rows, start=2):
            if not row or all(not c.strip() for c in row):
                continue  # blank line
            if len(row) != len(header):
                raise ValueError(f"{where}: line {line}: {len(row)} fields, the header has {len(header)}")
            if split is not None and row[col["split"]].strip() != split:
                continue
            rel = row[col["file"]].strip()
            if not rel:
                raise ValueError(f"{where}: line {line}, column 'file': empty file name")
            try:
                full = safe_join(root, rel, "image")
            except ValueError as e:
                raise ValueError(f"{where}: line {line}, column 'file': {e}") from None
            key = _norm_rel(rel)
            if key in seen:
                raise ValueError(f"{where}: line {line}, column 'file': duplicate file {rel!r} (also on line {seen[key]})")
            seen[key] = line
            if check_files and not full.is_file():
                raise ValueError(f"{where}: line {line}, column 'file': image {rel!r} not found under {str(root)!r}")
            files.append(key)
            for t in specs:
                cell = row[col[t.name]]
                if not cell.strip() and t.kind != "multilabel":
                    raise ValueError(f"{where}: line {line}, column {t.name!r}: empty value")
                if t.is_dense:
                    try:
                        tp = safe_join(root, cell.strip(), f"{t.name} target")
                    except ValueError as e:
                        raise ValueError(f"{where}: line {line}, column {t.name!r}: {e}") from None
                    if check_files and not tp.is_file():
                        raise ValueError(f"{where}: line {line}, column {t.name!r}: target file {cell.strip()!r} not found")
                    dense[t.name].append(_norm_rel(cell))
                    continue
                try:
                    labels[t.name].append(parse_label(t, cell))
                except ValueError as e:
                    raise ValueError(f"{where}: line {line}, column {t.name!r}: {e}") from None
        if not files:
            extra = f" with split={split!r}" if split is not None else ""
            raise ValueError(f"{where}: no rows{extra}")
        return files, labels, dense

    def targets(self, i: int) -> dict[str, torch.Tensor]:
        out = {}
        for t in self.tasks:
            if t.is_dense:
                out[t.name] = load_dense_target(t, self.root / self._dense[t.name][i], tuple(self.image_size))
            else:
                out[t.name] = target_to_tensor(t, self.label_arrays[t.name][i])
        return out


def _subset_rows(csv_path: Path, specs, files, labels, dense, n: int, seed: int):
    """``subset=n`` of the rows read from the CSV, stratified by the classification labels."""
    from .splits import stratified_subset

    cls = [t.name for t in specs if t.kind in ("binary", "multiclass")]
    strata = np.stack([np.asarray(labels[c]) for c in cls], 1) if cls else np.zeros((len(files), 1))
    try:
        idx = stratified_subset(strata, n, seed)
    except ValueError as e:
        raise ValueError(f"{csv_path}: {e}") from None
    pick = lambda values: [values[i] for i in idx]  # noqa: E731
    return pick(files), {k: pick(v) for k, v in labels.items()}, {k: pick(v) for k, v in dense.items()}


# --------------------------------------------------------------------------------------------------
# writer
# --------------------------------------------------------------------------------------------------
def _encode_image(arr: np.ndarray, fmt: str) -> bytes:
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] != 3):
        raise ValueError(f"an image must be [H, W], [H, W, 1] or [H, W, 3] uint8, got shape {arr.shape}")
    buf = io.BytesIO()
    img = Image.fromarray(arr)
    if fmt == "png":
        img.save(buf, format="PNG", compress_level=1)
    else:
        img.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _label_cell(spec: TaskSpec, value) -> str:
    if spec.kind in ("binary", "multiclass"):
        k = int(value)
        if spec.class_names and 0 <= k < spec.num_classes:
            return spec.class_names[k]
        return str(k)
    if spec.kind == "multilabel":
        idx = np.flatnonzero(np.asarray(value) > 0.5)
        return "|".join(spec.class_names[k] if spec.class_names else str(k) for k in idx)
    return repr(float(value))


def write_folder_dataset(
    out_dir: str | os.PathLike,
    files: Sequence[str],
    images_uint8,
    labels,
    tasks: Sequence[TaskSpec],
    *,
    source_root: str | os.PathLike | None = None,
    image_format: str = "png",
    overwrite: bool = False,
    split: Sequence[str] | None = None,
    extra_columns: Mapping[str, Sequence] | None = None,
    progress: bool = True,
) -> Path:
    """Write images + ``labels.csv`` + ``tasks.json`` in the :class:`FolderDataset` format.

    Used by ``mtlguard poison`` to write a protected copy with the layout of the source.

    Args:
        out_dir: destination folder (created).  Must not be, or lie inside, ``source_root``.
        files: relative paths of the images (as the source's ``.files``); validated like the reader.
        images_uint8: ``uint8 [N, H, W, C]`` array or a sequence of ``[H, W, C]`` arrays.
        labels: ``{task: values [N, ...]}`` (class indices, multilabel 0/1 rows, floats, or dense
            arrays ``[N, H, W(, C)]`` written as ``.npy`` under ``<task>/``), or an int ``[N, K]``
            array/tensor with the K classification tasks' labels in task order (``labels_tensor()``).
        tasks: the task specs, written to ``tasks.json``.
        source_root: the source dataset's root; writing into it is refused.
        image_format: ``"png"`` (lossless, default: keeps perturbations exact; the extension is
            replaced by ``.png``) or ``"same"`` (keep each file's extension; ``.jpg`` is written
            with JPEG quality 95, which alters a perturbation).
        overwrite: replace existing files; otherwise any existing destination raises before
            anything is written.
        split: optional per-item split names (a ``split`` column).
        extra_columns: additional CSV columns ``{name: values [N]}``.

    Returns:
        ``out_dir`` as a Path.  Loading it back: ``FolderDataset(out_dir)``.
    """
    from tqdm.auto import tqdm

    out = Path(out_dir)
    tasks = validate_tasks(tasks)
    files = [str(f) for f in files]
    n = len(files)
    if image_format not in ("png", "same"):
        raise ValueError(f"image_format must be 'png' or 'same', got {image_format!r}")
    if len(images_uint8) != n:
        raise ValueError(f"{len(images_uint8)} images for {n} files")
    labels = _labels_by_task(labels, tasks, n)
    dest = _destinations(out, files, image_format)
    dense_rel = {t.name: [f"{t.name}/{posixpath.splitext(d)[0]}.npy" for d in dest] for t in tasks if t.is_dense}
    _refuse_unsafe_targets(out, dest, source_root)
    all_out = dest + [r for v in dense_rel.values() for r in v] + ["labels.csv", "tasks.json"]
    if not overwrite:
        existing = [r for r in all_out if (out / r).exists()]
        if existing:
            raise FileExistsError(f"{len(existing)} file(s) already exist in {str(out)!r} (e.g. {existing[:3]}); "
                                  "pass overwrite=True to replace them")
    out.mkdir(parents=True, exist_ok=True)
    for i in tqdm(range(n), desc=f"writing {out.name}", disable=not progress, unit="img"):
        fmt = "png" if dest[i].lower().endswith(".png") else "jpeg"
        if fmt == "jpeg" and not dest[i].lower().endswith((".jpg", ".jpeg")):
            raise ValueError(f"files[{i}] {files[i]!r}: image_format='same' supports .png/.jpg/.jpeg only")
        atomic_write_bytes(out / dest[i], _encode_image(images_uint8[i], fmt), overwrite=overwrite)
        for t in tasks:
            if t.is_dense:
                buf = io.BytesIO()
                np.save(buf, np.asarray(labels[t.name][i]), allow_pickle=False)
                atomic_write_bytes(out / dense_rel[t.name][i], buf.getvalue(), overwrite=overwrite)
    csv_text = _labels_csv(dest, tasks, labels, dense_rel, split, extra_columns)
    atomic_write_bytes(out / "labels.csv", csv_text.encode(), overwrite=overwrite)
    channels = np.asarray(images_uint8[0]).shape[-1] if np.asarray(images_uint8[0]).ndim == 3 else 1
    spec = {"tasks": json.loads(tasks_to_json(tasks)), "num_channels": int(channels)}
    atomic_write_bytes(out / "tasks.json", (json.dumps(spec, indent=2) + "\n").encode(), overwrite=overwrite)
    return out


def _labels_by_task(labels, tasks: Sequence[TaskSpec], n: int) -> dict:
    """The writer's labels as ``{task: values [n, ...]}`` (an ``[n, K]`` class-index matrix is split by task)."""
    if isinstance(labels, (np.ndarray, torch.Tensor)):
        arr = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else labels
        cls_tasks = [t for t in tasks if t.is_classification]
        if arr.ndim != 2 or arr.shape != (n, len(cls_tasks)) or len(cls_tasks) != len(tasks):
            raise ValueError(f"a label matrix must be [N={n}, K={len(cls_tasks)}] and every task a classification "
                             f"task; got shape {tuple(arr.shape)} -- pass {{task: values}} instead")
        labels = {t.name: arr[:, k] for k, t in enumerate(cls_tasks)}
    for t in tasks:
        if t.name not in labels:
            raise ValueError(f"no labels given for task {t.name!r}")
        if len(labels[t.name]) != n:
            raise ValueError(f"task {t.name!r}: {len(labels[t.name])} labels for {n} files")
    return labels


def _destinations(out: Path, files: Sequence[str], image_format: str) -> list[str]:
    """Each image's path relative to ``out`` (``.png`` for ``image_format='png'``); paths that escape ``out``
    or two files that would land on one output raise, naming them."""
    dest, seen = [], {}
    for i, f in enumerate(files):
        try:
            safe_join(out, f, "image")
        except ValueError as e:
            raise ValueError(f"files[{i}]: {e}") from None
        rel = _norm_rel(f)
        if image_format == "png" and not rel.lower().endswith(".png"):
            rel = posixpath.splitext(rel)[0] + ".png"
        if rel in seen:
            raise ValueError(f"files[{i}] {f!r} and files[{seen[rel]}] map to the same output {rel!r}")
        seen[rel] = i
        dest.append(rel)
    return dest


def _refuse_unsafe_targets(out: Path, dest: Sequence[str], source_root) -> None:
    """Refuse writing into the source dataset: ``out`` inside it, or any output resolving (links) into it."""
    if source_root is None:
        return
    src_r = Path(source_root).resolve()
    out_r = out.resolve()
    if out_r == src_r or src_r in out_r.parents:
        raise ValueError(f"refusing to write into the source dataset: {str(out)!r} is inside {str(source_root)!r}")
    for rel in dest:
        target = (out / rel).resolve()
        if target == src_r or src_r in target.parents:
            raise ValueError(f"refusing to write {rel!r}: it resolves into the source dataset {str(source_root)!r}")


def _labels_csv(dest, tasks, labels, dense_rel, split, extra_columns) -> str:
    """``labels.csv``: one row per image (dense tasks name their ``.npy`` file), then ``split`` and extras."""
    header = ["file"] + [t.name for t in tasks] + (["split"] if split is not None else []) + list(extra_columns or {})
    sio = io.StringIO()
    w = csv.writer(sio, lineterminator="\n")
    w.writerow(header)
    for i, rel in enumerate(dest):
        row = [rel] + [dense_rel[t.name][i] if t.is_dense else _label_cell(t, labels[t.name][i]) for t in tasks]
        if split is not None:
            row.append(str(split[i]))
        row += [str(v[i]) for v in (extra_columns or {}).values()]
        w.writerow(row)
    return sio.getvalue()


def dataset_labels(dataset) -> dict[str, np.ndarray]:
    """Every task's labels of a :class:`~mtlguard.data.base.MultiTaskDataset` in the writer's layout.

    Classification: int64 ``[N]``; multilabel: ``[N, C]``; regression: float ``[N]``; segmentation
    ``[N, H, W]``, depth ``[N, H, W]``, normal ``[N, H, W, 3]`` (dense targets are read item by item).
    """
    out: dict[str, np.ndarray] = {}
    dense = [t for t in dataset.tasks if t.is_dense]
    for t in dataset.tasks:
        if not t.is_dense:
            out[t.name] = np.asarray(dataset.label_arrays[t.name])
    if dense:
        cols: dict[str, list] = {t.name: [] for t in dense}
        for i in range(len(dataset)):
            y = dataset.targets(i)
            for t in dense:
                v = y[t.name].numpy()
                cols[t.name].append(v[0] if t.kind == "depth" else v.transpose(1, 2, 0) if t.kind == "normal" else v)
        out.update({k: np.stack(v) for k, v in cols.items()})
    return out


def write_protected_copy(dataset, out_dir: str | os.PathLike, images_uint8, *, overwrite: bool = False,
                         image_format: str = "png", progress: bool = True) -> Path:
    """Write ``images_uint8`` (e.g. the protected images, ``[N, H, W, C]``) with ``dataset``'s labels and
    tasks as a :class:`FolderDataset` in ``out_dir``, under the dataset's relative file names
    (``{i:06d}.png`` for generated datasets; with ``image_format="png"`` every extension, e.g. NYUv2's
    ``.npy``, becomes ``.png``).  Writing into the dataset's root is refused.  Load it back with
    ``FolderDataset(out_dir)``.
    """
    files = dataset.files if dataset.files is not None else [f"{i:06d}.png" for i in range(len(dataset))]
    return write_folder_dataset(out_dir, files, images_uint8, dataset_labels(dataset), dataset.tasks,
                                source_root=dataset.root, image_format=image_format, overwrite=overwrite,
                                progress=progress)
