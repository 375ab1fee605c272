"""``octasim evaluate``: Dice, clDice, precision, recall, IoU, Betti errors (and ROC-AUC / AP) of predictions vs labels."""
from __future__ import annotations

import argparse
import csv
import math
import re
from pathlib import Path

DESCRIPTION = """\
Compare predicted vessel masks with label masks (NIfTI files or folders of them) and report, per
volume and as a mean: Dice, clDice, precision, recall, IoU, Betti-0 error (connected components)
and Betti-1 error (independent loops), plus ROC-AUC and average precision when probability maps
are available (--prob, or probability maps given as --pred, which are then thresholded at
--threshold: voxel is vessel if prob > threshold). Label voxels are vessel if non-zero (integer
files) or > 0.5 (float files).

Pairing rule: each file's key is its name without .nii / .nii.gz and without a trailing
_mask, _prob, _pred, _seg, _label or _labels (so sample_0003_mask.nii.gz pairs with
sample_0003.nii.gz or sample_0003_label.nii.gz). If the keys match one to one, files pair by key;
otherwise they pair in sorted order (folders are listed sorted by name) and the pairs are printed.
Different numbers of predictions and labels, or a shape mismatch in a pair, are errors.

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


def pair_files(preds: list[Path], labels: list[Path], what: str = "predictions") -> tuple[list[tuple[Path, Path]], str]:
    """Pair two file lists by key (see ``file_key``), else by sorted order; returns (pairs, rule used)."""
    if not preds:
        raise ValueError(f"no {what} found (.nii / .nii.gz)")
    if not labels:
        raise ValueError("no labels found (.nii / .nii.gz)")
    if len(preds) != len(labels):
        raise ValueError(f"{len(preds)} {what} but {len(labels)} labels; give the same number of each "
                         f"({what}: {', '.join(p.name for p in preds[:5])}{' ...' if len(preds) > 5 else ''}; "
                         f"labels: {', '.join(p.name for p in labels[:5])}{' ...' if len(labels) > 5 else ''})")
    if len(preds) == 1:
        return [(preds[0], labels[0])], "single pair"
    pk = [file_key(p) for p in preds]
    lk = [file_key(p) for p in labels]
    if len(set(pk)) == len(pk) and len(set(lk)) == len(lk) and set(pk) == set(lk):
        by_key = dict(zip(lk, labels))
        return [(p, by_key[k]) for p, k in zip(preds, pk)], "by name"
    return list(zip(preds, labels)), "by sorted order"


def _binary_label(path: Path):
    from octasim.nifti import read_volume

    return read_volume(path).data > 0.5  # integer labels: any non-zero value; float labels: > 0.5


def _load_pred(path: Path, threshold: float):
    """(mask, probability or None): a float file with values other than 0 / 1 is a probability map."""
    import numpy as np

    from octasim.nifti import read_volume

    vol = read_volume(path)
    data = vol.data
    stored_float = np.issubdtype(vol.header.get_data_dtype(), np.floating)
    if stored_float and not np.isin(data, (0.0, 1.0)).all():
        if data.min() < 0 or data.max() > 1:
            raise ValueError(f"{path}: float prediction with values outside [0, 1] "
                             f"({data.min():g}..{data.max():g}); expected a mask or a probability map")
        return data > threshold, data
    return data != 0, None


def evaluate_files(pred_items, label_items, prob_items=None, regions_file=None, threshold: float = 0.5,
                   topology: bool = True, progress: bool | None = None) -> tuple[list[dict], str]:
    """Per-volume (and per-region) metric rows plus mean rows; returns (rows, pairing rule used)."""
    from tqdm.auto import tqdm

    from octasim.metrics import evaluate_masks, evaluate_regions, load_regions, weighted_mean
    from octasim.nifti import read_volume

    regions = load_regions(regions_file) if regions_file else None
    preds = _collect(pred_items, "mask")
    labels = _collect(label_items, None)
    pairs, rule = pair_files(preds, labels)
    prob_for = {}
    if prob_items:
        probs = _collect(prob_items, "prob")
        prob_pairs, _ = pair_files(probs, labels, "probability maps")
        prob_for = {lab: prb for prb, lab in prob_pairs}

    rows: list[dict] = []
    bar = tqdm(pairs, desc="evaluate", unit="vol", disable=True if progress is False else (False if progress else None))
    for pred_path, label_path in bar:
        mask, prob = _load_pred(pred_path, threshold)
        label = _binary_label(label_path)
        if mask.shape != label.shape:
            raise ValueError(f"{pred_path} has shape {mask.shape} but its label {label_path} has shape {label.shape}")
        if label_path in prob_for:
            pvol = read_volume(prob_for[label_path])
            if pvol.data.shape != label.shape:
                raise ValueError(f"{prob_for[label_path]} has shape {pvol.data.shape} but its label "
                                 f"{label_path} has shape {label.shape}")
            prob = pvol.data
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
    return rows + means, rule


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
    rows, rule = evaluate_files(args.pred, args.label, args.prob, args.regions, args.threshold,
                                topology=not args.no_topology)
    n = len({r["pred"] for r in rows if r["volume"] != "mean"})
    if rule == "by sorted order":
        print("note: file names do not match one to one, so predictions and labels were paired in sorted order:")
        for r in rows:
            if r["volume"] != "mean" and r["region"] in ("whole", "weighted"):
                print(f"  {Path(r['pred']).name} <-> {Path(r['label']).name}")
    print(format_table(rows))
    if args.out:
        print(f"wrote {write_csv(rows, args.out)} ({n} volume(s) and the mean)")
    return 0
