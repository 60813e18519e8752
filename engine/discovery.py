"""Which files a run protects: image discovery under the input root, output names, and the
``--include`` / ``--exclude`` / ``--exclude-split`` selection.

Glob patterns (:class:`PathFilter`) are matched against the POSIX path relative to ``--input``:
``*`` matches within one path segment, ``?`` one character, ``[abc]`` / ``[!abc]`` a class, ``**``
any number of segments (``a/**/b.png``, ``raw/**``); a pattern without ``/`` matches the file name in
any directory (``*.png``); a trailing ``/`` means everything below (``test/`` = ``test/**``).  A file is
selected when it matches some ``--include`` (all files when none is given) and no ``--exclude``.

Partial data protection (``--protect-fraction r --seed S``, MTL-UE Table 9), :func:`mark_protected`: of the
``n`` selected images (after the globs and ``--exclude-split``; files refused at discovery -- output name
collisions, escaping symlinks -- are not counted), sorted by their relative path, the ones at the
positions :func:`mtlguard.unlearnable.protect.protected_subset` ``(n, r, S)`` picks are protected
(``round(r * n)`` of them) and the others written clean.  The rule reads only the sorted paths, so the
choice is the same for every executor, batch size, pixel budget and resumed run, and the same as
``mtlguard poison --protect-fraction r --seed S`` makes over the same ``n`` items in that order.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .journal import STATE_DIR
from .work import Item

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_SUFFIX = {"png": ".png", "webp": ".webp"}


def output_name(rel: str, fmt: str) -> tuple[str, str]:
    """``(output relative path, output format)`` of the input file ``rel`` for ``--format fmt``.

    ``same``: JPEG sources stay JPEG (same name), every other source becomes PNG."""
    p = Path(rel)
    src_jpeg = p.suffix.lower() in (".jpg", ".jpeg")
    if fmt == "same":
        fmt = "jpeg" if src_jpeg else "png"
    if fmt == "jpeg":
        return (rel if src_jpeg else p.with_suffix(".jpg").as_posix()), "jpeg"
    return p.with_suffix(_SUFFIX[fmt]).as_posix(), fmt


def _class(pattern: str, i: int) -> tuple[str, int]:
    """Regex of the ``[...]`` class starting at ``pattern[i]`` and the index after it (a literal ``[``
    when unclosed)."""
    j = i + 1
    if j < len(pattern) and pattern[j] == "!":
        j += 1
    if j < len(pattern) and pattern[j] == "]":
        j += 1
    end = pattern.find("]", j)
    if end < 0:
        return re.escape("["), i + 1
    body = pattern[i + 1:end].replace("\\", "\\\\")
    if body.startswith("!"):
        body = "^" + body[1:]
    return f"[{body}]", end + 1


def glob_regex(pattern: str) -> re.Pattern:
    """The compiled regex of a path glob (see the module docstring); it must match a whole relative path."""
    p = pattern.strip().replace("\\", "/")
    while p.startswith("./"):
        p = p[2:]
    if p.endswith("/"):
        p += "**"
    if "/" not in p:
        p = "**/" + p
    out, i = [], 0
    while i < len(p):
        if p.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif p.startswith("**", i):
            out.append(".*")
            i += 2
        elif p[i] == "*":
            out.append("[^/]*")
            i += 1
        elif p[i] == "?":
            out.append("[^/]")
            i += 1
        elif p[i] == "[":
            part, i = _class(p, i)
            out.append(part)
        else:
            out.append(re.escape(p[i]))
            i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


class PathFilter:
    """``--include`` / ``--exclude`` globs; :meth:`reason` says why a path is left out (None: kept)."""

    def __init__(self, include=(), exclude=()):
        self.include = [(g, glob_regex(g)) for g in include]
        self.exclude = [(g, glob_regex(g)) for g in exclude]

    def reason(self, rel: str) -> str | None:
        if self.include and not any(rx.match(rel) for _, rx in self.include):
            return "include"
        if any(rx.match(rel) for _, rx in self.exclude):
            return "exclude"
        return None


@dataclass
class Discovery:
    """What :func:`discover` found: ``items`` to protect, per-file ``failures``, ``ignored`` non-image
    files, every image path ``found`` (before the selection) and the ``excluded`` paths by reason."""

    items: list[Item] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    ignored: int = 0
    found: list[str] = field(default_factory=list)
    excluded: dict[str, list[str]] = field(default_factory=dict)


def _walk(input_root: Path):
    """Sorted ``(path, relative path)`` of every file under ``input_root`` (the engine's state dir skipped)."""
    for dirpath, dirnames, files in os.walk(input_root):
        dirnames[:] = sorted(d for d in dirnames if d != STATE_DIR)
        for name in sorted(files):
            src = Path(dirpath) / name
            yield src, src.relative_to(input_root).as_posix()


def has_images(input_root: Path) -> tuple[bool, int]:
    """``(any image file under input_root, non-image files seen before the first image)``."""
    others = 0
    for _, rel in _walk(input_root):
        if rel.lower().endswith(IMAGE_EXTENSIONS):
            return True, others
        others += 1
    return False, others


def _symlink_escape(src: Path, input_root: Path) -> str | None:
    if src.is_symlink():
        target = src.resolve()
        if input_root not in target.parents:
            return f"symlink escapes the input root (-> {target})"
    return None


def discover(input_root: Path, fmt: str, exclude: Callable[[str], str | None] | None = None) -> Discovery:
    """Image files under ``input_root`` (sorted, symlinks not followed out of the root), their output
    names mirrored under the output root; ``exclude(rel)`` returns a reason to leave a file out (or
    None).  Output name collisions are failures."""
    found = Discovery()
    taken: dict[str, str] = {}
    for src, rel in _walk(input_root):
        if not rel.lower().endswith(IMAGE_EXTENSIONS):
            found.ignored += 1
            continue
        found.found.append(rel)
        why = exclude(rel) if exclude is not None else None
        if why is not None:
            found.excluded.setdefault(why, []).append(rel)
            continue
        escape = _symlink_escape(src, input_root)
        if escape is not None:
            found.failures.append({"file": rel, "reason": escape})
            continue
        out_rel, ofmt = output_name(rel, fmt)
        if out_rel in taken:
            found.failures.append({"file": rel, "reason": f"output name {out_rel!r} collides with {taken[out_rel]!r}"})
            continue
        taken[out_rel] = rel
        found.items.append(Item(src, rel, out_rel, ofmt))
    return found


def mark_protected(items: list[Item], fraction: float, seed: int) -> list[str]:
    """Partial data protection (see the module docstring): set ``Item.protect`` on ``items`` by
    :func:`~mtlguard.unlearnable.protect.protected_subset` over their sorted relative paths; returns the
    sorted relative paths left clean (empty when ``fraction >= 1``: every item protected)."""
    for it in items:
        it.protect = True
    if fraction >= 1.0 or not items:
        return []
    from mtlguard.unlearnable.protect import protected_subset  # torch: imported only for a partial run

    rels = sorted(it.rel for it in items)
    mask = protected_subset(len(rels), fraction, seed)
    clean = {rel for rel, chosen in zip(rels, mask) if not chosen}
    for it in items:
        it.protect = it.rel not in clean
    return sorted(clean)
