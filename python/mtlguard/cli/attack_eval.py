"""``mtlguard attack-eval``: attack a trained multi-task model with every attack x aggregation over an eps
sweep and write JSON + Markdown tables (GB-MTA Tables 1/3/12 shape) + PNG plots (its Fig. 2) + examples.

Example::

    mtlguard attack-eval --model runs/victims/utkface_mtl --data utkface --root ../shared/data/utkface \\
        --image-size 64 --subset 256 --attacks pgd,apgd --aggregations single:*,total,signtotal,gbmta \\
        --eps 2,4,8 --steps 10 --out reports --prefix attacks_utkface

``--attacks auto`` is the AutoAttack-style ensemble (APGD + targeted APGD + the black-box Square attack,
per-image worst case) under each aggregation; ``square`` and ``autosage`` (Auto-SAGE: aggregation ``total``
= Eq. 15, ``gbmta`` = GB-MTA-Auto-SAGE, Eq. 16) are attacks too, and ``--aggregations autosage,gbmta_autosage``
adds the two Auto-SAGE rows whatever ``--attacks`` says.  Any dataset works (``--data folder --root DIR`` for your own folder dataset; its ``--split`` rows).  A
victim near chance on a task is reported with a warning: its ARP cells are then noise (often negative).
"""
from __future__ import annotations

import shlex
import sys
import warnings

#: a task is "near chance" when its clean accuracy is within this of max(majority rate, 1 / classes).
CHANCE_MARGIN = 0.02
LEGEND = """
## How to read these tables

* **ARP** (GB-MTA Eq. 10) is the relative drop of each task's metrics, in %: 0 = the attack changed nothing,
  higher = stronger attack.
* A **negative** ARP means the attacked images scored *better* than the clean ones.  It happens when the
  victim is near chance on that task (its errors are random, so perturbations fix as many answers as they
  break) or when few images are evaluated; such cells say nothing about the attack.
* **nan** marks an undefined value: SINGLE-X transferability (Eq. 11) divides by the attacked task's own
  ARP, so it is nan where that ARP is 0 (e.g. eps 0, or a victim whose answers do not change); an ARP is nan
  when none of a task's clean metrics is usable (0 or undefined before the attack, listed below the tables).
"""


def add_parser(subparsers) -> None:
    from .options import add_data_arg, add_out_arg

    p = subparsers.add_parser("attack-eval", help="evaluate multi-task attacks (GB-MTA, baselines, WGD) on a trained model",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="model directory (model.safetensors + model_config.json) or .safetensors file")
    add_data_arg(p)
    p.add_argument("--split", default="test", help="split (folder datasets: the rows of this 'split' value)")
    p.add_argument("--image-size", type=int, default=None, help="image side (default: the model's)")
    p.add_argument("--subset", type=int, default=256, help="number of test images (synthetic: scenes generated)")
    p.add_argument("--attacks", default="pgd,apgd",
                   help="comma list of fgsm, pgd, mim, apgd, square (black box), autosage, auto (APGD + APGD-T + Square)")
    p.add_argument("--aggregations", default="single:*,total,signtotal,gbmta",
                   help="comma list: single:* (every task), single:<task>, total, signtotal, gbmta, wgd, wgd_literal, "
                        "wgd_initial, wgd_official, autosage, gbmta_autosage")
    p.add_argument("--eps", default="1,2,4,8,16", help="comma list of budgets in 1/255 units (linf) or raw (l2)")
    p.add_argument("--norm", default="linf", choices=["linf", "l2"], help="threat model")
    p.add_argument("--steps", type=int, default=10, help="attack iterations")
    p.add_argument("--queries", type=int, default=100, help="queries of the square attack (alone or in auto)")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch")
    p.add_argument("--max-batches", type=int, default=None, help="stop after N batches; default: all")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    add_out_arg(p, "output directory", required=False, default="reports")
    p.add_argument("--prefix", default="attack_eval", help="file name prefix of the outputs")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)


def _parse_list(text: str, what: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise SystemExit(f"attack-eval: --{what} is empty")
    return items


def _eps_list(args) -> list[float]:
    try:
        eps_raw = [float(e) for e in _parse_list(args.eps, "eps")]
    except ValueError:
        raise SystemExit(f"attack-eval: --eps must be comma-separated numbers, got {args.eps!r}") from None
    if any(e < 0 for e in eps_raw):
        raise SystemExit(f"attack-eval: --eps values must be >= 0, got {eps_raw}")
    return [e / 255.0 for e in eps_raw] if args.norm == "linf" else eps_raw


def _dataset(args, size: int):
    """The evaluation images: ``--subset`` of ``--split`` of any dataset (synthetic: generated scenes)."""
    from ..data.registry import build_dataset
    from .options import check_data

    key = check_data(args.data)
    if key == "synthetic":
        from ..data import SyntheticScenes

        return SyntheticScenes(args.subset, image_size=(size, size), seed=args.seed, split=args.split)
    if not args.root:
        raise SystemExit(f"attack-eval: --data {args.data} needs --root (the dataset folder)")
    native = key in ("utkface", "celeba", "chestxray14", "folder")  # loaders drawing a stratified subset
    kw = {"progress": not args.no_progress} if native else {}
    if native and args.subset is not None:
        kw.update(subset=args.subset, seed=args.seed)
    try:
        ds = build_dataset(args.data, args.root, split=args.split, image_size=size, **kw)
    except ValueError as e:
        if "subset=" not in str(e):
            raise
        ds = build_dataset(args.data, args.root, split=args.split, image_size=size, progress=not args.no_progress)
    if not native and args.subset is not None and args.subset < len(ds):
        import numpy as np

        from ..data.splits import stratified_subset

        ds = ds.subset(stratified_subset(np.zeros((len(ds), 1)), args.subset, args.seed))
    return ds


def near_chance(res: dict, ds) -> dict[str, tuple[float, float]]:
    """``{task: (clean accuracy, chance level)}`` for classification tasks whose clean accuracy is within
    :data:`CHANCE_MARGIN` of ``max(majority rate of the evaluated labels, 1 / classes)``."""
    import numpy as np

    labels = ds.labels_tensor().numpy() if hasattr(ds, "labels_tensor") else None
    out = {}
    cls = [t for t in res["tasks"] if t["kind"] in ("binary", "multiclass")]
    for k, t in enumerate(cls):
        acc = res["clean"].get(t["name"], {}).get("accuracy")
        if acc is None:
            continue
        chance = 1.0 / max(int(t["num_classes"]), 1)
        if labels is not None and labels.shape[1] == len(cls):
            y = labels[: res["images"], k]
            y = y[y >= 0]
            if y.size:
                chance = max(chance, float(np.bincount(y).max() / y.size))
        if acc <= chance + CHANCE_MARGIN:
            out[t["name"]] = (float(acc), chance)
    return out


def _append_legend(md_path: str, chance: dict) -> None:
    from pathlib import Path

    from ..atomic import atomic_write_text

    text = Path(md_path).read_text() + LEGEND
    if chance:
        text += "\n**Victim near chance** (its ARP cells are noise): " + "; ".join(
            f"{n}: clean accuracy {a:.3f} vs chance {c:.3f}" for n, (a, c) in chance.items()) + "\n"
    atomic_write_text(md_path, text)


def run(args) -> int:
    import torch

    from ..attacks import ATTACKS
    from ..attacks.evaluation import run_attack_eval, write_reports
    from ..models import load_model
    from .options import check_data

    check_data(args.data)
    attacks = [a.lower() for a in _parse_list(args.attacks, "attacks")]
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        raise SystemExit(f"attack-eval: unknown attack(s) {unknown}; expected some of {sorted(ATTACKS)}")
    eps = _eps_list(args)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("attack-eval: --device cuda requested but no CUDA GPU is available")
    torch.manual_seed(args.seed)
    model = load_model(args.model, map_location=args.device)
    size = args.image_size or int(model.config.get("image_size", 64))
    ds = _dataset(args, size)
    tasks = tuple(model.tasks) if getattr(model, "tasks", None) is not None else ds.tasks
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, shuffle=False)
    res = run_attack_eval(model, tasks, loader, attacks=attacks, aggregations=_parse_list(args.aggregations, "aggregations"),
                          eps_list=eps, steps=args.steps, norm=args.norm, device=args.device, seed=args.seed,
                          progress=not args.no_progress, max_batches=args.max_batches, queries=args.queries)
    res["dataset"] = {"name": args.data, "root": args.root, "split": args.split, "image_size": size, "subset": args.subset}
    chance = near_chance(res, ds)
    for name, (acc, level) in chance.items():
        warnings.warn(f"attack-eval: the victim is near chance on task {name!r} (clean accuracy {acc:.3f}, chance "
                      f"{level:.3f}); its ARP cells are noise (negative or nan) -- evaluate a trained victim", UserWarning)
    res["near_chance"] = {n: {"accuracy": a, "chance": c} for n, (a, c) in chance.items()}
    command = "mtlguard " + " ".join(shlex.quote(a) for a in getattr(args, "argv", sys.argv[1:]))
    paths = write_reports(res, args.out, args.prefix, command=command)
    _append_legend(paths["md"], chance)
    for k, v in paths.items():
        print(f"{k}: {v}")
    return 0
