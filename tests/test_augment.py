"""octasim.train.augment: shapes, binary labels, lateral-only geometry, depth orientation kept, seeding."""
from __future__ import annotations

import numpy as np
import torch

from octasim.train.augment import build_augmentation, lateral_rotation
from octasim.train.config import config_from_dict

CFG = config_from_dict({"patch_size": 16, "crop_size": 23})
ALWAYS = config_from_dict({"patch_size": 16, "crop_size": 23, "augment": {
    "rotate_prob": 1.0, "zoom_prob": 1.0, "flip_prob": 1.0, "smooth_prob": 1.0, "noise_prob": 1.0,
    "histogram_shift_prob": 1.0}})


def depth_volume(n: int = 23, seed: int = 0):
    """Image that grows with depth k (plus lateral texture) and a label of blobs."""
    rng = np.random.default_rng(seed)
    k = np.linspace(0.05, 0.95, n, dtype=np.float32)
    image = np.broadcast_to(k, (n, n, n)) + rng.normal(0, 0.02, (n, n, n)).astype(np.float32)
    label = (rng.random((n, n, n)) > 0.8).astype(np.uint8)
    return np.clip(image, 0, 1)[None].astype(np.float32), label[None]


def test_shapes_range_and_binary_label():
    t = build_augmentation(ALWAYS, seed=0)
    image, label = depth_volume()
    for _ in range(5):
        out = t({"image": image, "label": label})
        assert out["image"].shape == (1, 16, 16, 16) and out["label"].shape == (1, 16, 16, 16)
        assert out["image"].dtype == torch.float32 and type(out["image"]) is torch.Tensor
        assert float(out["image"].min()) >= 0.0 and float(out["image"].max()) <= 1.0
        assert set(torch.unique(out["label"]).tolist()) <= {0.0, 1.0}


def test_depth_gradient_direction_survives_every_augmentation():
    image, label = depth_volume()
    for t in (build_augmentation(ALWAYS, seed=1), build_augmentation(CFG, seed=2)):
        for _ in range(40):
            out = t({"image": image, "label": label})["image"][0].numpy()
            profile = out.mean(axis=(0, 1))  # mean over the lateral plane, per depth k
            assert np.corrcoef(np.arange(16), profile)[0, 1] > 0.9
            assert profile[-3:].mean() > profile[:3].mean()


def test_rotation_is_lateral_only():
    n = 21
    c = n // 2
    image = np.zeros((1, n, n, n), np.float32)
    image[0, c + 5:c + 8, c - 1:c + 2, 4] = 1.0  # off-centre 3x3 lateral blob at depth 4
    rot = lateral_rotation(90.0, prob=1.0)
    moved = False
    for seed in range(10):
        rot.set_random_state(seed=seed)
        out = rot({"image": image, "label": (image > 0).astype(np.uint8)})
        img = np.asarray(out["image"])[0]
        assert np.allclose(img[:, :, np.r_[0:4, 5:n]], 0, atol=1e-6)  # never leaves its depth slice
        i, j = np.unravel_index(np.argmax(img[:, :, 4]), (n, n))
        assert abs(np.hypot(i - c, j - c) - 6) <= 1.0  # stays on its circle about the depth axis
        lab = np.asarray(out["label"])[0]
        assert lab.sum() >= 4 and lab[:, :, 4].sum() == lab.sum()
        moved |= (i, j) != (c + 6, c)
    assert moved


def test_flips_are_lateral_only():
    """Flips alone (probability 1, nothing else): image and label come out mirrored along i and j, the
    same way, and never along depth k."""
    image, label = depth_volume(16)
    flips = config_from_dict({"patch_size": 16, "crop_size": 16, "augment": {
        "rotate_prob": 0.0, "zoom_prob": 0.0, "flip_prob": 1.0, "smooth_prob": 0.0, "noise_prob": 0.0,
        "histogram_shift_prob": 0.0}})
    out = build_augmentation(flips, seed=0)({"image": image, "label": label})
    torch.testing.assert_close(out["image"], torch.from_numpy(image).flip(1, 2), atol=1e-6, rtol=0)
    assert torch.equal(out["label"], torch.from_numpy(label).float().flip(1, 2))
    assert not torch.equal(out["label"], torch.from_numpy(label).float().flip(1, 2, 3))


def test_seeded_is_reproducible():
    image, label = depth_volume()
    a = build_augmentation(ALWAYS, seed=5)({"image": image, "label": label})
    b = build_augmentation(ALWAYS, seed=5)({"image": image, "label": label})
    c = build_augmentation(ALWAYS, seed=6)({"image": image, "label": label})
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert not torch.equal(a["image"], c["image"])


def test_include_crop_pads_and_crops_whole_volumes():
    t = build_augmentation(CFG, include_crop=True, seed=0)
    rng = np.random.default_rng(0)
    out = t({"image": rng.random((1, 40, 18, 30), dtype=np.float32),
             "label": (rng.random((1, 40, 18, 30)) > 0.5).astype(np.uint8)})
    assert out["image"].shape == (1, 16, 16, 16)


def test_label_stays_on_the_image_through_rotation_and_zoom():
    """Small blobs labelled by an image threshold: after augmentation (geometry only) the label must
    sit where the same threshold of the augmented image lies. Two eager nearest-neighbour resamples
    (rotation, then zoom) shifted it by up to half a voxel here."""
    from scipy import ndimage
    rng = np.random.default_rng(0)
    img = ndimage.gaussian_filter(rng.random((45, 45, 45)), 3)
    img = ((img - img.min()) / (img.max() - img.min())).astype(np.float32)[None]
    lab = (img > 0.6).astype(np.float32)
    cfg = config_from_dict({"patch_size": 32, "crop_size": 45, "augment": {
        "rotate_prob": 1.0, "zoom_prob": 1.0, "zoom_range": [1.1, 1.2], "smooth_prob": 0.0, "noise_prob": 0.0,
        "histogram_shift_prob": 0.0}})
    for seed in range(4):
        out = build_augmentation(cfg, seed=seed)({"image": img, "label": lab})
        ideal, got = out["image"].numpy()[0] > 0.6, out["label"].numpy()[0] > 0.5
        assert ideal.sum() > 100
        shift = np.subtract(ndimage.center_of_mass(got), ndimage.center_of_mass(ideal))
        assert np.abs(shift).max() < 0.2, (seed, shift)  # voxels; the nearest zoom gave up to 0.45
        assert 2 * (ideal & got).sum() / (ideal.sum() + got.sum()) > 0.9, seed


def test_depth_slab_keeps_one_slab_and_darkens_the_rest_in_image_and_label():
    """RandDepthSlabd: where it applies, image and label are unchanged inside one depth slab of at least
    min_voxels planes and 0 above and below it (the padding inference gives shallow stacks)."""
    from octasim.train.augment import RandDepthSlabd

    rng = np.random.default_rng(1)
    image = torch.from_numpy(rng.uniform(0.2, 1.0, (1, 8, 8, 16)).astype(np.float32))
    label = torch.from_numpy((rng.random((1, 8, 8, 16)) > 0.5).astype(np.float32))
    slab = RandDepthSlabd(prob=1.0, min_voxels=4)
    slab.set_random_state(seed=3)
    thicknesses = set()
    for _ in range(20):
        out = slab({"image": image, "label": label})
        kept = (out["image"] != 0).any(dim=(0, 1, 2)).numpy()
        ks = np.flatnonzero(kept)
        assert ks.size >= 4 and np.all(np.diff(ks) == 1)                       # one contiguous slab
        inside = slice(ks[0], ks[-1] + 1)
        torch.testing.assert_close(out["image"][..., inside], image[..., inside])
        torch.testing.assert_close(out["label"][..., inside], label[..., inside])
        assert not out["label"][..., ~kept].any()                              # no vessel outside it
        thicknesses.add(ks.size)
    assert len(thicknesses) > 3                                                  # thickness is drawn
    never = RandDepthSlabd(prob=0.0)
    assert never({"image": image, "label": label})["image"] is image


def test_depth_slab_is_part_of_the_pipeline_when_asked_for():
    cfg = config_from_dict({"patch_size": 16, "crop_size": 23, "augment": {"depth_slab_prob": 1.0}})
    image, label = depth_volume()
    out = build_augmentation(cfg, seed=0)({"image": image, "label": label})
    dark_planes = (out["image"] == 0).all(dim=(0, 1, 2))
    assert dark_planes.any() and not dark_planes.all()


def test_gain_scales_the_image_only_and_is_off_unless_asked_for():
    """augment.gain_*: the image is multiplied by a gain drawn in gain_range (label untouched); the
    recipes without it build no gain transform, so their data streams do not change."""
    from octasim.train.augment import intensity_gain

    assert intensity_gain(CFG.augment) == []
    plain = {"rotate_prob": 0.0, "zoom_prob": 0.0, "flip_prob": 0.0, "smooth_prob": 0.0, "noise_prob": 0.0,
             "histogram_shift_prob": 0.0}
    halve = config_from_dict({"patch_size": 16, "crop_size": 16, "augment": {
        **plain, "gain_prob": 1.0, "gain_range": [0.5, 0.5]}})
    image, label = depth_volume(16)
    out = build_augmentation(halve, seed=0)({"image": image, "label": label})
    np.testing.assert_allclose(out["image"].numpy(), image * 0.5, atol=1e-6)
    np.testing.assert_array_equal(out["label"].numpy(), label.astype(np.float32))
    drawn = config_from_dict({"patch_size": 16, "crop_size": 16, "augment": {
        **plain, "gain_prob": 1.0, "gain_range": [0.25, 1.25]}})
    t = build_augmentation(drawn, seed=1)
    ratios = [float(t({"image": image, "label": label})["image"].mean() / image.mean()) for _ in range(30)]
    assert 0.2 < min(ratios) < 0.5 and max(ratios) > 0.9                      # dim and bright patches
    assert max(ratios) <= 1.25 + 1e-6


def test_bias_field_is_smooth_and_positive():
    """augment.bias_field_*: a smooth positive gain field: neighbouring voxels change by a few % at
    most, while the patch as a whole spans a wide range of gains."""
    cfg = config_from_dict({"patch_size": 32, "crop_size": 32, "augment": {
        "rotate_prob": 0.0, "zoom_prob": 0.0, "flip_prob": 0.0, "smooth_prob": 0.0, "noise_prob": 0.0,
        "histogram_shift_prob": 0.0, "bias_field_prob": 1.0, "bias_field_coeff": 0.25}})
    image = np.full((1, 32, 32, 32), 0.4, np.float32)
    label = np.zeros((1, 32, 32, 32), np.uint8)
    t = build_augmentation(cfg, seed=0)
    spans = []
    for _ in range(10):
        gain = t({"image": image, "label": label})["image"].numpy()[0] / 0.4
        assert gain.min() > 0
        for axis in range(3):
            step = np.abs(np.diff(np.log(np.clip(gain, 1e-6, 2.5)), axis=axis))
            assert step.max() < 0.25, axis
        spans.append(gain.max() / gain.min())
    assert max(spans) > 1.5


def test_gain_range_must_be_positive():
    import pytest

    bad = config_from_dict({"patch_size": 16, "crop_size": 23, "augment": {"gain_prob": 1.0,
                                                                            "gain_range": [0.0, 1.0]}})
    with pytest.raises(ValueError, match="gain_range"):
        build_augmentation(bad)
