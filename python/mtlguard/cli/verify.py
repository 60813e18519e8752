"""``mtlguard verify``: does my protected copy protect?  Train the same victims on the clean images and on
their protected copy (same files, same split), test both on held-out clean images, and report accuracy,
majority rate and the protection ratio PR per task, with a one-line verdict per task.

Example (the engine's output carries labels.csv and tasks.json; the test split was left unprotected)::

    mtlguard-engine protect --model gen.onnx --input data/ --output protected/ --labels data/labels.csv \\
        --exclude-split test
    mtlguard verify --clean data/ --protected protected/ --victims resnet18@32,densenet121@32 \\
        --defenses standard,grayscale --out verify-report/
"""
from __future__ import annotations


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("verify", help="train victims on clean vs protected images and report the protection "
                                             "ratio per task", description=__doc__.split("\n\n")[0])
    p.add_argument("--clean", required=True, help="folder of the original images")
    p.add_argument("--protected", required=True, help="folder of their protected copies (same relative names; the "
                   "extension may differ)")
    p.add_argument("--labels", default=None, help="label table (default: CLEAN/labels.csv, else PROTECTED/labels.csv)")
    p.add_argument("--tasks-file", default=None, help="task specs (default: CLEAN/tasks.json, else PROTECTED/tasks.json)")
    p.add_argument("--test", default=None, help="folder of clean test images with its labels.csv (default: the "
                   "split column's 'test' rows, else --test-fraction of the clean images)")
    p.add_argument("--test-fraction", type=float, default=0.2, help="(default: %(default)s)")
    p.add_argument("--victims", "--archs", dest="victims", default="resnet18@32",
                   help="comma list of ARCH@SIZE[:WEIGHTING][xSEEDS] (default: %(default)s)")
    p.add_argument("--defenses", default="standard",
                   help="comma list of standard, grayscale, jpeg10, bdr2, blur, mixup, at (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=30, help="victim training epochs (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=64, help="(default: %(default)s)")
    p.add_argument("--lr", type=float, default=1e-3, help="(default: %(default)s)")
    p.add_argument("--average-last", type=int, default=3,
                   help="test accuracy = mean of the last N epochs (default: %(default)s)")
    p.add_argument("--channels", type=int, choices=(1, 3), default=3, help="(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    p.add_argument("--out", default="verify-report", help="report folder (default: %(default)s)")
    p.add_argument("--work", default=None, help="cache/resume folder (default: OUT/work)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..unlearnable.cli_common import command_line
    from ..unlearnable.verify import VerifyConfig, load_pair, run_verify, write_verify_report
    from ..unlearnable.victims import VictimRecipe

    split = lambda s: [x.strip() for x in s.split(",") if x.strip()]  # noqa: E731
    try:
        cfg = VerifyConfig(victims=split(args.victims), defenses=split(args.defenses), test_fraction=args.test_fraction,
                           recipe=VictimRecipe(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                               average_last=min(args.average_last, args.epochs)),
                           channels=args.channels, seed=args.seed, progress=not args.no_progress)
        data = load_pair(args.clean, args.protected, cfg, args.labels, args.tasks_file, args.test)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"mtlguard verify: {e}") from None
    out = Path(args.out)
    for prot_root in (Path(args.clean).resolve(), Path(args.protected).resolve()):
        if out.resolve() == prot_root or prot_root in out.resolve().parents:
            raise SystemExit(f"mtlguard verify: --out {out} lies inside the input folder {prot_root}; choose another")
    results = run_verify(data, cfg, Path(args.work) if args.work else out / "work")
    verdict = write_verify_report(results, data, cfg, out, command_line(args))
    for task, v in verdict.items():
        print(f"{task}: {v['verdict']} (worst PR {v['pr']:.2f})")
    print(f"report: {out / 'verify.md'}")
    return 0
