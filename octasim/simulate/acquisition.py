"""Acquisition realism: sample the rendered image on the scanner's grid (lateral step
``acq_lateral_step_um`` on i and j, slice spacing ``acq_slice_spacing_um`` on k), then resample
back to the training grid with linear interpolation, as a real anisotropic stack is upsampled
before segmentation. The label is unchanged here; :func:`label_on_scanner_grid` draws it on the same
scanner grid (:func:`scanner_shape`) for ``SynthConfig(label_acquisition=True)``.

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


def scanner_shape(shape: tuple[int, ...], f: np.ndarray) -> tuple[int, ...]:
    """The scanner's grid for a volume of ``shape`` voxels: ``max(2, round(n / f))`` cells per axis
    (``f``: cell size in voxels per axis, >= 1). The one rule for the image (:func:`downsample`) and
    the label (:func:`label_on_scanner_grid`)."""
    return tuple(int(c) for c in np.maximum(np.rint(np.asarray(shape) / np.asarray(f, float)), 2))


def downsample(img: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Image on the coarse scanner grid (:func:`scanner_shape`)."""
    sigma = np.sqrt(np.maximum(f ** 2 - 1.0, 0.0) / 12.0)
    if sigma.max() > 0:
        img = ndimage.gaussian_filter(img, sigma, mode="reflect", truncate=3.0)
    coarse = scanner_shape(img.shape, f)
    if coarse == img.shape:
        return img
    return resize_linear(img, coarse)


def label_on_scanner_grid(label: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Binary label as drawn on an acquired stack: per axis, the grid is cut into the scanner's
    cells (:func:`scanner_shape`: equal cells of about ``f`` voxels), a cell is vessel when any of
    its voxels is, and every voxel takes its cell's value. Axes the scanner does not coarsen are
    unchanged. ``f``: cell size per axis in voxels (scanner step / voxel size, :func:`factors`)."""
    out = np.asarray(label).astype(bool)
    f3 = np.broadcast_to(np.asarray(f, float), (out.ndim,))
    for axis, cells in enumerate(scanner_shape(out.shape, f3)):
        n = out.shape[axis]
        if cells >= n:
            continue
        starts = (np.arange(cells) * n) // cells
        coarse = np.logical_or.reduceat(out, starts, axis=axis)
        owner = np.searchsorted(starts, np.arange(n), side="right") - 1
        out = np.take(coarse, owner, axis=axis)
    return out


def upsample(img: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Linear interpolation back to ``shape`` (values stay within the input's range)."""
    if img.shape == tuple(shape):
        return img
    return resize_linear(img, tuple(shape))
