"""The one option vocabulary of the ``mtlguard`` subcommands, and help that shows every default.

Kept free of heavy imports (``mtlguard --help`` must not import torch):

* ``--data NAME`` (dataset), ``--root DIR`` (its folder), ``--out PATH`` (what the command writes);
  the older spellings (``--dataset``, ``--data-root``, ``--output``) stay accepted as hidden aliases.
* :class:`DefaultsFormatter` / :func:`show_defaults`: every option's help ends with its default.
"""
from __future__ import annotations

import argparse


def add_hidden_alias(p: argparse.ArgumentParser, flag: str, dest: str, **kw) -> None:
    """Accept ``flag`` as an undocumented spelling of the option stored in ``dest``."""
    p.add_argument(flag, dest=dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kw)


def add_out_arg(p: argparse.ArgumentParser, what: str, required: bool = True, default=None,
                aliases: tuple[str, ...] = ()) -> None:
    """``--out PATH`` (``what`` it is), with hidden ``aliases`` such as ``--output``."""
    if required and aliases:  # argparse cannot require "--out or an alias": checked by check_required_out
        p.add_argument("--out", default=argparse.SUPPRESS, help=f"{what} (required)")
        p.set_defaults(_required_out=True)
    else:
        p.add_argument("--out", required=required, default=default, help=what)
    for a in aliases:
        add_hidden_alias(p, a, "out")


def add_data_arg(p: argparse.ArgumentParser, required: bool = True, choices_help: str | None = None) -> None:
    """``--data NAME`` (``--dataset`` hidden) and ``--root DIR`` (``--data-root`` hidden)."""
    names = choices_help or "utkface, folder, synthetic, celeba, chestxray14, nyuv2, office31"
    p.add_argument("--data", required=required, help=f"dataset: {names}")
    add_hidden_alias(p, "--dataset", "data")
    p.add_argument("--root", default=None,
                   help="dataset folder (utkface: the folder holding images/; folder: the one holding labels.csv and "
                        "tasks.json; unused for synthetic)")
    add_hidden_alias(p, "--data-root", "root")


def check_required_out(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--out`` is required but may come through an alias: argparse cannot say so itself."""
    if getattr(args, "_required_out", False) and not hasattr(args, "out"):
        parser.error("the following arguments are required: --out")


class DefaultsFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to every optional argument's help that does not mention its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (not action.option_strings or action.required or action.nargs == 0 or action.default is argparse.SUPPRESS
                or "default" in text.lower()):
            return text
        return f"{text} (default: %(default)s)".strip()

    def _format_action(self, action: argparse.Action) -> str:
        if action.help is None and action.option_strings:
            action.help = ""  # options without help still get their default shown
        if action.help == "" and action.option_strings and action.nargs != 0 and not action.required:
            action.help = "(default: %(default)s)"
        return super()._format_action(action)


def show_defaults(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make ``parser`` (a subcommand's, built elsewhere) print every default in ``--help``."""
    parser.formatter_class = DefaultsFormatter
    return parser
