"""Reading and writing 3D volumes as NIfTI through nibabel (headers in mm, octasim in um)."""
from __future__ import annotations

import gzip
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from octasim.atomic import atomic_path
from octasim.errors import OctasimError

NIFTI_SUFFIXES = (".nii", ".nii.gz")


class VolumeError(OctasimError):
    """A volume file cannot be used; the message names the file and the problem."""


@dataclass
class Volume:
    """A 3D scan: ``data`` indexed (i, j, k), the affine and header it came with, voxel size in um.

    ``file_axes``: for a volume read from TIFF (``header`` None), the file's order of the x, y, z
    array axes (e.g. 'zyx'), so outputs can be written in the same layout; None for NIfTI.
    """

    data: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header | None
    spacing_um: tuple[float, float, float]
    path: Path | None = None
    file_axes: str | None = None


def is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


#: micrometres per unit of the NIfTI header's spatial unit (an unset unit means mm, as viewers assume)
UM_PER_UNIT = {"meter": 1e6, "mm": 1e3, "micron": 1.0, "unknown": 1e3}


def spacing_from_affine(affine: np.ndarray, unit: str = "mm") -> tuple[float, float, float]:
    """Voxel size in um along i, j, k: column norms of the affine, given in the header's ``unit``."""
    scale = UM_PER_UNIT.get(unit, 1e3)
    return tuple(float(v) * scale for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))


def affine_for_spacing(spacing_um) -> np.ndarray:
    """The affine (voxel index -> world, mm) of every volume octasim writes from a voxel size in um
    along i, j, k: i points right (+x), j anterior (+y) and depth k, which increases into the brain,
    inferior (-z), so viewers show the brain surface at the top (axis codes ``RAI``). The origin
    (translation) is the centre of voxel (0, 0, 0), at world 0.

    Files from octasim before this convention have depth pointing superior (+z, ``RAS``) and the origin
    half a voxel from 0; they read the same (voxel size from the column norms, data untouched).
    """
    spacing = np.broadcast_to(np.asarray(spacing_um, dtype=float), (3,))
    return np.diag([spacing[0] / 1000.0, spacing[1] / 1000.0, -spacing[2] / 1000.0, 1.0])


def affine_um(volume: Volume) -> np.ndarray:
    """The volume's affine (voxel index -> world position) in um, whatever the header's spatial unit."""
    out = np.array(volume.affine, dtype=float)
    out[:3] *= UM_PER_UNIT.get(volume.header.get_xyzt_units()[0], 1e3)
    return out


def _xyz(values) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def grid_differences(affine_a: np.ndarray, affine_b: np.ndarray, rel_tol: float = 1e-4,
                     voxel_tol: float = 1e-3) -> list[str]:
    """How the voxel grids of two affines (in um, see :func:`affine_um`) differ, as phrases naming
    spacing, orientation and origin; empty when they match.

    Tolerances: voxel sizes ``rel_tol`` relative, axis directions ``rel_tol`` (about 0.006 degrees),
    origins ``voxel_tol`` of the smaller voxel.
    """
    a, b = np.asarray(affine_a, float), np.asarray(affine_b, float)
    sa, sb = np.linalg.norm(a[:3, :3], axis=0), np.linalg.norm(b[:3, :3], axis=0)
    out = []
    if np.any(np.abs(sa - sb) > rel_tol * np.maximum(sa, sb)):
        out.append(f"voxel size {_xyz(sa)} um vs {_xyz(sb)} um")
    da, db = a[:3, :3] / np.where(sa > 0, sa, 1.0), b[:3, :3] / np.where(sb > 0, sb, 1.0)
    if np.abs(da - db).max() > rel_tol:
        ca, cb = "".join(nib.aff2axcodes(a)), "".join(nib.aff2axcodes(b))
        if ca != cb:
            out.append(f"orientation {ca} vs {cb} (the directions the voxel axes point in: Right/Left, "
                       "Anterior/Posterior, Superior/Inferior)")
        else:
            angle = np.degrees(np.arccos(np.clip((da * db).sum(axis=0), -1.0, 1.0))).max()
            out.append(f"orientation: axes rotated by up to {angle:.3g} degrees")
    if np.linalg.norm(a[:3, 3] - b[:3, 3]) > voxel_tol * min(sa.min(), sb.min()):
        out.append(f"origin (centre of voxel 0, 0, 0) at {_xyz(a[:3, 3])} um vs {_xyz(b[:3, 3])} um")
    return out


def legacy_affines_um(spacing_um) -> list[np.ndarray]:
    """The affines (um) octasim wrote before depth pointed inferior, for a voxel size in um along i, j, k:
    depth superior (+z, ``RAS``) with the origin at world 0 (``write_volume(spacing_um=...)``, TIFF conversion) or
    half a voxel from it (generated samples: the patch corner at world 0)."""
    spacing = np.broadcast_to(np.asarray(spacing_um, dtype=float), (3,))
    plain = np.diag([*spacing, 1.0])
    corner = plain.copy()
    corner[:3, 3] = spacing / 2.0
    return [plain, corner]


def octasim_convention_change(affine_a: np.ndarray, affine_b: np.ndarray) -> bool:
    """True when two affines (um, see :func:`affine_um`) are octasim's current one and an older
    octasim's (:func:`legacy_affines_um`) for the same voxel size: files written from the same voxels
    before and after depth was made to point inferior, whose arrays correspond voxel for voxel although
    their world positions differ."""
    a, b = np.asarray(affine_a, float), np.asarray(affine_b, float)
    spacing = np.linalg.norm(a[:3, :3], axis=0)
    current = affine_for_spacing(spacing)
    current[:3, :3] *= 1000.0  # um
    for new, old in ((a, b), (b, a)):
        if not grid_differences(new, current) and any(not grid_differences(old, leg)
                                                      for leg in legacy_affines_um(spacing)):
            return True
    return False


def resample_to_grid(data: np.ndarray, affine_from: np.ndarray, affine_to: np.ndarray, shape,
                     order: int = 0) -> np.ndarray:
    """``data`` (on the grid of ``affine_from``) resampled onto the grid ``affine_to`` of ``shape``
    voxels through world coordinates (affines in the same unit, e.g. um from :func:`affine_um`).

    order: 0 nearest neighbour (masks, labels), 1 linear (probabilities, intensities). Voxels
    outside ``data`` become 0.
    """
    from scipy import ndimage

    to_source = np.linalg.inv(np.asarray(affine_from, float)) @ np.asarray(affine_to, float)
    return ndimage.affine_transform(np.asarray(data), to_source[:3, :3], offset=to_source[:3, 3],
                                    output_shape=tuple(int(n) for n in shape), order=order, mode="constant",
                                    cval=0.0)


#: the errors a truncated or corrupt file gives whose message says enough without the type's name
_READ_ERRORS = (EOFError, OSError, zlib.error, gzip.BadGzipFile, nib.filebasedimages.ImageFileError, ValueError)
#: most bytes a gzip (deflate) stream can expand one byte into; deflate's limit is about 1032
_GZIP_MAX_RATIO = 1100


def _check_declared_size(path: Path, img) -> None:
    """Refuse a file too short for the voxels its header announces, before any memory is allocated
    for them (a damaged header can announce terabytes). A .nii.gz is checked against the most a
    gzip stream of its size can hold."""
    proxy = img.dataobj  # the on-disk layout: shape, dtype and where the voxels start
    shape = tuple(int(n) for n in proxy.shape)
    dtype = np.dtype(proxy.dtype)
    need = int(getattr(proxy, "offset", 0)) + math.prod(shape) * dtype.itemsize
    size = path.stat().st_size
    gz = path.name.lower().endswith(".gz")
    if need > (size * _GZIP_MAX_RATIO if gz else size):
        what = f"a {size}-byte gzip file can hold" if gz else f"the file holds ({size} bytes)"
        raise VolumeError(f"{path}: the header announces {' x '.join(map(str, shape))} voxels of {dtype} "
                          f"({need} bytes with the header), more than {what}: the file is truncated or its "
                          "header is corrupt")


def read_volume(path: str | Path, dtype=np.float32) -> Volume:
    """Load a 3D NIfTI (a 4D file with a single channel is squeezed) as ``dtype``.

    Raises VolumeError naming the file for a missing, truncated or corrupt file (also a header that
    announces more voxels than the file holds), a 2D image, a 4D image with more than one channel,
    voxels that are not real numbers (complex, RGB), or NaN / infinite values.
    """
    path = Path(path)
    if not path.exists():
        raise VolumeError(f"{path}: no such file")
    if not is_nifti(path):
        hint = (" (TIFF stacks: octasim.scan.read_scan reads both formats; `octasim segment` takes them directly "
                "and `octasim convert FILE --out DIR` turns them into NIfTI)"
                if path.suffix.lower() in (".tif", ".tiff") else "")
        raise VolumeError(f"{path}: not a NIfTI file (expected .nii or .nii.gz){hint}")
    try:
        img = nib.load(str(path))
        _check_declared_size(path, img)
        data = np.asarray(img.dataobj)
    except VolumeError:
        raise
    except Exception as exc:  # nibabel, gzip, zlib and numpy raise many types for damaged files
        reason = str(exc) if isinstance(exc, _READ_ERRORS) else f"{type(exc).__name__}: {exc}"
        raise VolumeError(f"{path}: cannot read the image, the file is truncated or corrupt ({reason})") from exc
    if data.dtype.kind not in "biuf":
        raise VolumeError(f"{path}: voxels of type {data.dtype} (e.g. complex or RGB) are not supported; "
                          "octasim needs a single-channel image of integers or floats")
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    elif data.ndim == 5 and data.shape[3:] == (1, 1):
        data = data[..., 0, 0]
    if data.ndim == 2 or (data.ndim == 3 and 1 in data.shape):
        raise VolumeError(f"{path}: the image is 2D (shape {data.shape}); octasim needs a 3D volume")
    if data.ndim != 3:
        raise VolumeError(f"{path}: the image has shape {data.shape}; octasim needs a 3D volume "
                          "(a 4D image must have a single channel)")
    data = data.astype(dtype, copy=False)
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        raise VolumeError(f"{path}: the image contains NaN or infinite values")
    affine = img.affine if img.affine is not None else np.eye(4)
    try:
        unit = img.header.get_xyzt_units()[0]
    except KeyError:  # nibabel knows only the NIfTI unit codes
        raise VolumeError(f"{path}: the header field xyzt_units ({int(img.header['xyzt_units'])}) holds no valid "
                          "NIfTI unit code; the header is corrupt") from None
    return Volume(data, np.asarray(affine, float), img.header, spacing_from_affine(affine, unit), path)


#: voxel sizes (um) a microscope or OCT scan can have; a header outside this range has a wrong unit or spacing
PLAUSIBLE_VOXEL_UM = (0.05, 100.0)


def _stored_pixdim(volume: Volume) -> np.ndarray:
    """pixdim[1:4] as the file stores them (nibabel replaces zeros by 1 when it loads a header)."""
    try:
        with nib.openers.ImageOpener(str(volume.path)) as f:
            return type(volume.header).from_fileobj(f, check=False)["pixdim"][1:4]
    except Exception:  # not a file, or a header nibabel reads only with its fixes
        return volume.header["pixdim"][1:4]


def check_voxel_size(volume: Volume) -> tuple[float, float, float]:
    """The header's voxel size (um along i, j, k) when it is plausible for a microscope or OCT scan
    (:data:`PLAUSIBLE_VOXEL_UM`, 0.05-100 um per voxel); else VolumeError naming the file, the header
    fields pixdim and xyzt_units, and ``--voxel-size X Y Z`` as the way out."""
    lo, hi = PLAUSIBLE_VOXEL_UM
    spacing = volume.spacing_um
    if all(lo <= s <= hi for s in spacing):  # False for NaN too
        return spacing
    unit = volume.header.get_xyzt_units()[0]
    unit_text = "unit unset, read as mm" if unit == "unknown" else f"unit {unit}"
    raise VolumeError(
        f"{volume.path}: the header gives an implausible voxel size of {_xyz(spacing)} um (pixdim "
        f"{_xyz(_stored_pixdim(volume))}, xyzt_units {int(volume.header['xyzt_units'])}: {unit_text}); "
        f"microscope and OCT scans have {lo:g}-{hi:g} um per voxel, so the header's spacing or unit is wrong "
        "(e.g. micrometres stored without a unit, or pixdim 0). Give the true voxel size with "
        "--voxel-size X Y Z (um along i, j, k)")


def write_volume(path: str | Path, data: np.ndarray, affine: np.ndarray | None = None,
                 spacing_um=None, header: nib.Nifti1Header | None = None) -> Path:
    """Write ``data`` as NIfTI atomically (temporary name, then rename).

    Give either ``affine`` (mm, e.g. the input scan's, kept exactly) or ``spacing_um`` (voxel size in um
    along i, j, k; the affine is :func:`affine_for_spacing`'s: depth inferior, origin at voxel 0's centre).
    With ``header`` (an input scan's) its spatial unit and qform / sform codes are kept, so the
    output overlays the input exactly; otherwise the unit is mm and both codes are 1 (scanner), so
    ITK-SNAP, Fiji, napari and 3D Slicer show the physical scale.
    """
    if affine is None:
        if spacing_um is None:
            raise ValueError("write_volume needs an affine or a voxel size")
        affine = affine_for_spacing(spacing_um)
    hdr = header.copy() if header is not None else None
    img = nib.Nifti1Image(np.asarray(data), affine, hdr)
    img.set_data_dtype(np.asarray(data).dtype)
    if header is not None:
        unit = header.get_xyzt_units()[0]
        img.header.set_xyzt_units(unit if unit != "unknown" else "mm", header.get_xyzt_units()[1])
        qform, qcode = header.get_qform(coded=True)
        sform, scode = header.get_sform(coded=True)
        img.set_sform(affine, code=int(scode) if scode else 1)
        same_q = qform is not None and np.allclose(qform, affine)
        img.set_qform(affine if (same_q or qform is None) else qform, code=int(qcode) if qcode else 1)
    else:
        img.header.set_xyzt_units("mm", "sec")
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
    if np.issubdtype(np.asarray(data).dtype, np.floating):
        img.header["scl_slope"], img.header["scl_inter"] = 1.0, 0.0
    path = Path(path)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path


def list_volumes(inputs, tiff: bool = False) -> list[Path]:
    """Expand files and folders into a sorted list of volume files (folders: their *.nii / *.nii.gz,
    and with ``tiff`` also *.tif / *.tiff; hidden files skipped). Files given are kept as they are."""
    from octasim.tiff import is_tiff

    found: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            found.extend(sorted(p for p in item.iterdir() if (is_nifti(p) or (tiff and is_tiff(p)))
                                and not p.name.startswith(".")))
        else:
            found.append(item)
    return found
