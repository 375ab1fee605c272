"""Bundled models: trained checkpoints that ship in ``data/models/`` so that a scan can be segmented
without training first.

A bundled model is an ordinary checkpoint (``octasim.model.load_checkpoint`` reads it with
``weights_only=True``) reduced to what inference needs, with its convolution weights stored as
float16 (half the size; they are cast back to float32 when loaded) and a ``model_card`` entry
recording how it was trained (the exact command, steps, wall time, hardware).
"""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

from octasim.paths import DATA_DIR

# torch (through octasim.model) is imported inside the functions: the CLI imports this module for
# its --help text, which must stay fast

MODELS_DIR = DATA_DIR / "models"
#: the model ``octasim segment`` uses when no ``--model`` is given
DEFAULT_MODEL = "octasim-multiscale-v4"
#: fewer optimizer steps than this: a checkpoint without a model card is reported as trained only briefly
BRIEF_TRAINING_STEPS = 2000
#: checkpoint keys a bundled model keeps (everything inference and its report need)
INFERENCE_KEYS = ("model_state", "model_config", "voxel_size_um", "train_voxel_range_um", "patch_size",
                  "preprocessing", "threshold", "threshold_calibration", "train_config", "step", "total_steps",
                  "on_the_fly", "seconds", "best_val_dice", "best_step", "init_from", "coarse_views")
#: what a network for the coarse views must share with the model it joins: what it was trained to see
SHARED_GRID_KEYS = ("voxel_size_um", "patch_size", "preprocessing")  # and the trained voxel range and input scale


def training_totals(state: dict[str, Any]) -> tuple[int, float]:
    """(optimizer steps, seconds) of a model's whole training, a fine-tuning's starting model included."""
    init = state.get("init_from") or {}
    return (int(state.get("step") or 0) + int(init.get("step") or 0),
            float(state.get("seconds") or 0.0) + float(init.get("seconds") or 0.0))


def bundled_models() -> list[str]:
    """Names of the models shipped in ``data/models/``."""
    return sorted(p.stem for p in MODELS_DIR.glob("*.pt"))


def bundled_model_path(name: str = DEFAULT_MODEL) -> Path:
    """Path of a bundled model; CheckpointError lists the shipped ones when ``name`` is not among them."""
    from octasim.model import CheckpointError

    path = MODELS_DIR / f"{name}.pt"
    if not path.exists():
        names = ", ".join(bundled_models()) or "none"
        raise CheckpointError(f"no bundled model named {name!r} in {MODELS_DIR} (shipped: {names}); "
                              "pass a checkpoint file instead (runs/NAME/best.pt)")
    return path


def resolve_model(spec: str | Path | None) -> Path:
    """``None`` -> the default bundled model; an existing file -> itself; else a bundled model's name."""
    if spec is None:
        return bundled_model_path()
    path = Path(spec)
    if path.exists() or path.suffix == ".pt" or len(path.parts) > 1:
        return path
    return bundled_model_path(str(spec))


def load_model(spec: str | Path | None = None) -> dict[str, Any]:
    """A trained model as a checkpoint dict for :func:`octasim.segment.segment_volume`: ``None`` -> the
    default bundled model, a bundled model's name, or a checkpoint file (opened with ``weights_only``)."""
    from octasim.model import load_checkpoint

    return load_checkpoint(resolve_model(spec))


def _half(weights: dict[str, Any]) -> dict[str, Any]:
    """Convolution weights as float16 (biases and norms stay float32)."""
    return {k: (v.half() if v.is_floating_point() and v.dim() > 1 else v) for k, v in weights.items()}


def coarse_views_entry(state: dict[str, Any], coarse: str | Path) -> dict[str, Any]:
    """The ``coarse_views`` entry of a bundled model whose coarser views ``coarse`` (a bundled model's
    name or a checkpoint) segments: its network (float16 weights) and model card. It must have been
    trained on the same grid, window, voxel sizes and preprocessing as ``state``'s network, or the
    views would not be what it learned to see (CheckpointError otherwise)."""
    from octasim.inference import trained_voxel_range
    from octasim.model import PAPER_MODEL, CheckpointError

    path = resolve_model(coarse)
    other = load_model(path)
    if other.get("coarse_views") is not None:
        raise CheckpointError(f"{path}: its coarse views are segmented by another network already; give "
                              "a model with one network")
    differ = [k for k in SHARED_GRID_KEYS if other.get(k) != state.get(k)]
    if trained_voxel_range(other) != trained_voxel_range(state):
        differ.append("train_voxel_range_um")
    scale = [{**PAPER_MODEL, **(s.get("model_config") or {})}["input_scale"] for s in (state, other)]
    if scale[0] != scale[1]:
        differ.append("model_config.input_scale")
    if differ:
        raise CheckpointError(f"{path}: trained on another grid or input than the model it would join "
                              f"({', '.join(differ)} differ); its views would not be what it learned to see")
    card = dict(other.get("model_card") or {"name": path.stem, "source_checkpoint": path.name,
                                            "steps": training_totals(other)[0],
                                            "minutes": round(training_totals(other)[1] / 60.0, 1)})
    return {"model_state": _half(other["model_state"]), "model_config": other["model_config"], "model_card": card}


def export_model(checkpoint: str | Path, out: str | Path, command: str, name: str | None = None,
                 coarse_views: str | Path | None = None) -> Path:
    """Write a bundled model from a training checkpoint: inference keys only, float16 convolution
    weights, and ``model_card`` = {name, training command, steps, minutes, hardware, octasim version}.
    ``coarse_views``: another model (a bundled model's name or a checkpoint) whose network segments
    the coarser views of the image pyramid (:func:`coarse_views_entry`)."""
    import torch

    from octasim.model import load_checkpoint, save_checkpoint

    state = load_checkpoint(checkpoint)
    small = {k: state[k] for k in INFERENCE_KEYS if k in state}
    small["model_state"] = _half(state["model_state"])
    if coarse_views is not None:
        small["coarse_views"] = coarse_views_entry(state, coarse_views)
    small["model_card"] = {
        "name": name or Path(out).stem, "training_command": command, "source_checkpoint": Path(checkpoint).name,
        "steps": training_totals(state)[0], "minutes": round(training_totals(state)[1] / 60.0, 1),
        "hardware": f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"}
    return save_checkpoint(out, small)


def model_summary(state: dict[str, Any], label: str) -> str:
    """One paragraph for users: which model, how it was trained, what grid and threshold it uses."""
    from octasim.inference import ModelGrid, pyramid_voxel_sizes

    card = state.get("model_card") or {}
    steps, seconds = training_totals(state)
    minutes = seconds / 60.0
    stages = " in two stages (fine-tuned)" if state.get("init_from") else ""
    grid = ModelGrid.from_checkpoint(state)
    views = ", ".join(f"{v:g}" for v in pyramid_voxel_sizes(grid))
    scaled = (", each scaled by its own maximum" if (state.get("model_config") or {}).get("input_scale") == "window"
              else "")
    cal = state.get("threshold_calibration") or {}
    if cal.get("applied"):
        source = f"calibrated on {cal.get('n_volumes', '?')} validation volume(s)"
    else:
        source = "the training config's"
    coarse = state.get("coarse_views")
    finest = "finest view " if coarse is not None else ""
    lines = [f"model {card.get('name', label)} ({label}): {finest}trained {steps:,} steps{stages} in {minutes:.0f} min"
             f"{' on the fly' if state.get('on_the_fly') else ''}; grid {grid.voxel_size_um:g} um, "
             f"window {grid.patch_size[0]} voxels{scaled}; views at {views} um (coarser ones for scans at least half "
             f"their window wide, fused where they find wide vessels); threshold "
             f"{float(state.get('threshold', 0.5)):.2f} ({source})"]
    if coarse is not None:  # its structure was checked when the checkpoint was loaded
        other = coarse.get("model_card") or {}
        coarser = ", ".join(f"{v:g}" for v in pyramid_voxel_sizes(grid)[1:]) or "none for this grid"
        lines.append(f"  coarser views ({coarser} um) segmented by {other.get('name', 'a second network')}: trained "
                     f"{int(other.get('steps') or 0):,} steps in {float(other.get('minutes') or 0):.0f} min"
                     f"{', with: ' + str(other['training_command']) if other.get('training_command') else ''}")
    if steps < BRIEF_TRAINING_STEPS and not card:  # a bundled model's card documents its evaluation
        lines.append(f"warning: this model trained only {steps:,} steps (fewer than {BRIEF_TRAINING_STEPS:,}); "
                     "expect a rough segmentation")
    return "\n".join(lines)
