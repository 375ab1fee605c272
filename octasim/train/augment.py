"""Training augmentation: the reference pipeline as MONAI dictionary transforms (keys ``image``, ``label``).

Arrays are channel-first ``(1, i, j, k)`` with depth = k. Geometry changes only the lateral plane:
rotation about the depth axis (the (i, j) plane), flips of i and j, isotropic zoom >= 1; depth is never
flipped or rotated away, so projection tails always point to larger k. The spatial transforms are fused
into one resample; the label is interpolated linearly and thresholded at 0.5, so it stays binary and
aligned with the image; intensity transforms touch the image only.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from monai.transforms import (CenterSpatialCropd, Compose, EnsureTyped, MapTransform, RandBiasFieldd, RandFlipd,
                              RandGaussianNoised, RandGaussianSmoothd, RandHistogramShiftd, Randomizable,
                              RandRotated, RandScaleIntensityd, RandSpatialCropd, RandZoomd, SpatialPadd)

from octasim.train.config import AugmentConfig, TrainConfig

KEYS = ("image", "label")
#: how the fused spatial resample (lazy ``Compose``, see :func:`build_augmentation`) interpolates and pads
#: each key: the label linearly too, then thresholded at 0.5 (``ClipLabeld``), so it stays on the image
RESAMPLE = {"image": {"mode": "bilinear", "padding_mode": "border"},
            "label": {"mode": "bilinear", "padding_mode": "zeros"}}


class ClipLabeld(MapTransform):
    """Clip the image to [0, 1] and make the label exactly binary float32 {0, 1}."""

    def __init__(self, image_key: str = "image", label_key: str = "label") -> None:
        super().__init__([image_key, label_key], allow_missing_keys=True)
        self.image_key, self.label_key = image_key, label_key

    def __call__(self, data):
        d = dict(data)
        if self.image_key in d:
            d[self.image_key] = torch.clamp(_plain(d[self.image_key]).float(), 0.0, 1.0)
        if self.label_key in d:
            d[self.label_key] = (_plain(d[self.label_key]) > 0.5).to(torch.float32)
        return d


class RandDepthSlabd(Randomizable, MapTransform):
    """With probability ``prob``, keep a random slab of the patch along depth (k), at least
    ``min_voxels`` thick, and set image and label to 0 (dark, background) above and below it.

    Real stacks are often shallower than the network's window (10-25 slices of 5 um: 50-125 um);
    inference pads them with 0 along depth (``octasim.inference``: no signal, no vessel outside the
    imaged slab). This transform shows the network such slabs in training, with their exact labels:
    a surface vessel wider than the slab then looks as in a shallow real stack, a bright band
    across every slice of the slab.
    """

    def __init__(self, prob: float, min_voxels: int = 4, log_thickness: bool = False, keys=KEYS) -> None:
        MapTransform.__init__(self, keys)
        self.prob, self.min_voxels, self.log_thickness = float(prob), int(min_voxels), bool(log_thickness)
        self._do, self._start, self._stop = False, 0, 0

    def randomize(self, depth: int) -> None:
        self._do = self.R.rand() < self.prob and depth > self.min_voxels
        if self._do:
            if self.log_thickness:  # every octave of thickness equally often (real stacks: 10-65 slices)
                thick = int(np.exp(self.R.uniform(np.log(self.min_voxels), np.log(depth))))
            else:
                thick = int(self.R.randint(self.min_voxels, depth))   # slab thickness, voxels
            self._start = int(self.R.randint(0, depth - thick + 1))
            self._stop = self._start + thick

    def __call__(self, data):
        d = dict(data)
        self.randomize(int(_plain(d[self.keys[0]]).shape[-1]))
        if not self._do:
            return d
        for key in self.key_iterator(d):
            x = _plain(d[key]).clone()
            x[..., :self._start] = 0
            x[..., self._stop:] = 0
            d[key] = x
        return d


def _plain(x) -> torch.Tensor:
    """A plain torch.Tensor (MONAI MetaTensors carry metadata the collate step does not need)."""
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


def lateral_rotation(range_deg: float, prob: float, label_mode: str = "nearest") -> RandRotated:
    """Rotation about the depth axis k only, angle uniform in +-``range_deg`` degrees.

    MONAI names 3D rotation ranges by the axis rotated *about*: ``range_z`` turns the (i, j) plane and
    leaves k untouched (checked by tests/test_augment.py). The image is resampled linearly; the label
    with ``label_mode`` (nearest: it stays binary on its own; :func:`build_augmentation` resamples it
    linearly, ``RESAMPLE``, and thresholds it afterwards).
    """
    rad = math.radians(range_deg)
    return RandRotated(keys=KEYS, range_x=0.0, range_y=0.0, range_z=(-rad, rad), prob=prob, keep_size=True,
                       mode=("bilinear", label_mode), padding_mode=("border", "zeros"), dtype=np.float32)


class QuietHistogramShiftd(RandHistogramShiftd):
    """MONAI's random histogram shift without its warning for a constant image: a patch that falls in
    the zero padding of a shallow stack or a coarse view has nothing to shift, which is no news."""

    def __call__(self, data, *args, **kwargs):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The image's intensity is a single value")
            return super().__call__(data, *args, **kwargs)


def intensity_gain(a: AugmentConfig) -> list:
    """Gain transforms of the image (none when both probabilities are 0): a smooth random gain field,
    then one random gain for the whole patch; the image is clipped to [0, 1] afterwards.

    Why: a scan is scaled by its own percentiles (``octasim.inference``), so where its vessels land on
    that scale depends on what else is bright in it. In a rendered volume the widest vessels are the
    brightest structure and end near 1; in real stacks they need not be: the brightness of a surface
    stack changes about threefold over 50 um of depth (focus, laser power, the vessel's own shape)
    and across the field of view (vignetting), and the upper percentile falls on the brightest slice.
    On the shared surface stack the lumen of the 50-100 um vessels lies at 0.2-0.4 of the scale
    (tissue 0.05); a model trained without gain labels only its walls. A network that sees vessels at
    a quarter of full scale as often as at full scale must tell them by their contrast to the tissue
    around them, which is what survives any scaling. The field is MONAI's ``RandBiasField`` (exp of a
    degree-3 Legendre polynomial; at coefficient 0.25 its brightest and darkest points on a 64^3 patch
    differ 5-13x, 10th-90th percentile); the gain is ``RandScaleIntensity`` (x * g, g uniform in
    ``gain_range``).
    """
    steps = []
    if a.bias_field_prob > 0:
        c = float(a.bias_field_coeff)
        steps.append(RandBiasFieldd(keys="image", prob=a.bias_field_prob, degree=3, coeff_range=(-c, c)))
    if a.gain_prob > 0:
        lo, hi = (float(v) for v in a.gain_range)
        if not 0.0 < lo <= hi:
            raise ValueError(f"augment.gain_range must be 0 < low <= high, got {a.gain_range}")
        steps.append(RandScaleIntensityd(keys="image", prob=a.gain_prob, factors=(lo - 1.0, hi - 1.0)))
    return steps


def build_augmentation(cfg: TrainConfig, include_crop: bool = False, seed: int | None = None) -> Compose:
    """The reference augmentation for ``cfg`` (crop_size -> patch_size); seeded when ``seed`` is given.

    ``include_crop`` prepends padding and a random ``cfg.crop``^3 crop (for whole volumes); the in-memory
    dataset crops itself (cheaper: no copy of the volume) and passes crops of exactly that size.
    """
    a: AugmentConfig = cfg.augment
    crop, patch = cfg.crop, cfg.patch_size
    steps = [EnsureTyped(keys=KEYS, data_type="tensor", dtype=(torch.float32, torch.float32), track_meta=False)]
    if include_crop:
        steps += [SpatialPadd(keys=KEYS, spatial_size=(crop,) * 3, mode="edge"),
                  RandSpatialCropd(keys=KEYS, roi_size=(crop,) * 3, random_size=False)]
    steps += [
        lateral_rotation(a.rotate_range_deg, a.rotate_prob, label_mode=RESAMPLE["label"]["mode"]),
        # the lazy resample applies RESAMPLE; these are the same choices in the words of an eager zoom
        RandZoomd(keys=KEYS, prob=a.zoom_prob, min_zoom=float(a.zoom_range[0]), max_zoom=float(a.zoom_range[1]),
                  mode=("trilinear", "trilinear"), padding_mode=("edge", "constant"), keep_size=True),
        RandFlipd(keys=KEYS, prob=a.flip_prob, spatial_axis=0),
        RandFlipd(keys=KEYS, prob=a.flip_prob, spatial_axis=1),
        (RandSpatialCropd(keys=KEYS, roi_size=(patch,) * 3, random_size=False) if a.random_final_crop
         else CenterSpatialCropd(keys=KEYS, roi_size=(patch,) * 3)),
        RandGaussianSmoothd(keys="image", prob=a.smooth_prob, sigma_x=tuple(a.smooth_sigma),
                            sigma_y=tuple(a.smooth_sigma), sigma_z=tuple(a.smooth_sigma)),
        RandGaussianNoised(keys="image", prob=a.noise_prob, mean=0.0, std=float(a.noise_std)),
        QuietHistogramShiftd(keys="image", prob=a.histogram_shift_prob,
                            num_control_points=tuple(int(v) for v in a.histogram_control_points)),
    ]
    steps += intensity_gain(a)
    steps += [ClipLabeld()]
    if a.depth_slab_prob > 0:
        steps.append(RandDepthSlabd(a.depth_slab_prob, a.depth_slab_min_voxels, a.depth_slab_log_thickness))
    # Lazy resampling (MONAI): rotation, zoom, flips and the crop are fused into one resample that
    # computes only the patch_size^3 output, about a third cheaper per patch than resampling the crop
    # twice. It also keeps the label on the image: the label is interpolated linearly and thresholded
    # at 0.5 (ClipLabeld), whereas nearest-neighbour resamples (rotation, and zoom with torch's
    # 'nearest') shift it by up to half a voxel, a good part of a thin vessel's overlap ('nearest-exact'
    # for the zoom alone does not remove it; tests/test_augment.py measures the shift).
    transform = Compose(steps, lazy=True, overrides={k: dict(v) for k, v in RESAMPLE.items()})
    if seed is not None:
        transform.set_random_state(seed=seed)
    return transform


def seed_for(*parts: int) -> int:
    """A 32-bit seed derived from integers (run seed, sample index, ...), for MONAI's RandomState."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])
