"""``mtlguard fit``: fit an MTL-UE generator (Alg. 1) on a dataset and save it.

Example::

    mtlguard fit --data utkface --root ../shared/data/utkface --image-size 32 --subset 2000 \\
        --base tap --epochs 10 --out runs/mtl-ue-tap
"""
from __future__ import annotations

import json
from pathlib import Path


def add_parser(subparsers) -> None:
    from .options import add_dataset_args, add_delta_units_arg, add_robust_fit_args

    p = subparsers.add_parser("fit", help="fit an MTL-UE generator (EM / TAP / SEP base loss) and save it",
                              description=__doc__.split("\n\n")[0])
    add_dataset_args(p)
    p.add_argument("--base", choices=["em", "tap", "sep"], default="em", help="base UE loss (default: %(default)s)")
    p.add_argument("--eps", type=float, default=8.0, help="L-inf bound in 1/255 units (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=60, help="generator rounds R (EM: max rounds) (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lambda-intra", type=float, default=20.0)
    p.add_argument("--lambda-inter", type=float, default=100.0)
    p.add_argument("--train-steps", type=int, default=10, help="EM: surrogate steps per round")
    p.add_argument("--stop-acc", type=float, default=0.99, help="EM: stop at this surrogate train accuracy")
    p.add_argument("--surrogate-arch", default="resnet18",
                   help="surrogate architecture, or a comma list = an ensemble (TAP: clean surrogates, L_b averaged; "
                        "EM: trained together; SEP: one architecture); ARCH@SIZE: that surrogate sees every input "
                        "resized to SIZE (multi-resolution ensembles); ARCH:gray: it sees every input in "
                        "grayscale, as an ISS-grayscale victim does (default: %(default)s)")
    p.add_argument("--surrogate-epochs", type=int, default=60, help="TAP/SEP: clean surrogate training epochs")
    p.add_argument("--sep-checkpoints", type=int, default=15)
    p.add_argument("--large-stem", action="store_true", help="7x7/2 + maxpool encoder stem (large images)")
    add_delta_units_arg(p, "--delta-units")
    add_robust_fit_args(p)
    p.add_argument("--out", required=True, help="output folder (generator.safetensors + generator.json + fit state)")
    p.set_defaults(func=run)


def recipe_from_args(args, eps: float):
    """The :class:`GeneratorRecipe` the fit options describe; a bad combination exits with one line."""
    from .options import recipe_from_robust_args

    archs = tuple(a.strip() for a in args.surrogate_arch.split(",") if a.strip())
    try:
        return recipe_from_robust_args(
            args, fit=dict(base=args.base, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                           lambda_intra=args.lambda_intra, lambda_inter=args.lambda_inter,
                           train_steps=args.train_steps, stop_acc=args.stop_acc),
            recipe=dict(eps=eps, delta_units=args.delta_units, large_stem=args.large_stem, surrogate_archs=archs))
    except ValueError as e:
        raise SystemExit(str(e)) from None


def run(args) -> int:
    from ..unlearnable.cli_common import command_line, load_split
    from ..unlearnable.recipes import fit_recipe

    ds = load_split(args, args.split, args.subset)
    recipe = recipe_from_args(args, args.eps / 255)
    gen, res = fit_recipe(recipe, ds, args.out, device=args.device, progress=not args.no_progress,
                          extra={"command": command_line(args), "data": args.data, "subset": args.subset})
    print(json.dumps({"generator": str(Path(args.out) / "generator.safetensors"), "rounds": res.rounds,
                      "stopped_early": res.stopped_early, "last": res.history[-1] if res.history else None}, indent=2))
    return 0
