"""Training configuration: a dataclass tree loaded from YAML (``data/configs/*.yaml``).

Built by :func:`octasim.typed.from_mapping` from the dataclasses' type hints: unknown keys and values
of the wrong type are errors that name the file and the key, so a typo never silently falls back to
a default; :meth:`TrainConfig.validate` then checks ranges and consistency.
Lengths are in voxels of the training grid (the dataset's voxel size, um, is recorded in checkpoints).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from octasim.errors import OctasimError
from octasim.paths import DATA_DIR
from octasim.typed import convert, from_mapping

#: Names accepted by ``--config`` besides a YAML path.
BUILTIN_CONFIGS = ("default", "paper", "mixed", "multiscale", "multiscale-v2", "multiscale-v3", "multiscale-v4", "multiscale-surface", "finetune")
LOSSES = ("dice", "cldice", "dice_cldice", "dice_bce")


class ConfigError(OctasimError):
    """A training config cannot be used; the message names the file and the key."""


@dataclass
class ModelConfig:
    """MONAI 3D UNet hyper-parameters (see ``octasim.model.build_unet``)."""

    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    strides: list[int] = field(default_factory=lambda: [2, 2, 2])
    num_res_units: int = 1
    act: str = "PRELU"
    norm: str = "INSTANCE"
    dropout: float = 0.0
    input_scale: str = "scan"  #: "scan" or "window" (each window scaled by itself: octasim.model.scale_window)


@dataclass
class LossConfig:
    """``name``: dice | cldice | dice_cldice | dice_bce (MONAI DiceLoss / SoftclDiceLoss /
    SoftDiceclDiceLoss / DiceCELoss, all on logits with a sigmoid)."""

    name: str = "dice_bce"
    batch_dice: bool = True    #: Dice over the whole batch instead of per patch (dice, dice_bce)
    cldice_iters: int = 3      #: soft-skeleton iterations
    cldice_alpha: float = 0.5  #: weight of clDice in dice_cldice


@dataclass
class OptimizerConfig:
    """Adam."""

    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0


@dataclass
class AugmentConfig:
    """Probabilities and ranges of the reference augmentation (depth axis is never flipped or rotated)."""

    rotate_prob: float = 0.5
    rotate_range_deg: float = 90.0       #: rotation about the depth axis, uniform in +-range
    zoom_prob: float = 0.5
    zoom_range: list[float] = field(default_factory=lambda: [1.0, 1.2])
    flip_prob: float = 0.5               #: per lateral axis (i and j)
    random_final_crop: bool = False      #: crop patch_size at random (else centre) from the augmented crop
    smooth_prob: float = 0.5
    smooth_sigma: list[float] = field(default_factory=lambda: [0.0, 0.5])  #: voxels
    noise_prob: float = 0.5
    noise_std: float = 0.01
    histogram_shift_prob: float = 0.5
    histogram_control_points: list[int] = field(default_factory=lambda: [5, 10])
    depth_slab_prob: float = 0.0         #: keep a random depth slab, 0 above and below (shallow stacks)
    depth_slab_min_voxels: int = 4       #: thinnest slab kept, voxels
    depth_slab_log_thickness: bool = False  #: draw the slab thickness log-uniformly (thin slabs more often)
    gain_prob: float = 0.0               #: multiply the patch by a random gain (brightness of the scan's vessels
                                         #: relative to its percentile scale varies between scans)
    gain_range: list[float] = field(default_factory=lambda: [0.25, 1.25])  #: gain drawn uniformly, -
    bias_field_prob: float = 0.0         #: multiply the patch by a smooth random gain field (vignetting, depth)
    bias_field_coeff: float = 0.3        #: Legendre coefficients of the field's log, uniform in +-this, -


@dataclass
class ProfileWeight:
    """A simulation profile (shipped name or YAML path), its draw weight, and parameter overrides."""

    SHORTHAND: ClassVar[str] = "name"  #: a profile may be given by its name alone

    name: str = "octa"
    weight: float = 1.0
    overrides: dict[str, Any] = field(default_factory=dict)  #: profile parameters replaced (value or [lo, hi])


#: SynthConfig fields the on-the-fly renderer sets itself (not ``synth_options``)
_SYNTH_FIXED = frozenset({"profile", "profile_name", "seed", "shape"})


def _synth_config_class() -> type:
    """The simulator's SynthConfig (imported when a config is checked, not when this module loads)."""
    from octasim.synth import SynthConfig

    return SynthConfig


def synth_option_keys() -> set[str]:
    """Keys ``on_the_fly.synth_options`` may hold: the fields of SynthConfig but those the renderer sets."""
    return {f.name for f in dataclasses.fields(_synth_config_class())} - _SYNTH_FIXED


@dataclass
class OnTheFlyConfig:
    """On-the-fly synthesis (``--on-the-fly``): fresh volumes rendered in the loader's workers."""

    profiles: list[ProfileWeight] = field(default_factory=lambda: [ProfileWeight("octa", 1.0)])
    shape: list[int] = field(default_factory=lambda: [128, 128, 128])  #: voxels
    voxel_size_um: float = 2.0
    crops_per_volume: int = 4     #: patches drawn from each rendered volume
    n_val: int = 2                #: validation volumes rendered once (when no dataset dir is given)
    #: extra SynthConfig fields (keys checked against them; values by SynthConfig itself)
    synth_options: dict[str, Any] = field(default_factory=dict, metadata={"keys": synth_option_keys})


@dataclass
class TrainConfig:
    """Everything a training run needs besides the data; saved into every checkpoint.

    The defaults are those of ``data/configs/default.yaml`` (a test keeps the two equal), so a partial
    user YAML falls back to the shipped default recipe.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    on_the_fly: OnTheFlyConfig = field(default_factory=OnTheFlyConfig)
    steps: int = 2000                #: optimizer steps in the whole run
    batch_size: int = 2
    patch_size: int = 64             #: voxels per side of a training patch (and the inference window)
    crop_size: int | None = None     #: first random crop before rotation/zoom; None -> ceil(patch * 91 / 64)
    decay_fraction: float = 0.2      #: lr constant, then linear to 0 over this last fraction of the steps
    val_every: int = 200             #: steps between validations (and last.pt checkpoints)
    val_fraction: float = 0.1        #: share of samples held out for validation (whole volumes)
    n_val: int | None = 2            #: number of held-out volumes; overrides val_fraction when set
    val_overlap: float = 0.25        #: sliding-window overlap during validation
    log_every: int = 10              #: steps between metrics.csv rows
    seed: int = 0
    num_workers: int = 1             #: DataLoader worker processes (0: load in the main process)
    threshold: float = 0.5           #: probability threshold for validation (and inference unless calibrated)
    calibrate_threshold: bool = True  #: after training, store in best.pt the threshold (grid 0.05..0.95)
                                      #: maximizing mean Dice on the held-out validation volumes
    apply_calibrated_threshold: bool = True  #: false: record and print the calibration, keep ``threshold``
                                             #: (for recipes meant for real scans, whose labels differ)
    foreground_prior: float | None = 0.03  #: initial output probability (last conv bias = logit); None: 0.5
    input_clip_percentiles: list[float] | None = None  #: [low, high] %: every training and validation
                                     #: volume is clipped to these percentiles and scaled to [0, 1], as
                                     #: real scans are at inference (recorded in the checkpoint); None:
                                     #: volumes as rendered, inference clips at 0.5 / 99.5 %
    synthetic_fraction: float = 0.0  #: share of training patches drawn from synthetic volumes rendered at
                                     #: the start (``synthetic_volumes`` of them, on_the_fly profiles) when
                                     #: training on --data: keeps a fine-tuning on a few real scans from
                                     #: forgetting what the synthetic data taught
    synthetic_volumes: int = 8       #: number of those synthetic volumes
    ema_decay: float | None = None   #: exponential moving average of the weights (e.g. 0.99, a horizon of
                                     #: ~1 / (1 - decay) steps): validation, best.pt and inference use the
                                     #: average, which smooths the noise of small-batch steps; None: off

    @property
    def crop(self) -> int:
        """Size (voxels) of the first random crop, large enough that a +-90 deg rotation keeps the patch filled."""
        return int(self.crop_size) if self.crop_size else int(math.ceil(self.patch_size * 91 / 64))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self, source: str = "config") -> "TrainConfig":
        def bad(key: str, msg: str):
            raise ConfigError(f"{source}: {key}: {msg}")
        if self.loss.name not in LOSSES:
            bad("loss.name", f"{self.loss.name!r} is not one of {', '.join(LOSSES)}")
        from octasim.model import INPUT_SCALES
        if self.model.input_scale not in INPUT_SCALES:
            bad("model.input_scale", f"{self.model.input_scale!r} is not one of {', '.join(INPUT_SCALES)}")
        if len(self.model.strides) != len(self.model.channels) - 1:
            bad("model.strides", f"needs {len(self.model.channels) - 1} values (one fewer than channels)")
        for key in ("steps", "batch_size", "patch_size", "val_every", "log_every"):
            if int(getattr(self, key)) < 1:
                bad(key, "must be >= 1")
        down = math.prod(self.model.strides)
        if self.patch_size % down:
            bad("patch_size", f"{self.patch_size} is not divisible by the network's total stride {down}")
        if self.crop < self.patch_size:
            bad("crop_size", f"{self.crop} is smaller than patch_size {self.patch_size}")
        if not 0.0 <= self.decay_fraction <= 1.0:
            bad("decay_fraction", "must be in [0, 1]")
        if not 0.0 < self.val_fraction < 1.0:
            bad("val_fraction", "must be in (0, 1)")
        if self.n_val is not None and self.n_val < 1:
            bad("n_val", "must be >= 1")
        if self.foreground_prior is not None and not 0.0 < self.foreground_prior < 1.0:
            bad("foreground_prior", "must be in (0, 1) or null")
        if not 0.0 <= self.synthetic_fraction < 1.0:
            bad("synthetic_fraction", "must be in [0, 1) (a share of the training patches)")
        if self.synthetic_volumes < 1:
            bad("synthetic_volumes", "must be >= 1")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            bad("ema_decay", "must be in (0, 1) or null")
        if not 0.0 < self.threshold < 1.0:
            bad("threshold", "must be in (0, 1)")
        if self.input_clip_percentiles is not None:
            lo_hi = list(self.input_clip_percentiles)
            if len(lo_hi) != 2 or not 0.0 <= float(lo_hi[0]) < float(lo_hi[1]) <= 100.0:
                bad("input_clip_percentiles", "must be [low, high] with 0 <= low < high <= 100, or null")
        if self.num_workers < 0:
            bad("num_workers", "must be >= 0")
        if not self.on_the_fly.profiles or any(p.weight < 0 for p in self.on_the_fly.profiles) \
                or sum(p.weight for p in self.on_the_fly.profiles) <= 0:
            bad("on_the_fly.profiles", "needs at least one profile and non-negative weights with a positive sum")
        otf = self.on_the_fly
        # keys as from_mapping checks them (again here, for a config built in Python rather than from a mapping)
        convert(otf.synth_options, dict[str, Any], "on_the_fly.synth_options", source, ConfigError, synth_option_keys)
        if len(otf.shape) != 3 or min(otf.shape) < self.patch_size:
            bad("on_the_fly.shape", f"needs 3 sizes, each >= patch_size {self.patch_size}")
        try:  # the values as the on-the-fly renderer passes them: SynthConfig checks its own fields
            _synth_config_class()(shape=otf.shape, **{"voxel_size_um": otf.voxel_size_um, **otf.synth_options})
        except (TypeError, ValueError) as exc:
            bad("on_the_fly.synth_options", str(exc))
        return self


def config_from_dict(data: dict[str, Any] | None, source: str = "config") -> TrainConfig:
    """Build and check a TrainConfig from a (possibly partial) nested mapping."""
    return from_mapping(TrainConfig, data or {}, source, error=ConfigError).validate(source)


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A name of ``BUILTIN_CONFIGS`` -> the shipped YAML; anything else is a file path."""
    if str(name_or_path) in BUILTIN_CONFIGS:
        return DATA_DIR / "configs" / f"{name_or_path}.yaml"
    return Path(name_or_path)


def merged(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` applied key by key, nested mappings merged (a new dict)."""
    out = dict(base)
    for key, value in update.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(name_or_path: str | Path = "default", overrides: dict[str, Any] | None = None,
                base: dict[str, Any] | None = None) -> TrainConfig:
    """Load a shipped config by name or a YAML file; ``overrides`` (flat top-level keys) are applied on top.

    Keys the file leaves out take the values of ``base`` (e.g. the training config of the model a
    fine-tuning starts from), else those of ``default.yaml``."""
    import yaml

    path = resolve_config_path(name_or_path)
    if not path.exists():
        raise ConfigError(f"{path}: no such training config (use {', '.join(BUILTIN_CONFIGS)} or a YAML file)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    data = merged(base or {}, data)
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return config_from_dict(data, str(path))
