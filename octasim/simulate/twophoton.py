"""Two-photon microscopy signal: fluorescent dye fills the vessel lumen (no projection tails).

Lumen value ``lumen_intensity * occupancy * r / (r + small_vessel_radius_um) * max(0, 1 +
lumen_variation * field)``: ``occupancy`` is ``maps.occupancy`` (partial volume) when the voxelizer
provides it, else the binary label; the radius factor dims capillaries relative to wide vessels
(less dye per resolution cell); ``field`` is a smooth random field of scale ``lumen_variation_um``
(uneven dye concentration / illumination along vessels).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from octasim.simulate._fields import smooth_noise
from octasim.voxelize import VoxelMaps


def lumen_signal(maps: VoxelMaps, p: dict, rng: np.random.Generator) -> np.ndarray:
    """Float32 lumen fluorescence image (arbitrary units, 0 outside vessels)."""
    label = np.asarray(maps.label) != 0
    radius = np.asarray(maps.radius, dtype=np.float32)
    if maps.occupancy is not None:
        occ = np.clip(np.asarray(maps.occupancy, dtype=np.float32), 0.0, 1.0)
        # partial-volume voxels just outside the label carry no radius: take the largest neighbour's
        radius = np.where(radius > 0, radius, ndimage.grey_dilation(radius, size=3)) if (occ > 0).any() else radius
    else:
        occ = label.astype(np.float32)
    r_s = np.float32(p["small_vessel_radius_um"])
    factor = radius / np.maximum(radius + r_s, np.float32(1e-6))
    img = np.float32(p["lumen_intensity"]) * occ * factor
    if p["lumen_variation"] > 0:
        field = smooth_noise(img.shape, max(p["lumen_variation_um"] / maps.voxel_size_um, 0.5), rng)
        field *= np.float32(p["lumen_variation"])
        field += 1.0
        np.maximum(field, 0.0, out=field)
        img *= field
    return img.astype(np.float32, copy=False)


def detector_noise(img: np.ndarray, p: dict, rng: np.random.Generator) -> np.ndarray:
    """Shot noise (Gaussian approximation of Poisson counts: an intensity x yields x *
    ``photons_per_unit`` photons on average, std sqrt(x / photons_per_unit) in image units) plus
    Gaussian read noise of std ``read_noise_std``; the result is clipped at 0."""
    np.maximum(img, 0.0, out=img)
    std = img * np.float32(1.0 / p["photons_per_unit"])
    std += np.float32(p["read_noise_std"]) ** 2
    np.sqrt(std, out=std)
    std *= rng.standard_normal(img.shape, dtype=np.float32)
    img += std
    np.maximum(img, 0.0, out=img)
    return img
