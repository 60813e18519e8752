"""``mtlguard fit``: fit an MTL-UE generator (Alg. 1) on a dataset and save it.

Example::

    mtlguard fit --data utkface --root ../shared/data/utkface --image-size 32 --subset 2000 \\
        --base tap --epochs 10 --out runs/mtl-ue-tap
"""
from __future__ import annotations

import json


def add_parser(subparsers) -> None:
    from ..unlearnable.cli_common import add_data_args, add_delta_units_arg

    p = subparsers.add_parser("fit", help="fit an MTL-UE generator (EM / TAP / SEP base loss) and save it",
                              description=__doc__.split("\n\n")[0])
    add_data_args(p)
    p.add_argument("--base", choices=["em", "tap", "sep"], default="em", help="base UE loss (default: %(default)s)")
    p.add_argument("--eps", type=float, default=8.0, help="L-inf bound in 1/255 units (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=60, help="generator rounds R (EM: max rounds) (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lambda-intra", type=float, default=20.0)
    p.add_argument("--lambda-inter", type=float, default=100.0)
    p.add_argument("--train-steps", type=int, default=10, help="EM: surrogate steps per round")
    p.add_argument("--stop-acc", type=float, default=0.99, help="EM: stop at this surrogate train accuracy")
    p.add_argument("--surrogate-arch", default="resnet18")
    p.add_argument("--surrogate-epochs", type=int, default=60, help="TAP/SEP: clean surrogate training epochs")
    p.add_argument("--sep-checkpoints", type=int, default=15)
    p.add_argument("--large-stem", action="store_true", help="7x7/2 + maxpool encoder stem (large images)")
    add_delta_units_arg(p, "--delta-units")
    p.add_argument("--out", required=True, help="output folder (generator.safetensors + generator.json + fit state)")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from ..unlearnable import FitConfig, MTLUEGenerator, build_surrogate, fit_generator, train_clean_surrogate
    from ..unlearnable.cli_common import command_line, load_split
    from pathlib import Path

    ds = load_split(args, args.split, args.subset)
    x0, _ = ds[0]
    size = (int(x0.shape[1]), int(x0.shape[2]))
    torch.manual_seed(args.seed)
    gen = MTLUEGenerator(ds.tasks, in_channels=int(x0.shape[0]), image_size=size, eps=args.eps / 255,
                         large_stem=args.large_stem, delta_units=args.delta_units)
    cfg = FitConfig(base=args.base, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                    lambda_intra=args.lambda_intra, lambda_inter=args.lambda_inter, train_steps=args.train_steps,
                    stop_acc=args.stop_acc, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sur = build_surrogate(ds.tasks, int(x0.shape[0]), size, args.surrogate_arch)
    snaps = None
    if args.base != "em":
        sp = out / "clean_surrogate.pt"
        if sp.is_file():
            snaps = torch.load(sp, map_location="cpu", weights_only=True)["snapshots"]
        else:
            snaps = train_clean_surrogate(sur, ds.tasks, ds, epochs=args.surrogate_epochs, batch_size=args.batch_size,
                                          seed=args.seed, device=args.device, n_snapshots=args.sep_checkpoints,
                                          progress=not args.no_progress)
            snaps = [{k: v.cpu() for k, v in s.items()} for s in snaps]
            tmp = out / ".tmp-clean_surrogate.pt"
            torch.save({"snapshots": snaps}, tmp)
            tmp.replace(sp)
        sur.load_state_dict(snaps[-1])
    res = fit_generator(gen, ds, sur, cfg, snapshots=snaps if args.base == "sep" else None, out_dir=out,
                        device=args.device, progress=not args.no_progress)
    path = gen.save(out / "generator.safetensors",
                    extra={"command": command_line(args), "fit": cfg.__dict__, "rounds": res.rounds,
                           "stopped_early": res.stopped_early, "data": args.data, "subset": args.subset})
    print(json.dumps({"generator": str(path), "rounds": res.rounds, "stopped_early": res.stopped_early,
                      "last": res.history[-1] if res.history else None}, indent=2))
    return 0
