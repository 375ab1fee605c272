"""``octasim segment``: vessel probability maps and masks for NIfTI scans (U-Net, Otsu or Frangi)."""
from __future__ import annotations

import argparse
import sys

METHODS = ("unet", "otsu", "frangi")  # as octasim.segment.METHODS (not imported here: keeps --help fast)
FRANGI_SIGMAS_UM = [2.0, 4.0, 8.0]  # as octasim.segment.DEFAULT_FRANGI_SIGMAS_UM

DESCRIPTION = """\
Segment vessels in 3D scans (.nii / .nii.gz files, or folders of them). For each input NAME,
writes NAME_prob.nii.gz (float32 probability / score), NAME_mask.nii.gz (uint8 0/1), both with
the input's affine and header, and NAME_qc.png (the mask over orthogonal slices) into --out.

The U-Net method applies the checkpoint's preprocessing (percentile clipping, scaling to [0, 1]),
resamples the scan from its header voxel size to the model's training voxel size and back
(anisotropic scans such as 1 x 1 x 5 um work) and runs sliding-window inference with Gaussian
blending. Baselines: --method otsu (Otsu threshold of the normalized image) and --method frangi
(Frangi vesselness for bright vessels, then Otsu); with them, --threshold is a fixed threshold on
the normalized image / vesselness (0-1) instead of Otsu's.

A failing input is reported and the others are still segmented; the exit status is then 1.

examples:
  octasim segment scans/ --model runs/default/best.pt --out seg/
  octasim segment scan.nii.gz --model runs/default/best.pt --out seg/ --tta --min-component-um3 500
  octasim segment stack.nii.gz --method otsu --out seg_otsu/ --voxel-size 0.994 0.994 5
"""


def register(subparsers) -> None:
    from pipelines.cli import HelpFormatter

    p = subparsers.add_parser("segment", help="segment vessels in NIfTI scans (U-Net, Otsu or Frangi)",
                              description=DESCRIPTION, formatter_class=HelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="NIfTI files (.nii / .nii.gz) or folders of them")
    p.add_argument("--model", help="trained checkpoint (runs/NAME/best.pt); required for --method unet")
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--method", choices=METHODS, default="unet",
                   help="unet: the trained network; otsu / frangi: classical baselines for comparison")
    p.add_argument("--threshold", type=float, default=None,
                   help="probability threshold for the mask (0-1); default: the checkpoint's (0.5 unless "
                        "calibrated by training), or Otsu's threshold for the baselines")
    p.add_argument("--overlap", type=float, default=0.5,
                   help="sliding-window overlap, fraction of the window (0 <= overlap < 1)")
    p.add_argument("--batch-size", type=int, default=4, help="windows per forward pass (GPU memory / speed)")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: average over flips along the two lateral axes (4x slower; "
                        "depth is never flipped)")
    p.add_argument("--min-component-um3", type=float, default=0.0,
                   help="remove connected vessel components smaller than this volume (um^3); 0 keeps all")
    p.add_argument("--depth-axis", choices=("i", "j", "k"), default="k",
                   help="array axis along depth (the OCT beam / microscope z axis) in the input files")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    p.add_argument("--voxel-size", type=float, nargs=3, metavar=("X", "Y", "Z"), default=None,
                   help="voxel size in um along the i, j, k axes, overriding the headers")
    p.add_argument("--sigmas-um", type=float, nargs="+", default=FRANGI_SIGMAS_UM,
                   help="Frangi scales in um (--method frangi only)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from octasim.segment import segment_files

    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise ValueError(f"--threshold must be in [0, 1], got {args.threshold}")
    if args.min_component_um3 < 0:
        raise ValueError(f"--min-component-um3 must be >= 0, got {args.min_component_um3}")
    if args.method == "unet" and not args.model:
        raise ValueError("--method unet needs a trained model: pass --model runs/NAME/best.pt "
                         "(or use --method otsu / frangi)")
    results = segment_files(args.inputs, args.out, model=args.model, method=args.method, threshold=args.threshold,
                            overlap=args.overlap, sw_batch_size=args.batch_size, tta=args.tta,
                            min_component_um3=args.min_component_um3, depth_axis=args.depth_axis,
                            device=args.device, voxel_size_um=args.voxel_size, sigmas_um=args.sigmas_um)
    done = [r for r in results if r.ok]
    failed = [r for r in results if not r.ok]
    for r in done:
        print(f"{r.input.name}: vessel fraction {r.vessel_fraction:.2%} ({r.seconds:.1f} s) -> "
              f"{r.mask_path.name}, {r.prob_path.name}, {r.qc_path.name}")
    print(f"segmented {len(done)} of {len(results)} volume(s) with {args.method}; outputs and QC PNGs in {args.out}")
    if failed:
        print(f"octasim segment: {len(failed)} input(s) failed:", file=sys.stderr)
        for r in failed:
            print(f"  {r.error}", file=sys.stderr)
        return 1
    return 0
