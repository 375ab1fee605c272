"""Vessel-fraction realism of synthetic samples: depth offset, voxel-size range, pial radius, generous labels."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from octasim.synth import SynthConfig, generate_dataset, render_sample, sample_seed
from octasim.synth.sources import extract_params_for, window_patch
from octasim.extract import Patch
from octasim.graph import VesselGraph

# 48^3 voxels of 2 um: a 96 um FOV (fast); the procedural block is at least 500 um wide
BASE = dict(profile="two-photon", shape=(48, 48, 48), voxel_size_um=2.0, seed=5)


def fractions(cfg: SynthConfig, n: int = 3) -> list[float]:
    return [render_sample(cfg, i).record["vessel_fraction"] for i in range(n)]


def test_offset_zero_is_the_reference_rule():
    """depth_offset_um = 0 (default) renders exactly what the extractor's rule gives: the patch
    from a fresh block, streams spawned from the sample seed as before the option existed."""
    from octasim.extract import extract_patches
    from octasim.generator import CortexParams, generate_cortex
    from octasim.profiles import load_profile, sample_parameters
    from octasim.simulate import simulate
    from octasim.voxelize import voxelize

    cfg = SynthConfig(**BASE)
    got = render_sample(cfg, 1)
    same = render_sample(SynthConfig(**BASE, depth_offset_um=0.0), 1)
    assert np.array_equal(got.image, same.image) and np.array_equal(got.label, same.label)
    assert got.record["depth_offset_um"] == 0.0 and got.record["voxel_size_um"] == 2.0
    # independent re-implementation of the reference path
    patch_ss, param_ss, sim_ss = np.random.SeedSequence(sample_seed(cfg, 1)).spawn(3)
    rng = np.random.default_rng(patch_ss)
    block = generate_cortex(CortexParams(size_um=(520.0, 520.0, 96.0 + 150.0)), seed=int(rng.integers(2**31)))
    patches, _ = extract_patches(block, extract_params_for(cfg))
    patch = patches[int(rng.integers(len(patches)))]
    params = sample_parameters(load_profile("two-photon"), np.random.default_rng(param_ss))
    maps = voxelize(patch.graph, cfg.shape, 2.0, occupancy=True)
    image = np.clip(simulate(maps, params, np.random.default_rng(sim_ss)), 0, 1)
    assert np.array_equal(got.image, image) and np.array_equal(got.label, maps.label)
    # manifests of datasets that do not use the new options are unchanged
    assert "depth_offset_um" not in cfg.to_dict() and "label_min_occupancy" not in cfg.to_dict()


def test_vessel_fraction_covers_deep_cortex_and_surface():
    deep = SynthConfig(**BASE, depth_offset_um=[300.0, 400.0])
    deep_f = fractions(deep)
    assert max(deep_f) < 0.05, deep_f          # capillaries and penetrating vessels only
    recs = [render_sample(deep, i).record for i in range(2)]
    for r in recs:
        assert 300.0 <= r["depth_offset_um"] <= 400.0
    assert recs[0]["depth_offset_um"] != recs[1]["depth_offset_um"]
    # a small FOV (48 um) at the surface over a wide pial vessel is mostly vessel
    surface = SynthConfig(**{**BASE, "voxel_size_um": 1.0}, pial_radius_min_um=[30.0, 45.0])
    surf_f = fractions(surface)
    assert min(surf_f) > 0.15, surf_f
    rec = render_sample(surface, 0).record
    assert 30.0 <= rec["pial_radius_min_um"] <= 45.0
    # the reference rule sits between the two
    ref_f = fractions(SynthConfig(**BASE))
    assert max(deep_f) < np.mean(ref_f) < min(surf_f)


def test_deep_window_lies_below_the_extractor_start():
    d = 200.0
    s0 = render_sample(SynthConfig(**BASE), 2)
    s1 = render_sample(SynthConfig(**BASE, depth_offset_um=d), 2)
    # same block and patch (same streams), window moved down by d
    assert s1.record["source"]["block_seed"] == s0.record["source"]["block_seed"]
    o0, o1 = np.array(s0.record["source"]["origin_um"]), np.array(s1.record["source"]["origin_um"])
    assert np.allclose(o1 - o0, [0.0, 0.0, d])
    assert s1.record["source"]["size_um"] == [96.0, 96.0, 96.0]


def test_voxel_size_range_changes_the_scale_and_is_recorded(tmp_path):
    cfg = SynthConfig(**{**BASE, "voxel_size_um": [1.0, 2.0]}, profile_name=None)
    recs = [render_sample(cfg, i).record for i in range(3)]
    sizes = [r["voxel_size_um"] for r in recs]
    assert all(1.0 <= v <= 2.0 for v in sizes) and len(set(sizes)) == 3
    for r, v in zip(recs, sizes):  # the patch covers the grid at the drawn voxel size
        assert r["source"]["size_um"] == pytest.approx([48 * v] * 3)
    assert cfg.nominal_voxel_size_um == 1.5 and cfg.fov_um == (96.0, 96.0, 96.0)
    assert SynthConfig(voxel_size_um=[1.0, 4.0], voxel_size_log=True).nominal_voxel_size_um == 2.0  # geometric middle
    # written volumes carry the drawn voxel size; the manifest the nominal one and the range
    manifest = json.loads(generate_dataset(cfg, tmp_path / "d", n=2, progress=False, qc=False).read_text())
    assert manifest["voxel_size_um"] == 1.5 and manifest["config"]["voxel_size_um"] == [1.0, 2.0]
    for s in manifest["samples"]:
        zooms = nib.load(tmp_path / "d" / s["image"]).header.get_zooms()
        assert zooms == pytest.approx([s["voxel_size_um"] / 1000.0] * 3, rel=1e-5)


def test_generous_label_from_occupancy():
    plain = render_sample(SynthConfig(**BASE), 0)
    wide = render_sample(SynthConfig(**BASE, label_min_occupancy=0.25), 0)
    assert np.array_equal(plain.image, wide.image)  # the image does not change
    assert (wide.label >= plain.label).all() and wide.label.sum() > 1.05 * plain.label.sum()
    # without occupancy rendering the image stays the binary-label one
    a = render_sample(SynthConfig(**BASE, occupancy=False), 0)
    b = render_sample(SynthConfig(**BASE, occupancy=False, label_min_occupancy=0.25), 0)
    assert np.array_equal(a.image, b.image) and b.label.sum() > a.label.sum()


def test_given_patches_are_windowed():
    # a lateral tube at depth 130 um: invisible in a 0..96 um window, centred in a 100..196 um one
    g = VesselGraph(nodes=[[0, 48, 130], [96, 48, 130]], edges=[[0, 1]], radius=[6.0])
    patch = Patch(g, np.zeros(3), np.array([96.0, 96.0, 250.0]), (0, 0))
    top = render_sample(SynthConfig(**BASE, depth_offset_um=0.0), 0, patch_source=[patch])
    assert top.label.sum() == 0
    low = render_sample(SynthConfig(**BASE, depth_offset_um=100.0), 0, patch_source=[patch])
    assert low.label[:, 24, 15].all() and low.record["source"]["origin_um"] == [0.0, 0.0, 100.0]
    w = window_patch(patch, (96.0, 96.0, 96.0), 100.0)
    assert np.allclose(w.graph.nodes[:, 2], 30.0)


def test_bad_values_are_refused():
    for kw, match in ((dict(depth_offset_um=-5), "depth_offset_um"), (dict(depth_offset_um=[300, 100]), "lo > hi"),
                      (dict(voxel_size_um=[0.0, 2.0]), "voxel size"), (dict(label_min_occupancy=0.0), "label_min"),
                      (dict(pial_radius_min_um=-1), "pial_radius_min_um")):
        with pytest.raises(ValueError, match=match):
            SynthConfig(**{**BASE, **kw})
    again = SynthConfig.from_dict(json.loads(json.dumps(SynthConfig(**BASE, depth_offset_um=[0, 50]).to_dict())))
    assert again.depth_offset_um == [0.0, 50.0]


def test_label_on_scanner_grid():
    from octasim.simulate.acquisition import label_on_scanner_grid

    lab = np.zeros((4, 4, 10), bool)
    lab[1, 1, 4] = True
    # 5 um slices on a 1 um grid: the vessel fills the whole first slice (voxels 0-4), not the second
    assert np.flatnonzero(label_on_scanner_grid(lab, [1, 1, 5])[1, 1]).tolist() == [0, 1, 2, 3, 4]
    assert label_on_scanner_grid(lab, [1, 1, 1]).sum() == 1  # no coarser axis: unchanged
    wide = label_on_scanner_grid(lab, [2, 1, 1])
    assert wide[:, 1, 4].tolist() == [True, True, False, False]


@pytest.mark.parametrize("shape, f", [((10, 7, 13), (1.0, 2.6, 5.0)), ((48, 40, 33), (1.5, 1.5, 2.5)),
                                      ((5, 3, 2), (3.0, 1.2, 4.0)), ((9, 9, 9), (1.0, 1.0, 1.0))])
def test_label_cells_are_the_image_scanner_grid(shape, f):
    """The label drawn on the scanner grid has exactly the cells the acquisition stage samples the
    image on (one rule, ``scanner_shape``, for both)."""
    from octasim.simulate.acquisition import downsample, label_on_scanner_grid, scanner_shape

    f = np.asarray(f)
    image_grid = downsample(np.zeros(shape, np.float32), f).shape
    assert image_grid in (scanner_shape(shape, f), shape)  # unchanged when no axis is coarser
    for axis, n in enumerate(shape):
        cells = set()  # light one voxel at a time: the lit runs are the label's cells along the axis
        for p in range(n):
            lab = np.zeros(shape, bool)
            lab[tuple(p if a == axis else 0 for a in range(3))] = True
            line = label_on_scanner_grid(lab, f)[tuple(slice(None) if a == axis else 0 for a in range(3))]
            cells.add(tuple(np.flatnonzero(line)))
        assert len(cells) == min(image_grid[axis], n), (axis, sorted(cells))
        assert sorted(i for c in cells for i in c) == list(range(n))  # a partition of the axis


def test_label_acquisition_follows_the_sampled_slices():
    base = dict(BASE, profile="two-photon")  # acquisition on in the profile (slices 2-5 um)
    plain = render_sample(SynthConfig(**base), 0)
    drawn = render_sample(SynthConfig(**base, label_acquisition=True), 0)
    assert np.array_equal(plain.image, drawn.image)
    assert (drawn.label >= plain.label).all() and drawn.label.sum() > plain.label.sum()
    # profiles without acquisition keep the exact label
    a = render_sample(SynthConfig(**{**base, "profile": "paper"}), 0)
    b = render_sample(SynthConfig(**{**base, "profile": "paper"}, label_acquisition=True), 0)
    assert np.array_equal(a.label, b.label)


def test_graph_file_with_depth_offset(tmp_path):
    from octasim.generator import CortexParams, generate_cortex
    from octasim.graph_io import write_graph

    path = tmp_path / "cortex.npz"
    write_graph(generate_cortex(CortexParams(size_um=(520, 520, 500)), seed=1), path)
    top = SynthConfig(**{**BASE, "graph": str(path)})
    deep = SynthConfig(**{**BASE, "graph": str(path)}, depth_offset_um=[200.0, 300.0])
    s_top, s_deep = render_sample(top, 0), render_sample(deep, 0)
    d = s_deep.record["depth_offset_um"]
    assert 200.0 <= d <= 300.0 and s_deep.record["source"]["size_um"] == [96.0, 96.0, 96.0]
    # same pillar grid: the deep window lies d below the extractor's start of its patch
    start = s_deep.record["source"]["origin_um"][2] - d
    assert start < 50.0 and s_deep.record["vessel_fraction"] < s_top.record["vessel_fraction"]
    assert np.array_equal(render_sample(deep, 0).image, s_deep.image)


def test_graph_voxel_size_range_extracts_patches_once(tmp_path, monkeypatch):
    """A graph's patches depend on the config alone (largest FOV, deepest offset), so a voxel-size range
    extracts them once per process (it used to extract again for every drawn FOV, i.e. every sample);
    each sample's window of its drawn FOV is cut from them."""
    from octasim import extract
    from octasim.generator import CortexParams, generate_cortex
    from octasim.graph_io import write_graph

    path = tmp_path / "cortex.npz"
    write_graph(generate_cortex(CortexParams(size_um=(520, 520, 320)), seed=1), path)
    calls = []
    real = extract.extract_patches
    monkeypatch.setattr(extract, "extract_patches", lambda *a, **k: calls.append(a[1].fov_um) or real(*a, **k))
    cfg = SynthConfig(**{**BASE, "graph": str(path), "voxel_size_um": [1.0, 2.0]})
    samples = [render_sample(cfg, i) for i in range(3)]
    assert calls == [(96.0, 96.0, 96.0)]  # the largest FOV, once
    for s in samples:
        v = s.record["voxel_size_um"]
        assert 1.0 <= v <= 2.0 and s.record["source"]["size_um"] == pytest.approx([48 * v] * 3)
        assert s.record["source"]["n_patches"] >= 1 and s.label.any()
    assert np.array_equal(render_sample(cfg, 1).image, samples[1].image)
