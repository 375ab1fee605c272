"""``octasim convert``: TIFF stacks -> NIfTI with the voxel size in the header."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    from pipelines.cli import HelpFormatter

    p = subparsers.add_parser(
        "convert", formatter_class=HelpFormatter, help="convert 3D TIFF stacks to NIfTI (voxel size in the header)",
        description="Convert 3D multi-page TIFF stacks (e.g. from Fiji or a microscope) into NIfTI files that\n"
                    "octasim segment / evaluate and ITK-SNAP, napari, Slicer read with the right scale.\n"
                    "The output is laid out (x, y, z) with depth last, as octasim expects.")
    p.add_argument("inputs", nargs="+", type=Path, help="TIFF files (.tif / .tiff)")
    p.add_argument("--out", type=Path, required=True, help="output folder for <name>.nii.gz")
    p.add_argument("--voxel-size", type=float, nargs=3, metavar=("X", "Y", "Z"), required=True,
                   help="voxel size in um along x, y and z (depth); TIFF headers carry no reliable 3D spacing")
    p.add_argument("--axes", default="zyx", help="order of the TIFF array axes (tifffile's order), z = depth")
    p.add_argument("--binary", action="store_true", help="write a uint8 mask (value > 0) instead of the intensities, "
                                                         "for manual labels")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from octasim.convert import read_tiff_volume
    from octasim.nifti import write_volume

    for path in args.inputs:
        vol = read_tiff_volume(path, args.voxel_size, args.axes)
        data = (vol.data > 0).astype(np.uint8) if args.binary else vol.data
        name = path.name.rsplit(".", 1)[0]
        out = write_volume(args.out / f"{name}.nii.gz", data, affine=vol.affine)
        print(f"{path} -> {out}  shape {data.shape}, voxel {tuple(args.voxel_size)} um")
    return 0
