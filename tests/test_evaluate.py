"""octasim.evaluate, the library behind `octasim evaluate`: pairing, NIfTI / TIFF grid checks, metrics."""
from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest

from octasim.evaluate import (collect_files, evaluate_files, file_key, format_table, pair_files,
                              read_eval_volume, write_csv)
from octasim.metrics import dice
from octasim.nifti import VolumeError
from octasim.tiff import write_tiff


def save_nifti(path, data, affine=None):
    """NIfTI with a 2 um grid (affine in mm) unless ``affine`` is given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag([0.002, 0.002, 0.002, 1.0]) if affine is None else affine
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return path


def save_tiff(path, data, spacing_um=(2.0, 2.0, 2.0)):
    """Calibrated ImageJ TIFF of ``data`` indexed (x, y, z), as `octasim segment` writes them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_tiff(path, np.asarray(data), spacing_um)


def save_raw_tiff(path, data):
    """TIFF without any calibration (plain tifffile, pages = z)."""
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.ascontiguousarray(np.asarray(data).transpose(2, 1, 0)))
    return path


def cube_pair(shift=0, n=16):
    label = np.zeros((n, n, n), np.uint8)
    label[2:10, 2:10, 2:10] = 1
    label[2:10, 2:4, 2:10] = 0  # not symmetric: a flipped or transposed volume would not score 1
    return np.roll(label, shift, axis=0), label


def run(preds, labels, probs=None, **kw):
    """(rows, printed lines) of evaluate_files without topology or progress bar."""
    lines: list[str] = []
    rows = evaluate_files([str(p) for p in preds], [str(p) for p in labels],
                          None if probs is None else [str(p) for p in probs], topology=False, progress=False,
                          echo=lines.append, **kw)
    return rows, lines


# ------------------------------------------------------------------------------------------ pairing
def test_file_key_and_pairing_rules(tmp_path):
    assert file_key(tmp_path / "sample_0003_mask.nii.gz") == "sample_0003"
    assert file_key(tmp_path / "sample_0003.nii.gz") == "sample_0003"
    assert file_key(tmp_path / "scan_label.nii") == "scan"
    preds = [tmp_path / "b_mask.nii.gz", tmp_path / "a_mask.nii.gz"]
    labels = [tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"]
    pairs = pair_files(preds, labels)
    assert [(p.name, q.name) for p, q in pairs] == [("b_mask.nii.gz", "b.nii.gz"), ("a_mask.nii.gz", "a.nii.gz")]
    # one file of each: paired as given, whatever the names
    assert pair_files([tmp_path / "x.nii"], labels[:1]) == [(tmp_path / "x.nii", labels[0])]
    with pytest.raises(ValueError, match="1 predictions and 2 labels do not match.*without a prediction: b.nii.gz"):
        pair_files(preds[1:], labels)
    with pytest.raises(ValueError, match="two labels have the name 'a'"):
        pair_files(preds, [tmp_path / "a.nii.gz", tmp_path / "a_label.nii"])


def test_names_not_matching_one_to_one_are_refused_not_paired_in_sorted_order(tmp_path):
    preds = [tmp_path / f"{n}.nii.gz" for n in ("scan1", "scan10", "scan2")]
    labels = [tmp_path / f"{n}.nii.gz" for n in ("s01", "s02", "s10")]
    with pytest.raises(ValueError) as info:
        pair_files(preds, labels)
    msg = str(info.value)
    assert "3 predictions and 3 labels do not match one to one by name" in msg
    assert "Predictions without a label: scan1.nii.gz, scan10.nii.gz, scan2.nii.gz" in msg
    assert "Labels without a prediction: s01.nii.gz, s02.nii.gz, s10.nii.gz" in msg


def test_tiff_names_pair_like_nifti_names(tmp_path):
    for name in ("stack_mask.tif", "stack.TIF", "stack_label.tiff", "stack.ome.tif", "stack_prob.ome.tiff"):
        assert file_key(tmp_path / name) == "stack", name
    assert file_key(tmp_path / "my.scan_seg.tif") == "my.scan"
    preds = [tmp_path / "b_mask.tif", tmp_path / "a_mask.nii.gz"]
    labels = [tmp_path / "a.ome.tif", tmp_path / "b_label.tiff"]
    assert [(p.name, q.name) for p, q in pair_files(preds, labels)] == [("b_mask.tif", "b_label.tiff"),
                                                                       ("a_mask.nii.gz", "a.ome.tif")]
    with pytest.raises(ValueError, match=r"two predictions have the name 'a'.*\.tif"):
        pair_files([tmp_path / "a_mask.nii.gz", tmp_path / "a_mask.tif"], labels)
    with pytest.raises(ValueError, match=r"no predictions found \(.nii / .nii.gz / .tif / .tiff\)"):
        pair_files([], labels)


def test_segment_folders_give_their_mask_and_prob_tiffs(tmp_path):
    seg = tmp_path / "seg"
    seg.mkdir()
    for name in ("s1_mask.tif", "s1_prob.tif", "s1_qc.png", "s2_mask.nii.gz", "s2_prob.nii.gz", ".hidden_mask.tif"):
        (seg / name).touch()
    assert [p.name for p in collect_files([seg], "mask")] == ["s1_mask.tif", "s2_mask.nii.gz"]
    assert [p.name for p in collect_files([seg], "prob")] == ["s1_prob.tif", "s2_prob.nii.gz"]
    assert [p.name for p in collect_files([seg])] == ["s1_mask.tif", "s1_prob.tif", "s2_mask.nii.gz",
                                                      "s2_prob.nii.gz"]


# ------------------------------------------------------------------------------------------ TIFF files
def test_tiff_masks_against_tiff_labels_with_probabilities(tmp_path):
    for n, shift in enumerate([0, 4]):
        pred, label = cube_pair(shift)
        save_tiff(tmp_path / "seg" / f"s{n}_mask.tif", pred)
        save_tiff(tmp_path / "seg" / f"s{n}_prob.tif", np.where(pred > 0, 0.9, 0.1).astype(np.float32))
        save_tiff(tmp_path / "lab" / f"s{n}_label.tif", label * 255)  # 255 counts as vessel
    rows, lines = run([tmp_path / "seg"], [tmp_path / "lab"], [tmp_path / "seg"])
    assert "  s0_mask.tif <-> s0_label.tif  (probabilities: s0_prob.tif)" in lines
    assert not any(line.startswith("note") for line in lines)
    assert [r["volume"] for r in rows] == ["s0", "s1", "mean"]
    assert rows[0]["dice"] == 1.0 and rows[0]["roc_auc"] == 1.0
    assert rows[1]["dice"] == pytest.approx(0.5) and rows[2]["dice"] == pytest.approx(0.75)
    # a TIFF probability map as prediction: thresholded, and its ROC-AUC reported
    rows, _ = run([tmp_path / "seg" / "s0_prob.tif"], [tmp_path / "lab" / "s0_label.tif"], threshold=0.5)
    assert rows[0]["dice"] == 1.0 and rows[0]["roc_auc"] == 1.0


def test_tiff_grids_compare_voxel_size_and_shape(tmp_path):
    pred, label = cube_pair(0)
    save_tiff(tmp_path / "lab.tif", label, (2.0, 2.0, 2.0))
    save_tiff(tmp_path / "small.tif", label[:8], (2.0, 2.0, 2.0))
    with pytest.raises(ValueError, match=r"small.tif has shape \(8, 16, 16\) but its label .*lab.tif has shape "
                                         r"\(16, 16, 16\) \(same voxel size: a cropped"):
        run([tmp_path / "small.tif"], [tmp_path / "lab.tif"])
    save_tiff(tmp_path / "coarse.tif", label[::2, ::2, ::2], (4.0, 4.0, 4.0))
    with pytest.raises(ValueError) as info:
        run([tmp_path / "coarse.tif"], [tmp_path / "lab.tif"])
    msg = str(info.value)
    assert "coarse.tif and its label" in msg and "voxel size and shape only, as for TIFF files" in msg
    assert "voxel size (4, 4, 4) um vs (2, 2, 2) um" in msg and "shape (8, 8, 8) vs (16, 16, 16)" in msg
    assert "--resample-pred" in msg
    # resampled by voxel size, voxel 0 on voxel 0: coarse voxel p covers fine voxels 2p - 1 .. 2p + 1
    rows, lines = run([tmp_path / "coarse.tif"], [tmp_path / "lab.tif"], resample_pred=True)
    assert any("resampled coarse.tif onto the grid of lab.tif" in line for line in lines)
    assert rows[0]["dice"] > 0.6


def test_nifti_prediction_against_tiff_label(tmp_path):
    pred, label = cube_pair(0)
    save_tiff(tmp_path / "scan_label.tif", label, (2.0, 2.0, 2.0))
    # another orientation and origin in the NIfTI header: not compared across formats, only the voxel size
    affine = np.diag([0.002, 0.002, -0.002, 1.0])
    affine[:3, 3] = (5.0, -3.0, 1.0)
    save_nifti(tmp_path / "scan_mask.nii.gz", pred, affine)
    rows, lines = run([tmp_path / "scan_mask.nii.gz"], [tmp_path / "scan_label.tif"])
    assert rows[0]["dice"] == 1.0 and not any(line.startswith("note") for line in lines)
    # NIfTI prediction at 4 um against the 2 um TIFF label
    save_nifti(tmp_path / "coarse_mask.nii.gz", label[::2, ::2, ::2], np.diag([0.004, 0.004, 0.004, 1.0]))
    with pytest.raises(ValueError, match=r"coarse_mask.nii.gz and its label .*scan_label.tif are not on the same "
                                         r"voxel grid \(voxel size and shape only, as for a NIfTI and a TIFF file"):
        run([tmp_path / "coarse_mask.nii.gz"], [tmp_path / "scan_label.tif"])
    rows, _ = run([tmp_path / "coarse_mask.nii.gz"], [tmp_path / "scan_label.tif"], resample_pred=True)
    assert rows[0]["dice"] > 0.6


def test_uncalibrated_tiff_label_is_compared_on_the_voxel_grid(tmp_path):
    pred, label = cube_pair(4)
    save_raw_tiff(tmp_path / "raw_label.tif", label)
    assert read_eval_volume(tmp_path / "raw_label.tif").spacing_um is None
    np.testing.assert_array_equal(read_eval_volume(tmp_path / "raw_label.tif").data, label)
    for pred_file in (save_tiff(tmp_path / "raw_mask.tif", pred), save_nifti(tmp_path / "raw_mask.nii.gz", pred),
                      save_raw_tiff(tmp_path / "raw_pred.tif", pred)):
        rows, lines = run([pred_file], [tmp_path / "raw_label.tif"])
        assert rows[0]["dice"] == pytest.approx(0.5), pred_file.name
        notes = [line for line in lines if line.startswith("note")]
        assert len(notes) == 1 and "raw_label.tif" in notes[0] and "no voxel size" in notes[0]
        assert "compared voxel by voxel" in notes[0]
    # another shape: nothing to align the grids with, the error names the file
    save_tiff(tmp_path / "small_mask.tif", pred[:8])
    with pytest.raises(ValueError) as info:
        run([tmp_path / "small_mask.tif"], [tmp_path / "raw_label.tif"], resample_pred=True)
    msg = str(info.value)
    assert str(tmp_path / "raw_label.tif") in msg and "no voxel size" in msg and "--voxel-size X Y Z" in msg
    # with a voxel size for the TIFF files, a shape mismatch is resampled (padded)
    rows, lines = run([tmp_path / "small_mask.tif"], [tmp_path / "raw_label.tif"], resample_pred=True,
                      voxel_size_um=(2.0, 2.0, 2.0))
    assert any("resampled small_mask.tif" in line for line in lines)
    padded = np.zeros_like(pred)
    padded[:8] = pred[:8]
    assert rows[0]["dice"] == pytest.approx(dice(padded, label))


def test_voxel_size_overrides_tiff_calibration(tmp_path):
    pred, label = cube_pair(0)
    save_tiff(tmp_path / "a_mask.tif", pred, (1.0, 1.0, 1.0))
    save_tiff(tmp_path / "a.tif", label, (2.0, 2.0, 2.0))
    with pytest.raises(ValueError, match="voxel size"):
        run([tmp_path / "a_mask.tif"], [tmp_path / "a.tif"])
    rows, _ = run([tmp_path / "a_mask.tif"], [tmp_path / "a.tif"], voxel_size_um=(3.0, 3.0, 3.0))
    assert rows[0]["dice"] == 1.0
    assert read_eval_volume(tmp_path / "a.tif", (3.0, 3.0, 3.0)).spacing_um == (3.0, 3.0, 3.0)


def test_unreadable_files_name_the_file(tmp_path):
    (tmp_path / "x.png").write_bytes(b"png")
    with pytest.raises(VolumeError, match="x.png: not a file octasim evaluate reads"):
        read_eval_volume(tmp_path / "x.png")
    (tmp_path / "broken.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(VolumeError, match="broken.tif"):
        read_eval_volume(tmp_path / "broken.tif")
    with pytest.raises(VolumeError, match="missing.tif: no such file"):
        read_eval_volume(tmp_path / "missing.tif")


def test_float_tiff_prediction_outside_0_1_is_refused(tmp_path):
    _, label = cube_pair(0)
    save_tiff(tmp_path / "p.tif", label.astype(np.float32) * 3 + 0.5)
    save_tiff(tmp_path / "l.tif", label)
    with pytest.raises(ValueError, match=r"p.tif: float prediction with values outside \[0, 1\]"):
        run([tmp_path / "p.tif"], [tmp_path / "l.tif"])


# ------------------------------------------------------------------------------------------ output
def test_table_and_csv(tmp_path):
    pred, label = cube_pair(0)
    save_nifti(tmp_path / "p.nii.gz", pred)
    save_nifti(tmp_path / "l.nii.gz", label)
    rows = evaluate_files(tmp_path / "p.nii.gz", str(tmp_path / "l.nii.gz"), progress=False, echo=lambda _: None)
    assert [r["volume"] for r in rows] == ["p", "mean"] and rows[0]["betti0_error"] == 0  # one path each is fine
    text = format_table(rows)
    assert text.splitlines()[0].split()[:3] == ["volume", "region", "dice"] and "1.0000" in text
    assert "l.nii.gz" not in text  # paths stay out of the table
    out = write_csv(rows, tmp_path / "r.csv")
    with open(out, newline="") as fh:
        back = list(csv.DictReader(fh))
    assert [r["volume"] for r in back] == ["p", "mean"] and float(back[0]["dice"]) == 1.0
    assert back[0]["label"] == str(tmp_path / "l.nii.gz")
