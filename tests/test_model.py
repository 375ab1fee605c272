import pytest
import torch

from octasim.model import (CHECKPOINT_FORMAT, CheckpointError, build_unet, load_checkpoint,
                           model_from_checkpoint, save_checkpoint, scale_window)

class _Evil:
    pass


TINY = {"channels": [4, 8], "strides": [2], "num_res_units": 0, "dropout": 0.0}


def test_checkpoint_round_trip_restores_identical_outputs(tmp_path):
    torch.manual_seed(0)
    model = build_unet(TINY).eval()
    save_checkpoint(tmp_path / "c.pt", {"model_state": model.state_dict(), "model_config": TINY, "voxel_size_um": 2.0})
    state = load_checkpoint(tmp_path / "c.pt")
    assert state["format"] == CHECKPOINT_FORMAT and state["voxel_size_um"] == 2.0
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), model_from_checkpoint(state)(x))


def test_weights_that_do_not_fit_the_config_are_a_checkpoint_error(tmp_path):
    state = {"model_state": build_unet(TINY).state_dict(), "model_config": {**TINY, "channels": [8, 16]}}
    with pytest.raises(CheckpointError, match="does not match"):
        model_from_checkpoint(state)


def test_device_names_are_checked():
    from octasim.model import resolve_device

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device("tpu")


def test_checkpoint_with_code_or_wrong_version_is_refused(tmp_path):
    # a pickled object that is not plain data (here a Python set of a class instance) must not load
    torch.save({"model_state": {}, "model_config": {}, "obj": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(tmp_path / "evil.pt")
    torch.save({"format": 999, "model_state": {}, "model_config": {}}, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match="format 999"):
        load_checkpoint(tmp_path / "old.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="no such"):
        load_checkpoint(tmp_path / "missing.pt")


def test_unreadable_checkpoint_never_suggests_unsafe_loading(tmp_path):
    import os

    (tmp_path / "random.pt").write_bytes(os.urandom(4096))
    torch.save({"model_state": {}, "model_config": {}, "obj": _Evil()}, tmp_path / "evil.pt")
    for name in ("random.pt", "evil.pt"):
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(tmp_path / name)
        text = str(info.value)
        assert name in text and "not a readable octasim checkpoint" in text
        assert "weights_only" not in text and "safe_globals" not in text and "trusted source" not in text


@pytest.mark.parametrize("defect, message", [("nan_weight", "NaN or infinite"), ("inf_weight", "NaN or infinite"),
                                             ("nan_threshold", "threshold is nan"),
                                             ("big_threshold", "threshold is 1.5")])
def test_checkpoint_with_nan_weights_or_bad_threshold_is_refused(tmp_path, defect, message):
    torch.manual_seed(0)
    weights = build_unet(TINY).state_dict()
    key = next(k for k, v in weights.items() if v.is_floating_point())
    state = {"model_state": weights, "model_config": TINY, "voxel_size_um": 2.0, "threshold": 0.5}
    if defect == "nan_weight":
        weights[key][0] = float("nan")
    elif defect == "inf_weight":
        weights[key][0] = float("inf")
    elif defect == "nan_threshold":
        state["threshold"] = float("nan")
    else:
        state["threshold"] = 1.5
    path = save_checkpoint(tmp_path / "bad.pt", state)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    with pytest.raises(CheckpointError, match=message):  # a state dict given directly is checked too
        model_from_checkpoint(state)


def test_window_scaled_network_is_blind_to_gain_and_keeps_unet_weights():
    torch.manual_seed(0)
    res = {**TINY, "num_res_units": 1, "norm": "INSTANCE"}  # the residual branch sees the raw input
    plain, scaled = build_unet(res).eval(), build_unet({**res, "input_scale": "window"}).eval()
    scaled.load_state_dict(plain.state_dict())  # same parameters, same keys
    x = torch.rand(2, 1, 16, 16, 16) * 0.8
    with torch.no_grad():
        assert not torch.allclose(plain(x), plain(0.25 * x), atol=1e-3)
        assert torch.allclose(scaled(x), scaled(0.25 * x), atol=1e-5)
        assert torch.allclose(scaled(x), plain(scale_window(x)))
        assert torch.equal(scaled(torch.zeros(1, 1, 16, 16, 16)), plain(torch.zeros(1, 1, 16, 16, 16)))


def test_scale_window_sets_each_windows_robust_maximum_to_one():
    x = torch.full((2, 1, 8, 8, 8), 0.1)
    x[0, 0, 2:5, 2:5, 2:5] = 0.4          # a bright 3^3 block: the robust maximum
    x[0, 0, 7, 7, 7] = 0.9                # one hot voxel does not set the scale; it is clipped
    y = scale_window(x)
    assert torch.allclose(y[0, 0, 3, 3, 3], torch.tensor(1.0)) and y[0, 0, 7, 7, 7] == 1.0
    assert torch.allclose(y[0, 0, 0, 0, 0], torch.tensor(0.25))
    assert torch.allclose(y[1], torch.ones_like(y[1]))  # each window by itself


def test_unknown_input_scale_is_refused():
    with pytest.raises(ValueError, match="input_scale"):
        build_unet({**TINY, "input_scale": "volume"})
