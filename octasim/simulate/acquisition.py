"""Acquisition realism: sample the rendered image on the scanner's grid (lateral step
``acq_lateral_step_um`` on i and j, slice spacing ``acq_slice_spacing_um`` on k), then resample
back to the training grid with linear interpolation, as a real anisotropic stack is upsampled
before segmentation. The label is unchanged.

Downsampling is area averaging, approximated by a Gaussian pre-filter of variance (f^2 - 1) / 12
voxels^2 (a box of f voxels less the voxel's own width) followed by linear sampling at the coarse
voxel centres (``resize_linear``, like ``scipy.ndimage.zoom`` in grid mode); f = step / voxel size, axes with f <= 1 are
left alone.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from octasim.simulate._fields import resize_linear


def factors(p: dict, vs: float) -> np.ndarray:
    """Downsampling factor per axis (>= 1)."""
    step = np.array([p["acq_lateral_step_um"], p["acq_lateral_step_um"], p["acq_slice_spacing_um"]], dtype=float)
    return np.maximum(step / vs, 1.0)


def downsample(img: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Image on the coarse scanner grid (shape ~ shape / f, at least 2 per axis)."""
    sigma = np.sqrt(np.maximum(f ** 2 - 1.0, 0.0) / 12.0)
    if sigma.max() > 0:
        img = ndimage.gaussian_filter(img, sigma, mode="reflect", truncate=3.0)
    coarse = np.maximum(np.rint(np.asarray(img.shape) / f), 2).astype(int)
    if tuple(coarse) == img.shape:
        return img
    return resize_linear(img, tuple(coarse))


def upsample(img: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Linear interpolation back to ``shape`` (values stay within the input's range)."""
    if img.shape == tuple(shape):
        return img
    return resize_linear(img, tuple(shape))
