"""Simulation profiles: load a named / YAML / dict profile and sample its parameters per volume.

A profile is a flat mapping ``parameter name -> value``. Every value is either fixed or a range
``[lo, hi]`` sampled uniformly per volume (domain randomization). A boolean
stage switch may also be given as a probability in [0, 1] (the stage is on with that probability).
Profiles inherit: a YAML file or dict may name ``base: NAME_OR_PATH`` (default ``paper``) and then
lists only the keys it changes. ``data/profiles/paper.yaml`` defines every parameter with its unit.
"""
from __future__ import annotations

import difflib

import math
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from octasim.errors import OctasimError
from octasim.paths import DATA_DIR
from octasim.ranges import check_order, draw

#: profiles shipped in ``data/profiles/``
PROFILE_NAMES = ("paper", "octa", "two-photon")

PROFILE_DIR = DATA_DIR / "profiles"

#: every parameter: name -> (kind, unit). kind is "bool", "float" or a tuple of allowed strings.
PARAMETERS: dict[str, tuple[Any, str]] = {
    "modality": (("octa", "two-photon"), "-"),
    # OCTA vessel signal (docs/design.md, "Signal model")
    "r_norm_um": ("float", "um"),
    "angle_loss": ("bool", "-"),
    "angle_loss_floor": ("float", "-"),
    "angle_correction": ("bool", "-"),
    "angle_correction_slope": ("float", "-"),
    "angle_correction_center": ("float", "-"),
    "signal_angle_weight": ("float", "-"),
    "vessel_gain": ("float", "a.u."),
    # projection tails
    "tails": ("bool", "-"),
    "tail_length_um": ("float", "um"),
    "len_tail": ("float", "-"),
    "tail_start_gain": ("float", "-"),
    "tail_end_value": ("float", "a.u."),
    "tail_noise_std": ("float", "a.u."),
    "tail_cap_fraction": ("float", "-"),
    # two-photon lumen signal
    "lumen_intensity": ("float", "a.u."),
    "small_vessel_radius_um": ("float", "um"),
    "lumen_variation": ("float", "-"),
    "lumen_variation_um": ("float", "um"),
    "leakage": ("bool", "-"),
    "leakage_strength": ("float", "a.u."),
    "leakage_length_um": ("float", "um"),
    # tissue
    "background": ("bool", "-"),
    "background_level": ("float", "a.u."),
    "background_contrast": ("float", "-"),
    "background_texture_um": ("float", "um"),
    "surface_layer": ("bool", "-"),
    "surface_thickness_um": ("float", "um"),
    "surface_intensity": ("float", "a.u."),
    "surface_contrast": ("float", "-"),
    "surface_roughness_um": ("float", "um"),
    "attenuation": ("bool", "-"),
    "attenuation_length_um": ("float", "um"),
    "blood_shadow": ("bool", "-"),
    "blood_attenuation_length_um": ("float", "um"),
    "speckle": ("bool", "-"),
    "speckle_looks": ("float", "-"),
    "speckle_sigma_vox": ("float", "voxel"),
    # bulk motion
    "motion": ("bool", "-"),
    "motion_shift_prob": ("float", "-"),
    "motion_shift_max_um": ("float", "um"),
    "motion_stripe_prob": ("float", "-"),
    "motion_stripe_strength": ("float", "a.u."),
    "motion_stripe_dark_fraction": ("float", "-"),
    # noise and resolution
    "granular_noise": ("bool", "-"),
    "granular_noise_std": ("float", "a.u."),
    "smoothing": ("bool", "-"),
    "smooth_sigma_vox": ("float", "voxel"),
    "anisotropic_blur": ("bool", "-"),
    "blur_lateral_um": ("float", "um"),
    "blur_axial_um": ("float", "um"),
    "detector_noise": ("bool", "-"),
    "photons_per_unit": ("float", "photons"),
    "read_noise_std": ("float", "a.u."),
    # output mapping
    "normalization": (("fixed", "percentile"), "-"),
    "intensity_max": ("float", "a.u."),
    "norm_low_percentile": ("float", "%"),
    "norm_high_percentile": ("float", "%"),
    "gamma": ("bool", "-"),
    "intensity_gamma": ("float", "-"),
    # acquisition (scanner sampling, then resampling to the training grid)
    "acquisition": ("bool", "-"),
    "acq_lateral_step_um": ("float", "um"),
    "acq_slice_spacing_um": ("float", "um"),
}


class ProfileError(OctasimError):
    """A profile file or dict is malformed (unknown key, bad value, missing base)."""


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read profile ({exc.strerror or exc})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path}: not valid YAML ({exc})") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: a profile must be a mapping of parameter: value, got {type(data).__name__}")
    return data


def _locate(spec: str | Path, relative_to: Path | None) -> Path:
    text = str(spec)
    if text in PROFILE_NAMES:
        return PROFILE_DIR / f"{text}.yaml"
    path = Path(text)
    if path.suffix.lower() not in (".yaml", ".yml"):
        raise ProfileError(f"unknown profile {text!r}: give one of {', '.join(PROFILE_NAMES)} or a .yaml file")
    if not path.is_absolute() and relative_to is not None and not path.exists():
        path = relative_to / path
    return path


def _check_value(key: str, value: Any, source: str) -> None:
    kind, _unit = PARAMETERS[key]
    where = f"{source}: parameter {key!r}"
    if isinstance(kind, tuple):
        if value not in kind:
            raise ProfileError(f"{where} must be one of {', '.join(kind)}, got {value!r}")
        return
    if kind == "bool":
        if isinstance(value, bool):
            return
        if isinstance(value, (int, float)) and 0.0 <= value <= 1.0:
            return  # probability that the stage is on
        raise ProfileError(f"{where} must be true/false or a probability in [0, 1], got {value!r}")

    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if isinstance(value, (list, tuple)):
        if len(value) != 2 or not all(number(v) for v in value):
            raise ProfileError(f"{where} range must be [lo, hi] with two numbers, got {value!r}")
        check_order(value[0], value[1], where, value, ProfileError)
        return
    if not number(value):
        raise ProfileError(f"{where} must be a number or a [lo, hi] range, got {value!r}")


def _check_keys(data: dict, source: str) -> None:
    for key, value in data.items():
        if key not in PARAMETERS:
            close = difflib.get_close_matches(str(key), PARAMETERS, n=3)
            hint = f" (did you mean {' or '.join(close)}?)" if close else ""
            raise ProfileError(f"{source}: unknown profile key {key!r}{hint}; valid keys: {', '.join(PARAMETERS)}")
        _check_value(key, value, source)


def _load(spec: str | Path | dict, relative_to: Path | None, seen: tuple[str, ...]) -> dict:
    if isinstance(spec, dict):
        data, source, here = dict(spec), "profile dict", relative_to
        default_base = "paper"
    else:
        path = _locate(spec, relative_to)
        source, here = str(path), path.parent
        if source in seen:
            raise ProfileError(f"{source}: profile inherits from itself (base chain {' -> '.join(seen)})")
        seen = seen + (source,)
        data = _read_yaml(path)
        default_base = None if path.resolve() == (PROFILE_DIR / "paper.yaml").resolve() else "paper"
    explicit_base = "base" in data
    base = data.pop("base", default_base)
    _check_keys(data, source)
    if base is None or (not explicit_base and set(data) == set(PARAMETERS)):
        return data  # nothing to inherit (e.g. an already resolved profile dict): no file is read
    if not isinstance(base, (str, Path)):
        raise ProfileError(f"{source}: 'base' must be a profile name or .yaml path, got {base!r}")
    try:
        merged = _load(base, here, seen)
    except ProfileError as exc:
        raise ProfileError(f"{source}: base profile {base!r}: {exc}") from exc
    merged.update(data)
    return merged


def load_profile(spec: str | Path | dict, overrides: dict | None = None) -> dict:
    """Resolve a profile to a complete ``{parameter: value or [lo, hi]}`` dict.

    ``spec`` is a shipped name (``paper``, ``octa``, ``two-photon``), a path to a ``.yaml`` file, or
    a dict; files and dicts inherit from ``base`` (default ``paper``). ``overrides`` replace single
    parameters afterwards. Unknown keys or malformed values raise :class:`ProfileError` (a
    ValueError) naming the key and the file and listing the valid keys.
    """
    profile = _load(spec, None, ())
    if overrides:
        _check_keys(dict(overrides), "overrides")
        profile.update(overrides)
    missing = [key for key in PARAMETERS if key not in profile]
    if missing:
        raise ProfileError(f"profile {spec!r} lacks parameters {', '.join(missing)} (is paper.yaml complete?)")
    return {key: profile[key] for key in PARAMETERS}


def is_sampled(params: dict) -> bool:
    """True if every value is fixed (no [lo, hi] range, no probability for a switch)."""
    for key, value in params.items():
        kind = PARAMETERS.get(key, ("float", ""))[0]
        if isinstance(value, (list, tuple)) or (kind == "bool" and not isinstance(value, bool)):
            return False
    return True


def sample_parameters(profile: dict, rng: np.random.Generator) -> dict:
    """Draw one fixed value per parameter: ranges uniformly, switches given as probabilities as
    Bernoulli draws. Returns plain JSON-serializable values, exactly what
    :func:`octasim.simulate.simulate` applies; sampling an already sampled dict returns it unchanged
    and consumes no randomness."""
    out: dict = {}
    for key in sorted(profile):
        value = profile[key]
        kind = PARAMETERS[key][0] if key in PARAMETERS else "float"
        if kind == "bool":
            out[key] = value if isinstance(value, bool) else bool(rng.random() < float(value))
        elif isinstance(value, (list, tuple)):
            out[key] = draw(list(value), rng)
        elif kind == "float":
            out[key] = float(value)
        else:
            out[key] = value
    return {key: out[key] for key in profile}
