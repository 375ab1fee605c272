"""Training a MONAI 3D U-Net on synthetic OCTA / two-photon data (``octasim train``).

- ``config``: TrainConfig loaded from YAML (``data/configs/{default,paper,mixed}.yaml``).
- ``augment``: the reference augmentation as MONAI dictionary transforms (depth never flipped / rotated).
- ``data``: datasets held in memory, the held-out split, on-the-fly synthesis in loader workers.
- ``trainer``: the run and its parts: data set-up, the step, validate-and-checkpoint, calibration.
- ``network``: the U-Net and its optimisation (Adam, schedule, AMP, loss, weight average, DDP).
- ``state``: what a checkpoint holds (``RunState``, written and read back in one place), the run folder.
- ``validation``: validation Dice and threshold calibration through ``octasim segment``'s inference path.
- ``distributed``: torchrun ranks, their devices and what they agree on.

Import-light: torch and MONAI load when a submodule is used.
"""
from __future__ import annotations

from octasim.train.config import ConfigError, TrainConfig, load_config

__all__ = ["ConfigError", "TrainConfig", "load_config", "train"]


def train(*args, **kwargs):
    """See ``octasim.train.trainer.train``."""
    from octasim.train.trainer import train as _train

    return _train(*args, **kwargs)
