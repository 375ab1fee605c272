"""Segmenting scans: sliding-window U-Net inference, Otsu / Frangi baselines, and batch processing of files.

Units: voxel sizes in um, component volumes in um^3. Arrays are indexed (i, j, k); the depth axis is
moved to k for processing (``depth_axis``) and back for the outputs, which always have the input's
shape.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from octasim.nifti import NIFTI_SUFFIXES, list_volumes
from octasim.preprocess import (CLIP_PERCENTILES, from_depth_last, normalize_percentiles, resample,
                                resampled_shape, to_depth_last)
from octasim.scan import OUTPUT_FORMATS, OUTPUT_SUFFIX, check_spacing, read_scan, write_like
from octasim.scan import output_format as _output_format
from octasim.tiff import TIFF_SUFFIXES

METHODS = ("unet", "otsu", "frangi")
#: Frangi scales (um): capillaries (r 2-3 um) up to penetrating and pial vessels.
DEFAULT_FRANGI_SIGMAS_UM = (2.0, 4.0, 8.0)
#: the Frangi filter's isotropic grid is never finer than this (um), to keep memory bounded
FRANGI_MIN_GRID_UM = 2.0


def _clip_percentiles(state: dict[str, Any] | None) -> tuple[float, float]:
    """The percentiles a checkpoint's inputs are scaled by (as inference reads them), else the default."""
    from octasim.inference import ModelGrid

    return ModelGrid.from_checkpoint(state).clip_percentiles if state else CLIP_PERCENTILES


def remove_small_components(mask: np.ndarray, spacing_um: Sequence[float], min_volume_um3: float) -> np.ndarray:
    """Drop 26-connected foreground components smaller than ``min_volume_um3`` (um^3); returns uint8."""
    mask = np.asarray(mask).astype(bool, copy=False)
    if min_volume_um3 <= 0 or not mask.any():
        return mask.astype(np.uint8)
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    voxel_um3 = float(np.prod(check_spacing(spacing_um)))
    sizes = np.bincount(labels.ravel(), minlength=n + 1) * voxel_um3
    keep = sizes >= min_volume_um3
    keep[0] = False
    return keep[labels].astype(np.uint8)


def complete_wide_lumens(mask: np.ndarray, spacing_um: Sequence[float], min_width_um: float,
                         imaged: np.ndarray | None = None, image: np.ndarray | None = None) -> np.ndarray:
    """The widest vessel of each column made as deep below its middle as it is above it, and filled
    up to the scan's top where its round section reaches above it (depth along k, k = 0 the surface
    side; ``spacing_um`` along i, j, k): returns a bool mask holding ``mask``.

    Why: two-photon excitation is scattered by the blood it crosses, so a wide lumen dims with depth
    inside itself and the network labels its upper part only (v3 on procedural surface stacks: recall
    0.90 in the upper half of pial vessels, 0.18 in the lower, where the lumen is still 3x brighter than
    the tissue). A vessel is a tube and its cross-section about round, so the upper half found fixes
    the lower one. For every column (i, j) through a band of the lateral plane at least
    ``min_width_um`` wide (a lateral disk of that diameter fits in it), the column's run of vessel
    voxels from its top down to the section's middle is mirrored below the middle. A round section
    reaches ``sqrt(r^2 - x^2)`` above and below its middle in a column ``x`` from its axis, ``r`` its
    radius: the largest such reach over the disks inside the slice's vessels that hold the column
    (:func:`round_section_reach`, so a vessel merged with a wider one in the slice keeps its own width).
    The middle is the lower of: the slice where the vessel is widest
    across the lateral plane (the middle of the slices equally wide, as widths come in whole voxels),
    and the run's top plus that reach. The second, because the mask narrows where the lumen dims, so
    its widest slice can lie well above the vessel's axis (synthetic r = 60 um vessels: 25 um above);
    for it the reach is the largest over the slices from the run's top to the middle, because below
    the axis the network may label a dim lumen's two walls but not its middle, and a column off the
    axis is then widest in a slice where the section is two narrow walls (synthetic r = 60 um two-photon
    vessel: recall 0.77 -> 0.87 with the reach taken from the slices above, the real stacks unchanged);
    it is not used where the run starts at the first imaged slice of its column (the scan's top, or
    the top of the region ``imaged``, bool, ``mask``'s shape: the vessel's top may be cut off). The
    run is taken from no higher than the reach above the widest slice: a capillary or a crossing
    vessel joined to it from above does not deepen it. Nothing is added where the widest slice is the
    top of a run that starts at the first imaged slice (a vessel cut by it), nor in a vessel running along
    depth (its width does not change with depth, its run is longer than its reach), nor in narrower
    vessels, nor below the scan.

    A vessel cut by the scan's top: where the round section about the widest slice would reach above
    the first imaged slice, the column is vessel from that slice down, and, where the vessel is
    narrower above its widest slice (its axis inside the scan), down to the section's reach below
    that slice: a cut top cannot be mirrored (procedural surface stacks, windows starting 0-30 um below
    the brain surface: 0.691 -> 0.748 mean Dice; the shared surface stack 0.887 -> 0.902; synthetic r =
    60 um vessel recall 0.87 -> 0.90). Where the first imaged slice is as wide as any (widths tie in
    whole voxels near the axis) the axis may lie anywhere above it: not deepened. A surface stack's
    first slices cut its pial vessels out of focus, and there their lumens are dim: the shared surface
    stack's widest vein brightens from 15 to 45 over its first 20 um (tissue 9-11), was labelled in all
    ten slices and found by the network in the middle six (Dice 0.854 -> 0.887, precision unchanged). The mask
    cannot tell this from a mask that narrows above the axis close to the scan's top (its widest slice
    high), where the fill lies above the vessel: synthetic r = 60 um vessel 0.854 -> 0.843 Dice, the
    procedural surface stacks 0.6916 -> 0.6909; a tube whose mask ends 6-12 um above its axis and whose
    top lies 2-5 um below the first slice gets 5-8 um above its top (precision 1.00 -> 0.91-0.97).
    And a vessel cut above its axis whose first slices the mask draws narrower (dim, out of focus)
    looks as if its axis were inside the scan, and is deepened below it by as much as its widest slice
    lies below the axis (synthetic r = 30 um tubes, axis 1-6 um above the scan, first 2-5 slices 2-4 um
    narrower, found whole: precision 0.95-1.00 -> 0.71-0.92; found down to 12 um only: Dice 0.65-0.75
    -> 0.83-0.96). A column with no imaged voxel is not filled above its run.

    A lumen followed below the mask (``image``: the scan as the network saw it, scaled to [0, 1],
    ``mask``'s shape): below each wide column's completed run, the column is vessel as long as the
    image there (a 3 x 3 lateral median) stays at least ``MIN_LUMEN_CONTRAST`` (2) times the median of
    its slice's tissue (the voxels the mask leaves out, inside ``imaged``): the lumen / tissue contrast
    the coarse views' gate already asks of a wide vessel; only where that bright run closes (turns
    dark) inside the scan within ``MAX_LUMEN_EXTENSION`` times the completed run below it, as a lumen
    does at its bottom (a run into the lower edge of ``imaged`` is not seen to close): an OCT-A
    projection tail is as bright as a lumen below a wide vessel but reaches farther (it fades over
    hundreds of um), and is left alone. Where the blood above dims a wide lumen, the
    network stops while the lumen is still 3-4x as bright as the tissue, and the mask splits into two
    walls, so the round section drawn from it falls short (synthetic r = 60 um two-photon vessel:
    the mask reached 105 um of a 134 um deep lumen; recall 0.807 -> 0.936).

    Limits: the lumen following takes a short bright run below a wide vessel for its lumen (another
    vessel right below it, a projection tail that fades within the vessel's depth);
    a wide sheet tilted across the array's lateral edge can be extended by part of its width
    (outside the array is not background); a vessel flatter than round (wider than deep) is deepened
    toward a round section, found whole or not; a scan whose top slices are blank but not excluded by
    ``imaged`` looks as if its vessels' tops were there.
    """
    from scipy import ndimage

    m = np.asarray(mask).astype(bool)
    spacing = check_spacing(spacing_um)
    lateral = tuple(float(s) for s in spacing[:2])
    half = float(min_width_um) / 2.0
    # a band n voxels wide has its middle (n + 1) / 2 voxels from the background (voxel centres)
    core_um = half + 0.5 * min(lateral)
    width = np.zeros(m.shape, np.float32)   # in-plane distance to the background (um) within wide bands, else 0
    wide_slices = []  # slices holding a wide band (their distance transforms are recomputed when needed:
    # cheaper than holding one per slice of a large scan)
    for k in range(m.shape[2]):
        if not m[..., k].any():
            continue
        dist = ndimage.distance_transform_edt(m[..., k], sampling=lateral)
        core = dist >= core_um
        if not core.any():
            continue
        wide_slices.append(k)
        band = ndimage.distance_transform_edt(~core, sampling=lateral) < half  # within half of a centre
        width[..., k] = np.where(band, dist, 0.0)
    n = m.shape[2]
    index = np.int16 if 4 * n < np.iinfo(np.int16).max else np.int32  # small index arrays (sums reach 4 n)
    depth = np.arange(n, dtype=index)[None, None, :]
    first = width.argmax(axis=2)[..., None].astype(index)   # first widest slice of each column
    above_gap = np.maximum.accumulate(np.where(m, index(-1), depth), axis=2)  # last background slice at or above k
    top = np.take_along_axis(above_gap, first, axis=2) + 1                     # top of the run through it
    below_gap = np.minimum.accumulate(np.where(m, index(n), depth)[..., ::-1], axis=2)[..., ::-1]
    bottom = np.take_along_axis(below_gap, first, axis=2) - 1                  # and its bottom
    # the mask's widths are whole voxels, so a round cross-section is equally wide over several
    # slices about its middle: the middle of those (within the run) is the widest slice
    widest_here = (width == width.max(axis=2, keepdims=True)) & (depth <= bottom)
    last = n - 1 - widest_here[..., ::-1].argmax(axis=2)[..., None].astype(index)
    middle = (first + last) // 2
    # how far the round section through the middle reaches above and below it in this column (slices),
    # computed on the slices that are some wide column's middle only (as it is read only there)
    reach = np.zeros(middle.shape, np.float32)
    wide = np.take_along_axis(width, middle.astype(np.intp), axis=2) > 0

    def slice_reach(k: int) -> np.ndarray:
        return round_section_reach(ndimage.distance_transform_edt(m[..., k], sampling=lateral), lateral, half)

    middle_reach = {int(k): slice_reach(int(k)) for k in np.unique(middle[wide])}
    for k, reach_k in middle_reach.items():
        here = wide & (middle == k)
        reach[here] = reach_k[here[..., 0]]
    reach = np.minimum(reach / spacing[2], n)
    run_top = top
    top = np.maximum(top, middle - np.ceil(reach).astype(index))
    bottom = 2 * middle - top  # the run mirrored about the widest slice
    # where the mask narrows above the axis, its top fixes the middle: a round section spans 2 x reach
    # slices below its top (not for a run cut by the first imaged slice; rounded down). The reach is the
    # largest over the slices from the run's top to the middle: where the lumen dims below, the network
    # labels the walls but not the middle, so the widest slice of a column off the axis can be one
    # where the section has split into two walls, each a narrow vessel to the disks
    # (synthetic r = 60 um vessel: columns 37 um off its axis kept 60 of their 94 um).
    deepest = reach.copy()
    for k in wide_slices:
        held = (run_top <= k) & (middle >= k) & wide
        if held.any():
            here = middle_reach[k] if k in middle_reach else slice_reach(k)
            np.maximum(deepest, np.where(held, here[..., None] / spacing[2], 0.0), out=deepest)
    deepest = np.minimum(deepest, n)
    top_of_deepest = np.maximum(run_top, middle - np.ceil(deepest).astype(index))
    if imaged is None:
        first_imaged = index(0)
    else:  # a column with no imaged voxel: n, so neither the depth rule nor the cut rule fills it
        seen = np.asarray(imaged, bool)
        first_imaged = np.where(seen.any(axis=2), seen.argmax(axis=2), n)[..., None].astype(index)
    below_top = top_of_deepest + np.floor(2.0 * deepest).astype(index) - 1
    bottom = np.where(top_of_deepest > first_imaged, np.maximum(bottom, below_top), bottom)
    # a section that would reach above the first imaged slice belongs to a vessel cut by the scan's top:
    # the column is vessel from that slice down, seen or not (a lumen cut by the stack's first slices
    # is dim there, out of focus, and the network sees no top to close it). Such a column may instead
    # be one whose mask narrows above the axis (its widest slice high): the depth rule above stays, so
    # both readings are filled (dropping it for cut columns: surface stack 0.887 -> 0.870, synthetic
    # r = 60 um vessel recall 0.87 -> 0.75)
    cut = middle - np.ceil(reach).astype(index) < first_imaged
    top = np.where(cut, np.minimum(top, first_imaged), top)
    # and where the axis lies inside the scan (the vessel is narrower above its widest slice), the section
    # reaches as far below the middle as it does above it: its cut top cannot be mirrored
    axis_seen = cut & (first > first_imaged)
    bottom = np.where(axis_seen, np.maximum(bottom, middle + np.floor(reach).astype(index)), bottom)
    wide_column = (width.max(axis=2) > 0)[..., None]
    fill = (depth >= top) & (depth <= bottom) & wide_column
    done = m | fill
    if image is None or not wide_column.any():
        return done
    # follow the lumen below the run while it stays brighter than the tissue, within the wide columns'
    # bounding box and below their shallowest bottom only (time, memory)
    k0 = max(int(bottom[wide_column].min()) + 1, 0)
    if k0 >= n:
        return done
    rows, cols = np.nonzero(wide_column[..., 0])
    box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1), slice(k0, n))
    seen = None if imaged is None else np.asarray(imaged, bool)
    bright = lumen_bright(np.asarray(image, np.float32), m, seen, box)
    sub_depth = depth[..., k0:] - k0
    dark_at = np.minimum.accumulate(np.where(bright, index(n - k0), sub_depth)[..., ::-1], axis=2)[..., ::-1]
    sub_bottom = bottom[box[:2]] - k0
    start = np.clip(sub_bottom + 1, 0, n - k0 - 1).astype(np.intp)
    end = np.where(sub_bottom + 1 < n - k0, np.take_along_axis(dark_at, start, axis=2) - 1, sub_bottom)
    # a lumen is closed: its bright run turns dark inside the scan (an imaged voxel), at most
    # MAX_LUMEN_EXTENSION times the completed run below it; a projection tail (OCT-A) runs farther
    run = (bottom - top + 1)[box[:2]]
    closed = (end < n - k0 - 1) & (end - sub_bottom <= MAX_LUMEN_EXTENSION * run)
    if seen is not None:  # a run into the region's lower edge is not seen to close
        after = np.clip(end + 1, 0, n - k0 - 1).astype(np.intp)
        closed &= np.take_along_axis(seen[box], after, axis=2)
    follow = (sub_depth > sub_bottom) & (sub_depth <= end) & wide_column[box[:2]] & closed
    if seen is not None:
        follow &= seen[box]
    done[box] |= follow
    return done


#: how far below a wide column's completed run its lumen may close, in lengths of that run: 1 = the
#: mask found at least half of a round lumen's depth. A bright run that closes deeper, or not inside the
#: scan, is a projection tail (OCT-A: its bright part reaches farther below a wide vessel; the
#: simulator's tails are 250-750 um long) or a stack of vessels: not followed (make demo's OCT-A
#: volumes: following every bright run 0.443 -> 0.326 Dice, with this rule unchanged at 0.443;
#: two-photon r = 60 um vessels, four volumes: mean recall 0.935 -> 0.933; 0.5: 0.923)
MAX_LUMEN_EXTENSION = 1.0


#: the darkest tissue level (fraction of the scan's scale) a lumen's contrast is measured against: where
#: the tissue is as dark as the scan's floor (a denoised stack's black background), twice nothing would
#: let any grain pass for a lumen
MIN_TISSUE_LEVEL = 0.01


def lumen_bright(image: np.ndarray, mask: np.ndarray, imaged: np.ndarray | None = None,
                 box: tuple[slice, slice, slice] | None = None) -> np.ndarray:
    """Where ``image`` (scaled to [0, 1], depth along k), as the median of 3 x 3 lateral voxels (noise
    grains and a lumen's edge do not leak into the tissue), is at least ``MIN_LUMEN_CONTRAST`` times the
    median of its slice's tissue (the voxels outside ``mask``, inside ``imaged``, over the whole slice;
    at least ``MIN_TISSUE_LEVEL``); nowhere in a slice without such tissue. ``box``: the region
    (slices along i, j, k) to answer for; default: the whole image."""
    from scipy import ndimage

    from octasim.inference import MIN_LUMEN_CONTRAST

    i, j, k = box or (slice(None),) * 3
    i0, i1, _ = i.indices(image.shape[0])
    j0, j1, _ = j.indices(image.shape[1])
    lo_i, lo_j = max(i0 - 1, 0), max(j0 - 1, 0)  # the lateral median reads one voxel beyond the box
    region = image[lo_i:min(i1 + 1, image.shape[0]), lo_j:min(j1 + 1, image.shape[1]), k]
    smooth = ndimage.median_filter(region, size=(3, 3, 1), mode="nearest")
    smooth = smooth[i0 - lo_i:i0 - lo_i + (i1 - i0), j0 - lo_j:j0 - lo_j + (j1 - j0)]
    slices = range(image.shape[2])[k]
    tissue = np.full(len(slices), np.inf, np.float32)
    for n, kk in enumerate(slices):
        outside = ~mask[..., kk] if imaged is None else ~mask[..., kk] & imaged[..., kk]
        values = image[..., kk][outside]
        if values.size:
            tissue[n] = max(float(np.median(values)), MIN_TISSUE_LEVEL)
    return smooth >= MIN_LUMEN_CONTRAST * tissue[None, None, :]


def round_section_reach(dist: np.ndarray, spacing_um: Sequence[float], min_radius_um: float,
                        step: float = 1.1) -> np.ndarray:
    """For each pixel of a 2D slice of a vessel mask, how far (um) a vessel of round cross-section
    through the slice reaches above and below it there: the largest ``sqrt(r^2 - x^2)`` over the disks
    of radius ``r`` >= ``min_radius_um`` inside the slice's vessels, ``x`` the pixel's distance to the
    disk's centre; 0 where no such disk holds the pixel. ``dist``: the slice's distance transform (um,
    pixels of ``spacing_um``). Radii are taken in steps of ``step`` (a factor; 1.1: within 10 %, rounded
    down), one distance transform each: a disk of radius r fits about every pixel at least r from the
    background (less half a pixel: distances are counted to the background pixels' centres).

    Each vessel by its own width and centre: where a pial vessel meets a wider one in the slice, a
    column of the narrow one is not given the reach of the wide one's widest disk.
    """
    from scipy import ndimage

    out = np.zeros(dist.shape, np.float32)
    rows, cols = np.nonzero(dist >= min_radius_um)
    if rows.size == 0:
        return out
    largest = float(dist.max())
    pad = [int(np.ceil(largest / s)) + 1 for s in spacing_um]  # the disks reach this far around their centres
    box = (slice(max(rows.min() - pad[0], 0), rows.max() + pad[0] + 1),
           slice(max(cols.min() - pad[1], 0), cols.max() + pad[1] + 1))
    near, held = dist[box], out[box]
    radius, half_pixel = float(min_radius_um), 0.5 * min(spacing_um)
    while radius <= largest:
        to_centre = ndimage.distance_transform_edt(near < radius, sampling=spacing_um)
        np.maximum(held, np.sqrt(np.maximum((radius - half_pixel) ** 2 - to_centre ** 2, 0.0)), out=held)
        radius *= step
    return out


def prepare_model(state: dict[str, Any], device: str = "auto"):
    """Build the checkpoint's network on a device for :func:`segment_volume` (returns model, device)."""
    import torch

    from octasim.model import model_from_checkpoint, resolve_device

    dev = resolve_device(device) if isinstance(device, str) else torch.device(device)
    model = model_from_checkpoint(state, dev)
    if dev.type == "cpu":
        model = model.to(memory_format=torch.channels_last_3d)
    return model, dev


def segment_volume(volume: np.ndarray, spacing_um: Sequence[float], state: dict[str, Any], device: str = "auto",
                   overlap: float = 0.5, threshold: float | None = None, sw_batch_size: int = 4, tta: bool = True,
                   depth_axis: str = "k", min_component_um3: float = 0.0, model=None,
                   views_um: Sequence[float] | None = None, fused_views: list[float] | None = None,
                   progress=None, roi: np.ndarray | None = None,
                   complete_lumens: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """U-Net vessel probability and mask for a 3D scan, both with the scan's shape.

    The probability comes from :func:`octasim.inference.predict_probability` (the path threshold
    calibration uses too, and validation without the flips): percentile scaling, depth axis moved
    to k, resampling from ``spacing_um`` (um per voxel along i, j, k; may be anisotropic) to each view
    of the image pyramid (``views_um``, default: the checkpoint's training grid and coarser views for
    wide vessels), sliding-window inference (``overlap`` as a fraction of the window,
    ``sw_batch_size`` windows per forward pass, float16 autocast on CUDA, fp32 on CPU, ``tta``:
    average over the four lateral flips, default on), fusion of the views, resampling back. Then the
    threshold (default: the checkpoint's, else 0.5), the lower half of wide vessels completed by
    symmetry, those cut by the scan's top filled from it, and their lumen followed down while twice as
    bright as the tissue, where it closes as a lumen does (``complete_lumens``,
    :func:`complete_wide_lumens`: vessels wider than a quarter of the finest view's window, 32 um for the
    bundled models; in the mask only, the probability is the network's) and optional removal of
    26-connected components smaller than ``min_component_um3`` um^3.
    ``model`` (from :func:`prepare_model`) avoids rebuilding the network for every volume.
    ``fused_views``: a list that receives the voxel sizes (um) of the views fused. ``progress``: a
    tqdm-like bar, reset to the windows of every view and advanced as they are done. ``roi``: the
    imaged region (nonzero = inside, the volume's shape; :func:`check_roi`): the network sees no
    signal outside it and nothing there is vessel; the completion does not take its top for a vessel's.
    Returns (probability float32 in [0, 1], mask uint8 in {0, 1}).
    """
    from octasim.inference import ModelGrid, predict_probability

    spacing = check_spacing(spacing_um)
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if sw_batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {sw_batch_size}")
    if volume.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {volume.shape}")
    roi = check_roi(roi, volume.shape)
    if model is None:
        model, dev = prepare_model(state, device)
    else:
        dev = next(model.parameters()).device
    prob = predict_probability(model, volume, spacing, ModelGrid.from_checkpoint(state), dev, overlap=overlap,
                               sw_batch_size=sw_batch_size, tta=tta, depth_axis=depth_axis, views_um=views_um,
                               fused_views=fused_views, progress=progress, roi=roi)
    return prob, mask_from_probability(prob, spacing, state, threshold, depth_axis, roi, complete_lumens,
                                       min_component_um3, volume)


def mask_from_probability(prob: np.ndarray, spacing_um: Sequence[float], state: dict[str, Any],
                          threshold: float | None = None, depth_axis: str = "k", roi: np.ndarray | None = None,
                          complete_lumens: bool = True, min_component_um3: float = 0.0,
                          volume: np.ndarray | None = None) -> np.ndarray:
    """The mask :func:`segment_volume` makes of a U-Net probability (the scan's shape, voxel size
    ``spacing_um`` um): probability > ``threshold`` (default: the checkpoint's, else 0.5), wide lumens
    completed (``complete_lumens``, :func:`complete_wide_lumens` with the checkpoint's wide-vessel
    width; the top of ``roi`` is not taken for a vessel's; nothing outside it; with ``volume``, the
    scan, wide lumens are followed below the mask while they stay brighter than the tissue, where they
    close within the vessel's depth), then
    components smaller than ``min_component_um3`` um^3 removed. uint8 in {0, 1}."""
    from octasim.inference import ModelGrid, wide_vessel_um

    spacing = check_spacing(spacing_um)
    threshold = float(state.get("threshold", 0.5) if threshold is None else threshold)
    mask = prob > threshold
    if complete_lumens:
        mask_k, spacing_k = to_depth_last(mask, spacing, depth_axis)
        imaged = None if roi is None else to_depth_last(roi, spacing, depth_axis)[0]
        grid = ModelGrid.from_checkpoint(state)
        if volume is not None and np.shape(volume) != np.shape(prob):
            raise ValueError(f"the volume's shape {np.shape(volume)} differs from the probability's {np.shape(prob)}")
        image = None if volume is None else to_depth_last(
            normalize_percentiles(volume, grid.clip_percentiles, roi), spacing, depth_axis)[0]
        wide_um = wide_vessel_um(grid)
        mask = from_depth_last(complete_wide_lumens(mask_k, spacing_k, wide_um, imaged, image), depth_axis)
        if roi is not None:
            mask &= roi
    return remove_small_components(mask, spacing, min_component_um3)


def check_roi(roi: np.ndarray | None, shape: Sequence[int]) -> np.ndarray | None:
    """A region of interest as a bool array of the scan's ``shape`` (nonzero = inside), or None.
    Raises ValueError for another shape or an empty region."""
    if roi is None:
        return None
    roi = np.asarray(roi)
    if roi.shape != tuple(shape):
        raise ValueError(f"the region of interest has shape {roi.shape}, the scan {tuple(shape)}")
    if not np.isfinite(roi).all():
        raise ValueError("the region of interest contains NaN or infinite values")
    roi = roi != 0
    if not roi.any():
        raise ValueError("the region of interest is empty (all 0); nothing to segment")
    return roi


def otsu_segment(volume: np.ndarray, spacing_um: Sequence[float] = (1.0, 1.0, 1.0), threshold: float | None = None,
                 clip_percentiles: Sequence[float] = CLIP_PERCENTILES,
                 min_component_um3: float = 0.0, roi: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Baseline: Otsu threshold of the normalized image (or a fixed ``threshold`` on it, in [0, 1]).
    ``roi`` (:func:`check_roi`): percentiles and Otsu's threshold from the voxels inside it; 0 outside.

    Returns (normalized image float32 as the score, mask uint8).
    """
    from skimage.filters import threshold_otsu

    roi = check_roi(roi, np.shape(volume))
    score = normalize_percentiles(volume, clip_percentiles, roi)
    t = float(threshold_otsu(score if roi is None else score[roi])) if threshold is None else float(threshold)
    return score, remove_small_components(score > t, spacing_um, min_component_um3)


def frangi_segment(volume: np.ndarray, spacing_um: Sequence[float], sigmas_um: Sequence[float] = DEFAULT_FRANGI_SIGMAS_UM,
                   threshold: float | None = None, clip_percentiles: Sequence[float] = CLIP_PERCENTILES,
                   grid_um: float | None = None, min_component_um3: float = 0.0,
                   roi: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Baseline: Frangi vesselness for bright vessels, then Otsu (or a fixed ``threshold`` in [0, 1]).

    skimage's Frangi filter assumes isotropic voxels, so the normalized image is resampled to an
    isotropic grid of ``grid_um`` um (default: the finest voxel size, but not finer than
    ``FRANGI_MIN_GRID_UM``, to keep memory bounded), filtered with ``sigmas_um`` converted to voxels
    of that grid, and the vesselness (scaled to [0, 1] by its maximum) is resampled back to the input
    shape. ``roi`` (:func:`check_roi`): percentiles from the voxels inside it, 0 outside it.
    Returns (vesselness float32 in [0, 1], mask uint8).
    """
    from skimage.filters import frangi, threshold_otsu

    spacing = check_spacing(spacing_um)
    if not sigmas_um or any(s <= 0 for s in sigmas_um):
        raise ValueError(f"Frangi scales must be positive (um), got {sigmas_um}")
    roi = check_roi(roi, np.shape(volume))
    image = normalize_percentiles(volume, clip_percentiles, roi)
    grid = float(grid_um) if grid_um else max(min(spacing), FRANGI_MIN_GRID_UM)
    iso = resample(image, resampled_shape(image.shape, spacing, grid))
    vessel = frangi(iso, sigmas=[s / grid for s in sigmas_um], black_ridges=False, mode="reflect").astype(np.float32)
    vmax = float(vessel.max())
    if vmax > 0:
        vessel /= vmax
    score = np.clip(resample(vessel, image.shape), 0.0, 1.0)
    if roi is not None:
        score[~roi] = 0.0
    if threshold is None:
        inside = score if roi is None else score[roi]
        t = float(threshold_otsu(inside)) if inside.max() > inside.min() else 1.0
    else:
        t = float(threshold)
    return score, remove_small_components(score > t, spacing, min_component_um3)


# ---------------------------------------------------------------------------------------------- files


@dataclass
class SegmentResult:
    """Outcome for one input file: output paths on success, ``error`` (message) on failure."""

    input: Path
    prob_path: Path | None = None
    mask_path: Path | None = None
    qc_path: Path | None = None
    vessel_fraction: float | None = None  #: of the region of interest when one is given
    seconds: float = 0.0
    error: str | None = None
    spacing_um: tuple[float, float, float] | None = None  #: the voxel size used (um along i, j, k)
    shape: tuple[int, ...] | None = None
    views_um: tuple[float, ...] = ()  #: the image pyramid's views fused (um; U-Net only)

    @property
    def ok(self) -> bool:
        return self.error is None


#: suffixes :func:`output_stem` removes (longest first): NIfTI, OME-TIFF, TIFF
_STEM_SUFFIXES = sorted((*NIFTI_SUFFIXES, *(".ome" + s for s in TIFF_SUFFIXES), *TIFF_SUFFIXES), key=len, reverse=True)


def output_stem(path: str | Path) -> str:
    """File name without .nii / .nii.gz / .tif / .tiff (and .ome.tif / .ome.tiff)."""
    name = Path(path).name
    for suffix in _STEM_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


#: suffixes of the files ``segment_files`` writes (``<name>_prob.nii.gz``, ``<name>_mask.tif`` ...)
OUTPUT_SUFFIXES = ("_prob", "_mask")


def read_roi(roi: str | Path, scan_path: Path, scan) -> np.ndarray:
    """The region of interest of ``scan`` (the :class:`octasim.nifti.Volume` read from ``scan_path``), bool
    of its shape: ``roi`` itself if it is a file, else the file in the folder ``roi`` named like the scan
    (any NIfTI / TIFF suffix, optionally ``_roi``). A NIfTI region of a NIfTI scan must share its affine
    (else it would be misplaced). Errors name the region's file."""
    roi = Path(roi)
    if roi.is_dir():
        stem = output_stem(scan_path)
        found = [p for p in list_volumes([roi], tiff=True)
                 if output_stem(p) in (stem, f"{stem}_roi") and p.resolve() != scan_path.resolve()]
        if not found:
            raise ValueError(f"{roi}: no region of interest for {scan_path.name} (expected {stem}_roi.* there, "
                             f"or {stem}.* in a folder of regions apart from the scans)")
        if len(found) > 1:
            raise ValueError(f"{roi}: several regions of interest for {scan_path.name}: "
                             f"{', '.join(p.name for p in found)}")
        roi = found[0]
    try:
        try:
            region = read_scan(roi, scan.spacing_um)
        except ValueError as exc:
            if "channel" in str(exc):
                raise ValueError(f"{roi}: a region of interest must be one 3D stack without channels ({exc})") from exc
            raise
        if region.header is not None and scan.header is not None and region.data.shape == scan.data.shape:
            # a hundredth of the smallest voxel, in the affine's own units (mm or um)
            tol = 0.01 * float(np.linalg.norm(np.asarray(scan.affine)[:3, :3], axis=0).min())
            if not np.allclose(region.affine, scan.affine, rtol=0.0, atol=tol):
                raise ValueError(f"its affine (orientation, origin or voxel size) differs from that of the scan "
                                 f"{scan_path.name}, so the region would be misplaced; save the region with the "
                                 "scan's header (e.g. from ITK-SNAP with the scan loaded) or as a TIFF stack")
        return check_roi(region.data, scan.data.shape)
    except ValueError as exc:
        raise ValueError(str(exc) if str(roi) in str(exc) else f"{roi}: {exc}") from exc


def is_roi_file(path: Path, roi: str | Path | None) -> bool:
    """Whether ``path`` is a region of interest of ``roi`` (the file itself, or a ``*_roi`` file in the
    folder): such files are not segmented when the inputs and the regions share a folder."""
    if roi is None:
        return False
    roi = Path(roi)
    if roi.is_dir():
        return path.parent.resolve() == roi.resolve() and output_stem(path).endswith("_roi")
    return path.resolve() == roi.resolve()


def input_volumes(inputs: Sequence[str | Path]) -> tuple[list[Path], list[Path]]:
    """(scans to segment, skipped files): NIfTI and TIFF files given or found in folders, without
    octasim's own outputs (``*_prob`` / ``*_mask``), so that segmenting a folder twice never segments
    its results."""
    paths = list_volumes(inputs, tiff=True)
    skipped = [p for p in paths if output_stem(p).endswith(OUTPUT_SUFFIXES)]
    return [p for p in paths if p not in skipped], skipped


def segment_files(inputs: Sequence[str | Path], out_dir: str | Path, model: str | Path | dict | None = None,
                  method: str = "unet", threshold: float | None = None, overlap: float = 0.5,
                  sw_batch_size: int = 4, tta: bool = True, min_component_um3: float = 0.0,
                  depth_axis: str = "k", device: str = "auto", voxel_size_um: Sequence[float] | None = None,
                  sigmas_um: Sequence[float] = DEFAULT_FRANGI_SIGMAS_UM, progress: bool | None = None,
                  views_um: Sequence[float] | None = None, overwrite: bool = False, channel: int | None = None,
                  output_format: str = "auto", roi: str | Path | None = None,
                  complete_lumens: bool = True) -> list[SegmentResult]:
    """Segment NIfTI and TIFF files (or folders of them) and write, per input, into ``out_dir``:
    ``<name>_prob`` (float32) and ``<name>_mask`` (uint8 0/1) with the input's shape, and
    ``<name>_qc.png`` (mask over orthogonal slices).

    ``output_format``: 'auto' (the input's format), 'nifti' or 'tiff'. NIfTI outputs (.nii.gz) carry
    the input's affine and header (a TIFF input's: ``affine_for_spacing`` of its voxel size); TIFF
    outputs (.tif) have the input's axis order and ImageJ calibration in um (an input NIfTI's: pages
    along k), so they overlay the input in Fiji. ``channel``: the channel of multi-channel TIFFs (0-based).
    ``complete_lumens``: the U-Net's mask completes wide vessels below their round section's middle,
    from the scan's top where it cuts them, and below while their lumen stays twice as bright as the
    tissue and closes within the vessel's depth (:func:`segment_volume`, :func:`complete_wide_lumens`).
    ``roi``: a NIfTI / TIFF region of interest (nonzero = imaged tissue; e.g. the cranial window drawn in
    ITK-SNAP or Fiji) with the scan's array shape, used for every input, or a folder holding one per input
    (:func:`read_roi`: ``NAME_roi.*``, or ``NAME.*`` in a folder of regions apart from the scans): nothing
    outside it is vessel (see :func:`octasim.inference.predict_probability`); an input without its region
    fails.

    ``model``: checkpoint path, bundled model name or loaded checkpoint dict; None: the default bundled
    model (for the baselines it only supplies the clip percentiles). ``views_um``: the pyramid's
    voxel sizes (um), default the model's. ``voxel_size_um`` (um along i, j, k) overrides the files'
    voxel sizes (NIfTI headers, TIFF metadata; see :func:`octasim.scan.read_scan`). Files
    named like our outputs (``*_prob``, ``*_mask``) are not taken as inputs; without ``voxel_size_um``, a
    header voxel size outside 0.05-100 um fails that input (see ``check_voxel_size``); existing outputs are
    refused unless ``overwrite``. A failing input is recorded in its result (``error``) and the others
    go on; every file is written atomically, so nothing is half-written. Raises ValueError only for
    problems that concern all inputs (no inputs, unknown method, missing / incompatible checkpoint).
    """
    from tqdm.auto import tqdm

    from octasim.model import CheckpointError, load_checkpoint
    from octasim.qc import save_overlay_qc

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"unknown output format {output_format!r}; choose one of {', '.join(OUTPUT_FORMATS)}")
    if channel is not None and channel < 0:
        raise ValueError(f"--channel must be >= 0 (0 = the first channel), got {channel}")
    paths, skipped = input_volumes(inputs)
    skipped += [p for p in paths if is_roi_file(p, roi)]
    paths = [p for p in paths if not is_roi_file(p, roi)]
    if not paths:
        what = "octasim's own outputs" + (" and regions of interest" if roi is not None else "")
        extra = f" besides {what} ({', '.join(p.name for p in skipped)})" if skipped else ""
        raise ValueError(f"no .nii / .nii.gz / .tif / .tiff files found in {', '.join(map(str, inputs))}{extra}")
    stems = [output_stem(p) for p in paths]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise ValueError(f"several inputs share the name {', '.join(dupes)}; their outputs would overwrite "
                         "each other (segment them into different --out folders)")
    if voxel_size_um is not None:
        voxel_size_um = check_spacing(voxel_size_um)
    out_dir = Path(out_dir)
    if roi is not None and not Path(roi).exists():
        raise ValueError(f"{roi}: no such region-of-interest file or folder")
    exts = [OUTPUT_SUFFIX[_output_format(p, output_format)] for p in paths]
    existing = [out_dir / f"{stem}{suffix}{ext}" for stem, ext in zip(stems, exts) for suffix in OUTPUT_SUFFIXES
                if (out_dir / f"{stem}{suffix}{ext}").exists()]
    if existing and not overwrite:
        raise ValueError(f"{existing[0]}{f' and {len(existing) - 1} more' if len(existing) > 1 else ''} "
                         "already exist(s) from an earlier run; pass --overwrite to replace them or choose "
                         "another --out folder")
    state = None
    if model is not None or method == "unet":
        from octasim.models import resolve_model
        state = model if isinstance(model, dict) else load_checkpoint(resolve_model(model))
    net = None
    if method == "unet":
        try:
            net, _ = prepare_model(state, device)
        except CheckpointError as exc:
            raise CheckpointError(f"{model if not isinstance(model, dict) else 'checkpoint'}: {exc}") from exc
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)

    results = []
    bar = tqdm(list(zip(paths, stems, exts)), desc=f"segment ({method})", unit="vol",
               disable=True if progress is False else (False if progress else None))
    for path, stem, ext in bar:
        bar.set_postfix_str(path.name)
        res = SegmentResult(input=path)
        start = time.perf_counter()
        try:
            vol = read_scan(path, voxel_size_um, channel=channel)  # --voxel-size bypasses the file's
            spacing = vol.spacing_um
            res.spacing_um, res.shape = tuple(float(v) for v in spacing), tuple(vol.data.shape)
            region = None if roi is None else read_roi(roi, path, vol)
            if method == "unet":
                fused: list[float] = []
                # a second bar for the windows of this scan: one large scan can take minutes on a CPU
                with tqdm(desc=f"  {path.name}", unit="window", leave=False, disable=bar.disable) as windows:
                    prob, mask = segment_volume(vol.data, spacing, state, overlap=overlap, threshold=threshold,
                                                sw_batch_size=sw_batch_size, tta=tta, depth_axis=depth_axis,
                                                min_component_um3=min_component_um3, model=net,
                                                views_um=views_um, fused_views=fused, progress=windows,
                                                roi=region, complete_lumens=complete_lumens)
                res.views_um = tuple(fused)
            elif method == "otsu":
                prob, mask = otsu_segment(vol.data, spacing, threshold, _clip_percentiles(state), min_component_um3,
                                          roi=region)
            else:
                prob, mask = frangi_segment(vol.data, spacing, sigmas_um, threshold, _clip_percentiles(state),
                                            min_component_um3=min_component_um3, roi=region)
            res.prob_path = write_like(out_dir / f"{stem}_prob{ext}", prob.astype(np.float32, copy=False), vol)
            res.mask_path = write_like(out_dir / f"{stem}_mask{ext}", mask.astype(np.uint8, copy=False), vol)
            res.vessel_fraction = float(mask.mean() if region is None else mask[region].mean())
            qc_image, qc_spacing = to_depth_last(vol.data, spacing, depth_axis)  # QC draws depth (k) downwards
            qc_mask, _ = to_depth_last(mask, spacing, depth_axis)
            res.qc_path = save_overlay_qc(qc_image, qc_mask, out_dir / f"{stem}_qc.png", spacing_um=qc_spacing,
                                          title=f"{path.name}: {method}, vessel fraction {res.vessel_fraction:.1%}")
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # one bad input must not stop the others; the message is reported
            msg = str(exc)
            if not isinstance(exc, (ValueError, OSError)):
                msg = f"{type(exc).__name__}: {msg}"
            res.error = msg if str(path) in msg else f"{path}: {msg}"
            bar.write(f"octasim segment: error: {res.error}")
        res.seconds = time.perf_counter() - start
        results.append(res)
    return results
