"""The one inference path: what the network sees of a scan, for validation, threshold calibration
and ``octasim segment`` alike.

Steps (sizes in um, arrays (i, j, k) with depth along k after :func:`to_depth_last`):

1. clip to the checkpoint's percentiles and scale to [0, 1] (as the training volumes were);
2. resample from the scan's voxel size to each *view* of an image pyramid: the training grid and
   coarser grids twice as coarse each (:func:`pyramid_voxel_sizes`);
3. divide every coarser view at least one window wide (:func:`fills_window`) by the local
   brightness of the finest view (:func:`local_brightness`), so a coarse window, which spans 2-4 fine
   windows laterally, meets the scan at the gain a fine window does (the network scales each window
   by its brightest region; two-photon gain is not constant over 512 um);
4. run MONAI sliding-window inference with Gaussian blending, each window averaged over the four flips
   of its two lateral axes (test-time augmentation, ``tta``): a scan has no preferred lateral
   direction, so the average only removes the network's direction-dependent noise (never depth,
   along which tails and attenuation point one way). Measured with v3 (before the disk opening of
   step 5 and the completion of wide lumens in ``octasim.segment``): deep stack Dice 0.662 ->
   0.665, surface stack 0.782 -> 0.787, synthetic selection score 0.737 -> 0.744, no volume of it
   lower by more than 0.001; adding the lateral transposes (8 transforms) gave 0.664 / 0.787. It
   costs 2.5-4x the time (a 512 x 512 x 25 stack on 2 CPU cores: 4.6 s -> 17.4 s when measured, 6.1 s -> 16.1 s with
   the mask completion, 3.6 s -> 10.3 s since the coarse views' contrast gate, on the benchmark's noise stack). A view shallower
   than the window (10-25 slices of 5 um are common in two-photon stacks) is padded with 0, i.e.
   dark: no signal and no vessel outside the imaged slab, which is how training shows such slabs
   (``RandDepthSlabd``).
   Mirroring instead would extend every surface vessel crossing a thin slab into a bright wall the
   height of the window, unlike any vessel; on the shallow surface stack (10 slices) an early model
   labelled such vessels at Dice 0.45 mirrored and 0.63 zero-padded at the 8 um view;
5. fuse the views on the scan's grid (the coarser views that find wide vessels, below): the finest
   view gives every vessel it resolves; a coarser view adds only what it calls vessel over at least
   ``WIDE_VESSEL_VOXELS`` (5) of its own voxels across the lateral plane (a grey-level opening with a
   lateral disk 5 voxels across on its grid: erosion, then dilation): the inside of a wide vessel (3
   voxels) with a wall voxel on each side. A disk, not a square, because a vessel is as wide in every
   lateral direction: a 5 x 5 box fits in a band 5 voxels wide only if the band runs along i or j
   (at 45 degrees it needs 6.7 voxels; the disk 5.2), so it dropped diagonal vessels the view had
   found and broke the rest into 40 um squares at the 8 um view (v3 on the surface stack's dim lower
   slices, whose vessels run diagonally: Dice 0.782 -> 0.797 with the disk, synthetic selection score
   0.737 -> 0.739, without the flips). So it fills wide vessels whose inside the fine window cannot see, but
   cannot widen the thin vessels it blurs:
   a capillary is one coarse voxel wide, and the network's probability around it spans a few.
   Lateral only, because a shallow stack is as thin as 6 voxels of the 8 um view along depth.
   Fused probability = max(finest view, opened coarser views). Measured with the instance-norm model
   on both real stacks together (mean Dice, data/models/README.md): openings of 3, 4, 5, 6 and 8
   lateral voxels gave 0.589, 0.625, 0.663, 0.666 and 0.636 (the deep stack gains with the size, the
   surface stack loses), a 3 x 3 x 3 cube 0.593 and a plain maximum 0.573; without the 8 um view the
   surface stack lost 0.19 Dice.

Which network: a model's own for every view, unless its checkpoint names another network for the
coarser views (``coarse_views``; :class:`octasim.model.ViewNetworks`): octasim-multiscale-v4 segments
its finest view with a network trained with a decaying learning rate, more precise on thin vessels
and OCT-A, and its coarser views with v3's, whose recall of wide dim lumens the decay lowers
(data/models/README.md).

Which views are fused: every candidate view (:func:`scan_view_sizes`) is predicted, and a coarser
view is fused only if it finds a vessel wider than its finer neighbour segments whole, a quarter of
that neighbour's window (:func:`finds_wide_vessels`; 32 um for the 4 um view, 64 um for the 8 um
view), whether that neighbour was fused or not: the 8 um view is there for vessels the 4 um view
cannot segment whole, not for the 33-64 um bands it draws around thin bright vessels. A coarse view
exists for such vessels; elsewhere it only blurs: on the deep stack the 8 um view drew bands 40-50 um
wide around bright diving vessels 20-30 um wide. Measured by the coarse view itself, which sees those
vessels whole (a finer view labels only their walls: the 2 um view reported 14-42 um for synthetic
vessels 60-120 um wide, and the 4 um view of weaker seeds 36 um for the surface stack's 50-100 um
vessels, so a rule that asked the finer view would drop views the scan needs). Widest vessel each
view finds with v3 (um): deep stack 25 (4 um) / 50 (8 um), surface stack 107 / 120, synthetic vessels
60-120 um wide at least 53 / 72: the deep stack is segmented by the 2 um view alone (Dice 0.610 ->
0.662), everything else as before. The decision is made once per scan and view, on the view's
probability > 0.5 (not the checkpoint's threshold): one wide vessel anywhere fuses the view over the
whole scan, which is the plain pyramid. A weak model whose coarse view labels a wide vessel only in
part under-reports it and loses the view (v3 seed 1: synthetic 60 um vessel recall 0.68 -> 0.28).
And what the view calls a wide vessel must be at least ``MIN_LUMEN_CONTRAST`` (2) times as bright as
what it calls tissue in the image it saw (:func:`lumen_contrast`: mean over the wide part, median of
the tissue), the lumen / tissue contrast the gain correction assumes: snapshots of v3's recipe at
2,000 and 2,500 steps called stretches of deep synthetic volumes vessels 170-180 um wide at the 8 um
view, only 1.4-1.9x as bright as the rest, and labelled 46 % of them (Dice 0.07-0.20); the wide
vessels v3 finds measure 3.0-13 (surface stack 6-7, synthetic two-photon and OCTA vessels of r 30-60
um 3.0-13). At 1.5, the dimmest lumen / tissue contrast of real two-photon stacks, two of the four
false 8 um views measured were stopped. Limit: one contrast per view, over all its wide parts, so a
large dim false region and a bright true vessel in the same view are fused or dropped together
(judging each region by itself was not tried: it would put the real surface stack's dim half, 3x
dimmer than the other, at risk); and a real stack whose wide lumens are under twice
as bright as its tissue loses its coarse views (none measured so far: 3.0 and more).

Why a pyramid: a network labels a vessel only if its window (patch x voxel size) sees the vessel's
walls and some tissue around it; inside a vessel wider than the window it sees a bright, textureless
region. Mouse cortex holds pial vessels up to about 100 um wide (``MAX_VESSEL_DIAMETER_UM``), so views
are added until the widest vessel spans at most a quarter of the window (tissue on both sides, and
room for the network's effective receptive field, smaller than its window), as long as the view's
voxel size lies within the voxel sizes the model was trained on (a model trained at one voxel size
gets one view), and as long as the scan fills at least half of the view's window laterally: a coarser
view of a small scan shows the network mostly the zero padding around it, which no training window
holds (an instance-norm network called the whole of a 64 um scan vessel at the 4 and 8 um views, and
on held-out synthetic 192 um two-photon volumes the 8 um view cut Dice from 0.70 to 0.44).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from octasim.preprocess import CLIP_PERCENTILES, from_depth_last, normalize_percentiles, resample, \
    resampled_shape, to_depth_last

#: widest vessel expected in mouse cortex scans (pial veins and arteries, 50-100 um wide), um
MAX_VESSEL_DIAMETER_UM = 100.0
FUSIONS = ("wide", "max")
#: a coarse view adds structures at least this many of its voxels wide across the lateral plane
WIDE_VESSEL_VOXELS = 5
#: the coarsest view's window spans this many of the widest vessels
WINDOW_PER_VESSEL = 4.0
#: the training voxel size assumed for checkpoints that do not record one, um
DEFAULT_VOXEL_SIZE_UM = 2.0
#: coarse views' gain is corrected at most this much (factor): about the lumen / tissue contrast of
#: two-photon stacks (1.5-6, median 2-5), so tissue far from any vessel is never lifted to a vessel's brightness
MAX_GAIN_CORRECTION = 2.0
#: a coarse view is fused only if what it calls a wide vessel is at least this many times as bright as
#: what it calls tissue: the lumen / tissue contrast the gain correction already assumes (a wide lumen
#: is brighter than tissue in both modalities; OCTA lumens more so)
MIN_LUMEN_CONTRAST = MAX_GAIN_CORRECTION


@dataclass(frozen=True)
class ModelGrid:
    """What inference needs to know of a checkpoint: its training grid and input scaling.

    voxel_size_um:       the nominal training voxel size (um): scans are resampled to it.
    patch_size:          the network's window, voxels (i, j, k).
    clip_percentiles:    percentiles clipped and scaled to [0, 1] before the network.
    max_voxel_size_um:   the coarsest voxel size the training volumes were rendered at (um); views of
                         the pyramid never go coarser.
    """

    voxel_size_um: float = DEFAULT_VOXEL_SIZE_UM
    patch_size: tuple[int, int, int] = (64, 64, 64)
    clip_percentiles: tuple[float, float] = CLIP_PERCENTILES
    max_voxel_size_um: float = DEFAULT_VOXEL_SIZE_UM

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any]) -> "ModelGrid":
        grid = float(state.get("voxel_size_um") or DEFAULT_VOXEL_SIZE_UM)
        patch = tuple(int(s) for s in np.broadcast_to(np.asarray(state.get("patch_size", 64)), (3,)))
        clip = tuple(float(p) for p in ((state.get("preprocessing") or {}).get("clip_percentiles")
                                        or CLIP_PERCENTILES))
        return cls(grid, patch, clip, max(grid, trained_voxel_range(state)[1]))


def trained_voxel_range(state: dict[str, Any]) -> tuple[float, float]:
    """(finest, coarsest) voxel size (um) the checkpoint's training volumes were rendered at."""
    if "train_voxel_range_um" in state:
        lo, hi = state["train_voxel_range_um"]
        return float(lo), float(hi)
    grid = float(state.get("voxel_size_um") or DEFAULT_VOXEL_SIZE_UM)
    cfg = state.get("train_config") or {}
    if state.get("on_the_fly"):
        vs = ((cfg.get("on_the_fly") or {}).get("synth_options") or {}).get("voxel_size_um")
        if isinstance(vs, (list, tuple)) and len(vs) == 2:
            return float(vs[0]), float(vs[1])
    return grid, grid


def pyramid_voxel_sizes(grid: ModelGrid, max_vessel_diameter_um: float = MAX_VESSEL_DIAMETER_UM,
                        extent_um: float | None = None) -> list[float]:
    """Voxel sizes (um) of the views: the training grid, then twice as coarse each, until the window
    spans four times ``max_vessel_diameter_um``, or the next view would be coarser than the trained
    range, or the scan (lateral ``extent_um``, um) would fill less than half of the next view's
    window (the network would see mostly the padding around it)."""
    sizes = [float(grid.voxel_size_um)]
    window_um = lambda vs: min(grid.patch_size[:2]) * vs  # noqa: E731 - lateral window, um
    while (window_um(sizes[-1]) < WINDOW_PER_VESSEL * max_vessel_diameter_um
           and 2.0 * sizes[-1] <= grid.max_voxel_size_um * 1.001
           and (extent_um is None or extent_um >= 0.5 * window_um(2.0 * sizes[-1]))):
        sizes.append(2.0 * sizes[-1])
    return sizes


def scan_view_sizes(grid: ModelGrid, shape_depth_last: Sequence[int], spacing_um: Sequence[float]) -> list[float]:
    """The views (um) :func:`predict_probability` uses for a scan of this shape (i, j, k with depth k)
    and voxel size (um): the pyramid, limited by the scan's lateral extent. Fine-tuning prepares real
    scans at the same views."""
    extent_um = max(n * float(s) for n, s in zip(shape_depth_last[:2], spacing_um[:2]))
    return pyramid_voxel_sizes(grid, extent_um=extent_um)


def window_count(shape: Sequence[int], patch_size: Sequence[int], overlap: float) -> int:
    """How many windows MONAI's sliding window visits in a view of ``shape`` (voxels): a view smaller
    than the window along an axis is padded to it (one window there), else windows start every
    ``int(window * (1 - overlap))`` voxels and the last one ends at the view's edge."""
    from monai.data.utils import dense_patch_slices

    size = [max(int(n), int(p)) for n, p in zip(shape, patch_size)]
    step = [int(p) if n == int(p) else max(int(int(p) * (1.0 - overlap)), 1) for n, p in zip(size, patch_size)]
    return len(dense_patch_slices(size, [int(p) for p in patch_size], step))


def _window_predictor(model, tta: bool, device, progress=None):
    """Window batch (N, 1, i, j, k) -> vessel probability, float32; TTA averages lateral flips.
    ``progress``: a tqdm-like bar whose ``update`` receives the windows done."""
    import torch

    channels_last = device.type == "cpu"  # oneDNN's 3D convolutions are faster in NDHWC on CPU
    flips = [(), (2,), (3,), (2, 3)] if tta else [()]  # i and j only: depth (k) is never flipped

    def predict(x):
        n = x.shape[0]
        batch = torch.cat([x.flip(f) if f else x for f in flips]) if tta else x
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last_3d)
        with torch.autocast("cuda", dtype=torch.float16, enabled=device.type == "cuda"):
            logits = model(batch)
        prob = torch.sigmoid(logits.float()).contiguous()
        if tta:
            parts = prob.split(n)
            prob = sum(p.flip(f) if f else p for p, f in zip(parts, flips)) / len(flips)
        if progress is not None:
            progress.update(n)  # windows done (not 4x with flips)
        return prob

    return predict


def predict_view(model, image: np.ndarray, patch_size: Sequence[int], device, overlap: float = 0.5,
                 sw_batch_size: int = 4, tta: bool = True, progress=None) -> np.ndarray:
    """Vessel probability of one view (already on the network's grid), float32, same shape: MONAI
    sliding window with Gaussian blending; a view smaller than the window is padded with 0 (see the
    module's docstring) and the padding cut off again. ``progress``: a tqdm-like bar advanced by the
    windows done (:func:`window_count` of them)."""
    import torch
    from monai.inferers import sliding_window_inference

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None].to(device)
            prob = sliding_window_inference(x, tuple(int(s) for s in patch_size), sw_batch_size,
                                            _window_predictor(model, tta, device, progress), overlap=overlap,
                                            mode="gaussian", sw_device=device, device=device)
            prob = prob[0, 0].float().cpu().numpy()
    finally:
        model.train(was_training)
    return np.ascontiguousarray(prob)


def lateral_disk(diameter: int = WIDE_VESSEL_VOXELS) -> np.ndarray:
    """A flat structuring element (i, j, k): the voxels of the lateral plane within ``diameter`` / 2
    of the centre voxel, one voxel deep; ``diameter`` odd. 5: the 5 x 5 square without its corners."""
    if diameter < 1 or diameter % 2 == 0:
        raise ValueError(f"the disk's diameter must be an odd number of voxels, got {diameter}")
    r = diameter // 2
    i, j = np.mgrid[-r:r + 1, -r:r + 1]
    return (i ** 2 + j ** 2 <= (diameter / 2.0) ** 2)[..., None]


def wide_part(prob: np.ndarray) -> np.ndarray:
    """What a coarse view (i, j, k with depth k) calls vessel over at least ``WIDE_VESSEL_VOXELS`` of
    its voxels in every direction across the lateral plane: grey-level opening (minimum, then
    maximum) over a lateral disk of that diameter (:func:`lateral_disk`; a disk because a vessel's
    width does not depend on its direction)."""
    from scipy.ndimage import grey_opening

    return grey_opening(prob, footprint=lateral_disk(), mode="nearest")


def widest_vessel_um(mask: np.ndarray, voxel_um: float) -> float:
    """Width (um) of the widest vessel in a binary ``mask`` (i, j, k with depth k, isotropic voxels of
    ``voxel_um`` um) across the lateral plane: from the largest distance ``d`` (voxels) from a vessel
    voxel to the background within its slice, ``2 d - 1`` voxels (a band n voxels wide has its middle
    voxel (n + 1) / 2 voxels from the background); 0 for an empty mask. Outside the view counts as
    background (a vessel cut by the scan's edge is as wide as the part of it in the scan). Lateral, as
    the fusion's opening is, because a shallow stack's view can be fewer voxels deep than its vessels
    are wide."""
    from scipy.ndimage import distance_transform_edt

    widest = 0.0
    for k in range(mask.shape[2]):
        if mask[..., k].any():
            widest = max(widest, float(distance_transform_edt(np.pad(mask[..., k], 1)).max()))
    return max(2.0 * widest - 1.0, 0.0) * float(voxel_um)


def finds_wide_vessels(prob: np.ndarray, voxel_um: float, finer_voxel_um: float, grid: ModelGrid,
                       view: np.ndarray | None = None) -> bool:
    """Whether a coarse view (vessel probability ``prob`` on its own grid of ``voxel_um`` um) holds a
    vessel wider than the next finer view (``finer_voxel_um``) segments whole: a quarter of that
    view's lateral window (``WINDOW_PER_VESSEL``), measured by :func:`widest_vessel_um` on what this
    view calls vessel (probability > 0.5). Only then is the coarse view fused: it exists for such
    vessels, and elsewhere it only blurs (false vessels around bright thin ones). Given the ``view``
    itself (the image the network saw, ``prob``'s shape), its wide vessels must also be brighter than
    its tissue by :data:`MIN_LUMEN_CONTRAST` (:func:`lumen_contrast`): a lumen is brighter than the
    tissue around it in both modalities, while a view that calls a stretch of dim tissue a wide
    vessel (a weak model on a deep volume) finds it barely brighter (1.4-1.9)."""
    if widest_vessel_um(prob > 0.5, voxel_um) <= wide_vessel_um(grid, finer_voxel_um):
        return False
    return view is None or lumen_contrast(view, prob) >= MIN_LUMEN_CONTRAST


def lumen_contrast(view: np.ndarray, prob: np.ndarray) -> float:
    """How many times brighter a coarse view's wide vessels are than its tissue: the mean of ``view``
    over what :func:`wide_part` keeps of ``prob`` (> 0.5), over the median of ``view`` where ``prob``
    <= 0.5 and the view holds signal (> 0: not the region outside ``--roi`` nor the clipped floor).
    0 without a wide part; infinite where no tissue holds signal."""
    wide = wide_part(prob) > 0.5
    if not wide.any():
        return 0.0
    tissue = (prob <= 0.5) & (view > 0)
    floor = float(np.median(view[tissue])) if tissue.any() else 0.0
    return float(view[wide].mean()) / floor if floor > 0 else float("inf")


def wide_vessel_um(grid: ModelGrid, voxel_um: float | None = None) -> float:
    """The width (um) beyond which a view of ``voxel_um`` um (default: the training grid, the finest
    view) does not segment a vessel whole: a quarter of its lateral window (``WINDOW_PER_VESSEL``),
    so that the window holds tissue on both sides. 32 um for the bundled models' finest view."""
    return min(grid.patch_size[:2]) * float(grid.voxel_size_um if voxel_um is None else voxel_um) / WINDOW_PER_VESSEL


def local_brightness(view: np.ndarray, voxel_um: float, region_um: float,
                     max_correction: float = MAX_GAIN_CORRECTION) -> np.ndarray:
    """The brightness of the vessels around each voxel of ``view`` (i, j, k, voxels of ``voxel_um``
    um): the brightest 3 x 3 x 3 mean within a ``region_um`` (um) cube, smoothed by a Gaussian of half
    that width, and at least ``1 / max_correction`` of the view's brightest. float32, ``view``'s shape.

    Coarser views at least one window wide (:func:`fills_window`) are divided by it (resampled to
    their grid) before the network, then clipped to [0, 1]. The bound is relative to the view's
    brightest region: a region is divided by at most ``max_correction`` times what the brightest one
    is divided by (for a network that scales each window by its brightest region, as v3 does, only
    that ratio matters).

    Why: a window is scaled by its own brightest region (``model.input_scale: window``), which removes
    the scan's gain over one window of the finest view (128 um). A coarser view's window spans 256-512 um, farther than
    two-photon gain stays constant (vignetting, uneven dye, brightness falling threefold over 50 um of
    depth), so there a dim vessel is judged next to a brighter one and missed: the shared surface
    stack's dimmer half scored Dice 0.54 as part of the whole stack and 0.85 segmented alone.
    Measured on the finest view, where capillaries are resolved: on a coarse grid they are dimmed by
    partial volume, which tells the network they are thin and must not be corrected away. The
    ``max_correction`` bound keeps vessel-free tissue from being lifted to a vessel's brightness.
    """
    from scipy.ndimage import gaussian_filter, maximum_filter, uniform_filter
    from skimage.measure import block_reduce

    width = max(3, int(round(region_um / voxel_um)))
    # The result is smooth over ``width`` voxels, so it is computed on blocks of about width / 8
    # voxels (their maximum) and interpolated back: the same up to a block, 20x faster than a
    # Gaussian of sigma 32 voxels on the 2 um view of a 512 x 512 x 25 stack.
    block = max(1, width // 8)
    bright = block_reduce(uniform_filter(view, 3, mode="nearest"), (block,) * 3, np.max)
    width = max(3, int(round(width / block)))
    bright = maximum_filter(bright, size=width, mode="nearest")
    local = gaussian_filter(bright, sigma=width / 2.0, mode="nearest")
    np.maximum(local, float(bright.max()) / max_correction, out=local)
    local[local <= 0] = 1.0  # an all-zero view stays zero
    if block > 1:
        local = resample(local, tuple(n * block for n in local.shape))[tuple(slice(0, n) for n in view.shape)]
    return np.ascontiguousarray(local, dtype=np.float32)


def network_views(image: np.ndarray, spacing_um: Sequence[float], views_um: Sequence[float], grid: ModelGrid,
                  flatten: bool = True) -> Iterator[np.ndarray]:
    """Each view of a scan as the network sees it (steps 2-3 of this module), finest first.

    ``image``: the scan already clipped and scaled to [0, 1], depth along k, voxel size ``spacing_um``
    (um per axis); ``views_um``: the views' voxel sizes (um), finest first. Coarser views at least one
    window wide (:func:`fills_window`) are divided by the finest view's :func:`local_brightness` over
    one of its windows (unless ``flatten`` is False). Fine-tuning prepares real scans with this too,
    so it trains on what inference feeds.
    """
    if list(views_um) != sorted(views_um):
        raise ValueError(f"views must be given finest first (um), got {list(views_um)}")
    brightness = None
    for n, view_um in enumerate(views_um):
        view = resample(image, resampled_shape(image.shape, spacing_um, view_um))
        if n == 0 and flatten and len(views_um) > 1:
            brightness = local_brightness(view, view_um, min(grid.patch_size[:2]) * view_um)
        elif brightness is not None and fills_window(view.shape, grid.patch_size):
            view = np.clip(view / resample(brightness, view.shape), 0.0, 1.0).astype(np.float32)
        yield view


def fills_window(view_shape: Sequence[int], patch_size: Sequence[int]) -> bool:
    """Whether a view (i, j, k) is at least one window wide along i and j, i.e. its windows hold no
    lateral zero padding. Only such coarse views are divided by :func:`local_brightness`: in a window
    that is partly padding, the padding (0) is the darkest thing the network sees, and tissue lifted
    toward the scan's brightest stands out against it as a wide, bright band (measured: a lone 80 um
    vessel in a 256 x 96 um scan, precision 0.70 uncorrected, 0.40 corrected at the 8 um view, 0.58
    with at most 1.5x). Training never shows lateral padding."""
    return all(int(n) >= int(p) for n, p in zip(view_shape[:2], patch_size[:2]))


def predict_probability(model, volume: np.ndarray, spacing_um: Sequence[float], grid: ModelGrid, device,
                        overlap: float = 0.5, sw_batch_size: int = 4, tta: bool = True, depth_axis: str = "k",
                        views_um: Sequence[float] | None = None, fusion: str = "wide",
                        flatten: bool = True, fused_views: list[float] | None = None, progress=None,
                        roi: np.ndarray | None = None) -> np.ndarray:
    """Vessel probability (float32 in [0, 1], the scan's shape) of a 3D scan: the steps of this module.

    ``model``: the network, or a :class:`octasim.model.ViewNetworks` whose second network segments the
    coarser views. ``spacing_um``: voxel size along the array axes (um). ``views_um``: voxel sizes (um) of the
    pyramid's views, finest first, all of them fused; default: the views of :func:`scan_view_sizes`,
    each coarser one fused only if it finds vessels its finer neighbour cannot segment whole, at least
    twice as bright as its tissue (:func:`finds_wide_vessels`). ``fusion``: ``"wide"`` (coarse views opened, the documented rule) or ``"max"``
    (a plain maximum over the views; for the ablation in ``benchmarks/bench_real.py``). ``flatten``:
    coarse views divided by the finest view's local brightness first (:func:`local_brightness`; off
    for the ablation). ``tta``: average each window over the four flips of its lateral axes (step 4).
    ``fused_views``: a list that receives the voxel sizes (um) of the views fused. ``progress``: a
    tqdm-like bar, ``reset`` to the windows of every view, whose ``update`` receives those done.
    ``roi``: the imaged region (bool, the scan's shape): step 1 takes its percentiles inside it and
    sets everything outside it to 0, as the zero padding around a scan is (no signal), and every view's
    probability is 0 outside it (resampled to the view), before a coarse view's fusion is decided, so
    nothing outside the region can make a view fused or add vessels to the scan. Why: the network scales every window by its own brightest region
    (``model.input_scale: window``), so a window holding only dark detector noise (outside a cranial
    window) is stretched to full scale and its noise grains read as vessels: with v3, a third of the
    shared stacks replaced by Poisson noise at their 0.5th percentile came out 2.3 % (deep stack) and
    6.3 % (surface stack) vessel there (3.3 % / 6.6 % without the flips, 0.1 % / 1.2 % when set to 0).
    """
    from octasim.model import network_for_view

    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
    if roi is not None:
        roi = np.asarray(roi) != 0  # a mask, never integer indices
    image = normalize_percentiles(volume, grid.clip_percentiles, roi)
    image, spacing = to_depth_last(image, spacing_um, depth_axis)
    views = list(scan_view_sizes(grid, image.shape, spacing) if views_um is None else views_um)
    if not views or any(not np.isfinite(v) or v <= 0 for v in views):
        raise ValueError(f"view voxel sizes must be positive numbers (um), got {views_um}")
    if progress is not None:  # reset, not total =: a notebook bar takes its new length only from reset
        progress.reset(total=sum(window_count(resampled_shape(image.shape, spacing, v), grid.patch_size, overlap)
                                 for v in views))
    inside = None if roi is None else to_depth_last(roi.astype(np.float32), spacing_um, depth_axis)[0]
    fused = None
    for n, net_in in enumerate(network_views(image, spacing, views, grid, flatten)):
        prob = predict_view(network_for_view(model, n), net_in, grid.patch_size, device, overlap, sw_batch_size,
                            tta, progress)
        if inside is not None:
            prob *= resample(inside, prob.shape) >= 0.5
        if n > 0 and views_um is None and not finds_wide_vessels(prob, views[n], views[n - 1], grid, net_in):
            continue
        if n > 0 and fusion == "wide":
            prob = wide_part(prob)
        prob = resample(prob, image.shape)
        fused = prob if fused is None else np.maximum(fused, prob, out=fused)
        if fused_views is not None:
            fused_views.append(float(views[n]))
    np.clip(fused, 0.0, 1.0, out=fused)
    fused = from_depth_last(fused, depth_axis)
    if roi is not None:
        fused[~roi] = 0.0
    return np.ascontiguousarray(fused)
