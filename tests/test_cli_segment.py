import nibabel as nib
import numpy as np
import pytest
import torch

from octasim.model import build_unet, save_checkpoint
from octasim.cli import main

TINY = {"channels": [4, 8], "strides": [2], "num_res_units": 0, "dropout": 0.0}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    net = build_unet(TINY)
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    save_checkpoint(path, {"model_state": net.state_dict(), "model_config": TINY, "voxel_size_um": 2.0,
                           "patch_size": [16, 16, 16], "preprocessing": {"clip_percentiles": [0.5, 99.5]},
                           "threshold": 0.5})
    return path


def scan(path, shape=(24, 24, 16), spacing_mm=(0.002, 0.002, 0.002)):
    rng = np.random.default_rng(0)
    i, _, k = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    tube = (i - shape[0] / 2) ** 2 + (k - shape[2] / 2) ** 2 <= 9
    img = (rng.normal(0.2, 0.05, shape) + 0.8 * tube).astype(np.float32)
    nib.save(nib.Nifti1Image(img, np.diag([*spacing_mm, 1.0])), str(path))
    return path, tube


def test_otsu_without_model(tmp_path, capsys):
    src, tube = scan(tmp_path / "vol.nii.gz")
    out = tmp_path / "seg"
    assert main(["segment", str(src), "--method", "otsu", "--out", str(out)]) == 0
    mask = np.asarray(nib.load(str(out / "vol_mask.nii.gz")).dataobj)
    assert mask.dtype == np.uint8 and (mask.astype(bool) == tube).mean() > 0.98
    assert (out / "vol_prob.nii.gz").exists() and (out / "vol_qc.png").exists()
    text = capsys.readouterr().out
    assert "segmented 1 of 1" in text and str(out) in text and "vol_qc.png" in text
    shape = " x ".join(str(n) for n in tube.shape)
    assert f"vol.nii.gz ({shape} voxels of 2 x 2 x 2 um)" in text  # the voxel size it computed with


def test_unet_with_all_options(tmp_path, ckpt):
    (tmp_path / "in").mkdir()
    scan(tmp_path / "in" / "a.nii.gz")
    scan(tmp_path / "in" / "b.nii", shape=(30, 20, 6), spacing_mm=(0.001, 0.001, 0.005))
    out = tmp_path / "seg"
    rc = main(["segment", str(tmp_path / "in"), "--model", str(ckpt), "--out", str(out), "--device", "cpu",
               "--threshold", "0.4", "--overlap", "0.25", "--batch-size", "2", "--no-tta", "--min-component-um3", "16",
               "--depth-axis", "k"])
    assert rc == 0
    b = nib.load(str(out / "b_prob.nii.gz"))
    assert b.shape == (30, 20, 6) and np.allclose(b.header.get_zooms(), (0.001, 0.001, 0.005))
    assert sorted(p.name for p in out.glob("*.png")) == ["a_qc.png", "b_qc.png"]


@pytest.mark.parametrize("flag, key, expected, said", [
    ([], "tta", True, "lateral flips on"), (["--no-tta"], "tta", False, "lateral flips off"),
    (["--tta"], "tta", True, "lateral flips on"),
    ([], "complete_lumens", True, "lower half completed"),
    (["--no-lumen-completion"], "complete_lumens", False, "not completed (--no-lumen-completion)")])
def test_on_off_options_are_on_unless_turned_off_and_said(tmp_path, ckpt, monkeypatch, capsys, flag, key,
                                                          expected, said):
    import octasim.segment

    seen = {}
    monkeypatch.setattr(octasim.segment, "segment_files", lambda *a, **kw: seen.update(kw) or [])
    src, _ = scan(tmp_path / "vol.nii.gz")
    assert main(["segment", str(src), "--model", str(ckpt), "--out", str(tmp_path / "seg"), *flag]) == 0
    assert seen[key] is expected
    assert said in capsys.readouterr().out


def test_voxel_size_override_and_depth_axis(tmp_path, ckpt):
    src, _ = scan(tmp_path / "v.nii.gz", shape=(6, 20, 20))
    rc = main(["segment", str(src), "--model", str(ckpt), "--out", str(tmp_path / "seg"), "--device", "cpu",
               "--depth-axis", "i", "--voxel-size", "5", "1", "1"])
    assert rc == 0 and nib.load(str(tmp_path / "seg" / "v_mask.nii.gz")).shape == (6, 20, 20)


def test_unknown_model_name_lists_the_bundled_ones(tmp_path, capsys):
    src, _ = scan(tmp_path / "vol.nii.gz")
    assert main(["segment", str(src), "--model", "no-such-model", "--out", str(tmp_path / "seg")]) == 2
    err = capsys.readouterr().err
    assert "no bundled model named 'no-such-model'" in err and "shipped:" in err


def test_segmenting_a_folder_twice_never_takes_its_outputs_as_inputs(tmp_path, ckpt, capsys):
    """Outputs written into the input folder are not segmented again, and are not silently replaced."""
    folder = tmp_path / "scans"
    folder.mkdir()
    scan(folder / "x.nii.gz")
    args = ["segment", str(folder), "--model", str(ckpt), "--out", str(folder), "--device", "cpu"]
    assert main(args) == 0
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "already exist" in err and "--overwrite" in err
    assert main(args + ["--overwrite"]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["x.nii.gz", "x_mask.nii.gz", "x_prob.nii.gz", "x_qc.png"]


def test_option_values_checked_before_any_input(tmp_path, capsys):
    missing = tmp_path / "missing.nii.gz"
    for opt, value, text in (("--overlap", "1", "--overlap"), ("--batch-size", "0", "--batch-size"),
                             ("--views", "0", "--views")):
        assert main(["segment", str(missing), "--out", str(tmp_path / "s"), opt, value]) == 2
        err = capsys.readouterr().err
        assert text in err and "missing.nii.gz" not in err, err


def test_incompatible_checkpoint(tmp_path, capsys):
    src, _ = scan(tmp_path / "vol.nii.gz")
    old = tmp_path / "old.pt"
    torch.save({"model_state": {}, "model_config": TINY, "format": 99}, old)
    assert main(["segment", str(src), "--model", str(old), "--out", str(tmp_path / "seg")]) == 2
    err = capsys.readouterr().err
    assert "old.pt" in err and "format 99" in err


def test_bad_inputs_reported_and_others_kept(tmp_path, ckpt, capsys):
    good, _ = scan(tmp_path / "good.nii.gz")
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.diag([0.002, 0.002, 0.002, 1.0])), str(flat))
    trunc = tmp_path / "trunc.nii.gz"
    trunc.write_bytes(good.read_bytes()[:200])
    multi = tmp_path / "multi.nii.gz"
    nib.save(nib.Nifti1Image(np.random.rand(8, 8, 8, 2).astype(np.float32), np.eye(4)), str(multi))
    out = tmp_path / "seg"
    rc = main(["segment", str(good), str(flat), str(trunc), str(multi), str(tmp_path / "missing.nii"),
               "--model", str(ckpt), "--out", str(out), "--device", "cpu"])
    assert rc == 1
    captured = capsys.readouterr()
    assert "segmented 1 of 5" in captured.out
    assert "4 input(s) failed" in captured.err
    for name, text in [("flat", "constant"), ("trunc", "truncated"), ("multi", "single channel"),
                       ("missing", "no such file")]:
        assert any(name in line and text in line for line in captured.err.splitlines()), (name, captured.err)
    assert sorted(p.name for p in out.iterdir()) == ["good_mask.nii.gz", "good_prob.nii.gz", "good_qc.png"]


def test_bad_option_values(tmp_path, capsys):
    src, _ = scan(tmp_path / "vol.nii.gz")
    assert main(["segment", str(src), "--method", "otsu", "--out", str(tmp_path / "s"), "--threshold", "2"]) == 2
    assert "--threshold" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["segment", str(src), "--method", "magic", "--out", str(tmp_path / "s")])


def tiff_scan(path, shape_zyx=(16, 24, 24), spacing_um=(1.0, 1.0, 2.0), channels=0):
    """A (z, y, x) ImageJ stack with a bright tube along y, calibrated in um (x, y, z); with ``channels``
    a ZCYX stack whose channel 1 holds the tube. Returns (path, tube (z, y, x))."""
    import tifffile

    rng = np.random.default_rng(0)
    k, _, i = np.meshgrid(*(np.arange(n) for n in shape_zyx), indexing="ij")
    tube = (i - shape_zyx[2] / 2) ** 2 + (k - shape_zyx[0] / 2) ** 2 <= 9
    img = (rng.normal(0.2, 0.05, shape_zyx) + 0.8 * tube).astype(np.float32)
    axes = "ZYX"
    if channels:
        img = np.stack([rng.normal(0.5, 0.05, shape_zyx).astype(np.float32), img], axis=1)
        axes = "ZCYX"
    sx, sy, sz = spacing_um
    tifffile.imwrite(path, img, imagej=True, resolution=(1 / sx, 1 / sy),
                     metadata={"axes": axes, "spacing": sz, "unit": "micron"})
    return path, tube


def test_tiff_input_gives_tiff_outputs_in_its_layout_and_calibration(tmp_path, capsys):
    import tifffile

    src, tube = tiff_scan(tmp_path / "stack.tif")
    out = tmp_path / "seg"
    assert main(["segment", str(src), "--method", "otsu", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["stack_mask.tif", "stack_prob.tif", "stack_qc.png"]
    with tifffile.TiffFile(out / "stack_mask.tif") as tif:
        mask = tif.asarray()
        assert tif.imagej_metadata["spacing"] == pytest.approx(2.0) and tif.imagej_metadata["unit"] == "um"
        num, den = tif.pages[0].tags["XResolution"].value
        assert den / num == pytest.approx(1.0)
    assert mask.shape == (16, 24, 24) and mask.dtype == np.uint8  # the input's (z, y, x) shape
    assert (mask.astype(bool) == tube).mean() > 0.98
    prob = tifffile.imread(out / "stack_prob.tif")
    assert prob.shape == (16, 24, 24) and prob.dtype == np.float32
    assert "stack_mask.tif" in capsys.readouterr().out
    # the outputs in the input's folder are not taken as inputs the next time
    assert main(["segment", str(tmp_path), str(out), "--method", "otsu", "--out", str(tmp_path / "again")]) == 0
    assert sorted(p.name for p in (tmp_path / "again").glob("*_mask.tif")) == ["stack_mask.tif"]


def test_tiff_channel_and_nifti_output(tmp_path, capsys):
    src, tube = tiff_scan(tmp_path / "two.tif", spacing_um=(1.0, 1.0, 2.0), channels=2)
    out = tmp_path / "seg"
    assert main(["segment", str(src), "--method", "otsu", "--out", str(out), "--output-format", "nifti"]) == 1
    assert "--channel K" in capsys.readouterr().err
    assert main(["segment", str(src), "--method", "otsu", "--out", str(out), "--output-format", "nifti",
                 "--channel", "1"]) == 0
    img = nib.load(str(out / "two_mask.nii.gz"))
    assert img.shape == (24, 24, 16) and np.allclose(img.header.get_zooms(), (0.001, 0.001, 0.002))
    mask = np.asarray(img.dataobj)
    assert (mask.astype(bool) == tube.transpose(2, 1, 0)).mean() > 0.98  # (x, y, z), depth last
    assert (out / "two_prob.nii.gz").exists()


def test_uncalibrated_tiff_needs_voxel_size(tmp_path, capsys):
    import tifffile

    tifffile.imwrite(tmp_path / "raw.tif", np.random.default_rng(0).random((8, 16, 16)).astype(np.float32),
                     photometric="minisblack")
    out = tmp_path / "seg"
    assert main(["segment", str(tmp_path / "raw.tif"), "--method", "otsu", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "raw.tif" in err and "--voxel-size X Y Z" in err
    assert main(["segment", str(tmp_path / "raw.tif"), "--method", "otsu", "--out", str(out),
                 "--voxel-size", "1", "1", "5", "--output-format", "tiff"]) == 0
    assert tifffile.imread(out / "raw_mask.tif").shape == (8, 16, 16)


def test_nifti_input_with_tiff_output(tmp_path):
    import tifffile

    src, tube = scan(tmp_path / "vol.nii.gz", spacing_mm=(0.001, 0.001, 0.005))
    out = tmp_path / "seg"
    assert main(["segment", str(src), "--method", "otsu", "--out", str(out), "--output-format", "tiff"]) == 0
    with tifffile.TiffFile(out / "vol_mask.tif") as tif:
        mask = tif.asarray()
        assert tif.imagej_metadata["spacing"] == pytest.approx(5.0)
    assert mask.shape == (16, 24, 24) and (mask.astype(bool) == tube.transpose(2, 1, 0)).mean() > 0.98


def test_region_of_interest(tmp_path, ckpt, capsys):
    src, _ = scan(tmp_path / "vol.nii.gz")
    roi = np.zeros((24, 24, 16), np.uint8)
    roi[:, :12] = 1
    nib.save(nib.Nifti1Image(roi, np.diag([0.002, 0.002, 0.002, 1.0])), str(tmp_path / "roi.nii.gz"))
    out = tmp_path / "seg"
    assert main(["segment", str(src), "--model", str(ckpt), "--out", str(out), "--device", "cpu",
                 "--roi", str(tmp_path / "roi.nii.gz")]) == 0
    prob = np.asarray(nib.load(str(out / "vol_prob.nii.gz")).dataobj)
    mask = np.asarray(nib.load(str(out / "vol_mask.nii.gz")).dataobj)
    assert not prob[:, 12:].any() and not mask[:, 12:].any()
    text = capsys.readouterr().out
    assert "region of interest: " in text and f"vessel fraction of the region {mask[:, :12].mean():.2%}" in text
    nib.save(nib.Nifti1Image(roi[:, :, :8], np.eye(4)), str(tmp_path / "small.nii.gz"))
    assert main(["segment", str(src), "--model", str(ckpt), "--out", str(tmp_path / "seg2"), "--device", "cpu",
                 "--roi", str(tmp_path / "small.nii.gz")]) == 1
    err = capsys.readouterr().err
    assert "small.nii.gz" in err and "shape" in err
    assert not (tmp_path / "seg2" / "vol_mask.nii.gz").exists()


def test_tiff_region_in_the_scans_folder(tmp_path, capsys):
    import tifffile

    (tmp_path / "in").mkdir()
    src, tube = tiff_scan(tmp_path / "in" / "stack.tif")  # (z, y, x) = (16, 24, 24)
    roi = np.zeros(tube.shape, np.uint8)
    roi[:, :, :12] = 255  # x < 12, in the file's own (z, y, x) order
    tifffile.imwrite(tmp_path / "in" / "stack_roi.tif", roi, imagej=True, metadata={"axes": "ZYX"})
    out = tmp_path / "seg"
    assert main(["segment", str(tmp_path / "in"), "--method", "otsu", "--out", str(out),
                 "--roi", str(tmp_path / "in")]) == 0
    assert sorted(p.name for p in out.glob("*_mask.tif")) == ["stack_mask.tif"]  # the region is not an input
    mask = tifffile.imread(out / "stack_mask.tif").astype(bool)
    assert not mask[:, :, 12:].any()
    assert (mask[:, :, :12] == tube[:, :, :12]).mean() > 0.98
    # a two-channel region is refused, naming its file, without the scan's --channel advice
    tifffile.imwrite(tmp_path / "two_roi.tif", np.stack([roi, roi], axis=1), imagej=True, metadata={"axes": "ZCYX"})
    capsys.readouterr()
    assert main(["segment", str(src), "--method", "otsu", "--out", str(tmp_path / "seg2"),
                 "--roi", str(tmp_path / "two_roi.tif")]) == 1
    err = capsys.readouterr().err
    assert "two_roi.tif" in err and "one 3D stack without channels" in err
    assert main(["segment", str(src), "--method", "otsu", "--out", str(tmp_path / "seg3"),
                 "--roi", str(tmp_path / "nope.tif")]) == 2  # an option error, before any scan is read
    assert "no such region-of-interest" in capsys.readouterr().err
    assert not (tmp_path / "seg3").exists()
