"""``octasim convert``: TIFF stacks -> NIfTI with the voxel size in the header."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    from .cli import HelpFormatter

    p = subparsers.add_parser(
        "convert", formatter_class=HelpFormatter, help="convert 3D TIFF stacks to NIfTI (voxel size in the header)",
        description="Convert 3D TIFF stacks (Fiji / ImageJ, OME-TIFF, microscope software) into NIfTI files that\n"
                    "octasim segment / evaluate and ITK-SNAP, napari, Slicer read with the right scale.\n"
                    "The voxel size comes from the file (OME-XML PhysicalSizeX/Y/Z, or ImageJ unit, spacing and\n"
                    "X/YResolution) unless --voxel-size is given; files without calibration need --voxel-size.\n"
                    "The output is laid out (x, y, z) with depth last, as octasim expects.\n\n"
                    "examples:\n"
                    "  octasim convert stack.tif --out scans/                          # calibrated in Fiji\n"
                    "  octasim convert stack.tif --out scans/ --voxel-size 0.994 0.994 5\n"
                    "  octasim convert two_colour.ome.tif --out scans/ --channel 1\n"
                    "  octasim convert labels.tif --out labels/ --voxel-size 0.994 0.994 5 --binary")
    p.add_argument("inputs", nargs="+", type=Path, help="TIFF files (.tif / .tiff)")
    p.add_argument("--out", type=Path, required=True, help="output folder for <name>.nii.gz")
    p.add_argument("--voxel-size", type=float, nargs=3, metavar=("X", "Y", "Z"), default=None,
                   help="voxel size in um along x, y and z (depth), overriding the file's; default: the file's "
                        "OME-XML or ImageJ calibration")
    p.add_argument("--channel", type=int, default=None, metavar="K",
                   help="channel to convert from a multi-channel stack, 0-based (required for them)")
    p.add_argument("--axes", default=None,
                   help="order of the TIFF array axes (tifffile's order; x, y, z = depth and optionally c), e.g. "
                        "zyx or zcyx; default: as the file names them (unnamed pages are z)")
    p.add_argument("--binary", action="store_true", help="write a uint8 mask (value > 0) instead of the intensities, "
                                                         "for manual labels")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from octasim.nifti import write_volume
    from octasim.scan import check_spacing
    from octasim.tiff import read_tiff, tiff_voxel_size

    override = check_spacing(args.voxel_size) if args.voxel_size is not None else None
    if args.channel is not None and args.channel < 0:
        raise ValueError(f"--channel must be >= 0 (0 = the first channel), got {args.channel}")
    for path in args.inputs:
        vol = read_tiff(path, override, channel=args.channel, axes=args.axes)
        source = "--voxel-size" if override else tiff_voxel_size(path)[1]
        data = (vol.data > 0).astype(np.uint8) if args.binary else vol.data
        name = path.name.rsplit(".", 1)[0]
        if name.lower().endswith(".ome"):
            name = name[:-4]
        out = write_volume(args.out / f"{name}.nii.gz", data, affine=vol.affine)
        size = ", ".join(f"{s:.6g}" for s in vol.spacing_um)
        print(f"{path} -> {out}  shape {data.shape} (x, y, z), voxel ({size}) um from {source}")
    return 0
