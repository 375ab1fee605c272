"""Segmentation metrics: overlap (Dice, IoU, precision, recall), clDice, topology (Betti errors), ROC-AUC / AP,
and per-region evaluation on named boxes.

Masks are 3D arrays, anything non-zero is foreground. Conventions for empty sets: a ratio whose
denominator is zero is 1.0 when prediction and label agree (both empty) and 0.0 otherwise; ROC-AUC
and AP are NaN when the label has a single class.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

METRIC_NAMES = ("dice", "cldice", "precision", "recall", "iou", "betti0_error", "betti1_error")
PROB_METRIC_NAMES = ("roc_auc", "average_precision")

_FULL = np.ones((3, 3, 3), bool)  # 26-connectivity (foreground)


def _bool(a) -> np.ndarray:
    return np.asarray(a).astype(bool, copy=False)


def _check_pair(pred, label) -> tuple[np.ndarray, np.ndarray]:
    pred, label = _bool(pred), _bool(label)
    if pred.shape != label.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from label shape {label.shape}")
    return pred, label


def _ratio(num: float, den: float, agree: bool) -> float:
    return float(num / den) if den > 0 else (1.0 if agree else 0.0)


def confusion(pred, label) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives) in voxels."""
    pred, label = _check_pair(pred, label)
    tp = int(np.count_nonzero(pred & label))
    return tp, int(np.count_nonzero(pred)) - tp, int(np.count_nonzero(label)) - tp


def dice(pred, label) -> float:
    """2 |P & L| / (|P| + |L|)."""
    tp, fp, fn = confusion(pred, label)
    return _ratio(2 * tp, 2 * tp + fp + fn, fp + fn == 0)


def iou(pred, label) -> float:
    """|P & L| / |P | L| (Jaccard)."""
    tp, fp, fn = confusion(pred, label)
    return _ratio(tp, tp + fp + fn, fp + fn == 0)


def precision(pred, label) -> float:
    """|P & L| / |P|."""
    tp, fp, fn = confusion(pred, label)
    return _ratio(tp, tp + fp, fn == 0)


def recall(pred, label) -> float:
    """|P & L| / |L| (sensitivity)."""
    tp, fp, fn = confusion(pred, label)
    return _ratio(tp, tp + fn, fp == 0)


def skeleton(mask) -> np.ndarray:
    """Centreline voxels of a 3D binary mask (skimage ``skeletonize``, Lee's 3D thinning).

    Lee's thinning deletes some symmetric objects entirely (straight axis-aligned tubes of even
    width, cubes: scikit-image issue #3757). A component left without any skeleton voxel is thinned
    again after peeling one face layer per axis (which breaks the symmetry); if that fails too, its
    deepest voxel (largest distance to the background) stands for it.
    """
    from scipy import ndimage
    from skimage.morphology import skeletonize

    mask = _bool(mask)
    if not mask.any():
        return mask.copy()
    skel = _bool(skeletonize(mask))
    labels, n = ndimage.label(mask, structure=_FULL)
    missing = _components_without(skel, labels, n)
    if missing.size:
        lost = np.isin(labels, missing)
        peeled = lost.copy()
        for axis in range(3):
            shifted = np.roll(peeled, 1, axis=axis)
            np.moveaxis(shifted, axis, 0)[0] = False
            peeled &= shifted
        skel |= _bool(skeletonize(peeled)) & lost
        missing = _components_without(skel, labels, n)
    if missing.size:
        depth = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1, 1:-1]
        for pos in ndimage.maximum_position(depth, labels, index=missing):
            skel[pos] = True
    return skel


def _components_without(skel: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """Labels (1..n) of components holding no skeleton voxel."""
    has = np.zeros(n + 1, bool)
    has[labels[skel]] = True
    return np.flatnonzero(~has[1:]) + 1


def cldice(pred, label) -> float:
    """Centreline Dice: harmonic mean of topology precision |S(P) & L| / |S(P)| and sensitivity
    |S(L) & P| / |S(L)|, S = skeleton."""
    pred, label = _check_pair(pred, label)
    sp, sl = skeleton(pred), skeleton(label)
    tprec = _ratio(np.count_nonzero(sp & label), np.count_nonzero(sp), not label.any())
    tsens = _ratio(np.count_nonzero(sl & pred), np.count_nonzero(sl), not pred.any())
    return 0.0 if tprec + tsens == 0 else float(2 * tprec * tsens / (tprec + tsens))


def betti_numbers(mask) -> tuple[int, int, int]:
    """(b0, b1, b2) of a 3D binary mask: components (26-connected foreground), independent loops /
    tunnels, enclosed cavities (6-connected background components not touching the border).
    b1 = b0 + b2 - chi with the Euler characteristic chi from ``skimage.measure.euler_number``
    (connectivity 3, i.e. 26 / 6)."""
    from scipy import ndimage
    from skimage.measure import euler_number

    mask = _bool(mask)
    if mask.ndim != 3:
        raise ValueError(f"Betti numbers need a 3D mask, got shape {mask.shape}")
    if not mask.any():
        return 0, 0, 0
    b0 = int(ndimage.label(mask, structure=_FULL)[1])
    # pad the background with a border ring so that everything touching the border is one component
    _, n_bg = ndimage.label(np.pad(~mask, 1, constant_values=True), structure=ndimage.generate_binary_structure(3, 1))
    b2 = int(n_bg - 1)  # all but the outer one
    chi = int(euler_number(mask, connectivity=3))
    return b0, int(b0 + b2 - chi), b2


def betti_errors(pred, label) -> tuple[int, int]:
    """(|b0(P) - b0(L)|, |b1(P) - b1(L)|)."""
    pred, label = _check_pair(pred, label)
    bp, bl = betti_numbers(pred), betti_numbers(label)
    return abs(bp[0] - bl[0]), abs(bp[1] - bl[1])


def _prob_label(prob, label) -> tuple[np.ndarray, np.ndarray]:
    prob = np.asarray(prob, dtype=np.float64).ravel()
    label = _bool(label).ravel()
    if prob.shape != label.shape:
        raise ValueError(f"probability map size {prob.size} differs from label size {label.size}")
    if not np.isfinite(prob).all():
        raise ValueError("the probability map contains NaN or infinite values")
    return prob, label


def roc_auc(prob, label) -> float:
    """Area under the ROC curve, as the Mann-Whitney statistic with average ranks for ties. NaN if the
    label has a single class."""
    prob, label = _prob_label(prob, label)
    n_pos = int(label.sum())
    n_neg = label.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(prob, kind="stable")
    sorted_p = prob[order]
    # average rank (1-based) of each run of tied values
    starts = np.flatnonzero(np.r_[True, sorted_p[1:] != sorted_p[:-1]])
    ends = np.r_[starts[1:], sorted_p.size]
    run_rank = (starts + 1 + ends) / 2.0
    ranks = np.repeat(run_rank, ends - starts)
    pos_rank_sum = ranks[label[order]].sum()
    return float((pos_rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def average_precision(prob, label) -> float:
    """Average precision: sum over distinct thresholds of (R_n - R_{n-1}) * P_n (ties form one step).
    NaN without positives."""
    prob, label = _prob_label(prob, label)
    n_pos = int(label.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-prob, kind="stable")
    sorted_p, y = prob[order], label[order]
    tps = np.cumsum(y)
    last = np.r_[np.flatnonzero(sorted_p[1:] != sorted_p[:-1]), sorted_p.size - 1]  # end of each tie run
    tp = tps[last].astype(np.float64)
    prec = tp / (last + 1)
    rec = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, rec]) * prec))


def evaluate_masks(pred, label, prob=None, topology: bool = True) -> dict[str, float]:
    """All metrics for one prediction / label pair (``prob``, if given, adds ROC-AUC and AP)."""
    pred, label = _check_pair(pred, label)
    tp, fp, fn = confusion(pred, label)
    out = {"dice": _ratio(2 * tp, 2 * tp + fp + fn, fp + fn == 0),
           "cldice": cldice(pred, label),
           "precision": _ratio(tp, tp + fp, fn == 0),
           "recall": _ratio(tp, tp + fn, fp == 0),
           "iou": _ratio(tp, tp + fp + fn, fp + fn == 0)}
    if topology:
        out["betti0_error"], out["betti1_error"] = (float(e) for e in betti_errors(pred, label))
    if prob is not None:
        if np.shape(prob) != label.shape:
            raise ValueError(f"probability map shape {np.shape(prob)} differs from label shape {label.shape}")
        out["roc_auc"] = roc_auc(prob, label)
        out["average_precision"] = average_precision(prob, label)
    return out


# ---------------------------------------------------------------------------------------------- regions


def load_regions(path: str | Path) -> list[dict[str, Any]]:
    """Named boxes from JSON ``{"regions": [{"name": "small", "box": [[i0, j0, k0], [i1, j1, k1]]}, ...]}``.

    Box corners are voxel indices, start inclusive and end exclusive (Python slices).
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such regions file") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    regions = doc.get("regions") if isinstance(doc, dict) else None
    if not isinstance(regions, list) or not regions:
        raise ValueError(f"{path}: expected {{\"regions\": [{{\"name\": ..., \"box\": [[i0,j0,k0],[i1,j1,k1]]}}, ...]}}")
    out, names = [], set()
    for n, reg in enumerate(regions):
        try:
            name = str(reg["name"])
            lo, hi = (np.asarray(c, dtype=int) for c in reg["box"])
            if lo.shape != (3,) or hi.shape != (3,):
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: region {n} needs a \"name\" and a \"box\" [[i0,j0,k0],[i1,j1,k1]]") from None
        if (hi <= lo).any() or (lo < 0).any():
            raise ValueError(f"{path}: region {name!r} has an empty or negative box {lo.tolist()}..{hi.tolist()}")
        if name in names:
            raise ValueError(f"{path}: region name {name!r} appears twice")
        names.add(name)
        out.append({"name": name, "box": (tuple(lo.tolist()), tuple(hi.tolist()))})
    return out


def _box_slices(box, shape) -> tuple[slice, ...]:
    lo, hi = box
    if any(h > s for h, s in zip(hi, shape)):
        raise ValueError(f"region box {list(lo)}..{list(hi)} extends beyond the volume shape {shape}")
    return tuple(slice(a, b) for a, b in zip(lo, hi))


def evaluate_regions(pred, label, regions: Sequence[dict[str, Any]], prob=None,
                     topology: bool = True) -> dict[str, dict[str, float]]:
    """Metrics per named box, plus ``"weighted"``: each metric averaged over the regions weighted by
    region volume (voxels), as the reference aggregates its small- and large-vessel regions."""
    pred, label = _check_pair(pred, label)
    rows: dict[str, dict[str, float]] = {}
    weights = []
    for reg in regions:
        if reg["name"] == "weighted":
            raise ValueError("a region may not be called 'weighted' (the name of the aggregate row)")
        sl = _box_slices(reg["box"], pred.shape)
        rows[reg["name"]] = evaluate_masks(pred[sl], label[sl], None if prob is None else np.asarray(prob)[sl],
                                           topology=topology)
        weights.append(float(np.prod([s.stop - s.start for s in sl])))
    rows["weighted"] = weighted_mean(list(rows.values()), weights)
    return rows


def weighted_mean(rows: Sequence[dict[str, float]], weights: Sequence[float] | None = None) -> dict[str, float]:
    """Per-metric weighted mean over rows, ignoring NaN entries (e.g. AUC of a region without vessels)."""
    keys = [k for k in rows[0] if all(k in r for r in rows)]
    w = np.ones(len(rows)) if weights is None else np.asarray(weights, float)
    out = {}
    for key in keys:
        vals = np.array([r[key] for r in rows], float)
        ok = np.isfinite(vals)
        out[key] = float(np.sum(vals[ok] * w[ok]) / np.sum(w[ok])) if ok.any() else float("nan")
    return out
