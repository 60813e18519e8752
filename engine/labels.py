"""Where each image's class labels come from: a labels.csv, a dataset adapter, or nowhere.

The generator needs ``labels`` int64 [K] per image over its classification tasks (metadata order);
``-1`` = that task is not protected for that image (MTL-UE partial protection, Sec. 5.3).

* :class:`CsvLabels` -- ``labels.csv`` (the :mod:`mtlguard.data.folder` format: a ``file`` column, or
  ``path``/``filename``/``image``, relative to the input root; rows
  escaping the root are rejected) and one column per task holding a class index or a class name;
  empty or ``-1`` = unprotected.  Images without a row are unprotected (counted in the report).
* :class:`UTKFaceLabels` -- labels parsed from UTKFace file names (``age_gender_race_...jpg``).
* :class:`NoLabels` -- every task unprotected (a warning says protection is weak).
"""
from __future__ import annotations

import csv
import logging
import warnings
from pathlib import Path

import numpy as np

log = logging.getLogger("mtlguard.engine")
PATH_COLUMNS = ("path", "file", "filename", "image")


class LabelSource:
    name = "none"

    def __init__(self, tasks: list[dict]):
        self.tasks = tasks
        self.missing = 0

    def unprotected(self) -> np.ndarray:
        return np.full(len(self.tasks), -1, dtype=np.int64)

    def __call__(self, rel: str) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


class NoLabels(LabelSource):
    """All tasks unprotected for every image."""

    name = "none"

    def __init__(self, tasks: list[dict], warn: bool = True):
        super().__init__(tasks)
        if warn and tasks:
            warnings.warn("mtlguard-engine: no labels given: every task is unprotected (label -1), so the "
                          "protection is weak; pass --labels labels.csv or --dataset for class-wise protection",
                          UserWarning, stacklevel=3)

    def __call__(self, rel: str) -> np.ndarray:
        return self.unprotected()


def _class_index(task: dict, value: str, where: str) -> int:
    v = value.strip()
    if v == "" or v == "-1":
        return -1
    n = int(task.get("num_classes", 0))
    names = [str(c) for c in (task.get("class_names") or [])]
    if v in names:  # a class name wins over an index (as mtlguard.data.FolderDataset reads labels.csv)
        return names.index(v)
    if task.get("kind") == "binary" and v.lower() in ("true", "false"):
        return int(v.lower() == "true")
    try:
        idx = int(v)
    except ValueError:
        raise ValueError(f"{where}, column {task['name']!r}: value {value!r} is neither a class index in "
                         f"[0, {n}) nor a class name {names}") from None
    if not 0 <= idx < n:
        raise ValueError(f"{where}, column {task['name']!r}: class index {idx} out of range [0, {n}) (or -1)")
    return idx


class CsvLabels(LabelSource):
    """Labels from a CSV file; see the module docstring for the format."""

    name = "csv"

    def __init__(self, csv_path, input_root, tasks: list[dict]):
        from mtlguard.data.imageio import safe_join

        super().__init__(tasks)
        csv_path = Path(csv_path)
        if not csv_path.is_file():
            raise FileNotFoundError(f"labels file not found: {csv_path}")
        root = Path(input_root).resolve()
        self.table: dict[str, np.ndarray] = {}
        with open(csv_path, newline="") as f:
            reader = csv.DictReader(f)
            cols = reader.fieldnames or []
            pcol = next((c for c in cols if c.strip().lower() in PATH_COLUMNS), None)
            if pcol is None:
                raise ValueError(f"{csv_path}: no path column (expected one of {PATH_COLUMNS}; header is {cols})")
            present = [t for t in tasks if t["name"] in cols]
            absent = [t["name"] for t in tasks if t["name"] not in cols]
            if not present:
                raise ValueError(f"{csv_path}: none of the model's tasks {[t['name'] for t in tasks]} is a column "
                                 f"(header is {cols})")
            if absent:
                warnings.warn(f"{csv_path}: no column for task(s) {absent}: they are unprotected", UserWarning, stacklevel=2)
            for i, row in enumerate(reader, start=2):
                where = f"{csv_path}, row {i}"
                rel = (row.get(pcol) or "").strip()
                try:
                    full = safe_join(root, rel, what="labels.csv")
                except ValueError as e:
                    raise ValueError(f"{where}, column {pcol!r}: {e}") from None
                key = full.resolve().relative_to(root).as_posix()
                lab = self.unprotected()
                for k, t in enumerate(tasks):
                    if t["name"] in cols:
                        lab[k] = _class_index(t, row.get(t["name"]) or "", where)
                if key in self.table:
                    raise ValueError(f"{where}: duplicate row for {rel!r}")
                self.table[key] = lab

    def __call__(self, rel: str) -> np.ndarray:
        lab = self.table.get(rel)
        if lab is None:
            self.missing += 1
            return self.unprotected()
        return lab


class UTKFaceLabels(LabelSource):
    """UTKFace file names ``age_gender_race_*.jpg`` -> (age bin, gender, race), by task name."""

    name = "utkface"

    def __init__(self, tasks: list[dict]):
        super().__init__(tasks)
        known = {"age", "gender", "race"}
        if not any(t["name"] in known for t in tasks):
            raise ValueError(f"--dataset utkface: the model's tasks {[t['name'] for t in tasks]} include none of "
                             f"{sorted(known)}")

    def __call__(self, rel: str) -> np.ndarray:
        from mtlguard.data.utkface import age_to_bin, parse_utkface_name

        parsed = parse_utkface_name(Path(rel).name)
        if parsed is None:
            self.missing += 1
            return self.unprotected()
        age, gender, race = parsed
        values = {"age": age_to_bin(age), "gender": gender, "race": race}
        lab = self.unprotected()
        for k, t in enumerate(self.tasks):
            if t["name"] in values and values[t["name"]] < int(t.get("num_classes", 0)):
                lab[k] = values[t["name"]]
        return lab


DATASETS = {"utkface": UTKFaceLabels}


def make_label_source(tasks: list[dict], input_root, labels=None, dataset: str | None = None) -> LabelSource:
    """One of the sources above (``labels`` and ``dataset`` are exclusive; neither -> :class:`NoLabels`)."""
    if labels is not None and dataset is not None:
        raise ValueError("give either labels (a labels.csv) or dataset, not both")
    if labels is not None:
        return CsvLabels(labels, input_root, tasks)
    if dataset is not None:
        if dataset not in DATASETS:
            raise ValueError(f"unknown dataset adapter {dataset!r}; known: {sorted(DATASETS)}")
        return DATASETS[dataset](tasks)
    return NoLabels(tasks)
