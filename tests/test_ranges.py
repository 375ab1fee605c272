"""One value-or-range helper (octasim.ranges) behind profiles, SynthConfig and `octasim generate`."""
from __future__ import annotations

import numpy as np
import pytest

from octasim.ranges import bounds, draw, parse_range

LO_GT_HI = r"has lo > hi \(a range is \[lo, hi\] with lo <= hi\)"


def test_parse_bounds_draw():
    assert parse_range(2, "x") == 2.0 and parse_range([1, 3], "x") == [1.0, 3.0]
    assert parse_range([2.5], "x") == 2.5 and parse_range((4, 4), "x") == 4.0
    for bad in ([1, 2, 3], "abc", float("nan"), [0, float("inf")]):
        with pytest.raises(ValueError, match="x"):
            parse_range(bad, "x")
    assert bounds(2.0) == (2.0, 2.0) and bounds([1.0, 3.0]) == (1.0, 3.0)
    rng = np.random.default_rng(0)
    assert draw(2.0, rng) == 2.0 and rng.random() == np.random.default_rng(0).random()  # fixed: no draw
    assert 1.0 <= draw([1.0, 3.0], rng) <= 3.0 and 1.0 <= draw([1.0, 8.0], rng, log=True) <= 8.0


def test_lo_above_hi_is_the_same_error_everywhere(tmp_path, capsys):
    from octasim.profiles import ProfileError, load_profile
    from octasim.synth import SynthConfig
    from octasim.cli import main

    with pytest.raises(ProfileError, match=r"'len_tail': range \[2.0, 1.0\] " + LO_GT_HI):
        load_profile({"len_tail": [2.0, 1.0]})
    with pytest.raises(ValueError, match=r"depth_offset_um: range \[300, 100\] " + LO_GT_HI):
        SynthConfig(depth_offset_um=[300, 100])
    # the command line used to sort LO HI silently
    assert main(["generate", "--out", str(tmp_path / "x"), "--n", "1", "--shape", "16",
                 "--depth-offset-um", "400", "300"]) == 2
    assert "--depth-offset-um: range [400.0, 300.0] has lo > hi" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_profile_ranges_draw_as_the_helper_does():
    from octasim.profiles import is_sampled, load_profile, sample_parameters

    profile = load_profile("paper", {"granular_noise_std": 0.5, "len_tail": [0.5, 1.5]})
    assert is_sampled({k: v for k, v in profile.items() if k != "len_tail"})  # the one random parameter
    got = sample_parameters(profile, np.random.default_rng(3))["len_tail"]
    assert got == draw([0.5, 1.5], np.random.default_rng(3))
