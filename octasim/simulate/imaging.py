"""Imaging stages: granular noise, resolution blur and the output intensity mapping."""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def granular_noise(img: np.ndarray, p: dict, rng: np.random.Generator) -> np.ndarray:
    """Add Gaussian noise of std ``granular_noise_std`` (a.u.; the reference draws it per volume
    from U(0, 1.4), which the ``paper`` profile expresses as the range [0, 1.4])."""
    std = np.float32(p["granular_noise_std"])
    if std > 0:
        noise = rng.standard_normal(img.shape, dtype=np.float32)
        noise *= std
        img += noise
    return img


def blur_sigma_vox(p: dict, vs: float) -> tuple[float, float, float]:
    """Per-axis Gaussian sigma (voxels) of the combined smoothing (``smooth_sigma_vox``, isotropic)
    and resolution blur (``blur_lateral_um`` on i and j, ``blur_axial_um`` on k); Gaussians
    compose by adding variances."""
    var = np.zeros(3)
    if p["smoothing"]:
        var += float(p["smooth_sigma_vox"]) ** 2
    if p["anisotropic_blur"]:
        var += (np.array([p["blur_lateral_um"], p["blur_lateral_um"], p["blur_axial_um"]], dtype=float) / vs) ** 2
    return tuple(float(v) for v in np.sqrt(var))


def blur(img: np.ndarray, sigma_vox: tuple[float, float, float]) -> np.ndarray:
    """Gaussian filter with per-axis sigma (voxels), edges mirrored."""
    if max(sigma_vox) <= 0:
        return img
    return ndimage.gaussian_filter(img, sigma_vox, mode="reflect", truncate=4.0)


def normalize(img: np.ndarray, p: dict) -> np.ndarray:
    """Map to [0, 1] with clipping: ``fixed`` maps [0, intensity_max] (reference: 2.43);
    ``percentile`` maps [P(norm_low_percentile), P(norm_high_percentile)] of this volume, as real
    scans are preprocessed."""
    if p["normalization"] == "fixed":
        lo, hi = 0.0, float(p["intensity_max"])
    else:
        lo, hi = (float(v) for v in np.percentile(img, [p["norm_low_percentile"], p["norm_high_percentile"]]))
    if hi <= lo:
        hi = lo + 1e-6
    img -= np.float32(lo)
    img *= np.float32(1.0 / (hi - lo))
    np.clip(img, 0.0, 1.0, out=img)
    return img


def gamma(img: np.ndarray, p: dict) -> np.ndarray:
    """Intensity gamma on the [0, 1] image: ``img ** intensity_gamma``."""
    np.power(img, np.float32(p["intensity_gamma"]), out=img)
    return img
