"""VesselGraph: geometry, sub-graphs, statistics on hand-made graphs with known answers, networkx, validation."""
from __future__ import annotations

import math

import numpy as np
import pytest

from octasim.graph import GraphError, VesselGraph


def canonical(g: VesselGraph) -> np.ndarray:
    """Edges as sorted (x_a, y_a, z_a, x_b, y_b, z_b, r) rows, independent of edge order and direction."""
    a, b = g.nodes[g.edges[:, 0]], g.nodes[g.edges[:, 1]]
    swap = np.array([tuple(p) > tuple(q) for p, q in zip(a.tolist(), b.tolist())], dtype=bool)
    lo = np.where(swap[:, None], b, a)
    hi = np.where(swap[:, None], a, b)
    rows = np.concatenate([lo, hi, g.radius[:, None]], 1)
    return rows[np.lexsort(rows.T[::-1])]


@pytest.fixture
def tree() -> VesselGraph:
    """Two branch points (degrees 3 and 4), one degree-2 node, all edges 10 um long.

    0 (0,0,0) -- 1 (10,0,0), 0 -- 2 (0,10,0), 0 -- 3 (0,0,10) -- 4 (0,0,20) [r 2],
    1 -- 5 (10,10,0), 1 -- 6 (20,0,0), 1 -- 7 (10,-10,0); radius 1 elsewhere.
    """
    nodes = [(0, 0, 0), (10, 0, 0), (0, 10, 0), (0, 0, 10), (0, 0, 20), (10, 10, 0), (20, 0, 0), (10, -10, 0)]
    edges = [(0, 1), (0, 2), (0, 3), (3, 4), (1, 5), (1, 6), (1, 7)]
    radius = [1, 1, 1, 2, 1, 1, 1]
    return VesselGraph(nodes, edges, radius, node_attrs={"tag": np.arange(8)},
                       edge_attrs={"kind": np.array([0, 0, 1, 1, 2, 2, 2])}, meta={"name": "tree"})


# ------------------------------------------------------------------ geometry
def test_orientation_lateral_vertical_and_45_degrees():
    nodes = [(0, 0, 0), (5, 0, 0), (0, 0, 5), (3, 0, 3), (0, 4, 0), (0, 0, -7)]
    g = VesselGraph(nodes, [(0, 1), (0, 2), (0, 3), (0, 4), (0, 5), (2, 0)], np.ones(6))
    np.testing.assert_allclose(g.orientation(), [1.0, 0.0, 0.5, 1.0, 0.0, 0.0], atol=1e-12)


def test_edge_lengths_and_degrees(tree):
    np.testing.assert_allclose(tree.edge_lengths(), 10.0)
    assert tree.degrees().tolist() == [3, 4, 1, 2, 1, 1, 1, 1]


def test_crop_keeps_edges_with_one_end_inside_whole(tree):
    sub = tree.crop((-1, -1, -1), (5, 5, 5))  # only node 0 inside
    assert sub.n_edges == 3
    # edges kept whole: their outer nodes keep their positions (10 um away, outside the box)
    np.testing.assert_allclose(np.sort(sub.edge_lengths()), [10, 10, 10])
    kept = {tuple(p) for p in sub.nodes.tolist()}
    assert kept == {(0, 0, 0), (10, 0, 0), (0, 10, 0), (0, 0, 10)}
    assert sorted(sub.node_attrs["tag"].tolist()) == [0, 1, 2, 3]
    assert sorted(sub.edge_attrs["kind"].tolist()) == [0, 0, 1]
    # an edge with both ends outside is dropped, even if it passes through the box
    g = VesselGraph([(-10, 1, 1), (10, 1, 1)], [(0, 1)], [1.0])
    assert g.crop((0, 0, 0), (5, 5, 5)).n_edges == 0
    # the upper face is exclusive
    assert tree.crop((15, -1, -1), (20, 1, 1)).n_edges == 0
    assert tree.crop((15, -1, -1), (20.1, 1, 1)).n_edges == 1
    assert tree.crop((20, -1, -1), (30, 1, 1)).n_edges == 1  # the lower face is inclusive


def test_translate_moves_nodes_only(tree):
    moved = tree.translate((1, -2, 3.5))
    np.testing.assert_allclose(moved.nodes, tree.nodes + [1, -2, 3.5])
    np.testing.assert_array_equal(moved.edges, tree.edges)
    np.testing.assert_array_equal(moved.radius, tree.radius)
    assert moved.meta == tree.meta
    assert tree.nodes[0].tolist() == [0, 0, 0]  # original untouched


def test_remove_isolated_nodes_reindexes():
    nodes = np.arange(15, dtype=float).reshape(5, 3)
    g = VesselGraph(nodes, [(0, 2), (2, 4)], [1.0, 2.0], node_attrs={"id": np.array([10, 11, 12, 13, 14])})
    h = g.remove_isolated_nodes()
    assert h.n_nodes == 3
    assert h.edges.tolist() == [[0, 1], [1, 2]]
    np.testing.assert_array_equal(h.nodes, nodes[[0, 2, 4]])
    assert h.node_attrs["id"].tolist() == [10, 12, 14]
    np.testing.assert_allclose(h.edge_lengths(), g.edge_lengths())


def test_split_long_edges_preserves_length_and_attributes():
    nodes = [(0, 0, 0), (25, 0, 0), (25, 0, 4), (25, 30, 44)]
    g = VesselGraph(nodes, [(0, 1), (1, 2), (2, 3)], [1.0, 2.0, 3.0],
                    node_attrs={"flag": np.array([True, False, False, True])},
                    edge_attrs={"kind": np.array([7, 8, 9])})
    h = g.split_long_edges(10.0)
    assert (h.edge_lengths() <= 10.0 + 1e-9).all()
    assert h.edge_lengths().sum() == pytest.approx(g.edge_lengths().sum())
    # 25 um -> 3 pieces, 4 um -> 1, 50 um -> 5
    assert h.n_edges == 3 + 1 + 5 and h.n_nodes == 4 + 2 + 4
    np.testing.assert_array_equal(h.nodes[:4], g.nodes)  # original nodes keep their indices
    for r, k, n in ((1.0, 7, 3), (2.0, 8, 1), (3.0, 9, 5)):
        sel = h.radius == r
        assert sel.sum() == n and (h.edge_attrs["kind"][sel] == k).all()
    # new nodes lie on their edge and take the first node's attributes
    new = h.nodes[4:]
    on_first = np.isclose(new[:, 1], 0) & np.isclose(new[:, 2], 0)
    assert on_first.sum() == 2 and (h.node_attrs["flag"][4:][on_first]).all()
    assert not h.node_attrs["flag"][4:][~on_first].any()
    # connectivity: still one chain from node 0 to node 3
    deg = h.degrees()
    assert deg[0] == 1 and deg[3] == 1 and (np.delete(deg, [0, 3]) == 2).all()
    with pytest.raises(ValueError):
        g.split_long_edges(0)


# ----------------------------------------------------------------- statistics
def test_segments_between_branch_points(tree):
    lengths = sorted(float(tree.edge_lengths()[s].sum()) for s in tree.segments())
    assert lengths == [10, 10, 10, 10, 10, 20]
    chain = [s for s in tree.segments() if len(s) == 2][0]
    assert sorted(chain.tolist()) == [2, 3]
    # a closed loop of degree-2 nodes is one segment
    ring = VesselGraph([(0, 0, 0), (1, 0, 0), (1, 1, 0), (0, 1, 0)], [(0, 1), (1, 2), (2, 3), (3, 0)], np.ones(4))
    segs = ring.segments()
    assert len(segs) == 1 and sorted(segs[0].tolist()) == [0, 1, 2, 3]


def test_stats_known_answers(tree):
    box = ((0, 0, 0), (100, 100, 100))  # 1e6 um^3 = 1e-3 mm^3
    s = tree.stats(box=box)
    assert s["n_nodes"] == 8 and s["n_edges"] == 7
    assert s["total_length_mm"] == pytest.approx(0.07)
    assert s["length_density_mm_per_mm3"] == pytest.approx(70.0)
    # sum pi r^2 L = pi (6 * 1 * 10 + 4 * 10) = 100 pi um^3
    assert s["volume_fraction"] == pytest.approx(100 * math.pi / 1e6)
    assert s["degree_histogram"] == {"1": 5, "2": 1, "3": 1, "4": 1}
    assert s["degree3_share_of_branch_points"] == pytest.approx(0.5)
    assert s["n_segments"] == 6
    assert s["segment_length_um_percentiles"]["50"] == pytest.approx(10.0)
    assert s["radius_um_percentiles"]["50"] == pytest.approx(1.0)
    assert s["capillary_length_share"] == pytest.approx(1.0)
    # default box: the bounding box, 20 x 20 x 20 um
    d = tree.stats()
    assert d["box_um"] == [[0, -10, 0], [20, 10, 20]]
    assert d["length_density_mm_per_mm3"] == pytest.approx(0.07 / 8e-6)


# ------------------------------------------------------------------ networkx
def test_networkx_round_trip(tree):
    nxg = tree.to_networkx()
    assert nxg.number_of_nodes() == 8 and nxg.number_of_edges() == 7
    assert nxg.nodes[4]["pos"] == (0.0, 0.0, 20.0)
    back = VesselGraph.from_networkx(nxg)
    np.testing.assert_array_equal(back.nodes, tree.nodes)
    np.testing.assert_array_equal(canonical(back), canonical(tree))
    assert back.node_attrs["tag"].tolist() == list(range(8))
    kinds = {(min(a, b), max(a, b)): k for (a, b), k in zip(back.edges.tolist(), back.edge_attrs["kind"])}
    assert kinds[(3, 4)] == 1 and kinds[(1, 6)] == 2


def test_networkx_multi_edges_and_self_loops_survive():
    g = VesselGraph([(0, 0, 0), (1, 0, 0)], [(0, 1), (0, 1), (1, 1)], [1.0, 2.0, 3.0])
    back = VesselGraph.from_networkx(g.to_networkx())
    assert back.n_edges == 3 and sorted(back.radius.tolist()) == [1.0, 2.0, 3.0]


def test_from_networkx_missing_attributes():
    import networkx as nx

    nxg = nx.Graph()
    nxg.add_node(0, pos=(0, 0, 0))
    nxg.add_node(1)
    with pytest.raises(GraphError, match="'pos'"):
        VesselGraph.from_networkx(nxg)
    nxg.nodes[1]["pos"] = (1, 0, 0)
    nxg.add_edge(0, 1)
    with pytest.raises(GraphError, match="'radius'"):
        VesselGraph.from_networkx(nxg)


# ----------------------------------------------------------------- validation
@pytest.mark.parametrize("nodes, edges, radius, message", [
    (np.zeros((0, 3)), np.zeros((0, 2)), [], "empty graph"),
    ([(0, 0, 0), (1, 0, 0)], np.zeros((0, 2)), [], "empty graph"),
    ([(0, 0, 0), (np.nan, 0, 0)], [(0, 1)], [1.0], "NaN or infinite"),
    ([(0, 0, 0), (np.inf, 0, 0)], [(0, 1)], [1.0], "NaN or infinite"),
    ([(0, 0, 0), (1, 0, 0)], [(0, 2)], [1.0], "does not exist"),
    ([(0, 0, 0), (1, 0, 0)], [(-1, 1)], [1.0], "does not exist"),
    ([(0, 0, 0), (1, 0, 0)], [(0, 1)], [0.0], "radius"),
    ([(0, 0, 0), (1, 0, 0)], [(0, 1)], [-2.0], "radius"),
    ([(0, 0, 0), (1, 0, 0)], [(0, 1)], [np.nan], "radius"),
    ([(0, 0, 0), (1e18, 0, 0)], [(0, 1)], [1.0], r"coordinates beyond \+-1e\+07 um \(10 m\)"),
    ([(0, 0, 0), (0, 0, -1e30)], [(0, 1)], [1.0], r"1 node\(s\) with coordinates beyond"),
    ([(0, 0, 0), (1, 0, 0)], [(0, 1)], [1e18], r"radius above 1e\+07 um"),
])
def test_validate_errors_name_the_source(nodes, edges, radius, message):
    g = VesselGraph(nodes, edges, radius)
    with pytest.raises(GraphError, match=message) as info:
        g.validate(source="my_file.csv")
    assert "my_file.csv" in str(info.value)


def test_valid_graph_passes(tree):
    assert tree.validate() is tree


def test_constructor_rejects_inconsistent_shapes():
    with pytest.raises(GraphError, match="radii"):
        VesselGraph([(0, 0, 0), (1, 0, 0)], [(0, 1)], [1.0, 2.0])
    with pytest.raises(GraphError, match="attribute 'a'"):
        VesselGraph([(0, 0, 0), (1, 0, 0)], [(0, 1)], [1.0], node_attrs={"a": [1, 2, 3]})
    with pytest.raises(GraphError, match="attribute 'b'"):
        VesselGraph([(0, 0, 0), (1, 0, 0)], [(0, 1)], [1.0], edge_attrs={"b": [1, 2]})
    # 2D positions are refused, not silently reshaped into a different set of 3D points
    with pytest.raises(GraphError, match=r"nodes must be an \(n, 3\)"):
        VesselGraph(np.zeros((3, 2)), [(0, 1)], [1.0])
    with pytest.raises(GraphError, match=r"edges must be an \(n, 2\)"):
        VesselGraph(np.zeros((4, 3)), np.zeros((2, 3), int), [1.0, 1.0])
    # a flat list of coordinates is still accepted
    assert VesselGraph([0, 0, 0, 1, 0, 0], [0, 1], [1.0]).nodes.shape == (2, 3)
