"""The segmentation network (MONAI 3D U-Net) and checkpoints that carry everything inference needs."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from octasim import __version__
from octasim.atomic import atomic_path
from octasim.errors import OctasimError

#: Bumped when the checkpoint layout changes incompatibly; ``load_checkpoint`` refuses other values.
CHECKPOINT_FORMAT = 1

#: The reference network (Wittmann et al. 2024): channels 32-512, strides 2, LeakyReLU, batch norm, dropout 0.3.
PAPER_MODEL = {"channels": [32, 64, 128, 256, 512], "strides": [2, 2, 2, 2], "num_res_units": 0,
               "act": "LEAKYRELU", "norm": "BATCH", "dropout": 0.3, "input_scale": "scan"}
#: ``input_scale`` of a model config: "scan" (the window as the scan's percentile scaling left it) or
#: "window" (every window divided by its own robust maximum first: :func:`scale_window`)
INPUT_SCALES = ("scan", "window")


def scale_window(x: torch.Tensor) -> torch.Tensor:
    """Windows (N, 1, i, j, k) divided each by its robust maximum (the brightest 3 x 3 x 3 mean, so one hot
    voxel does not set it) and clipped to [0, 1]: the network then sees every window at the same gain.

    Why: a scan is scaled by its own percentiles, so a vessel's brightness there depends on what else
    the scan holds (a brighter vessel elsewhere, brightness falling threefold over 50 um of depth in
    two-photon stacks). Instance norm removes most of that gain, but not the residual branch of the
    first unit, which sees the raw input: a synthetic vessel at 0.25 of the scale lost a quarter of
    its recall. Scaling each window by itself makes the network exactly blind to the gain, in training
    and inference alike. An all-zero window (padding) stays zero.
    """
    pooled = torch.nn.functional.avg_pool3d(x.float(), kernel_size=3, stride=1)
    scale = pooled.amax(dim=(1, 2, 3, 4), keepdim=True).clamp_min(1e-6)
    return (x / scale.to(x.dtype)).clamp(0.0, 1.0)


class CheckpointError(OctasimError):
    """A checkpoint file cannot be used; the message names the file and the problem."""


def build_unet(model_config: dict[str, Any]) -> torch.nn.Module:
    """MONAI 3D UNet with one input and one output channel (logits; apply a sigmoid for probabilities)."""
    from monai.networks.nets import UNet

    cfg = {**PAPER_MODEL, **model_config}
    if cfg["input_scale"] not in INPUT_SCALES:
        raise ValueError(f"model input_scale must be one of {', '.join(INPUT_SCALES)}, got {cfg['input_scale']!r}")
    net = UNet
    if cfg["input_scale"] == "window":
        class WindowScaledUNet(UNet):  # same parameters and state-dict keys as UNet
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return super().forward(scale_window(x))
        net = WindowScaledUNet
    return net(spatial_dims=3, in_channels=1, out_channels=1, channels=list(cfg["channels"]),
               strides=list(cfg["strides"]), num_res_units=int(cfg["num_res_units"]), act=cfg["act"],
               norm=cfg["norm"], dropout=float(cfg["dropout"]))


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Save plain data and tensors only (loadable with ``weights_only=True``), atomically.

    ``state`` must hold ``model_state`` and ``model_config``; the format version and octasim
    version are added here.
    """
    state = {"format": CHECKPOINT_FORMAT, "octasim_version": __version__, **state}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely (no code execution) and check that this octasim can use it."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt / unsafe files
        raise CheckpointError(f"{path}: not a readable octasim checkpoint ({_load_error_reason(exc)}): the file "
                              "is corrupt or truncated, not a PyTorch checkpoint, or holds Python objects besides "
                              "tensors and plain data, which octasim never loads because loading them could run "
                              "code") from exc
    if not isinstance(state, dict) or "model_state" not in state or "model_config" not in state:
        raise CheckpointError(f"{path}: not an octasim checkpoint (no model_state / model_config)")
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {state.get('format')!r} (octasim "
                              f"{state.get('octasim_version', '?')}); this octasim {__version__} reads format "
                              f"{CHECKPOINT_FORMAT}")
    check_checkpoint_values(state, path)
    return state


def _load_error_reason(exc: Exception) -> str:
    """torch.load's error in one line, without its advice to load the file unsafely
    (``weights_only=False``, allow-listing globals), which octasim never does."""
    text = str(exc)
    detail = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\n\n|\Z)", text, re.S)
    reason = (detail.group(1) if detail else text).strip()
    reason = re.split(r"\.\s+Please use|\n", reason)[0].strip()
    if not reason or "weights_only" in reason or "safe_globals" in reason:
        return type(exc).__name__
    return f"{type(exc).__name__}: {reason}"


def check_checkpoint_values(state: dict[str, Any], path: str | Path | None = None) -> None:
    """Refuse NaN / infinite weights and a threshold outside [0, 1] (or NaN): such a checkpoint would
    give an all-NaN probability map and an empty mask. The message starts with ``path`` when given."""
    where = f"{path}: " if path is not None else ""
    coarse = state.get("coarse_views")
    if coarse is not None and not (isinstance(coarse, dict) and isinstance(coarse.get("model_state"), dict)
                                   and isinstance(coarse.get("model_config"), dict)
                                   and isinstance(coarse.get("model_card", {}), dict)):
        raise CheckpointError(f"{where}the checkpoint's coarse_views is not a network (a model_config and a "
                              "model_state, optionally a model_card): the file is damaged or was not written "
                              "by `octasim model export --coarse-views`; use another checkpoint")
    weights = [*((state.get("model_state") or {}).items()),
               *((f"coarse_views.{k}", v) for k, v in ((coarse or {}).get("model_state") or {}).items())]
    bad = [key for key, value in weights
           if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all())]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise CheckpointError(f"{where}the checkpoint's network weights contain NaN or infinite values "
                              f"({', '.join(bad[:3])}{more}): the training run that wrote it diverged or the "
                              "file is damaged; use another checkpoint (e.g. best.pt of a healthy run)")
    threshold = state.get("threshold")
    if threshold is not None:
        try:
            ok = 0.0 <= float(threshold) <= 1.0  # False for NaN
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise CheckpointError(f"{where}the checkpoint's probability threshold is {threshold!r}; it must be a "
                                  "number in [0, 1]: the file is damaged, use another checkpoint")


class ViewNetworks(torch.nn.Module):
    """The two networks of a model whose coarser pyramid views are segmented by another network than
    its finest view (a bundled model's ``coarse_views``; :func:`network_for_view` picks one). Called
    directly, it is the fine network."""

    def __init__(self, fine: torch.nn.Module, coarse: torch.nn.Module):
        super().__init__()
        self.fine, self.coarse = fine, coarse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fine(x)


def network_for_view(model: torch.nn.Module, view_index: int) -> torch.nn.Module:
    """The network that segments view ``view_index`` of the image pyramid (0: the finest)."""
    if isinstance(model, ViewNetworks):
        return model.coarse if view_index > 0 else model.fine
    return model


def _network(model_config: Any, model_state: Any, what: str) -> torch.nn.Module:
    try:
        model = build_unet(model_config)
        model.load_state_dict(model_state)
    except (RuntimeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"the checkpoint's {what} does not match its weights ({first})") from exc
    return model


def model_from_checkpoint(state: dict[str, Any], device: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild the network of a loaded checkpoint, in eval mode on ``device``: a
    :class:`ViewNetworks` when the checkpoint names another network for its coarse views.

    A model configuration that does not fit the stored weights, non-finite weights or a threshold
    outside [0, 1] raise CheckpointError.
    """
    check_checkpoint_values(state)
    model = _network(state.get("model_config"), state.get("model_state"), "model_config")
    coarse = state.get("coarse_views")
    if coarse is not None:  # its structure was checked by check_checkpoint_values
        model = ViewNetworks(model, _network(coarse.get("model_config"), coarse.get("model_state"),
                                             "coarse_views network"))
    return model.to(device).eval()


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> CUDA when available, else CPU; 'cuda' without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but PyTorch sees no CUDA GPU (install a CUDA build of torch)")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from exc
