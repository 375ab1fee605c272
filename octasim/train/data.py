"""Training data: generated datasets and labelled real scans held in memory, a held-out split, and
on-the-fly synthesis.

- ``load_dataset_samples`` reads ``DIR/dataset.json`` manifests (written by ``octasim generate``) and
  folders of labelled real scans (``find_labelled_scans``: plain ``NAME`` + ``NAME_label`` pairs or
  the nnU-Net layout ``imagesTr/`` + ``labelsTr/``).
- ``scan_views`` prepares a real scan as inference sees it: percentile scaling, then resampling
  to each view of the model's image pyramid and the coarse views' gain correction
  (``octasim.inference.network_views``: fine-tuning teaches every view the network is used at).
- ``split_samples`` holds out whole samples for validation, deterministically by seed.
- ``PatchDataset`` loads every volume once and draws random ``crop``^3 crops from memory (no file is
  re-read per patch), then applies the augmentation. Sample ``n`` is a pure function of (seed, n), so
  any number of loader workers gives the same stream, and a resumed run continues it exactly.
- ``OnTheFlyDataset`` renders fresh volumes (random profile per volume) inside the loader's worker
  processes; every volume index is rendered once, each volume gives several crops.
- Distributed training (``torchrun``): both datasets take ``rank`` and ``world_size`` and give each
  rank a disjoint share of one stream (``rank_patch_index``; on the fly: disjoint volume indices).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from octasim.inference import ModelGrid, network_views
from octasim.preprocess import normalize_percentiles, resample
from octasim.synth.manifest import MANIFEST, load_dataset
from octasim.synth.manifest import DatasetError as DataError  # one class: training data cannot be used
from octasim.train.augment import build_augmentation, seed_for
from octasim.train.config import TrainConfig


@dataclass(frozen=True)
class SampleRef:
    """One image/label pair of a dataset folder; ``scan``: a real scan (any voxel size, read from its
    header, resampled to the model's grid) rather than a generated sample on the training grid."""

    dataset: Path
    id: str
    image: Path
    label: Path
    scan: bool = False


@dataclass
class DatasetInfo:
    samples: list[SampleRef]
    voxel_size_um: float | None

    @property
    def scans(self) -> list[SampleRef]:
        return [s for s in self.samples if s.scan]


#: file endings of scans and labels in a folder of labelled real scans
SCAN_SUFFIXES = (".nii.gz", ".nii", ".tif", ".tiff")
#: a plain folder pairs NAME.EXT (image) with NAME + LABEL_SUFFIX + .EXT (manual label)
LABEL_SUFFIX = "_label"


def _split_suffix(name: str) -> tuple[str, str] | None:
    """(stem, suffix) of a scan file name, or None when it is not a scan file."""
    low = name.lower()
    for suffix in SCAN_SUFFIXES:
        if low.endswith(suffix):
            return name[: -len(suffix)], name[-len(suffix):]
    return None


def _scan_files(directory: Path) -> dict[str, Path]:
    out = {}
    for p in sorted(directory.iterdir()):
        parts = _split_suffix(p.name)
        if parts and p.is_file() and not p.name.startswith("."):
            if parts[0] in out:
                raise DataError(f"{directory}: two files for {parts[0]!r} ({out[parts[0]].name}, {p.name}); keep one")
            out[parts[0]] = p
    return out


def find_labelled_scans(directory: str | Path) -> list[SampleRef]:
    """Image / label pairs of a folder of labelled real scans (NIfTI or TIFF), sorted by name.

    Layouts: nnU-Net (``imagesTr/NAME_0000.EXT`` with ``labelsTr/NAME.EXT``; only channel 0 is used)
    or plain (``NAME.EXT`` with ``NAME_label.EXT``). Labels: vessel > 0. Raises DataError naming the
    folder when it holds no pair, or an image without its label (or a label without its image).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: no such folder")
    if (directory / "imagesTr").is_dir() or (directory / "labelsTr").is_dir():
        images_dir, labels_dir = directory / "imagesTr", directory / "labelsTr"
        for d in (images_dir, labels_dir):
            if not d.is_dir():
                raise DataError(f"{d}: missing (an nnU-Net folder holds imagesTr/ and labelsTr/)")
        images = {k[: -len("_0000")]: v for k, v in _scan_files(images_dir).items() if k.endswith("_0000")}
        labels = _scan_files(labels_dir)
        layout = "imagesTr/NAME_0000.nii.gz with labelsTr/NAME.nii.gz"
    else:
        files = _scan_files(directory)
        labels = {k[: -len(LABEL_SUFFIX)]: v for k, v in files.items() if k.endswith(LABEL_SUFFIX)}
        images = {k: v for k, v in files.items() if not k.endswith(LABEL_SUFFIX)}
        layout = f"NAME.nii.gz (or .tif) with NAME{LABEL_SUFFIX}.nii.gz"
    lonely = sorted(set(images) ^ set(labels))
    if lonely:
        what = [f"{n} (no {'label' if n in images else 'image'})" for n in lonely]
        raise DataError(f"{directory}: unpaired files: {', '.join(what)}; a folder of labelled scans pairs {layout}")
    if not images:
        raise DataError(f"{directory}: no dataset.json and no labelled scans (expected {layout}, or a folder "
                        "written by `octasim generate`)")
    return [SampleRef(directory, name, images[name], labels[name], scan=True) for name in sorted(images)]


def read_manifest(directory: str | Path) -> tuple[dict[str, Any], list[SampleRef]]:
    """Parse ``directory/dataset.json`` with the one strict reader (:func:`octasim.synth.manifest.load_dataset`);
    errors name the file for a missing or malformed manifest, an unfinished dataset, samples or files."""
    directory = Path(directory)
    meta = load_dataset(directory)
    refs = [SampleRef(directory, str(s["id"]), directory / s["image"], directory / s["label"]) for s in meta["samples"]]
    return meta, refs


def load_dataset_samples(dirs: Sequence[str | Path]) -> DatasetInfo:
    """All samples of one or more folders (in argument order): generated datasets (with ``dataset.json``;
    their voxel sizes must agree) and folders of labelled real scans (:func:`find_labelled_scans`)."""
    if not dirs:
        raise DataError("no dataset folder given (use --data DIR, or --on-the-fly)")
    samples, sizes = [], {}
    for d in dirs:
        if not (Path(d) / MANIFEST).exists() or (Path(d) / "imagesTr").is_dir():
            samples += find_labelled_scans(d)
            continue
        meta, refs = read_manifest(d)
        samples += refs
        if meta.get("voxel_size_um") is not None:
            sizes[str(d)] = float(meta["voxel_size_um"])
    if len(set(sizes.values())) > 1:
        raise DataError(f"datasets with different voxel sizes (um): {sizes}; train on one voxel size")
    return DatasetInfo(samples, next(iter(sizes.values()), None))


def split_samples(samples: Sequence[SampleRef], cfg: TrainConfig) -> tuple[list[SampleRef], list[SampleRef]]:
    """(train, validation): whole samples held out, chosen by a permutation seeded with ``cfg.seed``."""
    n = len(samples)
    if n < 2:
        raise DataError(f"{samples[0].dataset if samples else 'dataset'}: {n} sample(s); training needs at least "
                        "2 (one is held out for validation)")
    n_val = cfg.n_val if cfg.n_val is not None else max(1, int(round(cfg.val_fraction * n)))
    n_val = min(n_val, n - 1)
    order = np.random.default_rng(seed_for(cfg.seed, 0x5A17)).permutation(n)
    val = sorted(order[:n_val].tolist())
    train = sorted(order[n_val:].tolist())
    return [samples[i] for i in train], [samples[i] for i in val]


def network_input(image: np.ndarray, cfg: TrainConfig) -> np.ndarray:
    """A training or validation image as the network sees it: float32 in [0, 1], clipped to the
    config's ``input_clip_percentiles`` and scaled (as real scans are at inference) when it has them."""
    image = np.clip(np.asarray(image, np.float32), 0.0, 1.0)
    if cfg.input_clip_percentiles is None:
        return image
    from octasim.preprocess import PreprocessError

    try:
        return normalize_percentiles(image, cfg.input_clip_percentiles)
    except PreprocessError:  # a constant volume (nothing rendered): nothing to scale
        return image


def load_volumes(refs: Sequence[SampleRef], progress: bool = False, cfg: TrainConfig | None = None
                 ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Read every pair once: (image float32 in [0, 1], label uint8 {0, 1}), both (i, j, k); with
    ``cfg``, images are prepared by :func:`network_input`."""
    from tqdm import tqdm

    from octasim.nifti import read_volume

    out = []
    for ref in tqdm(refs, desc="loading volumes", unit="vol", disable=None if progress else True, leave=False):
        image = read_volume(ref.image, np.float32).data
        label = read_volume(ref.label, np.float32).data
        if image.shape != label.shape:
            raise DataError(f"{ref.label}: shape {label.shape} differs from its image {ref.image} {image.shape}")
        image = network_input(image, cfg) if cfg is not None else np.clip(image, 0.0, 1.0, out=image)
        out.append((image, (label > 0.5).astype(np.uint8)))
    return out


def read_scan_pair(ref: SampleRef) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """A labelled real scan as stored: (image float32, label uint8 {0, 1}, voxel size in um along i, j, k).

    The voxel size is the image's; the label lies on the image's grid (same shape), so it needs no
    calibration of its own (label TIFFs drawn in Fiji often have none). A constant image (nothing to
    learn from, and no percentiles to scale by) is refused, naming the file."""
    from octasim.scan import read_scan

    image = read_scan(ref.image)
    label = read_scan(ref.label, voxel_size_um=image.spacing_um)
    if image.data.shape != label.data.shape:
        raise DataError(f"{ref.label}: shape {label.data.shape} differs from its image {ref.image} {image.data.shape}")
    if float(image.data.max()) <= float(image.data.min()):
        raise DataError(f"{ref.image}: every voxel is {float(image.data.min()):g}; a labelled scan needs an image")
    return image.data.astype(np.float32, copy=False), (label.data > 0).astype(np.uint8), image.spacing_um


def scan_views(image: np.ndarray, label: np.ndarray, spacing_um: Sequence[float], views_um: Sequence[float],
               grid: ModelGrid) -> list[tuple[np.ndarray, np.ndarray]]:
    """A real scan as the network sees it at each view of the image pyramid (voxel sizes ``views_um``,
    finest first; ``grid`` the model's): clipped to the grid's percentiles and scaled to [0, 1], then
    :func:`octasim.inference.network_views`, as ``predict_probability`` prepares scans; the label
    resampled linearly, then > 0.5."""
    scaled = normalize_percentiles(image, grid.clip_percentiles)
    views = network_views(scaled, spacing_um, views_um, grid)
    return [(view, (resample(label.astype(np.float32), view.shape) > 0.5).astype(np.uint8)) for view in views]


def hold_out_block(image: np.ndarray, label: np.ndarray, fraction: float = 0.25
                   ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """(training part, validation part) of a single labelled scan: the last ``fraction`` of its longer
    lateral axis (i or j) is held out for validation, the rest trains."""
    axis = 0 if image.shape[0] >= image.shape[1] else 1
    cut = image.shape[axis] - max(1, int(round(fraction * image.shape[axis])))
    head, tail = (slice(None, cut), slice(cut, None))
    idx = lambda sl: tuple(sl if a == axis else slice(None) for a in range(3))  # noqa: E731
    return (image[idx(head)], label[idx(head)]), (image[idx(tail)], label[idx(tail)])


def _pad_to(arr: np.ndarray, size: int) -> np.ndarray:
    """Zero-padded to at least ``size`` voxels per axis: dark and no vessel beyond the volume, as
    inference pads a scan smaller than the window (:mod:`octasim.inference`)."""
    pad = [(0, max(0, size - s)) for s in arr.shape]
    return np.pad(arr, pad, mode="constant") if any(p[1] for p in pad) else arr


def rank_patch_index(n: int, batch_size: int, rank: int = 0, world_size: int = 1) -> int:
    """Position in the patch stream of patch ``n`` of rank ``rank`` (of ``world_size``): local batch ``b``
    of every rank together is global batch ``b``, ``batch_size * world_size`` consecutive patches of
    which rank ``r`` holds the ``r``-th ``batch_size``. One process (``world_size`` 1): ``n`` itself."""
    step, j = divmod(int(n), int(batch_size))
    return (step * int(world_size) + int(rank)) * int(batch_size) + j


def random_crop(image: np.ndarray, label: np.ndarray, size: int, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray]:
    """A random ``size``^3 crop (copied, channel-first ``(1, s, s, s)``); volumes smaller are zero-padded by the callers (``_pad_to``)."""
    corner = [int(rng.integers(0, s - size + 1)) for s in image.shape]
    sl = tuple(slice(c, c + size) for c in corner)
    return image[sl][None].copy(), label[sl][None].copy()


class PatchDataset(Dataset):
    """Augmented patches from volumes held in memory; item ``n`` depends only on (seed, offset + n).

    ``length`` is the number of patches this dataset yields (steps x batch size); ``offset`` the
    number already consumed (a resumed run continues the same stream). ``weights``: relative
    probability of drawing each volume (default: all equal). Distributed training: rank ``rank`` of
    ``world_size`` yields its share of every global batch (:func:`rank_patch_index`; ``offset`` then
    counts patches of all ranks, ``length`` this rank's), so no two ranks draw the same patch.
    """

    def __init__(self, volumes: Sequence[tuple[np.ndarray, np.ndarray]], cfg: TrainConfig, length: int,
                 offset: int = 0, seed: int | None = None, weights: Sequence[float] | None = None,
                 rank: int = 0, world_size: int = 1) -> None:
        if not volumes:
            raise DataError("no training volumes")
        self.crop = cfg.crop
        self.volumes = [(_pad_to(i, self.crop), _pad_to(lab, self.crop)) for i, lab in volumes]
        self.seed = cfg.seed if seed is None else seed
        self.length, self.offset = int(length), int(offset)
        self.batch_size, self.rank, self.world_size = int(cfg.batch_size), int(rank), int(world_size)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {rank} of world size {world_size}")
        self.transform = build_augmentation(cfg)
        self.p = None
        if weights is not None:
            w = np.asarray(weights, float)
            if w.shape != (len(self.volumes),) or (w < 0).any() or w.sum() <= 0:
                raise ValueError("weights: one non-negative number per volume, with a positive sum")
            self.p = w / w.sum()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, n: int) -> dict[str, torch.Tensor]:
        index = self.offset + (int(n) if self.world_size == 1
                               else rank_patch_index(n, self.batch_size, self.rank, self.world_size))
        rng = np.random.default_rng(seed_for(self.seed, 0xC409, index))
        pick = rng.integers(len(self.volumes)) if self.p is None else rng.choice(len(self.volumes), p=self.p)
        image, label = self.volumes[int(pick)]
        img, lab = random_crop(image, label, self.crop, rng)
        self.transform.set_random_state(seed=seed_for(self.seed, 0xA06, index))
        return self.transform({"image": img, "label": lab})


#: renderer(profile_name, seed, index) -> (image float32 in [0, 1], label) for on-the-fly synthesis
Renderer = Callable[[str, int, int], tuple[np.ndarray, np.ndarray]]


class SynthRenderer:
    """Default renderer: ``octasim.synth.render_sample`` (imported lazily, in the worker process)."""

    def __init__(self, cfg: TrainConfig) -> None:
        otf = cfg.on_the_fly
        self.shape, self.voxel_size_um = tuple(int(s) for s in otf.shape), float(otf.voxel_size_um)
        self.options = dict(otf.synth_options)
        self.overrides = {p.name: dict(p.overrides) for p in otf.profiles if p.overrides}
        self._profiles: dict[str, Any] = {}

    def _profile(self, name: str):
        """The profile spec for SynthConfig: the name, or the full dict when the config overrides parameters."""
        if name not in self.overrides:
            return name, None
        if name not in self._profiles:
            from octasim.profiles import load_profile
            self._profiles[name] = load_profile(name, self.overrides[name])
        return self._profiles[name], name

    def __call__(self, profile: str, seed: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        try:
            from octasim.synth import SynthConfig, render_sample
        except ImportError as exc:  # pragma: no cover - the simulator is a separate module
            raise DataError(f"on-the-fly training needs octasim.synth.render_sample ({exc})") from exc
        spec, name = self._profile(profile)
        # synth_options may override the voxel size with a range (scale randomization): the network
        # still trains on the nominal grid on_the_fly.voxel_size_um, recorded in the checkpoint
        kwargs = {"shape": self.shape, "voxel_size_um": self.voxel_size_um, **self.options}
        sample = render_sample(SynthConfig(profile=spec, profile_name=name, seed=seed, **kwargs), index)
        return np.asarray(sample.image, np.float32), np.asarray(sample.label)


def choose_profile(cfg: TrainConfig, seed: int, index: int) -> str:
    """The profile of on-the-fly volume ``index`` (weighted draw, deterministic in (seed, index))."""
    profiles = cfg.on_the_fly.profiles
    w = np.array([p.weight for p in profiles], float)
    rng = np.random.default_rng(seed_for(seed, 0x9F0, index))
    return profiles[int(rng.choice(len(profiles), p=w / w.sum()))].name


class OnTheFlyDataset(IterableDataset):
    """Endless stream of augmented patches from freshly rendered volumes.

    With ``W`` loader workers (``W = 1`` for none), worker ``r`` renders volumes ``r, r + W, r + 2W, ...``
    (no volume is rendered twice) and yields ``crops_per_volume`` patches of each; the DataLoader takes
    batch ``n`` from worker ``n % W``. The renderer gets the run seed and the volume index (the simulator
    derives the sample's own seed from both). ``start_batch`` resumes this stream exactly at a global
    batch: worker ``w`` of the new loader continues the stream of worker ``(start_batch + w) % W``, from
    the right patch within the right volume, given the same ``W`` and batch size.

    Distributed training: rank ``rank`` of ``world_size`` (each with ``W`` workers) renders the
    streams ``rank * W + r``, of ``world_size * W`` in all, so no volume is rendered by two ranks.
    """

    def __init__(self, cfg: TrainConfig, renderer: Renderer | None = None, start_batch: int = 0,
                 seed: int | None = None, rank: int = 0, world_size: int = 1) -> None:
        self.cfg = cfg
        self.renderer = renderer if renderer is not None else SynthRenderer(cfg)
        self.start_batch = int(start_batch)
        self.rank, self.world_size = int(rank), int(world_size)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {rank} of world size {world_size}")
        self.seed = cfg.seed if seed is None else seed
        self.transform = build_augmentation(cfg)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        crop, per_volume = self.cfg.crop, self.cfg.on_the_fly.crops_per_volume
        first_batch = self.start_batch + wid                 # global index of this worker's first batch
        role = first_batch % nw                              # whose stream it continues
        first_patch = (first_batch // nw) * self.cfg.batch_size  # position in that stream
        streams, stream = nw * self.world_size, self.rank * nw + role  # (one process: nw, role)
        index, skip = stream + streams * (first_patch // per_volume), first_patch % per_volume
        while True:
            profile = choose_profile(self.cfg, self.seed, index)
            image, label = self.renderer(profile, self.seed, index)
            image = _pad_to(network_input(image, self.cfg), crop)
            label = _pad_to((np.asarray(label) > 0.5).astype(np.uint8), crop)
            rng = np.random.default_rng(seed_for(self.seed, 0xC409, index))
            for c in range(per_volume):
                img, lab = random_crop(image, label, crop, rng)  # drawn even when skipped: same rng sequence
                if c < skip:
                    continue
                self.transform.set_random_state(seed=seed_for(self.seed, 0xA06, index, c))
                yield self.transform({"image": img, "label": lab})
            index, skip = index + streams, 0


def render_validation_volumes(cfg: TrainConfig, renderer: Renderer | None = None
                              ) -> list[tuple[np.ndarray, np.ndarray]]:
    """``cfg.on_the_fly.n_val`` volumes rendered once, from a seed stream disjoint from training's."""
    renderer = renderer if renderer is not None else SynthRenderer(cfg)
    val_seed = seed_for(cfg.seed, 0x7A1)
    out = []
    for index in range(cfg.on_the_fly.n_val):
        image, label = renderer(choose_profile(cfg, val_seed, index), val_seed, index)
        # as rendered: validation predicts them through the inference path, which scales them itself
        out.append((np.clip(np.asarray(image, np.float32), 0, 1), (np.asarray(label) > 0.5).astype(np.uint8)))
    return out


def render_training_volumes(cfg: TrainConfig, n: int, renderer: Renderer | None = None
                            ) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` synthetic volumes rendered once with the config's on-the-fly profiles, prepared as training
    volumes (:func:`network_input`), from a seed stream disjoint from training's and validation's: the
    synthetic share mixed into fine-tuning on a few real scans (``synthetic_fraction``)."""
    renderer = renderer if renderer is not None else SynthRenderer(cfg)
    mix_seed = seed_for(cfg.seed, 0x5F7)
    out = []
    for index in range(int(n)):
        image, label = renderer(choose_profile(cfg, mix_seed, index), mix_seed, index)
        out.append((network_input(image, cfg), (np.asarray(label) > 0.5).astype(np.uint8)))
    return out


def worker_init(worker_id: int) -> None:
    """Loader workers use one thread each (the main process trains with the others)."""
    torch.set_num_threads(1)
