"""``octasim evaluate``: Dice, clDice, precision, recall, IoU, Betti errors (and ROC-AUC / AP) of predictions vs labels."""
from __future__ import annotations

import argparse
import csv
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # heavy imports stay inside the functions so that `octasim --help` is fast
    import numpy as np

    from octasim.nifti import Volume

DESCRIPTION = """\
Compare predicted vessel masks with label masks (NIfTI files or folders of them) and report, per
volume and as a mean: Dice, clDice, precision, recall, IoU, Betti-0 error (connected components)
and Betti-1 error (independent loops), plus ROC-AUC and average precision when probability maps
are available (--prob, or probability maps given as --pred, which are then thresholded at
--threshold: voxel is vessel if prob > threshold). Label voxels are vessel if non-zero (integer
files: 1, 255, -1 ... all count) or > 0.5 (float files).

Pairing rule: each file's key is its name without .nii / .nii.gz and without a trailing
_mask, _prob, _pred, _seg, _label or _labels (so sample_0003_mask.nii.gz pairs with
sample_0003.nii.gz or sample_0003_label.nii.gz). Files pair by key, and the pairs are printed;
if the keys do not match one to one, the command stops and lists the unmatched names (a single
prediction and a single label pair as given, whatever their names).

Voxel grids: a prediction must lie on its label's voxel grid (same NIfTI affine: voxel size,
orientation and origin, within 1e-4 relative / 1e-3 voxel; and same shape). Otherwise the command
stops and says how the grids differ, unless --resample-pred is given: the prediction (and
probability map) is then resampled onto the label's grid through the world coordinates of both
headers (nearest neighbour for masks, linear for probabilities; outside the prediction = background).

--regions FILE.json evaluates named boxes (voxel indices, end exclusive):
  {"regions": [{"name": "small", "box": [[0, 0, 0], [80, 80, 80]]}, ...]}
with a row per region and a "weighted" row averaging the regions weighted by their volume.

examples:
  octasim evaluate --pred seg/ --label data/real/labels/ --out results.csv
  octasim evaluate --pred seg/ --prob seg/ --label labels/ --regions regions.json
"""

ROLE_SUFFIX = re.compile(r"_(mask|prob|pred|seg|label|labels)$", re.IGNORECASE)


def register(subparsers) -> None:
    from pipelines.cli import HelpFormatter

    p = subparsers.add_parser("evaluate", help="score predicted masks against labels (Dice, clDice, topology)",
                              description=DESCRIPTION, formatter_class=HelpFormatter)
    p.add_argument("--pred", nargs="+", required=True, metavar="DIR_OR_FILE",
                   help="predicted masks (uint8 0/1) or probability maps (float 0-1), files or folders; "
                        "in a folder written by `octasim segment`, the *_mask files are used")
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
                        "with an error")
    p.set_defaults(func=run)


def file_key(path: Path) -> str:
    """Pairing key: name without NIfTI suffix and without a trailing role (_mask, _prob, _label ...)."""
    from octasim.segment import output_stem

    return ROLE_SUFFIX.sub("", output_stem(path))


def _collect(items, prefer: str | None) -> list[Path]:
    """Files from files / folders; in a folder holding *_<prefer> files (segment output) only those."""
    from octasim.nifti import list_volumes

    out: list[Path] = []
    for item in items:
        item = Path(item)
        files = list_volumes([item])
        if item.is_dir() and prefer:
            chosen = [f for f in files if re.search(rf"_{prefer}\.nii(\.gz)?$", f.name, re.IGNORECASE)]
            files = chosen or files
        out.extend(files)
    return out


def _names(paths: list[Path], limit: int = 10) -> str:
    """Comma-separated file names (at most ``limit``), or 'none'."""
    if not paths:
        return "none"
    more = f" ... and {len(paths) - limit} more" if len(paths) > limit else ""
    return ", ".join(p.name for p in paths[:limit]) + more


def _by_key(paths: list[Path], what: str) -> dict[str, Path]:
    """{key: path}; ValueError when two files share a key."""
    out: dict[str, Path] = {}
    for path in paths:
        key = file_key(path)
        if key in out:
            raise ValueError(f"two {what} have the name {key!r} once .nii(.gz) and a role suffix such as _mask "
                             f"are stripped: {out[key]} and {path}; keep only one of them")
        out[key] = path
    return out


def pair_files(preds: list[Path], labels: list[Path], what: str = "predictions") -> list[tuple[Path, Path]]:
    """Pair each of ``preds`` with the label of the same key (see ``file_key``), in the order of ``preds``.

    A single prediction and a single label pair as given. Otherwise the keys must match one to one:
    ValueError listing the unmatched names (no guessing by sorted order).
    """
    if not preds:
        raise ValueError(f"no {what} found (.nii / .nii.gz)")
    if not labels:
        raise ValueError("no labels found (.nii / .nii.gz)")
    if len(preds) == 1 and len(labels) == 1:
        return [(preds[0], labels[0])]
    pred_by_key, label_by_key = _by_key(preds, what), _by_key(labels, "labels")
    lonely_preds = [p for k, p in pred_by_key.items() if k not in label_by_key]
    lonely_labels = [p for k, p in label_by_key.items() if k not in pred_by_key]
    if lonely_preds or lonely_labels:
        raise ValueError(
            f"{len(preds)} {what} and {len(labels)} labels do not match one to one by name (a file's name "
            "without .nii / .nii.gz and without a trailing _mask, _prob, _pred, _seg, _label or _labels must "
            f"equal its partner's). {what.capitalize()} without a label: {_names(lonely_preds)}. Labels "
            f"without a {what[:-1]}: {_names(lonely_labels)}. Rename the files so "
            "that each pair shares its name (e.g. scan01_mask.nii.gz and scan01.nii.gz)")
    return [(p, label_by_key[k]) for k, p in pred_by_key.items()]


def _binary_label(vol: Volume) -> np.ndarray:
    """Vessel mask of a label volume: non-zero voxels of integer files (1, 255, -1 ... all count),
    voxels > 0.5 of float files."""
    import numpy as np

    if np.issubdtype(vol.header.get_data_dtype(), np.integer):
        return vol.data != 0
    return vol.data > 0.5


def _load_pred(path: Path, threshold: float) -> tuple[Volume, np.ndarray, np.ndarray | None]:
    """(volume, mask, probability or None): a float file with values other than 0 / 1 is a probability map."""
    import numpy as np

    from octasim.nifti import read_volume

    vol = read_volume(path)
    data = vol.data
    stored_float = np.issubdtype(vol.header.get_data_dtype(), np.floating)
    if stored_float and not np.isin(data, (0.0, 1.0)).all():
        if data.min() < 0 or data.max() > 1:
            raise ValueError(f"{path}: float prediction with values outside [0, 1] "
                             f"({data.min():g}..{data.max():g}); expected a mask or a probability map")
        return vol, data > threshold, data
    return vol, data != 0, None


def _grid_mismatch(path: Path, vol: Volume, label_path: Path, label: Volume, resample: bool) -> str:
    """How the voxel grid of ``vol`` differs from its label's ('' when it matches); ValueError naming both
    files when it differs and ``resample`` is off."""
    from octasim.nifti import affine_um, grid_differences

    diffs = grid_differences(affine_um(vol), affine_um(label))
    if not diffs and vol.data.shape == label.data.shape:
        return ""
    if not diffs:
        if not resample:
            raise ValueError(f"{path} has shape {vol.data.shape} but its label {label_path} has shape "
                             f"{label.data.shape} (same voxel size, orientation and origin: a cropped or padded "
                             "prediction? --resample-pred pads / crops it onto the label's grid)")
        return f"shape {vol.data.shape} vs {label.data.shape}"
    if vol.data.shape != label.data.shape:
        diffs.append(f"shape {vol.data.shape} vs {label.data.shape}")
    text = "; ".join(diffs)
    if not resample:
        raise ValueError(f"{path} and its label {label_path} are not on the same voxel grid (NIfTI affine, "
                         f"prediction vs label): {text}. Compared voxel by voxel they would score different places "
                         "of the brain against each other. Pass --resample-pred to resample the prediction onto "
                         "the label's grid through the world coordinates of both headers, or save the prediction "
                         "with the label's header")
    return text


def _to_label_grid(data: np.ndarray, vol: Volume, label: Volume, order: int) -> np.ndarray:
    """``data`` on the grid of ``vol`` resampled onto the grid of ``label`` (order 0 nearest, 1 linear)."""
    from octasim.nifti import affine_um, resample_to_grid

    return resample_to_grid(data, affine_um(vol), affine_um(label), label.data.shape, order)


def evaluate_files(pred_items, label_items, prob_items=None, regions_file=None, threshold: float = 0.5,
                   topology: bool = True, progress: bool | None = None, resample_pred: bool = False,
                   echo: Callable[[str], None] = print) -> list[dict]:
    """Per-volume (and per-region) metric rows plus mean rows.

    Prints (through ``echo``) the pairs used and every prediction resampled onto its label's grid
    (only with ``resample_pred``; without it a grid mismatch is a ValueError).
    """
    from tqdm.auto import tqdm

    import numpy as np

    from octasim.metrics import evaluate_masks, evaluate_regions, load_regions, weighted_mean
    from octasim.nifti import read_volume

    regions = load_regions(regions_file) if regions_file else None
    preds = _collect(pred_items, "mask")
    labels = _collect(label_items, None)
    pairs = pair_files(preds, labels)
    prob_for = {}
    if prob_items:
        probs = _collect(prob_items, "prob")
        prob_for = {lab: prb for prb, lab in pair_files(probs, labels, "probability maps")}
    echo("pairs (prediction <-> label):")
    for pred_path, label_path in pairs:
        extra = f"  (probabilities: {prob_for[label_path].name})" if label_path in prob_for else ""
        echo(f"  {pred_path.name} <-> {label_path.name}{extra}")

    rows: list[dict] = []
    bar = tqdm(pairs, desc="evaluate", unit="vol", disable=True if progress is False else (False if progress else None))
    for pred_path, label_path in bar:
        pred_vol, mask, prob = _load_pred(pred_path, threshold)
        label_vol = read_volume(label_path)
        label = _binary_label(label_vol)
        mismatch = _grid_mismatch(pred_path, pred_vol, label_path, label_vol, resample_pred)
        if mismatch:
            echo(f"note: resampled {pred_path.name} onto the grid of {label_path.name}: {mismatch}")
            mask = _to_label_grid(mask.astype(np.uint8), pred_vol, label_vol, order=0) != 0
            prob = None if prob is None else _to_label_grid(prob, pred_vol, label_vol, order=1)
        if label_path in prob_for:
            prob_path = prob_for[label_path]
            pvol = read_volume(prob_path)
            prob = pvol.data
            mismatch = _grid_mismatch(prob_path, pvol, label_path, label_vol, resample_pred)
            if mismatch:
                echo(f"note: resampled {prob_path.name} onto the grid of {label_path.name}: {mismatch}")
                prob = _to_label_grid(prob, pvol, label_vol, order=1)
        base = {"volume": file_key(pred_path), "pred": str(pred_path), "label": str(label_path)}
        if regions:
            for name, metrics in evaluate_regions(mask, label, regions, prob, topology=topology).items():
                rows.append({**base, "region": name, **metrics})
        else:
            rows.append({**base, "region": "whole", **evaluate_masks(mask, label, prob, topology=topology)})
    region_names = list(dict.fromkeys(r["region"] for r in rows))
    means = []
    for name in region_names:
        group = [{k: v for k, v in r.items() if k not in ("volume", "pred", "label", "region")}
                 for r in rows if r["region"] == name]
        means.append({"volume": "mean", "pred": "", "label": "", "region": name, **weighted_mean(group)})
    return rows + means


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def format_table(rows: list[dict]) -> str:
    cols = [c for c in rows[0] if c not in ("pred", "label")]
    cells = [[_fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def write_csv(rows: list[dict], path) -> Path:
    from octasim.atomic import atomic_path

    cols = list(dict.fromkeys(c for r in rows for c in r))
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=cols)
            writer.writeheader()
            for r in rows:
                writer.writerow({c: repr(r[c]) if isinstance(r.get(c), float) else r.get(c, "") for c in cols})
    return path


def run(args: argparse.Namespace) -> int:
    if not 0.0 <= args.threshold <= 1.0:
        raise ValueError(f"--threshold must be in [0, 1], got {args.threshold}")
    rows = evaluate_files(args.pred, args.label, args.prob, args.regions, args.threshold,
                          topology=not args.no_topology, resample_pred=args.resample_pred)
    n = len({r["pred"] for r in rows if r["volume"] != "mean"})
    print(format_table(rows))
    if args.out:
        print(f"wrote {write_csv(rows, args.out)} ({n} volume(s) and the mean)")
    return 0
