"""What a training run folder holds: checkpoints (:class:`RunState`), ``metrics.csv`` and ``curves.png``.

A checkpoint is a plain dict of tensors and plain data (it loads with ``weights_only=True``). Its keys
are named in one place, :class:`RunState`: :meth:`RunState.to_checkpoint` writes them and
:meth:`RunState.from_checkpoint` reads them back, for every checkpoint octasim has written
(older ones lack some keys: they read as None or the defaults below).

- ``best.pt``: what inference needs (weights, network, training grid, input scaling, threshold) and
  the run's description and progress; after training also the threshold calibration.
- ``last.pt``: the same plus what an exact resume needs (``RESUME_KEYS``: optimizer, schedule, AMP
  scaler, random states of every process, and with a weight average the raw weights and the average).
"""
from __future__ import annotations

import csv
import dataclasses
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from octasim.atomic import atomic_path

#: keys only ``last.pt`` holds: an exact resume needs them besides the weights
RESUME_KEYS = ("optimizer_state", "scheduler_state", "scaler_state", "rng", "rng_ranks", "raw_model_state",
               "ema_state")
#: keys ``octasim.model.save_checkpoint`` adds to every checkpoint (and checks on loading)
FILE_KEYS = ("format", "octasim_version")
#: the ``metrics`` entry of a checkpoint: the figures at its step
METRIC_KEYS = ("val_dice", "loss", "best_val_dice", "best_step")


@dataclass
class RunState:
    """Everything a checkpoint holds, by name. Tensors stay tensors (on the CPU); the rest is plain data."""

    # -- the network and how inference uses it (``octasim segment`` reads these)
    model_state: dict[str, Any]              #: weights validation and inference use (the average with EMA)
    model_config: dict[str, Any]             #: ``build_unet`` arguments
    voxel_size_um: float | None = None       #: nominal training grid, um
    train_voxel_range_um: tuple[float, float] | None = None  #: finest and coarsest voxel size trained at, um
    patch_size: int | None = None            #: the network's window, voxels
    preprocessing: dict[str, Any] | None = None  #: ``{"clip_percentiles": [low, high]}``
    threshold: float | None = None           #: probability threshold (calibrated in best.pt)
    # -- the run
    train_config: dict[str, Any] | None = None  #: ``TrainConfig.to_dict()``
    step: int = 0                            #: optimizer steps done
    total_steps: int | None = None           #: steps of the whole run (its learning-rate schedule)
    on_the_fly: bool = False
    init_from: dict[str, Any] | None = None  #: the model a fine-tuning started from: path, step, seconds
    data: list[dict[str, str]] | None = None  #: ``data_identity`` of the --data folders
    val_dice: float | None = None            #: validation Dice at ``step``
    loss: float | None = None                #: mean training loss of the last logged steps
    best_val_dice: float = -1.0
    best_step: int | None = None
    seconds: float = 0.0                     #: training time of all calls together
    world_size: int = 1                      #: processes (torchrun) that trained the run
    # -- exact resume (``last.pt`` only; RESUME_KEYS)
    optimizer_state: dict[str, Any] | None = None
    scheduler_state: dict[str, Any] | None = None
    scaler_state: dict[str, Any] | None = None
    rng: dict[str, Any] | None = None        #: random states of this process (rank 0)
    rng_ranks: list[dict[str, Any]] | None = None  #: every rank's random states (distributed runs)
    raw_model_state: dict[str, Any] | None = None  #: with a weight average: the trained weights
    ema_state: dict[str, Any] | None = None  #: with a weight average: torch's AveragedModel
    # -- after training (``best.pt``)
    threshold_calibration: dict[str, Any] | None = None
    #: any other key (e.g. the model card of an exported model), kept as it is
    extra: dict[str, Any] = field(default_factory=dict)

    def to_checkpoint(self, full: bool = True) -> dict[str, Any]:
        """The checkpoint dict (without ``FILE_KEYS``, which ``save_checkpoint`` adds); ``full=False``
        leaves out what only a resume needs (``RESUME_KEYS``). Resume keys that are None are left out."""
        ckpt = {"model_state": self.model_state, "model_config": self.model_config,
                "voxel_size_um": self.voxel_size_um,
                "train_voxel_range_um": None if self.train_voxel_range_um is None else list(self.train_voxel_range_um),
                "patch_size": self.patch_size, "preprocessing": self.preprocessing, "threshold": self.threshold,
                "train_config": self.train_config, "step": self.step, "total_steps": self.total_steps,
                "on_the_fly": self.on_the_fly, "init_from": self.init_from, "data": self.data,
                "metrics": {k: getattr(self, k) for k in METRIC_KEYS},
                "best_val_dice": self.best_val_dice, "best_step": self.best_step, "seconds": self.seconds,
                "world_size": self.world_size}
        if full:
            ckpt.update({k: getattr(self, k) for k in RESUME_KEYS if getattr(self, k) is not None})
        if self.threshold_calibration is not None:
            ckpt["threshold_calibration"] = self.threshold_calibration
        ckpt.update(self.extra)
        return ckpt

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> "RunState":
        """The state of a loaded checkpoint (``octasim.model.load_checkpoint``); keys it lacks take the
        defaults, keys RunState does not name go to ``extra``."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra", *METRIC_KEYS[:2]}
        state = cls(**{k: v for k, v in ckpt.items() if k in names},
                    extra={k: v for k, v in ckpt.items() if k not in names and k not in (*FILE_KEYS, "metrics")})
        metrics = ckpt.get("metrics") or {}
        state.val_dice, state.loss = metrics.get("val_dice"), metrics.get("loss")
        if state.train_voxel_range_um is not None:
            state.train_voxel_range_um = tuple(float(v) for v in state.train_voxel_range_um)
        if state.voxel_size_um is not None:
            state.voxel_size_um = float(state.voxel_size_um)
        state.step, state.world_size = int(state.step or 0), int(state.world_size)
        state.on_the_fly = bool(state.on_the_fly)
        state.best_val_dice = -1.0 if state.best_val_dice is None else float(state.best_val_dice)
        state.seconds = float(state.seconds or 0.0)
        return state


# -- random states as plain data (checkpoints load with weights_only=True) -----------------------------

def rng_state() -> dict[str, Any]:
    """This process's random states: torch (and CUDA), Python's ``random``, NumPy's global generator."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` recorded."""
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


# -- the run folder ------------------------------------------------------------------------------------

METRIC_COLUMNS = ("step", "loss", "lr", "val_dice", "seconds")


class RunFolder:
    """The files of a run folder (``--out``): ``last.pt``, ``best.pt``, ``metrics.csv``, ``curves.png``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.last, self.best = self.path / "last.pt", self.path / "best.pt"
        self.metrics, self.curves = self.path / "metrics.csv", self.path / "curves.png"


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
