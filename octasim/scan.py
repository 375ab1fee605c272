"""Scan files in either format: NIfTI (.nii / .nii.gz) or TIFF (.tif / .tiff), chosen by suffix.

:func:`read_scan` gives a Volume with a usable voxel size (um along i, j, k): the caller's, or the
file's after a plausibility check; :func:`write_like` writes a result (e.g. a mask) in the layout of
the scan it was computed from, so it overlays that scan in a viewer.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from octasim.errors import OctasimError
from octasim.nifti import Volume, VolumeError, check_voxel_size, is_nifti, read_volume, write_volume

#: ``output_format`` values: auto = the input's format
OUTPUT_FORMATS = ("auto", "nifti", "tiff")
#: the suffix written for each output format
OUTPUT_SUFFIX = {"nifti": ".nii.gz", "tiff": ".tif"}


def check_spacing(spacing_um: Sequence[float] | float) -> tuple[float, float, float]:
    """A voxel size as three positive finite floats (um along i, j, k; one number means isotropic);
    OctasimError otherwise."""
    try:
        spacing = tuple(float(s) for s in np.broadcast_to(np.asarray(spacing_um, dtype=float), (3,)))
    except (TypeError, ValueError):
        raise OctasimError(f"voxel size must be three positive numbers in um, got {spacing_um}") from None
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise OctasimError(f"voxel size must be three positive numbers in um, got {spacing_um}")
    return spacing


def read_scan(path: str | Path, voxel_size_um: Sequence[float] | float | None = None, channel: int | None = None,
              axes: str | None = None, dtype=np.float32) -> Volume:
    """Read a 3D scan from NIfTI or TIFF (by suffix) as ``dtype``, with ``spacing_um`` (um along i, j, k)
    set to the voxel size to compute with.

    ``voxel_size_um`` overrides the file's voxel size; otherwise a NIfTI header's must be plausible
    (:func:`octasim.nifti.check_voxel_size`, 0.05-100 um) and a TIFF must carry one (see
    :func:`octasim.tiff.read_tiff`). NIfTI volumes keep their own affine and header (so outputs
    overlay them even with an override); ``channel`` and ``axes`` concern TIFF files only.
    Raises VolumeError naming the file.
    """
    from octasim.tiff import is_tiff, read_tiff

    path = Path(path)
    override = check_spacing(voxel_size_um) if voxel_size_um is not None else None
    if not path.exists():
        raise VolumeError(f"{path}: no such file")
    if is_tiff(path):
        vol = read_tiff(path, override, channel=channel, axes=axes)
        return replace(vol, data=vol.data.astype(dtype, copy=False))
    if not is_nifti(path):
        raise VolumeError(f"{path}: not a scan octasim reads (expected .nii, .nii.gz, .tif or .tiff)")
    vol = read_volume(path, dtype=dtype)
    return replace(vol, spacing_um=override or check_voxel_size(vol))


def output_format(input_path: str | Path, requested: str = "auto") -> str:
    """'nifti' or 'tiff': ``requested``, or with 'auto' the format of ``input_path``."""
    from octasim.tiff import is_tiff

    if requested not in OUTPUT_FORMATS:
        raise OctasimError(f"unknown output format {requested!r}; choose one of {', '.join(OUTPUT_FORMATS)}")
    if requested != "auto":
        return requested
    return "tiff" if is_tiff(input_path) else "nifti"


def write_like(path: str | Path, data: np.ndarray, like: Volume) -> Path:
    """Write ``data`` (indexed (i, j, k), the shape of ``like.data``) atomically in the format of
    ``path``'s suffix, laid out like the scan ``like``: TIFF in ``like``'s file axis order with its
    voxel size as ImageJ calibration (um); NIfTI with ``like``'s affine and header (a TIFF scan's
    affine is ``affine_for_spacing`` of its voxel size)."""
    from octasim.tiff import is_tiff, write_tiff

    if is_tiff(path):
        return write_tiff(path, data, like.spacing_um, axes=like.file_axes or "zyx")
    return write_volume(path, data, affine=like.affine, header=like.header)
