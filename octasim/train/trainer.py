"""The training loop: MONAI 3D U-Net on augmented patches, validation Dice, exact resume, checkpoints."""
from __future__ import annotations

import csv
import dataclasses
import math
import os
import random
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from octasim.atomic import atomic_path
from octasim.errors import OctasimError
from octasim.inference import DEFAULT_VOXEL_SIZE_UM, ModelGrid, predict_probability, pyramid_voxel_sizes, \
    trained_voxel_range
from octasim.metrics import dice
from octasim.model import build_unet, load_checkpoint, resolve_device, save_checkpoint
from octasim.train.augment import seed_for
from octasim.train.config import TrainConfig, config_from_dict
from octasim.train.data import (OnTheFlyDataset, PatchDataset, Renderer, find_labelled_scans, hold_out_block,
                                load_dataset_samples, load_volumes, read_scan_pair, render_training_volumes,
                                render_validation_volumes, scan_views, split_samples, worker_init)


def preprocessing(cfg: TrainConfig) -> dict[str, Any]:
    """How scans must be normalized at inference: the percentiles the training volumes were clipped to
    (``input_clip_percentiles``), else the default ones (training volumes are already in [0, 1])."""
    from octasim.preprocess import CLIP_PERCENTILES

    clip = cfg.input_clip_percentiles if cfg.input_clip_percentiles is not None else CLIP_PERCENTILES
    return {"clip_percentiles": [float(p) for p in clip]}

METRIC_COLUMNS = ("step", "loss", "lr", "val_dice", "seconds")


class TrainError(OctasimError):
    """A training run cannot start or resume; the message names the folder or file."""


def lr_factor(step: int, total: int, decay_fraction: float) -> float:
    """Learning-rate multiplier: 1 until the last ``decay_fraction`` of ``total`` steps, then linear to 0."""
    decay = int(round(total * decay_fraction))
    start = total - decay
    if decay <= 0 or step < start:
        return 1.0
    return max(0.0, (total - step) / decay)


def make_loss(cfg: TrainConfig) -> torch.nn.Module:
    """MONAI Dice / soft clDice / Dice+clDice / Dice+BCE on logits (sigmoid inside)."""
    from monai.losses import DiceCELoss, DiceLoss, SoftclDiceLoss, SoftDiceclDiceLoss

    name = cfg.loss.name
    if name == "dice":
        return DiceLoss(sigmoid=True, batch=bool(cfg.loss.batch_dice))
    if name == "dice_bce":
        return DiceCELoss(sigmoid=True, batch=bool(cfg.loss.batch_dice))
    if name == "cldice":
        return SoftclDiceLoss(iter_=int(cfg.loss.cldice_iters), sigmoid=True)
    return SoftDiceclDiceLoss(iter_=int(cfg.loss.cldice_iters), alpha=float(cfg.loss.cldice_alpha), sigmoid=True)


def init_output_bias(model: torch.nn.Module, prior: float) -> None:
    """Start the network at foreground probability ``prior`` everywhere (bias of its last convolution).

    Vessels fill a few % of a volume; starting at 0.5 costs hundreds of Adam steps just to move the
    output bias (Adam moves each parameter by about lr per step).
    """
    convs = [m for m in model.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))
             and m.out_channels == 1 and m.bias is not None]
    if convs:
        with torch.no_grad():
            convs[-1].bias.fill_(math.log(prior / (1.0 - prior)))


#: thresholds tried by the calibration (0.05, 0.10, ..., 0.95)
THRESHOLD_GRID = tuple(round(0.05 * i, 2) for i in range(1, 20))


def train_voxel_range(cfg: TrainConfig, voxel_size_um: float, on_the_fly: bool) -> tuple[float, float]:
    """(finest, coarsest) voxel size (um) the run's volumes are rendered at: the on-the-fly
    ``synth_options.voxel_size_um`` (value or range), else the training grid."""
    vs = cfg.on_the_fly.synth_options.get("voxel_size_um") if on_the_fly else None
    if vs is None:
        return float(voxel_size_um), float(voxel_size_um)
    vals = [float(v) for v in (vs if isinstance(vs, (list, tuple)) else [vs])]
    return min(vals), max(vals)


def model_grid(cfg: TrainConfig, voxel_size_um: float, on_the_fly: bool,
               voxel_range: tuple[float, float] | None = None) -> ModelGrid:
    """The inference grid of a run (training voxel size, window, input scaling, trained voxel sizes;
    ``voxel_range`` overrides :func:`train_voxel_range`, e.g. with a fine-tuned model's range)."""
    top = (voxel_range or train_voxel_range(cfg, voxel_size_um, on_the_fly))[1]
    return ModelGrid(float(voxel_size_um), (int(cfg.patch_size),) * 3,
                     tuple(preprocessing(cfg)["clip_percentiles"]), max(float(voxel_size_um), top))


def _probabilities(model: torch.nn.Module, volumes: Sequence[tuple], cfg: TrainConfig,
                   device: torch.device, grid: ModelGrid):
    """Vessel probability of each held-out volume through the inference path of ``octasim segment``.
    A volume is (image, label) on the training grid or (image, label, voxel size in um) for a real scan."""
    for image, label, *spacing in volumes:
        spacing = spacing[0] if spacing else (grid.voxel_size_um,) * 3
        yield predict_probability(model, image, spacing, grid, device, overlap=cfg.val_overlap,
                                  sw_batch_size=cfg.batch_size), label


def calibrate_threshold(model: torch.nn.Module, volumes: Sequence[tuple[np.ndarray, np.ndarray]],
                        cfg: TrainConfig, device: torch.device, grid: ModelGrid | None = None,
                        thresholds: Sequence[float] = THRESHOLD_GRID) -> dict[str, Any]:
    """The probability threshold maximizing mean Dice over held-out volumes.

    Each volume is predicted once, exactly as ``octasim segment`` predicts a scan (``grid``: the run's
    :func:`model_grid`; default: the config's patch on the default grid); Dice is computed for every
    threshold. Ties go to the threshold nearest 0.5. Returns plain data: ``{"grid": [...],
    "mean_dice": [...], "chosen": t, "dice_at_chosen": d, "dice_at_0.5": d05, "n_volumes": n}``.
    """
    grid = grid or model_grid(cfg, DEFAULT_VOXEL_SIZE_UM, False)
    thresholds = [float(t) for t in thresholds]
    sums, at_half = np.zeros(len(thresholds)), 0.0
    for prob, label in _probabilities(model, volumes, cfg, device, grid):
        sums += [dice(prob > t, label) for t in thresholds]
        at_half += dice(prob > 0.5, label)
    n = max(1, len(volumes))
    mean = sums / n
    best = max(range(len(thresholds)), key=lambda i: (round(float(mean[i]), 12), -abs(thresholds[i] - 0.5)))
    return {"grid": thresholds, "mean_dice": [round(float(m), 6) for m in mean], "chosen": thresholds[best],
            "dice_at_chosen": float(mean[best]), "dice_at_0.5": at_half / n, "n_volumes": len(volumes)}


def validate(model: torch.nn.Module, volumes: Sequence[tuple[np.ndarray, np.ndarray]], cfg: TrainConfig,
             device: torch.device, grid: ModelGrid | None = None) -> float:
    """Mean Dice over held-out volumes at ``cfg.threshold``, predicted as ``octasim segment`` predicts
    (see :func:`calibrate_threshold` for ``grid``); the model's train / eval mode is kept."""
    grid = grid or model_grid(cfg, DEFAULT_VOXEL_SIZE_UM, False)
    return float(np.mean([dice(prob > cfg.threshold, label)
                          for prob, label in _probabilities(model, volumes, cfg, device, grid)]))


# -- RNG state as plain data (checkpoints load with weights_only=True) --------------------------------

def rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# -- run folder -------------------------------------------------------------------------------------

def write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in METRIC_COLUMNS})


def read_metrics(path: Path, upto_step: int) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            step = int(row["step"])
            if step <= upto_step:
                rows.append({"step": step, "loss": float(row["loss"]) if row["loss"] else None,
                             "lr": float(row["lr"]) if row["lr"] else None,
                             "val_dice": float(row["val_dice"]) if row["val_dice"] else None,
                             "seconds": float(row["seconds"]) if row["seconds"] else None})
    return rows


def plot_curves(path: Path, rows: list[dict[str, Any]]) -> None:
    """Training loss and validation Dice against step (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    loss = [(r["step"], r["loss"]) for r in rows if r.get("loss") is not None]
    dice = [(r["step"], r["val_dice"]) for r in rows if r.get("val_dice") is not None]
    if loss:
        ax.plot(*zip(*loss), color="tab:blue", label="training loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss", color="tab:blue")
    ax2 = ax.twinx()
    if dice:
        ax2.plot(*zip(*dice), "o-", color="tab:red", label="validation Dice")
    ax2.set_ylabel("validation Dice", color="tab:red")
    ax2.set_ylim(0, 1)
    ax.set_title("octasim train")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in state.items()}


def _comparable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items()
            if k not in ("steps", "num_workers", "val_every", "log_every", "calibrate_threshold",
                         "apply_calibrated_threshold")}


def data_identity(dirs: Sequence[Path]) -> list[dict[str, str]]:
    """The data folders of a run as recorded in its checkpoints: resolved path and SHA-256 of the
    folder's ``dataset.json``, or for a folder of labelled scans of its pairs' names and sizes (a folder
    that was moved keeps its identity)."""
    import hashlib

    def digest(d: Path) -> str:
        if (d / "dataset.json").exists() and not (d / "imagesTr").is_dir():
            return hashlib.sha256((d / "dataset.json").read_bytes()).hexdigest()
        files = [(str(p.relative_to(d)), p.stat().st_size) for ref in find_labelled_scans(d)
                 for p in (ref.image, ref.label)]
        return hashlib.sha256(repr(files).encode()).hexdigest()

    return [{"path": str(d.resolve()), "sha256": digest(d)} for d in dirs]


def _check_resume(state: dict[str, Any], last_path: Path, cfg: TrainConfig, data: list[dict[str, str]],
                  on_the_fly: bool, end: int, world_size: int = 1) -> None:
    """Refuse to resume ``last.pt`` with another config, other data, another way of loading, another
    number of processes, or no steps left."""
    saved = _comparable(state.get("train_config") or {})
    now = _comparable(cfg.to_dict())
    diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if diff:
        raise TrainError(f"{last_path}: the run was trained with a different config ({', '.join(diff)} "
                         "differ); resume with the same config")
    old_data = state.get("data")
    if old_data is not None and [d["sha256"] for d in old_data] != [d["sha256"] for d in data]:
        def names(ds: list[dict[str, str]]) -> str:
            return ", ".join(d["path"] for d in ds) or "no --data folder"
        raise TrainError(f"{last_path}: the run was trained on {names(old_data)}, but this resume gives "
                         f"{names(data)}, whose dataset.json differs (another dataset, or one regenerated or "
                         "extended since); resume with the --data the run started with, or start a new run in "
                         "another --out folder")
    if bool(state.get("on_the_fly", False)) != bool(on_the_fly):
        raise TrainError(f"{last_path}: the run was {'' if state.get('on_the_fly') else 'not '}trained "
                         "on the fly; resume it the same way")
    saved_workers = (state.get("train_config") or {}).get("num_workers", cfg.num_workers)
    if on_the_fly and max(1, saved_workers) != max(1, cfg.num_workers):  # each worker renders its own stream
        raise TrainError(f"{last_path}: the run rendered its volumes with {saved_workers} loader worker(s); "
                         f"resume it with --workers {saved_workers} to continue its data stream exactly")
    saved_world = int(state.get("world_size", 1))
    if saved_world != world_size:
        how = (f"{saved_world} processes in all (torchrun --nproc-per-node {saved_world} on one machine)"
               if saved_world > 1 else "one process (without torchrun)")
        raise TrainError(f"{last_path}: the run was trained by {saved_world} process(es), this resume runs "
                         f"{world_size}; the effective batch (batch_size x processes) and each process's data "
                         f"stream would change, so resume it with {how}")
    start = int(state["step"])
    if start >= end:
        raise TrainError(f"{last_path}: the run is already at step {start} (asked for {end}); "
                         "raise --steps to train longer")


# -- distributed training (torchrun) ---------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class World:
    """The processes training one run: ``size`` ranks (1: plain single-process training); rank 0 validates
    and writes the run folder. ``local_rank``: the rank on its machine (its GPU)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def world_from_env() -> World:
    """This process's place in a ``torchrun`` launch (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``), or of the
    process group its caller initialized; a single process when neither says otherwise."""
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), local)
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1:
        return World()
    return World(int(os.environ.get("RANK", "0") or 0), size, local)


def rank_device(name: str, world: World) -> torch.device:
    """The device of a rank: ``cuda`` (or ``auto`` with GPUs) means the rank's own GPU ``cuda:LOCAL_RANK``."""
    dev = resolve_device(name)
    if dev.type != "cuda":
        return dev
    if dev.index is not None:
        raise ValueError(f"--device {name} under torchrun: every rank trains on its own GPU (cuda:LOCAL_RANK); "
                         "give --device cuda or auto, and choose GPUs with CUDA_VISIBLE_DEVICES")
    if world.local_rank >= torch.cuda.device_count():
        raise ValueError(f"rank {world.rank} has LOCAL_RANK {world.local_rank}, but PyTorch sees "
                         f"{torch.cuda.device_count()} GPU(s): start at most one process per GPU")
    torch.cuda.set_device(world.local_rank)
    return torch.device("cuda", world.local_rank)


#: how long ranks wait for each other (rank 0 validates and writes while the others wait)
DIST_TIMEOUT = timedelta(hours=2)


def _agree(loss: torch.Tensor, time_up: bool, world: World) -> tuple[float, bool]:
    """(mean loss over ranks, whether any rank's time is up): every rank logs and stops alike."""
    import torch.distributed as dist

    stats = torch.stack([loss.detach().float().reshape(()), torch.tensor(float(time_up), device=loss.device)])
    dist.all_reduce(stats)
    return float(stats[0]) / world.size, bool(stats[1] > 0)


def _all_rng_states(world: World) -> list[dict[str, Any]]:
    """Every rank's RNG state (dropout draws differ per rank), gathered for an exact resume."""
    import torch.distributed as dist

    states: list[Any] = [None] * world.size
    dist.all_gather_object(states, rng_state())
    return states


# -- the run ----------------------------------------------------------------------------------------

#: with fewer labelled real scans than this, each scan gives a block to validation instead of whole scans
MIN_SCANS_FOR_WHOLE_HOLD_OUT = 4


def _training_data(info, cfg: TrainConfig, grid: ModelGrid, progress: bool) -> tuple[list, list]:
    """(training volumes, validation volumes) of --data folders.

    Generated samples: whole samples held out (:func:`split_samples`). Labelled real scans: validation
    is on real scans whenever there are any (real labels are what segmentation is judged by): whole
    scans held out when there are at least ``MIN_SCANS_FOR_WHOLE_HOLD_OUT``, else the last quarter of
    each scan's longer lateral axis (:func:`hold_out_block`): holding out one of two or three scans
    would lose a third to a half of the labels and of their variety. Real scans train at every view of the model's image pyramid
    (:func:`scan_views`); validation predicts them at their own voxel size, as ``octasim segment`` does.
    """
    scans = info.scans
    generated = [s for s in info.samples if not s.scan]
    train_refs, val_refs = split_samples(generated, cfg) if generated and not scans else (generated, [])
    train_volumes = load_volumes(train_refs, progress, cfg)
    val_volumes = load_volumes(val_refs, progress)
    if not scans:
        return train_volumes, val_volumes
    views = pyramid_voxel_sizes(grid)
    clip = grid.clip_percentiles
    if len(scans) < MIN_SCANS_FOR_WHOLE_HOLD_OUT:
        val_volumes = []
        for ref in scans:
            image, label, spacing = read_scan_pair(ref)
            (train_img, train_lab), (val_img, val_lab) = hold_out_block(image, label)
            train_volumes += scan_views(train_img, train_lab, spacing, views, clip)
            val_volumes.append((val_img, val_lab, spacing))
        return train_volumes, val_volumes
    fit, held = split_samples(scans, cfg)
    for ref in fit:
        train_volumes += scan_views(*read_scan_pair(ref), views, clip)
    return train_volumes, [read_scan_pair(ref) for ref in held]


def training_dataset(cfg: TrainConfig, start: int, end: int, on_the_fly: bool, renderer: Renderer | None = None,
                     volumes: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
                     weights: Sequence[float] | None = None, world: World = World()) -> torch.utils.data.Dataset:
    """The patches one rank trains on from step ``start`` to ``end``, one batch per step: its share of
    every global batch of ``volumes`` (:class:`PatchDataset`), or of freshly rendered volumes, every
    volume rendered by one rank only (:class:`OnTheFlyDataset`). One process: the whole stream."""
    if on_the_fly:
        return OnTheFlyDataset(cfg, renderer, start_batch=start, rank=world.rank, world_size=world.size)
    bs = cfg.batch_size
    return PatchDataset(volumes, cfg, length=(end - start) * bs, offset=start * bs * world.size, weights=weights,
                        rank=world.rank, world_size=world.size)


def train(config: TrainConfig, data_dirs: Sequence[str | Path], out_dir: str | Path, steps: int | None = None,
          device: str = "auto", resume: bool = False, on_the_fly: bool = False, progress: bool = True,
          stop_at: int | None = None, renderer: Renderer | None = None,
          max_seconds: float | None = None, init: str | Path | None = None) -> dict[str, Any]:
    """Train a 3D U-Net; write ``last.pt``, ``best.pt``, ``metrics.csv`` and ``curves.png`` in ``out_dir``.

    ``steps`` (optimizer steps) overrides ``config.steps`` and fixes the learning-rate schedule; ``stop_at``
    ends this call early at that step (a later ``resume=True`` call continues exactly, as if never
    stopped). ``on_the_fly`` renders fresh volumes with ``config.on_the_fly`` profiles instead of reading
    ``data_dirs`` (which, if given, then serve as validation data). ``renderer`` replaces the simulator
    (tests). ``max_seconds`` ends this call early once that much wall-clock time has passed (the
    step then counts as the last: validation and checkpoints are written and a later ``resume=True``
    call continues). At the end, unless ``config.calibrate_threshold`` is false, the probability
    threshold maximizing mean validation Dice (grid 0.05..0.95) is stored in ``best.pt`` as
    ``threshold`` with the details in ``threshold_calibration``.

    Distributed training: started by ``torchrun`` with several processes (``WORLD_SIZE`` > 1), every
    process (rank) trains the network wrapped in DistributedDataParallel (NCCL on CUDA, each rank on
    its GPU ``cuda:LOCAL_RANK``; gloo on CPU) on its own share of the data (disjoint patches, or on the
    fly disjoint rendered volumes): the effective batch is ``batch_size`` x ranks. Rank 0 alone
    validates, calibrates the threshold and writes the run folder; ``last.pt`` records the number of
    processes and every rank's RNG state, and resumes with the same number only. A single process
    trains exactly as it always did.
    Returns the final metrics (step, loss, val_dice, best_val_dice, seconds, steps_per_s, threshold ...;
    on ranks other than 0 without validation figures).
    """
    world = world_from_env()
    kwargs = dict(steps=steps, resume=resume, on_the_fly=on_the_fly, progress=progress, stop_at=stop_at,
                  renderer=renderer, max_seconds=max_seconds, init=init)
    if not world.distributed:
        return _train(config, data_dirs, out_dir, device=device, **kwargs)
    import torch.distributed as dist

    dev = rank_device(device, world)
    own = not dist.is_initialized()
    if own:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=DIST_TIMEOUT,
                                **({"device_id": dev} if dev.type == "cuda" else {}))
    try:
        return _train(config, data_dirs, out_dir, device=str(dev), world=world, **kwargs)
    finally:
        if own and dist.is_initialized():
            dist.destroy_process_group()


def _train(config: TrainConfig, data_dirs: Sequence[str | Path], out_dir: str | Path, steps: int | None = None,
           device: str = "auto", resume: bool = False, on_the_fly: bool = False, progress: bool = True,
           stop_at: int | None = None, renderer: Renderer | None = None,
           max_seconds: float | None = None, init: str | Path | None = None, world: World = World()
           ) -> dict[str, Any]:
    """The run of one process (:func:`train`); ``world``: its rank in a distributed run, whose process
    group is initialized."""
    from tqdm import tqdm

    cfg = config
    progress = progress and world.main
    total = int(steps if steps is not None else cfg.steps)
    if total < 1:
        raise TrainError(f"--steps must be >= 1 (got {total})")
    end = min(total, int(stop_at)) if stop_at is not None else total
    out = Path(out_dir)
    last_path, best_path = out / "last.pt", out / "best.pt"
    metrics_path, plot_path = out / "metrics.csv", out / "curves.png"
    if resume and not last_path.exists():
        raise TrainError(f"{last_path}: nothing to resume (no last.pt in {out})")
    if not resume and (last_path.exists() or metrics_path.exists()):
        raise TrainError(f"{out}: already holds a training run; pass --resume to continue it or choose another --out")

    dev = resolve_device(device)
    amp = dev.type == "cuda"
    seed_everything(cfg.seed)

    # data (a resume is checked first, before minutes of loading)
    dirs = [Path(d) for d in data_dirs or []]
    info = load_dataset_samples(dirs) if dirs or not on_the_fly else None  # manifests only: errors name the folder
    data = data_identity(dirs)
    state = load_checkpoint(last_path, map_location="cpu") if resume else None
    if state is not None:
        _check_resume(state, last_path, cfg, data, on_the_fly, end, world.size)
    init_state, init_path = None, None
    if init is not None and state is None:  # fine-tuning: start from a trained model's weights
        from octasim.models import resolve_model
        init_path = resolve_model(init)
        init_state = load_checkpoint(init_path)
        if dict(init_state["model_config"]) != dataclasses.asdict(cfg.model):
            raise TrainError(f"{init_path}: its network ({init_state['model_config']}) differs from the config's "
                             f"model ({dataclasses.asdict(cfg.model)}); use a config with the same network "
                             "(or no --config: a fine-tuning then keeps the model's own)")
    # a fine-tuned model keeps its starting model's grid and trained voxel sizes (the pyramid's views)
    voxel_range = None
    if init_state is not None:
        voxel_range = trained_voxel_range(init_state)
    elif state is not None and "train_voxel_range_um" in state:
        voxel_range = tuple(float(v) for v in state["train_voxel_range_um"])
    n_train_samples = None
    train_weights = None
    if on_the_fly:
        voxel_size = float(cfg.on_the_fly.voxel_size_um)
        if info is not None:
            if info.scans:
                raise TrainError(f"{info.scans[0].dataset}: labelled real scans train without --on-the-fly "
                                 "(mix synthetic volumes in with synthetic_fraction)")
            n_val = cfg.n_val if cfg.n_val is not None else cfg.on_the_fly.n_val
            refs = split_samples(info.samples, config_from_dict({**cfg.to_dict(), "n_val": n_val}))[1] \
                if len(info.samples) > n_val else info.samples
            val_volumes = load_volumes(refs, progress) if world.main else []  # rank 0 validates
            if info.voxel_size_um is not None and info.voxel_size_um != voxel_size:
                raise TrainError(f"validation data voxel size {info.voxel_size_um} um differs from on_the_fly."
                                 f"voxel_size_um {voxel_size} um")
        else:
            val_volumes = render_validation_volumes(cfg, renderer) if world.main else []
        train_volumes = None
    else:
        start_state = init_state or state or {}
        voxel_size = (info.voxel_size_um or start_state.get("voxel_size_um") or DEFAULT_VOXEL_SIZE_UM)
        if cfg.synthetic_fraction > 0 and voxel_range is None:
            voxel_range = train_voxel_range(cfg, voxel_size, True)
        train_volumes, val_volumes = _training_data(info, cfg, model_grid(cfg, voxel_size, False, voxel_range),
                                                    progress)
        n_train_samples = len(train_volumes)
        if cfg.synthetic_fraction > 0:  # fine-tuning: a synthetic share keeps what the simulator taught
            synthetic = render_training_volumes(cfg, cfg.synthetic_volumes, renderer)
            f = float(cfg.synthetic_fraction)
            train_weights = [(1 - f) / len(train_volumes)] * len(train_volumes) + [f / len(synthetic)] * len(synthetic)
            train_volumes = train_volumes + synthetic
        if not world.main:
            val_volumes = []  # rank 0 validates

    grid = model_grid(cfg, voxel_size, on_the_fly, voxel_range)
    voxel_range = voxel_range or train_voxel_range(cfg, voxel_size, on_the_fly)

    # model and optimisation
    model = build_unet(dataclasses.asdict(cfg.model)).to(dev)
    # oneDNN's 3D convolutions (forward and backward) are about 1.4x faster in NDHWC on CPU
    channels_last = dev.type == "cpu"
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    init_from = None
    if init_state is not None:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v
                               for k, v in init_state["model_state"].items()})
        init_from = {"path": str(init_path), "step": int(init_state.get("step") or 0),
                     "seconds": float(init_state.get("seconds") or 0.0)}
    elif cfg.foreground_prior is not None and state is None:
        init_output_bias(model, cfg.foreground_prior)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optimizer.lr, betas=tuple(cfg.optimizer.betas),
                                 weight_decay=cfg.optimizer.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, cfg.decay_fraction))
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    loss_fn = make_loss(cfg)
    ema = None  # torch's AveragedModel: parameters and (batch-norm) buffers averaged after every step
    if cfg.ema_decay is not None:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(float(cfg.ema_decay)), use_buffers=True)
    eval_model = ema.module if ema is not None else model  # what validation and checkpoints hold

    start, best_dice, best_step, seconds0, rows = 0, -1.0, None, 0.0, []
    if state is not None:
        start = int(state["step"])
        model.load_state_dict(state.get("raw_model_state", state["model_state"]))
        if ema is not None:
            ema.load_state_dict(state["ema_state"])
        optimizer.load_state_dict(state["optimizer_state"])
        scheduler.load_state_dict(state["scheduler_state"])
        # the optimizer holds the learning rate the old schedule gave its next step; a resume that changes
        # --steps needs the rate of this run's schedule (the lambda above uses this call's total)
        for group, base_lr in zip(optimizer.param_groups, scheduler.base_lrs):
            group["lr"] = base_lr * lr_factor(start, total, cfg.decay_fraction)
        scaler.load_state_dict(state["scaler_state"])
        best_dice = float(state.get("best_val_dice", -1.0))
        best_step = state.get("best_step")
        seconds0 = float(state.get("seconds", 0.0))
        rows = read_metrics(metrics_path, start)
    forward = model
    if world.distributed:  # after loading: DDP broadcasts rank 0's weights and buffers to every rank
        from torch.nn.parallel import DistributedDataParallel
        if channels_last:  # the 1-channel input convolution's weight: strides of a size-1 axis differ, same memory
            import warnings
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        forward = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)

    # loader
    bs = cfg.batch_size
    gen = torch.Generator().manual_seed(cfg.seed)
    dataset = training_dataset(cfg, start, end, on_the_fly, renderer, train_volumes, train_weights, world)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=bs, shuffle=False, num_workers=cfg.num_workers, generator=gen,
        worker_init_fn=worker_init if cfg.num_workers else None, persistent_workers=False,
        pin_memory=amp, drop_last=False, prefetch_factor=2 if cfg.num_workers else None)
    batches = iter(loader)
    if state is not None:
        set_rng_state(state["rng_ranks"][world.rank] if world.distributed else state["rng"])
    elif world.distributed:
        torch.manual_seed(seed_for(cfg.seed, 0xDD9, world.rank))  # ranks draw their own dropout masks
    rank_rngs = None  # distributed: every rank's RNG state at the last validation

    def checkpoint(step: int, val_dice: float | None, loss: float | None, full: bool) -> dict[str, Any]:
        ckpt = {"model_state": _cpu(eval_model.state_dict()),
                "model_config": dataclasses.asdict(cfg.model), "voxel_size_um": float(voxel_size),
                "train_voxel_range_um": [float(v) for v in voxel_range],
                "patch_size": int(cfg.patch_size), "preprocessing": preprocessing(cfg),
                "threshold": float(cfg.threshold), "train_config": cfg.to_dict(), "step": int(step),
                "total_steps": total, "on_the_fly": bool(on_the_fly),
                "init_from": init_from if state is None else state.get("init_from"), "data": data,
                "metrics": {"val_dice": val_dice, "loss": loss, "best_val_dice": best_dice, "best_step": best_step},
                "best_val_dice": best_dice, "best_step": best_step, "seconds": seconds0 + elapsed(),
                "world_size": world.size}
        if full:
            ckpt.update(optimizer_state=optimizer.state_dict(), scheduler_state=scheduler.state_dict(),
                        scaler_state=scaler.state_dict(), rng=rng_state())
            if world.distributed:
                ckpt.update(rng_ranks=rank_rngs)
            if ema is not None:  # model_state holds the average; resuming needs the raw weights too
                ckpt.update(raw_model_state=_cpu(model.state_dict()), ema_state=_cpu(ema.state_dict()))
        return ckpt

    t0 = time.perf_counter()

    def elapsed() -> float:
        return time.perf_counter() - t0

    model.train()
    losses: list[float] = []
    last_loss = val_dice = None
    bar = tqdm(total=end, initial=start, unit="step", desc="train", dynamic_ncols=True,
               disable=None if progress else True, file=sys.stderr)
    try:
        for step in range(start, end):
            batch = next(batches)
            x = batch["image"].to(dev, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last_3d)
            y = batch["label"].to(dev, non_blocking=True)
            with torch.autocast(device_type=dev.type, enabled=amp):
                logits = forward(x)
            loss = loss_fn(logits.float(), y)
            time_up = None
            if world.distributed:  # all ranks agree on the logged loss and on when time is up
                loss_value, time_up = _agree(loss, max_seconds is not None and elapsed() >= max_seconds, world)
            else:
                loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise TrainError(f"{out}: the loss became {loss_value} at step {step + 1}; lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if ema is not None:
                ema.update_parameters(model)
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            losses.append(loss_value)
            done = step + 1
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr:.2e}")
            if time_up is None:
                time_up = max_seconds is not None and elapsed() >= max_seconds
            if time_up and done < end:
                end = done  # time is up: this step is the last of the call
            is_val = done % cfg.val_every == 0 or done == end
            if done % cfg.log_every == 0 or is_val:
                last_loss = float(np.mean(losses)) if losses else None
                losses.clear()
                if world.distributed and is_val:
                    rank_rngs = _all_rng_states(world)
            if world.main and (done % cfg.log_every == 0 or is_val):  # rank 0 validates and writes
                val_dice = validate(eval_model, val_volumes, cfg, dev, grid) if is_val else None
                rows.append({"step": done, "loss": last_loss, "lr": lr, "val_dice": val_dice,
                             "seconds": round(seconds0 + elapsed(), 3)})
                if is_val:
                    if val_dice > best_dice:
                        best_dice, best_step = val_dice, done
                        save_checkpoint(best_path, checkpoint(done, val_dice, last_loss, full=False))
                    save_checkpoint(last_path, checkpoint(done, val_dice, last_loss, full=True))
                    plot_curves(plot_path, rows)
                    if progress:
                        bar.write(f"step {done}/{total}: loss {last_loss:.4f}  val Dice {val_dice:.4f}  "
                                  f"(best {best_dice:.4f} at {best_step})")
                write_metrics(metrics_path, rows)
            if done >= end:
                break
    finally:
        bar.close()
        del batches
    run_s = elapsed()
    n_steps = end - start
    calibration = None
    if world.main and cfg.calibrate_threshold and best_path.exists():
        best_state = load_checkpoint(best_path, map_location="cpu")
        model.load_state_dict(best_state["model_state"])
        calibration = calibrate_threshold(model, val_volumes, cfg, dev, grid)
        calibration["applied"] = bool(cfg.apply_calibrated_threshold)
        best_state["threshold"] = float(calibration["chosen"] if cfg.apply_calibrated_threshold else cfg.threshold)
        best_state["threshold_calibration"] = calibration
        save_checkpoint(best_path, best_state)
        if progress:
            kept = "" if cfg.apply_calibrated_threshold else f"; kept {cfg.threshold} (apply_calibrated_threshold: false)"
            print(f"threshold calibrated on {calibration['n_volumes']} validation volume(s): "
                  f"{calibration['chosen']:.2f} (Dice {calibration['dice_at_chosen']:.4f}; "
                  f"at 0.5: {calibration['dice_at_0.5']:.4f}){kept}", file=sys.stderr)
    return {"step": end, "total_steps": total, "loss": last_loss, "val_dice": val_dice,
            "best_val_dice": best_dice, "best_step": best_step, "seconds": seconds0 + run_s,
            "steps_per_s": n_steps / run_s if run_s > 0 else math.nan,
            "patches_per_s": n_steps * bs * world.size / run_s if run_s > 0 else math.nan,
            "rank": world.rank, "world_size": world.size, "effective_batch_size": bs * world.size,
            "threshold": (calibration["chosen"] if calibration and cfg.apply_calibrated_threshold
                          else float(cfg.threshold)),
            "threshold_calibration": calibration,
            "n_train_volumes": n_train_samples, "n_val_volumes": len(val_volumes), "voxel_size_um": voxel_size,
            "out_dir": str(out), "last": str(last_path), "best": str(best_path)}
