"""Tests of octasim.synth: sample synthesis and dataset folders (small procedural volumes)."""
from __future__ import annotations

import json
import os
import pickle
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from octasim.synth import (DatasetError, NoPatchError, SynthConfig, generate_dataset, load_dataset,
                             render_sample, sample_id)
from octasim.graph import VesselGraph

# 40^3 voxels of 4 um: a 160 um FOV, cut from a small procedural block (fast)
SMALL = dict(shape=(40, 40, 40), voxel_size_um=4.0, seed=3)


def files_of(root: Path) -> dict[str, bytes]:
    """Relative path -> bytes of the volumes and records of a dataset folder."""
    out = {}
    for sub in ("images", "labels", "records"):
        for p in sorted((root / sub).iterdir()):
            out[f"{sub}/{p.name}"] = p.read_bytes()
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("ds") / "data"
    manifest = generate_dataset(SynthConfig(**SMALL), out, n=3, workers=1, progress=False)
    return out, manifest


def test_config_round_trip_and_validation():
    cfg = SynthConfig(profile="octa", shape=32, voxel_size_um=3, extract={"min_edges": 5})
    assert cfg.shape == (32, 32, 32)
    again = SynthConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    res = cfg.resolved()
    assert isinstance(res.profile, dict) and res.profile_name == "octa"
    assert SynthConfig.from_dict(json.loads(json.dumps(res.to_dict()))).resolved() == res
    with pytest.raises(ValueError, match="unknown dataset config"):
        SynthConfig.from_dict({"shap": 3})
    with pytest.raises(ValueError, match="shape"):
        SynthConfig(shape=(3, 3))


def test_render_sample_is_deterministic():
    cfg = SynthConfig(**SMALL)
    a, b, c = render_sample(cfg, 0), render_sample(cfg, 0), render_sample(cfg, 1)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    assert a.record == b.record
    assert not np.array_equal(a.image, c.image)
    assert a.record["seed"] != c.record["seed"]
    assert a.image.dtype == np.float32 and a.image.shape == (40, 40, 40)
    assert 0.0 <= a.image.min() and a.image.max() <= 1.0
    assert a.label.dtype == np.uint8 and set(np.unique(a.label)) <= {0, 1} and a.label.any()
    rec = a.record
    assert rec["source"]["graph"] == "procedural" and "block_seed" in rec["source"]
    assert rec["profile"] == "paper" and 0.0 <= rec["params"]["granular_noise_std"] <= 1.4
    # the image shows the vessels: brighter inside the label than outside on average
    assert a.image[a.label > 0].mean() > a.image[a.label == 0].mean()
    # another dataset seed gives other samples
    other = render_sample(SynthConfig(**{**SMALL, "seed": 4}), 0)
    assert not np.array_equal(a.image, other.image)


def test_render_sample_from_given_patches():
    from octasim.extract import Patch

    # one straight lateral tube through a 40^3 volume of 4 um at depth 80 um, radius 8 um
    g = VesselGraph(nodes=[[0, 80, 80], [160, 80, 80]], edges=[[0, 1]], radius=[8.0])
    patch = Patch(g, np.zeros(3), np.full(3, 160.0), (0, 0))
    s = render_sample(SynthConfig(**SMALL), 5, patch_source=[patch])
    assert s.record["source"]["graph"] == "given"
    assert s.label[:, 20, 20].all() and not s.label[:, 5, 5].any()
    # the projection tail lies below the vessel (larger k), not above it
    col = s.image[10:30, 20, :].mean(axis=0)
    assert col[25:30].mean() > col[10:15].mean()


def test_dataset_files(dataset):
    out, manifest = dataset
    assert manifest == out / "dataset.json"
    data = load_dataset(out)
    assert data["format"] == "octasim-dataset" and data["version"] == 1
    assert data["n"] == 3 and len(data["samples"]) == 3
    assert data["shape"] == [40, 40, 40] and data["voxel_size_um"] == 4.0
    assert data["config"]["profile"]["granular_noise_std"] == [0.0, 1.4]  # resolved profile stored
    for i, s in enumerate(data["samples"]):
        assert s["id"] == sample_id(i) == f"sample_{i:04d}"
        assert isinstance(s["seed"], int) and s["source"]["graph"] == "procedural"
        assert s["profile"] == "paper" and "granular_noise_std" in s["params"]
        img = nib.load(out / s["image"])
        lab = nib.load(out / s["label"])
        for vol in (img, lab):
            assert np.allclose(np.diag(vol.affine)[:3], (0.004, 0.004, -0.004))  # 4 um in mm, depth inferior
            assert np.allclose(vol.affine[:3, 3], 0.0)  # voxel 0's centre at world 0
            assert vol.header.get_xyzt_units()[0] == "mm"
        im = np.asarray(img.dataobj)
        la = np.asarray(lab.dataobj)
        assert im.dtype == np.float32 and im.shape == (40, 40, 40) and 0 <= im.min() and im.max() <= 1
        assert la.dtype == np.uint8 and set(np.unique(la)) <= {0, 1}
        assert (out / s["qc"]).stat().st_size > 1000
        # the written sample is exactly render_sample's
        ref = render_sample(SynthConfig.from_dict(data["config"]), i)
        assert np.array_equal(im, ref.image) and np.array_equal(la, ref.label)
        assert ref.record["seed"] == s["seed"] and ref.record["params"] == s["params"]
    assert (out / "contact_sheet.png").stat().st_size > 1000


def test_rerun_into_another_folder_is_byte_identical(dataset, tmp_path):
    out, _ = dataset
    other = tmp_path / "again"
    generate_dataset(SynthConfig(**SMALL), other, n=3, workers=1, progress=False, qc=False)
    assert files_of(other).keys() == files_of(out).keys()
    for name, data in files_of(out).items():
        if name.startswith("records/"):
            a, b = json.loads(data), json.loads((other / name).read_bytes())
            assert a.pop("qc") is not None and b.pop("qc") is None
            assert a == b
        else:
            assert (other / name).read_bytes() == data, name


def test_workers_give_identical_output(dataset, tmp_path):
    out, _ = dataset
    par = tmp_path / "par"
    generate_dataset(SynthConfig(**SMALL), par, n=3, workers=2, progress=False)
    for name, data in files_of(out).items():
        assert (par / name).read_bytes() == data, name
    assert json.loads((par / "dataset.json").read_text())["samples"] == \
        json.loads((out / "dataset.json").read_text())["samples"]


def test_resume_remakes_only_missing(tmp_path):
    out = tmp_path / "res"
    cfg = SynthConfig(**SMALL)
    generate_dataset(cfg, out, n=3, progress=False)
    before = files_of(out)
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.*") if p.parent.name != out.name}
    # interruption: sample 1 lost its record (written last) and left a temporary file behind
    (out / "records" / "sample_0001.json").unlink()
    (out / "images" / "sample_0001.nii.gz").unlink()
    stale = out / "labels" / ".sample_0001.tmp-999.nii.gz"
    stale.write_bytes(b"half a file")
    time.sleep(0.05)
    made = []
    generate_dataset(cfg, out, n=3, progress=False, on_sample=lambda rec: made.append(rec["id"]))
    assert made == ["sample_0001"]
    assert not stale.exists()
    assert files_of(out) == before
    for p, t in mtimes.items():
        if "sample_0001" not in p.name:
            assert p.stat().st_mtime_ns == t, p
    # a bigger n extends the dataset, re-making nothing
    made.clear()
    generate_dataset(cfg, out, n=4, progress=False, on_sample=lambda rec: made.append(rec["id"]))
    assert made == ["sample_0003"] and len(load_dataset(out)["samples"]) == 4


def test_rerun_remakes_samples_whose_files_were_truncated(tmp_path):
    out = tmp_path / "trunc"
    cfg = SynthConfig(**SMALL)
    generate_dataset(cfg, out, n=3, progress=False, qc=False)
    before = files_of(out)
    image = out / "images" / "sample_0000.nii.gz"
    image.write_bytes(before["images/sample_0000.nii.gz"][: len(before["images/sample_0000.nii.gz"]) // 2])
    label = out / "labels" / "sample_0002.nii.gz"
    label.write_bytes(before["labels/sample_0002.nii.gz"][:-4])  # only the end of the gzip stream lost
    made, broken = [], []
    generate_dataset(cfg, out, n=3, progress=False, qc=False, on_sample=lambda rec: made.append(rec["id"]),
                     on_broken=lambda sid, path: broken.append((sid, path)))
    assert made == ["sample_0000", "sample_0002"]
    assert broken == [("sample_0000", image), ("sample_0002", label)]
    assert files_of(out) == before  # rendered again, byte for byte
    assert len(load_dataset(out)["samples"]) == 3


def test_different_dataset_in_folder_is_refused(dataset, tmp_path):
    out, _ = dataset
    with pytest.raises(DatasetError, match=r"different dataset.*seed"):
        generate_dataset(SynthConfig(**{**SMALL, "seed": 99}), out, n=3, progress=False)
    with pytest.raises(DatasetError, match=r"profile\.len_tail"):
        prof = {"len_tail": 0.5}
        generate_dataset(SynthConfig(**SMALL, profile=prof), out, n=3, progress=False)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not empty"):
        generate_dataset(SynthConfig(**SMALL), junk, n=1, progress=False)


def test_load_dataset_errors(dataset, tmp_path):
    with pytest.raises(DatasetError, match="no such dataset manifest"):
        load_dataset(tmp_path)
    out, _ = dataset
    broken = tmp_path / "broken"
    broken.mkdir()
    data = json.loads((out / "dataset.json").read_text())
    (broken / "dataset.json").write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="missing file"):
        load_dataset(broken)


def test_graph_without_patches_explains_why(tmp_path):
    from octasim.graph_io import write_graph

    # a graph in voxel units: radii of 1-2 "um" never pass the 13 um surface-vessel rule
    rng = np.random.default_rng(0)
    nodes = rng.uniform(0, 60, size=(400, 3))
    edges = np.stack([np.arange(399), np.arange(1, 400)], axis=1)
    path = tmp_path / "voxels.npz"
    write_graph(VesselGraph(nodes, edges, rng.uniform(1, 2, 399)), path)
    cfg = SynthConfig(**{**SMALL, "graph": str(path)})
    with pytest.raises(NoPatchError) as err:
        render_sample(cfg, 0)
    msg = str(err.value)  # the library names SynthConfig's settings; `octasim generate` its options
    assert str(path) in msg and "no_surface_vessel" in msg and "graph_voxel_size_um" in msg and "--" not in msg
    problem = err.value.problem  # the same as data
    assert problem.report.failed_rule == "no_surface_vessel" and problem.fixes[0] == "graph_units"
    assert "give its voxel size (--graph-voxel-size UM)" in problem.message({"graph_voxel_size_um": "--graph-voxel-size UM"})
    again = pickle.loads(pickle.dumps(err.value))  # as a worker process or dask hands it back
    assert str(again) == msg and again.problem == problem


def test_profile_is_read_once_and_never_serialized_per_volume(tmp_path, monkeypatch):
    """`octasim generate` reads the profile files once per process (it used to read paper.yaml three
    times: in the command, when the dataset resolved its config, and when the first sample did), and
    rendering with a profile dict (on-the-fly training with overrides) reads no file and serializes no
    profile to JSON per volume."""
    from octasim import profiles
    from octasim.synth import config as synth_config
    from octasim.cli import main

    monkeypatch.setattr(synth_config, "_PROFILES", {})
    reads, dumped = [], []
    read_yaml, dumps = profiles._read_yaml, json.dumps
    monkeypatch.setattr(profiles, "_read_yaml", lambda path: reads.append(path.name) or read_yaml(path))
    assert main(["generate", "--out", str(tmp_path / "d"), "--n", "2", "--shape", "24", "--voxel-size", "5",
                 "--no-qc", "--profile", "octa"]) == 0
    assert sorted(reads) == ["octa.yaml", "paper.yaml"]
    profile = profiles.load_profile("octa", {"len_tail": 0.7})
    reads.clear()
    monkeypatch.setattr(json, "dumps", lambda obj, *a, **k: dumped.append(dumps(obj, *a, **k)) or dumped[-1])
    for i in range(2):
        render_sample(SynthConfig(profile=profile, profile_name="octa", shape=24, voxel_size_um=5.0), i)
    assert reads == [] and not any("len_tail" in text for text in dumped)


def test_graph_file_source(tmp_path):
    from octasim.generator import CortexParams, generate_cortex
    from octasim.graph_io import write_graph

    path = tmp_path / "cortex.npz"
    write_graph(generate_cortex(CortexParams(size_um=(520, 520, 320)), seed=1), path)
    cfg = SynthConfig(**{**SMALL, "graph": str(path)})
    a, b = render_sample(cfg, 0), render_sample(cfg, 0)
    assert np.array_equal(a.image, b.image)
    src = a.record["source"]
    assert src["graph"] == str(path.resolve()) and src["n_patches"] >= 1 and len(src["origin_um"]) == 3
