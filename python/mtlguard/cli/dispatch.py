"""The parser skeleton and subcommand dispatch shared by ``mtlguard`` and ``mtlguard-engine``.

Kept free of heavy imports: :mod:`mtlguard.engine.cli` uses it too.
"""
from __future__ import annotations

import argparse


def command_parser(prog: str, description: str, version: str) -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """A parser with ``--version`` (printing ``"<prog> <version>"``) and its ``COMMAND`` subparsers."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--version", action="version", version=f"{prog} {version}")
    return parser, parser.add_subparsers(dest="command", metavar="COMMAND")


def run_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Run the chosen subcommand's ``func``; with no subcommand print the help.  Returns the exit status."""
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


def install_warning_format(prog: str) -> None:
    """Print warnings as ``"<prog>: warning: <message>"`` (one line, no Python source line or file
    name); called by the command-line entry points only, never on import."""
    import warnings

    def _format(message, category, filename, lineno, line=None) -> str:  # noqa: ARG001 - warnings' signature
        text = " ".join(str(message).split())
        return f"{prog}: warning: {text}\n"

    warnings.formatwarning = _format
