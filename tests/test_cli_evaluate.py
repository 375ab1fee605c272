"""`octasim evaluate` run in-process; the library (pairing, grids, TIFF) is tested in test_evaluate.py."""
import csv
import json

import nibabel as nib
import numpy as np
import pytest

from octasim.cli import main


def save(path, data, affine=None):
    """NIfTI with a 2 um grid (affine in mm) unless ``affine`` is given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag([0.002, 0.002, 0.002, 1.0]) if affine is None else affine
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return path


def cube_pair(shift=0):
    label = np.zeros((16, 16, 16), np.uint8)
    label[2:10, 2:10, 2:10] = 1
    pred = np.roll(label, shift, axis=0)
    return pred, label


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_known_dice_per_volume_and_mean(tmp_path, capsys):
    # sample_0000: identical; sample_0001: shifted by 4 of 8 voxels -> Dice 0.5
    for n, shift in enumerate([0, 4]):
        pred, label = cube_pair(shift)
        save(tmp_path / "seg" / f"sample_{n:04d}_mask.nii.gz", pred)
        save(tmp_path / "labels" / f"sample_{n:04d}.nii.gz", label)
    out = tmp_path / "results.csv"
    assert main(["evaluate", "--pred", str(tmp_path / "seg"), "--label", str(tmp_path / "labels"),
                 "--out", str(out)]) == 0
    rows = read_csv(out)
    assert [r["volume"] for r in rows] == ["sample_0000", "sample_0001", "mean"]
    assert float(rows[0]["dice"]) == 1.0 and float(rows[0]["cldice"]) == 1.0
    assert float(rows[0]["betti0_error"]) == 0 and float(rows[0]["betti1_error"]) == 0
    assert float(rows[1]["dice"]) == pytest.approx(0.5) and float(rows[1]["iou"]) == pytest.approx(1 / 3)
    assert float(rows[2]["dice"]) == pytest.approx(0.75)
    text = capsys.readouterr().out
    assert "sample_0001" in text and "mean" in text and "0.7500" in text and str(out) in text


def test_probability_maps_as_pred_and_prob_folder(tmp_path):
    pred, label = cube_pair(0)
    prob = np.where(label > 0, 0.8, 0.2).astype(np.float32)
    prob[0, 0, 0] = 0.9  # one confident false positive
    save(tmp_path / "probs" / "vol_prob.nii.gz", prob)
    save(tmp_path / "labels" / "vol.nii.gz", label)
    out = tmp_path / "r.csv"
    assert main(["evaluate", "--pred", str(tmp_path / "probs" / "vol_prob.nii.gz"), "--label",
                 str(tmp_path / "labels"), "--out", str(out), "--threshold", "0.5"]) == 0
    row = read_csv(out)[0]
    assert float(row["precision"]) == pytest.approx(512 / 513) and float(row["recall"]) == 1.0
    assert 0.99 < float(row["roc_auc"]) < 1.0 and float(row["average_precision"]) < 1.0
    # a binary mask plus a separate probability folder
    save(tmp_path / "seg" / "vol_mask.nii.gz", pred)
    save(tmp_path / "seg" / "vol_prob.nii.gz", np.where(label > 0, 0.7, 0.1).astype(np.float32))
    assert main(["evaluate", "--pred", str(tmp_path / "seg"), "--prob", str(tmp_path / "seg"), "--label",
                 str(tmp_path / "labels"), "--out", str(out)]) == 0
    row = read_csv(out)[0]
    assert float(row["dice"]) == 1.0 and float(row["roc_auc"]) == 1.0 and float(row["average_precision"]) == 1.0


def test_regions(tmp_path):
    pred, label = cube_pair(0)
    pred[12:14, 12:14, 12:14] = 1
    save(tmp_path / "p.nii.gz", pred)
    save(tmp_path / "l.nii.gz", label)
    regions = tmp_path / "regions.json"
    regions.write_text(json.dumps({"regions": [{"name": "cube", "box": [[0, 0, 0], [10, 10, 10]]},
                                               {"name": "corner", "box": [[10, 10, 10], [16, 16, 16]]}]}))
    out = tmp_path / "r.csv"
    assert main(["evaluate", "--pred", str(tmp_path / "p.nii.gz"), "--label", str(tmp_path / "l.nii.gz"),
                 "--regions", str(regions), "--out", str(out)]) == 0
    rows = {(r["volume"], r["region"]): r for r in read_csv(out)}
    assert float(rows[("p", "cube")]["dice"]) == 1.0
    assert float(rows[("p", "corner")]["dice"]) == 0.0
    assert float(rows[("p", "weighted")]["dice"]) == pytest.approx(1000 / (1000 + 216))
    assert ("mean", "weighted") in rows


def test_pairs_printed_and_errors(tmp_path, capsys):
    pred, label = cube_pair(0)
    for name in ("x", "w"):
        save(tmp_path / "p" / f"{name}_mask.nii.gz", pred)
        save(tmp_path / "l" / f"{name}.nii.gz", label)
    assert main(["evaluate", "--pred", str(tmp_path / "p"), "--label", str(tmp_path / "l")]) == 0
    text = capsys.readouterr().out
    assert "w_mask.nii.gz <-> w.nii.gz" in text and "x_mask.nii.gz <-> x.nii.gz" in text
    save(tmp_path / "l" / "v.nii.gz", label)
    assert main(["evaluate", "--pred", str(tmp_path / "p"), "--label", str(tmp_path / "l")]) == 2
    err = capsys.readouterr().err
    assert "2 predictions and 3 labels do not match" in err and "without a prediction: v.nii.gz" in err
    save(tmp_path / "small.nii.gz", label[:8])
    assert main(["evaluate", "--pred", str(tmp_path / "p" / "x_mask.nii.gz"), "--label",
                 str(tmp_path / "small.nii.gz")]) == 2
    err = capsys.readouterr().err
    assert "shape" in err and "small.nii.gz" in err
    assert main(["evaluate", "--pred", str(tmp_path / "nothing"), "--label", str(tmp_path / "l")]) == 2
    assert "nothing" in capsys.readouterr().err


def test_segment_then_evaluate(tmp_path):
    rng = np.random.default_rng(0)
    for n in range(2):
        label = np.zeros((20, 20, 20), np.uint8)
        label[8:12, :, 8 + n:12 + n] = 1
        save(tmp_path / "labels" / f"s{n}.nii.gz", label)
        save(tmp_path / "images" / f"s{n}.nii.gz", (0.2 + 0.6 * label + rng.normal(0, 0.05, label.shape)).astype(np.float32))
    assert main(["segment", str(tmp_path / "images"), "--method", "otsu", "--out", str(tmp_path / "seg")]) == 0
    out = tmp_path / "r.csv"
    assert main(["evaluate", "--pred", str(tmp_path / "seg"), "--prob", str(tmp_path / "seg"),
                 "--label", str(tmp_path / "labels"), "--out", str(out)]) == 0
    rows = read_csv(out)
    assert len(rows) == 3 and all(float(r["dice"]) > 0.95 and float(r["roc_auc"]) > 0.99 for r in rows)


def test_integer_label_minus_one_counts_as_vessel(tmp_path):
    pred, label = cube_pair(0)
    save(tmp_path / "p.nii.gz", pred)
    save(tmp_path / "l.nii.gz", -label.astype(np.int16))  # vessel stored as -1
    out = tmp_path / "r.csv"
    assert main(["evaluate", "--pred", str(tmp_path / "p.nii.gz"), "--label", str(tmp_path / "l.nii.gz"),
                 "--out", str(out), "--no-topology"]) == 0
    row = read_csv(out)[0]
    assert float(row["dice"]) == 1.0 and float(row["recall"]) == 1.0


def test_flipped_prediction_is_refused_then_resampled(tmp_path, capsys):
    pred, label = cube_pair(0)
    label[2:10, 2:4, 2:10] = 0  # not symmetric in any axis
    pred = label[::-1].copy()  # same world content, first axis stored the other way round
    flipped = np.diag([-0.002, 0.002, 0.002, 1.0])
    flipped[0, 3] = 15 * 0.002  # voxel 0 of the prediction is voxel 15 of the label
    save(tmp_path / "seg" / "a_mask.nii.gz", pred, flipped)
    save(tmp_path / "lab" / "a.nii.gz", label)
    args = ["evaluate", "--pred", str(tmp_path / "seg"), "--label", str(tmp_path / "lab"), "--no-topology"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "a_mask.nii.gz and its label" in err and "a.nii.gz" in err and "not on the same voxel grid" in err
    assert "orientation LAS vs RAS" in err and "origin" in err and "--resample-pred" in err
    out = tmp_path / "r.csv"
    assert main(args + ["--resample-pred", "--out", str(out)]) == 0
    assert "resampled a_mask.nii.gz onto the grid of a.nii.gz" in capsys.readouterr().out
    assert float(read_csv(out)[0]["dice"]) == 1.0


def test_prediction_with_other_voxel_size_is_refused_then_resampled(tmp_path, capsys):
    pred, label = cube_pair(0)
    coarse = np.diag([0.004, 0.004, 0.004, 1.0])
    coarse[:3, 3] = 0.001  # centre of coarse voxel p lies between fine voxels 2p and 2p + 1
    save(tmp_path / "p.nii.gz", label[::2, ::2, ::2], coarse)
    prob = np.where(label[::2, ::2, ::2] > 0, 0.9, 0.1).astype(np.float32)
    save(tmp_path / "p_prob.nii.gz", prob, coarse)
    save(tmp_path / "l.nii.gz", label)
    args = ["evaluate", "--pred", str(tmp_path / "p.nii.gz"), "--label", str(tmp_path / "l.nii.gz"),
            "--prob", str(tmp_path / "p_prob.nii.gz"), "--no-topology"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "p.nii.gz and its label" in err and "voxel size (4, 4, 4) um vs (2, 2, 2) um" in err
    assert "shape (8, 8, 8) vs (16, 16, 16)" in err
    out = tmp_path / "r.csv"
    assert main(args + ["--resample-pred", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "resampled p.nii.gz" in text and "resampled p_prob.nii.gz" in text
    row = read_csv(out)[0]
    assert float(row["dice"]) == 1.0 and float(row["roc_auc"]) == 1.0


def test_resample_pred_help(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = capsys.readouterr().out
    assert "--resample-pred" in text and "nearest neighbour" in text and "sorted order" not in text


def test_segment_tiff_then_evaluate_against_tiff_labels(tmp_path, capsys):
    import tifffile

    from octasim.tiff import write_tiff

    rng = np.random.default_rng(0)
    (tmp_path / "labels").mkdir()
    (tmp_path / "images").mkdir()
    for n in range(2):
        label = np.zeros((20, 20, 20), np.uint8)
        label[8:12, :, 8 + n:12 + n] = 1
        write_tiff(tmp_path / "labels" / f"s{n}_label.tif", label, (2.0, 2.0, 3.0))
        image = (0.2 + 0.6 * label + rng.normal(0, 0.05, label.shape)).astype(np.float32)
        write_tiff(tmp_path / "images" / f"s{n}.tif", image, (2.0, 2.0, 3.0))
    assert main(["segment", str(tmp_path / "images"), "--method", "otsu", "--out", str(tmp_path / "seg")]) == 0
    assert (tmp_path / "seg" / "s0_mask.tif").exists()
    out = tmp_path / "r.csv"
    assert main(["evaluate", "--pred", str(tmp_path / "seg"), "--prob", str(tmp_path / "seg"),
                 "--label", str(tmp_path / "labels"), "--out", str(out)]) == 0
    assert "s1_mask.tif <-> s1_label.tif  (probabilities: s1_prob.tif)" in capsys.readouterr().out
    rows = read_csv(out)
    assert len(rows) == 3 and all(float(r["dice"]) > 0.95 and float(r["roc_auc"]) > 0.99 for r in rows)
    # an uncalibrated TIFF label of another shape needs --voxel-size (and --resample-pred)
    raw = tmp_path / "raw" / "s0.tif"
    raw.parent.mkdir()
    tifffile.imwrite(raw, np.zeros((20, 20, 10), np.uint8))
    args = ["evaluate", "--pred", str(tmp_path / "seg" / "s0_mask.tif"), "--label", str(raw), "--no-topology"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(raw) in err and "no voxel size" in err and "--voxel-size X Y Z" in err
    assert main(args + ["--voxel-size", "2", "2", "3", "--resample-pred"]) == 0
    text = capsys.readouterr().out
    assert "resampled s0_mask.tif onto the grid of s0.tif: shape (20, 20, 20) vs (10, 20, 20)" in text
    assert main(args + ["--voxel-size", "2", "0", "3"]) == 2
    assert "voxel size must be three positive numbers" in capsys.readouterr().err
