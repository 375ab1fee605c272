"""Tests of profile loading, validation and parameter sampling."""
from __future__ import annotations

import json

import numpy as np
import pytest

from octasim import profiles
from octasim.profiles import PARAMETERS, PROFILE_NAMES, is_sampled, load_profile, sample_parameters


def test_shipped_profiles_are_complete_and_documented():
    for name in PROFILE_NAMES:
        profile = load_profile(name)
        assert list(profile) == list(PARAMETERS)
        assert (profiles.PROFILE_DIR / f"{name}.yaml").exists()
    # every parameter line of paper.yaml carries a comment (meaning, unit)
    for line in (profiles.PROFILE_DIR / "paper.yaml").read_text().splitlines():
        if line and not line.startswith("#"):
            assert "#" in line, line


def test_paper_profile_is_the_reference_model():
    p = load_profile("paper")
    assert p["modality"] == "octa"
    assert p["r_norm_um"] == 10.0 and p["angle_loss_floor"] == 0.1 and p["vessel_gain"] == 4.0
    assert p["angle_loss"] and p["angle_correction"] and p["tails"] and p["granular_noise"] and p["smoothing"]
    assert p["tail_length_um"] == 500.0 and p["len_tail"] == 1.0  # 250 voxels of 2 um
    assert p["tail_start_gain"] == 5.0 and p["tail_end_value"] == 0.001 and p["tail_noise_std"] == 0.5
    assert p["tail_cap_fraction"] == 0.7
    assert p["granular_noise_std"] == [0.0, 1.4] and p["smooth_sigma_vox"] == 1.6
    assert p["normalization"] == "fixed" and p["intensity_max"] == 2.43
    extended = ["background", "surface_layer", "attenuation", "speckle", "motion", "anisotropic_blur",
                "gamma", "acquisition", "leakage", "detector_noise"]
    assert not any(p[s] for s in extended)


def test_octa_and_two_photon_randomize():
    octa = load_profile("octa")
    assert octa["len_tail"] == [0.5, 1.5]
    assert octa["attenuation"] and octa["speckle"] and octa["background"] and octa["anisotropic_blur"]
    tp = load_profile("two-photon")
    assert tp["modality"] == "two-photon" and not tp["tails"] and not tp["angle_loss"]
    assert tp["leakage_strength"][0] == 0.0  # leakage range includes none
    lat, ax = tp["blur_lateral_um"], tp["blur_axial_um"]
    assert max(lat) < min(ax)  # axial PSF longer than lateral
    assert tp["acq_slice_spacing_um"] == [2.0, 5.0]


def test_sample_parameters_respects_ranges_and_records_values():
    profile = load_profile("octa")
    seen_motion = set()
    for seed in range(30):
        p = sample_parameters(profile, np.random.default_rng(seed))
        assert is_sampled(p) and list(p) == list(profile)
        json.loads(json.dumps(p))  # plain JSON values
        for key, spec in profile.items():
            if isinstance(spec, list):
                assert spec[0] <= p[key] <= spec[1], key
                assert isinstance(p[key], float)
            else:
                assert p[key] == spec or PARAMETERS[key][0] == "bool"
            if PARAMETERS[key][0] == "bool":
                assert isinstance(p[key], bool)
        seen_motion.add(p["motion"])
    assert seen_motion == {True, False}  # `motion: 0.5` is a probability
    a = sample_parameters(profile, np.random.default_rng(1))
    assert a == sample_parameters(profile, np.random.default_rng(1))
    assert a != sample_parameters(profile, np.random.default_rng(2))
    # sampling a sampled dict changes nothing and draws nothing
    rng = np.random.default_rng(7)
    assert sample_parameters(a, rng) == a
    assert rng.random() == np.random.default_rng(7).random()


def test_numbers_written_as_integers_are_drawn_as_floats():
    # every numeric parameter is a float: `[1, 2]` or `0` written in a YAML file gives floats
    profile = load_profile("paper", {"len_tail": [1, 2], "tail_noise_std": 0})
    for seed in range(5):
        p = sample_parameters(profile, np.random.default_rng(seed))
        assert isinstance(p["len_tail"], float) and 1.0 <= p["len_tail"] <= 2.0
        assert isinstance(p["tail_noise_std"], float) and p["tail_noise_std"] == 0.0


def test_unknown_key_error_names_key_file_and_valid_keys(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("base: paper\nlen_tial: 1.2\n")
    with pytest.raises(ValueError) as info:
        load_profile(path)
    message = str(info.value)
    assert "len_tial" in message and str(path) in message and "len_tail" in message
    with pytest.raises(ValueError, match="len_tial"):
        load_profile("paper", {"len_tial": 1.0})
    with pytest.raises(ValueError, match="colour"):
        load_profile({"colour": 1})


def test_yaml_inheritance_and_overrides(tmp_path):
    (tmp_path / "a.yaml").write_text("base: octa\nlen_tail: 2.0\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nspeckle: false\n")
    p = load_profile(tmp_path / "b.yaml", {"tail_noise_std": 0.1})
    assert p["len_tail"] == 2.0 and p["speckle"] is False and p["tail_noise_std"] == 0.1
    assert p["attenuation"] is True  # from octa
    (tmp_path / "short.yaml").write_text("len_tail: 3.0\n")  # no base: paper
    q = load_profile(str(tmp_path / "short.yaml"))
    assert q["len_tail"] == 3.0 and q["tails"] is True and q["speckle"] is False
    assert load_profile({"base": "two-photon", "leakage": False})["modality"] == "two-photon"


@pytest.mark.parametrize("text, fragment", [
    ("len_tail: [2.0, 1.0]\n", "lo > hi"),
    ("len_tail: [1.0]\n", "[lo, hi]"),
    ("len_tail: abc\n", "len_tail"),
    ("tails: maybe\n", "tails"),
    ("tails: 1.5\n", "probability"),
    ("modality: ultrasound\n", "modality"),
    ("base: nowhere.yaml\n", "nowhere.yaml"),
    ("- a\n- b\n", "mapping"),
    ("len_tail: [1, \n", "YAML"),
])
def test_malformed_profiles_raise_clear_errors(tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        load_profile(path)
    assert fragment in str(info.value) and "bad.yaml" in str(info.value)


def test_unknown_profile_name_and_cycles(tmp_path):
    with pytest.raises(ValueError, match="paper, octa, two-photon"):
        load_profile("octa2")
    (tmp_path / "x.yaml").write_text("base: y.yaml\n")
    (tmp_path / "y.yaml").write_text("base: x.yaml\n")
    with pytest.raises(ValueError, match="inherits from itself"):
        load_profile(tmp_path / "x.yaml")
