"""Tests of ``octasim generate`` run in-process through octasim.cli.main."""
from __future__ import annotations

import json

import numpy as np
import pytest

from octasim.graph import VesselGraph
from octasim.cli import main

SMALL = ["--shape", "32", "--voxel-size", "5", "--seed", "7"]


def test_generate_writes_dataset(tmp_path, capsys):
    out = tmp_path / "ds"
    rc = main(["generate", "--out", str(out), "--n", "2", *SMALL, "--profile", "octa",
               "--set", "len_tail=0.5", "--set", "granular_noise_std=[0.5, 1.0]"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert str(out / "dataset.json") in printed and "contact_sheet.png" in printed
    data = json.loads((out / "dataset.json").read_text())
    assert data["n"] == 2 and data["shape"] == [32, 32, 32] and data["voxel_size_um"] == 5.0
    assert data["config"]["profile"]["len_tail"] == 0.5
    assert data["config"]["profile"]["granular_noise_std"] == [0.5, 1.0]
    for s in data["samples"]:
        assert s["profile"] == "octa" and s["params"]["len_tail"] == 0.5
        assert 0.5 <= s["params"]["granular_noise_std"] <= 1.0
        assert (out / s["image"]).exists() and (out / s["label"]).exists() and (out / s["qc"]).exists()
    # the same command again resumes (nothing to do) and succeeds
    assert main(["generate", "--out", str(out), "--n", "2", *SMALL, "--profile", "octa",
                 "--set", "len_tail=0.5", "--set", "granular_noise_std=[0.5, 1.0]"]) == 0


def test_generate_from_graph_file_and_no_qc(tmp_path):
    from octasim.generator import CortexParams, generate_cortex
    from octasim.graph_io import write_graph

    graph = tmp_path / "cortex.npz"
    write_graph(generate_cortex(CortexParams(size_um=(520, 520, 320)), seed=2), graph)
    out = tmp_path / "ds"
    assert main(["generate", "--out", str(out), "--n", "1", *SMALL, "--graph", str(graph), "--no-qc"]) == 0
    data = json.loads((out / "dataset.json").read_text())
    assert data["samples"][0]["source"]["graph"] == str(graph.resolve())
    assert data["samples"][0]["qc"] is None and not (out / "contact_sheet.png").exists()


def test_unknown_profile_key(tmp_path, capsys):
    rc = main(["generate", "--out", str(tmp_path / "x"), "--n", "1", *SMALL, "--set", "tail_lenght=3"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "octasim generate: error:" in err and "tail_lenght" in err
    assert main(["generate", "--out", str(tmp_path / "x"), "--n", "1", *SMALL, "--set", "oops"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_unknown_profile_name(tmp_path, capsys):
    assert main(["generate", "--out", str(tmp_path / "x"), "--n", "1", *SMALL, "--profile", "ocat"]) == 2
    assert "ocat" in capsys.readouterr().err


def test_graph_without_patch(tmp_path, capsys):
    from octasim.graph_io import write_graph

    rng = np.random.default_rng(1)
    nodes = rng.uniform(0, 50, size=(300, 3))
    graph = tmp_path / "voxel_units.npz"
    write_graph(VesselGraph(nodes, np.stack([np.arange(299), np.arange(1, 300)], 1), np.full(299, 1.5)), graph)
    rc = main(["generate", "--out", str(tmp_path / "x"), "--n", "1", *SMALL, "--graph", str(graph)])
    assert rc == 2
    err = capsys.readouterr().err
    assert str(graph) in err and "no_surface_vessel" in err and "--graph-voxel-size" in err
    assert "--extract surface_radius_um=UM" in err and "graph_voxel_size_um" not in err  # options, not API names
    assert not (tmp_path / "x").exists()  # nothing written: a corrected command can use the same folder


def test_procedural_rejection_is_explained(tmp_path, capsys):
    rc = main(["generate", "--out", str(tmp_path / "x"), "--n", "1", *SMALL, "--extract", "min_edges=1000000"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "procedural cortex" in err and "too_few_edges" in err
    assert "lower --extract surface_radius_um=UM" in err and "--cortex size_um=[X,Y,Z]" in err
    assert not (tmp_path / "x").exists()


def test_folder_holding_another_dataset(tmp_path, capsys):
    out = tmp_path / "ds"
    assert main(["generate", "--out", str(out), "--n", "1", *SMALL, "--no-qc"]) == 0
    rc = main(["generate", "--out", str(out), "--n", "1", "--shape", "32", "--voxel-size", "5",
               "--seed", "8", "--no-qc"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "different dataset" in err and "seed" in err


def test_bad_shape(tmp_path, capsys):
    assert main(["generate", "--out", str(tmp_path / "x"), "--n", "1", "--shape", "32", "32"]) == 2
    assert "--shape" in capsys.readouterr().err


def test_help_lists_units(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = capsys.readouterr().out
    for option in ("--graph-voxel-size", "--voxel-size", "--set", "--workers", "--no-qc", "um"):
        assert option in text


def test_depth_offset_range_is_drawn_per_sample_and_recorded(tmp_path):
    import json

    from octasim.cli import main

    out = tmp_path / "deep"
    assert main(["generate", "--out", str(out), "--n", "2", "--shape", "32", "--no-qc",
                 "--depth-offset-um", "300", "400", "--label-acquisition"]) == 0
    manifest = json.loads((out / "dataset.json").read_text())
    offsets = [s["depth_offset_um"] for s in manifest["samples"]]
    assert all(300 <= d <= 400 for d in offsets) and offsets[0] != offsets[1]
    assert manifest["config"]["label_acquisition"] is True
    assert main(["generate", "--out", str(tmp_path / "bad"), "--n", "1", "--depth-offset-um", "1", "2", "3"]) == 2


def test_rerun_with_no_qc_renders_a_truncated_sample_again(tmp_path, capsys):
    import nibabel as nib

    out = tmp_path / "ds"
    args = ["generate", "--out", str(out), "--n", "2", *SMALL, "--no-qc"]
    assert main(args) == 0
    image = out / "images" / "sample_0001.nii.gz"
    whole = image.read_bytes()
    image.write_bytes(whole[: len(whole) // 3])  # truncated after the run, e.g. by a failed copy
    capsys.readouterr()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert str(image) in err and "truncated" in err and "sample_0001" in err
    assert image.read_bytes() == whole
    assert np.asarray(nib.load(str(image)).dataobj).shape == (32, 32, 32)


@pytest.mark.skipif(not __import__("os").path.isdir("/proc"), reason="needs /proc to find child processes")
def test_workers_die_with_a_killed_parent(tmp_path):
    """SIGKILL of `octasim generate --workers 2` gives the pool no chance to stop its workers; they
    notice their parent is gone and exit instead of rendering samples for nobody."""
    import os
    import signal
    import subprocess
    import sys
    import time

    def children(pid: int) -> list[int]:
        out = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = open(f"/proc/{entry}/stat").read()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry))
        return out

    def alive(pid: int) -> bool:
        try:
            return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    out = tmp_path / "ds"
    proc = subprocess.Popen([sys.executable, "-m", "octasim.cli", "generate", "--out", str(out), "--n", "40",
                             "--shape", "64", "--voxel-size", "4", "--workers", "2", "--no-qc"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    deadline = time.time() + 60
    # the output folder appears before the pool spawns its workers: wait for the processes themselves
    # (two workers; the resource tracker may count as one more child), not for the folder
    while time.time() < deadline and len(workers) < 2:
        time.sleep(0.2)
        workers = children(proc.pid)
    assert workers, "no worker processes found"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(alive(w) for w in workers):
        time.sleep(0.2)
    assert not any(alive(w) for w in workers), "workers still running after their parent was killed"
