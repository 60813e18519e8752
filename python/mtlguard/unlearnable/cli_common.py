"""Run-time helpers shared by ``mtlguard fit``, ``poison``, ``evaluate-protection`` and ``verify`` (the
options themselves are defined torch-free in :mod:`mtlguard.cli.options`)."""
from __future__ import annotations

import argparse
import shlex
import sys


def eot_config(args):
    """The :class:`EOTConfig` the robust-fitting options ask for, or ``None``."""
    from .eot import EOTConfig

    if getattr(args, "eot", "none") == "none":
        return None
    try:
        sizes = tuple(int(s) for s in args.eot_sizes.split(",") if s.strip())
        base = EOTConfig()
        f = float(args.eot_defenses)
        return EOTConfig(sizes=sizes, p_gray=base.p_gray * f, p_jpeg=base.p_jpeg * f, p_blur=base.p_blur * f,
                         p_bdr=base.p_bdr * f)
    except ValueError as e:
        raise SystemExit(f"--eot-sizes / --eot-defenses: {e}") from None


def load_split(args, split: str, subset: int | None):
    """The dataset split named by the CLI options, ``--subset`` of it drawn with ``--seed`` (for every
    dataset, folder datasets included), restricted to ``--tasks``.  An unknown ``--data`` name or task
    raises ``SystemExit`` with one line."""
    from ..data import build_dataset, select_tasks
    from ..data.registry import canonical_name
    from .protect import TaskView

    # loaders that draw ``subset`` themselves (stratified) / accept ``cache_dir``; other datasets get a seeded
    # subset view (``synthetic`` generates ``subset`` scenes)
    native_subset = ("utkface", "celeba", "chestxray14", "folder")
    cached = native_subset + ("office31",)
    try:
        key = canonical_name(args.data)
    except KeyError as e:
        raise SystemExit(f"--data: {e.args[0]}") from None
    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda requested but CUDA is not available on this machine")
    kw = {"cache_dir": args.cache_dir} if args.cache_dir and key in cached else {}
    if subset is not None and key in native_subset:
        kw.update(subset=subset, seed=args.seed)
    elif subset is not None and key == "synthetic":
        kw.update(n=subset, seed=args.seed)
    ds = build_dataset(args.data, args.root, split=split, image_size=args.image_size, **kw)
    if subset is not None and key not in native_subset + ("synthetic",):
        import numpy as np

        from ..data.splits import stratified_subset

        ds = ds.subset(stratified_subset(np.zeros((len(ds), 1)), int(subset), args.seed))
    if args.tasks:
        names = [s.strip() for s in args.tasks.split(",") if s.strip()]
        try:
            ds = TaskView(ds, select_tasks(ds.tasks, names))
        except KeyError as e:
            raise SystemExit(f"--tasks: {e}") from None
    return ds


def command_line(args: argparse.Namespace | None = None) -> str:
    """The command that produced a result: ``mtlguard`` + the arguments ``main`` parsed (``sys.argv`` if unknown),
    without ``--note TEXT`` (the report prints the note itself; it does not change a number)."""
    argv = getattr(args, "argv", None)
    if argv is None:
        argv = sys.argv[1:]
    kept, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--note":
            skip = True
        elif not a.startswith("--note="):
            kept.append(a)
    return "mtlguard " + " ".join(shlex.quote(a) for a in kept)
