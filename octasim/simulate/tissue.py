"""Tissue and motion stages shared by the OCTA and two-photon models (all off in ``paper``).

Every function takes the current image (float32, arbitrary units before the output mapping),
returns the new image, and uses only its own parameters and ``rng``.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from octasim.simulate._fields import depth_um, resize_linear, smooth_noise
from octasim.voxelize import VoxelMaps


def background(img: np.ndarray, vs: float, p: dict, rng: np.random.Generator) -> np.ndarray:
    """Add weak textured tissue signal (OCTA static-tissue decorrelation, two-photon
    autofluorescence): ``background_level * max(0, 1 + background_contrast * field)``, field a
    Gaussian random field of correlation ``background_texture_um``."""
    field = smooth_noise(img.shape, max(p["background_texture_um"] / vs, 0.5), rng)
    field *= np.float32(p["background_contrast"])
    field += 1.0
    np.maximum(field, 0.0, out=field)
    img += np.float32(p["background_level"]) * field
    return img


def surface_layer(img: np.ndarray, vs: float, p: dict, rng: np.random.Generator,
                  depth_origin_um: float = 0.0) -> np.ndarray:
    """Add a bright textured layer at the top of the volume (pia / skull interface): thickness
    ``surface_thickness_um`` varying laterally by ``surface_roughness_um`` (std), soft lower edge of
    one voxel, intensity ``surface_intensity * max(0, 1 + surface_contrast * texture)``."""
    nx, ny, nz = img.shape
    thick = p["surface_thickness_um"] + p["surface_roughness_um"] * smooth_noise((nx, ny), 20.0 / vs, rng)
    thick = np.maximum(thick - depth_origin_um, 0.0)[:, :, None]  # a window below the surface sees less of it
    k_max = int(min(nz, np.ceil((float(thick.max()) + 6 * vs) / vs))) if thick.max() > 0 else 0
    if k_max <= 0:
        return img
    z = depth_um(k_max, vs)
    edge = 1.0 / (1.0 + np.exp(np.clip((z - thick) / vs, -50, 50)))
    tex = smooth_noise((nx, ny, k_max), 1.5, rng)
    layer = np.float32(p["surface_intensity"]) * np.maximum(1.0 + np.float32(p["surface_contrast"]) * tex, 0.0) * edge
    img[:, :, :k_max] += layer.astype(np.float32)
    return img


def attenuation(img: np.ndarray, vs: float, p: dict, depth_origin_um: float = 0.0) -> np.ndarray:
    """Multiply by ``exp(-depth / attenuation_length_um)``, depth of the voxel centre below the brain
    surface: ``depth_origin_um`` (the volume's top face) plus the depth within the volume."""
    depth = depth_um(img.shape[2], vs) + np.float32(depth_origin_um)
    img *= np.exp(-depth / np.float32(p["attenuation_length_um"]))
    return img


def blood_shadow(img: np.ndarray, maps: VoxelMaps, vs: float, p: dict) -> np.ndarray:
    """Multiply by ``exp(-b / blood_attenuation_length_um)``, ``b`` the length of blood (um) the
    excitation crosses above the voxel centre in this volume (lumen occupancy summed along depth k,
    half of the voxel's own).

    Two-photon excitation is scattered and absorbed by blood far more than by tissue, so the lower
    part of a wide lumen is dimmer than its top and the tissue below it lies in its shadow (on the
    shared surface stack the 50-100 um lumens fall about threefold in brightness over 30 um of
    depth). Without it every rendered lumen is equally bright at every depth, and a network that
    also learns OCTA takes the dimming part of a real lumen for a projection tail below a vessel.
    """
    occ = np.asarray(maps.occupancy if maps.occupancy is not None else (np.asarray(maps.label) != 0),
                     dtype=np.float32)
    blood = np.cumsum(occ, axis=2, dtype=np.float32)
    blood -= 0.5 * occ
    blood *= np.float32(-vs / float(p["blood_attenuation_length_um"]))
    img *= np.exp(blood, out=blood)
    return img


def speckle(img: np.ndarray, p: dict, rng: np.random.Generator) -> np.ndarray:
    """Multiply by gamma-distributed speckle of mean 1 and variance ``1 / speckle_looks``, smoothed
    with a Gaussian of ``speckle_sigma_vox`` voxels (speckle grain)."""
    looks = float(p["speckle_looks"])
    field = rng.standard_gamma(looks, size=img.shape, dtype=np.float32)
    field *= np.float32(1.0 / looks)
    if p["speckle_sigma_vox"] > 0:
        field = ndimage.gaussian_filter(field, float(p["speckle_sigma_vox"]), mode="nearest", truncate=3.0)
    img *= field
    return img


def motion(img: np.ndarray, vs: float, p: dict, rng: np.random.Generator) -> np.ndarray:
    """Bulk-motion artifacts per B-scan (a B-scan is the (i, k) plane at one slow-axis index j):
    with probability ``motion_shift_prob`` the B-scan is displaced along the fast axis i by a
    whole number of voxels up to ``motion_shift_max_um`` (edges repeat); with probability
    ``motion_stripe_prob`` it becomes a stripe: dark (fraction ``motion_stripe_dark_fraction`` of
    stripes; signal scaled by U(0, 1)) or bright (adds U(0, 1) * ``motion_stripe_strength``).
    The label is not moved: keep shifts small."""
    nx, ny, _ = img.shape
    max_shift = int(round(p["motion_shift_max_um"] / vs))
    shifted = rng.random(ny) < p["motion_shift_prob"]
    shift = np.where(shifted, rng.integers(-max_shift, max_shift, size=ny, endpoint=True), 0)
    stripe = rng.random(ny) < p["motion_stripe_prob"]
    dark = rng.random(ny) < p["motion_stripe_dark_fraction"]
    amount = rng.random(ny).astype(np.float32)
    if shift.any():
        src = np.clip(np.arange(nx)[:, None] - shift[None, :], 0, nx - 1)
        img = img[src, np.arange(ny)[None, :], :]
    for j in np.flatnonzero(stripe):  # one vectorized 2D operation per striped B-scan
        if dark[j]:
            img[:, j, :] *= amount[j]
        else:
            img[:, j, :] += amount[j] * np.float32(p["motion_stripe_strength"])
    return img


def leakage(img: np.ndarray, maps: VoxelMaps, p: dict) -> np.ndarray:
    """Add dye-leakage haze around vessels (two-photon):
    ``leakage_strength * exp(-distance_um / leakage_length_um)`` with the Euclidean distance to
    the nearest vessel voxel (0 inside). For speed the distance is computed on a grid coarsened by
    f = clip(floor(leakage_length_um / (2 * voxel size)), 1, 4) (a coarse voxel is vessel if any of
    its voxels is), interpolated back and reduced by (f - 1) / 2 voxels (the mean offset of block
    centres); the remaining error, about a voxel, is small next to the decay length."""
    label = np.asarray(maps.label) != 0
    if not label.any() or p["leakage_strength"] <= 0:
        return img
    vs = float(maps.voxel_size_um)
    f = int(np.clip(np.floor(p["leakage_length_um"] / (2.0 * vs)), 1, 4))
    pad = [(0, (-n) % f) for n in label.shape]
    if f > 1:
        padded = np.pad(label, pad)
        nx, ny, nz = (n // f for n in padded.shape)
        coarse = padded.reshape(nx, f, ny, f, nz, f).any(axis=(1, 3, 5))
    else:
        coarse = label
    dist = ndimage.distance_transform_edt(~coarse, sampling=vs * f).astype(np.float32)
    if f > 1:
        # coarse voxel centres sit at the centre of each block: resample back to the padded fine grid
        dist = resize_linear(dist, tuple(n + pd[1] for n, pd in zip(label.shape, pad)))
        dist = dist[:label.shape[0], :label.shape[1], :label.shape[2]]
        # block-centre distances overestimate by about half a block less one voxel
        dist -= np.float32((f - 1) * vs / 2.0)
        np.maximum(dist, 0.0, out=dist)
    dist *= np.float32(-1.0 / p["leakage_length_um"])
    np.exp(dist, out=dist)
    img += np.float32(p["leakage_strength"]) * dist
    return img
