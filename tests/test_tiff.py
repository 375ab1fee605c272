"""TIFF stacks: voxel size from OME-XML / ImageJ metadata, axes, channels, errors, write_tiff, read_scan."""
import nibabel as nib
import numpy as np
import pytest
import tifffile

from octasim.errors import OctasimError
from octasim.nifti import VolumeError, list_volumes
from octasim.scan import output_format, read_scan, write_like
from octasim.tiff import read_tiff, tiff_voxel_size, write_tiff


def zyx(shape=(4, 5, 6), dtype=np.uint16):
    """A (z, y, x) stack whose every voxel value encodes its position."""
    return np.arange(np.prod(shape)).reshape(shape).astype(dtype)


def ome(path, data, axes="ZYX", **sizes):
    tifffile.imwrite(path, data, ome=True, metadata={"axes": axes, **sizes})
    return path


def test_ome_physical_size_gives_spacing_and_xyz_layout(tmp_path):
    stack = zyx()
    vol = read_tiff(ome(tmp_path / "a.ome.tif", stack, PhysicalSizeX=0.5, PhysicalSizeY=0.6, PhysicalSizeZ=2.0))
    assert vol.data.shape == (6, 5, 4) and vol.data.dtype == np.uint16
    assert np.array_equal(vol.data, stack.transpose(2, 1, 0))  # (x, y, z) = (i, j, k), depth last
    assert vol.spacing_um == pytest.approx((0.5, 0.6, 2.0))
    assert np.allclose(np.abs(np.diag(vol.affine)[:3]), (0.0005, 0.0006, 0.002))  # mm
    assert vol.header is None and vol.file_axes == "zyx"
    assert tiff_voxel_size(tmp_path / "a.ome.tif")[1].startswith("the OME-XML")


def test_ome_units_are_converted_to_um(tmp_path):
    path = ome(tmp_path / "nm.tif", zyx(), PhysicalSizeX=500, PhysicalSizeXUnit="nm", PhysicalSizeY=0.0005,
               PhysicalSizeYUnit="mm", PhysicalSizeZ=3.0, PhysicalSizeZUnit="\u00b5m")
    assert read_tiff(path).spacing_um == pytest.approx((0.5, 0.5, 3.0))


@pytest.mark.parametrize("unit, scale", [("micron", 1.0), ("um", 1.0), ("\\u00B5m", 1.0),
                                         ("nm", 1e-3), ("mm", 1e3)])
def test_imagej_spacing_and_resolution(tmp_path, unit, scale):
    px, py, pz = 0.5 / scale, 0.25 / scale, 5.0 / scale  # in the file's unit
    tifffile.imwrite(tmp_path / "ij.tif", zyx(), imagej=True, resolution=(1 / px, 1 / py),
                     metadata={"spacing": pz, "unit": unit, "axes": "ZYX"})
    vol = read_tiff(tmp_path / "ij.tif")
    assert vol.spacing_um == pytest.approx((0.5, 0.25, 5.0))
    assert vol.data.shape == (6, 5, 4)


def test_imagej_resolution_unit_tag_when_no_unit_is_named(tmp_path):
    """Fiji: without unit= in the description the ResolutionUnit tag (cm, inch) is the unit."""
    tifffile.imwrite(tmp_path / "cm.tif", zyx(), imagej=True, resolution=(1e4, 5e3), resolutionunit="CENTIMETER",
                     metadata={"spacing": 3e-4, "axes": "ZYX"})
    assert read_tiff(tmp_path / "cm.tif").spacing_um == pytest.approx((1.0, 2.0, 3.0))


def test_multichannel_needs_a_channel(tmp_path):
    stack = zyx((4, 2, 5, 6))  # z, c, y, x
    path = ome(tmp_path / "two.tif", stack, axes="ZCYX", PhysicalSizeX=1, PhysicalSizeY=1, PhysicalSizeZ=2)
    with pytest.raises(VolumeError) as err:
        read_tiff(path)
    assert "two.tif" in str(err.value) and "2 channels" in str(err.value) and "--channel K" in str(err.value)
    vol = read_tiff(path, channel=1)
    assert np.array_equal(vol.data, stack[:, 1].transpose(2, 1, 0)) and vol.file_axes == "zyx"
    with pytest.raises(VolumeError, match="--channel 2 does not exist"):
        read_tiff(path, channel=2)
    czyx = ome(tmp_path / "czyx.tif", stack.transpose(1, 0, 2, 3), axes="CZYX", PhysicalSizeX=1, PhysicalSizeY=1,
               PhysicalSizeZ=2)
    assert np.array_equal(read_tiff(czyx, channel=0).data, stack[:, 0].transpose(2, 1, 0))


def test_singleton_time_axis_and_unknown_pages(tmp_path):
    ome(tmp_path / "t1.tif", zyx((1, 4, 5, 6)), axes="TZYX", PhysicalSizeX=1, PhysicalSizeY=1, PhysicalSizeZ=1)
    assert read_tiff(tmp_path / "t1.tif").data.shape == (6, 5, 4)
    tifffile.imwrite(tmp_path / "q.tif", zyx(), photometric="minisblack")  # tifffile: axes 'QYX'
    vol = read_tiff(tmp_path / "q.tif", voxel_size_um=(1, 1, 5))
    assert vol.data.shape == (6, 5, 4) and vol.file_axes == "zyx"
    tifffile.imwrite(tmp_path / "t3.tif", zyx((3, 4, 5, 6)), imagej=True, metadata={"axes": "TZYX"})
    with pytest.raises(VolumeError, match="time series of 3"):
        read_tiff(tmp_path / "t3.tif", voxel_size_um=1.0)


def test_no_metadata_is_an_error_naming_the_file_and_the_option(tmp_path):
    tifffile.imwrite(tmp_path / "raw.tif", zyx(), photometric="minisblack")
    with pytest.raises(VolumeError) as err:
        read_tiff(tmp_path / "raw.tif")
    assert "raw.tif" in str(err.value) and "--voxel-size X Y Z" in str(err.value)
    tifffile.imwrite(tmp_path / "uncal.tif", zyx(), imagej=True, metadata={"axes": "ZYX"})  # ImageJ, no unit
    with pytest.raises(VolumeError, match="uncal.tif.*--voxel-size"):
        read_tiff(tmp_path / "uncal.tif")


def test_implausible_metadata_is_refused(tmp_path):
    path = ome(tmp_path / "m.tif", zyx(), PhysicalSizeX=1, PhysicalSizeY=1, PhysicalSizeZ=1, PhysicalSizeZUnit="m")
    with pytest.raises(VolumeError, match="m.tif.*implausible.*--voxel-size"):
        read_tiff(path)
    assert read_tiff(path, voxel_size_um=(1, 1, 2)).spacing_um == (1.0, 1.0, 2.0)


def test_explicit_voxel_size_overrides_the_file(tmp_path):
    path = ome(tmp_path / "a.tif", zyx(), PhysicalSizeX=0.5, PhysicalSizeY=0.5, PhysicalSizeZ=2.0)
    vol = read_tiff(path, voxel_size_um=(1.0, 2.0, 3.0))
    assert vol.spacing_um == (1.0, 2.0, 3.0) and np.allclose(np.abs(np.diag(vol.affine)[:3]), (0.001, 0.002, 0.003))
    with pytest.raises(OctasimError, match="three positive numbers"):
        read_tiff(path, voxel_size_um=(1.0, 0.0, 3.0))


def test_axes_argument_overrides_the_file(tmp_path):
    stack = zyx()
    tifffile.imwrite(tmp_path / "a.tif", stack, photometric="minisblack")
    vol = read_tiff(tmp_path / "a.tif", 1.0, axes="xyz")  # the file's pages are x
    assert np.array_equal(vol.data, stack) and vol.file_axes == "xyz"
    with pytest.raises(VolumeError, match="x, y and z"):
        read_tiff(tmp_path / "a.tif", 1.0, axes="zyy")
    with pytest.raises(VolumeError, match="names 4 axes"):
        read_tiff(tmp_path / "a.tif", 1.0, axes="zcyx")


@pytest.mark.parametrize("content", [b"", b"not a tiff at all", b"II*\x00\x08\x00\x00\x00\xff\xff", b"MM\x00*"])
def test_damaged_and_non_tiff_files(tmp_path, content):
    (tmp_path / "bad.tif").write_bytes(content)
    with pytest.raises(VolumeError, match="bad.tif"):
        read_tiff(tmp_path / "bad.tif", 1.0)


def test_missing_2d_and_truncated(tmp_path):
    with pytest.raises(VolumeError, match="no such file"):
        read_tiff(tmp_path / "missing.tif")
    tifffile.imwrite(tmp_path / "flat.tif", np.zeros((5, 6), np.uint8))
    with pytest.raises(VolumeError, match="flat.tif.*2D"):
        read_tiff(tmp_path / "flat.tif", 1.0)
    write_tiff(tmp_path / "ok.tif", zyx((6, 5, 4)), (1, 1, 1))
    raw = (tmp_path / "ok.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(VolumeError, match="cut.tif"):
        read_tiff(tmp_path / "cut.tif")


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, bool])
def test_write_tiff_round_trip_and_fiji_calibration(tmp_path, dtype):
    data = (np.random.default_rng(0).random((6, 5, 4)) * 200).astype(dtype)  # (x, y, z)
    out = write_tiff(tmp_path / "r.tif", data, (0.5, 0.25, 5.0))
    vol = read_tiff(out)
    assert np.array_equal(vol.data, data) and vol.spacing_um == pytest.approx((0.5, 0.25, 5.0))
    with tifffile.TiffFile(out) as tif:  # what Fiji reads
        assert tif.is_imagej and tif.series[0].shape == (4, 5, 6) and tif.series[0].axes == "ZYX"
        assert tif.imagej_metadata["unit"] == "um" and tif.imagej_metadata["spacing"] == pytest.approx(5.0)
        num, den = tif.pages[0].tags["XResolution"].value
        assert den / num == pytest.approx(0.5)
    assert [p.name for p in tmp_path.iterdir()] == ["r.tif"]  # no temporary file left


def test_write_tiff_in_a_source_layout(tmp_path):
    data = np.random.default_rng(1).random((6, 5, 4)).astype(np.float32)
    write_tiff(tmp_path / "l.tif", data, (0.5, 0.25, 5.0), axes="yzx")
    assert tifffile.imread(tmp_path / "l.tif").shape == (5, 4, 6)
    vol = read_tiff(tmp_path / "l.tif", axes="yzx")
    assert np.array_equal(vol.data, data) and vol.spacing_um == pytest.approx((0.5, 0.25, 5.0))


def test_read_scan_dispatches_by_suffix(tmp_path):
    write_tiff(tmp_path / "a.tif", zyx((6, 5, 4), np.uint8), (1.0, 1.0, 2.0))
    vol = read_scan(tmp_path / "a.tif")
    assert vol.data.dtype == np.float32 and vol.spacing_um == (1.0, 1.0, 2.0)
    assert read_scan(tmp_path / "a.tif", voxel_size_um=(3, 3, 3)).spacing_um == (3.0, 3.0, 3.0)
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.diag([1.0, 1.0, 1.0, 1.0])), str(tmp_path / "n.nii"))
    with pytest.raises(VolumeError, match="implausible"):  # 1 mm voxels
        read_scan(tmp_path / "n.nii")
    nifti = read_scan(tmp_path / "n.nii", voxel_size_um=(2, 2, 2))
    assert nifti.spacing_um == (2.0, 2.0, 2.0) and nifti.header is not None and nifti.file_axes is None
    (tmp_path / "x.png").write_bytes(b"png")
    with pytest.raises(VolumeError, match="x.png.*.tif"):
        read_scan(tmp_path / "x.png")


def test_write_like_and_output_format(tmp_path):
    write_tiff(tmp_path / "a.tif", zyx((6, 5, 4), np.uint8), (1.0, 1.0, 2.0))
    vol = read_scan(tmp_path / "a.tif")
    assert output_format(tmp_path / "a.tif") == "tiff" and output_format(tmp_path / "a.tif", "nifti") == "nifti"
    with pytest.raises(OctasimError, match="output format"):
        output_format(tmp_path / "a.tif", "png")
    write_like(tmp_path / "m.tif", (vol.data > 50).astype(np.uint8), vol)
    write_like(tmp_path / "m.nii.gz", (vol.data > 50).astype(np.uint8), vol)
    assert tifffile.imread(tmp_path / "m.tif").shape == (4, 5, 6)
    img = nib.load(str(tmp_path / "m.nii.gz"))
    assert img.shape == (6, 5, 4) and np.allclose(img.header.get_zooms(), (0.001, 0.001, 0.002))


def test_list_volumes_takes_tiffs_when_asked(tmp_path):
    for name in ("b.nii.gz", "a.tif", "c.TIFF", "notes.txt", ".hidden.tif"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in list_volumes([tmp_path])] == ["b.nii.gz"]
    assert [p.name for p in list_volumes([tmp_path], tiff=True)] == ["a.tif", "b.nii.gz", "c.TIFF"]
