"""Procedural cortex generator: validity, determinism and published mouse-cortex statistics."""
from __future__ import annotations

import json

import networkx as nx
import numpy as np
import pytest
from scipy.spatial import cKDTree

from octasim.generator import (KIND_ARTERIOLE, KIND_CAPILLARY, KIND_PIAL_ARTERY, KIND_PIAL_VEIN, KIND_VENULE,
                               CortexParams, generate_cortex)
from octasim.paths import DATA_DIR

SIZE = (600.0, 600.0, 600.0)


@pytest.fixture(scope="module")
def block():
    g = generate_cortex(CortexParams(size_um=SIZE), seed=0)
    return g, g.stats(box=([0.0, 0.0, 0.0], list(SIZE)))


def _dive_points(g) -> np.ndarray:
    """(x, y) of nodes joining a penetrating vessel to its pial tree (the top of each dive)."""
    kind = g.edge_attrs["kind"]
    pen = np.zeros(g.n_nodes, bool)
    pen[g.edges[np.isin(kind, [KIND_ARTERIOLE, KIND_VENULE])].ravel()] = True
    pial = np.zeros(g.n_nodes, bool)
    pial[g.edges[kind >= KIND_PIAL_ARTERY].ravel()] = True
    return g.nodes[pen & pial, :2]


def test_valid_inside_block_and_kinds(block):
    g, _ = block
    g.validate()
    assert (g.nodes >= 0).all() and (g.nodes <= np.array(SIZE)).all()
    kind = g.edge_attrs["kind"]
    assert kind.dtype == np.int8
    assert set(np.unique(kind).tolist()) == {0, 1, 2, 3, 4}
    assert (g.degrees() > 0).all()  # no isolated nodes
    assert (g.edge_lengths() > 0).all()


def test_edges_are_short_and_tortuous(block):
    g, _ = block
    length = g.edge_lengths()
    assert 5.0 <= np.median(length) <= 15.0
    # capillary segments are curved: path length exceeds the end-to-end distance
    kind = g.edge_attrs["kind"]
    ratios = []
    for seg in g.segments():
        if len(seg) > 3 and (kind[seg] == KIND_CAPILLARY).all():
            nodes = np.unique(g.edges[seg].ravel())
            ends = [n for n in nodes if (g.edges[seg] == n).sum() == 1]
            if len(ends) == 2:
                ratios.append(length[seg].sum() / np.linalg.norm(g.nodes[ends[0]] - g.nodes[ends[1]]))
    assert len(ratios) > 100
    assert 1.05 <= np.median(ratios) <= 1.5


def test_published_statistics(block):
    g, st = block
    assert 500.0 <= st["length_density_mm_per_mm3"] <= 900.0
    assert 0.01 <= st["volume_fraction"] <= 0.03
    assert 2.0 <= st["median_capillary_radius_um"] <= 3.0
    assert st["capillary_length_share"] > 0.7
    assert st["degree3_share_of_branch_points"] >= 0.8
    # capillary segments (branch point to branch point, capillary edges only): median 40-80 um
    kind, length = g.edge_attrs["kind"], g.edge_lengths()
    seg_len = [length[s].sum() for s in g.segments() if (kind[s] == KIND_CAPILLARY).all()]
    assert 40.0 <= np.median(seg_len) <= 80.0
    # capillaries are thinner than 4 um, larger vessels are not capillaries
    assert (g.radius[kind == KIND_CAPILLARY] < 4.0).all()
    assert (g.radius[kind != KIND_CAPILLARY] >= 3.5).all()


def test_penetrating_vessel_spacing(block):
    g, _ = block
    tops = _dive_points(g)
    assert len(tops) >= 10
    d, _ = cKDTree(tops).query(tops, k=2)
    assert 90.0 <= np.median(d[:, 1]) <= 160.0
    # they dive: penetrating edges reach deep into the block
    kind = g.edge_attrs["kind"]
    pen_z = g.nodes[g.edges[np.isin(kind, [KIND_ARTERIOLE, KIND_VENULE])].ravel(), 2]
    assert pen_z.max() >= 0.9 * SIZE[2]
    assert 3.5 <= np.median(g.radius[np.isin(kind, [KIND_ARTERIOLE, KIND_VENULE])]) <= 15.0


def test_pial_vessels_lie_on_the_surface(block):
    g, _ = block
    kind = g.edge_attrs["kind"]
    pial = kind >= KIND_PIAL_ARTERY
    z = g.nodes[g.edges[pial], 2]  # (P, 2)
    r = g.radius[pial]
    # centre at depth = radius (lower wall touches the surface); at a junction a thinner branch
    # rises to the centre of the thicker vessel it joins, never deeper than the thickest one there
    assert (z.min(axis=1) >= r - 1e-9).all()
    assert np.median(np.abs(z.mean(axis=1) - r)) < 1e-6
    node_rmax = np.zeros(g.n_nodes)
    np.maximum.at(node_rmax, g.edges[pial].ravel(), np.repeat(r, 2))
    assert (z <= node_rmax[g.edges[pial]] + 1e-9).all()
    assert (r >= 8.0).all()


def test_surface_vessels_in_every_pillar():
    """The patch extractor needs an edge with r > 13 um at the surface in each 500 um pillar."""
    size = (1000.0, 1000.0, 200.0)
    for seed in range(3):
        g = generate_cortex(CortexParams(size_um=size), seed=seed)
        mid = g.nodes[g.edges].mean(axis=1)
        big = (g.radius > 13.0) & (mid[:, 2] < 60.0)
        cell = np.floor(mid[big, :2] / 500.0).clip(0, 1).astype(int)
        assert len({tuple(c) for c in cell}) == 4, f"seed {seed}: a pillar lacks a surface vessel"


def test_large_pial_trunks_in_2mm_block():
    g = generate_cortex(CortexParams(size_um=(2000.0, 2000.0, 150.0)), seed=0)
    kind = g.edge_attrs["kind"]
    pial_r = g.radius[kind >= KIND_PIAL_ARTERY]
    assert pial_r.max() >= 25.0
    assert (pial_r >= 25.0).sum() >= 20  # a trunk, not a single edge
    assert g.radius[kind == KIND_PIAL_VEIN].max() > 13.0 and g.radius[kind == KIND_PIAL_ARTERY].max() > 13.0


def test_mostly_connected(block):
    g, _ = block
    nxg = g.to_networkx()
    largest = max(nx.connected_components(nxg), key=len)
    assert nxg.subgraph(largest).number_of_edges() > 0.9 * g.n_edges


def test_deterministic_and_seed_dependent():
    p = CortexParams(size_um=(300.0, 300.0, 250.0))
    a, b, c = generate_cortex(p, seed=3), generate_cortex(p, seed=3), generate_cortex(p, seed=4)
    np.testing.assert_array_equal(a.nodes, b.nodes)
    np.testing.assert_array_equal(a.edges, b.edges)
    np.testing.assert_array_equal(a.radius, b.radius)
    np.testing.assert_array_equal(a.edge_attrs["kind"], b.edge_attrs["kind"])
    assert a.meta == b.meta
    assert a.nodes.shape != c.nodes.shape or not np.array_equal(a.nodes, c.nodes)


def test_meta_records_params_and_seed():
    p = CortexParams(size_um=[300, 300, 250])  # lists / ints are accepted
    g = generate_cortex(p, seed=7)
    assert g.meta["seed"] == 7
    assert g.meta["params"]["size_um"] == [300.0, 300.0, 250.0]
    assert g.meta["params"]["capillary_spacing_um"] == p.capillary_spacing_um
    json.dumps(g.meta)  # plain data
    assert CortexParams(**{k: v for k, v in g.meta["params"].items()}) == p


@pytest.mark.parametrize("bad", [dict(size_um=(100, 0, 100)), dict(arteriole_fraction=1.5),
                                 dict(capillary_spacing_um=0), dict(pial_radius_um=(20, 10))])
def test_bad_params(bad):
    with pytest.raises(ValueError):
        CortexParams(**bad)


def test_shipped_example_matches_generator():
    from octasim.graph_io import read_graph

    shipped = read_graph(DATA_DIR / "example_graph.npz")
    fresh = generate_cortex(CortexParams(size_um=(600.0, 600.0, 600.0)), seed=0)
    np.testing.assert_array_equal(shipped.edges, fresh.edges)
    np.testing.assert_allclose(shipped.nodes, fresh.nodes, rtol=0, atol=1e-6)
    np.testing.assert_allclose(shipped.radius, fresh.radius, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(shipped.edge_attrs["kind"], fresh.edge_attrs["kind"])
    assert shipped.meta["seed"] == 0 and shipped.meta["params"]["size_um"] == [600.0, 600.0, 600.0]


def test_edge_estimate_matches_a_generated_block():
    from octasim.generator import estimate_edges

    p = CortexParams(size_um=(1000.0, 800.0, 600.0))
    n = generate_cortex(p, seed=1).n_edges
    assert 0.85 * n < estimate_edges(p) < 1.15 * n


def test_too_large_block_is_refused_before_any_work(monkeypatch):
    import octasim.generator as gen

    def started(*args, **kwargs):
        raise AssertionError("generation started: the size must be checked first")

    monkeypatch.setattr(gen, "_hex_points", started)
    with pytest.raises(ValueError, match=r"size_um 200000 200000 1200: a block of 4.8e\+04 mm\^3 would hold about "
                                         r"2.61e\+09 vessel edges .*limit is 20,000,000 edges"):
        generate_cortex(CortexParams(size_um=(200000.0, 200000.0, 1200.0)))
