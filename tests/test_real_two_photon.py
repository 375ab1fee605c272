"""Sanity checks on the real two-photon stack in ../shared/data (skipped when it is absent)."""
from pathlib import Path

import numpy as np
import pytest

from octasim.tiff import read_tiff
from octasim.metrics import dice
from octasim.segment import otsu_segment

STACK = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "two_photon_sample"
IMAGE = STACK / "poon2015_BBB_noLeakage_BM4D_denoised.tif"
LABEL = STACK / "poon2015_BBB_noLeakage_manualLabel_v2.tif"
pytestmark = pytest.mark.skipif(not IMAGE.exists(), reason=f"real two-photon stack not found at {IMAGE}")


def test_real_stack_reads_depth_last_and_otsu_overlaps_the_manual_label():
    image = read_tiff(IMAGE, (0.994, 0.994, 5.0))
    label = read_tiff(LABEL, (0.994, 0.994, 5.0))
    assert image.data.shape == label.data.shape == (512, 512, 25)  # (x, y, z = depth)
    truth = label.data > 0
    assert 0.03 < truth.mean() < 0.045
    _, mask = otsu_segment(image.data, image.spacing_um)
    assert dice(mask > 0, truth) > 0.45  # image and label are aligned after the axis reordering
    assert dice(mask > 0, np.roll(truth, 20, axis=0)) < 0.2  # ... and misalignment would show
