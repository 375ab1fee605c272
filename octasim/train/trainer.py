"""The training loop: MONAI 3D U-Net on augmented patches, validation Dice, exact resume, checkpoints.

:func:`train` runs in parts: data set-up (:func:`set_up_data`), network and optimisation
(:func:`octasim.train.network.build_network`, restored from ``last.pt`` on a resume), the step
(:func:`train_step`), validate-and-checkpoint (:func:`validate_and_checkpoint`) and the threshold
calibration (:func:`calibrate_best`). What a checkpoint holds is :class:`octasim.train.state.RunState`;
validation itself is :mod:`octasim.train.validation`, the torchrun plumbing :mod:`octasim.train.distributed`.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from octasim.errors import OctasimError
from octasim.inference import DEFAULT_VOXEL_SIZE_UM, ModelGrid, scan_view_sizes, trained_voxel_range
from octasim.model import load_checkpoint, resolve_device, save_checkpoint
from octasim.train.augment import seed_for
from octasim.train.config import TrainConfig, config_from_dict
from octasim.train.data import (OnTheFlyDataset, PatchDataset, Renderer, find_labelled_scans, hold_out_block,
                                load_dataset_samples, load_volumes, read_scan_pair, render_training_volumes,
                                render_validation_volumes, scan_views, split_samples, worker_init)
from octasim.train.distributed import World, agree, all_rng_states, process_group, rank_device, world_from_env
from octasim.train.network import Network, build_network, lr_factor, make_loss
from octasim.train.state import (RunFolder, RunState, plot_curves, read_metrics, seed_everything, set_rng_state,
                                 write_metrics)
from octasim.train.validation import (THRESHOLD_GRID, calibrate_threshold, model_grid, preprocessing,
                                      train_voxel_range, validate)

#: what callers use (names of the distributed, network and validation parts are defined in their modules)
__all__ = ["THRESHOLD_GRID", "Network", "RunState", "TrainError", "TrainingData", "World", "build_network",
           "calibrate_best", "calibrate_threshold", "data_identity", "lr_factor", "make_loss", "model_grid",
           "rank_device", "set_up_data", "train", "train_step", "training_dataset", "validate",
           "validate_and_checkpoint", "world_from_env"]


class TrainError(OctasimError):
    """A training run cannot start or resume; the message names the folder or file."""


# -- resuming -------------------------------------------------------------------------------------------

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


def _check_resume(state: RunState | dict[str, Any], last_path: Path, cfg: TrainConfig, data: list[dict[str, str]],
                  on_the_fly: bool, end: int, world_size: int = 1) -> None:
    """Refuse to resume ``last.pt`` (its state, or the checkpoint dict) with another config, other data,
    another way of loading, another number of processes, or no steps left."""
    if isinstance(state, dict):
        state = RunState.from_checkpoint(state)
    saved = _comparable(state.train_config or {})
    now = _comparable(cfg.to_dict())
    diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if diff:
        raise TrainError(f"{last_path}: the run was trained with a different config ({', '.join(diff)} "
                         "differ); resume with the same config")
    old_data = state.data
    if old_data is not None and [d["sha256"] for d in old_data] != [d["sha256"] for d in data]:
        def names(ds: list[dict[str, str]]) -> str:
            return ", ".join(d["path"] for d in ds) or "no --data folder"
        raise TrainError(f"{last_path}: the run was trained on {names(old_data)}, but this resume gives "
                         f"{names(data)}, whose dataset.json differs (another dataset, or one regenerated or "
                         "extended since); resume with the --data the run started with, or start a new run in "
                         "another --out folder")
    if state.on_the_fly != bool(on_the_fly):
        raise TrainError(f"{last_path}: the run was {'' if state.on_the_fly else 'not '}trained "
                         "on the fly; resume it the same way")
    saved_workers = (state.train_config or {}).get("num_workers", cfg.num_workers)
    if on_the_fly and max(1, saved_workers) != max(1, cfg.num_workers):  # each worker renders its own stream
        raise TrainError(f"{last_path}: the run rendered its volumes with {saved_workers} loader worker(s); "
                         f"resume it with --workers {saved_workers} to continue its data stream exactly")
    saved_world = state.world_size
    if saved_world != world_size:
        how = (f"{saved_world} processes in all (torchrun --nproc-per-node {saved_world} on one machine)"
               if saved_world > 1 else "one process (without torchrun)")
        raise TrainError(f"{last_path}: the run was trained by {saved_world} process(es), this resume runs "
                         f"{world_size}; the effective batch (batch_size x processes) and each process's data "
                         f"stream would change, so resume it with {how}")
    start = state.step
    if start >= end:
        raise TrainError(f"{last_path}: the run is already at step {start} (asked for {end}); "
                         "raise --steps to train longer")


# -- the run ----------------------------------------------------------------------------------------

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
    call continues). ``init`` (a bundled model's name or a checkpoint) starts from that model's weights
    (fine-tuning). At the end, unless ``config.calibrate_threshold`` is false, the probability
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
    with process_group(device, world) as dev:
        return _train(config, data_dirs, out_dir, device=str(dev), world=world, **kwargs)


# -- data set-up ----------------------------------------------------------------------------------------

#: with fewer labelled real scans than this, each scan gives a block to validation instead of whole scans
MIN_SCANS_FOR_WHOLE_HOLD_OUT = 4


def _training_data(info, cfg: TrainConfig, grid: ModelGrid, progress: bool) -> tuple[list, list]:
    """(training volumes, validation volumes) of --data folders.

    Generated samples: whole samples held out (:func:`split_samples`). Labelled real scans: validation
    is on real scans whenever there are any (real labels are what segmentation is judged by): whole
    scans held out when there are at least ``MIN_SCANS_FOR_WHOLE_HOLD_OUT``, else the last quarter of
    each scan's longer lateral axis (:func:`hold_out_block`): holding out one of two or three scans
    would lose a third to a half of the labels and of their variety. Real scans train at every view of
    the model's image pyramid (:func:`scan_views`); validation predicts them at their own voxel size, as
    ``octasim segment`` does.
    """
    scans = info.scans
    generated = [s for s in info.samples if not s.scan]
    train_refs, val_refs = split_samples(generated, cfg) if generated and not scans else (generated, [])
    train_volumes = load_volumes(train_refs, progress, cfg)
    val_volumes = load_volumes(val_refs, progress)
    if not scans:
        return train_volumes, val_volumes
    if len(scans) < MIN_SCANS_FOR_WHOLE_HOLD_OUT:
        val_volumes = []
        for ref in scans:
            image, label, spacing = read_scan_pair(ref)
            (train_img, train_lab), (val_img, val_lab) = hold_out_block(image, label)
            views = scan_view_sizes(grid, image.shape, spacing)  # as segment views the whole scan
            train_volumes += scan_views(train_img, train_lab, spacing, views, grid)
            val_volumes.append((val_img, val_lab, spacing))
        return train_volumes, val_volumes
    fit, held = split_samples(scans, cfg)
    for ref in fit:
        image, label, spacing = read_scan_pair(ref)
        train_volumes += scan_views(image, label, spacing, scan_view_sizes(grid, image.shape, spacing), grid)
    return train_volumes, [read_scan_pair(ref) for ref in held]


@dataclasses.dataclass
class TrainingData:
    """What a run trains and validates on, and the grid it trains at.

    ``train_volumes``: (image, label) pairs held in memory, None on the fly; ``train_weights``: their
    draw probabilities (None: equal); ``val_volumes``: what rank 0 validates on (other ranks: none);
    ``voxel_range``: finest and coarsest voxel size (um) the training volumes are rendered at;
    ``n_train_volumes``: volumes of the --data folders (before a synthetic share is added).
    """

    val_volumes: list
    voxel_size_um: float
    voxel_range: tuple[float, float]
    grid: ModelGrid
    train_volumes: list | None = None
    train_weights: list[float] | None = None
    n_train_volumes: int | None = None


def set_up_data(cfg: TrainConfig, info, on_the_fly: bool, world: World = World(), renderer: Renderer | None = None,
                progress: bool = False, recorded_voxel_size_um: float | None = None,
                voxel_range: tuple[float, float] | None = None) -> TrainingData:
    """The run's volumes (``info``: the --data folders' :func:`load_dataset_samples`, or None on the fly
    without validation data). ``recorded_voxel_size_um``: the training grid recorded by the model the
    run starts from or resumes, used when the data do not give one; ``voxel_range``: the voxel sizes
    that model was trained at (a fine-tuned model keeps them, and so its pyramid's views)."""
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
        train_volumes = train_weights = n_train = None
    else:
        voxel_size = info.voxel_size_um or recorded_voxel_size_um or DEFAULT_VOXEL_SIZE_UM
        if cfg.synthetic_fraction > 0 and voxel_range is None:
            voxel_range = train_voxel_range(cfg, voxel_size, True)
        train_volumes, val_volumes = _training_data(info, cfg, model_grid(cfg, voxel_size, False, voxel_range),
                                                    progress)
        n_train, train_weights = len(train_volumes), None
        if cfg.synthetic_fraction > 0:  # fine-tuning: a synthetic share keeps what the simulator taught
            synthetic = render_training_volumes(cfg, cfg.synthetic_volumes, renderer)
            f = float(cfg.synthetic_fraction)
            train_weights = [(1 - f) / n_train] * n_train + [f / len(synthetic)] * len(synthetic)
            train_volumes = train_volumes + synthetic
        if not world.main:
            val_volumes = []  # rank 0 validates
    return TrainingData(val_volumes, voxel_size, voxel_range or train_voxel_range(cfg, voxel_size, on_the_fly),
                        model_grid(cfg, voxel_size, on_the_fly, voxel_range), train_volumes, train_weights, n_train)


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


# -- the step -------------------------------------------------------------------------------------------

def train_step(net: Network, batch: dict[str, torch.Tensor], world: World, time_up: Callable[[], bool],
               step: int, out: str | Path = "") -> tuple[float, float, bool | None]:
    """Optimizer step number ``step`` (1-based) on a batch: (loss, learning rate of the step, whether time
    is up). In a distributed run the ranks agree on the loss (their mean) and on the time before the
    backward pass; a single process returns None for the time, which its caller asks after the step.
    A loss that is not finite raises TrainError naming the run folder ``out`` and the step."""
    x = batch["image"].to(net.device, non_blocking=True)
    if net.channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    y = batch["label"].to(net.device, non_blocking=True)
    with torch.autocast(device_type=net.device.type, enabled=net.amp):
        logits = net.forward(x)
    loss = net.loss_fn(logits.float(), y)
    up = None
    if world.distributed:  # all ranks agree on the logged loss and on when time is up
        loss_value, up = agree(loss, time_up(), world)
    else:
        loss_value = float(loss.detach())
    if not math.isfinite(loss_value):
        raise TrainError(f"{out}: the loss became {loss_value} at step {step}; lower the learning rate")
    net.optimizer.zero_grad(set_to_none=True)
    net.scaler.scale(loss).backward()
    net.scaler.step(net.optimizer)
    net.scaler.update()
    if net.ema is not None:
        net.ema.update_parameters(net.model)
    lr = net.optimizer.param_groups[0]["lr"]
    net.scheduler.step()
    return loss_value, lr, up


# -- validation and checkpoints ----------------------------------------------------------------------------

def validate_and_checkpoint(run: RunState, net: Network, cfg: TrainConfig, data: TrainingData, folder: RunFolder,
                            rows: list[dict[str, Any]], lr: float, is_val: bool, seconds: Callable[[], float],
                            rank_rngs: list[dict[str, Any]] | None = None) -> None:
    """Rank 0's record of step ``run.step``: a metrics row (``run.loss``, ``lr``); at a validation step
    also the validation Dice, ``best.pt`` when it is the best so far, ``last.pt`` (for resuming) and
    ``curves.png``. Updates ``run`` (val_dice, best_val_dice, best_step, seconds); ``seconds()``: the
    run's training time until now (all calls)."""
    run.val_dice = validate(net.eval_model, data.val_volumes, cfg, net.device, data.grid) if is_val else None
    rows.append({"step": run.step, "loss": run.loss, "lr": lr, "val_dice": run.val_dice,
                 "seconds": round(seconds(), 3)})
    if is_val:
        if run.val_dice > run.best_val_dice:
            run.best_val_dice, run.best_step = run.val_dice, run.step
            run.seconds = seconds()
            save_checkpoint(folder.best, net.snapshot(run, full=False).to_checkpoint(full=False))
        run.seconds = seconds()
        save_checkpoint(folder.last, net.snapshot(run, full=True, rank_rngs=rank_rngs).to_checkpoint())
        plot_curves(folder.curves, rows)
    write_metrics(folder.metrics, rows)


# -- calibration ------------------------------------------------------------------------------------------

def calibrate_best(folder: RunFolder, model: torch.nn.Module, cfg: TrainConfig, data: TrainingData,
                   device: torch.device, progress: bool = False) -> dict[str, Any]:
    """Calibrate the threshold of ``best.pt`` on the validation volumes (:func:`calibrate_threshold`, with
    ``model`` loaded with its weights) and store it there: ``threshold`` (the calibrated one, unless
    ``apply_calibrated_threshold`` is false) and ``threshold_calibration``. Returns the calibration."""
    best = RunState.from_checkpoint(load_checkpoint(folder.best, map_location="cpu"))
    model.load_state_dict(best.model_state)
    calibration = calibrate_threshold(model, data.val_volumes, cfg, device, data.grid)
    calibration["applied"] = bool(cfg.apply_calibrated_threshold)
    best.threshold = float(calibration["chosen"] if cfg.apply_calibrated_threshold else cfg.threshold)
    best.threshold_calibration = calibration
    save_checkpoint(folder.best, best.to_checkpoint(full=False))
    if progress:
        kept = "" if cfg.apply_calibrated_threshold else f"; kept {cfg.threshold} (apply_calibrated_threshold: false)"
        print(f"threshold calibrated on {calibration['n_volumes']} validation volume(s): "
              f"{calibration['chosen']:.2f} (Dice {calibration['dice_at_chosen']:.4f}; "
              f"at 0.5: {calibration['dice_at_0.5']:.4f}){kept}", file=sys.stderr)
    return calibration


# -- the run of one process -------------------------------------------------------------------------------

def _start_from(init: str | Path, cfg: TrainConfig) -> tuple[Path, dict[str, Any]]:
    """(path, checkpoint) of the model a fine-tuning starts from; its network must be the config's."""
    from octasim.models import resolve_model

    path = resolve_model(init)
    ckpt = load_checkpoint(path)
    if dict(ckpt["model_config"]) != dataclasses.asdict(cfg.model):
        raise TrainError(f"{path}: its network ({ckpt['model_config']}) differs from the config's "
                         f"model ({dataclasses.asdict(cfg.model)}); use a config with the same network "
                         "(or no --config: a fine-tuning then keeps the model's own)")
    coarse = ckpt.get("coarse_views")
    if coarse is not None:
        name = (coarse.get("model_card") or {}).get("name", "a second network")
        print(f"note: {path.name} segments its coarser views with {name}; the fine-tuning starts from its "
              f"finest view's network, and the fine-tuned model segments every view with it (to fine-tune a "
              f"network made for every view: --init {name})")
    return path, ckpt


def _run_state(cfg: TrainConfig, data: TrainingData, total: int, on_the_fly: bool, identity: list[dict[str, str]],
               world: World, init_from: dict[str, Any] | None, saved: RunState | None) -> RunState:
    """What this call's checkpoints record (their weights come from :meth:`Network.snapshot`): the run as
    this call describes it (config, schedule, data, grid, processes), continuing the progress of
    ``saved`` (``last.pt``) and the model it started from when it resumes."""
    run = RunState(model_state={}, model_config=dataclasses.asdict(cfg.model), voxel_size_um=float(data.voxel_size_um),
                   train_voxel_range_um=tuple(float(v) for v in data.voxel_range), patch_size=int(cfg.patch_size),
                   preprocessing=preprocessing(cfg), threshold=float(cfg.threshold), train_config=cfg.to_dict(),
                   total_steps=total, on_the_fly=bool(on_the_fly), init_from=init_from, data=identity,
                   world_size=world.size)
    if saved is not None:
        run.step, run.init_from, run.seconds = saved.step, saved.init_from, saved.seconds
        run.best_val_dice, run.best_step = saved.best_val_dice, saved.best_step
    return run


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
    if stop_at is not None and stop_at < 1:
        raise TrainError(f"--stop-at must be >= 1 (got {stop_at})")
    end = min(total, int(stop_at)) if stop_at is not None else total
    folder = RunFolder(Path(out_dir))
    if resume and not folder.last.exists():
        raise TrainError(f"{folder.last}: nothing to resume (no last.pt in {folder.path})")
    if not resume and (folder.last.exists() or folder.metrics.exists()):
        raise TrainError(f"{folder.path}: already holds a training run; pass --resume to continue it or choose "
                         "another --out")

    dev = resolve_device(device)
    seed_everything(cfg.seed)

    # what the run starts from: last.pt (checked first, before minutes of loading), or a trained model
    dirs = [Path(d) for d in data_dirs or []]
    info = load_dataset_samples(dirs) if dirs or not on_the_fly else None  # manifests only: errors name the folder
    identity = data_identity(dirs)
    saved = RunState.from_checkpoint(load_checkpoint(folder.last, map_location="cpu")) if resume else None
    if saved is not None:
        _check_resume(saved, folder.last, cfg, identity, on_the_fly, end, world.size)
    init_path = init_ckpt = None
    if init is not None and saved is None:  # fine-tuning: start from a trained model's weights
        init_path, init_ckpt = _start_from(init, cfg)
    # a fine-tuned model keeps its starting model's grid and trained voxel sizes (the pyramid's views)
    if init_ckpt is not None:
        recorded_voxel_size, voxel_range = init_ckpt.get("voxel_size_um"), trained_voxel_range(init_ckpt)
    elif saved is not None:
        recorded_voxel_size, voxel_range = saved.voxel_size_um, saved.train_voxel_range_um
    else:
        recorded_voxel_size = voxel_range = None
    data = set_up_data(cfg, info, on_the_fly, world, renderer, progress, recorded_voxel_size, voxel_range)

    net = build_network(cfg, dev, total, init_ckpt["model_state"] if init_ckpt is not None else None,
                        fresh=saved is None)
    init_from = None if init_ckpt is None else {"path": str(init_path), "step": int(init_ckpt.get("step") or 0),
                                                "seconds": float(init_ckpt.get("seconds") or 0.0)}
    run = _run_state(cfg, data, total, on_the_fly, identity, world, init_from, saved)
    rows: list[dict[str, Any]] = []
    if saved is not None:
        net.restore(saved, total, cfg.decay_fraction)
        rows = read_metrics(folder.metrics, saved.step)
    net.distribute(world)
    start, seconds0 = run.step, run.seconds

    # loader
    bs = cfg.batch_size
    gen = torch.Generator().manual_seed(cfg.seed)
    dataset = training_dataset(cfg, start, end, on_the_fly, renderer, data.train_volumes, data.train_weights, world)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=bs, shuffle=False, num_workers=cfg.num_workers, generator=gen,
        worker_init_fn=worker_init if cfg.num_workers else None, persistent_workers=False,
        pin_memory=net.amp, drop_last=False, prefetch_factor=2 if cfg.num_workers else None)
    batches = iter(loader)
    if saved is not None:
        set_rng_state(saved.rng_ranks[world.rank] if world.distributed else saved.rng)
    elif world.distributed:
        torch.manual_seed(seed_for(cfg.seed, 0xDD9, world.rank))  # ranks draw their own dropout masks
    rank_rngs = None  # distributed: every rank's RNG state at the last validation

    t0 = time.perf_counter()

    def elapsed() -> float:
        return time.perf_counter() - t0

    def time_is_up() -> bool:
        return max_seconds is not None and elapsed() >= max_seconds

    net.model.train()
    losses: list[float] = []
    bar = tqdm(total=end, initial=start, unit="step", desc="train", dynamic_ncols=True,
               disable=None if progress else True, file=sys.stderr)
    try:
        for step in range(start, end):
            loss, lr, time_up = train_step(net, next(batches), world, time_is_up, step + 1, folder.path)
            losses.append(loss)
            run.step = done = step + 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
            if time_up is None:
                time_up = time_is_up()
            if time_up and done < end:
                end = done  # time is up: this step is the last of the call
            is_val = done % cfg.val_every == 0 or done == end
            if done % cfg.log_every == 0 or is_val:
                run.loss = float(np.mean(losses)) if losses else None
                losses.clear()
                if world.distributed and is_val:
                    rank_rngs = all_rng_states(world)
                if world.main:  # rank 0 validates and writes
                    validate_and_checkpoint(run, net, cfg, data, folder, rows, lr, is_val,
                                            lambda: seconds0 + elapsed(), rank_rngs)
                    if is_val and progress:
                        bar.write(f"step {done}/{total}: loss {run.loss:.4f}  val Dice {run.val_dice:.4f}  "
                                  f"(best {run.best_val_dice:.4f} at {run.best_step})")
            if done >= end:
                break
    finally:
        bar.close()
        del batches
    run_s = elapsed()
    n_steps = end - start
    calibration = None
    if world.main and cfg.calibrate_threshold and folder.best.exists():
        calibration = calibrate_best(folder, net.model, cfg, data, dev, progress)
    return {"step": end, "total_steps": total, "loss": run.loss, "val_dice": run.val_dice,
            "best_val_dice": run.best_val_dice, "best_step": run.best_step, "seconds": seconds0 + run_s,
            "steps_per_s": n_steps / run_s if run_s > 0 else math.nan,
            "patches_per_s": n_steps * bs * world.size / run_s if run_s > 0 else math.nan,
            "rank": world.rank, "world_size": world.size, "effective_batch_size": bs * world.size,
            "threshold": (calibration["chosen"] if calibration and cfg.apply_calibrated_threshold
                          else float(cfg.threshold)),
            "threshold_calibration": calibration,
            "n_train_volumes": data.n_train_volumes, "n_val_volumes": len(data.val_volumes),
            "voxel_size_um": data.voxel_size_um, "out_dir": str(folder.path), "last": str(folder.last),
            "best": str(folder.best)}
