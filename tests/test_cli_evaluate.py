import csv
import json

import nibabel as nib
import numpy as np
import pytest

from pipelines.cli import main
from pipelines.evaluate import file_key, pair_files


def save(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), np.diag([0.002, 0.002, 0.002, 1.0])), str(path))
    return path


def cube_pair(shift=0):
    label = np.zeros((16, 16, 16), np.uint8)
    label[2:10, 2:10, 2:10] = 1
    pred = np.roll(label, shift, axis=0)
    return pred, label


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_file_key_and_pairing_rules(tmp_path):
    assert file_key(tmp_path / "sample_0003_mask.nii.gz") == "sample_0003"
    assert file_key(tmp_path / "sample_0003.nii.gz") == "sample_0003"
    assert file_key(tmp_path / "scan_label.nii") == "scan"
    preds = [tmp_path / "b_mask.nii.gz", tmp_path / "a_mask.nii.gz"]
    labels = [tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"]
    pairs, rule = pair_files(preds, labels)
    assert rule == "by name" and [(p.name, q.name) for p, q in pairs] == [("b_mask.nii.gz", "b.nii.gz"),
                                                                           ("a_mask.nii.gz", "a.nii.gz")]
    pairs, rule = pair_files([tmp_path / "x.nii", tmp_path / "y.nii"], labels)
    assert rule == "by sorted order" and pairs[0][1].name == "a.nii.gz"
    with pytest.raises(ValueError, match="1 predictions but 2 labels"):
        pair_files(preds[:1], labels)


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


def test_sorted_order_note_and_errors(tmp_path, capsys):
    pred, label = cube_pair(0)
    for name in ("x", "w"):
        save(tmp_path / "p" / f"{name}.nii.gz", pred)
    for name in ("y", "z"):
        save(tmp_path / "l" / f"{name}.nii.gz", label)
    assert main(["evaluate", "--pred", str(tmp_path / "p"), "--label", str(tmp_path / "l")]) == 0
    text = capsys.readouterr().out
    assert "sorted order" in text and "w.nii.gz <-> y.nii.gz" in text and "x.nii.gz <-> z.nii.gz" in text
    save(tmp_path / "l" / "v.nii.gz", label)
    assert main(["evaluate", "--pred", str(tmp_path / "p"), "--label", str(tmp_path / "l")]) == 2
    assert "2 predictions but 3 labels" in capsys.readouterr().err
    save(tmp_path / "small.nii.gz", label[:8])
    assert main(["evaluate", "--pred", str(tmp_path / "p" / "x.nii.gz"), "--label",
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
