"""octasim.train.state.RunState: what a checkpoint holds, written and read back in one place."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from octasim.model import load_checkpoint
from octasim.train.state import FILE_KEYS, RESUME_KEYS, RunState, rng_state
from tests.test_train import tiny


def same(a, b, where="") -> None:
    """Nested equality with tensors compared exactly, and the same key order in every dict."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), (where, list(a), list(b))
        for k in a:
            same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{where}[{i}]")
    elif torch.is_tensor(a):
        assert torch.is_tensor(b) and torch.equal(a, b), where
    else:
        assert a == b, (where, a, b)


def full_state() -> RunState:
    """A RunState with every field set to something other than its default."""
    weights = {"w": torch.randn(2, 3), "n": torch.tensor(7)}
    return RunState(
        model_state=weights, model_config={"channels": [4, 8], "strides": [2]}, voxel_size_um=1.5,
        train_voxel_range_um=(1.0, 8.0), patch_size=16, preprocessing={"clip_percentiles": [0.5, 99.5]},
        threshold=0.35, train_config={"steps": 9, "seed": 3}, step=6, total_steps=9, on_the_fly=True,
        init_from={"path": "/m.pt", "step": 100, "seconds": 5.0}, data=[{"path": "/d", "sha256": "ab"}],
        val_dice=0.61, loss=0.42, best_val_dice=0.7, best_step=3, seconds=12.5, world_size=2,
        optimizer_state={"state": {0: {"exp_avg": torch.ones(2)}}, "param_groups": [{"lr": 0.01}]},
        scheduler_state={"last_epoch": 6}, scaler_state={"scale": 1.0}, rng=rng_state(),
        rng_ranks=[rng_state(), rng_state()], raw_model_state={"w": torch.zeros(2, 3)},
        ema_state={"n_averaged": torch.tensor(6)}, threshold_calibration={"chosen": 0.35, "grid": [0.35]},
        extra={"model_card": {"name": "x"}})


def test_run_state_round_trips_through_a_checkpoint_dict():
    state = full_state()
    defaults = RunState(model_state={}, model_config={})
    assert all(getattr(state, f.name) != getattr(defaults, f.name) for f in dataclasses.fields(RunState)
               if f.name not in ("model_state", "model_config"))  # every field is exercised
    ckpt = state.to_checkpoint()
    assert set(RESUME_KEYS) <= set(ckpt) and ckpt["metrics"] == {"val_dice": 0.61, "loss": 0.42,
                                                                  "best_val_dice": 0.7, "best_step": 3}
    back = RunState.from_checkpoint(ckpt)
    for f in dataclasses.fields(RunState):
        same(getattr(back, f.name), getattr(state, f.name), f.name)
    same(back.to_checkpoint(), ckpt)
    light = state.to_checkpoint(full=False)  # best.pt: no optimizer, schedule or random states
    assert not set(RESUME_KEYS) & set(light) and light["threshold_calibration"] == state.threshold_calibration
    assert RunState.from_checkpoint(light).optimizer_state is None


@pytest.mark.parametrize("ema_decay", [None, 0.7])
def test_run_state_reads_and_rewrites_the_checkpoints_train_writes(tmp_path, ema_decay):
    from tests.test_train import make_dataset
    from octasim.train.trainer import train

    out = tmp_path / "run"
    train(tiny(steps=3, val_every=3, ema_decay=ema_decay), [make_dataset(tmp_path / "ds", n=3, shape=24)], out,
          device="cpu", progress=False)
    for name in ("last.pt", "best.pt"):
        ckpt = load_checkpoint(out / name)
        state = RunState.from_checkpoint(ckpt)
        assert state.step == 3 and state.total_steps == 3 and state.world_size == 1 and not state.extra
        assert (state.ema_state is not None) == (name == "last.pt" and ema_decay is not None)
        # the same dict, key for key and in the same order, but what save_checkpoint adds itself
        same(state.to_checkpoint(), {k: v for k, v in ckpt.items() if k not in FILE_KEYS}, name)
    assert RunState.from_checkpoint(load_checkpoint(out / "best.pt")).threshold_calibration is not None


def test_run_state_reads_the_bundled_model():
    from octasim.models import resolve_model

    ckpt = load_checkpoint(resolve_model("octasim-multiscale-v1"))
    state = RunState.from_checkpoint(ckpt)
    assert state.step == 1000 and state.total_steps == 7500 and state.on_the_fly
    assert state.train_voxel_range_um == (1.0, 8.0) and state.voxel_size_um == 2.0
    assert state.world_size == 1 and state.data is None and state.best_step == 500  # keys it predates
    assert state.extra["model_card"]["name"] == "octasim-multiscale-v1"  # kept as it is
    rewritten = state.to_checkpoint(full=False)
    for key, value in ckpt.items():
        if key not in FILE_KEYS:
            same(rewritten[key], value, key)
