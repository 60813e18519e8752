"""``mtlguard poison``: write the protected (unlearnable) copy of a dataset.

The copy keeps the source's relative file names (extension -> lossless ``.png``) and labels in the
folder format (``labels.csv`` + ``tasks.json``, readable with ``--data folder``).  Images are stored as
uint8 ``x + round(delta * 255)`` and ``|delta| <= eps`` is checked on what is written; the output
may not lie inside the source tree.

Example::

    mtlguard poison --data utkface --root ../shared/data/utkface --image-size 32 \\
        --generator runs/mtl-ue-tap/generator.safetensors --out runs/utkface_protected
"""
from __future__ import annotations

import json


def add_parser(subparsers) -> None:
    from ..unlearnable.cli_common import add_data_args

    p = subparsers.add_parser("poison", help="write a protected copy of a dataset (MTL-UE generator or LSP/AR)",
                              description=__doc__.split("\n\n")[0])
    add_data_args(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--generator", help="fitted MTL-UE generator (.safetensors with its .json)")
    src.add_argument("--method", choices=["lsp-patch", "ar-patch", "lsp-average", "ar-average"],
                     help="surrogate-free class-wise baseline")
    p.add_argument("--protect-tasks", default=None,
                   help="comma list: protect only these tasks (others get the mean embedding; MTL-UE only)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", required=True, help="output folder (must not be inside the source)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..unlearnable import MTLUEGenerator
    from ..unlearnable.cli_common import load_split
    from ..unlearnable.patterns import ClasswisePatterns
    from ..unlearnable.protect import generator_protector, pattern_protector, protect_images, write_protected

    ds = load_split(args, args.split, args.subset)
    x0, _ = ds[0]
    if args.generator:
        gen = MTLUEGenerator.load(args.generator)
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
    images = protect_images(ds, prot, eps, batch_size=args.batch_size, progress=not args.no_progress)
    try:
        out = write_protected(ds, images, args.out, overwrite=args.overwrite, progress=not args.no_progress,
                              input_roots=[args.root] if args.root else [])
    except (ValueError, FileExistsError) as e:
        raise SystemExit(f"poison: {e}") from None
    print(json.dumps({"out": str(out), "images": len(images), "eps_checked": eps}, indent=2))
    return 0
