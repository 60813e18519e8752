"""Where each image's class labels come from: a labels.csv, a dataset adapter, or nowhere; and
:func:`validate_labels`, the check to run before feeding labels to an exported generator.

The generator needs ``labels`` int64 [K] per image over its classification tasks (metadata order);
``-1`` = that task is not protected for that image (MTL-UE partial protection, Sec. 5.3).

* :class:`CsvLabels` -- ``labels.csv`` (the :mod:`mtlguard.data.folder` format: a ``file`` column, or
  ``path``/``filename``/``image``, relative to the input root; rows escaping the root are rejected),
  one column per task holding a class index or a class name (empty or ``-1`` = unprotected), and
  optionally a ``split`` column (``--exclude-split``).  A task without a column is refused unless
  ``allow_unprotected`` (a misspelled column would silently leave that task unprotected).  Images
  without a row are unprotected; they and rows naming missing files are listed in the report.
* :class:`UTKFaceLabels` -- labels parsed from UTKFace file names (``age_gender_race_...jpg``).
* :class:`NoLabels` -- every task unprotected (a warning says protection is weak).

The ONNX contract: the exported graph takes ``labels`` int64 [N, K] and *clamps* each value into
``[-1, C_k - 1]`` (class 12 of a 10-class task acts as class 9; -5 as -1), so a service must validate
labels first: :func:`validate_labels` (also exported as ``mtlguard.engine.validate_labels``).
"""
from __future__ import annotations

import csv
import difflib
import json
import os
import warnings
from pathlib import Path

import numpy as np

PATH_COLUMNS = ("path", "file", "filename", "image")
SPLIT_COLUMN = "split"


def _task_list(tasks) -> list[dict]:
    """``[{"name", "num_classes"}, ...]`` from GeneratorFacts, task dicts / TaskSpecs, an ONNX
    ``custom_metadata_map`` or the path of an exported ``.onnx`` file."""
    if isinstance(tasks, (str, os.PathLike)):
        from mtlguard.export.metadata import read_onnx_facts

        tasks = read_onnx_facts(tasks)
    if hasattr(tasks, "tasks") and not isinstance(tasks, (list, tuple)):
        tasks = tasks.tasks
    if isinstance(tasks, dict) and "mtlguard.tasks" in tasks:
        tasks = json.loads(tasks["mtlguard.tasks"])
    out = []
    for t in tasks:
        get = t.get if isinstance(t, dict) else (lambda k, d=None, t=t: getattr(t, k, d))
        out.append({"name": str(get("name")), "num_classes": int(get("num_classes", 0)),
                    "class_names": [str(c) for c in (get("class_names") or [])]})
    return out


def _named_labels(arr: np.ndarray, specs: list[dict], where) -> np.ndarray:
    """Object / string labels: class names, integers (or integer strings), ``-1`` / ``None`` / ``""``."""
    out = np.empty(arr.shape, dtype=np.int64)
    for (i, k), v in np.ndenumerate(arr):
        names = specs[k]["class_names"]
        text = None if v is None else str(v).strip()
        if text in (None, "", "-1"):
            out[i, k] = -1
        elif text in names:
            out[i, k] = names.index(text)
        else:
            try:
                out[i, k] = int(text)
            except ValueError:
                raise ValueError(f"labels{where(i)}, task {specs[k]['name']!r}: {text!r} is neither a class index "
                                 f"nor a class name {names}") from None
    return out


def _integer_labels(arr: np.ndarray, specs: list[dict], where) -> np.ndarray:
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    if arr.dtype.kind in "OUS":
        return _named_labels(arr, specs, where)
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr) | (arr != np.round(arr))
        if bad.any():
            i, k = (int(v) for v in np.argwhere(bad)[0])
            raise ValueError(f"labels{where(i)}, column {k}: {arr[i, k]!r} is not an integer class index")
        return arr.astype(np.int64)
    raise ValueError(f"labels must be integer class indices, got dtype {arr.dtype}")


def validate_labels(labels, tasks, rows=None) -> np.ndarray:
    """Check generator labels and return them as int64 [N, K]; ValueError on the first bad value.

    The exported ONNX graph clamps out-of-range labels silently (class 12 of a 10-class task would act
    as class 9, -5 as "unprotected"); call this before ``session.run``.

    Args:
        labels: [N, K] (or [K] for one image): per task a class index in ``0..C-1`` or ``-1`` (task
            unprotected); an object / string array may also hold class names and ``None`` / ``""`` (= -1).
        tasks: the generator's tasks in label order: ``GeneratorFacts``, a list of task dicts /
            ``TaskSpec`` (``name``, ``num_classes``), an onnxruntime ``custom_metadata_map``
            (``session.get_modelmeta().custom_metadata_map``) or the path of an exported ``.onnx``.
        rows: optional names of the N rows (e.g. file names), used in the error message.

    Example::

        from mtlguard.engine import validate_labels
        labels = validate_labels([[3, 1, 0]], session.get_modelmeta().custom_metadata_map)
    """
    specs = _task_list(tasks)
    arr = np.asarray(labels)
    if arr.ndim == 1:
        arr = arr[None]
    names = [t["name"] for t in specs]
    if arr.ndim != 2 or arr.shape[1] != len(specs):
        raise ValueError(f"labels must be [N, {len(specs)}] (one column per task {names}), "
                         f"got shape {np.shape(labels)}")

    def where(i):
        return f" row {i} ({rows[i]})" if rows is not None else f" row {i}"

    arr = _integer_labels(arr, specs, where)
    sizes = np.asarray([t["num_classes"] for t in specs], dtype=np.int64)
    bad = (arr < -1) | (arr >= sizes)
    if bad.any():
        i, k = (int(v) for v in np.argwhere(bad)[0])
        raise ValueError(f"labels{where(i)}, task {names[k]!r}: class {int(arr[i, k])} is out of range "
                         f"(expected 0..{int(sizes[k]) - 1}, or -1 = unprotected)")
    return arr


class LabelSource:
    """Labels per input path.  ``absent``: tasks this source has no labels for (all unprotected);
    ``missing``: images looked up without labels (counted by ``__call__``)."""

    name = "none"

    def __init__(self, tasks: list[dict]):
        self.tasks = tasks
        self.missing = 0
        self.absent: list[str] = []

    def unprotected(self) -> np.ndarray:
        return np.full(len(self.tasks), -1, dtype=np.int64)

    def lookup(self, rel: str) -> np.ndarray | None:  # pragma: no cover - interface
        """The labels of ``rel``, or None when the source has none for it."""
        raise NotImplementedError

    def __call__(self, rel: str) -> np.ndarray:
        lab = self.lookup(rel)
        if lab is None:
            self.missing += 1
            return self.unprotected()
        return lab

    def split_of(self, rel: str) -> str | None:
        """The ``split`` value of ``rel`` (None: no split column or no row)."""
        return None

    @property
    def has_split(self) -> bool:
        return False

    def rows(self) -> list[str]:
        """Every path the source has a row for (``labels.csv``: its rows; others: none)."""
        return []

    def _refuse_absent(self, where: str, hint: str, allow_unprotected: bool) -> None:
        if not self.absent:
            return
        msg = f"{where}: no labels for task(s) {self.absent}{hint}: they would be unprotected"
        if not allow_unprotected:
            raise ValueError(msg + "; fix the labels or pass --allow-unprotected to protect without them")
        warnings.warn(f"mtlguard-engine: {msg} (--allow-unprotected)", UserWarning, stacklevel=3)


class NoLabels(LabelSource):
    """All tasks unprotected for every image."""

    name = "none"

    def __init__(self, tasks: list[dict], warn: bool = True):
        super().__init__(tasks)
        self.absent = [t["name"] for t in tasks]
        if warn and tasks:
            warnings.warn("mtlguard-engine: no labels given: every task is unprotected (label -1), so the "
                          "protection is weak; pass --labels labels.csv or --dataset for class-wise protection",
                          UserWarning, stacklevel=3)

    def lookup(self, rel: str) -> np.ndarray:
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


def _column_hint(absent: list[str], cols: list[str]) -> str:
    """`` (did you mean column 'gendr' for 'gender'?)`` when a header name is close to a missing task."""
    pairs = []
    for name in absent:
        close = difflib.get_close_matches(name, cols, n=1, cutoff=0.6)
        close = close or [c for c in cols if c.lower() == name.lower()]
        if close:
            pairs.append(f"column {close[0]!r} for {name!r}")
    return f" (did you mean {', '.join(pairs)}?)" if pairs else ""


class CsvLabels(LabelSource):
    """Labels from a CSV file; see the module docstring for the format."""

    name = "csv"

    def __init__(self, csv_path, input_root, tasks: list[dict], allow_unprotected: bool = True):
        super().__init__(tasks)
        csv_path = Path(csv_path)
        if not csv_path.is_file():
            raise FileNotFoundError(f"labels file not found: {csv_path}")
        self.path = csv_path
        self.table: dict[str, np.ndarray] = {}
        self.splits: dict[str, str] = {}
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            cols = [c.strip() for c in next(reader, [])]
            self._check_header(cols, allow_unprotected)
            for i, row in enumerate(reader, start=2):
                if row and any(c.strip() for c in row):
                    self._add_row(dict(zip(cols, row)), f"{csv_path}, row {i}", Path(input_root).resolve())

    def _check_header(self, cols: list[str], allow_unprotected: bool) -> None:
        self.pcol = next((c for c in cols if c.lower() in PATH_COLUMNS), None)
        if self.pcol is None:
            raise ValueError(f"{self.path}: no path column (expected one of {PATH_COLUMNS}; header is {cols})")
        self.cols = cols
        self.absent = [t["name"] for t in self.tasks if t["name"] not in cols]
        if len(self.absent) == len(self.tasks):
            raise ValueError(f"{self.path}: none of the model's tasks {self.absent} is a column (header is "
                             f"{cols}){_column_hint(self.absent, cols)}")
        self._refuse_absent(str(self.path), f" (no column; header is {cols}){_column_hint(self.absent, cols)}",
                            allow_unprotected)

    def _add_row(self, row: dict, where: str, root: Path) -> None:
        from mtlguard.data.imageio import safe_join

        rel = (row.get(self.pcol) or "").strip()
        try:
            full = safe_join(root, rel, what="labels.csv")
        except ValueError as e:
            raise ValueError(f"{where}, column {self.pcol!r}: {e}") from None
        key = full.resolve().relative_to(root).as_posix()
        if key in self.table:
            raise ValueError(f"{where}: duplicate row for {rel!r}")
        lab = self.unprotected()
        for k, t in enumerate(self.tasks):
            if t["name"] in self.cols:
                lab[k] = _class_index(t, row.get(t["name"]) or "", where)
        self.table[key] = lab
        if SPLIT_COLUMN in self.cols:
            self.splits[key] = (row.get(SPLIT_COLUMN) or "").strip()

    def lookup(self, rel: str) -> np.ndarray | None:
        return self.table.get(rel)

    def split_of(self, rel: str) -> str | None:
        return self.splits.get(rel)

    @property
    def has_split(self) -> bool:
        return SPLIT_COLUMN in self.cols

    def rows(self) -> list[str]:
        return list(self.table)


class UTKFaceLabels(LabelSource):
    """UTKFace file names ``age_gender_race_*.jpg`` -> (age bin, gender, race), by task name."""

    name = "utkface"
    KNOWN = ("age", "gender", "race")

    def __init__(self, tasks: list[dict], allow_unprotected: bool = True):
        super().__init__(tasks)
        if not any(t["name"] in self.KNOWN for t in tasks):
            raise ValueError(f"--dataset utkface: the model's tasks {[t['name'] for t in tasks]} include none of "
                             f"{sorted(self.KNOWN)}")
        self.absent = [t["name"] for t in tasks if t["name"] not in self.KNOWN]
        self._refuse_absent("--dataset utkface", f" (UTKFace names carry only {list(self.KNOWN)})", allow_unprotected)

    def lookup(self, rel: str) -> np.ndarray | None:
        from mtlguard.data.utkface import age_to_bin, parse_utkface_name

        parsed = parse_utkface_name(Path(rel).name)
        if parsed is None:
            return None
        age, gender, race = parsed
        values = {"age": age_to_bin(age), "gender": gender, "race": race}
        lab = self.unprotected()
        for k, t in enumerate(self.tasks):
            if t["name"] in values and values[t["name"]] < int(t.get("num_classes", 0)):
                lab[k] = values[t["name"]]
        return lab


DATASETS = {"utkface": UTKFaceLabels}


def make_label_source(tasks: list[dict], input_root, labels=None, dataset: str | None = None,
                      no_labels: bool = False, allow_unprotected: bool = False) -> LabelSource:
    """One of the sources above (``labels``, ``dataset`` and ``no_labels`` are exclusive; none of them ->
    :class:`NoLabels` with a warning).  A source without labels for some task is refused unless
    ``allow_unprotected``."""
    if labels is not None and dataset is not None:
        raise ValueError("give either labels (a labels.csv) or dataset, not both")
    if labels is not None:
        return CsvLabels(labels, input_root, tasks, allow_unprotected)
    if dataset is not None:
        if dataset not in DATASETS:
            raise ValueError(f"unknown dataset adapter {dataset!r}; known: {sorted(DATASETS)}")
        return DATASETS[dataset](tasks, allow_unprotected)
    return NoLabels(tasks)
