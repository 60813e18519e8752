"""``mtlguard evaluate-protection``: protect a training set with each method, train MTL and STL
victims on it (optionally behind ISS defenses), and report clean-test metrics next to the
clean-trained victims (MTL-UE Tables 2, 3, 8, 12 + a Fig. 6 image grid).

Two protocols:

* ``--protocol memory`` (default): generators fitted and applied at ``--image-size`` in memory; victims of
  the surrogate's architecture (MTL-UE's Table 2 setting).
* ``--protocol deploy``: the realistic path (:mod:`mtlguard.unlearnable.deploy`): load the data at its
  native size (``--image-size 200`` for UTKFace), protect the training files with ``mtlguard-engine``,
  train a victim zoo (``--victims``) the way other code does, behind every defense, and report the
  protection ratio PR per task.  ``--generator GEN`` adds a given generator (``.onnx`` / ``.safetensors``)
  as a row instead of fitting one; ``mtl-ue-*`` rows are fitted with the robust-fitting options
  (``--gen-size``, ``--delta-channels``, ``--eot``, ``--adv-*``).

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
    from .options import DEPLOY_VICTIMS, add_dataset_args, add_delta_units_arg, add_robust_fit_args

    p = subparsers.add_parser("evaluate-protection", help="train victims on protected data and report (Table 2 shape)",
                              description=__doc__.split("\n\n")[0])
    add_dataset_args(p)
    p.add_argument("--protocol", choices=["memory", "deploy"], default="memory",
                   help="memory: in-memory Table 2 protocol; deploy: engine-written files, victim zoo, defenses, PR "
                        "(default: %(default)s)")
    p.add_argument("--test-split", default="test")
    p.add_argument("--test-subset", type=int, default=None)
    p.add_argument("--methods", default=None,
                   help="memory protocol (default clean,ar-patch,lsp-patch,mtl-ue-em,mtl-ue-tap): comma list of clean, lsp-patch, ar-patch, lsp-average, ar-average, em, tap, sep, "
                        "mtl-ue-em, mtl-ue-tap, mtl-ue-sep, bundled (the shipped default generator, as the engine applies it); "
                        "partial protection: mtl-ue-tap:age+race.  deploy protocol (default "
                        "clean,bundled): clean, bundled (the shipped default generator), mtl-ue-em/tap/sep (fitted with the "
                        "robust-fitting options), tap, em, sep, lsp-patch, ar-patch")
    p.add_argument("--defenses", default=None,
                   help="memory protocol: comma list of none, jpeg, grayscale, bdr (ISS on the protected train set), at "
                        "(default none); deploy protocol: standard, grayscale, jpeg10, bdr2, blur, mixup, at (default all)")
    p.add_argument("--at-eps", type=float, default=4.0, help="defense 'at': victims' PGD-AT L-inf bound in 1/255 units")
    p.add_argument("--at-steps", type=int, default=5, help="defense 'at': PGD steps per training batch")
    p.add_argument("--eps", type=float, default=8.0, help="L-inf bound in 1/255 units")
    p.add_argument("--protect-fraction", type=float, default=1.0,
                   help="memory protocol: protect this seeded fraction r of the training images; victims train on "
                        "P_r + T_(1-r), plus a row on T_(1-r) alone (MTL-UE Table 9) (default: %(default)s)")
    p.add_argument("--victim-archs", default=None,
                   help="memory protocol: transfer rows with MTL victims of these architectures, comma list of ARCH or "
                        "ARCH/MTL (e.g. resnet18/mtan,resnet18/cross_stitch,resnet101) (default: none)")
    p.add_argument("--victim-weightings", default=None,
                   help="memory protocol: transfer rows with MTL victims (--arch) trained with these weightings, e.g. "
                        "uw,rlw,aligned_mtl,fairgrad (default: none)")
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
    p.add_argument("--generator", action="append", default=[], metavar="GEN",
                   help="evaluate this generator file (.onnx, .pt2 or .safetensors) as a row, applied as "
                        "mtlguard-engine applies it (both protocols; memory: at --image-size); repeatable")
    g = p.add_argument_group("deploy protocol")
    g.add_argument("--victims", default=",".join(DEPLOY_VICTIMS),
                   help="comma list of ARCH@SIZE[:WEIGHTING][xSEEDS] (default: %(default)s)")
    g.add_argument("--headline", default=None, help="comma list: the method(s) trained on every victim, seed and the JPEG output "
                   "(the others: on --defense-victim behind every defense); default: the first protected method")
    g.add_argument("--defense-victim", default="resnet18@32", help="victim trained behind every defense; "
                   "ARCH@SIZExN: the headline method(s) behind every defense over N seeds (default: %(default)s)")
    g.add_argument("--jpeg-victims", default="resnet18@32,resnet18@64",
                   help="victims of the JPEG-output rows (default: %(default)s)")
    g.add_argument("--jpeg-quality", type=int, default=90, help="engine JPEG output quality (default: %(default)s)")
    g.add_argument("--crop-scale", default="0.35,1", help="victims' RandomResizedCrop scale range "
                   "(default: %(default)s)")
    g.add_argument("--average-last", type=int, default=3, help="test accuracy = mean of the last N epochs "
                   "(default: %(default)s)")
    g.add_argument("--max-jobs", type=int, default=None, help="stop after this many new victim runs (resume later)")
    g.add_argument("--time-budget", type=float, default=None, help="start no new victim run after this many minutes")
    add_robust_fit_args(g)
    g.add_argument("--surrogate-archs", default=None,
                   help="comma list of surrogate architectures for the fitted rows (TAP: an ensemble of clean "
                        "surrogates; EM: trained together), each ARCH[@SIZE][:gray] as in mtlguard fit; "
                        "default: --arch")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    for gen in args.generator:  # before any data is loaded or victim trained
        if not Path(gen).is_file():
            raise SystemExit(f"--generator {gen}: file not found")
    if args.protocol == "deploy":
        from .deploy_protocol import run_deploy

        return run_deploy(args)

    from ..unlearnable.cli_common import command_line, load_split
    from ..unlearnable.evaluation import ProtectionBenchmark, ProtectionConfig, write_report

    from ..models import split_arch_list

    split = lambda s: [x.strip() for x in s.split(",") if x.strip()]  # noqa: E731
    methods = tuple(split(args.methods or "clean,ar-patch,lsp-patch,mtl-ue-em,mtl-ue-tap"))
    if "clean" not in methods:
        methods = ("clean",) + methods
    methods += tuple(f"gen:{g}" for g in args.generator)  # given generator files, applied as the engine does
    try:
        cfg = ProtectionConfig(
            methods=methods, defenses=tuple(split(args.defenses or "none")), eps=args.eps / 255,
            arch=args.arch, victim_epochs=args.victim_epochs, victim_batch_size=args.victim_batch_size,
            victim_lr=args.victim_lr, stl=not args.no_stl,
            stl_methods=tuple(split(args.stl_methods)) if args.stl_methods else None, surrogate_epochs=args.surrogate_epochs,
            sep_checkpoints=args.sep_checkpoints, gen_epochs=args.gen_epochs, gen_batch_size=args.gen_batch_size,
            gen_train_steps=args.gen_train_steps, gen_delta_units=args.gen_delta_units, em_steps=args.em_steps,
            em_rounds=args.em_rounds,
            tap_steps=args.tap_steps, tap_step_size=args.tap_step_size / 255,
            at_eps=args.at_eps / 255, at_steps=args.at_steps, protect_fraction=args.protect_fraction,
            victim_archs=tuple(split_arch_list(args.victim_archs or "")),
            victim_weightings=tuple(split(args.victim_weightings or "")), seed=args.seed, device=args.device,
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
