"""The public Python API (`import octasim`): the README's example, and a fast import."""
from __future__ import annotations

import subprocess
import sys

import numpy as np

import octasim
from octasim.models import DEFAULT_MODEL
from tests.test_train import tube_volume


def test_import_octasim_does_not_load_torch():
    code = "import sys, octasim; assert 'torch' not in sys.modules, 'torch loaded'; print(sorted(octasim.__all__))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "segment_volume" in out and "load_model" in out


def test_readme_example_segments_a_tiff_and_writes_it_back(tmp_path):
    from octasim.tiff import write_tiff

    image, label = tube_volume(48, 1)
    write_tiff(tmp_path / "stack.tif", (image * 3000).astype(np.uint16), (2.0, 2.0, 2.0))
    model = octasim.load_model()
    assert model["model_card"]["name"] == DEFAULT_MODEL
    scan = octasim.read_scan(tmp_path / "stack.tif")
    assert scan.spacing_um == (2.0, 2.0, 2.0)
    net, _ = octasim.prepare_model(model, "cpu")
    prob, mask = octasim.segment_volume(scan.data, scan.spacing_um, model, model=net, views_um=[2.0])
    assert prob.shape == mask.shape == image.shape
    from octasim.metrics import dice
    assert dice(mask, label) > 0.5  # bright tubes in noise: the bundled model finds them
    out = octasim.write_like(tmp_path / "stack_mask.tif", mask, scan)
    back = octasim.read_scan(out)
    np.testing.assert_array_equal(back.data, mask)
    assert back.spacing_um == scan.spacing_um


def test_unknown_names_are_attribute_errors():
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'segment_scan'"):
        octasim.segment_scan  # noqa: B018
