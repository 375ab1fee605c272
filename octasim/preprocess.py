"""Preparing real scans for the network: intensity normalization, depth-axis order, resampling.

All sizes are micrometres (um); arrays are indexed (i, j, k) with depth along k once
:func:`to_depth_last` has been applied.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from octasim.errors import OctasimError

DEPTH_AXES = {"i": 0, "j": 1, "k": 2}
#: percentiles (%) clipped and scaled to [0, 1] before the network sees a scan, unless a checkpoint says otherwise
CLIP_PERCENTILES = (0.5, 99.5)


class PreprocessError(OctasimError):
    """An image cannot be normalized (e.g. all voxels equal)."""


def normalize_percentiles(volume: np.ndarray, clip_percentiles: Sequence[float] = CLIP_PERCENTILES,
                          roi: np.ndarray | None = None) -> np.ndarray:
    """Clip to the given percentiles and scale to [0, 1] (float32, a new array).

    When the two percentiles coincide (a sparse image, mostly background), the upper bound falls
    back to the maximum. ``roi`` (bool, the volume's shape): the percentiles are those of the voxels
    inside it, and every voxel outside it becomes 0 (no signal). Raises PreprocessError for an
    all-constant image (inside ``roi``) and for NaN / inf values.
    """
    data = np.asarray(volume, dtype=np.float32)
    if not np.isfinite(data).all():
        raise PreprocessError("the image contains NaN or infinite values")
    lo_p, hi_p = (float(p) for p in clip_percentiles)
    if not 0.0 <= lo_p < hi_p <= 100.0:
        raise ValueError(f"clip percentiles must satisfy 0 <= low < high <= 100, got {clip_percentiles}")
    if roi is not None:
        roi = np.asarray(roi) != 0
        if roi.shape != data.shape:
            raise ValueError(f"the region of interest has shape {roi.shape}, the image {data.shape}")
    inside = data if roi is None else data[roi]
    if inside.size == 0:
        raise PreprocessError("the region of interest is empty; nothing to segment")
    lo, hi = (float(v) for v in np.percentile(inside, [lo_p, hi_p]))
    if hi <= lo:
        hi = float(inside.max())
    if hi <= lo:
        lo = float(inside.min())
    if hi <= lo:
        where = " inside the region of interest" if roi is not None else ""
        raise PreprocessError(f"the image is constant{where} (every voxel is {lo:g}); nothing to segment")
    out = data - np.float32(lo)  # new array; the in-place steps below do not touch the input
    out *= np.float32(1.0 / (hi - lo))
    np.clip(out, 0.0, 1.0, out=out)
    if roi is not None:
        out[~roi] = 0.0
    return out


def _depth_index(depth_axis: str) -> int:
    try:
        return DEPTH_AXES[depth_axis]
    except KeyError:
        raise ValueError(f"depth axis must be one of 'i', 'j', 'k', got {depth_axis!r}") from None


def to_depth_last(volume: np.ndarray, spacing_um: Sequence[float], depth_axis: str = "k"):
    """Move the depth axis to k; returns (view of the volume, voxel size in the new axis order)."""
    axis = _depth_index(depth_axis)
    spacing = list(float(s) for s in spacing_um)
    spacing.append(spacing.pop(axis))
    return np.moveaxis(volume, axis, 2), tuple(spacing)


def from_depth_last(volume: np.ndarray, depth_axis: str = "k") -> np.ndarray:
    """Inverse of :func:`to_depth_last` for an array (a view, no copy)."""
    return np.moveaxis(volume, 2, _depth_index(depth_axis))


def resampled_shape(shape: Sequence[int], spacing_um: Sequence[float], target_um: float | Sequence[float]):
    """Shape covering the same physical extent at voxel size ``target_um`` (at least 1 voxel per axis)."""
    target = np.broadcast_to(np.asarray(target_um, float), (3,))
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing_um, target))


def resample(volume: np.ndarray, shape: Sequence[int], antialias: bool = True) -> np.ndarray:
    """Trilinear resampling of a 3D array to ``shape`` (float32).

    Voxels are treated as cells covering the same field of view before and after
    (``align_corners=False``), so resampling to a voxel size and back to the original shape
    returns the original grid exactly. Axes that shrink are first smoothed with a Gaussian of
    sigma = (factor - 1) / 2 input voxels (the anti-aliasing rule of ``skimage.transform.resize``).

    Why ``torch.nn.functional.interpolate`` and not MONAI ``Spacing``: ``Spacing`` derives the
    output shape from the affine (rounding it its own way) and resamples through a general affine
    grid; here we need a given output shape, in particular the exact original shape on the way back,
    and a separable trilinear interpolation on an in-memory array, which ``interpolate`` does in a
    single fast native pass without building a sampling grid.
    """
    import torch
    import torch.nn.functional as F

    shape = tuple(int(s) for s in shape)
    data = np.asarray(volume, dtype=np.float32)
    if data.shape == shape:
        return data
    if antialias:
        factors = np.asarray(data.shape, float) / np.asarray(shape, float)
        sigma = np.maximum(0.0, (factors - 1.0) / 2.0)
        if (sigma > 0).any():
            from scipy.ndimage import gaussian_filter

            data = gaussian_filter(data, sigma=sigma, mode="nearest")
    with torch.inference_mode():
        t = torch.from_numpy(np.ascontiguousarray(data))[None, None]
        out = F.interpolate(t, size=shape, mode="trilinear", align_corners=False)
    return out[0, 0].numpy()
