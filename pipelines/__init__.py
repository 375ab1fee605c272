"""The ``octasim`` console command, installed as ``octasim.cli`` (the source folder is ``pipelines/``).

``main(argv)`` runs one command line in-process (``main(["graph", "info", "g.npz"])``) and returns
its exit status; ``python -m octasim.cli`` (also under ``torchrun``) runs the command from the shell.
Each subcommand is a module of this package (see ``cli.py``); the modules import each other
relatively, so the package works under its installed name.
"""
from .cli import main

__all__ = ["main"]
