"""The ``octasim`` console command: one subcommand per user task.

Each subcommand lives in its own module of this package (installed as ``octasim.cli`` from the folder
``pipelines/``) with ``register(subparsers)`` (which adds its parser and sets ``func``) and keeps heavy
imports (torch, monai) inside its run function so that ``octasim --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from octasim import __version__
from octasim.errors import OctasimError

#: subcommand modules, in the order ``octasim --help`` lists them
SUBCOMMANDS = ["graph", "generate", "train", "segment", "evaluate", "convert", "model", "demo"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults after every option and keeps the description's line breaks."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="octasim", formatter_class=HelpFormatter,
        description="Simulation-based 3D vessel segmentation for OCTA and microscopy scans of the mouse brain.\n"
                    "Units: micrometres (um) unless an option says otherwise; depth is the third array axis.")
    parser.add_argument("--version", action="version", version=f"octasim {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"{__package__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__package__}.{name}":
                continue  # subcommand not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # output piped into e.g. `head`
        return 0
    except KeyboardInterrupt:
        print("octasim: interrupted", file=sys.stderr)
        return 130
    except (OctasimError, OSError, ValueError) as exc:  # user-facing errors: files, formats, parameters
        # OctasimError (every octasim error class) names the file / option; OSError and ValueError come
        # from the standard library and third-party readers (permissions, disk full, bad numbers)
        if getattr(args, "debug", False):
            raise
        print(f"octasim {args.command}: error: {exc}", file=sys.stderr)
        return 2

