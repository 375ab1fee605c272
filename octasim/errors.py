"""The base class of octasim's user-facing errors.

Every error raised for bad input (a file, a folder, an option or a config value) subclasses
:class:`OctasimError`, so callers catch them all in one place; the command line (``octasim.cli``)
prints them as ``octasim COMMAND: error: MESSAGE`` without a traceback (``--debug`` shows it).
"""
from __future__ import annotations


class OctasimError(ValueError):
    """A user-facing error whose message names the file / option and the problem; the CLI prints it
    without a traceback.

    It subclasses ValueError, so code that caught the ValueError the older classes were keeps working.
    """
