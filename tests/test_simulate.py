"""Tests of the artifact simulator on hand-built voxel maps with known geometry."""
from __future__ import annotations

import numpy as np
import pytest

from octasim.profiles import load_profile, sample_parameters
from octasim.simulate import octa, render, simulate
from octasim.voxelize import VoxelMaps


def lower_wall_of(label: np.ndarray) -> np.ndarray:
    wall = label.astype(bool).copy()
    wall[:, :, :-1] &= ~label[:, :, 1:].astype(bool)
    return wall


def tube_maps(shape, vs, radius_um, center_um, axis=0, orientation=None) -> VoxelMaps:
    """A straight tube along ``axis`` (0: lateral, orientation 1; 2: vertical, orientation 0)
    through ``center_um`` (the two coordinates of the other axes, um)."""
    grids = [(np.arange(n) + 0.5) * vs for n in shape]
    others = [a for a in range(3) if a != axis]
    u = grids[others[0]].reshape([-1 if a == others[0] else 1 for a in range(3)])
    v = grids[others[1]].reshape([-1 if a == others[1] else 1 for a in range(3)])
    inside = (u - center_um[0]) ** 2 + (v - center_um[1]) ** 2 <= radius_um ** 2
    label = np.broadcast_to(inside, shape).astype(np.uint8)
    a = (1.0 if axis != 2 else 0.0) if orientation is None else orientation
    radius = np.where(label > 0, radius_um, 0).astype(np.float32)
    orient = np.where(label > 0, a, 0).astype(np.float32)
    return VoxelMaps(label, radius, orient, lower_wall_of(label), None, vs)


def params(profile="paper", seed=0, **overrides) -> dict:
    return sample_parameters(load_profile(profile, overrides), np.random.default_rng(seed))


CLEAN = dict(granular_noise=False, smoothing=False, tail_noise_std=0.0)


def test_tails_only_below_lower_walls_and_never_above():
    maps = tube_maps((6, 30, 80), 2.0, 6.0, (30.0, 40.0))
    p = params(**CLEAN)
    img = simulate(maps, p, np.random.default_rng(0))
    tail = octa.tails(maps, p, np.random.default_rng(0))
    label = maps.label > 0
    k = np.arange(maps.shape[2])
    has_wall = maps.lower_wall.any(axis=2)
    k_wall = np.where(has_wall, maps.lower_wall.argmax(axis=2), maps.shape[2])
    below = k[None, None, :] > k_wall[:, :, None]
    assert tail[~below].max() == 0  # nothing above or beside a lower wall
    assert (tail[below] > 0).mean() > 0.5
    k_top = np.where(label.any(axis=2), label.argmax(axis=2), maps.shape[2])
    above = k[None, None, :] < k_top[:, :, None]
    assert img[above].max() == 0  # background above the tube and in columns without vessel
    assert img[label].min() > 0
    assert img[below & ~label].max() > 0


def test_tail_geometry_matches_definition():
    vs = 2.0
    for r_um in (4.0, 8.0):
        maps = tube_maps((4, 24, 240), vs, r_um, (24.0, 40.0))
        p = params(**CLEAN)
        tail = octa.tails(maps, p, np.random.default_rng(0))
        col = tail[1, 12]  # the tube's central column
        k_wall = int(np.flatnonzero(maps.lower_wall[1, 12])[0])
        r_hat = min(r_um / p["r_norm_um"], 1.0)
        expected = r_hat * p["tail_length_um"] * p["len_tail"] / vs
        n = np.count_nonzero(col)
        assert abs(n - expected) <= 1
        assert np.all(col[k_wall + 1:k_wall + 1 + n] > 0)
        s = 0.9 + 0.1 * r_hat  # horizontal: I_ang = 1
        first = min(p["tail_start_gain"] * s * r_hat, p["tail_cap_fraction"] * p["vessel_gain"] * s)
        assert col[k_wall + 1] == pytest.approx(first, rel=1e-4)
        assert col[k_wall + n] == pytest.approx(p["tail_end_value"], rel=1e-3)
        assert np.all(np.diff(col[k_wall + 1:k_wall + 1 + n]) <= 1e-7)  # decays monotonically


def test_thicker_tube_has_longer_tail():
    lengths = []
    for r_um in (3.0, 6.0, 9.0):
        maps = tube_maps((4, 24, 240), 2.0, r_um, (24.0, 30.0))
        tail = octa.tails(maps, params(**CLEAN), np.random.default_rng(0))
        lengths.append(np.count_nonzero(tail[1, 12]))
    assert lengths[0] < lengths[1] < lengths[2]


def test_tail_length_in_um_is_invariant_to_voxel_size():
    physical = []
    for vs in (1.0, 2.0):
        n_k = int(400 / vs)
        maps = tube_maps((4, int(40 / vs), n_k), vs, 5.0, (20.0, 40.0))
        tail = octa.tails(maps, params(**CLEAN), np.random.default_rng(0))
        physical.append(np.count_nonzero(tail[1, maps.shape[1] // 2]) * vs)
    assert physical[0] == pytest.approx(250.0, abs=1.0)
    assert abs(physical[0] - physical[1]) <= 2.0  # within one 2 um voxel


def test_overlapping_tails_combine_by_maximum():
    """A weak short tail below a strong long one must not cut the strong one."""
    shape, vs = (4, 24, 200), 2.0
    big = tube_maps(shape, vs, 9.0, (24.0, 40.0))
    small = tube_maps(shape, vs, 1.5, (24.0, 100.0))
    label = np.maximum(big.label, small.label)
    radius = np.maximum(big.radius, small.radius)
    orient = np.maximum(big.orientation, small.orientation)
    both = VoxelMaps(label, radius, orient, lower_wall_of(label), None, vs)
    p = params(**CLEAN)
    t_big = octa.tails(big, p, np.random.default_rng(0))
    t_small = octa.tails(small, p, np.random.default_rng(0))
    t_both = octa.tails(both, p, np.random.default_rng(0))
    np.testing.assert_allclose(t_both, np.maximum(t_big, t_small), rtol=1e-6)
    assert np.count_nonzero(t_both[1, 12]) > np.count_nonzero(t_small[1, 12]) + 50


def test_angle_loss_and_correction():
    shape, vs = (24, 24, 24), 2.0
    for r_um, corrected, check in ((3.0, False, lambda ratio: ratio < 0.5),
                                   (10.0, False, lambda ratio: ratio < 0.5),
                                   (10.0, True, lambda ratio: ratio > 0.9)):
        p = params(angle_correction=corrected, **CLEAN, tails=False)
        horizontal = tube_maps(shape, vs, r_um, (24.0, 24.0), axis=0)
        vertical = tube_maps(shape, vs, r_um, (24.0, 24.0), axis=2)
        h = octa.vessel_signal(horizontal, p)[horizontal.label > 0].mean()
        v = octa.vessel_signal(vertical, p)[vertical.label > 0].mean()
        assert v < h
        assert check(v / h), (r_um, corrected, v / h)
    # without angle loss both are equally bright
    p = params(angle_loss=False, **CLEAN)
    h = octa.vessel_signal(tube_maps(shape, vs, 3.0, (24.0, 24.0), axis=0), p).max()
    v = octa.vessel_signal(tube_maps(shape, vs, 3.0, (24.0, 24.0), axis=2), p).max()
    assert h == pytest.approx(v)


SWITCHES = ["angle_loss", "tails", "granular_noise", "smoothing", "background", "surface_layer", "attenuation",
            "blood_shadow", "speckle", "motion", "anisotropic_blur", "gamma", "acquisition", "leakage", "detector_noise"]


def _everything(**changes) -> dict:
    p = params("octa", seed=3, motion=True, surface_layer=True, acquisition=True, leakage=True,
               leakage_strength=0.3, detector_noise=True, angle_correction=False,
               motion_shift_prob=0.3, motion_stripe_prob=0.3, granular_noise_std=0.5, blood_shadow=True)
    p.update(changes)
    return p


@pytest.mark.parametrize("stage", SWITCHES)
def test_switching_a_stage_off_removes_its_effect(stage):
    maps = tube_maps((16, 16, 24), 2.0, 4.0, (16.0, 16.0), orientation=0.5)  # oblique: angle loss acts
    on = simulate(maps, _everything(), np.random.default_rng(5))
    off = simulate(maps, _everything(**{stage: False}), np.random.default_rng(5))
    assert np.abs(on - off).max() > 1e-3, stage
    # the stage switched on alone (on top of the plain volume) changes the plain image
    plain = {**{s: False for s in SWITCHES}, "intensity_max": 10.0}  # unsaturated
    base = simulate(maps, _everything(**plain), np.random.default_rng(5))
    alone = simulate(maps, _everything(**{**plain, stage: True}), np.random.default_rng(5))
    assert np.abs(alone - base).max() > 1e-3, stage


def test_stage_streams_are_independent():
    """Turning tails on changes the image only where tails are; the noise stays the same."""
    maps = tube_maps((6, 20, 40), 2.0, 6.0, (20.0, 20.0))
    common = dict(smoothing=False, granular_noise_std=0.3)
    with_tails = simulate(maps, params(tails=True, **common), np.random.default_rng(9))
    without = simulate(maps, params(tails=False, **common), np.random.default_rng(9))
    tail = octa.tails(maps, params(tails=True, tail_noise_std=0.0), np.random.default_rng(0)) > 0
    differs = with_tails != without
    assert differs.any()
    assert not differs[~tail].any()


@pytest.mark.parametrize("profile", ["paper", "octa", "two-photon"])
def test_deterministic_range_and_dtype(profile):
    maps = tube_maps((20, 20, 28), 2.0, 5.0, (20.0, 20.0))
    a, pa = render(maps, profile, seed=11)
    b, pb = render(maps, profile, seed=11)
    c, _ = render(maps, profile, seed=12)
    assert a.dtype == np.float32 and a.shape == maps.shape
    assert np.array_equal(a, b) and pa == pb
    assert not np.array_equal(a, c)
    assert a.min() >= 0.0 and a.max() <= 1.0
    # replaying the recorded parameters with the recorded seed gives the same image
    replay, pr = render(maps, pa, seed=11)
    assert np.array_equal(replay, a) and pr == pa
    # simulate itself is deterministic given the generator state
    x = simulate(maps, pa, np.random.default_rng(4))
    assert np.array_equal(x, simulate(maps, pa, np.random.default_rng(4)))


def test_label_untouched_and_inputs_checked():
    maps = tube_maps((12, 12, 16), 2.0, 4.0, (12.0, 12.0))
    before = maps.label.copy()
    render(maps, "octa", seed=1)
    assert np.array_equal(maps.label, before)
    with pytest.raises(ValueError, match="sample_parameters"):
        simulate(maps, load_profile("paper"), np.random.default_rng(0))  # granular_noise_std is a range
    with pytest.raises(ValueError, match="lack"):
        simulate(maps, {"tails": True}, np.random.default_rng(0))


def test_two_photon_has_no_tails_and_bright_lumen():
    shape, vs = (24, 40, 60), 2.0
    maps = tube_maps(shape, vs, 6.0, (40.0, 30.0))  # horizontal tube at depth 30 um
    for seed in range(3):
        p = params("two-photon", seed=seed, attenuation=False, acquisition=False, leakage=False)
        img = simulate(maps, p, np.random.default_rng(seed))
        lumen = img[maps.label > 0].mean()
        # same depths, far to the side of the tube vs straight below it
        below = img[:, 16:24, 35:].mean()
        side = img[:, :4, 35:].mean()
        assert lumen > 3 * max(side, 0.02)
        assert below <= side * 1.2 + 0.01
    # the OCTA model does have a tail there
    p = params(granular_noise=False)
    img = simulate(maps, p, np.random.default_rng(0))
    assert img[:, 16:24, 35:].mean() > 0.1


def test_blood_shadow_dims_lumens_with_depth_and_the_tissue_below_them():
    """blood_shadow: the signal at a voxel is multiplied by exp(-b / L), b the um of blood above it
    (half its own voxel counted): the lumen dims downwards, tissue below the tube lies in its shadow,
    tissue beside it and above it is untouched."""
    from octasim.simulate import tissue

    shape, vs, length = (8, 40, 60), 2.0, 30.0
    maps = tube_maps(shape, vs, 16.0, (40.0, 40.0))          # horizontal tube, depth 24-56 um
    p = params("two-photon", blood_attenuation_length_um=length)
    img = tissue.blood_shadow(np.ones(shape, np.float32), maps, vs, p)
    occ = maps.label.astype(np.float32)
    blood_um = (np.cumsum(occ, axis=2) - 0.5 * occ) * vs
    np.testing.assert_allclose(img, np.exp(-blood_um / length), rtol=1e-5)
    column = img[4, 20]                                      # through the tube's axis
    inside = np.flatnonzero(maps.label[4, 20])
    assert np.all(np.diff(column[inside]) < 0)                 # dims with depth inside the lumen
    assert column[inside[-1] + 2] == pytest.approx(np.exp(-32.0 / length), rel=1e-5)  # shadow below
    assert np.all(img[4, 0] == 1.0) and np.all(column[:inside[0]] == 1.0)  # beside and above: unchanged
    # in the two-photon profile it is on, the drawn lengths within the documented range
    drawn = [params("two-photon", seed=s)["blood_attenuation_length_um"] for s in range(5)]
    assert params("two-photon")["blood_shadow"] is True and all(20.0 <= v <= 120.0 for v in drawn)
    assert params("octa")["blood_shadow"] is False and params("paper")["blood_shadow"] is False


def test_two_photon_uses_occupancy_and_dims_capillaries():
    shape, vs = (8, 24, 24), 2.0
    p = params("two-photon", seed=0, lumen_variation=0.0, small_vessel_radius_um=2.0)
    from octasim.simulate import twophoton
    thin = tube_maps(shape, vs, 1.5, (24.0, 24.0))
    wide = tube_maps(shape, vs, 8.0, (24.0, 24.0))
    assert twophoton.lumen_signal(thin, p, np.random.default_rng(0)).max() < \
        0.6 * twophoton.lumen_signal(wide, p, np.random.default_rng(0)).max()
    occ = wide.label.astype(np.float32) * 0.5
    half = VoxelMaps(wide.label, wide.radius, wide.orientation, wide.lower_wall, occ, vs)
    np.testing.assert_allclose(twophoton.lumen_signal(half, p, np.random.default_rng(0)),
                               0.5 * twophoton.lumen_signal(wide, p, np.random.default_rng(0)), rtol=1e-5)


def test_acquisition_with_thick_slices_blurs_depth_more_than_lateral():
    vs = 1.0
    maps = tube_maps((40, 40, 40), vs, 0.1, (-50.0, -50.0))  # no vessel inside: noise only
    common = dict(tails=False, smoothing=False, granular_noise_std=1.0, intensity_max=4.0)
    p_on = params(acquisition=True, acq_lateral_step_um=1.0, acq_slice_spacing_um=5.0, **common)
    p_off = params(acquisition=False, **common)

    def correlation(img, axis):
        a = np.moveaxis(img, axis, 0)
        return np.corrcoef(a[:-1].ravel(), a[1:].ravel())[0, 1]

    on = simulate(maps, p_on, np.random.default_rng(0))
    off = simulate(maps, p_off, np.random.default_rng(0))
    assert on.shape == off.shape == maps.shape
    assert correlation(on, 2) > 0.6  # neighbours along depth strongly correlated: smooth
    assert abs(correlation(on, 0)) < 0.1 and abs(correlation(on, 1)) < 0.1  # 1 um lateral step: untouched
    assert all(abs(correlation(off, axis)) < 0.1 for axis in range(3))  # white noise without the stage


def test_attenuation_and_surface_layer_depth_profiles():
    maps = tube_maps((16, 16, 60), 2.0, 0.1, (-50.0, -50.0))
    plain = {s: False for s in SWITCHES if s not in ("background", "attenuation", "surface_layer")}
    p = params(**plain, background=True, background_level=0.5, background_contrast=0.0, attenuation=True,
               attenuation_length_um=60.0, intensity_max=1.0)
    img = simulate(maps, p, np.random.default_rng(0))
    profile = img.mean(axis=(0, 1))
    assert profile[0] == pytest.approx(0.5 * np.exp(-1.0 / 60.0), rel=1e-3)
    assert profile[30] == pytest.approx(0.5 * np.exp(-61.0 / 60.0), rel=1e-3)
    p = params(**plain, background=False, attenuation=False, surface_layer=True, surface_thickness_um=10.0, surface_roughness_um=0.0,
               surface_intensity=1.0, surface_contrast=0.0)
    profile = simulate(maps, p, np.random.default_rng(0)).mean(axis=(0, 1))
    assert profile[:4].min() > 0.3 and profile[10:].max() < 0.01


def test_leakage_haze_decays_with_distance_from_vessels():
    from octasim.simulate import tissue
    vs = 2.0
    maps = tube_maps((8, 60, 60), vs, 4.0, (60.0, 60.0))
    for length in (4.0, 20.0):  # full-resolution and coarse-grid distance
        p = params("two-photon", leakage_strength=1.0, leakage_length_um=length)
        haze = tissue.leakage(np.zeros(maps.shape, np.float32), maps, p)
        profile = haze[4, 30, 32:]  # moving down from the tube's lower edge (k = 31 at 62 um)
        assert np.all(np.diff(profile) <= 1e-6)
        dist = (np.arange(32, 60) + 0.5) * vs - 63.0  # distance to the deepest vessel voxel centre, um
        np.testing.assert_allclose(profile, np.exp(-dist / length), atol=0.12)
        assert haze[maps.label > 0].min() > 0.85


def test_deep_windows_are_attenuated_more_and_see_no_surface_layer():
    from octasim.voxelize import VoxelMaps

    shape = (16, 16, 16)
    zeros = np.zeros(shape, np.float32)
    params = sample_parameters(load_profile("paper", {"background": True, "background_contrast": 0.0,
                                                      "attenuation": True, "attenuation_length_um": 100.0,
                                                      "surface_layer": True, "surface_thickness_um": 10.0,
                                                      "surface_roughness_um": 0.0, "granular_noise": False,
                                                      "smoothing": False}), np.random.default_rng(0))
    images = []
    for origin in (0.0, 200.0):
        maps = VoxelMaps(np.zeros(shape, np.uint8), zeros, zeros, np.zeros(shape, bool), None, 2.0, origin)
        images.append(simulate(maps, params, np.random.default_rng(1)))
    top, deep = images
    assert top[:, :, 0].mean() > 2 * top[:, :, 8].mean()  # surface layer at the top of a surface window
    assert deep[:, :, :4].mean() < top[:, :, 8:12].mean()  # 200 um deeper: dimmer, and no layer
    assert np.allclose(deep[:, :, 1] / deep[:, :, 0], np.exp(-2.0 / 100.0), rtol=1e-3)
