import numpy as np
import pytest
import tifffile

from octasim.convert import read_tiff_volume
from octasim.nifti import VolumeError, read_volume
from pipelines.cli import main


def test_tiff_zyx_becomes_xyz_with_spacing(tmp_path):
    stack = np.zeros((3, 4, 5), np.uint8)  # z, y, x
    stack[2, 1, 4] = 7
    tifffile.imwrite(tmp_path / "s.tif", stack, photometric="minisblack")
    vol = read_tiff_volume(tmp_path / "s.tif", (1.0, 1.0, 5.0))
    assert vol.data.shape == (5, 4, 3)
    assert vol.data[4, 1, 2] == 7
    assert np.allclose(np.diag(vol.affine)[:3], (0.001, 0.001, 0.005))


def test_convert_command_writes_nifti_and_binary_labels(tmp_path):
    stack = np.zeros((3, 4, 5), np.uint8)
    stack[0, 0, 0] = 255
    tifffile.imwrite(tmp_path / "label.tif", stack, photometric="minisblack")
    assert main(["convert", str(tmp_path / "label.tif"), "--out", str(tmp_path / "o"),
                 "--voxel-size", "1", "1", "5", "--binary"]) == 0
    vol = read_volume(tmp_path / "o" / "label.nii.gz", dtype=np.uint8)
    assert vol.data.max() == 1 and vol.data[0, 0, 0] == 1
    assert np.allclose(vol.spacing_um, (1, 1, 5), rtol=1e-6)


def test_bad_tiff_and_2d_tiff_errors(tmp_path):
    (tmp_path / "junk.tif").write_bytes(b"not a tiff")
    with pytest.raises(VolumeError, match="junk.tif"):
        read_tiff_volume(tmp_path / "junk.tif", 1.0)
    tifffile.imwrite(tmp_path / "flat.tif", np.zeros((4, 5), np.uint8))
    with pytest.raises(VolumeError, match="3D"):
        read_tiff_volume(tmp_path / "flat.tif", 1.0)
