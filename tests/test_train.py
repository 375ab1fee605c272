"""octasim.train: config loading, data split, a tiny training run, checkpoints, exact resume."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from octasim.model import load_checkpoint, model_from_checkpoint
from octasim.nifti import write_volume
from octasim.train.config import ConfigError, TrainConfig, config_from_dict, load_config
from octasim.train.data import DataError, load_dataset_samples, split_samples

TINY = {"model": {"channels": [4, 8], "strides": [2], "num_res_units": 0, "norm": "BATCH", "act": "PRELU"},
        "optimizer": {"lr": 0.01}, "batch_size": 2, "patch_size": 16, "steps": 6, "val_every": 3, "log_every": 1,
        "n_val": 1, "num_workers": 0, "decay_fraction": 0.3, "seed": 3}


def tube_volume(shape: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Bright straight tubes (lateral and diving, radius 2 voxels) in noise: image float32, label uint8."""
    rng = np.random.default_rng(seed)
    ii, jj, kk = np.meshgrid(*(np.arange(shape),) * 3, indexing="ij")
    label = np.zeros((shape,) * 3, bool)
    for _ in range(3):
        a, b = rng.uniform(4, shape - 4, 2)
        label |= (ii - a) ** 2 + (jj - b) ** 2 <= 4  # diving (along k)
        label |= (jj - a) ** 2 + (kk - b) ** 2 <= 4  # lateral (along i)
    image = np.clip(0.15 + 0.6 * label + rng.normal(0, 0.05, label.shape), 0, 1).astype(np.float32)
    return image, label.astype(np.uint8)


def make_dataset(root: Path, n: int = 4, shape: int = 32, seed: int = 0, voxel_size_um: float = 2.0) -> Path:
    """A tiny dataset folder as `octasim generate` writes it (images, labels, dataset.json)."""
    samples = []
    for i in range(n):
        sid = f"s{i:03d}"
        image, label = tube_volume(shape, seed * 1000 + i)
        write_volume(root / "images" / f"{sid}.nii.gz", image, spacing_um=voxel_size_um)
        write_volume(root / "labels" / f"{sid}.nii.gz", label, spacing_um=voxel_size_um)
        samples.append({"id": sid, "image": f"images/{sid}.nii.gz", "label": f"labels/{sid}.nii.gz",
                        "seed": seed * 1000 + i, "params": {}})
    (root / "dataset.json").write_text(json.dumps({"format": "octasim-dataset", "version": 1, "config": {},
                                                   "voxel_size_um": voxel_size_um, "shape": [shape] * 3,
                                                   "n": n, "complete": True, "samples": samples}))
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("ds"))


def tiny(**kw) -> TrainConfig:
    return config_from_dict({**TINY, **kw})


# -- config -----------------------------------------------------------------------------------------

def test_shipped_configs_load():
    paper = load_config("paper")
    assert paper.model.channels == [32, 64, 128, 256, 512] and paper.model.dropout == 0.3
    assert paper.model.act == "LEAKYRELU" and paper.model.norm == "BATCH"
    assert paper.optimizer.lr == 1e-5 and paper.optimizer.betas == [0.5, 0.999]
    assert paper.steps == 200 * 1562 and paper.batch_size == 32 and paper.crop == 91 and paper.patch_size == 64
    assert paper.decay_fraction == pytest.approx(30 / 200)
    default = load_config("default")
    assert max(default.model.channels) <= 128 and default.patch_size == 64
    mixed = load_config("mixed")
    assert {p.name for p in mixed.on_the_fly.profiles} == {"paper", "octa", "two-photon"}
    from octasim.train.data import SynthRenderer
    spec, name = SynthRenderer(mixed)._profile("paper")  # overrides are valid profile parameters
    assert name == "paper" and spec["acquisition"] is True and spec["acq_slice_spacing_um"] == [2.0, 5.0]
    # the realism options are valid SynthConfig fields, and the network trains on the nominal grid
    from octasim.synth import SynthConfig
    opts = mixed.on_the_fly.synth_options
    synth = SynthConfig(shape=mixed.on_the_fly.shape, **opts)
    assert synth.voxel_size_um == [1.0, 2.0] and synth.depth_offset_um == [0.0, 400.0] and synth.label_acquisition
    assert mixed.on_the_fly.voxel_size_um == synth.nominal_voxel_size_um == 1.5
    assert default.calibrate_threshold and mixed.calibrate_threshold


def test_partial_yaml_falls_back_to_the_shipped_default(tmp_path):
    assert TrainConfig() == load_config("default")  # dataclass defaults == data/configs/default.yaml
    partial = tmp_path / "partial.yaml"
    partial.write_text("steps: 50\npatch_size: 96\n")
    cfg = load_config(partial)
    assert cfg.steps == 50 and cfg.patch_size == 96 and cfg.crop == 137  # crop follows the patch
    assert cfg.loss.name == load_config("default").loss.name and cfg.model == load_config("default").model


def test_unknown_key_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  chanels: [4, 8]\n")
    with pytest.raises(ConfigError, match="model.chanels"):
        load_config(bad)
    with pytest.raises(ConfigError, match="loss.name"):
        config_from_dict({"loss": {"name": "focal"}})
    with pytest.raises(ConfigError, match="model.input_scale"):
        config_from_dict({"model": {"input_scale": "volume"}})
    with pytest.raises(ConfigError, match="no such training config"):
        load_config(tmp_path / "missing.yaml")


def test_config_values_are_checked_against_their_types(tmp_path):
    yaml_file = tmp_path / "my.yaml"
    yaml_file.write_text("optimizer:\n  lr: 1e-3\nsteps: 1e3\ndecay_fraction: 0\n")  # YAML 1.1: 1e-3 is text
    cfg = load_config(yaml_file)
    assert cfg.optimizer.lr == 0.001 and isinstance(cfg.optimizer.lr, float)
    assert cfg.steps == 1000 and isinstance(cfg.steps, int) and isinstance(cfg.decay_fraction, float)
    for text, message in [("batch_size: two\n", "batch_size: expected an integer, got 'two'"),
                          ("optimizer: {lr: fast}\n", "optimizer.lr: expected a number, got 'fast'"),
                          ("steps: 2.5\n", "steps: expected an integer, got 2.5"),
                          ("model: {channels: [4, x]}\n", r"model.channels\[1\]: expected an integer"),
                          ("loss: {batch_dice: maybe}\n", "loss.batch_dice: expected true or false"),
                          ("crop_size: big\n", "crop_size: expected an integer or null"),
                          ("threshold:\n", "threshold: expected a number, got null"),
                          ("model: 3\n", "model: expected a mapping")]:
        yaml_file.write_text(text)
        with pytest.raises(ConfigError, match=message) as info:
            load_config(yaml_file)
        assert str(info.value).startswith(f"{yaml_file}: "), info.value


def test_lr_schedule_constant_then_linear():
    from octasim.train.trainer import lr_factor
    f = [lr_factor(s, 200, 0.15) for s in range(201)]
    assert f[0] == f[169] == 1.0
    assert f[170] == 1.0 and f[185] == pytest.approx(0.5) and f[200] == 0.0
    assert all(a >= b for a, b in zip(f, f[1:]))


# -- data -------------------------------------------------------------------------------------------

def test_split_disjoint_and_deterministic(tmp_path):
    root = make_dataset(tmp_path / "d", n=10, shape=8)
    samples = load_dataset_samples([root]).samples
    cfg = config_from_dict({"val_fraction": 0.3, "n_val": None})
    train, val = split_samples(samples, cfg)
    assert len(val) == 3 and len(train) == 7
    assert not {s.id for s in train} & {s.id for s in val}
    assert {s.id for s in train} | {s.id for s in val} == {s.id for s in samples}
    assert split_samples(samples, cfg) == (train, val)
    other = split_samples(samples, config_from_dict({"val_fraction": 0.3, "n_val": None, "seed": 1}))[1]
    assert [s.id for s in other] != [s.id for s in val]
    with pytest.raises(DataError, match="at least 2"):
        split_samples(samples[:1], cfg)


def test_patch_dataset_is_a_function_of_index(dataset):
    from octasim.train.data import PatchDataset, load_volumes
    vols = load_volumes(load_dataset_samples([dataset]).samples)
    cfg = tiny()
    ds = PatchDataset(vols, cfg, length=8)
    a, b = ds[5], ds[2]
    assert a["image"].shape == (1, 16, 16, 16) and a["label"].shape == (1, 16, 16, 16)
    assert set(torch.unique(a["label"]).tolist()) <= {0.0, 1.0}
    assert torch.equal(ds[5]["image"], a["image"]) and not torch.equal(a["image"], b["image"])
    shifted = PatchDataset(vols, cfg, length=8, offset=3)
    assert torch.equal(shifted[2]["image"], a["image"])
    from torch.utils.data import DataLoader
    first = [next(iter(DataLoader(ds, batch_size=4, num_workers=w)))["image"] for w in (0, 1)]
    assert torch.equal(*first)  # the stream does not depend on the number of loader workers


def test_dataset_errors(tmp_path):
    with pytest.raises(DataError, match="dataset.json"):
        load_dataset_samples([tmp_path])
    head = {"format": "octasim-dataset", "version": 1, "config": {}, "voxel_size_um": 2.0, "shape": [8] * 3}
    (tmp_path / "dataset.json").write_text(json.dumps({**head, "n": 0, "samples": []}))
    with pytest.raises(DataError, match="no samples"):
        load_dataset_samples([tmp_path])
    sample = {"id": "a", "image": "images/a.nii.gz", "label": "labels/a.nii.gz", "seed": 0}
    (tmp_path / "dataset.json").write_text(json.dumps({**head, "n": 1, "samples": [sample]}))
    with pytest.raises(DataError, match="images/a.nii.gz"):
        load_dataset_samples([tmp_path])


@pytest.mark.parametrize("change, message", [
    ({"format": None}, "not an octasim dataset manifest"),
    ({"version": 2}, "version 2 is not supported"),
    ({"n": 5}, r"unfinished \(4 of 5 samples"),
    ({"config": None}, "lacks the key 'config'"),
])
def test_training_reads_manifests_strictly(tmp_path, change, message):
    """Training reads dataset.json with the dataset stage's one strict reader (it used to accept a
    manifest without format or version, of another version, or listing fewer samples than n)."""
    root = make_dataset(tmp_path / "d")
    data = json.loads((root / "dataset.json").read_text())
    for key, value in change.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    (root / "dataset.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=message):
        load_dataset_samples([root])


def test_on_the_fly_never_repeats_a_volume():
    from octasim.train.data import OnTheFlyDataset
    seen = []

    def fake(profile, seed, index):
        seen.append((profile, seed, index))
        return tube_volume(24, seed * 100 + index)

    cfg = tiny(on_the_fly={"profiles": [{"name": "octa", "weight": 1}, {"name": "paper", "weight": 1}],
                           "shape": [24, 24, 24], "crops_per_volume": 2})
    it = iter(OnTheFlyDataset(cfg, renderer=fake))
    patches = [next(it) for _ in range(12)]
    assert len(seen) == 6 and len({s[2] for s in seen}) == 6
    assert {s[0] for s in seen} <= {"octa", "paper"}
    assert patches[0]["image"].shape == (1, 16, 16, 16)


def test_on_the_fly_training_run(tmp_path):
    from octasim.train.trainer import train

    def fake(profile, seed, index):
        return tube_volume(24, seed % 1000 + index)

    cfg = tiny(steps=3, on_the_fly={"shape": [24, 24, 24], "crops_per_volume": 2, "n_val": 1})
    m = train(cfg, [], tmp_path / "otf", on_the_fly=True, renderer=fake, device="cpu", progress=False)
    assert m["step"] == 3 and m["n_val_volumes"] == 1
    assert load_checkpoint(tmp_path / "otf" / "best.pt")["on_the_fly"] is True


def fake_renderer(profile: str, seed: int, index: int):
    """Stand-in for the simulator in loader workers (module level, so worker processes can pickle it)."""
    return tube_volume(24, seed % 1000 + index)


@pytest.mark.parametrize("workers", [0, 2])
def test_on_the_fly_stream_resumes_at_any_batch(workers):
    from octasim.train.data import OnTheFlyDataset, worker_init
    # 3 patches per volume, batches of 2: a resumed stream starts in the middle of a volume
    cfg = tiny(num_workers=workers, on_the_fly={"shape": [24, 24, 24], "crops_per_volume": 3})

    def batches(start: int, n: int) -> list[torch.Tensor]:
        loader = torch.utils.data.DataLoader(OnTheFlyDataset(cfg, fake_renderer, start_batch=start),
                                             batch_size=cfg.batch_size, num_workers=workers,
                                             worker_init_fn=worker_init if workers else None)
        it = iter(loader)
        return [next(it)["image"] for _ in range(n)]

    full = batches(0, 7)
    assert not torch.equal(full[0], full[1])
    for start in (1, 2, 5):
        for a, b in zip(full[start:], batches(start, 7 - start)):
            assert torch.equal(a, b), start


def test_on_the_fly_resume_is_exact(tmp_path):
    from octasim.train.trainer import TrainError, train
    cfg = tiny(on_the_fly={"shape": [24, 24, 24], "crops_per_volume": 3, "n_val": 1})
    kw = dict(on_the_fly=True, renderer=fake_renderer, device="cpu", progress=False, steps=6)
    train(cfg, [], tmp_path / "full", **kw)
    train(cfg, [], tmp_path / "split", stop_at=2, **kw)  # 4 patches: mid-volume
    with pytest.raises(TrainError, match="--workers 0"):  # another worker count would change the stream
        train(tiny(num_workers=2, on_the_fly={"shape": [24, 24, 24], "crops_per_volume": 3, "n_val": 1}),
              [], tmp_path / "split", resume=True, **kw)
    train(cfg, [], tmp_path / "split", resume=True, **kw)
    a = load_checkpoint(tmp_path / "full" / "last.pt")["model_state"]
    b = load_checkpoint(tmp_path / "split" / "last.pt")["model_state"]
    for k, v in a.items():
        assert torch.equal(v, b[k]), k


# -- training ---------------------------------------------------------------------------------------

def test_tiny_run_writes_checkpoints(dataset, tmp_path):
    from octasim.train.trainer import train
    out = tmp_path / "run"
    m = train(tiny(), [dataset], out, device="cpu", progress=False)
    for name in ("last.pt", "best.pt", "metrics.csv", "curves.png"):
        assert (out / name).exists(), name
    assert m["step"] == 6 and 0.0 <= m["val_dice"] <= 1.0
    raw = torch.load(out / "last.pt", weights_only=True)  # plain data and tensors only
    assert raw["step"] == 6 and "optimizer_state" in raw and "rng" in raw
    best = load_checkpoint(out / "best.pt")
    assert best["voxel_size_um"] == 2.0 and best["patch_size"] == 16
    cal = best["threshold_calibration"]  # calibrated after training, stored in best.pt
    assert best["threshold"] == cal["chosen"] == m["threshold"] and cal["chosen"] in cal["grid"]
    assert cal["dice_at_chosen"] == pytest.approx(max(cal["mean_dice"]), abs=1e-6)
    assert cal["dice_at_chosen"] >= cal["dice_at_0.5"]
    assert best["preprocessing"] == {"clip_percentiles": [0.5, 99.5]}
    assert best["train_config"]["model"]["channels"] == [4, 8] and "optimizer_state" not in best
    model = model_from_checkpoint(best)
    assert model(torch.rand(1, 1, 16, 16, 16)).shape == (1, 1, 16, 16, 16)
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[2]["val_dice"] and not rows[1]["val_dice"]
    from octasim.train.trainer import TrainError
    with pytest.raises(TrainError, match="already holds"):
        train(tiny(), [dataset], out, device="cpu", progress=False)
    with pytest.raises(TrainError, match="nothing to resume"):
        train(tiny(), [dataset], tmp_path / "new", device="cpu", progress=False, resume=True)


@pytest.mark.parametrize("ema_decay", [None, 0.7])
def test_resume_is_exact(dataset, tmp_path, ema_decay):
    from octasim.train.trainer import train
    cfg = tiny(model={"channels": [4, 8], "strides": [2], "num_res_units": 0, "dropout": 0.2}, ema_decay=ema_decay)
    train(cfg, [dataset], tmp_path / "full", steps=8, device="cpu", progress=False)
    train(cfg, [dataset], tmp_path / "split", steps=8, stop_at=4, device="cpu", progress=False)
    assert load_checkpoint(tmp_path / "split" / "last.pt")["step"] == 4
    train(cfg, [dataset], tmp_path / "split", steps=8, resume=True, device="cpu", progress=False)
    a = load_checkpoint(tmp_path / "full" / "last.pt")
    b = load_checkpoint(tmp_path / "split" / "last.pt")
    assert b["step"] == 8
    for k, v in a["model_state"].items():
        assert torch.equal(v, b["model_state"][k]), k
    with open(tmp_path / "split" / "metrics.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == list(range(1, 9))


def test_resume_with_more_steps_follows_the_new_schedule(dataset, tmp_path):
    from octasim.train.trainer import lr_factor, train
    cfg = tiny(calibrate_threshold=False)  # lr 0.01, decay over the last 30 %
    train(cfg, [dataset], tmp_path / "run", steps=4, device="cpu", progress=False)  # its schedule ends at lr 0
    train(cfg, [dataset], tmp_path / "run", steps=10, resume=True, device="cpu", progress=False)
    with open(tmp_path / "run" / "metrics.csv") as f:
        lrs = {int(r["step"]): float(r["lr"]) for r in csv.DictReader(f)}
    for done in range(5, 11):  # row `done` logs the rate of step done - 1 (0-based) of the 10-step schedule
        assert lrs[done] == pytest.approx(0.01 * lr_factor(done - 1, 10, 0.3)), done
    assert lrs[5] == pytest.approx(0.01)


def test_resume_with_other_data_is_refused(dataset, tmp_path):
    import shutil

    from octasim.train.trainer import TrainError, train
    cfg = tiny(calibrate_threshold=False)
    other = make_dataset(tmp_path / "other", seed=1)
    train(cfg, [dataset], tmp_path / "run", steps=8, stop_at=3, device="cpu", progress=False)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["data"][0]["path"] == str(dataset.resolve())
    with pytest.raises(TrainError) as info:
        train(cfg, [other], tmp_path / "run", steps=8, resume=True, device="cpu", progress=False)
    text = str(info.value)
    assert "last.pt" in text and str(dataset.resolve()) in text and str(other.resolve()) in text
    moved = tmp_path / "moved"
    shutil.copytree(dataset, moved)  # the same dataset in another folder is the same data
    assert train(cfg, [moved], tmp_path / "run", steps=8, resume=True, device="cpu", progress=False)["step"] == 8


def test_weight_average_is_what_checkpoints_hold(dataset, tmp_path):
    from octasim.train.trainer import train
    train(tiny(ema_decay=0.5), [dataset], tmp_path / "ema", device="cpu", progress=False)
    last = load_checkpoint(tmp_path / "ema" / "last.pt")
    ema, raw, avg = last["ema_state"], last["raw_model_state"], last["model_state"]
    assert int(ema["n_averaged"]) == 6  # one update per optimizer step
    for k, v in avg.items():
        assert torch.equal(v, ema["module." + k]), k
    assert any(not torch.equal(avg[k], raw[k]) for k in raw)  # the average lags the raw weights
    # the plain run from the same seed trains the same raw weights; its checkpoint holds those
    train(tiny(), [dataset], tmp_path / "plain", device="cpu", progress=False)
    plain = load_checkpoint(tmp_path / "plain" / "last.pt")
    assert "ema_state" not in plain
    for k, v in plain["model_state"].items():
        assert torch.allclose(v, raw[k]), k
    with pytest.raises(ConfigError, match="ema_decay"):
        tiny(ema_decay=1.0)


def test_loss_decreases_on_easy_problem(dataset, tmp_path):
    from octasim.train.trainer import train
    cfg = tiny(steps=40, val_every=40, decay_fraction=0.0, optimizer={"lr": 0.02},
               augment={"histogram_shift_prob": 0.0})
    train(cfg, [dataset], tmp_path / "run", device="cpu", progress=False)
    with open(tmp_path / "run" / "metrics.csv") as f:
        loss = [float(r["loss"]) for r in csv.DictReader(f)]
    assert np.mean(loss[-8:]) < np.mean(loss[:8]) - 0.1, loss


# -- threshold calibration and time budget --------------------------------------------------------------

from tests.test_inference import ProbIsImage as _ProbIsImage  # noqa: E402 - probability = input


def _graded_volume():
    """Label with a bright core (1.0) and a dim rim (0.3), a non-vessel distractor (0.2), background 0."""
    label = np.zeros((16, 16, 16), np.uint8)
    label[4:8, 4:12, 2:14] = 1
    image = np.zeros(label.shape, np.float32)
    image[4:8, 4:12, 2:8] = 1.0
    image[4:8, 4:12, 8:14] = 0.3
    image[10:12, 4:12, 2:14] = 0.2
    return image, label


def test_calibration_chooses_the_best_threshold():
    from octasim.train.trainer import THRESHOLD_GRID, calibrate_threshold
    image, label = _graded_volume()
    cal = calibrate_threshold(_ProbIsImage(), [(image, label)], tiny(), torch.device("cpu"))
    assert cal["grid"] == list(THRESHOLD_GRID) and cal["grid"][0] == 0.05 and cal["grid"][-1] == 0.95
    # Dice 1 for every threshold in [0.2, 0.3); ties go to the one nearest 0.5
    assert cal["chosen"] == 0.25 and cal["dice_at_chosen"] == pytest.approx(1.0)
    assert cal["dice_at_0.5"] == pytest.approx(2 * 192 / (192 + 384))  # the core only
    dice = dict(zip(cal["grid"], cal["mean_dice"]))
    assert dice[0.15] < 1.0 and dice[0.35] < 1.0 and dice[0.05] < 0.9


def test_calibration_sees_what_segment_sees():
    """Threshold calibration predicts through segment's path: a dim volume (values <= 0.5) is scaled by
    its percentiles first, so the calibrated Dice per threshold equals that of segment's probability."""
    from octasim.inference import ModelGrid
    from octasim.metrics import dice
    from octasim.segment import segment_volume
    from octasim.train.trainer import calibrate_threshold
    image, label = _graded_volume()
    dim = 0.5 * image
    model, cfg = _ProbIsImage(), tiny()
    grid = ModelGrid(2.0, (cfg.patch_size,) * 3)
    cal = calibrate_threshold(model, [(dim, label)], cfg, torch.device("cpu"), grid)
    state = {"voxel_size_um": 2.0, "patch_size": cfg.patch_size, "threshold": 0.5}
    prob, _ = segment_volume(dim, (2.0, 2.0, 2.0), state, model=model, overlap=cfg.val_overlap)
    expected = [dice(prob > t, label) for t in cal["grid"]]
    assert cal["mean_dice"] == pytest.approx(expected, abs=1e-6)
    assert cal["chosen"] == 0.25  # on the raw dim image (rim 0.15, distractor 0.1) it would be 0.1


def test_calibration_can_be_switched_off(dataset, tmp_path):
    from octasim.train.trainer import train
    m = train(tiny(calibrate_threshold=False, threshold=0.4, steps=2, val_every=2), [dataset], tmp_path / "r",
              device="cpu", progress=False)
    best = load_checkpoint(tmp_path / "r" / "best.pt")
    assert best["threshold"] == 0.4 == m["threshold"] and "threshold_calibration" not in best


def test_calibration_can_be_recorded_without_applying_it(dataset, tmp_path):
    from octasim.train.trainer import train
    m = train(tiny(apply_calibrated_threshold=False, threshold=0.4, steps=2, val_every=2), [dataset],
              tmp_path / "r", device="cpu", progress=False)
    best = load_checkpoint(tmp_path / "r" / "best.pt")
    assert best["threshold"] == 0.4 == m["threshold"]
    assert best["threshold_calibration"]["applied"] is False and "chosen" in best["threshold_calibration"]


def test_time_budget_stops_and_resumes(dataset, tmp_path):
    from octasim.train.trainer import train
    cfg = tiny(steps=6, val_every=100, calibrate_threshold=False)
    m = train(cfg, [dataset], tmp_path / "r", device="cpu", progress=False, max_seconds=0.0)
    assert m["step"] == 1 and load_checkpoint(tmp_path / "r" / "last.pt")["step"] == 1
    m = train(cfg, [dataset], tmp_path / "r", device="cpu", progress=False, resume=True)
    assert m["step"] == 6


def test_synth_options_are_checked():
    with pytest.raises(ConfigError, match="synth_options.*depth_ofset_um"):
        tiny(on_the_fly={"synth_options": {"depth_ofset_um": 100}})
    cfg = tiny(on_the_fly={"synth_options": {"depth_offset_um": [0, 300], "voxel_size_um": [1.0, 2.0]}})
    assert cfg.on_the_fly.synth_options["voxel_size_um"] == [1.0, 2.0]


def test_init_starts_from_a_trained_model_and_checks_its_network(dataset, tmp_path):
    from octasim.train.trainer import TrainError, train
    cfg = tiny(steps=2, val_every=2, calibrate_threshold=False)
    train(cfg, [dataset], tmp_path / "a", device="cpu", progress=False)
    first = load_checkpoint(tmp_path / "a" / "last.pt")
    # zero learning rate: the fine-tuned weights stay exactly those it started from
    still = tiny(steps=1, val_every=1, calibrate_threshold=False, optimizer={"lr": 0.0})
    train(still, [dataset], tmp_path / "b", device="cpu", progress=False, init=tmp_path / "a" / "last.pt")
    tuned = load_checkpoint(tmp_path / "b" / "last.pt")
    assert tuned["init_from"]["path"].endswith("last.pt") and tuned["init_from"]["step"] == 2
    for key, value in first["model_state"].items():
        if value.is_floating_point() and "running" not in key:
            torch.testing.assert_close(tuned["model_state"][key], value)
    other = tiny(steps=1, calibrate_threshold=False, model={"channels": [4, 8, 16], "strides": [2, 2]})
    with pytest.raises(TrainError, match="differs from the config's model"):
        train(other, [dataset], tmp_path / "c", device="cpu", progress=False, init=tmp_path / "a" / "last.pt")


class _ShiftedAlongI(_ProbIsImage):
    """Probability = the input moved 2 voxels along i: a 'network' that lateral flips change."""

    def forward(self, x):
        return super().forward(torch.roll(x, 2, dims=2))


def test_calibration_averages_lateral_flips_and_validation_does_not():
    """Calibration predicts as segment does by default (four lateral flips); validation, run every few
    hundred steps, skips them and sees segment's ``tta=False`` probability."""
    from octasim.inference import ModelGrid
    from octasim.metrics import dice
    from octasim.segment import segment_volume
    from octasim.train.trainer import calibrate_threshold
    from octasim.train.validation import validate
    image, label = _graded_volume()
    model, cfg = _ShiftedAlongI(), tiny()
    grid = ModelGrid(2.0, (cfg.patch_size,) * 3)
    state = {"voxel_size_um": 2.0, "patch_size": cfg.patch_size, "threshold": 0.5}
    flips, _ = segment_volume(image, (2.0, 2.0, 2.0), state, model=model, overlap=cfg.val_overlap)
    plain, _ = segment_volume(image, (2.0, 2.0, 2.0), state, model=model, overlap=cfg.val_overlap, tta=False)
    cal = calibrate_threshold(model, [(image, label)], cfg, torch.device("cpu"), grid)
    assert cal["mean_dice"] == pytest.approx([dice(flips > t, label) for t in cal["grid"]], abs=1e-6)
    val = validate(model, [(image, label)], cfg, torch.device("cpu"), grid)
    assert val == pytest.approx(dice(plain > cfg.threshold, label), abs=1e-6)
    assert dice(plain > cfg.threshold, label) != pytest.approx(dice(flips > cfg.threshold, label), abs=1e-3)
