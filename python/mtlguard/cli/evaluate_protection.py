"""``mtlguard evaluate-protection``: protect a training set with each method, train MTL and STL
victims on it (optionally behind ISS defenses), and report clean-test metrics next to the
clean-trained victims (MTL-UE Tables 2, 3, 8, 12 + a Fig. 6 image grid).

Writes ``<out>/<prefix>.json``, ``.md`` and ``.png``; intermediate results (protected images,
generators, victims) live in ``<work>`` so an interrupted run resumes.

Example::

    mtlguard evaluate-protection --data utkface --root ../shared/data/utkface --image-size 32 \\
        --subset 2000 --test-subset 1000 --methods clean,ar-patch,lsp-patch,mtl-ue-em,mtl-ue-tap \\
        --victim-epochs 10 --gen-epochs 10 --out reports --prefix protection_utkface --work runs/protection
"""
from __future__ import annotations

import json


def add_parser(subparsers) -> None:
    from ..unlearnable.cli_common import add_data_args, add_delta_units_arg

    p = subparsers.add_parser("evaluate-protection", help="train victims on protected data and report (Table 2 shape)",
                              description=__doc__.split("\n\n")[0])
    add_data_args(p)
    p.add_argument("--test-split", default="test")
    p.add_argument("--test-subset", type=int, default=None)
    p.add_argument("--methods", default="clean,ar-patch,lsp-patch,mtl-ue-em,mtl-ue-tap",
                   help="comma list of clean, lsp-patch, ar-patch, lsp-average, ar-average, em, tap, sep, "
                        "mtl-ue-em, mtl-ue-tap, mtl-ue-sep; partial protection: mtl-ue-tap:age+race")
    p.add_argument("--defenses", default="none", help="comma list of none, jpeg, grayscale, bdr (ISS on the protected train set), "
                        "at (adversarially trained victims, see --at-eps/--at-steps)")
    p.add_argument("--at-eps", type=float, default=4.0, help="defense 'at': victims' PGD-AT L-inf bound in 1/255 units")
    p.add_argument("--at-steps", type=int, default=5, help="defense 'at': PGD steps per training batch")
    p.add_argument("--eps", type=float, default=8.0, help="L-inf bound in 1/255 units")
    p.add_argument("--arch", default="resnet18", help="victim and surrogate encoder")
    p.add_argument("--victim-epochs", type=int, default=10)
    p.add_argument("--victim-batch-size", type=int, default=128)
    p.add_argument("--victim-lr", type=float, default=1e-3)
    p.add_argument("--no-stl", action="store_true", help="train only the MTL victims")
    p.add_argument("--stl-methods", default=None,
                   help="comma list of the methods whose rows also get STL victims (default: every row); "
                        "STL victims cost one training run per task")
    p.add_argument("--surrogate-epochs", type=int, default=10)
    p.add_argument("--sep-checkpoints", type=int, default=15)
    p.add_argument("--gen-epochs", type=int, default=10)
    p.add_argument("--gen-batch-size", type=int, default=128)
    p.add_argument("--gen-train-steps", type=int, default=10)
    add_delta_units_arg(p, "--gen-delta-units")
    p.add_argument("--em-steps", type=int, default=20)
    p.add_argument("--em-rounds", type=int, default=10)
    p.add_argument("--tap-steps", type=int, default=250)
    p.add_argument("--tap-step-size", type=float, default=0.064, help="in 1/255 units")
    p.add_argument("--out", default="reports")
    p.add_argument("--prefix", default="protection")
    p.add_argument("--work", default=None, help="cache/resume folder (default: <out>/<prefix>_work)")
    p.add_argument("--note", default="", help="free text appended to the Markdown report")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..unlearnable.cli_common import command_line, load_split
    from ..unlearnable.evaluation import ProtectionBenchmark, ProtectionConfig, write_report

    split = lambda s: [x.strip() for x in s.split(",") if x.strip()]  # noqa: E731
    methods = tuple(split(args.methods))
    if "clean" not in methods:
        methods = ("clean",) + methods
    try:
        cfg = ProtectionConfig(
            methods=methods, defenses=tuple(split(args.defenses)), eps=args.eps / 255,
            arch=args.arch, victim_epochs=args.victim_epochs, victim_batch_size=args.victim_batch_size,
            victim_lr=args.victim_lr, stl=not args.no_stl,
            stl_methods=tuple(split(args.stl_methods)) if args.stl_methods else None, surrogate_epochs=args.surrogate_epochs,
            sep_checkpoints=args.sep_checkpoints, gen_epochs=args.gen_epochs, gen_batch_size=args.gen_batch_size,
            gen_train_steps=args.gen_train_steps, gen_delta_units=args.gen_delta_units, em_steps=args.em_steps,
            em_rounds=args.em_rounds,
            tap_steps=args.tap_steps, tap_step_size=args.tap_step_size / 255,
            at_eps=args.at_eps / 255, at_steps=args.at_steps, seed=args.seed, device=args.device,
            progress=not args.no_progress)
    except ValueError as e:
        raise SystemExit(f"evaluate-protection: {e}") from None
    train_set = load_split(args, args.split, args.subset)
    test_set = load_split(args, args.test_split, args.test_subset)
    out = Path(args.out)
    work = Path(args.work) if args.work else out / f"{args.prefix}_work"
    try:
        bench = ProtectionBenchmark(train_set, test_set, cfg, work)
    except ValueError as e:  # a work folder filled under other settings
        raise SystemExit(f"evaluate-protection: {e}") from None
    results = bench.run()
    paths = write_report(results, bench, out / args.prefix, command_line(args), args.note)
    print(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))
    return 0
