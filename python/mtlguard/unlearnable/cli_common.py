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
        crop = getattr(args, "eot_crop_scale", None)  # None: EOTConfig's (and work folders made before the option)
        crop = EOTConfig.crop_scale if crop is None else tuple(float(s) for s in crop.split(","))
        if len(crop) != 2:
            raise ValueError(f"--eot-crop-scale needs LO,HI, got {args.eot_crop_scale!r}")
        return EOTConfig(sizes=sizes, crop_scale=crop, **_defense_probabilities(args.eot_defenses))
    except ValueError as e:
        raise SystemExit(f"--eot-sizes / --eot-crop-scale / --eot-defenses: {e}") from None


def _defense_probabilities(spec) -> dict:
    """``--eot-defenses``: a scale of :class:`EOTConfig`'s default probabilities, or ``gray=p,...`` (others 0)."""
    from .eot import FILE_TRANSFORMS as names, EOTConfig

    if isinstance(spec, (int, float)):
        return {f"p_{n}": p * spec for n, p in zip(names, EOTConfig().probabilities())}
    out = {f"p_{n}": 0.0 for n in names}
    for kv in (kv.strip() for kv in str(spec).split(",")):
        name, _, value = kv.partition("=")
        try:
            p = float(value)
        except ValueError:
            p = None
        if name.strip() not in names or p is None:
            raise ValueError(f"{kv!r} is not NAME=P with NAME one of {', '.join(names)} (or give one number, a scale)")
        out[f"p_{name.strip()}"] = p
    return out


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
