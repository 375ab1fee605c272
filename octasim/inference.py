"""The one inference path: what the network sees of a scan, for validation, threshold calibration
and ``octasim segment`` alike.

Steps (sizes in um, arrays (i, j, k) with depth along k after :func:`to_depth_last`):

1. clip to the checkpoint's percentiles and scale to [0, 1] (as the training volumes were);
2. resample from the scan's voxel size to each *view* of an image pyramid: the training grid and
   coarser grids twice as coarse each (:func:`pyramid_voxel_sizes`);
3. run MONAI sliding-window inference with Gaussian blending; a view shallower than the window
   (10-25 slices of 5 um are common in two-photon stacks) is padded with 0, i.e. dark: no signal and
   no vessel outside the imaged slab, which is how training shows such slabs (``RandDepthSlabd``).
   Mirroring instead would extend every surface vessel crossing a thin slab into a bright wall the
   height of the window, unlike any vessel; on the shallow surface stack (10 slices) an early model
   labelled such vessels at Dice 0.45 mirrored and 0.63 zero-padded at the 8 um view;
4. fuse the views on the scan's grid: the finest view gives every vessel it resolves; a coarser view
   adds only what it calls vessel over at least ``WIDE_VESSEL_VOXELS`` (5) of its own voxels across
   the lateral plane (a grey-level opening with a 5 x 5 x 1 box on its grid: erosion, then
   dilation): the inside of a wide vessel (3 voxels) with a wall voxel on each side. So it fills
   wide vessels whose inside the fine window cannot see, but cannot widen the thin vessels it blurs:
   a capillary is one coarse voxel wide, and the network's probability around it spans a few.
   Lateral only, because a shallow stack is as thin as 6 voxels of the 8 um view along depth.
   Fused probability = max(finest view, opened coarser views). Measured with the instance-norm model
   on both real stacks together (mean Dice, data/models/README.md): openings of 3, 4, 5, 6 and 8
   lateral voxels gave 0.589, 0.625, 0.663, 0.666 and 0.636 (the deep stack gains with the size, the
   surface stack loses), a 3 x 3 x 3 cube 0.593 and a plain maximum 0.573; without the 8 um view the
   surface stack lost 0.19 Dice.

Why a pyramid: a network labels a vessel only if its window (patch x voxel size) sees the vessel's
walls and some tissue around it; inside a vessel wider than the window it sees a bright, textureless
region. Mouse cortex holds pial vessels up to about 100 um wide (``MAX_VESSEL_DIAMETER_UM``), so views
are added until the widest vessel spans at most a quarter of the window (tissue on both sides, and
room for the network's effective receptive field, smaller than its window), as long as the view's
voxel size lies within the voxel sizes the model was trained on (a model trained at one voxel size
gets one view), and as long as the scan fills at least half of the view's window laterally: a coarser
view of a small scan shows the network mostly the zero padding around it, which no training window
holds (an instance-norm network called the whole of a 64 um scan vessel at the 4 and 8 um views, and
on held-out synthetic 192 um two-photon volumes the 8 um view cut Dice from 0.70 to 0.44).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from octasim.preprocess import CLIP_PERCENTILES, from_depth_last, normalize_percentiles, resample, \
    resampled_shape, to_depth_last

#: widest vessel expected in mouse cortex scans (pial veins and arteries, 50-100 um wide), um
MAX_VESSEL_DIAMETER_UM = 100.0
FUSIONS = ("wide", "max")
#: a coarse view adds structures at least this many of its voxels wide across the lateral plane
WIDE_VESSEL_VOXELS = 5
#: the coarsest view's window spans this many of the widest vessels
WINDOW_PER_VESSEL = 4.0
#: the training voxel size assumed for checkpoints that do not record one, um
DEFAULT_VOXEL_SIZE_UM = 2.0


@dataclass(frozen=True)
class ModelGrid:
    """What inference needs to know of a checkpoint: its training grid and input scaling.

    voxel_size_um:       the nominal training voxel size (um): scans are resampled to it.
    patch_size:          the network's window, voxels (i, j, k).
    clip_percentiles:    percentiles clipped and scaled to [0, 1] before the network.
    max_voxel_size_um:   the coarsest voxel size the training volumes were rendered at (um); views of
                         the pyramid never go coarser.
    """

    voxel_size_um: float = DEFAULT_VOXEL_SIZE_UM
    patch_size: tuple[int, int, int] = (64, 64, 64)
    clip_percentiles: tuple[float, float] = CLIP_PERCENTILES
    max_voxel_size_um: float = DEFAULT_VOXEL_SIZE_UM

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any]) -> "ModelGrid":
        grid = float(state.get("voxel_size_um") or DEFAULT_VOXEL_SIZE_UM)
        patch = tuple(int(s) for s in np.broadcast_to(np.asarray(state.get("patch_size", 64)), (3,)))
        clip = tuple(float(p) for p in ((state.get("preprocessing") or {}).get("clip_percentiles")
                                        or CLIP_PERCENTILES))
        return cls(grid, patch, clip, max(grid, trained_voxel_range(state)[1]))


def trained_voxel_range(state: dict[str, Any]) -> tuple[float, float]:
    """(finest, coarsest) voxel size (um) the checkpoint's training volumes were rendered at."""
    if "train_voxel_range_um" in state:
        lo, hi = state["train_voxel_range_um"]
        return float(lo), float(hi)
    grid = float(state.get("voxel_size_um") or DEFAULT_VOXEL_SIZE_UM)
    cfg = state.get("train_config") or {}
    if state.get("on_the_fly"):
        vs = ((cfg.get("on_the_fly") or {}).get("synth_options") or {}).get("voxel_size_um")
        if isinstance(vs, (list, tuple)) and len(vs) == 2:
            return float(vs[0]), float(vs[1])
    return grid, grid


def pyramid_voxel_sizes(grid: ModelGrid, max_vessel_diameter_um: float = MAX_VESSEL_DIAMETER_UM,
                        extent_um: float | None = None) -> list[float]:
    """Voxel sizes (um) of the views: the training grid, then twice as coarse each, until the window
    spans four times ``max_vessel_diameter_um``, or the next view would be coarser than the trained
    range, or the scan (lateral ``extent_um``, um) would fill less than half of the next view's
    window (the network would see mostly the padding around it)."""
    sizes = [float(grid.voxel_size_um)]
    window_um = lambda vs: min(grid.patch_size[:2]) * vs  # noqa: E731 - lateral window, um
    while (window_um(sizes[-1]) < WINDOW_PER_VESSEL * max_vessel_diameter_um
           and 2.0 * sizes[-1] <= grid.max_voxel_size_um * 1.001
           and (extent_um is None or extent_um >= 0.5 * window_um(2.0 * sizes[-1]))):
        sizes.append(2.0 * sizes[-1])
    return sizes


def scan_view_sizes(grid: ModelGrid, shape_depth_last: Sequence[int], spacing_um: Sequence[float]) -> list[float]:
    """The views (um) :func:`predict_probability` uses for a scan of this shape (i, j, k with depth k)
    and voxel size (um): the pyramid, limited by the scan's lateral extent. Fine-tuning prepares real
    scans at the same views."""
    extent_um = max(n * float(s) for n, s in zip(shape_depth_last[:2], spacing_um[:2]))
    return pyramid_voxel_sizes(grid, extent_um=extent_um)


def _window_predictor(model, tta: bool, device):
    """Window batch (N, 1, i, j, k) -> vessel probability, float32; TTA averages lateral flips."""
    import torch

    channels_last = device.type == "cpu"  # oneDNN's 3D convolutions are faster in NDHWC on CPU
    flips = [(), (2,), (3,), (2, 3)] if tta else [()]  # i and j only: depth (k) is never flipped

    def predict(x):
        n = x.shape[0]
        batch = torch.cat([x.flip(f) if f else x for f in flips]) if tta else x
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last_3d)
        with torch.autocast("cuda", dtype=torch.float16, enabled=device.type == "cuda"):
            logits = model(batch)
        prob = torch.sigmoid(logits.float()).contiguous()
        if not tta:
            return prob
        parts = prob.split(n)
        return sum(p.flip(f) if f else p for p, f in zip(parts, flips)) / len(flips)

    return predict


def predict_view(model, image: np.ndarray, patch_size: Sequence[int], device, overlap: float = 0.5,
                 sw_batch_size: int = 4, tta: bool = False) -> np.ndarray:
    """Vessel probability of one view (already on the network's grid), float32, same shape: MONAI
    sliding window with Gaussian blending; a view smaller than the window is padded with 0 (see the
    module's docstring) and the padding cut off again."""
    import torch
    from monai.inferers import sliding_window_inference

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None].to(device)
            prob = sliding_window_inference(x, tuple(int(s) for s in patch_size), sw_batch_size,
                                            _window_predictor(model, tta, device), overlap=overlap,
                                            mode="gaussian", sw_device=device, device=device)
            prob = prob[0, 0].float().cpu().numpy()
    finally:
        model.train(was_training)
    return np.ascontiguousarray(prob)


def wide_part(prob: np.ndarray) -> np.ndarray:
    """What a coarse view (i, j, k with depth k) calls vessel over at least ``WIDE_VESSEL_VOXELS`` of
    its voxels along i and j: grey-level opening (minimum, then maximum, over a 5 x 5 x 1 box)."""
    from scipy.ndimage import grey_opening

    return grey_opening(prob, size=(WIDE_VESSEL_VOXELS, WIDE_VESSEL_VOXELS, 1), mode="nearest")


def predict_probability(model, volume: np.ndarray, spacing_um: Sequence[float], grid: ModelGrid, device,
                        overlap: float = 0.5, sw_batch_size: int = 4, tta: bool = False, depth_axis: str = "k",
                        views_um: Sequence[float] | None = None, fusion: str = "wide") -> np.ndarray:
    """Vessel probability (float32 in [0, 1], the scan's shape) of a 3D scan: the steps of this module.

    ``spacing_um``: voxel size along the array axes (um). ``views_um``: voxel sizes (um) of the
    pyramid's views, finest first; default :func:`pyramid_voxel_sizes` (``[grid.voxel_size_um]`` for a
    single view). ``fusion``: ``"wide"`` (coarse views opened, the documented rule) or ``"max"``
    (a plain maximum over the views; for the ablation in ``benchmarks/bench_real.py``).
    """
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
    image = normalize_percentiles(volume, grid.clip_percentiles)
    image, spacing = to_depth_last(image, spacing_um, depth_axis)
    views = list(scan_view_sizes(grid, image.shape, spacing) if views_um is None else views_um)
    if not views or any(not np.isfinite(v) or v <= 0 for v in views):
        raise ValueError(f"view voxel sizes must be positive numbers (um), got {views_um}")
    fused = None
    for n, view_um in enumerate(views):
        net_in = resample(image, resampled_shape(image.shape, spacing, view_um))
        prob = predict_view(model, net_in, grid.patch_size, device, overlap, sw_batch_size, tta)
        if n > 0 and fusion == "wide":
            prob = wide_part(prob)
        prob = resample(prob, image.shape)
        fused = prob if fused is None else np.maximum(fused, prob, out=fused)
    np.clip(fused, 0.0, 1.0, out=fused)
    return np.ascontiguousarray(from_depth_last(fused, depth_axis))
