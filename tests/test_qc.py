import matplotlib.image as mpimg
import numpy as np

from octasim.qc import _views, save_contact_sheet, save_overlay_qc, save_sample_qc


def test_views_draw_depth_downwards_with_physical_aspect():
    vol = np.zeros((4, 6, 10), np.float32)
    vol[:, :, 9] = 1.0  # the deepest slice
    views = {name.split(" ")[0] + name.split(" ")[1]: (view, aspect) for name, view, aspect in _views(vol, (1, 1, 5))}
    bscan, aspect = views["B-scanj=3"]
    assert bscan.shape == (10, 4) and bscan[-1].all() and not bscan[0].any()  # depth = rows, deepest at the bottom
    assert aspect == 5.0


def test_pictures_are_written_as_png(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.random((12, 12, 8)).astype(np.float32)
    label = (image > 0.8).astype(np.uint8)
    for path in (save_sample_qc(image, label, tmp_path / "s.png", "t"),
                 save_overlay_qc(image, label, tmp_path / "o.png", "t", spacing_um=(1, 1, 5)),
                 save_contact_sheet([image, image], ["a", "b"], tmp_path / "c.png")):
        picture = mpimg.imread(path)
        assert picture.ndim == 3 and picture.shape[0] > 100 and picture.std() > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png", "o.png", "s.png"]
