"""Verify what you ship: train the same victims on a clean folder and on its protected copy, test both on
held-out clean images, and report the protection ratio per task (``mtlguard verify``).

The two folders hold the same images (the protected copy may have other extensions, e.g. the engine's
``.png`` for ``.jpg`` inputs) and one label table describes them (the folder dataset format:
``labels.csv`` with a ``file`` column, one column per task and optionally ``split``; ``tasks.json``).
Test images come from the ``split`` column (``test`` rows), a separate clean ``--test`` folder, or a
seeded random ``test_fraction`` of the clean folder; they are never taken from the protected copy.
Victim training, caching, PR and tables are the deployment protocol's (:mod:`.deploy`,
:mod:`.deploy_report`); nothing is re-implemented here.
"""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..data.folder import parse_label, read_task_file
from ..data.imageio import IMAGE_EXTENSIONS, decode_image, safe_join
from .deploy import Job, VictimRuns
from .victims import DEFENSES, VictimRecipe, VictimSpec

PATH_COLUMNS = ("file", "path", "filename", "image")
#: verdict thresholds on a task's worst PR
PROTECTED_PR, PARTIAL_PR = 0.8, 0.3


@dataclass
class VerifyConfig:
    victims: Sequence[str] = ("resnet18@32",)
    defenses: Sequence[str] = ("standard",)
    recipe: VictimRecipe = field(default_factory=VictimRecipe)
    test_fraction: float = 0.2
    channels: int = 3
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        self.specs = [VictimSpec.parse(v) for v in self.victims]
        bad = [d for d in self.defenses if d not in DEFENSES]
        if bad:
            raise ValueError(f"unknown defense(s) {bad}; expected some of {DEFENSES}")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")

    @property
    def load_size(self) -> int:
        """Side the images are decoded at: 4x the largest victim input (the victims' crops read from it)."""
        return 4 * max(s.size for s in self.specs)


def find_image(root: Path, rel: str) -> Path | None:
    """``root/rel``, else the one image beside it with the same stem and another extension."""
    p = safe_join(root, rel, what="labels.csv file")
    if p.is_file():
        return p
    hits = [q for q in p.parent.glob(p.stem + ".*") if q.suffix.lower() in IMAGE_EXTENSIONS] if p.parent.is_dir() else []
    return hits[0] if len(hits) == 1 else None


def read_table(csv_path: Path, tasks) -> tuple[list[str], dict[str, np.ndarray], list[str] | None]:
    """``(files, {task: int labels}, splits or None)`` of a folder-format label table."""
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        pcol = next((c for c in cols if c.strip().lower() in PATH_COLUMNS), None)
        if pcol is None:
            raise ValueError(f"{csv_path}: no file column (expected one of {PATH_COLUMNS}; header is {cols})")
        missing = [t.name for t in tasks if t.name not in cols]
        if missing:
            raise ValueError(f"{csv_path}: no column for task(s) {missing} (header is {cols})")
        files, labels, splits = [], {t.name: [] for t in tasks}, [] if "split" in cols else None
        for line, row in enumerate(reader, start=2):
            files.append(row[pcol].strip())
            for t in tasks:
                try:
                    labels[t.name].append(int(parse_label(t, row[t.name] or "")))
                except ValueError as e:
                    raise ValueError(f"{csv_path}, line {line}, column {t.name!r}: {e}") from None
            if splits is not None:
                splits.append((row["split"] or "").strip())
    return files, {k: np.asarray(v, dtype=np.int64) for k, v in labels.items()}, splits


def _first(*paths: Path | None) -> Path | None:
    return next((p for p in paths if p is not None and p.is_file()), None)


@dataclass
class VerifyData:
    """Decoded training pairs (clean, protected), their labels and the clean test set."""

    tasks: tuple
    clean: np.ndarray
    protected: np.ndarray
    train_labels: dict
    test: np.ndarray
    test_labels: dict
    files: list
    notes: list


def load_pair(clean_dir, protected_dir, cfg: VerifyConfig, labels=None, tasks_file=None, test_dir=None) -> VerifyData:
    """Pair every labelled training image with its protected copy and load the clean test images."""
    clean_dir, protected_dir = Path(clean_dir), Path(protected_dir)
    for d in (clean_dir, protected_dir):
        if not d.is_dir():
            raise FileNotFoundError(f"folder not found: {d}")
    tpath = _first(Path(tasks_file) if tasks_file else None, clean_dir / "tasks.json", protected_dir / "tasks.json")
    if tpath is None:
        raise FileNotFoundError(f"no tasks.json in {clean_dir} or {protected_dir} (pass --tasks-file)")
    tasks, _ = read_task_file(tpath)
    tasks = tuple(t for t in tasks if t.is_classification)
    lpath = _first(Path(labels) if labels else None, clean_dir / "labels.csv", protected_dir / "labels.csv")
    if lpath is None:
        raise FileNotFoundError(f"no labels.csv in {clean_dir} or {protected_dir} (pass --labels)")
    files, lab, splits = read_table(lpath, tasks)
    notes: list[str] = []
    if test_dir is not None:
        test_files, test_lab, _ = read_table(_first(Path(test_dir) / "labels.csv") or Path(test_dir) / "labels.csv", tasks)
        train_idx, test_src = np.arange(len(files)), (Path(test_dir), test_files, test_lab)
    elif splits is not None and "test" in splits:
        is_test = np.array([s == "test" for s in splits])
        train_idx = np.flatnonzero(~is_test)
        test_src = (clean_dir, [files[i] for i in np.flatnonzero(is_test)], {k: v[is_test] for k, v in lab.items()})
    else:
        rng = np.random.default_rng(cfg.seed)
        order = rng.permutation(len(files))
        n_test = max(1, int(round(cfg.test_fraction * len(files))))
        test_i, train_idx = np.sort(order[:n_test]), np.sort(order[n_test:])
        test_src = (clean_dir, [files[i] for i in test_i], {k: v[test_i] for k, v in lab.items()})
        notes.append(f"no split column: a seeded {cfg.test_fraction:.0%} of the clean images is the test set")
    size = (cfg.load_size, cfg.load_size)
    pairs, keep = [], []
    for i in train_idx:
        c, p = find_image(clean_dir, files[i]), find_image(protected_dir, files[i])
        if c is None or p is None:
            continue
        pairs.append((c, p))
        keep.append(i)
    skipped = len(train_idx) - len(keep)
    if skipped:
        notes.append(f"{skipped} labelled training image(s) lack a clean or protected file and were left out")
    if not keep:
        raise ValueError(f"no training image of {lpath} was found in both {clean_dir} and {protected_dir}")
    keep = np.asarray(keep)
    clean = np.stack([decode_image(c, size, cfg.channels) for c, _ in pairs])
    prot = np.stack([decode_image(p, size, cfg.channels) for _, p in pairs])
    troot, tfiles, tlab = test_src
    tpaths = [find_image(troot, f) for f in tfiles]
    if any(p is None for p in tpaths) or not tpaths:
        raise ValueError(f"test images missing in {troot} (e.g. {next((f for f, p in zip(tfiles, tpaths) if p is None), '-')})")
    test = np.stack([decode_image(p, size, cfg.channels) for p in tpaths])
    return VerifyData(tasks, clean, prot, {k: v[keep] for k, v in lab.items()}, test, tlab,
                      [files[i] for i in keep], notes)


def run_verify(data: VerifyData, cfg: VerifyConfig, work: str | os.PathLike) -> dict[str, dict]:
    """Clean and protected victims for every (victim, defense); returns every finished run by job key."""
    runs = VictimRuns(Path(work) / "victims", cfg.recipe, data.tasks, data.train_labels, data.test, data.test_labels,
                      cfg.progress)
    images = {"clean": data.clean, "protected": data.protected}
    for spec in cfg.specs:
        for d in cfg.defenses:
            for s in range(spec.seeds):
                for method, output in (("protected", "files"), ("clean", "files")):
                    runs.run(Job(method, output, d, spec, s), lambda m=method: images[m])
    return VictimRuns.read(Path(work) / "victims")


def verdicts(rows: Sequence[dict], tasks: Sequence[str]) -> dict[str, dict]:
    """Per task: the worst PR over all victims/defenses and a verdict word."""
    out = {}
    for t in tasks:
        prs = [(r["pr"][t], r["victim"], r["defense"]) for r in rows if not math.isnan(r["pr"][t])]
        if not prs:
            out[t] = {"pr": float("nan"), "verdict": "undetermined (the clean victims did not beat the majority class)"}
            continue
        pr, victim, defense = min(prs)
        word = ("protected" if pr >= PROTECTED_PR else "partly protected" if pr >= PARTIAL_PR else "NOT protected")
        out[t] = {"pr": pr, "victim": victim, "defense": defense, "verdict": word}
    return out


def bar_chart(rows: Sequence[dict], tasks: Sequence[str], majority, path) -> Path:
    """Per task: clean vs protected accuracy of every victim/defense, with the majority rate as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..atomic import atomic_write

    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3.2), squeeze=False)
    labels = [f"{r['victim']}\n{r['defense']}" for r in rows]
    x = np.arange(len(rows))
    for ax, t in zip(axes[0], tasks):
        ax.bar(x - 0.2, [100 * r["clean"][t] for r in rows], 0.4, label="trained on clean")
        ax.bar(x + 0.2, [100 * r["acc"][t] for r in rows], 0.4, label="trained on protected")
        ax.axhline(100 * majority[t], color="k", ls="--", lw=1, label="majority class")
        for i, r in enumerate(rows):
            ax.text(i, 2, f"PR {r['pr'][t]:.2f}", ha="center", fontsize=6, rotation=90, color="w")
        ax.set_xticks(x, labels, fontsize=6)
        ax.set_title(t, fontsize=9)
        ax.set_ylabel("clean-test accuracy (%)", fontsize=7)
    axes[0][0].legend(fontsize=6, loc="upper right")
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    finally:
        plt.close(fig)


def write_verify_report(results, data: VerifyData, cfg: VerifyConfig, out_dir, command: str) -> dict:
    """``verify.json``, ``verify.md`` and ``verify.png`` in ``out_dir``; returns the verdicts."""
    from ..atomic import atomic_write_text
    from .deploy_report import defense_table, summarize, victim_table

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = [t.name for t in data.tasks]
    majority = {t: float(np.bincount(data.test_labels[t]).max() / len(data.test_labels[t])) for t in names}
    rows = summarize(results, names, majority)
    verdict = verdicts(rows, names)
    atomic_write_text(out / "verify.json", json.dumps(
        {"command": command, "tasks": names, "majority": majority, "train_images": len(data.files),
         "test_images": len(data.test), "notes": data.notes, "recipe": cfg.recipe.to_dict(), "verdicts": verdict,
         "summary": rows, "runs": results}, indent=1, default=float))
    png = bar_chart(rows, names, majority, out / "verify.png")
    md = [f"# Protection check ({', '.join(names)})", "", f"Command: `{command}`", "",
          f"{len(data.files)} training images (clean and protected copies), {len(data.test)} clean test images; "
          f"victims trained {cfg.recipe.epochs} epochs with RandomResizedCrop + flip; PR = (acc_clean - "
          f"acc_protected) / (acc_clean - acc_majority).", "", *[f"* {n}" for n in data.notes], "",
          "## Verdict (worst PR over victims and defenses)", "",
          *[f"* **{t}**: {v['verdict']} (PR {v['pr']:.2f}" + (f", {v['victim']} {v['defense']})" if "victim" in v else ")")
            for t, v in verdict.items()], "",
          "## Victims (standard training)", "", victim_table(rows, names, output="files"), ""]
    if len(cfg.defenses) > 1:
        md += ["## Defenses", "", defense_table(rows, cfg.specs[0].key, list(cfg.defenses), names, output="files"), ""]
    md.append(f"Bar chart: `{png.name}`.")
    atomic_write_text(out / "verify.md", "\n".join(md) + "\n")
    return verdict
