"""``python -m octasim.cli ARGS`` (and ``torchrun ... -m octasim.cli ARGS``): the ``octasim`` command."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
