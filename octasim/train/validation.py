"""Validation and threshold calibration of a training run, through the inference path of
``octasim segment`` (:mod:`octasim.inference`), and the inference grid a run records for it."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from octasim.inference import DEFAULT_VOXEL_SIZE_UM, ModelGrid, predict_probability
from octasim.metrics import dice
from octasim.preprocess import CLIP_PERCENTILES
from octasim.train.config import TrainConfig


def preprocessing(cfg: TrainConfig) -> dict[str, Any]:
    """How scans must be normalized at inference: the percentiles the training volumes were clipped to
    (``input_clip_percentiles``), else the default ones (training volumes are already in [0, 1])."""
    clip = cfg.input_clip_percentiles if cfg.input_clip_percentiles is not None else CLIP_PERCENTILES
    return {"clip_percentiles": [float(p) for p in clip]}


#: thresholds tried by the calibration (0.05, 0.10, ..., 0.95)
THRESHOLD_GRID = tuple(round(0.05 * i, 2) for i in range(1, 20))


def train_voxel_range(cfg: TrainConfig, voxel_size_um: float, on_the_fly: bool) -> tuple[float, float]:
    """(finest, coarsest) voxel size (um) the run's volumes are rendered at: the on-the-fly
    ``synth_options.voxel_size_um`` (value or range), else the training grid."""
    vs = cfg.on_the_fly.synth_options.get("voxel_size_um") if on_the_fly else None
    if vs is None:
        return float(voxel_size_um), float(voxel_size_um)
    vals = [float(v) for v in (vs if isinstance(vs, (list, tuple)) else [vs])]
    return min(vals), max(vals)


def model_grid(cfg: TrainConfig, voxel_size_um: float, on_the_fly: bool,
               voxel_range: tuple[float, float] | None = None) -> ModelGrid:
    """The inference grid of a run (training voxel size, window, input scaling, trained voxel sizes;
    ``voxel_range`` overrides :func:`train_voxel_range`, e.g. with a fine-tuned model's range)."""
    top = (voxel_range or train_voxel_range(cfg, voxel_size_um, on_the_fly))[1]
    return ModelGrid(float(voxel_size_um), (int(cfg.patch_size),) * 3,
                     tuple(preprocessing(cfg)["clip_percentiles"]), max(float(voxel_size_um), top))


def _probabilities(model: torch.nn.Module, volumes: Sequence[tuple], cfg: TrainConfig,
                   device: torch.device, grid: ModelGrid, tta: bool = True):
    """Vessel probability of each held-out volume through the inference path of ``octasim segment``.
    A volume is (image, label) on the training grid or (image, label, voxel size in um) for a real scan."""
    for image, label, *spacing in volumes:
        spacing = spacing[0] if spacing else (grid.voxel_size_um,) * 3
        yield predict_probability(model, image, spacing, grid, device, overlap=cfg.val_overlap,
                                  sw_batch_size=cfg.batch_size, tta=tta), label


def calibrate_threshold(model: torch.nn.Module, volumes: Sequence[tuple[np.ndarray, np.ndarray]],
                        cfg: TrainConfig, device: torch.device, grid: ModelGrid | None = None,
                        thresholds: Sequence[float] = THRESHOLD_GRID) -> dict[str, Any]:
    """The probability threshold maximizing mean Dice over held-out volumes.

    Each volume is predicted once, exactly as ``octasim segment`` predicts a scan (``grid``: the run's
    :func:`model_grid`; default: the config's patch on the default grid); Dice is computed for every
    threshold. Ties go to the threshold nearest 0.5. Returns plain data: ``{"grid": [...],
    "mean_dice": [...], "chosen": t, "dice_at_chosen": d, "dice_at_0.5": d05, "n_volumes": n}``.
    """
    grid = grid or model_grid(cfg, DEFAULT_VOXEL_SIZE_UM, False)
    thresholds = [float(t) for t in thresholds]
    sums, at_half = np.zeros(len(thresholds)), 0.0
    for prob, label in _probabilities(model, volumes, cfg, device, grid):
        sums += [dice(prob > t, label) for t in thresholds]
        at_half += dice(prob > 0.5, label)
    n = max(1, len(volumes))
    mean = sums / n
    best = max(range(len(thresholds)), key=lambda i: (round(float(mean[i]), 12), -abs(thresholds[i] - 0.5)))
    return {"grid": thresholds, "mean_dice": [round(float(m), 6) for m in mean], "chosen": thresholds[best],
            "dice_at_chosen": float(mean[best]), "dice_at_0.5": at_half / n, "n_volumes": len(volumes)}


def validate(model: torch.nn.Module, volumes: Sequence[tuple[np.ndarray, np.ndarray]], cfg: TrainConfig,
             device: torch.device, grid: ModelGrid | None = None) -> float:
    """Mean Dice over held-out volumes at ``cfg.threshold``, predicted as ``octasim segment`` predicts
    (see :func:`calibrate_threshold` for ``grid``), except for the lateral flips (``tta``): validation
    runs every ``val_every`` steps to rank one run's checkpoints, and the flips would quadruple its
    time; the threshold calibration, run once, uses them as ``segment`` does. The model's train /
    eval mode is kept."""
    grid = grid or model_grid(cfg, DEFAULT_VOXEL_SIZE_UM, False)
    return float(np.mean([dice(prob > cfg.threshold, label)
                          for prob, label in _probabilities(model, volumes, cfg, device, grid, tta=False)]))
