"""``mtlguard poison``: write the protected (unlearnable) copy of a dataset.

The copy keeps the source's relative file names (extension -> lossless ``.png``) and labels in the
folder format (``labels.csv`` + ``tasks.json``, readable with ``--data folder``); from a folder dataset
it also keeps every other column of the source ``labels.csv`` (``split``, tasks left out by ``--tasks``,
your own columns), so ``mtlguard train --data folder --root OUT --test-root SOURCE`` trains on it.
Images are stored as uint8 ``x + round(delta * 255)`` and ``|delta| <= eps`` is checked on what is
written; the output may not lie inside the source tree.

``--protect-fraction r`` protects only a seeded fraction ``r`` of the images (MTL-UE Table 9's ``P_r``; the
others are written unchanged, ``T_{1-r}``) and adds a ``protected`` column (1/0) to ``labels.csv``.

Example::

    mtlguard poison --data utkface --root ../shared/data/utkface --image-size 32 \\
        --generator runs/mtl-ue-tap/generator.safetensors --out runs/utkface_protected
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path


def add_parser(subparsers) -> None:
    from .options import add_dataset_args, add_out_arg

    p = subparsers.add_parser("poison", help="write a protected copy of a dataset (MTL-UE generator or LSP/AR)",
                              description=__doc__.split("\n\n")[0])
    add_dataset_args(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--generator", help="fitted MTL-UE generator (.safetensors with its .json)")
    src.add_argument("--method", choices=["lsp-patch", "ar-patch", "lsp-average", "ar-average"],
                     help="surrogate-free class-wise baseline")
    p.add_argument("--protect-tasks", default=None,
                   help="comma list: protect only these tasks (others get the mean embedding; MTL-UE only)")
    p.add_argument("--protect-fraction", type=float, default=1.0,
                   help="protect this fraction of the images, drawn with --seed (the rest are copied unchanged); "
                        "labels.csv gets a 'protected' column when < 1 (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=256, help="images per generator batch")
    add_out_arg(p, "output folder (must not be inside the source)")
    p.add_argument("--overwrite", action="store_true", help="replace existing files in --out")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..unlearnable import MTLUEGenerator
    from ..unlearnable.cli_common import load_split
    from ..unlearnable.patterns import ClasswisePatterns
    from ..unlearnable.protect import (fraction_protector, generator_protector, pattern_protector, protect_images,
                                       protected_subset, write_protected)

    if not 0.0 < args.protect_fraction <= 1.0:
        raise SystemExit(f"--protect-fraction must be in (0, 1], got {args.protect_fraction}")
    ds = load_split(args, args.split, args.subset)
    x0, _ = ds[0]
    if args.generator:
        from mtlguard.export._load import resolve_checkpoint

        gen = MTLUEGenerator.load(resolve_checkpoint(args.generator))
        if gen.image_size != tuple(x0.shape[1:]) or gen.in_channels != x0.shape[0]:
            raise SystemExit(f"--generator {args.generator}: built for images {gen.in_channels}x{gen.image_size}, "
                             f"the dataset gives {tuple(x0.shape)}; pass the matching --image-size")
        names = [t.name for t in ds.tasks]
        missing = [t.name for t in gen.tasks if t.name not in names]
        if missing:
            raise SystemExit(f"--generator {args.generator}: the dataset lacks task(s) {missing}")
        protect = [s.strip() for s in args.protect_tasks.split(",")] if args.protect_tasks else None
        try:
            prot = generator_protector(gen, protect, args.device)
        except ValueError as e:
            raise SystemExit(f"--protect-tasks: {e}") from None
        eps = gen.eps
    else:
        if args.protect_tasks:
            raise SystemExit("--protect-tasks is only supported with --generator")
        kind, fusion = args.method.split("-")
        prot = pattern_protector(ClasswisePatterns(ds.tasks, kind=kind, fusion=fusion, in_channels=int(x0.shape[0]),
                                                   image_size=tuple(x0.shape[1:]), seed=args.seed))
        eps = None
    mask = None
    if args.protect_fraction < 1.0:
        mask = protected_subset(len(ds), args.protect_fraction, args.seed)
        prot = fraction_protector(prot, mask)
    images = protect_images(ds, prot, eps, batch_size=args.batch_size, progress=not args.no_progress)
    try:
        out = write_protected(ds, images, args.out, overwrite=args.overwrite, progress=not args.no_progress,
                              input_roots=[args.root] if args.root else [])
    except (ValueError, FileExistsError) as e:
        raise SystemExit(f"poison: {e}") from None
    kept = keep_source_columns(ds, Path(out))
    if mask is not None:
        add_column(Path(out), "protected", [int(v) for v in mask])
    print(json.dumps({"out": str(out), "images": len(images), "eps_checked": eps, "columns_kept": kept,
                      "protected": int(mask.sum()) if mask is not None else len(images),
                      "protect_fraction": args.protect_fraction}, indent=2))
    return 0


def add_column(out: Path, name: str, values) -> None:
    """Append column ``name`` (one value per data row, in order) to ``out/labels.csv``; rewritten atomically."""
    from mtlguard.atomic import atomic_write_text

    with open(out / "labels.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if len(rows) - 1 != len(values):
        raise ValueError(f"{out / 'labels.csv'}: {len(rows) - 1} rows for {len(values)} values of {name!r}")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(rows[0] + [name])
    for row, v in zip(rows[1:], values):
        w.writerow(row + [v])
    atomic_write_text(out / "labels.csv", buf.getvalue())


def _source_table(ds):
    """``(csv path, the dataset's rows' relative files)`` of the folder dataset under ``ds`` (TaskView /
    subset views unwrapped), or ``None`` for other datasets."""
    files, inner = getattr(ds, "files", None), ds
    while not hasattr(inner, "csv_path") and hasattr(inner, "dataset"):
        inner = inner.dataset
        files = files if files is not None else getattr(inner, "files", None)
    path = getattr(inner, "csv_path", None)
    return (Path(path), list(files)) if path is not None and files is not None else None


def keep_source_columns(ds, out: Path) -> list[str]:
    """Append to ``out/labels.csv`` every column of the source ``labels.csv`` it lacks (``split``, tasks
    left out, other columns), row by row; returns their names.  Rewritten atomically."""
    from mtlguard.atomic import atomic_write_text
    from mtlguard.data.folder import _norm_rel

    src = _source_table(ds)
    if src is None:
        return []
    csv_path, files = src
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    header = [h.strip() for h in rows[0]]
    by_file = {_norm_rel(r[header.index("file")]): r for r in rows[1:] if r and any(c.strip() for c in r)}
    with open(out / "labels.csv", newline="", encoding="utf-8") as f:
        written = list(csv.reader(f))
    extra = [h for h in header if h not in written[0]]
    if not extra:
        return []
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(written[0] + extra)
    for rel, row in zip(files, written[1:]):
        source = by_file[_norm_rel(rel)]
        w.writerow(row + [source[header.index(h)] for h in extra])
    atomic_write_text(out / "labels.csv", buf.getvalue())
    return extra
