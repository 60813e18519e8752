"""``mtlguard train``: train an MTL (several tasks) or STL (one task) victim and write its metrics.

Example (the clean UTKFace MTL victim of reports/clean_utkface.md)::

    mtlguard train --data utkface --root ../shared/data/utkface --tasks age,gender,race \\
        --arch resnet18 --image-size 64 --subset 6000 --epochs 6 --out runs/victims/utk_mtl

A protected copy (``mtlguard poison`` / ``mtlguard-engine`` output, usually train rows only) is tested
on the clean data's test rows with ``--test-root``::

    mtlguard train --data folder --root protected/ --test-root clean/ --arch resnet18 --out runs/victim_prot

Writes the Trainer's ``out_dir`` layout (see :mod:`mtlguard.training.trainer`) plus ``result.json``
(command line, dataset sizes, final test metrics, wall time).  ``--resume`` continues an interrupted run.
"""
from __future__ import annotations

import json
import shlex
import sys
import time


def add_parser(subparsers) -> None:
    from .options import add_data_arg

    p = subparsers.add_parser("train", help="train an MTL / STL victim model (HPS, task weighting)",
                              description=__doc__.split("\n\n")[0])
    add_data_arg(p)
    p.add_argument("--test-root", default=None,
                   help="take the test split from this folder instead of --root (e.g. the clean data when --root is "
                        "a protected copy); default: --root")
    p.add_argument("--tasks", default=None, help="comma-separated task subset (default: all; one task = STL)")
    p.add_argument("--arch", default="resnet18",
                   help="resnet18, resnet50, resnet101, resnet152, wide_resnet50_2, vgg11, vgg16, densenet121, "
                        "mobilenet_v3_small, vit_b_16, small_cnn (default: %(default)s)")
    p.add_argument("--mtl", default="hps",
                   help="multi-task architecture: hps, mtan, cross_stitch, or branched:<group>@<k>[,<group>@<k>...] "
                        "(a group = task names joined by '+', k 0-4 = the last backbone block it shares; "
                        "e.g. branched:age+gender@3,race@1) (default: %(default)s)")
    p.add_argument("--stem", default="imagenet", choices=["imagenet", "cifar"], help="ResNet stem (default: %(default)s)")
    p.add_argument("--weighting", default="ls", help="ls, uw, rlw, aligned_mtl, fairgrad, pcgrad (default: %(default)s)")
    p.add_argument("--fairgrad-alpha", type=float, default=2.0, help="FairGrad's alpha")
    p.add_argument("--task-weights", default=None,
                   help="static task weights for --weighting ls, e.g. age=2,gender=1,race=1 (tasks left out weigh 1; "
                        "normalized to sum 1) (default: uniform)")
    p.add_argument("--epochs", type=int, default=60, help="training epochs")
    p.add_argument("--image-size", type=int, default=64, help="image side the victim sees (images are resized)")
    p.add_argument("--subset", type=int, default=None, help="use N training images (stratified when the loader supports it)")
    p.add_argument("--test-subset", type=int, default=None, help="use N test images")
    p.add_argument("--synthetic-n", type=int, nargs=2, default=(512, 128), metavar=("TRAIN", "TEST"),
                   help="scenes per split for --data synthetic (default: 512 128)")
    p.add_argument("--batch-size", type=int, default=512, help="training batch size")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--schedule", default="multistep", choices=["multistep", "step", "none"], help="LR schedule")
    p.add_argument("--no-augment", action="store_true", help="disable RandomCrop + HorizontalFlip")
    p.add_argument("--grad-clip", type=float, default=10.0, help="gradient-norm clip")
    p.add_argument("--eval-every", type=int, default=1, help="evaluate every N epochs")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is fastest on a shared, loaded CPU)")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers")
    p.add_argument("--cache-dir", default=None, help="decoded-image cache folder (loader default otherwise)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--resume", action="store_true", help="continue from out/checkpoint.pt")
    p.add_argument("--eval-before", action="store_true",
                   help="also evaluate the untrained model first (result.json 'initial'; before/after comparisons)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def _subset_indices(n: int, k: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:k].sort().values.tolist()


def _load(args, split: str, subset: int | None):
    from ..data.registry import build_dataset, canonical_name

    key = canonical_name(args.data)
    root = args.test_root if split == "test" and args.test_root else args.root
    kw = {}
    if key == "synthetic":
        kw["n"] = args.synthetic_n[0] if split == "train" else args.synthetic_n[1]
        kw["seed"] = args.seed
    else:
        if root is None:
            raise SystemExit(f"--data {args.data} needs --root (the dataset folder)")
        if args.cache_dir:
            kw["cache_dir"] = args.cache_dir
    if subset is not None and key in ("utkface",):
        kw["subset"] = subset
        kw["seed"] = args.seed
        subset = None
    try:
        ds = build_dataset(args.data, root, split=split, image_size=args.image_size, **kw)
    except ValueError as e:
        if key == "folder" and split == "test" and not args.test_root and "split" in str(e):
            raise SystemExit(f"--root {root}: {e}; train/test need a 'split' column, or pass --test-root with "
                             "the folder of the test images") from None
        raise
    if subset is not None and subset < len(ds):
        from torch.utils.data import Subset

        sub = Subset(ds, _subset_indices(len(ds), subset, args.seed))
        sub.tasks = ds.tasks  # type: ignore[attr-defined]
        return sub
    return ds


def _task_weights(args) -> dict | None:
    """``--task-weights`` as ``{task: weight}`` (LS only); a bad value exits with one line."""
    from ..weighting.ls import parse_task_weights

    if not args.task_weights:
        return None
    if args.weighting.lower() not in ("ls", "ew", "equal"):
        raise SystemExit(f"--task-weights: only for --weighting ls (got --weighting {args.weighting})")
    try:
        return parse_task_weights(args.task_weights)
    except ValueError as e:
        raise SystemExit(f"--task-weights: {e}") from None


def _train_config(args, tasks, task_weights: dict | None):
    """The run's :class:`~mtlguard.training.TrainConfig` from the command line."""
    from ..training import TrainConfig

    wkw = {"alpha": args.fairgrad_alpha} if args.weighting.lower() == "fairgrad" else {}
    if task_weights is not None:
        unknown = [k for k in task_weights if k not in [t.name for t in tasks]]
        if unknown:
            raise SystemExit(f"--task-weights: unknown task(s) {unknown}; the tasks are {[t.name for t in tasks]}")
        wkw = {"task_weights": task_weights}
    return TrainConfig(weighting=args.weighting, weighting_kwargs=wkw, epochs=args.epochs, lr=args.lr,
                       batch_size=args.batch_size, schedule=args.schedule, augment=not args.no_augment,
                       grad_clip=args.grad_clip, seed=args.seed, num_workers=args.num_workers,
                       eval_every=args.eval_every, progress=not args.no_progress)


def run(args) -> int:
    import torch

    from ..atomic import atomic_write_text
    from ..data.tasks import select_tasks
    from ..models import build_model, split_arch
    from ..training import Trainer
    from ..training.trainer import _jsonable
    from .options import check_arch, check_data

    check_data(args.data)
    try:
        args.arch, mtl = split_arch(args.arch, args.mtl)  # --arch resnet18/mtan is --arch resnet18 --mtl mtan
    except ValueError as e:
        raise SystemExit(f"--mtl: {e}") from None
    check_arch(args.arch)
    task_weights = _task_weights(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    train_set = _load(args, "train", args.subset)
    test_set = _load(args, "test", args.test_subset)
    names = [s.strip() for s in args.tasks.split(",") if s.strip()] if args.tasks else None
    try:
        tasks = select_tasks(train_set.tasks, names)
    except KeyError as exc:
        raise SystemExit(f"--tasks: {exc.args[0]}") from exc
    config = _train_config(args, tasks, task_weights)
    torch.manual_seed(args.seed)
    try:
        model = build_model(tasks, args.arch, in_channels=int(train_set[0][0].shape[0]), image_size=args.image_size,
                            stem=args.stem, mtl=mtl)
    except ValueError as e:
        raise SystemExit(f"--mtl {args.mtl}: {e}") from None
    trainer = Trainer(model, tasks, train_set, test_set, config, device=args.device, out_dir=args.out,
                      resume=args.resume)
    load_s = time.time() - t0
    initial = trainer.evaluate() if args.eval_before and trainer.start_epoch == 0 else None
    final = trainer.fit()
    result = {
        "command": "mtlguard " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv else None,
        "data": args.data, "root": args.root, "test_root": args.test_root, "tasks": [t.name for t in tasks],
        "arch": args.arch, "stem": args.stem, "mtl": mtl, "task_weights": task_weights, "weighting": args.weighting,
        "image_size": args.image_size, "epochs": args.epochs, "seed": args.seed, "device": args.device,
        "threads": torch.get_num_threads(), "batch_size": args.batch_size, "lr": args.lr,
        "train_size": len(train_set), "test_size": len(test_set), "subset": args.subset,
        "test_subset": args.test_subset, "data_load_s": round(load_s, 1),
        "wall_time_s": round(time.time() - t0, 1), "torch": torch.__version__, "initial": initial, "final": final,
    }
    atomic_write_text(trainer.out_dir / "result.json", json.dumps(_jsonable(result), indent=2))
    print(json.dumps(_jsonable({"out": str(trainer.out_dir), "wall_time_s": result["wall_time_s"], "final": final}),
                     indent=2))
    return 0
