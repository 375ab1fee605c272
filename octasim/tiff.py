"""TIFF stacks (Fiji / ImageJ, OME-TIFF, microscope software) <-> volumes in octasim's layout.

Reading takes the voxel size from the file (OME-XML ``PhysicalSize*``, or ImageJ's ``spacing`` / ``unit``
with the XResolution / YResolution tags) and the array axes from tifffile; the volume comes back
indexed (x, y, z) = (i, j, k) with depth (z) last, spacing in um. Writing makes an ImageJ hyperstack
(pages z, rows y, columns x, calibration in um) that Fiji opens at the right scale.
"""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Sequence

import numpy as np

from octasim.atomic import atomic_path
from octasim.nifti import PLAUSIBLE_VOXEL_UM, Volume, VolumeError, affine_for_spacing
from octasim.scan import check_spacing

TIFF_SUFFIXES = (".tif", ".tiff")

#: micrometres per length unit, as OME-XML and ImageJ name them (keys lower-case); ImageJ writes the
#: micro sign escaped, as the six characters ``\u00B5``
UM_PER_TIFF_UNIT = {
    **dict.fromkeys(("um", "\u00b5m", "\u03bcm", "\\u00b5m", "micron", "microns", "micrometer", "micrometers",
                     "micrometre", "micrometres"), 1.0),
    **dict.fromkeys(("nm", "nanometer", "nanometers", "nanometre", "nanometres"), 1e-3),
    **dict.fromkeys(("mm", "millimeter", "millimeters", "millimetre", "millimetres"), 1e3),
    **dict.fromkeys(("cm", "centimeter", "centimeters", "centimetre", "centimetres"), 1e4),
    **dict.fromkeys(("m", "meter", "meters", "metre", "metres"), 1e6),
    **dict.fromkeys(("inch", "inches", "in"), 25400.0),
}
#: TIFF ResolutionUnit tag values: 2 inch, 3 centimetre (1: none, the unit is ImageJ's)
_RESOLUTION_UNITS = {2: "inch", 3: "cm"}
#: tifffile axis codes for a stack of pages of unknown meaning (taken as z when no Z axis is named)
_PAGE_AXES = "QIOLAPRHEV"


def is_tiff(path: str | Path) -> bool:
    """True for a .tif / .tiff file name (case-insensitive)."""
    return str(path).lower().endswith(TIFF_SUFFIXES)


def _um_per(unit) -> float | None:
    """um per ``unit`` (a name as OME / ImageJ write it), None when it is no length unit (e.g. 'pixel')."""
    return UM_PER_TIFF_UNIT.get(str(unit).strip().lower()) if unit is not None else None


def _positive(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def _ome_spacing(xml: str) -> tuple[tuple[float, float, float] | None, str]:
    """(x, y, z voxel size in um or None, where it came from or why it is missing) from OME-XML."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        return None, f"its OME-XML metadata cannot be parsed ({exc})"
    pixels = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return None, "its OME-XML metadata has no Pixels element"
    out, missing = [], []
    for axis in "XYZ":
        value = pixels.get(f"PhysicalSize{axis}")
        unit = pixels.get(f"PhysicalSize{axis}Unit", "\u00b5m")
        size, scale = _positive(value), _um_per(unit)
        if value is None:
            missing.append(f"PhysicalSize{axis}")
        elif size is None or scale is None:
            missing.append(f"PhysicalSize{axis} ({value!r} {unit!r} is no positive length)")
        else:
            out.append(size * scale)
    if missing:
        return None, f"its OME-XML metadata lacks {', '.join(missing)}"
    return tuple(out), "the OME-XML metadata (PhysicalSizeX/Y/Z)"


def _tag(page, name: str):
    tag = page.tags.get(name)
    return None if tag is None else tag.value


def _pixel_size(resolution, default: float = 1.0) -> float | None:
    """Pixel size in the resolution's unit from a TIFF rational (pixels per unit); absent: ``default``."""
    if resolution is None:
        return default
    try:
        num, den = resolution
        return _positive(float(den) / float(num)) if float(num) else None
    except (TypeError, ValueError, ZeroDivisionError):
        return None


def _imagej_spacing(meta: dict, page) -> tuple[tuple[float, float, float] | None, str]:
    """(x, y, z voxel size in um or None, source or reason) as Fiji reads it: the description's
    ``unit`` (else the ResolutionUnit tag's inch / cm), x / y = 1 / XResolution / YResolution, z =
    ``spacing`` (1 when absent), all in that unit."""
    res_unit = _tag(page, "ResolutionUnit")
    unit = meta.get("unit") or _RESOLUTION_UNITS.get(int(res_unit) if res_unit is not None else 1)
    scale = _um_per(unit)
    if scale is None:
        return None, (f"its ImageJ metadata has no length unit (unit {unit!r})" if unit
                      else "its ImageJ metadata is uncalibrated (no unit)")
    sizes = []
    for axis, value in (("x", _pixel_size(_tag(page, "XResolution"))), ("y", _pixel_size(_tag(page, "YResolution"))),
                        ("z", _positive(meta.get("spacing", 1.0)))):
        axis_scale = _um_per(meta.get(f"{axis}unit", unit)) if axis != "x" else scale
        if value is None or axis_scale is None:
            return None, f"its ImageJ metadata gives no usable {axis} pixel size"
        sizes.append(value * axis_scale)
    return tuple(sizes), f"the ImageJ metadata (unit {unit!r})"


def _file_spacing(tif) -> tuple[tuple[float, float, float] | None, str]:
    """Voxel size (um along x, y, z) from an open tifffile.TiffFile: OME-XML first, then ImageJ; else
    None and the reason."""
    if tif.is_ome and tif.ome_metadata:
        return _ome_spacing(tif.ome_metadata)
    meta = tif.imagej_metadata
    if meta is not None:
        return _imagej_spacing(meta, tif.pages[0])
    return None, "it has no OME-XML or ImageJ metadata"


def _normalize_axes(path: Path, shape: tuple[int, ...], file_axes: str, axes: str | None) -> tuple[str, list[int]]:
    """Axis letters (x, y, z and at most one c for channels) for an array of ``shape``, and the array
    axes to squeeze (size 1, no meaning here). ``axes`` (the caller's, e.g. 'zyx') overrides tifffile's
    ``file_axes``."""
    shape_text = " x ".join(map(str, shape))
    if axes is not None:
        want = axes.lower()
        if sorted(want.replace("c", "")) != ["x", "y", "z"] or want.count("c") > 1:
            raise VolumeError(f"axes must name x, y and z once each (and optionally c, the channel), e.g. 'zyx' or "
                              f"'zcyx', got {axes!r}")
        if len(want) == len(shape):
            return want, []
        drop = [n for n, size in enumerate(shape) if size == 1]
        if len(want) == len(shape) - len(drop):
            return want, drop
        raise VolumeError(f"{path}: --axes {axes!r} names {len(want)} axes but the TIFF's array is {shape_text} "
                          f"(axes {file_axes!r} according to the file)")
    letters, drop = [], []
    for n, (letter, size) in enumerate(zip(file_axes.upper(), shape)):
        if size == 1 and letter not in "XY":
            drop.append(n)
        elif letter == "T":
            raise VolumeError(f"{path}: the TIFF is a time series of {size} time points (axes {file_axes!r}, "
                              f"{shape_text}); octasim needs one 3D stack (save a single time point, e.g. in Fiji, "
                              "or give the array's axis order, e.g. --axes zyx, if these are depth slices)")
        else:
            letters.append(letter)
    channels = [c for c in letters if c in "CS"]
    if len(channels) > 1:
        raise VolumeError(f"{path}: the TIFF has two channel axes (axes {file_axes!r}, {shape_text}); save one "
                          "channel as a grey-level stack")
    pages = [c for c in letters if c not in "XYZCS"]
    if "Z" not in letters and len(pages) == 1:  # pages of unknown meaning (tifffile's Q, I ...): the stack's z
        letters[letters.index(pages[0])] = "Z"
        pages = []
    if pages or sorted(c for c in letters if c in "XYZ") != ["X", "Y", "Z"]:
        if "Z" not in letters and not pages:
            hint = (" (if its channels are depth slices, give the axis order, e.g. --axes zyx)" if channels else "")
            raise VolumeError(f"{path}: the image is 2D ({shape_text}, axes {file_axes!r}); octasim needs a 3D "
                              f"stack{hint}")
        raise VolumeError(f"{path}: cannot tell which array axis is depth (axes {file_axes!r}, {shape_text}); give "
                          "the order of the array axes, e.g. --axes zyx")
    return "".join(letters).lower().replace("s", "c"), drop


def _read(path: str | Path, voxel_size_um, channel: int | None, axes: str | None,
          ) -> tuple[Volume, str]:
    import tifffile

    path = Path(path)
    if not path.exists():
        raise VolumeError(f"{path}: no such file")
    if path.is_dir():
        raise VolumeError(f"{path}: is a folder, not a TIFF file")
    if path.stat().st_size == 0:
        raise VolumeError(f"{path}: the file is empty (0 bytes), not a TIFF")
    override = check_spacing(voxel_size_um) if voxel_size_um is not None else None
    if channel is not None and (not isinstance(channel, (int, np.integer)) or channel < 0):
        raise VolumeError(f"--channel must be a channel number >= 0 (0 = the first), got {channel!r}")
    try:
        with tifffile.TiffFile(str(path)) as tif:
            if not tif.series:
                raise VolumeError(f"{path}: the TIFF holds no image")
            series = tif.series[0]
            file_axes, shape = str(series.axes), tuple(int(n) for n in series.shape)
            spacing, source = (override, "--voxel-size") if override else _file_spacing(tif)
            letters, drop = _normalize_axes(path, shape, file_axes, axes)
            if spacing is None:
                raise VolumeError(f"{path}: the TIFF carries no usable voxel size ({source}); pass --voxel-size X Y Z "
                                  "(um along x, y and z = depth)")
            data = series.asarray()
    except VolumeError:
        raise
    except Exception as exc:  # tifffile, numpy and the codecs raise many types for damaged files
        raise VolumeError(f"{path}: cannot read the TIFF, the file is damaged or not a TIFF "
                          f"({type(exc).__name__}: {exc})") from exc
    if tuple(data.shape) != shape:
        raise VolumeError(f"{path}: the TIFF's pages do not match its declared shape {shape}; the file is damaged")
    data = np.squeeze(data, axis=tuple(drop)) if drop else data
    if "c" in letters:
        n = data.shape[letters.index("c")]
        if channel is None and n > 1:
            raise VolumeError(f"{path}: the TIFF has {n} channels (axes {file_axes!r}); choose one with --channel K "
                              f"(K = 0 to {n - 1})")
        k = channel or 0
        if k >= n:
            raise VolumeError(f"{path}: --channel {k} does not exist; the TIFF has {n} channel(s) (K = 0 to {n - 1})")
        data = np.take(data, k, axis=letters.index("c"))
        letters = letters.replace("c", "")
    elif channel not in (None, 0):
        raise VolumeError(f"{path}: --channel {channel} does not exist; the TIFF has a single channel")
    if data.dtype.kind not in "biuf":
        raise VolumeError(f"{path}: voxels of type {data.dtype} are not supported; octasim needs a grey-level stack "
                          "of integers or floats")
    if 1 in data.shape:
        raise VolumeError(f"{path}: the image is 2D (shape {data.shape}, axes {letters!r}); octasim needs a 3D stack")
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise VolumeError(f"{path}: the image contains NaN or infinite values")
    if override is None:
        # the file's sizes belong to its columns, rows and pages: x, y, z unless --axes says otherwise
        cols, rows, pages = spacing
        spacing = tuple(dict(zip(letters, (pages, rows, cols)))[a] for a in "xyz")  # letters: array order
        lo, hi = PLAUSIBLE_VOXEL_UM
        if not all(lo <= s <= hi for s in spacing):
            raise VolumeError(f"{path}: {source} gives an implausible voxel size of "
                              f"({', '.join(f'{s:.6g}' for s in spacing)}) um along x, y, z; microscope and OCT "
                              f"scans have {lo:g}-{hi:g} um per voxel. Give the true voxel size with "
                              "--voxel-size X Y Z")
    spacing = tuple(float(s) for s in spacing)
    data = np.ascontiguousarray(np.transpose(data, [letters.index(a) for a in "xyz"]))
    return Volume(data, affine_for_spacing(spacing), None, spacing, path, file_axes=letters), source


def read_tiff(path: str | Path, voxel_size_um: Sequence[float] | float | None = None, channel: int | None = None,
              axes: str | None = None) -> Volume:
    """Read a 3D TIFF stack as a Volume indexed (x, y, z) = (i, j, k), depth last, in its own dtype.

    Voxel size (``spacing_um``, um along x, y, z): ``voxel_size_um`` when given, else the file's
    OME-XML ``PhysicalSizeX/Y/Z`` (+ ``PhysicalSize*Unit``, default um) or ImageJ metadata (``unit``,
    ``spacing`` for z, XResolution / YResolution in pixels per unit for x / y), as Fiji reads them.
    Axes: tifffile's (pages of unknown meaning are z; size-1 axes are dropped) unless ``axes`` gives
    the array's axis order, e.g. 'zyx' or 'zcyx'. A multi-channel stack needs ``channel`` (0-based).
    ``file_axes`` on the result is the file's order of x, y, z (e.g. 'zyx'), for :func:`write_tiff`;
    the affine is ``affine_for_spacing``'s and ``header`` is None.

    Raises VolumeError naming the file for a missing, damaged or non-TIFF file, a 2D image, a time
    series, a multi-channel stack without ``channel``, NaN values, and no usable (or an implausible,
    outside 0.05-100 um) voxel size in the file when ``voxel_size_um`` is not given.
    """
    return _read(path, voxel_size_um, channel, axes)[0]


def tiff_voxel_size(path: str | Path) -> tuple[tuple[float, float, float] | None, str]:
    """The voxel size (um along x, y, z) in a TIFF's metadata and where it comes from (e.g. 'the ImageJ
    metadata (unit 'micron')'), or None and why there is none. VolumeError for an unreadable file."""
    import tifffile

    try:
        with tifffile.TiffFile(str(path)) as tif:
            return _file_spacing(tif)
    except Exception as exc:
        raise VolumeError(f"{path}: cannot read the TIFF, the file is damaged or not a TIFF "
                          f"({type(exc).__name__}: {exc})") from exc


def _imagej_dtype(data: np.ndarray) -> np.ndarray:
    """``data`` as a type ImageJ opens: uint8 / uint16 / float32 kept, bool -> uint8, integers within
    0-65535 -> uint16, anything else -> float32."""
    if data.dtype in (np.uint8, np.uint16, np.float32):
        return data
    if data.dtype == bool:
        return data.astype(np.uint8)
    if data.dtype.kind in "iu" and (data.size == 0 or (data.min() >= 0 and data.max() <= 65535)):
        return data.astype(np.uint16)
    return data.astype(np.float32)


def write_tiff(path: str | Path, data_ijk: np.ndarray, spacing_um: Sequence[float] | float,
               axes: str = "zyx") -> Path:
    """Write a volume indexed (x, y, z) as an ImageJ hyperstack TIFF, atomically (temporary name, then
    rename). ``axes``: the file's order of x, y, z (pages, rows, columns), default 'zyx'; give a
    source Volume's ``file_axes`` so the output has the source file's shape and overlays it in Fiji.
    The calibration is in um: XResolution / YResolution = 1 / pixel size of the columns / rows and
    ImageJ ``spacing`` = the pages' voxel size. ``spacing_um``: um along x, y, z. Types other than
    uint8 / uint16 / float32 are converted (see ``_imagej_dtype``)."""
    import tifffile

    data = np.asarray(data_ijk)
    if data.ndim != 3:
        raise ValueError(f"write_tiff needs a 3D volume, got shape {data.shape}")
    spacing = check_spacing(spacing_um)
    axes = axes.lower()
    if sorted(axes) != ["x", "y", "z"]:
        raise ValueError(f"axes must be a permutation of 'xyz', got {axes!r}")
    per_axis = dict(zip("xyz", spacing))
    pages, rows, cols = (per_axis[a] for a in axes)
    array = _imagej_dtype(np.ascontiguousarray(np.transpose(data, ["xyz".index(a) for a in axes])))
    path = Path(path)
    with atomic_path(path) as tmp:
        tifffile.imwrite(str(tmp), array, imagej=True, resolution=(1.0 / cols, 1.0 / rows),
                         metadata={"spacing": pages, "unit": "um", "axes": "ZYX"})
    return path
