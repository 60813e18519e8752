"""Dataset options shared by ``mtlguard fit``, ``poison`` and ``evaluate-protection``."""
from __future__ import annotations

import argparse
import shlex
import sys


def add_data_args(p: argparse.ArgumentParser, split_default: str = "train") -> None:
    p.add_argument("--data", required=True, help="dataset name for mtlguard.data.build_dataset (utkface, folder, synthetic, ...)")
    p.add_argument("--root", default=None, help="dataset root (utkface: the folder holding images/)")
    p.add_argument("--split", default=split_default, help="split to use (default: %(default)s)")
    p.add_argument("--image-size", type=int, default=32, help="image side in pixels (default: %(default)s)")
    p.add_argument("--subset", type=int, default=None, help="use N images of the split (stratified where supported)")
    p.add_argument("--tasks", default=None, help="comma list of task names (default: all)")
    p.add_argument("--cache-dir", default=None, help="decoded-image cache folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--no-progress", action="store_true")


def add_delta_units_arg(p: argparse.ArgumentParser, flag: str) -> None:
    """``flag`` (``--delta-units`` / ``--gen-delta-units``): :class:`MTLUEGenerator`'s ``delta_units``."""
    p.add_argument(flag, choices=["raw", "eps"], default="eps",
                   help="generator output read in units of eps (eps) or as delta (raw, Alg. 1 as written); "
                        "raw clips ~98%% of pixels at init and its MTL-UE-EM did not protect (default: %(default)s)")


def add_robust_fit_args(p: argparse.ArgumentParser) -> None:
    """Robust-fitting options (see :mod:`mtlguard.unlearnable.fitting`'s module notes)."""
    p.add_argument("--gen-size", type=int, default=None,
                   help="generator input side; smaller than --image-size = fit at the images' own size through the "
                        "engine's recipe (default: --image-size)")
    p.add_argument("--delta-channels", choices=["all", "luma"], default="all",
                   help="one perturbation plane per channel, or one luma plane for all (default: %(default)s)")
    p.add_argument("--eot", choices=["none", "victim"], default="none",
                   help="victim: L_b over random victim pipelines (uint8, grayscale/JPEG/blur/BDR, random-resized-crop "
                        "to --eot-sizes, flip) (default: %(default)s)")
    p.add_argument("--eot-sizes", default="32,40,48,56,64",
                   help="victim input sides drawn by --eot victim (default: %(default)s)")
    p.add_argument("--eot-defenses", type=float, default=1.0,
                   help="scale of the grayscale/JPEG/blur/BDR probabilities (0 = crops only) (default: %(default)s)")
    p.add_argument("--adv-eps", type=float, default=0.0,
                   help="REM-style adversarial views: L-inf radius in 1/255 units (0 = off) (default: %(default)s)")
    p.add_argument("--adv-steps", type=int, default=0,
                   help="PGD steps of the adversarial views (default: %(default)s)")
    p.add_argument("--joint", action="store_true",
                   help="EM: surrogates step on every generator batch (joint EM; see mtlguard.unlearnable.fitting)")
    p.add_argument("--amp", choices=["none", "bf16"], default="none",
                   help="bf16: autocast the fit's convolutions to bfloat16 (faster on CPUs with AVX512-BF16 and on "
                        "GPUs) (default: %(default)s)")
    p.add_argument("--channels-last", action="store_true", help="NHWC tensors in the fit (faster on CPU)")
    p.add_argument("--reinit-every", type=int, default=0,
                   help="EM: re-initialize the surrogates every N rounds (0 = never) (default: %(default)s)")


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
    """The command that produced a result: ``mtlguard`` + the arguments ``main`` parsed (``sys.argv`` if unknown)."""
    argv = getattr(args, "argv", None)
    if argv is None:
        argv = sys.argv[1:]
    return "mtlguard " + " ".join(shlex.quote(a) for a in argv)
