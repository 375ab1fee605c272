"""Patch extractor: each rule on hand-built graphs whose answers are known."""
from __future__ import annotations

import numpy as np
import pytest

from octasim.extract import NO_PILLARS, RULES, ExtractParams, ExtractionReport, Knob, extract_patches
from octasim.graph import VesselGraph

FOV = (100.0, 100.0, 100.0)
PARAMS = ExtractParams(fov_um=FOV, min_nodes_per_pillar=10, surface_radius_um=13.0,
                       cortex_depth_um=300.0, min_edges=20)


def _chain(x0: float, n: int, z_lo: float, z_hi: float, rng: np.random.Generator):
    """n nodes inside the pillar x0..x0+100 (y 0..90), sorted by depth, joined as a path."""
    nodes = np.column_stack([x0 + rng.uniform(5, 95, n), rng.uniform(0, 90, n),
                             np.sort(rng.uniform(z_lo, z_hi, n))])
    nodes[0, 2] = z_lo
    edges = np.column_stack([np.arange(n - 1), np.arange(1, n)])
    return nodes, edges, np.full(n - 1, 3.0)


def five_pillar_graph() -> tuple[VesselGraph, dict]:
    """A row of 5 pillars of 100 um: pillar p fails rule p (0..3); pillar 4 yields one patch."""
    rng = np.random.default_rng(0)
    parts = [
        _chain(0, 5, 10, 200, rng),      # 0: 5 nodes < 10
        _chain(100, 30, 10, 200, rng),   # 1: radius 3 everywhere: no surface vessel
        _chain(200, 30, 250, 290, rng),  # 2: surface vessel at z 250, r 20 -> 230..330 > 300
        _chain(300, 12, 5, 200, rng),    # 3: surface vessel but 11 edges < 20
        _chain(400, 80, 20, 200, rng),   # 4: surface vessel at z 20, r 15 -> box z 5..105
    ]
    parts[2][2][0] = 20.0
    parts[3][2][0] = 14.0
    parts[4][2][0] = 15.0
    parts[0][0][0, :2] = 0.0  # lateral minimum of the graph at (0, 0)
    nodes, edges, radius, offset = [], [], [], 0
    for n, e, r in parts:
        nodes.append(n); edges.append(e + offset); radius.append(r); offset += len(n)
    g = VesselGraph(np.concatenate(nodes), np.concatenate(edges), np.concatenate(radius))
    first_node_of_pillar4 = sum(len(p[0]) for p in parts[:4])
    return g, {"p4_first": first_node_of_pillar4}


def test_each_rule_rejects_one_pillar_and_one_patch_remains():
    g, _ = five_pillar_graph()
    patches, report = extract_patches(g, PARAMS)
    assert report.n_pillars == 5
    assert report.rejected == {r: 1 for r in RULES}
    assert list(report.rejected) == list(RULES)  # rule order
    assert report.n_patches == len(patches) == 1
    patch = patches[0]
    assert patch.pillar == (4, 0)
    np.testing.assert_allclose(patch.origin_um, [400.0, 0.0, 20.0 - 15.0])
    np.testing.assert_allclose(patch.size_um, FOV)
    assert patch.graph.meta["pillar"] == [4, 0]


def test_patch_keeps_exactly_the_edges_touching_the_box_whole_and_translated():
    g, _ = five_pillar_graph()
    (patch,), _ = extract_patches(g, PARAMS)
    lo = patch.origin_um
    hi = lo + patch.size_um
    inside = ((g.nodes >= lo) & (g.nodes < hi)).all(axis=1)
    expected = inside[g.edges].any(axis=1)
    assert patch.graph.n_edges == expected.sum() >= 20
    # same edges, same geometry: translated back, endpoint pairs match the source's
    got = np.sort(np.round(patch.graph.nodes[patch.graph.edges] + lo, 6).reshape(len(patch.graph.edges), -1), axis=0)
    want = np.sort(np.round(g.nodes[g.edges[expected]], 6).reshape(expected.sum(), -1), axis=0)
    np.testing.assert_allclose(got, want)
    np.testing.assert_allclose(np.sort(patch.graph.radius), np.sort(g.radius[expected]))
    # crossing edges are kept whole: some endpoint lies below the box bottom after translation
    z = patch.graph.nodes[:, 2]
    assert z.max() > 100.0 and z.min() >= 0.0
    assert patch.graph.nodes[:, :2].min() >= 0 and patch.graph.nodes[:, :2].max() < 100.0


def test_surface_start_uses_largest_radius_in_pillar():
    g, info = five_pillar_graph()
    # a thick diving vessel deeper in pillar 4 moves the patch start up by its radius
    deep_edge = np.flatnonzero((g.edges[:, 0] >= info["p4_first"] + 10))[0]
    g.radius[deep_edge] = 40.0
    (patch,), _ = extract_patches(g, PARAMS)
    np.testing.assert_allclose(patch.origin_um[2], 20.0 - 40.0)


def test_outside_brain_nodes_dropped_first():
    g, info = five_pillar_graph()
    flag = np.zeros(g.n_nodes, bool)
    flag[info["p4_first"] + 5:info["p4_first"] + 80] = True  # pillar 4 keeps 5 nodes
    g.node_attrs["outside_brain"] = flag
    patches, report = extract_patches(g, PARAMS)
    assert patches == [] and report.rejected["too_few_nodes"] == 2
    # with the flag ignored the patch comes back
    patches, _ = extract_patches(g, ExtractParams(**{**PARAMS.__dict__, "outside_attr": None}))
    assert len(patches) == 1


def test_nodes_deeper_than_cortex_do_not_count():
    g, info = five_pillar_graph()
    params = ExtractParams(**{**PARAMS.__dict__, "cortex_depth_um": 120.0})
    patches, report = extract_patches(g, params)
    # pillar 2 has no node above 120 um; pillar 4 still fits (ends at 105 um)
    assert report.n_pillars == 5
    assert [p.pillar for p in patches] == [(4, 0)]


def test_scaled_to():
    p = ExtractParams().scaled_to((250, 250, 250))
    assert p.fov_um == (250.0, 250.0, 250.0)
    assert p.min_nodes_per_pillar == 25 and p.min_edges == 250
    assert p.surface_radius_um == 13.0 and p.cortex_depth_um == 3000.0
    tiny = ExtractParams().scaled_to((10, 10, 10))
    assert tiny.min_nodes_per_pillar == 1 and tiny.min_edges == 1
    with pytest.raises(ValueError):
        ExtractParams(fov_um=(0, 100, 100))


def test_report_summary_has_one_line_per_rule():
    g, _ = five_pillar_graph()
    _, report = extract_patches(g, PARAMS)
    lines = report.summary().splitlines()
    for rule in RULES:
        assert sum(rule in line for line in lines) == 1
    assert report.advice() == "" and report.failed_rule is None
    d = report.to_dict()
    assert d["n_patches"] == 1 and d["params"]["min_edges"] == 20


def _dense_block(rng, size_um: float, n: int, scale: float) -> VesselGraph:
    """A random 3D block (um) with pial vessels on top; ``scale`` < 1 mimics voxel units."""
    nodes = rng.uniform(0, size_um, (n, 3))
    order = np.argsort(nodes[:, 0] * 7 + nodes[:, 1] * 3 + nodes[:, 2])
    edges = np.column_stack([order[:-1], order[1:]])
    radius = rng.uniform(2, 4, len(edges))
    top = nodes[edges].max(axis=1)[:, 2] < size_um * 0.1  # edges near the surface are pial
    radius[top] = 20.0
    return VesselGraph(nodes * scale, edges, radius * scale)


def test_voxel_unit_graph_advice_mentions_voxel_size():
    rng = np.random.default_rng(1)
    params = ExtractParams().scaled_to((200, 200, 200))
    um = _dense_block(rng, 400, 6000, 1.0)
    patches, report = extract_patches(um, params)
    assert len(patches) == 4
    vox = VesselGraph(um.nodes / 4.0, um.edges, um.radius / 4.0)  # the same graph in 4 um voxels
    patches, report = extract_patches(vox, params)
    assert patches == []
    assert report.failed_rule == "no_surface_vessel"
    advice = report.advice()  # the library names its own parameters, no command-line option
    assert "no_surface_vessel" in advice and "voxel" in advice and "read_graph(voxel_size_um=)" in advice
    assert "--" not in advice


def test_advice_words_the_settings_with_the_callers_names():
    """Which rule failed is data; a caller (the command line) names the settings its own way."""
    rng = np.random.default_rng(1)
    vox = _dense_block(rng, 400, 6000, 0.25)
    _, report = extract_patches(vox, ExtractParams().scaled_to((200, 200, 200)))
    names = {k.value: f"<{k.name}>" for k in Knob}
    advice = report.advice(names)
    assert "<GRAPH_VOXEL_SIZE>" in advice and "<SURFACE_RADIUS>" in advice
    assert "read_graph" not in advice and "surface_radius_um" not in advice


def test_too_few_edges_advice():
    g, _ = five_pillar_graph()
    params = ExtractParams(**{**PARAMS.__dict__, "min_edges": 10_000})
    patches, report = extract_patches(g, params)
    assert patches == [] and report.rejected["too_few_edges"] == 2 and report.failed_rule == "too_few_edges"
    assert "Lower min_edges" in report.advice()
    assert "Lower --min-edges" in report.advice({Knob.MIN_EDGES.value: "--min-edges"})


def test_empty_and_deep_graphs():
    g, _ = five_pillar_graph()
    deep = g.translate([0, 0, 5000])
    patches, report = extract_patches(deep, PARAMS)
    assert patches == [] and report.n_pillars == 0 and "depth" in report.advice()
    assert report.failed_rule == NO_PILLARS
    assert isinstance(report, ExtractionReport)


def test_graph_exactly_n_fovs_wide_gives_n_pillars():
    g, _ = five_pillar_graph()
    # a node on the far face x = 500 (and y = 100) must not open a sixth column / second row
    nodes = np.vstack([g.nodes, [[500.0, 100.0, 150.0]]])
    edges = np.vstack([g.edges, [[g.n_nodes - 1, g.n_nodes]]])
    g2 = VesselGraph(nodes, edges, np.append(g.radius, 3.0))
    patches, report = extract_patches(g2, PARAMS)
    assert report.n_pillars == 5 and len(patches) == 1


def test_local_crop_equals_vesselgraph_crop():
    from octasim.extract import _LocalCropper

    rng = np.random.default_rng(2)
    n = 4000
    nodes = rng.uniform(0, [300, 300, 200], (n, 3))
    nodes[:50, 0] = 100.0  # nodes exactly on pillar faces
    nodes[50:100, 1] = 200.0
    edges = rng.integers(0, n, (6000, 2))
    g = VesselGraph(nodes, edges, rng.uniform(1, 5, 6000), {"flag": np.arange(n) % 3 == 0},
                    {"kind": rng.integers(0, 5, 6000)})
    cropper = _LocalCropper(g, np.zeros(2), np.array([100.0, 100.0]), 3, 3)
    for i, j, z in [(0, 0, 0.0), (1, 1, 50.0), (2, 1, -10.0), (1, 2, 150.0)]:
        lo = np.array([100.0 * i, 100.0 * j, z])
        hi = lo + 100.0
        a, b = cropper.crop(i, j, lo, hi), g.crop(lo, hi)
        assert a.n_edges > 0
        np.testing.assert_array_equal(a.nodes, b.nodes)
        np.testing.assert_array_equal(a.edges, b.edges)
        np.testing.assert_array_equal(a.radius, b.radius)
        np.testing.assert_array_equal(a.node_attrs["flag"], b.node_attrs["flag"])
        np.testing.assert_array_equal(a.edge_attrs["kind"], b.edge_attrs["kind"])


def test_advice_names_the_voxel_size_the_graph_was_read_with():
    rng = np.random.default_rng(1)
    g = _dense_block(rng, 400, 6000, 0.25)
    g.meta["voxel_size_um"] = 1.0  # as read_graph records for a voxel format read without --voxel-size
    patches, report = extract_patches(g, ExtractParams().scaled_to((50, 50, 50)))
    assert patches == []
    advice = report.advice()
    assert "Units look wrong" in advice and "voxel size of 1 um" in advice and "read_graph(voxel_size_um=)" in advice


def test_pillar_grid_too_large_is_refused_before_allocating():
    g, _ = five_pillar_graph()
    with pytest.raises(ValueError, match=r"spans 494.7 x 89.28 um laterally, which makes 4.42e\+10 pillars of "
                                         r"0\.001 x 0\.001 um .*limit 10,000,000.*--fov-um"):
        extract_patches(g, ExtractParams(fov_um=(1e-3, 1e-3, 500.0)))
