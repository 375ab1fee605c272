"""``octasim segment``: vessel probability maps and masks for NIfTI / TIFF scans (U-Net, Otsu or Frangi)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from octasim.models import DEFAULT_MODEL

METHODS = ("unet", "otsu", "frangi")  # as octasim.segment.METHODS (not imported here: keeps --help fast)
FRANGI_SIGMAS_UM = [2.0, 4.0, 8.0]  # as octasim.segment.DEFAULT_FRANGI_SIGMAS_UM
OUTPUT_FORMATS = ("auto", "nifti", "tiff")  # as octasim.scan.OUTPUT_FORMATS


DESCRIPTION = """\
Segment vessels in 3D scans (.nii / .nii.gz NIfTI or .tif / .tiff stacks, or folders of them). For
each input NAME, writes NAME_prob (float32 probability / score), NAME_mask (uint8 0/1), both with
the input's shape, and NAME_qc.png (the mask over orthogonal slices) into --out. Outputs are in the
input's format (--output-format): NAME_*.nii.gz with the input's affine and header, or NAME_*.tif
with the input's axis order and ImageJ calibration (um), so they overlay the input in Fiji.
Without --model it uses the bundled model (data/models/, see its README): no training needed.

Voxel size: from the NIfTI header, or from the TIFF's OME-XML (PhysicalSizeX/Y/Z) or ImageJ
metadata (unit, spacing, X/YResolution); --voxel-size X Y Z (um) overrides it and is required for
TIFFs without calibration. A TIFF's axes come from the file (unnamed pages are z = depth) and are
reordered to (x, y, z) = (i, j, k), depth last; multi-channel stacks need --channel K.

The U-Net method applies the model's preprocessing (percentile clipping, scaling to [0, 1]),
resamples the scan from its voxel size to the model's training voxel size (anisotropic
scans such as 1 x 1 x 5 um work) and to coarser views of an image pyramid (so that vessels wider
than the network's window are seen whole; a coarse view adds only what it calls vessel over at
least 5 of its voxels in every lateral direction), pads stacks shallower than the window with 0
(dark, as in training), runs sliding-window inference with Gaussian
blending and resamples the probability back to the scan. The mask is the probability above the
threshold, with the lower half of vessels wider than 32 um completed by symmetry below their middle,
such vessels cut by the scan's top filled from its first slice, and their lumen followed further down
while it stays twice as bright as the tissue, where that bright run ends within the vessel's own depth
as a lumen does (an OCT-A projection tail fades far deeper and is left alone; --no-lumen-completion
skips it all; two-photon lumens dim with depth inside themselves, and out of focus where the stack
cuts them).
Baselines: --method otsu (Otsu threshold of the normalized image) and --method frangi
(Frangi vesselness for bright vessels, then Otsu); with them, --threshold is a fixed threshold on
the normalized image / vesselness (0-1) instead of Otsu's.

A failing input is reported and the others are still segmented; the exit status is then 1.

examples:
  octasim segment scan.nii.gz --out seg/                 # the bundled model
  octasim segment scans/ --model runs/default/best.pt --out seg/
  octasim segment scan.nii.gz --model runs/default/best.pt --out seg/ --no-tta --min-component-um3 500
  octasim segment stack.nii.gz --method otsu --out seg_otsu/ --voxel-size 0.994 0.994 5
  octasim segment stack.tif --out seg/                   # Fiji / OME-TIFF: voxel size from the file
  octasim segment stack.tif --out seg/ --voxel-size 0.994 0.994 5 --channel 1 --output-format nifti
  octasim segment stack.tif --out seg/ --roi window_roi.tif   # nothing labelled outside the cranial window
"""


def register(subparsers) -> None:
    from .cli import HelpFormatter

    p = subparsers.add_parser("segment", help="segment vessels in NIfTI / TIFF scans (U-Net, Otsu or Frangi)",
                              description=DESCRIPTION, formatter_class=HelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="NIfTI (.nii / .nii.gz) or TIFF (.tif / .tiff) files, or folders of them")
    p.add_argument("--model", default=None,
                   help="trained checkpoint (runs/NAME/best.pt) or the name of a bundled model in data/models/; "
                        "default: the bundled model " + DEFAULT_MODEL)
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--method", choices=METHODS, default="unet",
                   help="unet: the trained network; otsu / frangi: classical baselines for comparison")
    p.add_argument("--threshold", type=float, default=None,
                   help="probability threshold for the mask (0-1); default: the checkpoint's (0.5 unless "
                        "calibrated by training), or Otsu's threshold for the baselines")
    p.add_argument("--overlap", type=float, default=0.5,
                   help="sliding-window overlap, fraction of the window (0 <= overlap < 1)")
    p.add_argument("--batch-size", type=int, default=4, help="windows per forward pass (GPU memory / speed)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True,
                   help="test-time augmentation: average every window over the four flips of the two lateral "
                        "axes (depth is never flipped). --no-tta is 2.2-4x faster and "
                        "scores slightly lower (bundled model: Dice 0.670 -> 0.668 on the deep real stack, "
                        "0.904 -> 0.903 on the surface one)")
    p.add_argument("--lumen-completion", action=argparse.BooleanOptionalAction, default=True,
                   help="complete the lower half of vessels wider than a quarter of the network's window "
                        "(32 um for the bundled models) by symmetry: below the middle of such a vessel's round "
                        "section (the slice where its mask is widest across the lateral plane or, if lower, the "
                        "mask's top plus the depth (um) a round section of its width reaches above its middle; "
                        "not where the mask starts at the scan's first slice or the top of --roi), its lumen is "
                        "made as deep as it is above it; a vessel wider than deep is deepened toward a round section "
                        "(two-photon lumens dim with depth inside themselves and the network labels their "
                        "upper part). A vessel whose round section reaches above the scan's first imaged slice is "
                        "cut by it: filled from that slice down and, where its axis lies inside the scan, as deep "
                        "below its widest slice as the section reaches. Below that, the lumen is followed while the "
                        "image stays twice as bright as its slice's tissue, where that bright run closes no deeper "
                        "below the completed run than the run is long (a lumen's bottom; not where the run reaches "
                        "the scan's last slice or the lower edge of --roi; an OCT-A projection tail fades far "
                        "deeper and is not followed). In the mask only; the probability map is "
                        "the network's. Bundled model, surface real stack: Dice 0.800 -> 0.904; the deep one, "
                        "without such vessels, unchanged")
    p.add_argument("--min-component-um3", type=float, default=0.0,
                   help="remove connected vessel components smaller than this volume (um^3); 0 keeps all. 1000 suits "
                        "OCT-A scans, whose noise leaves isolated blobs (procedural OCT-A volumes 0.558 -> 0.593 "
                        "Dice with the bundled model); not the default: in a deep two-photon stack the small "
                        "components are mostly capillary pieces (real stack 0.670 -> 0.650)")
    p.add_argument("--depth-axis", choices=("i", "j", "k"), default="k",
                   help="array axis along depth (the OCT beam / microscope z axis) in the input files")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    p.add_argument("--voxel-size", type=float, nargs=3, metavar=("X", "Y", "Z"), default=None,
                   help="voxel size in um along the i, j, k axes (x, y, z = depth for TIFF stacks), overriding "
                        "the NIfTI header / TIFF metadata; default: the file's")
    p.add_argument("--channel", type=int, default=None, metavar="K",
                   help="channel to segment in multi-channel TIFF stacks, 0-based (required for them)")
    p.add_argument("--output-format", choices=OUTPUT_FORMATS, default="auto",
                   help="format of NAME_prob / NAME_mask: auto = the input's (NIfTI -> .nii.gz, TIFF -> .tif), "
                        "nifti (.nii.gz), tiff (.tif, ImageJ hyperstack calibrated in um)")
    p.add_argument("--views", nargs="+", default=["auto"], metavar="UM",
                   help="voxel sizes (um) of the image pyramid's views, finest first: 'auto' (the model's "
                        "training grid and coarser views up to a window of four times the widest cortical vessel, "
                        "within the voxel sizes it was trained on; a coarser view is fused only if it finds a "
                        "vessel wider than a quarter of its finer neighbour's window, at least twice as bright as the "
                        "tissue), 'single' (the training "
                        "grid only), or numbers (exactly these views, all fused)")
    p.add_argument("--roi", default=None, metavar="FILE|DIR",
                   help="region of interest: a NIfTI / TIFF with the scan's array shape, nonzero where tissue was "
                        "imaged (e.g. the cranial window drawn in ITK-SNAP or Fiji; a NIfTI region must have the "
                        "scan's affine), or a folder with one per input named NAME_roi.* (or NAME.* in a folder of "
                        "regions apart from the scans; NAME_roi.* files in it are not segmented). Outside it "
                        "nothing is labelled and the network sees no signal; the intensity percentiles come from "
                        "inside it. Use it for scans "
                        "with dark regions that hold no tissue: the network scales each window to its own "
                        "brightest, so pure detector noise there turns into false vessels (2-7 %% of it with the "
                        "bundled model); none = the whole scan")
    p.add_argument("--overwrite", action="store_true",
                   help="replace NAME_prob / NAME_mask files that an earlier run left in --out (default: refuse)")
    p.add_argument("--sigmas-um", type=float, nargs="+", default=FRANGI_SIGMAS_UM,
                   help="Frangi scales in um (--method frangi only)")
    p.set_defaults(func=run)


def parse_views(values: list[str]) -> list[float] | str:
    """--views: 'auto' or 'single' as they are, else the voxel sizes in um (checked)."""
    if values in (["auto"], ["single"]):
        return values[0]
    try:
        views = [float(v) for v in values]
    except ValueError:
        raise ValueError(f"--views takes 'auto', 'single' or voxel sizes in um, got {' '.join(values)}") from None
    if any(not v > 0 for v in views):
        raise ValueError(f"--views: voxel sizes must be positive (um), got {' '.join(values)}")
    return views


def run(args: argparse.Namespace) -> int:
    from octasim.segment import segment_files

    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise ValueError(f"--threshold must be in [0, 1], got {args.threshold}")
    if args.min_component_um3 < 0:
        raise ValueError(f"--min-component-um3 must be >= 0, got {args.min_component_um3}")
    if not 0.0 <= args.overlap < 1.0:
        raise ValueError(f"--overlap must be in [0, 1) (a fraction of the window), got {args.overlap}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1 (windows per forward pass), got {args.batch_size}")
    if args.channel is not None and args.channel < 0:
        raise ValueError(f"--channel must be >= 0 (0 = the first channel), got {args.channel}")
    if args.roi is not None and not Path(args.roi).exists():
        raise ValueError(f"--roi {args.roi}: no such region-of-interest file or folder")
    views = parse_views(args.views)
    model = args.model
    if args.method == "unet":
        from octasim.inference import ModelGrid
        from octasim.model import load_checkpoint
        from octasim.models import model_summary, resolve_model

        path = resolve_model(args.model)
        model = load_checkpoint(path)
        if views == "single":
            views = [ModelGrid.from_checkpoint(model).voxel_size_um]
        print(model_summary(model, str(path)))
        print("lateral flips on: every window averaged over its four mirror images (--no-tta: 2.2-4x faster)"
              if args.tta else "lateral flips off (--no-tta)")
        print("wide vessels' lower half completed below their round section's middle, filled from the scan's "
              "top where it cuts them, and followed down while twice as bright as the tissue where that run "
              "closes like a lumen (--no-lumen-completion to skip)"
              if args.lumen_completion else "wide vessels not completed (--no-lumen-completion)")
        if args.threshold is not None:
            print(f"threshold {args.threshold:.2f} (--threshold)")
    if args.roi is not None:
        print(f"region of interest: {args.roi} (nothing outside it is labelled)")
    results = segment_files(args.inputs, args.out, model=model, method=args.method, threshold=args.threshold,
                            overlap=args.overlap, sw_batch_size=args.batch_size, tta=args.tta,
                            complete_lumens=args.lumen_completion, min_component_um3=args.min_component_um3,
                            depth_axis=args.depth_axis,
                            device=args.device, voxel_size_um=args.voxel_size, sigmas_um=args.sigmas_um,
                            views_um=None if isinstance(views, str) else views, overwrite=args.overwrite,
                            channel=args.channel, output_format=args.output_format, roi=args.roi)
    done = [r for r in results if r.ok]
    failed = [r for r in results if not r.ok]
    for r in done:
        size = " x ".join(f"{v:g}" for v in r.spacing_um) if r.spacing_um else "?"
        shape = " x ".join(str(n) for n in r.shape) if r.shape else "?"
        views = f", views {', '.join(f'{v:g}' for v in r.views_um)} um" if r.views_um else ""
        region = " of the region" if args.roi is not None else ""
        print(f"{r.input.name} ({shape} voxels of {size} um): vessel fraction{region} {r.vessel_fraction:.2%} "
              f"({r.seconds:.1f} s{views}) -> "
              f"{r.mask_path.name}, {r.prob_path.name}, {r.qc_path.name}")
    print(f"segmented {len(done)} of {len(results)} volume(s) with {args.method}; outputs and QC PNGs in {args.out}")
    if failed:
        print(f"octasim segment: {len(failed)} input(s) failed:", file=sys.stderr)
        for r in failed:
            print(f"  {r.error}", file=sys.stderr)
        return 1
    return 0
