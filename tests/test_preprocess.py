import numpy as np
import pytest

from octasim.preprocess import (PreprocessError, from_depth_last, normalize_percentiles, resample,
                                resampled_shape, to_depth_last)


def test_normalize_clips_and_scales_to_unit_range():
    data = np.arange(1000, dtype=np.float64).reshape(10, 10, 10)
    out = normalize_percentiles(data, (1.0, 99.0))
    lo, hi = np.percentile(data, [1.0, 99.0])
    assert out.dtype == np.float32 and out.shape == data.shape
    assert out.min() == 0.0 and out.max() == 1.0
    assert np.isclose(out[5, 0, 0], (500 - lo) / (hi - lo))
    assert np.count_nonzero(out == 1.0) == np.count_nonzero(data >= hi)
    assert data[0, 0, 0] == 0  # input untouched


def test_normalize_sparse_image_uses_maximum():
    data = np.zeros((20, 20, 20), np.float32)
    data[10, 10, 10] = 5.0  # 1 voxel in 8000: the 99.5th percentile is background
    out = normalize_percentiles(data)
    assert out[10, 10, 10] == 1.0 and out.sum() == 1.0


@pytest.mark.parametrize("bad, match", [(np.full((4, 4, 4), 3.0), "constant"),
                                         (np.where(np.eye(4)[None] > 0, np.nan, 1.0), "NaN")])
def test_normalize_rejects_constant_and_nan(bad, match):
    with pytest.raises(PreprocessError, match=match):
        normalize_percentiles(bad)


@pytest.mark.parametrize("axis", ["i", "j", "k"])
def test_depth_axis_round_trip(axis):
    vol = np.random.default_rng(0).random((3, 4, 5))
    moved, spacing = to_depth_last(vol, (1.0, 2.0, 3.0), axis)
    depth_len = {"i": 3, "j": 4, "k": 5}[axis]
    assert moved.shape[2] == depth_len
    assert spacing[2] == {"i": 1.0, "j": 2.0, "k": 3.0}[axis]
    assert sorted(spacing) == [1.0, 2.0, 3.0]
    np.testing.assert_array_equal(from_depth_last(moved, axis), vol)
    with pytest.raises(ValueError, match="depth axis"):
        to_depth_last(vol, (1, 1, 1), "z")


def test_resample_anisotropic_to_isotropic_and_back():
    # 1 x 1 x 5 um scan -> 2 um isotropic grid -> back to the exact original shape
    shape, spacing = (40, 30, 8), (1.0, 1.0, 5.0)
    grid = resampled_shape(shape, spacing, 2.0)
    assert grid == (20, 15, 20)
    i, j, k = np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, spacing)), indexing="ij")
    smooth = (np.sin(i / 12.0) * np.cos(j / 10.0) + k / 40.0).astype(np.float32)  # slowly varying (um)
    iso = resample(smooth, grid)
    assert iso.shape == grid and iso.dtype == np.float32
    back = resample(iso, shape)
    assert back.shape == shape
    inner = (slice(3, -3), slice(3, -3), slice(1, -1))
    assert np.abs(back[inner] - smooth[inner]).max() < 0.1
    assert abs(back.mean() - smooth.mean()) < 0.02


def test_resample_same_shape_is_identity():
    vol = np.random.default_rng(1).random((6, 7, 8)).astype(np.float32)
    np.testing.assert_array_equal(resample(vol, vol.shape), vol)


def test_resample_constant_stays_constant():
    vol = np.full((9, 9, 4), 0.25, np.float32)
    np.testing.assert_allclose(resample(vol, (5, 5, 11)), 0.25, atol=1e-6)


def test_normalize_percentiles_inside_a_region():
    rng = np.random.default_rng(0)
    data = rng.random((10, 10, 10)).astype(np.float32) * 100
    roi = np.zeros(data.shape, bool)
    roi[:5] = True
    spiked = data.copy()
    spiked[5:] = 1e6  # outside the region: ignored by the percentiles, 0 in the output
    out = normalize_percentiles(spiked, (1.0, 99.0), roi)
    np.testing.assert_allclose(out[:5], normalize_percentiles(data[:5], (1.0, 99.0)), atol=1e-6)
    assert not out[5:].any()
    # an integer region is a mask (nonzero = inside), never indices
    np.testing.assert_array_equal(normalize_percentiles(spiked, (1.0, 99.0), roi.astype(np.uint8)), out)
    with pytest.raises(PreprocessError, match="empty"):
        normalize_percentiles(data, roi=np.zeros_like(roi))
    with pytest.raises(ValueError, match="shape"):
        normalize_percentiles(data, roi=roi[:4])
    flat = np.where(roi, 3.0, data).astype(np.float32)
    with pytest.raises(PreprocessError, match="constant inside the region of interest"):
        normalize_percentiles(flat, roi=roi)
