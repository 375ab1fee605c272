"""Artifact simulator: voxel maps + sampled profile parameters -> synthetic OCTA / two-photon image.

Stages, in order (each on only when its switch is true; the ``paper`` profile turns on exactly the
reference model, docs/design.md "Signal model"):

 1. signal       OCTA vessel signal (angle loss, radius; ``modality: octa``) or two-photon
                 lumen signal (``modality: two-photon``)
 2. tails        projection tails below lower walls, image = max(tails, signal)
 3. leakage      dye-leakage haze around vessels
 4. background   textured tissue signal / autofluorescence
 5. surface_layer  bright textured layer at the top
 6. attenuation  exp(-depth / attenuation_length_um); blood_shadow: exp(-blood above / length)
 7. speckle      multiplicative gamma speckle
 8. motion       B-scan shifts and bright/dark stripes
 9. granular_noise  additive Gaussian noise
10. smoothing + anisotropic_blur  one Gaussian filter with per-axis sigma
11. acquisition (down)  sample on the scanner grid
12. detector_noise  shot + read noise (on the scanner grid when acquisition is on)
13. normalization  map to [0, 1]; gamma
14. acquisition (up)  linear resampling back to the training grid

Each stage draws from its own child generator (spawned from ``rng`` in a fixed order), so switching
one stage off leaves the random draws of every other stage unchanged.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from octasim.profiles import PARAMETERS, is_sampled, load_profile, sample_parameters
from octasim.simulate import acquisition, imaging, octa, tissue, twophoton
from octasim.voxelize import VoxelMaps

#: names of the random streams, one per stage; the order fixes the spawned generators
STREAMS = ("signal", "tails", "background", "surface_layer", "speckle", "motion", "granular_noise", "detector_noise")

__all__ = ["simulate", "render", "STREAMS"]


def _check(maps: VoxelMaps, params: dict) -> None:
    missing = [key for key in PARAMETERS if key not in params]
    if missing:
        raise ValueError(f"simulation parameters lack {', '.join(missing)}; build them with "
                         "octasim.profiles.load_profile(...) and sample_parameters(...)")
    if not is_sampled(params):
        ranged = [k for k, v in params.items() if isinstance(v, (list, tuple)) or
                  (PARAMETERS.get(k, ("",))[0] == "bool" and not isinstance(v, bool))]
        raise ValueError(f"simulation parameters {', '.join(ranged)} are ranges or probabilities; "
                         "call octasim.profiles.sample_parameters first")
    if np.asarray(maps.label).ndim != 3:
        raise ValueError(f"voxel maps must be 3D, got label of shape {np.asarray(maps.label).shape}")
    if not maps.voxel_size_um > 0:
        raise ValueError(f"voxel size must be positive, got {maps.voxel_size_um} um")


def simulate(maps: VoxelMaps, params: dict, rng: np.random.Generator) -> np.ndarray:
    """Render the synthetic image of ``maps`` with fixed (sampled) ``params``.

    Deterministic given (maps, params, rng state). Returns float32 in [0, 1] of ``maps.shape``;
    the label is not touched.
    """
    _check(maps, params)
    p = params
    vs = float(maps.voxel_size_um)
    streams = dict(zip(STREAMS, rng.spawn(len(STREAMS))))

    if p["modality"] == "two-photon":
        img = twophoton.lumen_signal(maps, p, streams["signal"])
    else:
        img = octa.vessel_signal(maps, p)
    if p["tails"]:
        np.maximum(img, octa.tails(maps, p, streams["tails"]), out=img)
    if p["leakage"]:
        img = tissue.leakage(img, maps, p)
    if p["background"]:
        img = tissue.background(img, vs, p, streams["background"])
    if p["surface_layer"]:
        img = tissue.surface_layer(img, vs, p, streams["surface_layer"], maps.depth_origin_um)
    if p["attenuation"]:
        img = tissue.attenuation(img, vs, p, maps.depth_origin_um)
    if p["blood_shadow"]:
        img = tissue.blood_shadow(img, maps, vs, p)
    if p["speckle"]:
        img = tissue.speckle(img, p, streams["speckle"])
    if p["motion"]:
        img = tissue.motion(img, vs, p, streams["motion"])
    if p["granular_noise"]:
        img = imaging.granular_noise(img, p, streams["granular_noise"])
    img = imaging.blur(img, imaging.blur_sigma_vox(p, vs))
    if p["acquisition"]:
        img = acquisition.downsample(img, acquisition.factors(p, vs))
    if p["detector_noise"]:
        img = twophoton.detector_noise(img, p, streams["detector_noise"])
    img = imaging.normalize(img, p)
    if p["gamma"]:
        img = imaging.gamma(img, p)
    if p["acquisition"]:
        img = acquisition.upsample(img, maps.shape)
        np.clip(img, 0.0, 1.0, out=img)
    return np.ascontiguousarray(img, dtype=np.float32)


def render(maps: VoxelMaps, profile: str | Path | dict, seed: int,
           overrides: dict | None = None) -> tuple[np.ndarray, dict]:
    """Sample parameters from ``profile`` (name, YAML path, profile dict or an already sampled
    dict) and simulate; returns ``(image, params)``. The seed feeds two independent streams, one
    for sampling and one for the simulation, so ``render(maps, params, seed)`` with the recorded
    params and seed reproduces the image exactly."""
    if isinstance(profile, dict) and not overrides and set(profile) == set(PARAMETERS) and is_sampled(profile):
        resolved = dict(profile)
    else:
        resolved = load_profile(profile, overrides)
    rng_params, rng_sim = np.random.default_rng(seed).spawn(2)
    params = sample_parameters(resolved, rng_params)
    return simulate(maps, params, rng_sim), params
