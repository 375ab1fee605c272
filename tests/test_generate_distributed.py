"""Scaling out ``octasim generate``: a dask cluster (--scheduler) and job arrays (--shard / --finalize)
give the same files as one process."""
from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import pytest
from distributed import WorkerPlugin

from octasim.synth import (SHARDS_DIR, MissingSamplesError, SynthConfig, finalize_dataset,
                             generate_dataset)
from octasim.cli import main

# the cheapest settings of tests/test_cli_generate.py, smaller still: 4 samples of 24^3 voxels
N = 4
CLI = ["--n", str(N), "--shape", "24", "--voxel-size", "5", "--seed", "7"]
CONFIG = dict(shape=(24, 24, 24), voxel_size_um=5.0, seed=7)


def files_of(root: Path, subdirs=("images", "labels", "records", "qc")) -> dict[str, bytes]:
    """Relative path -> bytes of every per-sample file (hidden temporary files included)."""
    return {f"{sub}/{p.name}": p.read_bytes()
            for sub in subdirs if (root / sub).is_dir() for p in sorted((root / sub).iterdir())}


def assert_same_dataset(ref: Path, other: Path, qc: bool = True) -> None:
    """Per-sample files byte-identical, same manifest samples; shared files identical too."""
    subdirs = ("images", "labels", "records", "qc") if qc else ("images", "labels", "records")
    a, b = files_of(ref, subdirs), files_of(other, subdirs)
    assert a.keys() == b.keys()
    for name in a:
        assert a[name] == b[name], name
    assert (ref / "dataset.json").read_bytes() == (other / "dataset.json").read_bytes()
    if qc:
        assert (ref / "contact_sheet.png").read_bytes() == (other / "contact_sheet.png").read_bytes()
    assert not (other / SHARDS_DIR).exists()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The one-process dataset (with QC pictures and contact sheet)."""
    out = tmp_path_factory.mktemp("ref") / "ds"
    assert main(["generate", "--out", str(out), *CLI, "--workers", "1"]) == 0
    return out


def test_shards_and_finalize_equal_one_process(reference, tmp_path, capsys):
    out = tmp_path / "ds"
    assert main(["generate", "--out", str(out), *CLI, "--shard", "1/2"]) == 0
    assert main(["generate", "--out", str(out), *CLI, "--shard", "0/2"]) == 0
    # shards write per-sample files and their own shard file only, no shared file
    assert not (out / "dataset.json").exists() and not (out / "contact_sheet.png").exists()
    shard_files = sorted(p.name for p in (out / SHARDS_DIR).iterdir())
    assert shard_files == ["shard_0_of_2.json", "shard_1_of_2.json"]
    assert json.loads((out / SHARDS_DIR / "shard_1_of_2.json").read_text())["complete"] is True
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"sample_000{i}.nii.gz" for i in range(N)]
    capsys.readouterr()
    assert main(["generate", "--out", str(out), *CLI, "--finalize"]) == 0
    assert "dataset.json" in capsys.readouterr().out
    assert_same_dataset(reference, out)
    # a shard run again on the finished folder has nothing to do and leaves it valid
    assert main(["generate", "--out", str(out), *CLI, "--shard", "0/2"]) == 0
    assert json.loads((out / "dataset.json").read_text())["complete"] is True


def test_finalize_names_missing_and_damaged_samples(tmp_path, capsys):
    out = tmp_path / "ds"
    assert main(["generate", "--out", str(out), *CLI, "--no-qc", "--shard", "0/2"]) == 0
    capsys.readouterr()
    assert main(["generate", "--out", str(out), *CLI, "--no-qc", "--finalize"]) == 2
    err = capsys.readouterr().err
    assert "indices 1, 3" in err and "shard 1/2 (never started)" in err and "records/sample_0001.json" in err
    assert not (out / "dataset.json").exists()
    # a damaged file is named, with the shard that should render it again
    image = out / "images" / "sample_0002.nii.gz"
    image.write_bytes(image.read_bytes()[:200])
    with pytest.raises(MissingSamplesError) as info:
        finalize_dataset(SynthConfig(**CONFIG), out, N, qc=False, progress=False)
    assert info.value.indices == [1, 2, 3]
    msg = str(info.value)
    assert "shard 0/2 (finished, but its files were removed or damaged since)" in msg
    assert "images/sample_0002.nii.gz cannot be read completely" in msg
    # rerunning the shards repairs the set
    assert main(["generate", "--out", str(out), *CLI, "--no-qc", "--shard", "0/2"]) == 0
    assert main(["generate", "--out", str(out), *CLI, "--no-qc", "--shard", "1/2"]) == 0
    assert main(["generate", "--out", str(out), *CLI, "--no-qc", "--finalize"]) == 0
    assert json.loads((out / "dataset.json").read_text())["complete"] is True


def test_shard_options_are_checked(tmp_path, capsys):
    for bad in ("2/2", "1", "a/b", "-1/3"):
        assert main(["generate", "--out", str(tmp_path / "x"), *CLI, f"--shard={bad}"]) == 2
        assert "--shard" in capsys.readouterr().err
    assert main(["generate", "--out", str(tmp_path / "x"), *CLI, "--shard", "0/2", "--finalize"]) == 2
    assert "without --shard" in capsys.readouterr().err
    # a shard of another dataset (other seed) into the same folder is refused
    out = tmp_path / "ds"
    assert main(["generate", "--out", str(out), *CLI, "--no-qc", "--shard", "0/2"]) == 0
    other = [a if a != "7" else "8" for a in CLI]
    assert main(["generate", "--out", str(out), *other, "--no-qc", "--shard", "1/2"]) == 2
    assert "shard_0_of_2.json" in capsys.readouterr().err


@pytest.mark.slow
def test_dask_local_cluster_equals_one_process(reference, tmp_path):
    out = tmp_path / "ds"
    made = []
    generate_dataset(SynthConfig(**CONFIG), out, N, progress=False, scheduler="local", workers=2,
                     on_sample=lambda rec: made.append(rec["id"]))
    assert sorted(made) == [f"sample_000{i}" for i in range(N)]
    assert_same_dataset(reference, out)
    # a rerun skips the finished samples: nothing to send, so not even a scheduler is needed
    generate_dataset(SynthConfig(**CONFIG), out, N, progress=False, scheduler="tcp://127.0.0.1:9",
                     on_sample=lambda rec: made.append(rec["id"]))
    assert len(made) == N
    assert_same_dataset(reference, out)


class KillOnce(WorkerPlugin):
    """Worker plugin: the worker that starts the task of ``sample`` first dies (SIGKILL) while the task
    runs; ``flag`` (a file) records the pid, so the rerun elsewhere is left alone."""

    name = "octasim-test-kill-once"

    def __init__(self, sample: str, flag: str):
        self.sample, self.flag = sample, flag

    def transition(self, key, start, finish, **kwargs) -> None:
        if finish == "executing" and self.sample in str(key):
            try:
                fd = os.open(self.flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            threading.Timer(0.02, os.kill, (os.getpid(), signal.SIGKILL)).start()


@pytest.mark.slow
def test_worker_killed_mid_sample_loses_nothing(reference, tmp_path):
    from distributed import Client, LocalCluster

    out = tmp_path / "ds"
    flag = tmp_path / "killed.pid"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster, set_as_default=False) as client:
        client.register_plugin(KillOnce("sample_0001", str(flag)))
        generate_dataset(SynthConfig(**CONFIG), out, N, progress=False, scheduler=cluster.scheduler_address)
    pid = int(flag.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # that worker did die while rendering sample_0001
    assert_same_dataset(reference, out)  # complete, identical, no temporary file left behind


def test_unreachable_scheduler_is_explained(tmp_path, capsys):
    from octasim.synth import folder

    old, folder.SCHEDULER_TIMEOUT_S = folder.SCHEDULER_TIMEOUT_S, 1
    try:
        rc = main(["generate", "--out", str(tmp_path / "ds"), *CLI, "--no-qc", "--scheduler", "tcp://127.0.0.1:9"])
    finally:
        folder.SCHEDULER_TIMEOUT_S = old
    assert rc == 2
    assert "cannot reach the dask scheduler at 'tcp://127.0.0.1:9'" in capsys.readouterr().err
