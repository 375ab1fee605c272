"""Distributed training: rank-disjoint data streams (in process), and `torchrun -m octasim.cli train` with
two CPU processes (gloo) end to end: one run folder, exact resume, a resume with another world size refused."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from octasim.model import load_checkpoint
from octasim.train.trainer import TrainError, World, rank_device, train, training_dataset, world_from_env
from tests.test_train import fake_renderer, make_dataset, tiny

ROOT = Path(__file__).resolve().parents[1]


# -- rank-disjoint data (in process) ------------------------------------------------------------------

def test_patch_ranks_split_every_global_batch(dataset_vols):
    from octasim.train.data import rank_patch_index
    assert [rank_patch_index(n, 3) for n in range(7)] == list(range(7))  # one process: the stream itself
    seen = sorted(rank_patch_index(n, 2, r, 3) for r in range(3) for n in range(8))
    assert seen == list(range(24))  # 3 ranks x 4 steps x 2 patches: each stream position once
    cfg = tiny(batch_size=2)
    one = training_dataset(cfg, 0, 4, False, volumes=dataset_vols)  # a single process, batch 2 x 2
    ranks = [training_dataset(cfg, 0, 2, False, volumes=dataset_vols, world=World(r, 2)) for r in (0, 1)]
    assert all(len(d) == 4 for d in ranks)
    # step s of rank r: patches 4s + 2r, 4s + 2r + 1 of the one stream; the ranks never draw the same patch
    for r, d in enumerate(ranks):
        for n in range(4):
            assert torch.equal(d[n]["image"], one[4 * (n // 2) + 2 * r + n % 2]["image"]), (r, n)
    assert not torch.equal(ranks[0][0]["image"], ranks[1][0]["image"])
    # a resumed rank continues its own share exactly
    resumed = training_dataset(cfg, 1, 2, False, volumes=dataset_vols, world=World(1, 2))
    assert len(resumed) == 2 and torch.equal(resumed[0]["image"], ranks[1][2]["image"])


@pytest.fixture(scope="module")
def dataset_vols(tmp_path_factory):
    from octasim.train.data import load_dataset_samples, load_volumes
    root = make_dataset(tmp_path_factory.mktemp("ddp_ds"), n=3, shape=24)
    return load_volumes(load_dataset_samples([root]).samples)


@pytest.mark.parametrize("workers", [1, 2])
def test_on_the_fly_ranks_render_disjoint_volumes(monkeypatch, workers):
    import octasim.train.data as data
    cfg = tiny(on_the_fly={"shape": [24, 24, 24], "crops_per_volume": 2})  # batch size 2: a volume per batch
    rendered: dict[tuple[int, int], list[int]] = {}

    def batches(rank: int, start: int, n: int) -> list[torch.Tensor]:
        """Batches ``start`` ... ``start + n - 1`` of a rank, as its loader takes them from ``workers`` workers."""
        streams = []
        for wid in range(workers):
            def renderer(profile, seed, index, key=(rank, wid)):
                rendered.setdefault(key, []).append(index)
                return fake_renderer(profile, seed, index)
            monkeypatch.setattr(data, "get_worker_info", lambda: SimpleNamespace(id=wid, num_workers=workers))
            it = iter(training_dataset(cfg, start, start + n, True, renderer, world=World(rank, 2)))
            streams.append([torch.cat([next(it)["image"] for _ in range(2)]) for _ in range(-(-n // workers))])
        return [streams[j % workers][j // workers] for j in range(n)]

    first = {rank: batches(rank, 0, 2 * workers) for rank in (0, 1)}
    volumes = [i for v in rendered.values() for i in v]
    assert len(volumes) == len(set(volumes)) == 4 * workers  # no volume rendered twice, by any rank
    assert sorted(volumes) == list(range(4 * workers))  # together: the first volumes of one stream
    assert not torch.equal(first[0][0], first[1][0])
    for rank in (0, 1):  # a rank resumed at its batch 1 continues its own stream exactly
        assert all(torch.equal(a, b) for a, b in zip(first[rank][1:], batches(rank, 1, 2 * workers - 1)))


def test_world_from_the_environment(monkeypatch):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert world_from_env() == World() and not World().distributed and World().main
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun with one process: plain training
    assert world_from_env() == World()
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert world_from_env() == World(3, 4, 1) and not world_from_env().main
    assert rank_device("cpu", World(3, 4, 1)) == torch.device("cpu")


# -- torchrun end to end (CPU, gloo) --------------------------------------------------------------------

TINY_YAML = ("model: {channels: [4, 8], strides: [2], num_res_units: 0, dropout: 0.2}\n"
             "batch_size: 1\npatch_size: 16\nval_every: 2\nlog_every: 1\nnum_workers: 0\nseed: 5\n")


def torchrun(*args: str, n: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
           "-m", "octasim.cli", "train", "--device", "cpu", "--no-progress", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def metric_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_torchrun_trains_on_a_dataset(tmp_path):
    data = make_dataset(tmp_path / "ds", n=3, shape=24)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY_YAML + "n_val: 1\n")
    run = tmp_path / "run"
    proc = torchrun("--data", str(data), "--out", str(run), "--config", str(cfg), "--steps", "3")
    assert proc.stdout.count("trained 3 steps") == 1  # process 0 reports, alone
    assert "2 processes, effective batch 2 patches per step" in proc.stdout
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "curves.png", "last.pt", "metrics.csv"]
    assert [int(r["step"]) for r in metric_rows(run)] == [1, 2, 3]  # one row per step: one writer
    last, best = load_checkpoint(run / "last.pt"), load_checkpoint(run / "best.pt")
    assert last["step"] == 3 and last["world_size"] == 2 and len(last["rng_ranks"]) == 2
    assert "threshold_calibration" in best and not any(k.startswith("module.") for k in best["model_state"])
    # another world size cannot continue the run: here one process, in process
    from octasim.train.config import config_from_dict
    from octasim.train.trainer import _check_resume, data_identity
    with pytest.raises(TrainError, match=r"trained by 2 process\(es\), this resume runs 1.*--nproc-per-node 2"):
        train(config_from_dict(last["train_config"]), [data], run, steps=5, resume=True, device="cpu",
              progress=False)
    single = {k: v for k, v in last.items() if k != "world_size"}  # as a single process writes it ...
    with pytest.raises(TrainError, match=r"trained by 1 process\(es\), this resume runs 2.*without torchrun"):
        _check_resume(single, run / "last.pt", config_from_dict(last["train_config"]), data_identity([data]),
                      False, 5, world_size=2)  # ... resumed by two


def test_torchrun_on_the_fly_stops_together_and_resumes_exactly(tmp_path):
    cfg = tmp_path / "otf.yaml"
    cfg.write_text(TINY_YAML + "on_the_fly: {shape: [24, 24, 24], crops_per_volume: 2, n_val: 1, "
                               "profiles: [{name: octa, weight: 1}]}\n")
    common = ["--on-the-fly", "--config", str(cfg), "--steps", "4"]
    split, full = tmp_path / "split", tmp_path / "full"
    torchrun(*common, "--out", str(split), "--max-minutes", "0.0001")  # time is up after step 1, on both ranks
    assert load_checkpoint(split / "last.pt")["step"] == 1
    torchrun(*common, "--out", str(split), "--resume")
    torchrun(*common, "--out", str(full))
    a, b = load_checkpoint(split / "last.pt"), load_checkpoint(full / "last.pt")
    assert a["step"] == b["step"] == 4
    for key, value in b["model_state"].items():  # dropout draws per rank are restored too
        assert torch.equal(a["model_state"][key], value), key
    assert [r["loss"] for r in metric_rows(split)] == [r["loss"] for r in metric_rows(full)]
    assert not torch.equal(b["rng_ranks"][0]["torch"], b["rng_ranks"][1]["torch"])
