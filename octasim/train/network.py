"""The network of a training run and its optimisation: MONAI 3D U-Net, Adam with a constant-then-linear
learning-rate schedule, AMP scaler, loss, optional weight average (EMA), DistributedDataParallel; how
they are saved into and restored from a checkpoint (:class:`octasim.train.state.RunState`)."""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from octasim.model import build_unet
from octasim.train.config import TrainConfig
from octasim.train.distributed import World
from octasim.train.state import RunState, rng_state


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


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in state.items()}


@dataclasses.dataclass
class Network:
    """The network of a run and its optimisation on one device. ``forward``: what the step calls (the
    model, or its DistributedDataParallel wrapper); ``eval_model``: what validation and checkpoints
    hold (the weight average when ``ema_decay`` is set, else the model)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    loss_fn: torch.nn.Module
    device: torch.device
    ema: torch.nn.Module | None = None
    forward: torch.nn.Module | None = None

    @property
    def amp(self) -> bool:
        return self.device.type == "cuda"

    @property
    def channels_last(self) -> bool:
        """oneDNN's 3D convolutions (forward and backward) are about 1.4x faster in NDHWC on CPU."""
        return self.device.type == "cpu"

    @property
    def eval_model(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def restore(self, state: RunState, total: int, decay_fraction: float) -> None:
        """Weights, weight average, optimizer, schedule and AMP scaler of ``last.pt``."""
        self.model.load_state_dict(state.raw_model_state if state.raw_model_state is not None
                                   else state.model_state)
        if self.ema is not None:
            self.ema.load_state_dict(state.ema_state)
        self.optimizer.load_state_dict(state.optimizer_state)
        self.scheduler.load_state_dict(state.scheduler_state)
        # the optimizer holds the learning rate the old schedule gave its next step; a resume that changes
        # --steps needs the rate of this run's schedule (the scheduler's lambda uses this call's total)
        for group, base_lr in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = base_lr * lr_factor(state.step, total, decay_fraction)
        self.scaler.load_state_dict(state.scaler_state)

    def snapshot(self, run: RunState, full: bool, rank_rngs: list[dict[str, Any]] | None = None) -> RunState:
        """``run`` with this network's weights; ``full``: and what an exact resume needs (this process's
        random states now; ``rank_rngs``: every rank's, in a distributed run)."""
        state = dataclasses.replace(run, model_state=_cpu(self.eval_model.state_dict()))
        if full:
            state.optimizer_state, state.scheduler_state = self.optimizer.state_dict(), self.scheduler.state_dict()
            state.scaler_state, state.rng, state.rng_ranks = self.scaler.state_dict(), rng_state(), rank_rngs
            if self.ema is not None:  # model_state holds the average; resuming needs the raw weights too
                state.raw_model_state, state.ema_state = _cpu(self.model.state_dict()), _cpu(self.ema.state_dict())
        return state

    def distribute(self, world: World) -> None:
        """Wrap the model in DistributedDataParallel (after loading: DDP broadcasts rank 0's weights and
        buffers to every rank)."""
        self.forward = self.model
        if not world.distributed:
            return
        from torch.nn.parallel import DistributedDataParallel
        if self.channels_last:  # the 1-channel input convolution's weight: strides of a size-1 axis differ, same memory
            import warnings
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        self.forward = DistributedDataParallel(self.model, device_ids=[self.device.index] if self.amp else None)


def build_network(cfg: TrainConfig, device: torch.device, total: int, init_weights: dict[str, Any] | None = None,
                  fresh: bool = True) -> Network:
    """The config's network on ``device`` with its optimizer (Adam), learning-rate schedule over ``total``
    steps, AMP scaler, loss and weight average; ``init_weights``: a trained model's weights to start
    from (fine-tuning), else the output bias starts at ``foreground_prior`` unless the run resumes
    (``fresh`` false)."""
    model = build_unet(dataclasses.asdict(cfg.model)).to(device)
    if device.type == "cpu":
        model = model.to(memory_format=torch.channels_last_3d)  # see Network.channels_last
    if init_weights is not None:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in init_weights.items()})
    elif cfg.foreground_prior is not None and fresh:
        init_output_bias(model, cfg.foreground_prior)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optimizer.lr, betas=tuple(cfg.optimizer.betas),
                                 weight_decay=cfg.optimizer.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, cfg.decay_fraction))
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    loss_fn = make_loss(cfg)
    ema = None  # torch's AveragedModel: parameters and (batch-norm) buffers averaged after every step
    if cfg.ema_decay is not None:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(float(cfg.ema_decay)), use_buffers=True)
    return Network(model, optimizer, scheduler, scaler, loss_fn, device, ema, model)
