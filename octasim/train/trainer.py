"""The training loop: MONAI 3D U-Net on augmented patches, validation Dice, exact resume, checkpoints."""
from __future__ import annotations

import csv
import dataclasses
import math
import random
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from octasim.atomic import atomic_path
from octasim.errors import OctasimError
from octasim.inference import DEFAULT_VOXEL_SIZE_UM, ModelGrid, predict_probability
from octasim.metrics import dice
from octasim.model import build_unet, load_checkpoint, resolve_device, save_checkpoint
from octasim.train.config import TrainConfig, config_from_dict
from octasim.train.data import (OnTheFlyDataset, PatchDataset, Renderer, load_dataset_samples, load_volumes,
                                render_validation_volumes, split_samples, worker_init)



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


def model_grid(cfg: TrainConfig, voxel_size_um: float, on_the_fly: bool) -> ModelGrid:
    """The inference grid of a run (training voxel size, window, input scaling, trained voxel sizes)."""
    top = train_voxel_range(cfg, voxel_size_um, on_the_fly)[1]
    return ModelGrid(float(voxel_size_um), (int(cfg.patch_size),) * 3,
                     tuple(preprocessing(cfg)["clip_percentiles"]), max(float(voxel_size_um), top))


def _probabilities(model: torch.nn.Module, volumes: Sequence[tuple[np.ndarray, np.ndarray]], cfg: TrainConfig,
                   device: torch.device, grid: ModelGrid):
    """Vessel probability of each held-out volume through the inference path of ``octasim segment``."""
    spacing = (grid.voxel_size_um,) * 3
    for image, label in volumes:
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
    """The dataset folders of a run as recorded in its checkpoints: resolved path and SHA-256 of the
    folder's ``dataset.json`` (a folder that was moved keeps its identity)."""
    import hashlib

    return [{"path": str(d.resolve()), "sha256": hashlib.sha256((d / "dataset.json").read_bytes()).hexdigest()}
            for d in dirs]


def _check_resume(state: dict[str, Any], last_path: Path, cfg: TrainConfig, data: list[dict[str, str]],
                  on_the_fly: bool, end: int) -> None:
    """Refuse to resume ``last.pt`` with another config, other data, another way of loading, or no steps left."""
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
    start = int(state["step"])
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
    call continues). At the end, unless ``config.calibrate_threshold`` is false, the probability
    threshold maximizing mean validation Dice (grid 0.05..0.95) is stored in ``best.pt`` as
    ``threshold`` with the details in ``threshold_calibration``.
    Returns the final metrics (step, loss, val_dice, best_val_dice, seconds, steps_per_s, threshold ...).
    """
    from tqdm import tqdm

    cfg = config
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
        _check_resume(state, last_path, cfg, data, on_the_fly, end)
    if on_the_fly:
        voxel_size = float(cfg.on_the_fly.voxel_size_um)
        if info is not None:
            n_val = cfg.n_val if cfg.n_val is not None else cfg.on_the_fly.n_val
            refs = split_samples(info.samples, config_from_dict({**cfg.to_dict(), "n_val": n_val}))[1] \
                if len(info.samples) > n_val else info.samples
            val_volumes = load_volumes(refs, progress)
            if info.voxel_size_um is not None and info.voxel_size_um != voxel_size:
                raise TrainError(f"validation data voxel size {info.voxel_size_um} um differs from on_the_fly."
                                 f"voxel_size_um {voxel_size} um")
        else:
            val_volumes = render_validation_volumes(cfg, renderer)
        train_volumes = None
        n_train_samples = None
    else:
        voxel_size = info.voxel_size_um if info.voxel_size_um is not None else DEFAULT_VOXEL_SIZE_UM
        train_refs, val_refs = split_samples(info.samples, cfg)
        train_volumes = load_volumes(train_refs, progress, cfg)
        val_volumes = load_volumes(val_refs, progress)
        n_train_samples = len(train_refs)

    grid = model_grid(cfg, voxel_size, on_the_fly)

    # model and optimisation
    model = build_unet(dataclasses.asdict(cfg.model)).to(dev)
    # oneDNN's 3D convolutions (forward and backward) are about 1.4x faster in NDHWC on CPU
    channels_last = dev.type == "cpu"
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    init_from = None
    if init is not None and not resume:  # fine-tuning: start from a trained model's weights
        from octasim.models import resolve_model
        init_path = resolve_model(init)
        init_state = load_checkpoint(init_path)
        if dict(init_state["model_config"]) != dataclasses.asdict(cfg.model):
            raise TrainError(f"{init_path}: its network ({init_state['model_config']}) differs from the config's "
                             f"model ({dataclasses.asdict(cfg.model)}); use a config with the same model")
        model.load_state_dict({k: v.float() if v.is_floating_point() else v
                               for k, v in init_state["model_state"].items()})
        init_from = {"path": str(init_path), "step": int(init_state.get("step") or 0),
                     "seconds": float(init_state.get("seconds") or 0.0)}
    elif cfg.foreground_prior is not None:
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

    # loader
    bs = cfg.batch_size
    gen = torch.Generator().manual_seed(cfg.seed)
    if on_the_fly:
        dataset = OnTheFlyDataset(cfg, renderer, start_batch=start)  # one batch per step
    else:
        dataset = PatchDataset(train_volumes, cfg, length=(end - start) * bs, offset=start * bs)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=bs, shuffle=False, num_workers=cfg.num_workers, generator=gen,
        worker_init_fn=worker_init if cfg.num_workers else None, persistent_workers=False,
        pin_memory=amp, drop_last=False, prefetch_factor=2 if cfg.num_workers else None)
    batches = iter(loader)
    if state is not None:
        set_rng_state(state["rng"])

    def checkpoint(step: int, val_dice: float | None, loss: float | None, full: bool) -> dict[str, Any]:
        ckpt = {"model_state": _cpu(eval_model.state_dict()),
                "model_config": dataclasses.asdict(cfg.model), "voxel_size_um": float(voxel_size),
                "train_voxel_range_um": [float(v) for v in train_voxel_range(cfg, voxel_size, on_the_fly)],
                "patch_size": int(cfg.patch_size), "preprocessing": preprocessing(cfg),
                "threshold": float(cfg.threshold), "train_config": cfg.to_dict(), "step": int(step),
                "total_steps": total, "on_the_fly": bool(on_the_fly),
                "init_from": init_from if state is None else state.get("init_from"), "data": data,
                "metrics": {"val_dice": val_dice, "loss": loss, "best_val_dice": best_dice, "best_step": best_step},
                "best_val_dice": best_dice, "best_step": best_step, "seconds": seconds0 + elapsed()}
        if full:
            ckpt.update(optimizer_state=optimizer.state_dict(), scheduler_state=scheduler.state_dict(),
                        scaler_state=scaler.state_dict(), rng=rng_state())
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
                logits = model(x)
            loss = loss_fn(logits.float(), y)
            if not torch.isfinite(loss):
                raise TrainError(f"{out}: the loss became {float(loss)} at step {step + 1}; lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if ema is not None:
                ema.update_parameters(model)
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            losses.append(float(loss.detach()))
            done = step + 1
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr:.2e}")
            if max_seconds is not None and done < end and elapsed() >= max_seconds:
                end = done  # time is up: this step is the last of the call
            is_val = done % cfg.val_every == 0 or done == end
            if done % cfg.log_every == 0 or is_val:
                last_loss = float(np.mean(losses)) if losses else None
                losses.clear()
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
    if cfg.calibrate_threshold and best_path.exists():
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
            "patches_per_s": n_steps * bs / run_s if run_s > 0 else math.nan,
            "threshold": (calibration["chosen"] if calibration and cfg.apply_calibrated_threshold
                          else float(cfg.threshold)),
            "threshold_calibration": calibration,
            "n_train_volumes": n_train_samples, "n_val_volumes": len(val_volumes), "voxel_size_um": voxel_size,
            "out_dir": str(out), "last": str(last_path), "best": str(best_path)}
