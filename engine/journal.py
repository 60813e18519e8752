"""Resumable runs: the output directory's ``.mtlguard-engine/`` state.

* ``run.json`` -- the run's fingerprint (model hash, format, eps, labels source, mode, and the
  selection / metadata options when set).  A rerun with a different fingerprint into the same output
  directory is refused (outputs would mix).
* ``journal.jsonl`` -- one JSON line per output: ``{"started": out}`` before an output is written
  (a batch at a time), then ``{"file", "out", "max_abs", ...}`` after its atomic rename.  An output is
  *finished* when it exists and has a done line; one that exists with only a started line (killed
  between rename and journal append) is regenerated; an existing file with no line at all was not
  written by this job and is never replaced silently (``--overwrite``).  Temp files left by a killed
  run (``.<name>.mtlg-tmp-*``) are removed at start.  A torn last line is ignored.
* ``report.json`` -- the last run's report.

:class:`Journal` reads the state without writing anything (so a refused run leaves the output
directory untouched); :meth:`Journal.open` starts appending.
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
    """The state of earlier runs in ``output_root`` (read at construction) and the appender of this run."""

    def __init__(self, output_root: Path, fingerprint: dict | None = None):
        self.root = Path(output_root)
        self.dir = self.root / STATE_DIR
        self.path = self.dir / "journal.jsonl"
        run = self.dir / "run.json"
        self.previous = json.loads(run.read_text()) if run.is_file() else None
        self.done: dict[str, dict] = {}
        self.started: set[str] = set()
        self._read()
        self._lock = threading.Lock()
        self._f = None
        if fingerprint is not None:  # the old one-step form: check and open
            self.open(fingerprint)

    def _read(self) -> None:
        if not self.path.is_file():
            return
        with open(self.path) as f:
            for line in f:
                try:
                    rec = json.loads(line)
                    if "started" in rec:
                        self.started.add(str(rec["started"]))
                    else:
                        self.done[rec["out"]] = rec
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # torn line from a killed run

    def check(self, fingerprint: dict) -> None:
        """Refuse a run whose settings differ from the earlier run's in this directory."""
        old = self.previous
        if old is not None and old != fingerprint:
            diff = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
            raise ValueError(f"{self.root}: this output directory holds a run with different settings ({diff}); "
                             "use a new --output directory (outputs of different runs must not mix)")

    def open(self, fingerprint: dict) -> "Journal":
        """Check ``fingerprint``, write ``run.json`` (first run) and start appending."""
        self.check(fingerprint)
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.previous is None:
            atomic_write_text(self.dir / "run.json", json.dumps(fingerprint, indent=1, sort_keys=True),
                              prefix=f".run.json{TMP_MARK}", suffix="")
            self.previous = fingerprint
        self._f = open(self.path, "a")
        if self._f.tell() > 0:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # torn last line: terminate it so the next record parses
                    self._f.write("\n")
                    self._f.flush()
        return self

    def owns(self, out_rel: str) -> bool:
        """True if an earlier run of this job wrote (or started writing) ``out_rel``."""
        return out_rel in self.done or out_rel in self.started

    def finished(self, out_rel: str) -> bool:
        return out_rel in self.done and (self.root / out_rel).is_file()

    def _write(self, text: str) -> None:
        with self._lock:
            self._f.write(text)
            self._f.flush()

    def start(self, out_rels) -> None:
        """Record that these outputs are about to be written (before their atomic renames)."""
        new = [r for r in out_rels if r not in self.started]
        if new:
            self._write("".join(json.dumps({"started": r}) + "\n" for r in new))
            self.started.update(new)

    def record(self, rec: dict) -> None:
        self._write(json.dumps(rec, sort_keys=True) + "\n")
        self.done[rec["out"]] = rec

    def close(self) -> None:
        if self._f is not None:
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
