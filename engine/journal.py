"""Resumable runs: the output directory's ``.mtlguard-engine/`` state.

* ``run.json`` -- the run's fingerprint (model hash, format, eps, labels source, mode).  A rerun
  with a different fingerprint into the same output directory is refused (outputs would mix).
* ``journal.jsonl`` -- one JSON line per finished output (appended after its atomic rename).  An
  output is *finished* when it exists and has a journal line; an output that exists without a line
  (killed between rename and journal append) is regenerated; temp files left by a killed run
  (``.<name>.mtlg-tmp-*``) are removed at start.  A torn last line is ignored.
* ``report.json`` -- the last run's report.
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from mtlguard.atomic import atomic_write_text

from .imageio import TMP_MARK

STATE_DIR = ".mtlguard-engine"


class Journal:
    def __init__(self, output_root: Path, fingerprint: dict):
        self.root = Path(output_root)
        self.dir = self.root / STATE_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self.fingerprint = fingerprint
        run = self.dir / "run.json"
        if run.is_file():
            old = json.loads(run.read_text())
            if old != fingerprint:
                diff = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
                raise ValueError(f"{self.root}: this output directory holds a run with different settings ({diff}); "
                                 "use a new --output directory (outputs of different runs must not mix)")
        else:
            atomic_write_text(run, json.dumps(fingerprint, indent=1, sort_keys=True), prefix=f".run.json{TMP_MARK}", suffix="")
        self.path = self.dir / "journal.jsonl"
        self.done: dict[str, dict] = {}
        if self.path.is_file():
            with open(self.path) as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                        self.done[rec["out"]] = rec
                    except (json.JSONDecodeError, KeyError, TypeError):
                        continue  # torn line from a killed run
        self._lock = threading.Lock()
        self._f = open(self.path, "a")
        if self._f.tell() > 0:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # torn last line: terminate it so the next record parses
                    self._f.write("\n")
                    self._f.flush()

    def finished(self, out_rel: str) -> bool:
        return out_rel in self.done and (self.root / out_rel).is_file()

    def record(self, rec: dict) -> None:
        line = json.dumps(rec, sort_keys=True) + "\n"
        with self._lock:
            self._f.write(line)
            self._f.flush()
            self.done[rec["out"]] = rec

    def close(self) -> None:
        self._f.close()


def remove_stale_temps(output_root: Path) -> list[str]:
    """Delete temp files left by a killed run; returns their paths relative to ``output_root``."""
    removed = []
    for dirpath, _, files in os.walk(output_root):
        for name in files:
            if TMP_MARK in name and name.startswith("."):
                p = Path(dirpath) / name
                p.unlink(missing_ok=True)
                removed.append(p.relative_to(output_root).as_posix())
    return sorted(removed)
