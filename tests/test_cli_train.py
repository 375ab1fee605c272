"""`octasim train` through the CLI dispatcher, in process."""
from __future__ import annotations

import csv

import torch

from octasim.model import load_checkpoint
from octasim.cli import main
from tests.test_train import make_dataset


def test_cli_train_and_resume(tmp_path, capsys):
    data = make_dataset(tmp_path / "ds", n=3, shape=24)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("model: {channels: [4, 8], strides: [2], num_res_units: 0}\n"
                   "batch_size: 1\npatch_size: 16\nval_every: 2\nn_val: 1\nnum_workers: 0\n")
    out = tmp_path / "run"
    common = ["train", "--data", str(data), "--out", str(out), "--config", str(cfg), "--device", "cpu",
              "--no-progress", "--seed", "4"]
    args = common + ["--steps", "2"]
    assert main(args) == 0
    assert "validation Dice" in capsys.readouterr().out
    assert load_checkpoint(out / "best.pt")["train_config"]["seed"] == 4
    assert main(args) == 2  # a second run into the same folder without --resume
    assert "already holds a training run" in capsys.readouterr().err
    assert main(common + ["--steps", "3", "--resume"]) == 0
    assert load_checkpoint(out / "last.pt")["step"] == 3


def test_cli_train_errors(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "octasim train: error:" in err and "dataset.json" in err
    assert main(["train", "--out", str(tmp_path / "r")]) == 2
    assert "--data" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("stepz: 3\n")
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--config", str(bad)]) == 2
    assert "stepz" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "r2"), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_negative_workers_is_blamed_on_the_option(tmp_path, capsys):
    data = make_dataset(tmp_path / "ds", n=2, shape=16)
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "r"), "--workers", "-1"]) == 2
    err = capsys.readouterr().err
    assert "--workers" in err and "-1" in err
    assert "default.yaml" not in err and "num_workers" not in err


def test_cli_stop_at_ends_early_keeps_the_schedule_and_resume_continues(tmp_path, capsys):
    data = make_dataset(tmp_path / "ds", n=3, shape=24)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("model: {channels: [4, 8], strides: [2], num_res_units: 0}\noptimizer: {lr: 0.01}\n"
                   "batch_size: 1\npatch_size: 16\nval_every: 2\nlog_every: 1\nn_val: 1\nnum_workers: 0\n"
                   "decay_fraction: 1.0\ncalibrate_threshold: false\n")  # lr falls linearly over the whole run

    def run(out, *extra):
        return main(["train", "--data", str(data), "--out", str(out), "--config", str(cfg), "--device", "cpu",
                     "--no-progress", "--steps", "4", *extra])

    split, full = tmp_path / "split", tmp_path / "full"
    assert run(split, "--stop-at", "0") == 2 and not split.exists()
    assert "--stop-at must be >= 1" in capsys.readouterr().err
    assert run(split, "--stop-at", "3") == 0
    assert "trained 3 steps" in capsys.readouterr().out
    last = load_checkpoint(split / "last.pt")
    assert last["step"] == 3 and last["total_steps"] == 4  # the call ended early, the run did not
    with open(split / "metrics.csv") as f:
        lrs = [float(r["lr"]) for r in csv.DictReader(f)]
    assert lrs == [0.01, 0.0075, 0.005]  # the 4-step schedule (a 3-step one would give 0.01, 0.0067, 0.0033)
    assert run(split, "--resume") == 0
    assert "trained 4 steps" in capsys.readouterr().out
    assert run(full) == 0
    a, b = load_checkpoint(split / "last.pt"), load_checkpoint(full / "last.pt")
    assert a["step"] == b["step"] == 4
    for key, value in b["model_state"].items():  # as if never stopped
        assert torch.equal(a["model_state"][key], value), key
    with open(split / "metrics.csv") as f, open(full / "metrics.csv") as g:
        assert [(r["step"], r["loss"], r["lr"]) for r in csv.DictReader(f)] == \
               [(r["step"], r["loss"], r["lr"]) for r in csv.DictReader(g)]
    assert run(split, "--resume") == 2  # nothing left to train
    assert "already at step 4" in capsys.readouterr().err
