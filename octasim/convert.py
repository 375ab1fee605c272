"""TIFF stacks (Fiji, microscope software) -> volumes in octasim's (i, j, k = depth) layout."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from octasim.nifti import Volume, VolumeError, affine_for_spacing

TIFF_SUFFIXES = (".tif", ".tiff")


def is_tiff(path: str | Path) -> bool:
    return str(path).lower().endswith(TIFF_SUFFIXES)


def read_tiff_volume(path: str | Path, spacing_um, axes: str = "zyx") -> Volume:
    """Read a 3D multi-page TIFF whose array axes are ``axes`` (default z, y, x with z = depth).

    Returns the volume transposed to (x, y, z), i.e. (i, j, k) with depth last, and a diagonal
    affine for ``spacing_um`` = (x, y, z) voxel size in um (TIFF files carry no reliable 3D spacing).
    """
    import tifffile

    path = Path(path)
    if not path.exists():
        raise VolumeError(f"{path}: no such file")
    axes = axes.lower()
    if sorted(axes) != ["x", "y", "z"]:
        raise ValueError(f"axes must be a permutation of 'xyz', got {axes!r}")
    try:
        data = tifffile.imread(str(path))
    except Exception as exc:  # tifffile raises several types for damaged files
        raise VolumeError(f"{path}: cannot read the TIFF ({type(exc).__name__}: {exc})") from exc
    data = np.squeeze(data)
    if data.ndim != 3:
        raise VolumeError(f"{path}: the TIFF has shape {data.shape}; a 3D single-channel stack is needed")
    spacing = np.broadcast_to(np.asarray(spacing_um, dtype=float), (3,))
    if not (np.isfinite(spacing).all() and (spacing > 0).all()):
        raise ValueError(f"voxel size must be three positive numbers in um, got {spacing_um}")
    data = np.transpose(data, [axes.index(a) for a in "xyz"])
    return Volume(np.ascontiguousarray(data), affine_for_spacing(spacing), None,
                  tuple(float(s) for s in spacing), path)
