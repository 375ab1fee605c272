"""Fine-tuning on labelled real scans: folder layouts, scans prepared as inference prepares them,
held-out real validation, the synthetic share, and `octasim train --init MODEL --data DIR`."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from octasim.model import load_checkpoint
from octasim.nifti import write_volume
from octasim.train.data import (DataError, PatchDataset, find_labelled_scans, hold_out_block, load_dataset_samples,
                                scan_views)
from tests.test_train import TINY, make_dataset, tiny, tube_volume

SCAN_SPACING = (1.0, 1.0, 4.0)  # um: fine laterally, coarse slices, as two-photon stacks are


def write_scan(folder: Path, name: str, seed: int, label_name: str | None = None, shape=(40, 36, 10)) -> None:
    """A small anisotropic 'real' scan (uint16 intensities, as microscopes write) and its manual label."""
    image, label = tube_volume(max(shape), seed)
    image, label = image[: shape[0], : shape[1], : shape[2]], label[: shape[0], : shape[1], : shape[2]]
    write_volume(folder / f"{name}.nii.gz", (image * 4000).astype(np.uint16), spacing_um=SCAN_SPACING)
    write_volume(folder / (label_name or f"{name}_label.nii.gz"), label, spacing_um=SCAN_SPACING)


def test_plain_and_nnunet_folders_pair_images_with_labels(tmp_path):
    plain = tmp_path / "plain"
    write_scan(plain, "b", 1)
    write_scan(plain, "a", 0)
    refs = find_labelled_scans(plain)
    assert [r.id for r in refs] == ["a", "b"] and all(r.scan for r in refs)
    assert refs[0].image.name == "a.nii.gz" and refs[0].label.name == "a_label.nii.gz"

    nn = tmp_path / "nnunet"
    (nn / "imagesTr").mkdir(parents=True)
    (nn / "labelsTr").mkdir()
    write_scan(nn / "imagesTr", "case_0000", 2, label_name="../labelsTr/case.nii.gz")
    (nn / "dataset.json").write_text('{"channel_names": {"0": "2P"}, "labels": {"background": 0, "vessel": 1}}')
    refs = load_dataset_samples([nn]).samples  # an nnU-Net dataset.json is not an octasim manifest
    assert [(r.id, r.image.name, r.label.name) for r in refs] == [("case", "case_0000.nii.gz", "case.nii.gz")]


def test_unpaired_and_empty_folders_are_named(tmp_path):
    write_scan(tmp_path / "f", "a", 0)
    (tmp_path / "f" / "a_label.nii.gz").unlink()
    with pytest.raises(DataError, match=r"unpaired files: a \(no label\)"):
        find_labelled_scans(tmp_path / "f")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no dataset.json and no labelled scans"):
        load_dataset_samples([tmp_path / "empty"])


def test_scan_views_match_what_inference_feeds_the_network():
    from octasim.inference import ModelGrid, local_brightness
    from octasim.preprocess import normalize_percentiles, resample, resampled_shape

    image, label = tube_volume(40, 5)
    grid = ModelGrid(2.0, (8, 8, 8), (0.5, 99.5), max_voxel_size_um=4.0)
    views = scan_views(image * 1000, label, SCAN_SPACING, [2.0, 4.0], grid)
    assert [v[0].shape for v in views] == [(20, 20, 80), (10, 10, 40)]
    # exactly what octasim.inference.predict_probability gives the network: the 2 um view as resampled,
    # the 4 um view divided by the 2 um view's local brightness (over one 16 um window)
    scaled = normalize_percentiles(image * 1000, (0.5, 99.5))
    fine = resample(scaled, resampled_shape(image.shape, SCAN_SPACING, 2.0))
    np.testing.assert_array_equal(views[0][0], fine)
    coarse = resample(scaled, (10, 10, 40)) / resample(local_brightness(fine, 2.0, 16.0), (10, 10, 40))
    np.testing.assert_allclose(views[1][0], np.clip(coarse, 0.0, 1.0), atol=1e-6)
    assert views[0][1].dtype == np.uint8 and 0 < views[0][1].mean() < 0.5  # the label follows the image


def test_hold_out_block_keeps_the_last_quarter_of_the_longer_lateral_axis():
    image = np.arange(8 * 12 * 3, dtype=np.float32).reshape(8, 12, 3)
    (train_img, train_lab), (val_img, val_lab) = hold_out_block(image, image > 100)
    assert train_img.shape == (8, 9, 3) and val_img.shape == (8, 3, 3)
    np.testing.assert_array_equal(np.concatenate([train_img, val_img], axis=1), image)
    np.testing.assert_array_equal(val_lab, val_img > 100)


def test_patch_weights_choose_the_volumes():
    cfg = tiny()
    a = (np.zeros((24,) * 3, np.float32), np.zeros((24,) * 3, np.uint8))
    b = (np.ones((24,) * 3, np.float32), np.ones((24,) * 3, np.uint8))
    only_b = PatchDataset([a, b], cfg, length=8, weights=[0.0, 1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a constant patch is no reason for a warning (histogram shift)
        assert all(float(only_b[n]["label"].max()) == 1.0 for n in range(8))
    with pytest.raises(ValueError, match="weights"):
        PatchDataset([a, b], cfg, length=8, weights=[1.0])


def _starting_model(tmp_path: Path) -> Path:
    from octasim.train.trainer import train
    train(tiny(steps=2, val_every=2, calibrate_threshold=False), [make_dataset(tmp_path / "synth", n=2, shape=24)],
          tmp_path / "start", device="cpu", progress=False)
    return tmp_path / "start" / "best.pt"


def test_finetune_on_scans_validates_on_real_data_and_mixes_synthetic_volumes(tmp_path):
    from octasim.train.trainer import train

    start = _starting_model(tmp_path)
    scans = tmp_path / "scans"
    write_scan(scans, "only", 0, shape=(48, 40, 12))
    rendered = []

    def renderer(profile, seed, index):  # stands in for the simulator: tube volumes on the training grid
        rendered.append(index)
        return tube_volume(24, 100 + index)

    cfg = tiny(steps=2, val_every=2, synthetic_fraction=0.5, synthetic_volumes=3, optimizer={"lr": 1e-3})
    m = train(cfg, [scans], tmp_path / "ft", device="cpu", progress=False, init=start, renderer=renderer)
    assert rendered == [0, 1, 2]
    assert m["n_val_volumes"] == 1  # the held-out quarter of the single scan
    best = load_checkpoint(tmp_path / "ft" / "best.pt")
    assert best["init_from"]["path"] == str(start)
    assert best["threshold"] == m["threshold_calibration"]["chosen"]  # calibrated on the real block, applied
    assert len(best["data"]) == 1 and best["data"][0]["path"] == str(scans.resolve())


def test_cli_finetune_takes_the_starting_models_config(tmp_path, capsys):
    from octasim.cli import main

    start = _starting_model(tmp_path)
    scans = tmp_path / "scans"
    for n in range(4):  # four scans: one is held out whole
        write_scan(scans, f"scan{n}", n)
    out = tmp_path / "ft"
    args = ["train", "--init", str(start), "--data", str(scans), "--out", str(out), "--device", "cpu",
            "--no-progress", "--steps", "2", "--synthetic-fraction", "0"]
    assert main(args) == 0
    tuned = load_checkpoint(out / "best.pt")
    cfg = tuned["train_config"]
    # network from the starting model (no --config), optimisation from the shipped finetune config
    assert cfg["model"]["channels"] == TINY["model"]["channels"] and cfg["optimizer"]["lr"] == 1e-4
    assert cfg["synthetic_fraction"] == 0.0 and tuned["voxel_size_um"] == 2.0
    assert "calibrated on 1 validation volume" in capsys.readouterr().out
    # recorded, not applied: one held-out block is too small to choose a threshold by
    assert tuned["threshold_calibration"]["applied"] is False and tuned["threshold"] == 0.5
    assert main(args[:-4] + ["--steps", "3", "--synthetic-fraction", "0", "--resume"]) == 0
    assert load_checkpoint(out / "last.pt")["step"] == 3


def test_few_scans_each_give_a_block_to_validation(tmp_path):
    from octasim.inference import ModelGrid
    from octasim.train.trainer import _training_data

    for n in range(2):
        write_scan(tmp_path / "two", f"s{n}", n, shape=(40, 36, 10))
    grid = ModelGrid(2.0, (16, 16, 16), (0.5, 99.5), 4.0)  # views at 2 and 4 um
    train_vols, val_vols = _training_data(load_dataset_samples([tmp_path / "two"]), tiny(), grid, False)
    assert len(train_vols) == 2 * 2  # both scans train, at both views
    assert [v[0].shape for v in val_vols] == [(10, 36, 10)] * 2 and all(np.allclose(v[2], SCAN_SPACING) for v in val_vols)
    assert train_vols[0][0].shape == (15, 18, 20)  # the remaining 30 x 36 x 10 voxels at 2 um


def test_labels_need_no_calibration_and_bad_scans_are_named(tmp_path):
    from octasim.tiff import write_tiff
    from octasim.train.data import read_scan_pair

    image, label = tube_volume(24, 3)
    folder = tmp_path / "tif"
    folder.mkdir()
    write_tiff(folder / "a.tif", (image * 200).astype(np.uint8), SCAN_SPACING)
    import tifffile
    tifffile.imwrite(folder / "a_label.tif", np.transpose(label, (2, 1, 0)))  # Fiji label: no calibration
    got_image, got_label, spacing = read_scan_pair(find_labelled_scans(folder)[0])
    np.testing.assert_array_equal(got_label, label)
    assert np.allclose(spacing, SCAN_SPACING)

    write_scan(tmp_path / "flat", "z", 0)
    write_volume(tmp_path / "flat" / "z.nii.gz", np.zeros((40, 36, 10), np.uint16), spacing_um=SCAN_SPACING)
    with pytest.raises(DataError, match=r"z\.nii\.gz: every voxel is 0"):
        read_scan_pair(find_labelled_scans(tmp_path / "flat")[0])
    write_volume(tmp_path / "flat" / "z_label.nii.gz", np.zeros((8, 8, 8), np.uint8), spacing_um=SCAN_SPACING)
    with pytest.raises(DataError, match="differs from its image"):
        read_scan_pair(find_labelled_scans(tmp_path / "flat")[0])
