"""``mtlguard-engine``: protect image directories at high throughput.

Examples::

    mtlguard-engine protect --input samples/ --output protected/            # bundled default generator
    mtlguard-engine protect --model gen.onnx --input photos/ --output out/ --labels labels.csv
    mtlguard-engine protect --model gen.onnx --input utk/ --output out/ --dataset utkface --batch-size 64
    mtlguard-engine passthrough --input photos/ --output out/               # decode + encode only

Exit status: 0 on success, 1 if any file failed (unless --allow-failures), 2 on a usage error.
The final JSON report goes to stdout (and to <output>/.mtlguard-engine/report.json).
"""
from __future__ import annotations

import argparse
import json
import sys

from mtlguard._version import __version__
from mtlguard.cli.dispatch import command_parser, run_command

from .imageio import DEFAULT_PNG_COMPRESSION, DEFAULT_PNG_STRATEGY, PNG_STRATEGIES, check_png_compression


def _png_level(text: str) -> int:
    try:
        return check_png_compression(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--png-compression must be an integer 0-9 (zlib level), got {text!r}") from None


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", default=None, help="input directory (never written to)")
    p.add_argument("--sample", action="store_true",
                   help="use the bundled sample directory (mtlguard/assets/samples) and its labels.csv as --input")
    p.add_argument("--output", required=True, help="output directory (the input tree is mirrored here)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=None, help="decode/encode threads (Ray: inference actors)")
    p.add_argument("--format", choices=("png", "jpeg", "same"), default="png",
                   help="output format (default png: lossless; jpeg re-encodes the perturbation lossily)")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality")
    p.add_argument("--png-compression", "--png-level", dest="png_compression", type=_png_level,
                   default=DEFAULT_PNG_COMPRESSION, metavar="0-9",
                   help="PNG zlib level 0-9, lossless at every level (default %(default)s; 0 = store). With the default "
                        "--png-strategy rle, levels 1-9 give identical files.")
    p.add_argument("--png-strategy", choices=sorted(PNG_STRATEGIES), default=DEFAULT_PNG_STRATEGY,
                   help="zlib strategy for PNG (default %(default)s). Measured on protected 200x200 UTKFace images "
                        "(bench/results/engine_cpu.json): rle = 52 KB in 3.6 ms per image at any level; 'default' = "
                        "59 KB / 4.1 ms at level 1, 57 KB / 6.1 ms at level 3, 55 KB / 16 ms at level 6. The protected "
                        "pixels are noisy, so LZ77's long matches buy little and rle gets level-6 size at level-1 speed.")
    p.add_argument("--allow-failures", action="store_true", help="exit 0 even if some files failed")
    p.add_argument("--executor", choices=("local", "ray"), default="local")
    p.add_argument("--ray-address", default=None, help="Ray cluster address (default: a local Ray)")
    p.add_argument("--max-pixels", type=int, default=None, help="refuse larger images (default: Pillow's limit)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--report", default=None, help="also write the JSON report to this file")


def build_parser() -> argparse.ArgumentParser:
    parser, sub = command_parser(
        "mtlguard-engine", "Bulk-protect image directories with an exported mtlguard generator.", __version__)
    p = sub.add_parser("protect", help="protect every image under --input into --output")
    p.add_argument("--model", default=None,
                   help="generator: .onnx (onnxruntime), checkpoint/.ts/.pt2 (torch), .engine (tensorrt); "
                        "default: the bundled default generator")
    lab = p.add_mutually_exclusive_group()
    lab.add_argument("--labels", default=None, help="labels.csv: path column + one column per task")
    lab.add_argument("--dataset", choices=("utkface",), default=None, help="labels from the dataset's file names")
    lab.add_argument("--no-labels", action="store_true", help="protect with every task unprotected (-1): weak")
    p.add_argument("--backend", choices=("onnxruntime", "torch", "tensorrt"), default=None,
                   help="default: from the model file (onnx -> onnxruntime)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=int, default=None, help="inference threads (default: the runtime's)")
    _common(p)
    p.set_defaults(func=_run, passthrough=False)
    q = sub.add_parser("passthrough", help="decode + encode only (no model): the throughput floor")
    _common(q)
    q.set_defaults(func=_run, passthrough=True, model=None, labels=None, dataset=None, no_labels=False,
                   backend=None, device="cpu", threads=None)
    return parser


def _run(args) -> int:
    import warnings

    from .imageio import DEFAULT_MAX_PIXELS
    from .pipeline import protect_directory

    warnings.simplefilter("default", UserWarning)
    if args.sample:
        if args.input is not None:
            print("mtlguard-engine: error: give either --input DIR or --sample, not both", file=sys.stderr)
            return 2
        from .samples import SAMPLES_DIR

        args.input = str(SAMPLES_DIR)
        if not args.passthrough and not (args.labels or args.dataset or args.no_labels):
            args.labels = str(SAMPLES_DIR / "labels.csv")
    elif args.input is None:
        print("mtlguard-engine: error: --input DIR is required (or --sample for the bundled samples)", file=sys.stderr)
        return 2
    try:
        report = protect_directory(
            args.input, args.output, model=args.model, labels=args.labels, dataset=args.dataset,
            no_labels=args.no_labels, backend=args.backend, device=args.device, batch_size=args.batch_size,
            workers=args.workers, format=args.format, quality=args.quality, png_compression=args.png_compression,
            png_strategy=args.png_strategy,
            executor=args.executor, passthrough=args.passthrough,
            max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS, threads=args.threads,
            progress=not args.no_progress, ray_address=args.ray_address,
        )
    except (FileNotFoundError, NotADirectoryError, ValueError, RuntimeError) as e:
        print(f"mtlguard-engine: error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(report, indent=1, default=str)
    print(text)
    if args.report:
        from pathlib import Path

        Path(args.report).write_text(text)
    for f in report["failures"]:
        print(f"mtlguard-engine: failed: {f['file']}: {f['reason']}", file=sys.stderr)
    if report["failed"] and not args.allow_failures:
        print(f"mtlguard-engine: {report['failed']} file(s) failed (use --allow-failures to exit 0)", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    return run_command(parser, parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
