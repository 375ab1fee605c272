"""Scoring predicted vessel masks against labels: pairing files by name, voxel-grid checks, metrics per
pair (Dice, clDice, precision, recall, IoU, Betti errors, ROC-AUC / AP) and their mean.

Files are NIfTI (.nii / .nii.gz) or TIFF (.tif / .tiff / .ome.tif, as ``octasim segment`` writes
them for TIFF scans); voxel sizes in um. ``octasim evaluate`` is a thin command line over
:func:`evaluate_files`::

    from octasim.evaluate import evaluate_files
    rows = evaluate_files(["seg/"], ["labels/"])   # one dict per volume, then the mean row(s)
"""
from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from octasim.nifti import (Volume, VolumeError, affine_um, grid_differences, is_nifti, list_volumes,
                           octasim_convention_change, read_volume, resample_to_grid)
from octasim.segment import output_stem
from octasim.tiff import is_tiff, read_tiff, tiff_voxel_size

#: role suffixes stripped from a file's name (after .nii / .nii.gz / .tif / .tiff) to get its pairing key
ROLE_SUFFIX = re.compile(r"_(mask|prob|pred|seg|label|labels)$", re.IGNORECASE)
#: the file types evaluation reads, for messages
_FILE_TYPES = ".nii / .nii.gz / .tif / .tiff"

PathLike = str | Path


def file_key(path: PathLike) -> str:
    """Pairing key: the name without .nii / .nii.gz / .tif / .tiff / .ome.tif(f) and without a trailing
    role (_mask, _prob, _pred, _seg, _label, _labels)."""
    return ROLE_SUFFIX.sub("", output_stem(path))


def collect_files(items: Iterable[PathLike] | PathLike, prefer: str | None = None) -> list[Path]:
    """NIfTI and TIFF files from files / folders (one path or several; files given are kept as they are).
    In a folder holding ``*_<prefer>`` files (``octasim segment`` output, e.g. prefer='mask'), only those."""
    if isinstance(items, (str, Path)):
        items = [items]
    out: list[Path] = []
    for item in items:
        item = Path(item)
        files = list_volumes([item], tiff=True)
        if item.is_dir() and prefer:
            chosen = [f for f in files if output_stem(f).lower().endswith(f"_{prefer.lower()}")]
            files = chosen or files
        out.extend(files)
    return out


def _names(paths: Sequence[Path], limit: int = 10) -> str:
    """Comma-separated file names (at most ``limit``), or 'none'."""
    if not paths:
        return "none"
    more = f" ... and {len(paths) - limit} more" if len(paths) > limit else ""
    return ", ".join(p.name for p in paths[:limit]) + more


def _by_key(paths: Sequence[Path], what: str) -> dict[str, Path]:
    """{key: path}; ValueError when two files share a key."""
    out: dict[str, Path] = {}
    for path in paths:
        key = file_key(path)
        if key in out:
            raise ValueError(f"two {what} have the name {key!r} once .nii(.gz) / .tif(f) and a role suffix such as "
                             f"_mask are stripped: {out[key]} and {path}; keep only one of them")
        out[key] = path
    return out


def pair_files(preds: Sequence[Path], labels: Sequence[Path], what: str = "predictions") -> list[tuple[Path, Path]]:
    """Pair each of ``preds`` with the label of the same key (see :func:`file_key`), in the order of ``preds``.

    A single prediction and a single label pair as given. Otherwise the keys must match one to one:
    ValueError listing the unmatched names (no guessing by sorted order). ``what`` names the
    predictions in messages (e.g. 'probability maps').
    """
    preds, labels = [Path(p) for p in preds], [Path(p) for p in labels]
    if not preds:
        raise ValueError(f"no {what} found ({_FILE_TYPES})")
    if not labels:
        raise ValueError(f"no labels found ({_FILE_TYPES})")
    if len(preds) == 1 and len(labels) == 1:
        return [(preds[0], labels[0])]
    pred_by_key, label_by_key = _by_key(preds, what), _by_key(labels, "labels")
    lonely_preds = [p for k, p in pred_by_key.items() if k not in label_by_key]
    lonely_labels = [p for k, p in label_by_key.items() if k not in pred_by_key]
    if lonely_preds or lonely_labels:
        raise ValueError(
            f"{len(preds)} {what} and {len(labels)} labels do not match one to one by name (a file's name "
            f"without {_FILE_TYPES} and without a trailing _mask, _prob, _pred, _seg, _label or _labels must "
            f"equal its partner's). {what.capitalize()} without a label: {_names(lonely_preds)}. Labels "
            f"without a {what[:-1]}: {_names(lonely_labels)}. Rename the files so "
            "that each pair shares its name (e.g. scan01_mask.nii.gz and scan01.nii.gz)")
    return [(p, label_by_key[k]) for k, p in pred_by_key.items()]


# ------------------------------------------------------------------------------------------ reading
@dataclass
class EvalVolume:
    """A prediction, probability map or label read for evaluation.

    ``volume``: as read (NIfTI: float32 data with its header; TIFF: the file's dtype, ``header`` None).
    ``spacing_um``: voxel size in um along i, j, k; None for a TIFF without calibration (its
    ``volume.spacing_um`` is then a placeholder and is never used).
    """

    path: Path
    volume: Volume
    spacing_um: tuple[float, float, float] | None

    @property
    def is_nifti(self) -> bool:
        return self.volume.header is not None

    @property
    def data(self) -> np.ndarray:
        return self.volume.data

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.volume.data.shape)

    @property
    def stored_dtype(self) -> np.dtype:
        """The voxel type in the file (NIfTI data are read as float32)."""
        return self.volume.header.get_data_dtype() if self.is_nifti else self.volume.data.dtype


def read_eval_volume(path: PathLike, voxel_size_um: Sequence[float] | float | None = None) -> EvalVolume:
    """Read a NIfTI or TIFF file (by suffix) for evaluation.

    ``voxel_size_um`` (um along x, y, z) overrides the voxel size of TIFF files; NIfTI files keep their
    header's. A TIFF without calibration is read anyway (``spacing_um`` None): the metrics need no
    voxel size. VolumeError naming the file otherwise (also for an implausible TIFF calibration).
    """
    path = Path(path)
    if is_tiff(path):
        if voxel_size_um is not None:
            vol = read_tiff(path, voxel_size_um)
            return EvalVolume(path, vol, vol.spacing_um)
        try:
            vol = read_tiff(path)
            return EvalVolume(path, vol, vol.spacing_um)
        except VolumeError:
            if not path.is_file() or tiff_voxel_size(path)[0] is not None:
                raise  # missing / damaged file, implausible calibration, 2D image ...
        vol = read_tiff(path, voxel_size_um=1.0)  # placeholder voxel size: compared on the voxel grid only
        return EvalVolume(path, vol, None)
    if not is_nifti(path) and path.exists() and not path.is_dir():
        raise VolumeError(f"{path}: not a file octasim evaluate reads (expected .nii, .nii.gz, .tif or .tiff)")
    vol = read_volume(path)
    return EvalVolume(path, vol, vol.spacing_um)


def binary_label(label: EvalVolume) -> np.ndarray:
    """Vessel mask of a label: non-zero voxels of integer files (1, 255, -1 ... all count), voxels > 0.5
    of float files."""
    if np.issubdtype(label.stored_dtype, np.integer):
        return label.data != 0
    return label.data > 0.5


def prediction_mask(pred: EvalVolume, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray | None]:
    """(mask, probability float32 or None): a float file with values other than 0 / 1 is a probability
    map in [0, 1] (ValueError otherwise), thresholded at ``threshold`` (vessel if prob > threshold)."""
    data = pred.data
    if np.issubdtype(pred.stored_dtype, np.floating) and not np.isin(data, (0.0, 1.0)).all():
        if data.min() < 0 or data.max() > 1:
            raise ValueError(f"{pred.path}: float prediction with values outside [0, 1] "
                             f"({data.min():g}..{data.max():g}); expected a mask or a probability map")
        return data > threshold, data.astype(np.float32, copy=False)
    return data != 0, None


# ------------------------------------------------------------------------------------------ voxel grids
def _spacing_affine(spacing_um: Sequence[float]) -> np.ndarray:
    """Affine (um) of a grid known by its voxel size only: axes along i, j, k, voxel 0 at the origin."""
    return np.diag([*spacing_um, 1.0])


def _convention_note(src: EvalVolume, label: EvalVolume) -> str:
    """A note when two NIfTI files differ only by octasim's change of affine convention (one written
    before depth pointed inferior, one after; same shape): their voxels correspond one to one, so they
    are compared as stored, never resampled (which would turn depth upside down). '' otherwise."""
    if src.shape != label.shape or not octasim_convention_change(affine_um(src.volume), affine_um(label.volume)):
        return ""
    return (f"note: {src.path.name} and {label.path.name} were written by octasim with different affine "
            "conventions (depth pointing superior in older files, inferior in newer ones); same voxel grid "
            "otherwise, compared voxel by voxel")


def _uncalibrated_note(src: EvalVolume, label: EvalVolume) -> str:
    """For a pair with a TIFF without voxel size: a note when the shapes match (compared voxel by voxel),
    else ValueError naming the file."""
    missing = [v for v in (src, label) if v.spacing_um is None]
    names = " and ".join(v.path.name for v in missing)
    if src.shape == label.shape:
        both = "they have" if len(missing) > 1 else f"{src.path.name} and {label.path.name} have"
        return (f"note: {names} {'carry' if len(missing) > 1 else 'carries'} no voxel size (TIFF without "
                f"calibration); {both} the same shape {src.shape} and are compared voxel by voxel")
    first = missing[0]
    other = label if first is src else src
    raise ValueError(f"{first.path}: the TIFF carries no voxel size (no calibration) and its shape {first.shape} "
                     f"differs from the shape {other.shape} of {other.path}, so the two cannot be put on one voxel "
                     "grid. Give the voxel size of the TIFF files with --voxel-size X Y Z (um along x, y, z) and "
                     "add --resample-pred, or save the prediction on its label's grid")


def grid_mismatch(src: EvalVolume, label: EvalVolume, resample: bool = False) -> tuple[str, str]:
    """(note, mismatch): how the voxel grid of ``src`` (a prediction or probability map) differs from its
    label's, '' when it matches; ValueError naming both files when it differs and ``resample`` is off.

    Two NIfTI files compare affines (voxel size, orientation, origin; tolerances of
    :func:`octasim.nifti.grid_differences`) and shapes; otherwise (a TIFF involved) voxel size and shape
    only. ``note`` (to print) says why files are compared voxel by voxel although their headers differ:
    octasim's change of affine convention, or a TIFF without calibration of the same shape.
    """
    if src.is_nifti and label.is_nifti:
        note = _convention_note(src, label)
        if note:
            return note, ""
        diffs = grid_differences(affine_um(src.volume), affine_um(label.volume))
        same, kind = "voxel size, orientation and origin", "NIfTI affine"
        how = "through the world coordinates of both headers"
        fix = "save the prediction with the label's header"
    elif src.spacing_um is None or label.spacing_um is None:
        return _uncalibrated_note(src, label), ""
    else:
        diffs = grid_differences(_spacing_affine(src.spacing_um), _spacing_affine(label.spacing_um))
        kinds = "TIFF files" if not (src.is_nifti or label.is_nifti) else "a NIfTI and a TIFF file"
        same, kind = "voxel size", f"voxel size and shape only, as for {kinds}"
        how = "by voxel size (voxel 0 on voxel 0)"
        fix = "save the prediction on the label's grid"
    shapes = f"shape {src.shape} vs {label.shape}"
    if not diffs and src.shape == label.shape:
        return "", ""
    if not diffs:
        if not resample:
            raise ValueError(f"{src.path} has shape {src.shape} but its label {label.path} has shape "
                             f"{label.shape} (same {same}: a cropped or padded prediction? --resample-pred pads / "
                             "crops it onto the label's grid)")
        return "", shapes
    if src.shape != label.shape:
        diffs.append(shapes)
    text = "; ".join(diffs)
    if not resample:
        raise ValueError(f"{src.path} and its label {label.path} are not on the same voxel grid ({kind}, "
                         f"prediction vs label): {text}. Compared voxel by voxel they would score different places "
                         f"of the brain against each other. Pass --resample-pred to resample the prediction onto "
                         f"the label's grid {how}, or {fix}")
    return "", text


def to_label_grid(data: np.ndarray, src: EvalVolume, label: EvalVolume, order: int) -> np.ndarray:
    """``data`` on the grid of ``src`` resampled onto the grid of ``label`` (order 0 nearest, 1 linear;
    outside ``src`` = 0): through world coordinates for two NIfTI files, else by voxel size."""
    if src.is_nifti and label.is_nifti:
        return resample_to_grid(data, affine_um(src.volume), affine_um(label.volume), label.shape, order)
    return resample_to_grid(data, _spacing_affine(src.spacing_um), _spacing_affine(label.spacing_um),
                            label.shape, order)


def _on_label_grid(data: np.ndarray, src: EvalVolume, label: EvalVolume, resample: bool, order: int,
                   echo: Callable[[str], None]) -> np.ndarray:
    """``data`` (a mask when ``order`` is 0, else probabilities) checked against / resampled onto the
    label's grid, with the notes printed through ``echo``."""
    note, mismatch = grid_mismatch(src, label, resample)
    if note:
        echo(note)
    if not mismatch:
        return data
    echo(f"note: resampled {src.path.name} onto the grid of {label.path.name}: {mismatch}")
    if order == 0:
        return to_label_grid(data.astype(np.uint8), src, label, order=0) != 0
    return to_label_grid(data, src, label, order=1)


# ------------------------------------------------------------------------------------------ evaluation
def evaluate_files(pred_items: Iterable[PathLike] | PathLike, label_items: Iterable[PathLike] | PathLike,
                   prob_items: Iterable[PathLike] | PathLike | None = None, regions_file: PathLike | None = None,
                   threshold: float = 0.5, topology: bool = True, progress: bool | None = None,
                   resample_pred: bool = False, echo: Callable[[str], None] = print,
                   voxel_size_um: Sequence[float] | float | None = None) -> list[dict[str, Any]]:
    """Score predictions against labels: per-volume (and per-region) metric rows, then mean rows.

    ``pred_items`` / ``label_items`` / ``prob_items``: NIfTI or TIFF files or folders, one or a list (in a folder from
    ``octasim segment``, the ``*_mask`` / ``*_prob`` files); paired by :func:`pair_files`.
    ``regions_file``: JSON of named boxes (see :func:`octasim.metrics.load_regions`). ``threshold``:
    applied to probability maps given as predictions. ``topology``: Betti errors (slow on huge
    volumes). ``resample_pred``: resample predictions onto their label's grid instead of raising
    ValueError on a mismatch (see :func:`grid_mismatch`). ``voxel_size_um``: voxel size (um along x,
    y, z) of TIFF files, overriding their metadata. Prints (through ``echo``) the pairs used, every
    resampled file and every pair compared voxel by voxel despite differing or missing headers.
    Each row: volume (pairing key or 'mean'), pred, label, region ('whole', a region's name or
    'weighted') and the metrics of :func:`octasim.metrics.evaluate_masks`.
    """
    from tqdm.auto import tqdm

    from octasim.metrics import evaluate_masks, evaluate_regions, load_regions

    regions = load_regions(regions_file) if regions_file else None
    labels = collect_files(label_items)
    pairs = pair_files(collect_files(pred_items, "mask"), labels)
    prob_for: dict[Path, Path] = {}
    if prob_items:
        prob_for = {lab: prb for prb, lab in pair_files(collect_files(prob_items, "prob"), labels,
                                                         "probability maps")}
    echo("pairs (prediction <-> label):")
    for pred_path, label_path in pairs:
        extra = f"  (probabilities: {prob_for[label_path].name})" if label_path in prob_for else ""
        echo(f"  {pred_path.name} <-> {label_path.name}{extra}")

    rows: list[dict[str, Any]] = []
    bar = tqdm(pairs, desc="evaluate", unit="vol", disable=True if progress is False else (False if progress else None))
    for pred_path, label_path in bar:
        pred = read_eval_volume(pred_path, voxel_size_um)
        mask, prob = prediction_mask(pred, threshold)
        label_vol = read_eval_volume(label_path, voxel_size_um)
        label = binary_label(label_vol)
        mask = _on_label_grid(mask, pred, label_vol, resample_pred, 0, echo)
        if prob is not None and label_path not in prob_for:  # a probability map given as prediction
            prob = _on_label_grid(prob, pred, label_vol, resample_pred, 1, lambda _: None)  # notes said for mask
        if label_path in prob_for:
            pvol = read_eval_volume(prob_for[label_path], voxel_size_um)
            prob = _on_label_grid(pvol.data.astype(np.float32, copy=False), pvol, label_vol, resample_pred, 1, echo)
        base = {"volume": file_key(pred_path), "pred": str(pred_path), "label": str(label_path)}
        if regions:
            for name, metrics in evaluate_regions(mask, label, regions, prob, topology=topology).items():
                rows.append({**base, "region": name, **metrics})
        else:
            rows.append({**base, "region": "whole", **evaluate_masks(mask, label, prob, topology=topology)})
    return rows + mean_rows(rows)


def mean_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One 'mean' row per region name of ``rows`` (metrics averaged over volumes)."""
    from octasim.metrics import weighted_mean

    means = []
    for name in dict.fromkeys(r["region"] for r in rows):
        group = [{k: v for k, v in r.items() if k not in ("volume", "pred", "label", "region")}
                 for r in rows if r["region"] == name]
        means.append({"volume": "mean", "pred": "", "label": "", "region": name, **weighted_mean(group)})
    return means


# ------------------------------------------------------------------------------------------ output
def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a text table (floats to 4 decimals; without the pred / label paths)."""
    cols = [c for c in rows[0] if c not in ("pred", "label")]
    cells = [[_fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def write_csv(rows: Sequence[dict[str, Any]], path: PathLike) -> Path:
    """Write the rows as CSV, atomically (floats in full precision); returns the path."""
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
