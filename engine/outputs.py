"""What the engine writes besides the images, and the checks before it writes anything.

* ``labels.csv`` -- the labels the run used, in the :mod:`mtlguard.data.folder` format: a ``file``
  column (the output path relative to ``--output``), one column per generator task holding the class
  index used (``-1`` = unprotected) and the input's ``split`` column when it had one.  One row per
  written image (this run's and earlier runs' of the same job).
* ``tasks.json`` -- ``{"tasks": [TaskSpec dicts], "num_channels": C}`` (the generator's tasks and input
  channels), so ``FolderDataset(OUTPUT)`` / ``mtlguard train --data folder --root OUTPUT`` read the
  output directly.

Both are written atomically and journaled as this job's files (a rerun rewrites them; they never
count as unrelated files).  :func:`find_conflicts` lists existing files a run would replace that no
earlier run of the same job wrote; :func:`check_writable` refuses an output directory that cannot be
written, before anything is.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np

from .imageio import atomic_write

LABELS_CSV = "labels.csv"
TASKS_JSON = "tasks.json"
META_FILES = (LABELS_CSV, TASKS_JSON)


def find_conflicts(out_root: Path, out_rels, journal) -> list[str]:
    """Output paths that exist (file, link or directory) but were not written by an earlier run of this job."""
    return [r for r in out_rels if os.path.lexists(out_root / r) and not journal.owns(r)]


def check_writable(out_root: Path, shown: str) -> None:
    """PermissionError (one line) if ``out_root`` (or, when it does not exist yet, its nearest existing
    parent) cannot be written; NotADirectoryError if that is a file."""
    probe = out_root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise NotADirectoryError(f"output directory {shown}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        where = "" if probe == out_root else f" (its parent {probe} is read-only)"
        raise PermissionError(f"output directory {shown} is not writable{where}")


def _cell(task: dict, k: int) -> str:
    """The labels.csv cell of class ``k``: the index, or the class name where the index is itself another
    class's name (FolderDataset reads a cell that equals a class name as that name)."""
    names = [str(c) for c in (task.get("class_names") or [])]
    if k >= 0 and str(k) in names and names.index(str(k)) != k:
        return names[k]
    return str(int(k))


def labels_csv_text(rows: list[tuple[str, np.ndarray, str | None]], tasks: list[dict], with_split: bool) -> str:
    """The labels.csv text of ``(output path, labels [K], split)`` rows."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["file", *(t["name"] for t in tasks), *(["split"] if with_split else [])])
    for out_rel, labels, split in rows:
        cells = [_cell(t, int(v)) for t, v in zip(tasks, labels)]
        w.writerow([out_rel, *cells, *([split or ""] if with_split else [])])
    return buf.getvalue()


def tasks_json_text(tasks: list[dict], channels: int) -> str:
    """``tasks.json`` for the generator's classification tasks (full TaskSpec dicts)."""
    from mtlguard.data.tasks import TaskSpec

    specs = [TaskSpec.from_dict({k: v for k, v in t.items() if k in ("name", "kind", "num_classes", "class_names")})
             for t in tasks]
    return json.dumps({"tasks": [s.to_dict() for s in specs], "num_channels": int(channels)}, indent=2) + "\n"


def binary_unprotected(rows, tasks: list[dict]) -> list[str]:
    """Binary tasks with a ``-1`` cell: mtlguard's folder loader accepts -1 only for multiclass tasks."""
    return [t["name"] for k, t in enumerate(tasks)
            if t.get("kind") == "binary" and any(int(lab[k]) < 0 for _, lab, _ in rows)]


def write_meta(out_root: Path, rows, tasks: list[dict], channels: int, with_split: bool) -> dict:
    """Write labels.csv and tasks.json atomically; returns their report entry."""
    atomic_write(out_root / LABELS_CSV, labels_csv_text(rows, tasks, with_split).encode())
    atomic_write(out_root / TASKS_JSON, tasks_json_text(tasks, channels).encode())
    return {"labels_csv": LABELS_CSV, "tasks_json": TASKS_JSON, "rows": len(rows)}
