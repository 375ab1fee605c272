"""``octasim evaluate``: Dice, clDice, precision, recall, IoU, Betti errors (and ROC-AUC / AP) of predictions vs labels.

The command line only: pairing, grid checks and metrics live in :mod:`octasim.evaluate`, imported
when the command runs so that ``octasim --help`` stays fast.
"""
from __future__ import annotations

import argparse

DESCRIPTION = """\
Compare predicted vessel masks with label masks (NIfTI or TIFF files, or folders of them) and
report, per volume and as a mean: Dice, clDice, precision, recall, IoU, Betti-0 error (connected
components) and Betti-1 error (independent loops), plus ROC-AUC and average precision when
probability maps are available (--prob, or probability maps given as --pred, which are then
thresholded at --threshold: voxel is vessel if prob > threshold). Label voxels are vessel if non-zero (integer
files: 1, 255, -1 ... all count) or > 0.5 (float files).

Pairing rule: each file's key is its name without .nii / .nii.gz / .tif / .tiff (.ome.tif) and
without a trailing _mask, _prob, _pred, _seg, _label or _labels (so sample_0003_mask.nii.gz pairs
with sample_0003.nii.gz or sample_0003_label.nii.gz, and scan_mask.tif with scan.tif). Files pair
by key, and the pairs are printed; if the keys do not match one to one, the command stops and
lists the unmatched names (a single prediction and a single label pair as given, whatever their
names).

Voxel grids: a prediction must lie on its label's voxel grid (same NIfTI affine: voxel size,
orientation and origin, within 1e-4 relative / 1e-3 voxel; and same shape). Otherwise the command
stops and says how the grids differ, unless --resample-pred is given: the prediction (and
probability map) is then resampled onto the label's grid through the world coordinates of both
headers (nearest neighbour for masks, linear for probabilities; outside the prediction = background).
Files from octasim before and after depth was made to point inferior in the affine (same voxel size
and shape) are compared voxel by voxel, with a note.
TIFF files (as `octasim segment` writes for TIFF scans) carry a voxel size but no orientation or
origin, so a pair involving one compares voxel size and shape only (--resample-pred: by voxel
size, voxel 0 on voxel 0). A TIFF without calibration is compared voxel by voxel when the shapes
match (with a note), else the command stops; --voxel-size X Y Z sets the voxel size of TIFF files.

--regions FILE.json evaluates named boxes (voxel indices, end exclusive):
  {"regions": [{"name": "small", "box": [[0, 0, 0], [80, 80, 80]]}, ...]}
with a row per region and a "weighted" row averaging the regions weighted by their volume.

examples:
  octasim evaluate --pred seg/ --label data/real/labels/ --out results.csv
  octasim evaluate --pred seg/ --prob seg/ --label labels/ --regions regions.json
  octasim evaluate --pred seg/stack_mask.tif --prob seg/stack_prob.tif --label stack_label.tif
  python: from octasim.evaluate import evaluate_files; rows = evaluate_files(["seg/"], ["labels/"])
"""


def register(subparsers) -> None:
    from .cli import HelpFormatter

    p = subparsers.add_parser("evaluate", help="score predicted masks against labels (Dice, clDice, topology)",
                              description=DESCRIPTION, formatter_class=HelpFormatter)
    p.add_argument("--pred", nargs="+", required=True, metavar="DIR_OR_FILE",
                   help="predicted masks (uint8 0/1) or probability maps (float 0-1), NIfTI or TIFF files or "
                        "folders; in a folder written by `octasim segment`, the *_mask files are used")
    p.add_argument("--label", nargs="+", required=True, metavar="DIR_OR_FILE", help="label masks, files or folders")
    p.add_argument("--prob", nargs="+", default=None, metavar="DIR_OR_FILE",
                   help="probability maps for ROC-AUC / AP; in a folder, the *_prob files are used")
    p.add_argument("--regions", default=None, help="JSON file of named boxes to evaluate separately")
    p.add_argument("--out", default=None, help="CSV file for the table (written atomically); default: print only")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="threshold applied to probability maps given as --pred (0-1)")
    p.add_argument("--no-topology", action="store_true",
                   help="skip the Betti-0 / Betti-1 errors (connected-component analysis; slow on very large volumes)")
    p.add_argument("--resample-pred", action="store_true",
                   help="when a prediction's voxel grid (NIfTI affine: voxel size, orientation, origin; or shape) "
                        "differs from its label's, resample the prediction onto the label's grid through world "
                        "coordinates (nearest neighbour for masks, linear for probability maps) instead of stopping "
                        "with an error; with a TIFF file involved, by voxel size (voxel 0 on voxel 0)")
    p.add_argument("--voxel-size", nargs=3, type=float, default=None, metavar=("X", "Y", "Z"),
                   help="voxel size in um along x, y, z (depth) of the TIFF files (predictions, probability maps, "
                        "labels), overriding their calibration; NIfTI files keep their header's. Default: the "
                        "TIFF's metadata; a TIFF without it is compared voxel by voxel when the shapes match")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Score, print the table and write --out; errors (ValueError, OctasimError) reach ``octasim.cli``."""
    from octasim.evaluate import evaluate_files, format_table, write_csv
    from octasim.scan import check_spacing

    if not 0.0 <= args.threshold <= 1.0:
        raise ValueError(f"--threshold must be in [0, 1], got {args.threshold}")
    voxel_size = check_spacing(args.voxel_size) if args.voxel_size is not None else None
    rows = evaluate_files(args.pred, args.label, args.prob, args.regions, args.threshold,
                          topology=not args.no_topology, resample_pred=args.resample_pred,
                          voxel_size_um=voxel_size)
    n = len({r["pred"] for r in rows if r["volume"] != "mean"})
    print(format_table(rows))
    if args.out:
        print(f"wrote {write_csv(rows, args.out)} ({n} volume(s) and the mean)")
    return 0
