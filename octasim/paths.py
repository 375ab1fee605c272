"""Where the files that ship with octasim (profiles, configs, the example graph) live."""
from __future__ import annotations

from pathlib import Path

#: The project's ``data/`` folder (profiles, training configs, the example graph).
DATA_DIR = Path(__file__).resolve().parent.parent / "data"


def data_file(name: str) -> Path:
    """Path of a shipped file in ``data/``; FileNotFoundError names it if it is missing."""
    path = DATA_DIR / name
    if not path.exists():
        raise FileNotFoundError(f"{path}: shipped data file missing (is octasim installed from a full checkout?)")
    return path
