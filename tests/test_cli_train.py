"""`octasim train` through the CLI dispatcher, in process."""
from __future__ import annotations

from octasim.model import load_checkpoint
from pipelines.cli import main
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
