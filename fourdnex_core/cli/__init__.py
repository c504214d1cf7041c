"""The ``fourdnex`` command line: ``fourdnex SUBCOMMAND ...`` (also ``python -m fourdnex_core``).

Each subcommand lives in its own module of this package and exposes
``add_parser(subparsers) -> argparse.ArgumentParser`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import logging

from fourdnex_core.cli.errors import EXIT_INTERRUPTED, run_command

# Subcommand name -> module in this package.
SUBCOMMANDS = {
    "generate": "generate",
    "make-tiny": "make_tiny",
    "demo": "demo",
    "postopt": "postopt",
    "export": "export",
    "render": "render",
    "convert-lora": "convert_lora",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fourdnex", description="4DNeX: one image to a dynamic point cloud.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(f"{__name__}.{module_name}")
        subparser = module.add_parser(subparsers)
        subparser.set_defaults(handler=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the subcommand; returns the exit code (see :mod:`fourdnex_core.cli.errors`)."""
    try:
        parser = build_parser()  # imports torch and the subcommands: seconds a user may Ctrl-C
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    return run_command("fourdnex", args.command, lambda: args.handler(args), verbose=args.verbose)
