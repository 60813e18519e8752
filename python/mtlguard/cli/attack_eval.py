"""``mtlguard attack-eval``: attack a trained multi-task model with every attack x aggregation over an eps
sweep and write JSON + Markdown tables (GB-MTA Tables 1/3/12 shape) + PNG plots (its Fig. 2) + examples.

Example::

    mtlguard attack-eval --model runs/victims/utkface_mtl --dataset utkface --root ../shared/data/utkface \\
        --image-size 64 --subset 256 --attacks pgd,apgd --aggregations single:*,total,signtotal,gbmta \\
        --eps 2,4,8 --steps 10 --out reports --prefix attacks_utkface
"""
from __future__ import annotations

import shlex
import sys


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("attack-eval", help="evaluate multi-task attacks (GB-MTA, baselines, WGD) on a trained model",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="model directory (model.safetensors + model_config.json) or .safetensors file")
    p.add_argument("--dataset", required=True, choices=["utkface", "synthetic"], help="test set")
    p.add_argument("--root", default=None, help="dataset root (utkface: the folder holding images/)")
    p.add_argument("--split", default="test")
    p.add_argument("--image-size", type=int, default=None, help="image side (default: the model's)")
    p.add_argument("--subset", type=int, default=256, help="number of test images (synthetic: scenes generated)")
    p.add_argument("--attacks", default="pgd,apgd", help="comma list of fgsm,pgd,mim,apgd")
    p.add_argument("--aggregations", default="single:*,total,signtotal,gbmta",
                   help="comma list: single:* (every task), single:<task>, total, signtotal, gbmta, wgd, wgd_initial")
    p.add_argument("--eps", default="1,2,4,8,16", help="comma list of budgets in 1/255 units (linf) or raw (l2)")
    p.add_argument("--norm", default="linf", choices=["linf", "l2"])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-batches", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="reports", help="output directory")
    p.add_argument("--prefix", default="attack_eval", help="file name prefix of the outputs")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def _parse_list(text: str, what: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise SystemExit(f"attack-eval: --{what} is empty")
    return items


def run(args) -> int:
    import torch

    from ..attacks import ATTACKS
    from ..attacks.evaluation import run_attack_eval, write_reports
    from ..models import load_model

    attacks = [a.lower() for a in _parse_list(args.attacks, "attacks")]
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        raise SystemExit(f"attack-eval: unknown attack(s) {unknown}; expected some of {sorted(ATTACKS)}")
    try:
        eps_raw = [float(e) for e in _parse_list(args.eps, "eps")]
    except ValueError:
        raise SystemExit(f"attack-eval: --eps must be comma-separated numbers, got {args.eps!r}") from None
    if any(e < 0 for e in eps_raw):
        raise SystemExit(f"attack-eval: --eps values must be >= 0, got {eps_raw}")
    eps = [e / 255.0 for e in eps_raw] if args.norm == "linf" else eps_raw
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("attack-eval: --device cuda requested but no CUDA GPU is available")
    torch.manual_seed(args.seed)
    model = load_model(args.model, map_location=args.device)
    tasks = model.tasks if hasattr(model, "tasks") else None
    size = args.image_size or int(model.config.get("image_size", 64))
    if args.dataset == "utkface":
        from ..data import UTKFace

        if not args.root:
            raise SystemExit("attack-eval: --root (the UTKFace folder holding images/) is required for utkface")
        ds = UTKFace(args.root, split=args.split, image_size=size, subset=args.subset, seed=args.seed,
                     progress=not args.no_progress)
    else:
        from ..data import SyntheticScenes

        ds = SyntheticScenes(args.subset, image_size=(size, size), seed=args.seed, split=args.split)
    tasks = tuple(tasks) if tasks is not None else ds.tasks
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, shuffle=False)
    res = run_attack_eval(model, tasks, loader, attacks=attacks, aggregations=_parse_list(args.aggregations, "aggregations"),
                          eps_list=eps, steps=args.steps, norm=args.norm, device=args.device, seed=args.seed,
                          progress=not args.no_progress, max_batches=args.max_batches)
    res["dataset"] = {"name": args.dataset, "split": args.split, "image_size": size, "subset": args.subset}
    command = "mtlguard " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv and "attack-eval" in sys.argv else None
    paths = write_reports(res, args.out, args.prefix, command=command)
    for k, v in paths.items():
        print(f"{k}: {v}")
    return 0
