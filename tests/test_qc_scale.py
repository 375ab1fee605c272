"""QC pictures carry a scale bar and the voxel size (issue 13.5)."""
from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from octasim.qc import _voxel_line, save_overlay_qc, save_sample_qc, scale_bar_length


@pytest.mark.parametrize("width_um, bar_um", [(512, 100), (500, 100), (256, 50), (1000, 200), (2500, 500),
                                              (100, 20), (64, 10), (16, 5), (3, 0.5), (5000, 1000)])
def test_scale_bar_length_is_round_and_about_a_fifth(width_um, bar_um):
    length = scale_bar_length(width_um)
    assert length == bar_um
    assert 0.1 <= length / width_um <= 0.35


def test_scale_bar_length_refuses_nonsense():
    for bad in (0, -5, float("nan")):
        with pytest.raises(ValueError, match="panel width"):
            scale_bar_length(bad)


def test_voxel_line_names_the_spacing():
    assert "0.994 × 0.994 × 5 µm" in _voxel_line((0.994, 0.994, 5.0))
    assert "2 × 2 × 2 µm" in _voxel_line(2.0)
    assert "not given" in _voxel_line(None)


def test_pictures_with_scale_bars_are_written(tmp_path, monkeypatch):
    import octasim.qc as qc

    seen = {}
    real_save = qc._save

    def spy(fig, path, plt):
        seen[Path(path).name] = ([[t.get_text() for t in ax.texts] for ax in fig.axes], fig._suptitle.get_text())
        return real_save(fig, path, plt)

    monkeypatch.setattr(qc, "_save", spy)
    rng = np.random.default_rng(0)
    image = rng.random((32, 40, 16)).astype(np.float32)
    label = (image > 0.8).astype(np.uint8)
    paths = [save_overlay_qc(image, label, tmp_path / "o.png", "t", spacing_um=(2.0, 2.0, 5.0)),
             save_sample_qc(image, label, tmp_path / "s.png", "t", spacing_um=4.0),
             save_sample_qc(image, label, tmp_path / "n.png", "t")]
    for path in paths:
        picture = mpimg.imread(path)
        assert picture.ndim == 3 and picture.shape[0] > 100 and picture.std() > 0
    texts, title = seen["o.png"]
    # panels 80 um (j), 64 um (i), 80 um (j), 80 um (j) wide
    assert texts == [["20 µm"], ["10 µm"], ["20 µm"], ["20 µm"]] and "2 × 2 × 5 µm" in title
    texts, title = seen["s.png"]
    assert len(texts) == 8 and all(t == ["50 µm"] or t == ["20 µm"] for t in texts) and "4 × 4 × 4 µm" in title
    texts, title = seen["n.png"]
    assert all(t == [] for t in texts) and "not given" in title  # no spacing: no bar pretending to know the scale
