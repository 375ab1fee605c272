"""Random texture fields shared by several stages."""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def smooth_noise(shape: tuple[int, ...], sigma_vox: float | tuple[float, ...], rng: np.random.Generator) -> np.ndarray:
    """Gaussian random field, zero mean and unit std, correlation sigma ``sigma_vox`` (voxels, per
    axis or one value), float32 of ``shape``. Coarse-grained fields are drawn on a subsampled grid
    and linearly interpolated up, so wide textures stay cheap."""
    sig = np.broadcast_to(np.asarray(sigma_vox, dtype=float), (len(shape),))
    step = np.maximum(1, np.floor(sig / 2.0)).astype(int)  # >= 2 coarse samples per sigma
    cshape = tuple(int(np.ceil(n / s)) + 1 if s > 1 else n for n, s in zip(shape, step))
    field = rng.standard_normal(cshape, dtype=np.float32)
    field = ndimage.gaussian_filter(field, sig / step, mode="wrap")
    field = resize_linear(field, shape)
    field -= field.mean()
    std = float(field.std())
    if std > 0:
        field *= 1.0 / std
    return field.astype(np.float32, copy=False)


def depth_um(n_depth: int, voxel_size_um: float) -> np.ndarray:
    """Depth of each voxel centre along the third axis, um, shape (1, 1, n_depth)."""
    return ((np.arange(n_depth, dtype=np.float32) + 0.5) * voxel_size_um).reshape(1, 1, -1)


def resize_linear(img: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Separable linear resampling of ``img`` to ``shape``, voxels treated as areas (centre of
    output voxel o sits at input coordinate (o + 0.5) * n_in / n_out - 0.5, clamped at the edges,
    as ``scipy.ndimage.zoom(..., order=1, grid_mode=True, mode="nearest")``) but several times
    faster. Outputs are convex combinations of inputs, so the value range is kept. float32."""
    out = np.asarray(img, dtype=np.float32)
    for axis, n_out in enumerate(shape):
        n_in = out.shape[axis]
        if n_in == n_out:
            continue
        x = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        x = np.clip(x, 0, n_in - 1)
        lo = np.floor(x).astype(np.intp)
        hi = np.minimum(lo + 1, n_in - 1)
        w = (x - lo).astype(np.float32).reshape([-1 if a == axis else 1 for a in range(out.ndim)])
        a = np.take(out, lo, axis=axis)
        b = np.take(out, hi, axis=axis)
        b -= a
        b *= w
        a += b
        out = a
    return out
