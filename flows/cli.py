"""`mediabind` command line: a thin layer over the functions the flows call.

Each subcommand lives in ``flows/commands/<name>.py`` and exposes
``add_parser(subparsers)`` and ``run(args) -> int``; this module only wires
them together, so commands stay small and independently testable.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMANDS = ("ingest", "search", "serve", "ui", "info", "bind")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mediabind",
        description="Search media archives across modalities with ImageBind.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"flows.commands.{name}")
        module.add_parser(sub).set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, LookupError, OSError, RuntimeError) as exc:
        # User-facing errors: one readable line, no traceback.
        print(f"mediabind {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
