import gzip

import nibabel as nib
import numpy as np
import pytest

from octasim.nifti import (VolumeError, check_voxel_size, list_volumes, read_volume, spacing_from_affine,
                           write_volume)


def test_round_trip_keeps_data_and_spacing_in_mm(tmp_path):
    data = np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)
    path = write_volume(tmp_path / "v.nii.gz", data, spacing_um=(1.0, 1.0, 5.0))
    img = nib.load(str(path))
    assert np.allclose(img.header.get_zooms(), (0.001, 0.001, 0.005))
    assert img.header.get_xyzt_units()[0] == "mm"
    vol = read_volume(path)
    assert np.array_equal(vol.data, data)
    assert np.allclose(vol.spacing_um, (1.0, 1.0, 5.0), rtol=1e-6)


def test_write_keeps_input_affine_and_dtype(tmp_path):
    affine = np.array([[0, -0.002, 0, 1.0], [0.002, 0, 0, 2.0], [0, 0, 0.004, 3.0], [0, 0, 0, 1]])
    path = write_volume(tmp_path / "m.nii", np.ones((3, 3, 3), np.uint8), affine=affine)
    img = nib.load(str(path))
    assert np.allclose(img.affine, affine)
    assert img.get_data_dtype() == np.uint8
    assert np.allclose(spacing_from_affine(affine), (2.0, 2.0, 4.0))


def test_single_channel_4d_is_squeezed(tmp_path):
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4, 1), np.float32), np.eye(4)), str(tmp_path / "c.nii.gz"))
    assert read_volume(tmp_path / "c.nii.gz").data.shape == (4, 4, 4)


@pytest.mark.parametrize("shape, message", [((8, 8), "2D"), ((8, 8, 1), "2D"), ((4, 4, 4, 3), "single channel")])
def test_wrong_dimensionality_is_named(tmp_path, shape, message):
    path = tmp_path / "bad.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(shape, np.float32), np.eye(4)), str(path))
    with pytest.raises(VolumeError, match=message) as err:
        read_volume(path)
    assert "bad.nii.gz" in str(err.value)


def test_nan_missing_and_truncated_files(tmp_path):
    data = np.ones((4, 4, 4), np.float32)
    data[1, 1, 1] = np.nan
    write_volume(tmp_path / "nan.nii.gz", data, spacing_um=2)
    with pytest.raises(VolumeError, match="NaN"):
        read_volume(tmp_path / "nan.nii.gz")
    with pytest.raises(VolumeError, match="no such file"):
        read_volume(tmp_path / "missing.nii.gz")
    good = write_volume(tmp_path / "good.nii.gz", np.ones((20, 20, 20), np.float32), spacing_um=2)
    raw = good.read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(VolumeError, match="truncated") as err:
        read_volume(tmp_path / "cut.nii.gz")
    assert "cut.nii.gz" in str(err.value)
    assert gzip.decompress(raw)  # the original is intact


def test_list_volumes_expands_folders(tmp_path):
    for name in ("b.nii.gz", "a.nii", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in list_volumes([tmp_path])] == ["a.nii", "b.nii.gz"]


def test_micron_unit_headers_give_um_spacing_and_outputs_keep_them(tmp_path):
    img = nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.diag([0.994, 0.994, 5.0, 1.0]))
    img.header.set_xyzt_units("micron")
    img.set_sform(np.diag([0.994, 0.994, 5.0, 1.0]), code=2)  # aligned space
    nib.save(img, str(tmp_path / "um.nii.gz"))
    vol = read_volume(tmp_path / "um.nii.gz")
    assert np.allclose(vol.spacing_um, (0.994, 0.994, 5.0), rtol=1e-6)
    out = write_volume(tmp_path / "mask.nii.gz", np.ones((4, 4, 4), np.uint8), affine=vol.affine, header=vol.header)
    again = read_volume(out)
    assert np.allclose(again.spacing_um, vol.spacing_um, rtol=1e-6)
    assert int(nib.load(str(out)).header["sform_code"]) == 2


def test_tiff_input_gets_a_conversion_hint(tmp_path):
    (tmp_path / "stack.tif").write_bytes(b"II*\x00")
    with pytest.raises(VolumeError, match="octasim convert FILE --out DIR"):
        read_volume(tmp_path / "stack.tif")


def test_grid_comparison_in_um_whatever_the_header_unit(tmp_path):
    from octasim.nifti import affine_um, grid_differences, read_volume

    data = np.zeros((4, 5, 6), np.uint8)
    mm = nib.Nifti1Image(data, np.diag([0.002, 0.002, 0.005, 1.0]))
    mm.header.set_xyzt_units("mm")
    um = nib.Nifti1Image(data, np.diag([2.0, 2.0, 5.0, 1.0]))
    um.header.set_xyzt_units("micron")
    nib.save(mm, str(tmp_path / "mm.nii.gz"))
    nib.save(um, str(tmp_path / "um.nii.gz"))
    a, b = affine_um(read_volume(tmp_path / "mm.nii.gz")), affine_um(read_volume(tmp_path / "um.nii.gz"))
    assert grid_differences(a, b) == []
    b[0, 3] += 0.01  # 1/200 of a voxel: beyond the 1e-3 voxel tolerance
    assert grid_differences(a, b) == ["origin (centre of voxel 0, 0, 0) at (0, 0, 0) um vs (0.01, 0, 0) um"]
    b[0, 3] = 0.001  # 1/2000 of a voxel: within it
    assert grid_differences(a, b) == []


def test_implausible_header_voxel_size_names_the_fields(tmp_path):
    data = np.ones((4, 4, 4), np.float32)
    unset = nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]))  # um written without a unit: 2 mm
    nib.save(unset, str(tmp_path / "unset.nii.gz"))
    zero = nib.Nifti1Image(data, None)
    zero.header["pixdim"][1:4] = 0.0  # nibabel reads 0 as 1 mm
    nib.save(zero, str(tmp_path / "zero.nii.gz"))
    for name, text in [("unset.nii.gz", "(2000, 2000, 2000) um (pixdim (2, 2, 2), xyzt_units 0: unit unset"),
                       ("zero.nii.gz", "pixdim (0, 0, 0)")]:
        with pytest.raises(VolumeError) as info:
            check_voxel_size(read_volume(tmp_path / name))
        message = str(info.value)
        assert str(tmp_path / name) in message and text in message, message
        assert "xyzt_units" in message and "--voxel-size X Y Z" in message
    ok = write_volume(tmp_path / "ok.nii.gz", data, spacing_um=(0.994, 0.994, 5.0))
    assert check_voxel_size(read_volume(ok)) == pytest.approx((0.994, 0.994, 5.0))
