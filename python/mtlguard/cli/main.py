"""``mtlguard`` command line: the Python API's front door.

Subcommands register themselves in :data:`SUBCOMMANDS` (name -> module with ``add_parser(sub)``);
each module's ``add_parser`` adds an ``argparse`` subparser whose ``func`` runs the command.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .._version import __version__
from .dispatch import command_parser, run_command

#: subcommand name -> module (relative to mtlguard.cli) defining ``add_parser(subparsers)``.
SUBCOMMANDS: dict[str, str] = {
    "attack-eval": "attack_eval",
    "export": "export",
    "fit": "fit",
    "poison": "poison",
    "evaluate-protection": "evaluate_protection",
    "train": "train",
    "verify": "verify",
}


def build_parser() -> argparse.ArgumentParser:
    parser, sub = command_parser(
        "mtlguard", "mtlguard: unlearnable examples and adversarial attacks for multi-task learning.", __version__)
    for name, module in SUBCOMMANDS.items():
        importlib.import_module(f"mtlguard.cli.{module}").add_parser(sub)
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv  # the exact command, recorded in reports (see unlearnable.cli_common.command_line)
    return run_command(parser, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
