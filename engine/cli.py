"""``mtlguard-engine``: protect image directories at high throughput."""
from __future__ import annotations

import argparse
import sys

from mtlguard._version import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtlguard-engine",
        description="Bulk-protect image directories with an exported mtlguard generator.",
    )
    parser.add_argument("--version", action="version", version=f"mtlguard-engine {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
