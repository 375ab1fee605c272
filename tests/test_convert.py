import numpy as np
import pytest
import tifffile

from octasim.nifti import VolumeError, read_volume
from octasim.tiff import read_tiff
from octasim.cli import main


def test_tiff_zyx_becomes_xyz_with_spacing(tmp_path):
    stack = np.zeros((3, 4, 5), np.uint8)  # z, y, x
    stack[2, 1, 4] = 7
    tifffile.imwrite(tmp_path / "s.tif", stack, photometric="minisblack")
    vol = read_tiff(tmp_path / "s.tif", (1.0, 1.0, 5.0), axes="zyx")
    assert vol.data.shape == (5, 4, 3)
    assert vol.data[4, 1, 2] == 7
    assert np.allclose(np.abs(np.diag(vol.affine)[:3]), (0.001, 0.001, 0.005))


def test_convert_command_writes_nifti_and_binary_labels(tmp_path, capsys):
    stack = np.zeros((3, 4, 5), np.uint8)
    stack[0, 0, 0] = 255
    tifffile.imwrite(tmp_path / "label.tif", stack, photometric="minisblack")
    assert main(["convert", str(tmp_path / "label.tif"), "--out", str(tmp_path / "o"),
                 "--voxel-size", "1", "1", "5", "--binary"]) == 0
    vol = read_volume(tmp_path / "o" / "label.nii.gz", dtype=np.uint8)
    assert vol.data.max() == 1 and vol.data[0, 0, 0] == 1
    assert np.allclose(vol.spacing_um, (1, 1, 5), rtol=1e-6)
    assert "from --voxel-size" in capsys.readouterr().out


def test_convert_takes_the_voxel_size_and_channel_from_the_file(tmp_path, capsys):
    stack = np.arange(3 * 2 * 4 * 5, dtype=np.uint16).reshape(3, 2, 4, 5)  # z, c, y, x
    tifffile.imwrite(tmp_path / "two.tif", stack, imagej=True, resolution=(2.0, 2.0),
                     metadata={"axes": "ZCYX", "spacing": 5.0, "unit": "micron"})
    assert main(["convert", str(tmp_path / "two.tif"), "--out", str(tmp_path / "o"), "--channel", "1"]) == 0
    vol = read_volume(tmp_path / "o" / "two.nii.gz", dtype=np.uint16)
    assert np.array_equal(vol.data, stack[:, 1].transpose(2, 1, 0))
    assert np.allclose(vol.spacing_um, (0.5, 0.5, 5.0), rtol=1e-6)
    assert "from the ImageJ metadata" in capsys.readouterr().out
    assert main(["convert", str(tmp_path / "two.tif"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "two.tif" in err and "2 channels" in err and "--channel K" in err


def test_convert_without_metadata_or_voxel_size_says_how(tmp_path, capsys):
    tifffile.imwrite(tmp_path / "raw.tif", np.zeros((3, 4, 5), np.uint8), photometric="minisblack")
    assert main(["convert", str(tmp_path / "raw.tif"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "raw.tif" in err and "--voxel-size X Y Z" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_bad_tiff_and_2d_tiff_errors(tmp_path):
    (tmp_path / "junk.tif").write_bytes(b"not a tiff")
    with pytest.raises(VolumeError, match="junk.tif"):
        read_tiff(tmp_path / "junk.tif", 1.0)
    tifffile.imwrite(tmp_path / "flat.tif", np.zeros((4, 5), np.uint8))
    with pytest.raises(VolumeError, match="2D"):
        read_tiff(tmp_path / "flat.tif", 1.0)
