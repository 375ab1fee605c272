"""Graph readers and writers: the real VesselGraph example, round trips for every format, bad inputs."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from octasim.graph import GraphError, VesselGraph
from octasim.graph_io import FORMATS, detect_format, read_graph, write_graph

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
EXAMPLE = SHARED / "vesselgraph_example"
needs_example = pytest.mark.skipif(not (EXAMPLE / "example_nodes.csv").exists(),
                                   reason=f"real VesselGraph example not found at {EXAMPLE} (shared data absent)")


def canonical(g: VesselGraph) -> np.ndarray:
    """Edges as sorted (end_a, end_b, radius) rows, independent of edge order and direction."""
    a, b = g.nodes[g.edges[:, 0]], g.nodes[g.edges[:, 1]]
    swap = np.array([tuple(p) > tuple(q) for p, q in zip(a.tolist(), b.tolist())], dtype=bool)
    rows = np.concatenate([np.where(swap[:, None], b, a), np.where(swap[:, None], a, b), g.radius[:, None]], 1)
    return rows[np.lexsort(rows.T[::-1])]


@pytest.fixture
def graph() -> VesselGraph:
    """Small graph with non-integer coordinates, a self-loop, a multi-edge and attributes of several dtypes."""
    rng = np.random.default_rng(5)
    nodes = rng.uniform(-50, 300, (9, 3)).round(3)
    edges = np.array([(0, 1), (1, 2), (2, 3), (3, 1), (4, 5), (5, 6), (6, 7), (7, 8), (8, 8), (4, 5), (0, 8)])
    radius = rng.uniform(1.0, 12.0, len(edges)).round(4)
    node_attrs = {"at_border": np.array([1, 0, 0, 0, 1, 0, 0, 0, 1], bool),
                  "region": np.array([5, 5, 0, 7, 7, 0, 3, 3, 3], np.int64),
                  "outside_brain": np.array([0, 0, 1, 0, 0, 1, 0, 0, 0], bool)}
    edge_attrs = {"kind": np.arange(len(edges), dtype=np.int32) % 3,
                  "length": np.linalg.norm(nodes[edges[:, 1]] - nodes[edges[:, 0]], axis=1) * 1.2 + 0.5,
                  "curveness": np.full(len(edges), 1.2),
                  "label": np.array([f"v{i}" for i in range(len(edges))])}
    meta = {"seed": 3, "params": {"size_um": [100.0, 200.0, 300.0], "name": "a \"quoted\" <value> & more"},
            "source": "made by hand"}
    return VesselGraph(nodes, edges, radius, node_attrs, edge_attrs, meta)


# ------------------------------------------------------------------ real example
@needs_example
def test_real_example_counts_ranges_and_radii():
    t0 = time.perf_counter()
    g = read_graph(EXAMPLE / "example_nodes.csv")
    seconds = time.perf_counter() - t0
    assert g.n_nodes == 2970 and g.n_edges == 3062
    assert g.meta["format"] == "vesselgraph" and g.meta["voxel_size_um"] == 1.0
    assert "example_nodes.csv" in g.meta["source"]
    lo, hi = g.bounding_box()
    np.testing.assert_array_equal(lo, [-315, -297, 0])
    np.testing.assert_array_equal(hi, [-6, -27, 591])
    assert (g.radius > 0).all()
    assert 1.5 < np.median(g.radius) < 2.5  # about 2 voxels
    assert g.radius.max() < 20
    assert g.node_attrs["at_border"].dtype == bool and 0 < g.node_attrs["at_border"].sum() < g.n_nodes
    # degrees from the edges agree with the file's own degree column
    table = np.loadtxt(EXAMPLE / "example_nodes.csv", delimiter=";", skiprows=1)
    np.testing.assert_array_equal(g.degrees(), table[:, 4])
    # curveness and length columns kept; length along the vessel >= straight distance
    assert (g.edge_attrs["length"] >= g.edge_lengths() * 0.99 - 1).mean() > 0.95
    print(f"real example read in {seconds * 1000:.1f} ms")


@needs_example
def test_real_example_scales_with_voxel_size_and_any_entry_path():
    g1 = read_graph(EXAMPLE)  # the folder
    g2 = read_graph(EXAMPLE / "example_edges.csv", voxel_size_um=1.625)  # the edges file
    np.testing.assert_allclose(g2.nodes, 1.625 * g1.nodes)
    np.testing.assert_allclose(g2.radius, 1.625 * g1.radius)
    np.testing.assert_allclose(g2.edge_attrs["length"], 1.625 * g1.edge_attrs["length"])
    np.testing.assert_array_equal(g2.edges, g1.edges)
    assert g2.meta["voxel_size_um"] == 1.625
    np.testing.assert_allclose(g2.edge_attrs["curveness"], g1.edge_attrs["curveness"])


# ------------------------------------------------------------------ detection
def test_detect_format_by_extension_folder_prefix_and_content(graph, tmp_path):
    for fmt, name in [("npz", "g.npz"), ("secomb", "g.dat"), ("graphml", "g.graphml"), ("gml", "g.gml")]:
        out = write_graph(graph, tmp_path / name)
        assert detect_format(out) == fmt
        renamed = out.rename(tmp_path / f"noext_{fmt}")  # no suffix: by content
        assert detect_format(renamed) == fmt
    nodes = write_graph(graph, tmp_path / "vg" / "sample", fmt="vesselgraph")
    assert nodes.name == "sample_nodes.csv" and (tmp_path / "vg" / "sample_edges.csv").exists()
    assert detect_format(nodes) == detect_format(tmp_path / "vg") == detect_format(tmp_path / "vg" / "sample") \
        == "vesselgraph"
    cm = write_graph(graph, tmp_path / "cm", fmt="clearmap")
    assert detect_format(cm) == detect_format(cm / "vertices.npy") == "clearmap"


def test_unknown_format_is_an_error(graph, tmp_path):
    junk = tmp_path / "graph.txt"
    junk.write_text("hello world\n1 2 3\n")
    with pytest.raises(GraphError, match="graph.txt: unknown graph format"):
        read_graph(junk)
    with pytest.raises(GraphError, match="unknown graph format 'foo'"):
        read_graph(junk, fmt="foo")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(GraphError, match="empty_dir"):
        detect_format(tmp_path / "empty_dir")
    with pytest.raises(GraphError, match="cannot tell the graph format"):
        write_graph(graph, tmp_path / "out.xyz")
    with pytest.raises(FileNotFoundError, match="nothere.npz"):
        read_graph(tmp_path / "nothere.npz")


# ------------------------------------------------------------------ round trips
def test_npz_round_trip_is_lossless(graph, tmp_path):
    path = write_graph(graph, tmp_path / "g.npz")
    back = read_graph(path)
    np.testing.assert_array_equal(back.nodes, graph.nodes)
    np.testing.assert_array_equal(back.edges, graph.edges)
    np.testing.assert_array_equal(back.radius, graph.radius)
    for mine, theirs in ((back.node_attrs, graph.node_attrs), (back.edge_attrs, graph.edge_attrs)):
        assert mine.keys() == theirs.keys()
        for k in mine:
            assert mine[k].dtype == theirs[k].dtype
            np.testing.assert_array_equal(mine[k], theirs[k])
    assert back.meta == graph.meta


@pytest.mark.parametrize("fmt, name", [("graphml", "g.graphml"), ("gml", "g.gml")])
def test_networkx_formats_round_trip_with_attributes(graph, tmp_path, fmt, name):
    back = read_graph(write_graph(graph, tmp_path / name))
    assert back.meta["format"] == fmt
    np.testing.assert_allclose(back.nodes, graph.nodes)  # node order kept
    np.testing.assert_allclose(canonical(back), canonical(graph))
    for k, v in graph.node_attrs.items():
        assert back.node_attrs[k].dtype == v.dtype
        np.testing.assert_array_equal(back.node_attrs[k], v)
    for k, v in graph.edge_attrs.items():  # edges may come back in another order: compare as multisets
        assert back.edge_attrs[k].dtype == v.dtype
        assert sorted(back.edge_attrs[k].tolist()) == sorted(v.tolist())
    assert {k: back.meta[k] for k in ("seed", "params")} == {k: graph.meta[k] for k in ("seed", "params")}


def test_graphml_written_by_another_tool_with_pos_attribute(tmp_path):
    import networkx as nx

    g = nx.Graph()
    g.add_node("a", pos="(0.0, 1.0, 2.5)", name="first")
    g.add_node("b", pos="[10 1 2.5]", name="second")
    g.add_edge("a", "b", radius=3.0, weight=2)
    path = tmp_path / "other.xml"
    nx.write_graphml(g, path)
    back = read_graph(path)
    np.testing.assert_array_equal(back.nodes, [[0, 1, 2.5], [10, 1, 2.5]])
    assert back.radius.tolist() == [3.0] and back.node_attrs["name"].tolist() == ["first", "second"]
    assert back.edge_attrs["weight"].tolist() == [2]


def test_secomb_round_trip(graph, tmp_path):
    path = write_graph(graph, tmp_path / "net.dat")
    back = read_graph(path)
    np.testing.assert_allclose(back.nodes, graph.nodes, rtol=1e-10)
    np.testing.assert_array_equal(back.edges, graph.edges)  # same order: names are 1..N in order
    np.testing.assert_allclose(back.radius, graph.radius, rtol=1e-10)
    # without type / flow / hd attributes the writer uses documented defaults
    assert (back.edge_attrs["type"] == 4).all() and (back.edge_attrs["hd"] == 0.45).all()
    text = path.read_text().splitlines()
    assert text[6].split()[0] == str(graph.n_edges) and "total number of segments" in text[6]
    # degree-1 nodes are listed as boundary nodes (names are 1-based)
    ends = np.flatnonzero(graph.degrees() == 1) + 1
    k = next(i for i, line in enumerate(text) if "total number of boundary nodes" in line)
    assert int(text[k].split()[0]) == len(ends)
    assert [int(line.split()[0]) for line in text[k + 2:]] == ends.tolist()
    # attributes that Secomb knows survive
    typed = VesselGraph(graph.nodes, graph.edges, graph.radius,
                        edge_attrs={"type": np.arange(graph.n_edges) % 5 + 1, "flow": np.linspace(-1, 1, graph.n_edges),
                                    "hd": np.full(graph.n_edges, 0.3)})
    again = read_graph(write_graph(typed, tmp_path / "typed.dat"))
    for k, v in typed.edge_attrs.items():
        np.testing.assert_allclose(again.edge_attrs[k], v)


def test_secomb_reads_names_not_rows_and_ignores_later_sections(tmp_path):
    text = """Example network
500.0 500.0 500.0 box dimensions in microns
10 10 10 number of tissue points in x,y,z directions
10.0 outer bound distance
100.0 max. segment length
30 maximum number of segments per node
3 total number of segments
name type from to diam flow[nl/min] HD
1 4 30 10 6.0 0.1 0.4
2 4 10 20 4.0 0.1 0.4
5 5 20 30 8.0 0.2 0.45
3 total number of nodes
name x y z pressure
10 0.0 0.0 0.0 50.0
30 5.0 0.0 0.0 50.0
20 0.0 7.0 9.0 50.0
2 total number of boundary nodes
name bctyp bcprfl bchd
30 0 50.0 0.45
20 0 20.0 0.45
"""
    path = tmp_path / "net.dat"
    path.write_text(text)
    g = read_graph(path)
    assert g.edges.tolist() == [[1, 0], [0, 2], [2, 1]]
    assert g.radius.tolist() == [3.0, 2.0, 4.0]
    np.testing.assert_array_equal(g.nodes, [[0, 0, 0], [5, 0, 0], [0, 7, 9]])
    assert g.edge_attrs["type"].tolist() == [4, 4, 5]
    assert g.edge_attrs["hd"].tolist() == [0.4, 0.4, 0.45]


def test_vesselgraph_round_trip_and_voxel_size(graph, tmp_path):
    nodes_file = write_graph(graph, tmp_path / "rt_nodes.csv", voxel_size_um=2.0)
    header = nodes_file.read_text().splitlines()[0]
    assert header == "id;pos_x;pos_y;pos_z;degree;isAtSampleBorder"
    first = np.array(nodes_file.read_text().splitlines()[1].split(";")[1:4], float)
    np.testing.assert_allclose(first, graph.nodes[0] / 2.0)  # written in voxels
    back = read_graph(tmp_path / "rt_edges.csv", voxel_size_um=2.0)
    np.testing.assert_allclose(back.nodes, graph.nodes, rtol=1e-10)
    np.testing.assert_array_equal(back.edges, graph.edges)
    np.testing.assert_allclose(back.radius, graph.radius, rtol=1e-10)
    np.testing.assert_array_equal(back.node_attrs["at_border"], graph.node_attrs["at_border"])
    np.testing.assert_allclose(back.edge_attrs["length"], graph.edge_attrs["length"], rtol=1e-10)
    np.testing.assert_allclose(back.edge_attrs["curveness"], graph.edge_attrs["curveness"])


def test_vesselgraph_ids_are_matched_by_id_column_not_row(tmp_path):
    (tmp_path / "s_nodes.csv").write_text("\ufeffid;pos_x;pos_y;pos_z;degree;isAtSampleBorder\n"  # with a BOM
                                          "10;0;0;0;1;0\n30;3;0;0;2;1\n20;0;4;0;1;0\n", encoding="utf-8")
    (tmp_path / "s_edges.csv").write_text("id;node1id;node2id;length;avgRadiusAvg\n"
                                          "0;10;30;3.5;1.5\n1;30;20;5.5;0.5\n")
    g = read_graph(tmp_path / "s", voxel_size_um=2.0)  # a prefix
    assert g.edges.tolist() == [[0, 1], [1, 2]]
    np.testing.assert_allclose(g.edge_lengths(), [6.0, 10.0])
    np.testing.assert_allclose(g.radius, [3.0, 1.0])
    assert g.node_attrs["at_border"].tolist() == [False, True, False]
    assert "curveness" not in g.edge_attrs and g.edge_attrs["length"].tolist() == [7.0, 11.0]


def test_clearmap_round_trip_and_drop_outside(graph, tmp_path):
    folder = write_graph(graph, tmp_path / "cm", fmt="clearmap", voxel_size_um=0.5)
    assert sorted(p.name for p in folder.iterdir()) == ["edges.npy", "radius_for_edges.npy",
                                                       "region_for_vertices.npy", "vertices.npy"]
    np.testing.assert_allclose(np.load(folder / "vertices.npy"), graph.nodes * 2)
    back = read_graph(folder, voxel_size_um=0.5)
    np.testing.assert_allclose(back.nodes, graph.nodes)
    np.testing.assert_array_equal(back.edges, graph.edges)
    np.testing.assert_allclose(back.radius, graph.radius)
    np.testing.assert_array_equal(back.node_attrs["region"], graph.node_attrs["region"])
    np.testing.assert_array_equal(back.node_attrs["outside_brain"], graph.node_attrs["region"] == 0)
    dropped = read_graph(folder, voxel_size_um=0.5, drop_outside=True)
    outside = graph.node_attrs["region"] == 0  # nodes 2 and 5
    assert dropped.n_nodes == graph.n_nodes - outside.sum()
    assert not dropped.node_attrs["outside_brain"].any()
    keep_e = ~outside[graph.edges].any(axis=1)
    assert dropped.n_edges == keep_e.sum()
    np.testing.assert_allclose(canonical(dropped), canonical(graph.select_edges(keep_e)))


def test_round_trips_from_every_format_agree(graph, tmp_path):
    """Every format reads back the same geometry (core arrays) as written."""
    names = {"npz": "a.npz", "secomb": "a.dat", "graphml": "a.graphml", "gml": "a.gml",
             "vesselgraph": "a_nodes.csv", "clearmap": "a_cm"}
    assert set(names) == set(FORMATS)
    for fmt, name in names.items():
        back = read_graph(write_graph(graph, tmp_path / name, fmt=fmt), fmt=fmt)
        assert back.meta.get("format", "npz") == fmt
        np.testing.assert_allclose(canonical(back), canonical(graph), rtol=1e-10, err_msg=fmt)


def test_writes_are_atomic(graph, tmp_path):
    path = write_graph(graph, tmp_path / "keep.npz")
    before = path.read_bytes()
    bad = VesselGraph(graph.nodes, graph.edges, graph.radius, edge_attrs={"obj": np.array([{}] * graph.n_edges)})
    with pytest.raises(GraphError):
        write_graph(bad, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.npz"]  # no temporary left behind
    invalid = VesselGraph(graph.nodes, graph.edges, -graph.radius)
    with pytest.raises(GraphError, match="radius"):
        write_graph(invalid, path)
    assert path.read_bytes() == before


# ------------------------------------------------------------------ bad inputs: VesselGraph CSV
NODES_OK = "id;pos_x;pos_y;pos_z;degree;isAtSampleBorder\n0;0;0;0;1;0\n1;1;0;0;2;0\n2;1;1;0;1;0\n"
EDGES_OK = "id;node1id;node2id;avgRadiusAvg\n0;0;1;1.5\n1;1;2;2.0\n"


def write_pair(tmp_path: Path, nodes: str = NODES_OK, edges: str = EDGES_OK) -> Path:
    (tmp_path / "bad_nodes.csv").write_text(nodes)
    (tmp_path / "bad_edges.csv").write_text(edges)
    return tmp_path / "bad_nodes.csv"


def test_vesselgraph_good_pair_reads(tmp_path):
    assert read_graph(write_pair(tmp_path)).n_edges == 2


@pytest.mark.parametrize("nodes, edges, pattern", [
    (NODES_OK.replace("pos_z", "posz"), EDGES_OK, r"bad_nodes\.csv, line 1: missing column\(s\) pos_z"),
    (NODES_OK, EDGES_OK.replace("avgRadiusAvg", "radius"), r"bad_edges\.csv, line 1: missing column\(s\) avgRadiusAvg"),
    (NODES_OK, EDGES_OK.replace("node2id", "n2"), r"bad_edges\.csv, line 1: missing column\(s\) node2id"),
    (NODES_OK, EDGES_OK.replace("1;1;2;2.0", "1;1;7;2.0"), r"bad_edges\.csv, line 3: node2id 7 .*dangling"),
    (NODES_OK.replace("2;1;1;0;1;0", "1;1;1;0;1;0"), EDGES_OK, r"bad_nodes\.csv, line 4: duplicate node id 1 \(first on line 3\)"),
    (NODES_OK.replace("1;1;0;0;2;0", "1;nan;0;0;2;0"), EDGES_OK, r"bad_nodes\.csv, line 3: NaN or infinite coordinates"),
    (NODES_OK.replace("2;1;1;0;1;0", "2;1;inf;0;1;0"), EDGES_OK, r"bad_nodes\.csv, line 4: NaN or infinite coordinates"),
    (NODES_OK, EDGES_OK.replace("0;0;1;1.5", "0;0;1;-1.5"), r"bad_edges\.csv, line 2: avgRadiusAvg -1\.5 is not a positive"),
    (NODES_OK, EDGES_OK.replace("1;1;2;2.0", "1;1;2;0"), r"bad_edges\.csv, line 3: avgRadiusAvg 0 is not a positive"),
    (NODES_OK, EDGES_OK.replace("1;1;2;2.0", "1;1;2;abc"), r"bad_edges\.csv, line 3: column 'avgRadiusAvg' holds 'abc'"),
    (NODES_OK.replace("1;1;0;0;2;0", "1;1;0"), EDGES_OK, r"bad_nodes\.csv, line 3: only 3 fields, column 'pos_z'"),
    ("id;pos_x;pos_y;pos_z\n", EDGES_OK, r"bad_nodes\.csv: no node rows \(empty graph\)"),
    (NODES_OK, "id;node1id;node2id;avgRadiusAvg\n", r"bad_edges\.csv: no edge rows \(empty graph\)"),
    ("", EDGES_OK, r"bad_nodes\.csv: empty file"),
])
def test_vesselgraph_bad_inputs(tmp_path, nodes, edges, pattern):
    path = write_pair(tmp_path, nodes, edges)
    with pytest.raises(GraphError, match=pattern):
        read_graph(path)


def test_vesselgraph_missing_partner_file(tmp_path):
    (tmp_path / "lonely_nodes.csv").write_text(NODES_OK)
    with pytest.raises(GraphError, match=r"lonely_edges\.csv: missing partner file") as info:
        read_graph(tmp_path / "lonely_nodes.csv")
    assert isinstance(info.value, FileNotFoundError)
    (tmp_path / "lonely_nodes.csv").unlink()
    (tmp_path / "solo_edges.csv").write_text(EDGES_OK)
    with pytest.raises(GraphError, match=r"solo_nodes\.csv: missing partner file"):
        read_graph(tmp_path)


# ------------------------------------------------------------------ bad inputs: ClearMap
def clearmap(tmp_path: Path, vertices=None, edges=None, radius=None, region=None) -> Path:
    folder = tmp_path / "cm"
    folder.mkdir(exist_ok=True)
    arrays = {"vertices": np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0]], float) if vertices is None else vertices,
              "edges": np.array([[0, 1], [1, 2]]) if edges is None else edges,
              "radius_for_edges": np.array([1.0, 2.0]) if radius is None else radius}
    if region is not None:
        arrays["region_for_vertices"] = region
    for name, arr in arrays.items():
        if arr is not False:
            np.save(folder / f"{name}.npy", arr)
    return folder


@pytest.mark.parametrize("kwargs, pattern", [
    ({"radius": False}, r"radius_for_edges\.npy: missing"),
    ({"edges": np.array([[0, 1], [1, 3]])}, r"edges\.npy: row 1 refers to vertex \(1, 3\).*dangling"),
    ({"vertices": np.array([[0, 0, 0], [np.nan, 0, 0], [1, 1, 0]])}, r"vertices\.npy: row 1 has NaN"),
    ({"radius": np.array([1.0, -1.0])}, r"radius_for_edges\.npy, row 1: radius -1 is not a positive"),
    ({"radius": np.array([1.0, 2.0, 3.0])}, r"radius_for_edges\.npy: expected 2 radii"),
    ({"vertices": np.zeros((3, 2))}, r"vertices\.npy: expected an \(N, 3\)"),
    ({"edges": np.zeros((0, 2), int), "radius": np.zeros(0)}, r"cm: empty graph"),
    ({"region": np.array([1, 2])}, r"region_for_vertices\.npy: expected 3 region ids"),
])
def test_clearmap_bad_inputs(tmp_path, kwargs, pattern):
    folder = clearmap(tmp_path, **kwargs)
    with pytest.raises(GraphError, match=pattern):
        read_graph(folder)


def test_clearmap_good_folder_and_region(tmp_path):
    g = read_graph(clearmap(tmp_path, region=np.array([0, 4, 4])), voxel_size_um=3.0)
    assert g.node_attrs["outside_brain"].tolist() == [True, False, False]
    np.testing.assert_allclose(g.radius, [3.0, 6.0])
    h = read_graph(tmp_path / "cm", voxel_size_um=3.0, drop_outside=True)
    assert h.n_nodes == 2 and h.n_edges == 1 and h.radius.tolist() == [6.0]


# ------------------------------------------------------------------ bad inputs: Secomb
SECOMB_OK = """title
100 100 100 box dimensions in microns
10 10 10 tissue points
10 outer bound distance
50 max. segment length
30 maximum number of segments per node
2 total number of segments
name type from to diam flow HD
1 4 1 2 5.0 0.0 0.45
2 4 2 3 4.0 0.0 0.45
3 total number of nodes
name x y z
1 0 0 0
2 10 0 0
3 10 10 0
"""


@pytest.mark.parametrize("old, new, pattern", [
    ("2 4 2 3 4.0", "2 4 2 9 4.0", r"net\.dat, line 10: to 9 is not a node.*dangling"),
    ("3 10 10 0", "2 10 10 0", r"net\.dat, line 15: duplicate node name 2 \(first on line 14\)"),
    ("2 10 0 0", "2 10 nan 0", r"net\.dat, line 14: NaN or infinite coordinates"),
    ("1 4 1 2 5.0", "1 4 1 2 0.0", r"net\.dat, line 9: diameter 0 is not a positive"),
    ("1 4 1 2 5.0", "1 4 1 2 -5.0", r"net\.dat, line 9: diameter -5 is not a positive"),
    ("name type from to diam", "name type from to width", r"net\.dat, line 8: missing column 'diam'"),
    ("name x y z", "name x y", r"net\.dat, line 12: missing column 'z'"),
    ("3 total number of nodes", "4 total number of nodes", r"net\.dat, line 11: announces 4 nodes .*truncated"),
    ("2 total number of segments", "2 segments", r"net\.dat: no line '<count> total number of segments'"),
    ("2 4 2 3 4.0 0.0 0.45", "2 4 2", r"net\.dat, line 10: only 3 fields, column 'to' \(field 4\) is missing"),
])
def test_secomb_bad_inputs(tmp_path, old, new, pattern):
    assert old in SECOMB_OK
    path = tmp_path / "net.dat"
    path.write_text(SECOMB_OK.replace(old, new))
    with pytest.raises(GraphError, match=pattern):
        read_graph(path)


def test_secomb_empty_graph(tmp_path):
    path = tmp_path / "net.dat"
    text = SECOMB_OK.split("2 total number of segments")[0] + "0 total number of segments\nname type from to diam\n" \
        + "0 total number of nodes\nname x y z\n"
    path.write_text(text)
    with pytest.raises(GraphError, match=r"net\.dat: empty graph"):
        read_graph(path)


def test_secomb_good_input_reads(tmp_path):
    path = tmp_path / "net.dat"
    path.write_text(SECOMB_OK)
    g = read_graph(path)
    assert g.n_nodes == 3 and g.radius.tolist() == [2.5, 2.0]


# ------------------------------------------------------------------ bad inputs: GraphML / GML / npz
def nx_file(tmp_path: Path, fmt: str, node_attrs: list[dict], edges: list[tuple]) -> Path:
    import networkx as nx

    g = nx.Graph()
    for i, d in enumerate(node_attrs):
        g.add_node(i, **d)
    for a, b, d in edges:
        g.add_edge(a, b, **d)
    path = tmp_path / f"bad.{fmt}"
    (nx.write_graphml if fmt == "graphml" else nx.write_gml)(g, path)
    return path


XYZ = [{"x": 0.0, "y": 0.0, "z": 0.0}, {"x": 1.0, "y": 0.0, "z": 0.0}]


@pytest.mark.parametrize("fmt", ["graphml", "gml"])
@pytest.mark.parametrize("nodes, edges, pattern", [
    (XYZ, [(0, 1, {"r": 1.0})], r"bad\.\w+: edge \(0, 1\) has no 'radius' attribute"),
    ([XYZ[0], {"x": 1.0, "y": 0.0}], [(0, 1, {"radius": 1.0})], r"bad\.\w+: node 1 has no position"),
    ([XYZ[0], {"x": 1.0, "y": float("nan"), "z": 0.0}], [(0, 1, {"radius": 1.0})], r"bad\.\w+: node 1 has NaN"),
    (XYZ, [(0, 1, {"radius": -2.0})], r"bad\.\w+: edge \(0, 1\) has radius -2, not a positive"),
    (XYZ, [], r"bad\.\w+: empty graph"),
])
def test_networkx_formats_bad_inputs(tmp_path, fmt, nodes, edges, pattern):
    path = nx_file(tmp_path, fmt, nodes, edges)
    with pytest.raises(GraphError, match=pattern):
        read_graph(path)


def test_gml_duplicate_and_dangling_ids(tmp_path):
    dup = tmp_path / "dup.gml"
    dup.write_text("graph [\n node [ id 0 x 0 y 0 z 0 ]\n node [ id 0 x 1 y 0 z 0 ]\n"
                   " edge [ source 0 target 0 radius 1 ]\n]\n")
    with pytest.raises(GraphError, match=r"dup\.gml: not a readable GML graph.*duplicated"):
        read_graph(dup)
    dangling = tmp_path / "dangling.gml"
    dangling.write_text("graph [\n node [ id 0 x 0 y 0 z 0 ]\n node [ id 1 x 1 y 0 z 0 ]\n"
                        " edge [ source 0 target 5 radius 1 ]\n]\n")
    with pytest.raises(GraphError, match=r"dangling\.gml"):
        read_graph(dangling)
    broken = tmp_path / "broken.graphml"
    broken.write_text("<?xml version='1.0'?><graphml><graph><node id='a'></graph>")
    with pytest.raises(GraphError, match=r"broken\.graphml: not a readable GRAPHML"):
        read_graph(broken)


def test_npz_bad_inputs(graph, tmp_path):
    path = tmp_path / "g.npz"
    np.savez(path, nodes=graph.nodes, edges=graph.edges)
    with pytest.raises(GraphError, match=r"g\.npz: missing array\(s\) radius"):
        read_graph(path)
    np.savez(path, nodes=graph.nodes, edges=graph.edges + 100, radius=graph.radius)
    with pytest.raises(GraphError, match=r"g\.npz: edge 0 refers to a node that does not exist"):
        read_graph(path)
    nodes = graph.nodes.copy()
    nodes[3, 1] = np.nan
    np.savez(path, nodes=nodes, edges=graph.edges, radius=graph.radius)
    with pytest.raises(GraphError, match=r"g\.npz: 1 node\(s\) with NaN"):
        read_graph(path)
    np.savez(path, nodes=graph.nodes, edges=graph.edges, radius=-graph.radius)
    with pytest.raises(GraphError, match=r"g\.npz: .*negative"):
        read_graph(path)
    np.savez(path, nodes=graph.nodes[:, :2], edges=graph.edges, radius=graph.radius)
    with pytest.raises(GraphError, match=r"g\.npz: 'nodes' must be \(N, 3\)"):
        read_graph(path)
    np.savez(path, nodes=np.zeros((0, 3)), edges=np.zeros((0, 2), int), radius=np.zeros(0))
    with pytest.raises(GraphError, match=r"g\.npz: empty graph"):
        read_graph(path)
    np.savez(path, nodes=graph.nodes, edges=graph.edges, radius=graph.radius, meta=np.array("{not json"))
    with pytest.raises(GraphError, match=r"g\.npz: .*JSON"):
        read_graph(path)
    path.write_bytes(b"PK\x03\x04 garbage")
    with pytest.raises(GraphError, match=r"g\.npz: not a readable \.npz"):
        read_graph(path)


def test_npz_meta_is_json(graph, tmp_path):
    path = write_graph(graph, tmp_path / "g.npz")
    with np.load(path, allow_pickle=False) as z:
        assert json.loads(str(z["meta"])) == graph.meta
        assert {"nodes", "edges", "radius", "node_attr__region", "edge_attr__label"} <= set(z.files)


@pytest.mark.parametrize("old, new, pattern", [
    # fewer segments announced than rows: the third row used to be dropped silently
    ("2 total number of segments", "1 total number of segments",
     r"net\.dat, line 7: announces 1 segments but 2 rows follow its header \(lines 9-10"),
    ("3 total number of nodes", "2 total number of nodes",
     r"net\.dat, line 11: announces 2 nodes but 3 rows follow its header \(lines 13-15"),
    # more announced than rows
    ("2 total number of segments", "3 total number of segments",
     r"net\.dat, line 7: announces 3 segments but the segments section holds only 2 row\(s\)"),
])
def test_secomb_section_count_must_match_its_rows(tmp_path, old, new, pattern):
    path = tmp_path / "net.dat"
    path.write_text(SECOMB_OK.replace(old, new))
    with pytest.raises(GraphError, match=pattern):
        read_graph(path)


def test_secomb_extra_rows_before_a_later_section_are_refused(tmp_path):
    path = tmp_path / "net.dat"
    path.write_text(SECOMB_OK.replace("3 total number of nodes", "2 total number of nodes")
                    + "1 total number of boundary nodes\nname bctyp bcprfl bchd\n1 0 50 0.45\n")
    with pytest.raises(GraphError, match=r"announces 2 nodes but 3 rows follow its header \(lines 13-15"):
        read_graph(path)


@pytest.mark.parametrize("value", ["1e18", "1e30", "-1e30"])
def test_huge_coordinates_are_refused_on_reading(tmp_path, value):
    path = tmp_path / "net.dat"
    path.write_text(SECOMB_OK.replace("3 10 10 0", f"3 {value} {value} 0"))
    with pytest.raises(GraphError, match=r"net\.dat: 1 node\(s\) with coordinates beyond \+-1e\+07 um"):
        read_graph(path)
    npz = tmp_path / "g.npz"
    np.savez(npz, nodes=np.array([[0.0, 0, 0], [float(value), 0, 0]]), edges=np.array([[0, 1]]),
             radius=np.array([2.0]))
    with pytest.raises(GraphError, match=r"g\.npz: 1 node\(s\) with coordinates beyond"):
        read_graph(npz)


def test_voxel_size_scaling_can_push_coordinates_beyond_the_limit(tmp_path):
    folder = tmp_path / "cm"
    folder.mkdir()
    np.save(folder / "vertices.npy", np.array([[0.0, 0, 0], [2e6, 0, 0]]))
    np.save(folder / "edges.npy", np.array([[0, 1]]))
    np.save(folder / "radius_for_edges.npy", np.array([1.0]))
    assert read_graph(folder).n_nodes == 2
    with pytest.raises(GraphError, match="beyond"):
        read_graph(folder, voxel_size_um=10.0)
