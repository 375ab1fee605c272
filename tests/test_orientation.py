"""Orientation of the NIfTI files octasim writes (issue 13): depth k points inferior, origin at voxel 0's
centre; files from earlier versions (depth superior, generated samples' origin half a voxel off) still
read, segment and evaluate the same."""
from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest

from octasim.nifti import (affine_for_spacing, affine_um, grid_differences, legacy_affines_um,
                           octasim_convention_change, read_volume, write_volume)
from octasim.cli import main


def old_affine_mm(spacing_um, corner: bool = True) -> np.ndarray:
    """The affine (mm) older octasim versions wrote: diag(voxel size), depth superior; generated samples
    had voxel 0's centre half a voxel from world 0 (``corner``)."""
    s = np.broadcast_to(np.asarray(spacing_um, float), (3,)) / 1000.0
    out = np.diag([*s, 1.0])
    if corner:
        out[:3, 3] = s / 2.0
    return out


def save_old(path, data, spacing_um, corner: bool = True):
    """A NIfTI as an older octasim wrote it (unit mm, qform / sform code 1)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(data), old_affine_mm(spacing_um, corner))
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    nib.save(img, str(path))
    return path


def test_affine_for_spacing_points_depth_inferior_with_origin_at_voxel_centre():
    affine = affine_for_spacing((2.0, 3.0, 5.0))
    assert nib.aff2axcodes(affine) == ("R", "A", "I")
    assert np.allclose(affine @ [0, 0, 0, 1], [0, 0, 0, 1])  # voxel (0, 0, 0)'s centre at world 0
    assert np.allclose(affine @ [1, 1, 1, 1], [0.002, 0.003, -0.005, 1])  # deeper = more inferior (mm)
    assert nib.aff2axcodes(affine_for_spacing(4.0)) == ("R", "A", "I")


def test_written_volume_has_rai_affine_and_reads_back_identically(tmp_path):
    data = np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)
    path = write_volume(tmp_path / "v.nii.gz", data, spacing_um=(1.0, 2.0, 5.0))
    img = nib.load(str(path))
    for affine in (img.affine, img.get_qform(), img.get_sform()):
        assert "".join(nib.aff2axcodes(affine)).endswith("I")
        assert np.allclose(affine[:3, 3], 0.0)
    assert np.allclose(img.header.get_zooms(), (0.001, 0.002, 0.005))
    vol = read_volume(path)
    assert np.array_equal(vol.data, data)
    assert np.allclose(vol.spacing_um, (1.0, 2.0, 5.0), rtol=1e-6)


@pytest.mark.parametrize("corner", [True, False])
def test_old_convention_file_reads_with_same_data_and_spacing(tmp_path, corner):
    data = np.random.default_rng(1).random((6, 5, 4)).astype(np.float32)
    old = read_volume(save_old(tmp_path / "old.nii.gz", data, (2.0, 2.0, 5.0), corner))
    new = read_volume(write_volume(tmp_path / "new.nii.gz", data, spacing_um=(2.0, 2.0, 5.0)))
    assert "".join(nib.aff2axcodes(old.affine)) == "RAS"
    assert np.array_equal(old.data, data) and np.array_equal(new.data, data)
    assert np.allclose(old.spacing_um, new.spacing_um) and np.allclose(old.spacing_um, (2.0, 2.0, 5.0), rtol=1e-6)


def test_convention_change_is_recognised_only_between_octasim_conventions():
    spacing = (2.0, 2.0, 5.0)
    new = affine_for_spacing(spacing)
    new[:3] *= 1000.0  # um
    for old in legacy_affines_um(spacing):
        assert grid_differences(new, old)  # the world positions do differ
        assert octasim_convention_change(new, old) and octasim_convention_change(old, new)
    assert not octasim_convention_change(new, new)
    other = legacy_affines_um((2.0, 2.0, 4.0))[0]
    assert not octasim_convention_change(new, other)  # another voxel size
    flipped = np.diag([-2.0, 2.0, 5.0, 1.0])  # another orientation
    assert not octasim_convention_change(new, flipped)


def test_generated_sample_has_the_new_affine(tmp_path):
    from octasim.synth import SynthConfig, generate_dataset, load_dataset

    out = tmp_path / "data"
    generate_dataset(SynthConfig(shape=(32, 32, 32), voxel_size_um=4.0, seed=3), out, n=1, workers=1, progress=False)
    (sample,) = load_dataset(out)["samples"]
    for key in ("image", "label"):
        img = nib.load(str(out / sample[key]))
        assert nib.aff2axcodes(img.affine) == ("R", "A", "I")
        np.testing.assert_allclose(img.affine, affine_for_spacing(4.0), atol=1e-9)
        assert np.allclose(read_volume(out / sample[key]).spacing_um, 4.0, rtol=1e-6)
    assert (out / sample["qc"]).stat().st_size > 1000


def test_segment_keeps_an_old_convention_affine_and_it_evaluates(tmp_path, capsys):
    from octasim.segment import segment_files

    img = np.zeros((16, 16, 12), np.float32)
    img[4:12, 6:10, 3:9] = 1.0
    img += np.random.default_rng(2).random(img.shape).astype(np.float32) * 0.1
    label = (img > 0.5).astype(np.uint8)
    src = save_old(tmp_path / "scans" / "s.nii.gz", img, (2.0, 2.0, 4.0))
    save_old(tmp_path / "labels" / "s.nii.gz", label, (2.0, 2.0, 4.0))
    (res,) = segment_files([src], tmp_path / "seg", method="otsu", progress=False)
    assert res.ok, res.error
    for path in (res.prob_path, res.mask_path):
        out = nib.load(str(path))
        assert np.array_equal(out.affine, nib.load(str(src)).affine)  # exactly the input's
        assert np.array_equal(out.get_qform(), nib.load(str(src)).get_qform())
    csv_path = tmp_path / "r.csv"
    assert main(["evaluate", "--pred", str(tmp_path / "seg"), "--label", str(tmp_path / "labels"),
                 "--out", str(csv_path), "--no-topology"]) == 0
    with open(csv_path, newline="") as fh:
        row = next(csv.DictReader(fh))
    assert float(row["dice"]) > 0.9


@pytest.mark.parametrize("resample", [False, True])
def test_old_label_and_new_prediction_compare_voxel_by_voxel(tmp_path, capsys, resample):
    label = np.zeros((16, 16, 12), np.uint8)
    label[2:10, 3:6, 1:4] = 1  # near the surface, not symmetric in depth
    save_old(tmp_path / "lab" / "a.nii.gz", label, 4.0)  # a sample generated by an older octasim
    write_volume(tmp_path / "seg" / "a_mask.nii.gz", label, spacing_um=4.0)  # its scan regenerated now
    write_volume(tmp_path / "seg" / "a_prob.nii.gz", label.astype(np.float32), spacing_um=4.0)
    assert octasim_convention_change(affine_um(read_volume(tmp_path / "seg" / "a_mask.nii.gz")),
                                     affine_um(read_volume(tmp_path / "lab" / "a.nii.gz")))
    csv_path = tmp_path / "r.csv"
    args = ["evaluate", "--pred", str(tmp_path / "seg"), "--prob", str(tmp_path / "seg"),
            "--label", str(tmp_path / "lab"), "--out", str(csv_path), "--no-topology"]
    assert main(args + (["--resample-pred"] if resample else [])) == 0
    text = capsys.readouterr().out
    assert "different affine conventions" in text and "resampled" not in text
    with open(csv_path, newline="") as fh:
        row = next(csv.DictReader(fh))
    assert float(row["dice"]) == 1.0
