"""``mtlguard-engine``: protect image directories at high throughput.

Examples::

    mtlguard-engine protect --input samples/ --output protected/            # bundled default generator
    mtlguard-engine protect --model gen.onnx --input photos/ --out out/ --labels photos/labels.csv --exclude-split test
    mtlguard-engine protect --model gen.onnx --input utk/ --output out/ --data utkface --batch-size 64 --format webp
    mtlguard-engine passthrough --input photos/ --output out/               # decode + encode only

Exit status: 0 on success, 1 if any file failed (unless --allow-failures), 2 on a usage error or a
refused input (one line on stderr naming the file and the problem).
The final JSON report goes to stdout (and to <output>/.mtlguard-engine/report.json).
"""
from __future__ import annotations

import argparse
import json
import sys

from mtlguard._version import __version__
from mtlguard.cli.dispatch import command_parser, run_command

from .imageio import (DEFAULT_MAX_PIXELS, DEFAULT_PNG_COMPRESSION, DEFAULT_PNG_STRATEGY, PNG_STRATEGIES,
                      check_png_compression)
from .work import DEFAULT_PIXEL_BUDGET_MP

PROG = "mtlguard-engine"


class _Help(argparse.RawDescriptionHelpFormatter):
    """Adds ``(default: X)`` to every option whose help does not state its default already."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is argparse.SUPPRESS or "(default" in text or not action.option_strings or action.required:
            return text
        if isinstance(action, (argparse._StoreTrueAction, argparse._AppendAction)) or action.default is None:
            return text + (" (default: off)" if isinstance(action, argparse._StoreTrueAction) else " (default: none)")
        return text + " (default: %(default)s)"


def _png_level(text: str) -> int:
    try:
        return check_png_compression(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--png-compression must be an integer 0-9 (zlib level), got {text!r}") from None


def _selection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--include", action="append", default=None, metavar="GLOB",
                   help="protect only files whose path relative to --input matches GLOB (repeatable; '*' within a "
                        "directory, '**' across directories, a pattern without '/' matches the file name)")
    p.add_argument("--exclude", action="append", default=None, metavar="GLOB",
                   help="leave files matching GLOB alone: not protected, not written (repeatable)")


def _output(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=("png", "webp", "jpeg", "same"), default="png",
                   help="output format: png and webp are lossless; jpeg re-encodes the perturbation lossily (the "
                        "report gives the measured error); same keeps JPEG sources JPEG and writes every other source "
                        "as PNG")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality 1-100")
    p.add_argument("--png-compression", "--png-level", dest="png_compression", type=_png_level,
                   default=DEFAULT_PNG_COMPRESSION, metavar="0-9",
                   help="PNG zlib level 0-9, lossless at every level (0 = store). With the default "
                        "--png-strategy rle, levels 1-9 give identical files")
    p.add_argument("--png-strategy", choices=sorted(PNG_STRATEGIES), default=DEFAULT_PNG_STRATEGY,
                   help="zlib strategy for PNG. Measured on protected 200x200 UTKFace images "
                        "(bench/results/engine_cpu.json): rle = 52 KB in 3.6 ms per image at any level; 'default' = "
                        "59 KB / 4.1 ms at level 1, 57 KB / 6.1 ms at level 3, 55 KB / 16 ms at level 6. The protected "
                        "pixels are noisy, so LZ77's long matches buy little and rle gets level-6 size at level-1 "
                        "speed")
    p.add_argument("--keep-metadata", action="store_true",
                   help="copy EXIF (artist, copyright, camera, ...; the orientation is applied and dropped) and the "
                        "ICC profile into the output; by default both are dropped")
    p.add_argument("--no-metrics", action="store_true",
                   help="skip the PSNR / SSIM of each written image versus its original (report['quality']; measured "
                        "1.4 ms per 200x200 image, +15%% engine CPU)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing files in --output that no earlier run of this job wrote (otherwise refused)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", default=None, help="input directory, never written to (required unless --sample)")
    p.add_argument("--sample", action="store_true",
                   help="use the bundled sample directory (mtlguard/assets/samples) and its labels.csv as --input")
    p.add_argument("--output", "--out", dest="output", required=True,
                   help="output directory, the input tree is mirrored here (required)")
    _selection(p)
    _output(p)
    p.add_argument("--batch-size", type=int, default=32, help="images per inference batch")
    p.add_argument("--pixel-budget", type=float, default=DEFAULT_PIXEL_BUDGET_MP, metavar="MP",
                   help="megapixels of decoded images held at once (bounds memory with phone-size photos; a larger "
                        "image is processed alone)")
    p.add_argument("--workers", type=int, default=None,
                   help="decode/encode threads; Ray: inference actors (default: all cores, at most 8)")
    p.add_argument("--allow-failures", action="store_true", help="exit 0 even if some files failed")
    p.add_argument("--executor", choices=("local", "ray"), default="local", help="run in this process or on Ray")
    p.add_argument("--ray-address", default=None, help="Ray cluster address (default: a local Ray)")
    p.add_argument("--max-pixels", type=int, default=None,
                   help=f"refuse larger images (default: Pillow's limit, {DEFAULT_MAX_PIXELS})")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--report", default=None, help="also write the JSON report to this file")


def _protect_parser(sub) -> None:
    p = sub.add_parser("protect", help="protect every image under --input into --output", formatter_class=_Help,
                       description="Protect every image under --input into --output.")
    p.add_argument("--model", default=None,
                   help="generator: .onnx (onnxruntime), .safetensors/.ts/.pt2 (torch), .engine (tensorrt) "
                        "(default: the bundled default generator)")
    lab = p.add_mutually_exclusive_group()
    lab.add_argument("--labels", default=None,
                     help="labels.csv: a path column (path/file/filename/image) + one column per task, optional split "
                          "column (default: none)")
    lab.add_argument("--data", "--dataset", dest="dataset", choices=("utkface",), default=None,
                     help="labels from the dataset's file names (default: none)")
    lab.add_argument("--no-labels", action="store_true", help="protect with every task unprotected (-1): weak")
    p.add_argument("--exclude-split", action="append", default=None, metavar="SPLIT",
                   help="leave the labels.csv rows whose split column equals SPLIT alone: not protected, not written "
                        "(repeatable; e.g. test)")
    p.add_argument("--protect-fraction", default="1", metavar="R",
                   help="protect only round(R * n) of the n selected images, chosen by --seed over their sorted paths "
                        "(MTL-UE Table 9); the others are written clean through the same path, labels.csv does not "
                        "tell them apart and report.json lists them (0 < R <= 1)")
    p.add_argument("--seed", default="0", metavar="S", help="seed of the --protect-fraction choice")
    p.add_argument("--allow-unprotected", action="store_true",
                   help="accept labels without a column for some task (that task stays unprotected); otherwise refused")
    p.add_argument("--backend", choices=("onnxruntime", "torch", "tensorrt"), default=None,
                   help="inference backend (default: from the model file: .onnx -> onnxruntime)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="inference device")
    p.add_argument("--threads", type=int, default=None, help="inference threads (default: the runtime's choice)")
    _common(p)
    p.set_defaults(func=_run, passthrough=False)


def build_parser() -> argparse.ArgumentParser:
    parser, sub = command_parser(
        PROG, "Bulk-protect image directories with an exported mtlguard generator.", __version__)
    _protect_parser(sub)
    q = sub.add_parser("passthrough", help="decode + encode only (no model): the throughput floor",
                       formatter_class=_Help, description="Decode + encode only (no model): the throughput floor.")
    _common(q)
    q.set_defaults(func=_run, passthrough=True, model=None, labels=None, dataset=None, no_labels=False,
                   exclude_split=None, allow_unprotected=False, backend=None, device="cpu", threads=None,
                   protect_fraction="1", seed="0")
    return parser


def _error(message) -> int:
    text = " ".join(str(message).split("\n"))
    print(f"{PROG}: error: {text}", file=sys.stderr)
    return 2


def _resolve_input(args) -> str | None:
    """The input directory (``--sample`` -> the bundled samples and their labels); None after an error."""
    if args.sample:
        if args.input is not None:
            _error("give either --input DIR or --sample, not both")
            return None
        from .samples import SAMPLES_DIR

        if not args.passthrough and not (args.labels or args.dataset or args.no_labels):
            args.labels = str(SAMPLES_DIR / "labels.csv")
        return str(SAMPLES_DIR)
    if args.input is None:
        _error("--input DIR is required (or --sample for the bundled samples)")
    return args.input


def _number(text: str, kind):
    """``kind(text)``, or ``text`` unchanged when it does not parse (EngineOptions then refuses it, naming the
    option, in one line)."""
    try:
        return kind(text)
    except (TypeError, ValueError):
        return text


def _options(args):
    from .options import EngineOptions

    return EngineOptions(
        model=args.model, labels=args.labels, dataset=args.dataset, no_labels=args.no_labels,
        allow_unprotected=args.allow_unprotected, backend=args.backend, device=args.device, threads=args.threads,
        include=tuple(args.include or ()), exclude=tuple(args.exclude or ()),
        exclude_split=tuple(args.exclude_split or ()), protect_fraction=_number(args.protect_fraction, float),
        seed=_number(args.seed, int), format=args.format, quality=args.quality,
        png_compression=args.png_compression, png_strategy=args.png_strategy, keep_metadata=args.keep_metadata,
        overwrite=args.overwrite, metrics=not args.no_metrics, batch_size=args.batch_size,
        pixel_budget=args.pixel_budget, workers=args.workers,
        executor=args.executor, ray_address=args.ray_address, passthrough=args.passthrough,
        max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS, progress=not args.no_progress)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line, without Python source lines."""
    text = " ".join(str(message).split("\n")).removeprefix(f"{PROG}: ")
    print(f"{PROG}: warning: {text}", file=sys.stderr)


def _listing(what: str, count: int, names: list[str]) -> None:
    if count:
        more = ", ..." if count > len(names) else ""
        print(f"{PROG}: {count} {what}: {', '.join(names)}{more}", file=sys.stderr)


def _summarize(report: dict) -> None:
    """The report's lists a user must see, on stderr (one line each)."""
    lab = report.get("labels") or {}
    _listing("image(s) without a labels.csv row (unprotected)", lab.get("images_without_labels", 0),
              lab.get("images_without_labels_first", []))
    _listing("labels.csv row(s) naming files that are not in --input", lab.get("rows_without_images", 0),
              lab.get("rows_without_images_first", []))
    if lab.get("unprotected_tasks") and lab.get("source") != "none":
        print(f"{PROG}: unprotected task(s): {', '.join(lab['unprotected_tasks'])}", file=sys.stderr)
    ex = report["excluded"]
    _listing(f"image(s) excluded (split {ex['by_split']}, --include {ex['by_include']}, --exclude {ex['by_exclude']})",
             ex["total"], ex["first"])
    part = report.get("partial_protection")
    if part and part["protect_fraction"] < 1.0:
        print(f"{PROG}: partial protection: {part['protected']} of {part['selected']} image(s) protected, "
              f"{part['clean']} left clean (--protect-fraction {part['protect_fraction']} --seed {part['seed']}; "
              "listed in report.json 'partial_protection')", file=sys.stderr)
    for note in report.get("run_notes", []):
        print(f"{PROG}: note: {note}", file=sys.stderr)
    for f in report["failures"]:
        print(f"{PROG}: failed: {f['file']}: {f['reason']}", file=sys.stderr)


def _protect(args) -> dict | int:
    from .pipeline import protect_directory

    try:
        return protect_directory(args.input, args.output, options=_options(args))
    except (OSError, ValueError, RuntimeError) as e:
        return _error(e)


def _run(args) -> int:
    import warnings

    args.input = _resolve_input(args)
    if args.input is None:
        return 2
    with warnings.catch_warnings():
        warnings.simplefilter("default", UserWarning)
        warnings.showwarning = _show_warning
        report = _protect(args)
    if isinstance(report, int):
        return report
    text = json.dumps(report, indent=1, default=str)
    print(text)
    if args.report:
        from mtlguard.atomic import atomic_write_text

        atomic_write_text(args.report, text)
    _summarize(report)
    if report["failed"] and not args.allow_failures:
        print(f"{PROG}: {report['failed']} file(s) failed (use --allow-failures to exit 0)", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    return run_command(parser, parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
