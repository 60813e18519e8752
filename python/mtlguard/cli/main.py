"""``mtlguard`` command line: the Python API's front door.

Subcommands register themselves in :data:`SUBCOMMANDS` (name -> (module, one-line help)); each module's
``add_parser(subparsers)`` adds an ``argparse`` subparser whose ``func`` runs the command.  Only the
module of the subcommand being run is imported (``mtlguard --help`` lists the others from the table
without importing torch), every option's default shows in ``--help``, warnings print as one line
(``mtlguard: warning: ...``, no source line), and
a usage error -- a bad option, a missing or unreadable file, an unknown dataset or architecture --
prints one line naming it and exits 2 (``MTLGUARD_TRACEBACK=1`` shows the traceback instead; called
as ``main(argv)`` from Python, such exceptions propagate, and ``SystemExit`` messages raise
:class:`UsageExit`).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from .._version import __version__
from .dispatch import command_parser, install_warning_format, run_command
from .options import DefaultsFormatter, check_required, show_defaults

#: subcommand name -> (module relative to mtlguard.cli defining ``add_parser(subparsers)``, its --help line).
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "attack-eval": ("attack_eval", "evaluate multi-task attacks (GB-MTA, baselines, WGD) on a trained model"),
    "export": ("export", "export a trained generator (ONNX incl. the any-size variant, TorchScript, .pt2, TensorRT)"),
    "fit": ("fit", "fit an MTL-UE generator (EM / TAP / SEP base loss) and save it"),
    "inspect": ("inspect", "print a generator's tasks, classes, eps, input size and fit config (.safetensors, "
                           ".onnx, .pt2, ...)"),
    "poison": ("poison", "write a protected copy of a dataset (MTL-UE generator or LSP/AR)"),
    "evaluate-protection": ("evaluate_protection", "train victims on protected data and report (Table 2 shape)"),
    "train": ("train", "train an MTL / STL victim model (HPS, task weighting)"),
    "verify": ("verify", "train victims on clean vs protected images and report the protection ratio per task"),
}
PROG = "mtlguard"
#: exceptions a subcommand raises for bad user input (missing/unreadable files, unknown names, bad values).
USER_ERRORS = (OSError, ValueError, KeyError)


def _chosen(argv: list[str]) -> str | None:
    """The subcommand named on the command line (first non-option argument), if any."""
    for a in argv:
        if not a.startswith("-"):
            return a
    return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The ``mtlguard`` parser.  With ``argv``, only the subcommand it names is fully built (the others
    are listed); without, every subcommand module is imported."""
    parser, sub = command_parser(
        PROG, "mtlguard: unlearnable examples and adversarial attacks for multi-task learning.", __version__)
    parser.formatter_class = DefaultsFormatter
    chosen = None if argv is None else _chosen(argv)
    for name, (module, text) in SUBCOMMANDS.items():
        if argv is None or name == chosen:
            importlib.import_module(f"mtlguard.cli.{module}").add_parser(sub)
            show_defaults(sub.choices[name])
        else:
            sub.add_parser(name, help=text, add_help=False)
    info = sub.add_parser("info", help="print versions and the fused-op backend")
    info.set_defaults(func=_info)
    return parser


def _info(args) -> int:
    import json

    import torch

    from .. import ops

    print(json.dumps({"mtlguard": __version__, "torch": torch.__version__,
                      "cuda_available": torch.cuda.is_available(), **ops.backend_info()}, indent=2))
    return 0


def _message(e: BaseException) -> str:
    """One line for a user error (KeyError's repr quotes are dropped)."""
    text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    if isinstance(e, OSError) and e.filename and str(e.filename) not in str(text):
        text = f"{e.filename}: {e.strerror or text}"
    return " ".join(str(text).split()) or type(e).__name__


class UsageExit(SystemExit):
    """A usage error already reported on stderr: exit status 2; ``str()`` is the message."""

    def __init__(self, message: str):
        super().__init__(message)
        self.code = 2


def _fail(prog: str, message: str) -> UsageExit:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return UsageExit(message)


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace, console: bool) -> int:
    """Run the subcommand.  ``SystemExit("message")`` -> one line on stderr and exit status 2
    (:class:`UsageExit`); on the console (``console``) a user error (:data:`USER_ERRORS`) too, while
    ``main(argv)`` called from Python lets those exceptions through."""
    prog = f"{PROG} {args.command}" if getattr(args, "command", None) else PROG
    try:
        return run_command(parser, args)
    except BrokenPipeError:  # output piped into e.g. `head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except UsageExit:
        raise
    except SystemExit as e:
        if isinstance(e.code, str):
            raise _fail(prog, " ".join(e.code.split())) from None
        raise
    except USER_ERRORS as e:
        if not console or os.environ.get("MTLGUARD_TRACEBACK"):
            raise
        raise _fail(prog, _message(e)) from None


def main(argv: list[str] | None = None) -> int:
    """Run ``mtlguard`` with ``argv`` (default: the command line, where user errors print one line)."""
    console = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if console:
        install_warning_format(PROG)
    parser = build_parser(argv)
    args, extra = parser.parse_known_args(argv)
    sub = parser._subparsers._group_actions[0].choices.get(getattr(args, "command", None) or "")  # noqa: SLF001
    if extra:  # report unknown options with the subcommand's usage, not the top-level one
        (sub or parser).error(f"unrecognized arguments: {' '.join(extra)}")
    if sub is not None:
        check_required(sub, args)
    args.argv = argv  # the exact command, recorded in reports (see unlearnable.cli_common.command_line)
    return _run(parser, args, console)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
