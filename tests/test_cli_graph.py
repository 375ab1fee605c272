"""``octasim graph generate / info / extract`` run in-process."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from octasim.graph import VesselGraph
from octasim.cli import main

SMALL = ["--size-um", "400", "400", "400"]
FOV = ["--fov-um", "200", "200", "200"]


@pytest.fixture(scope="module")
def small_block(tmp_path_factory):
    """A 400 um procedural block written as .npz by ``octasim graph generate``."""
    path = tmp_path_factory.mktemp("gen") / "block.npz"
    assert main(["graph", "generate", "--out", str(path), *SMALL, "--seed", "3"]) == 0
    return path


def test_generate_writes_readable_graph_and_prints_stats(small_block, tmp_path, capsys):
    from octasim.graph_io import read_graph

    g = read_graph(small_block)
    assert g.n_edges > 100
    lo, hi = g.bounding_box()
    assert (hi - lo).max() < 600  # a 400 um block (pial vessels may reach a little past it)
    # same seed, same graph; another format by extension
    other = tmp_path / "block.graphml"
    capsys.readouterr()
    assert main(["graph", "generate", "--out", str(other), *SMALL, "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "length density" in out and "m/mm^3" in out and "volume fraction" in out
    g2 = read_graph(other)
    assert g2.n_edges == g.n_edges
    np.testing.assert_allclose(np.sort(g2.radius), np.sort(g.radius), rtol=1e-6)


def test_info_text_and_json(small_block, capsys):
    from octasim.graph_io import read_graph

    assert main(["graph", "info", str(small_block)]) == 0
    text = capsys.readouterr().out
    for word in ("nodes", "edges", "m/mm^3", "%", "degree-3", "segments", "radius (um)"):
        assert word in text
    assert main(["graph", "info", str(small_block), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    g = read_graph(small_block)
    assert stats["n_nodes"] == g.n_nodes and stats["n_edges"] == g.n_edges
    assert 0 < stats["degree3_share_of_branch_points"] <= 1


def test_extract_writes_patches_and_summary(small_block, tmp_path, capsys):
    from octasim.graph_io import read_graph

    out = tmp_path / "patches"
    assert main(["graph", "extract", str(small_block), "--out", str(out), *FOV]) == 0
    summary = json.loads((out / "summary.json").read_text())
    records = summary["patches"]
    assert records and summary["report"]["n_patches"] == len(records)
    assert summary["params"]["fov_um"] == [200.0, 200.0, 200.0]
    assert summary["params"]["min_edges"] == 128  # 2000 scaled by (200/500)^3
    assert summary["params"]["min_nodes_per_pillar"] == 16  # 100 scaled by (200/500)^2
    rejected = summary["report"]["rejected"]
    assert sum(rejected.values()) + len(records) == summary["report"]["n_pillars"]
    files = sorted(p.name for p in out.glob("patch_*.npz"))
    assert files == sorted(r["file"] for r in records)
    for r in records:
        assert r["file"] == f"patch_{r['pillar'][0]:03d}_{r['pillar'][1]:03d}.npz"
        patch = read_graph(out / r["file"])
        assert patch.n_edges == r["n_edges"] >= 128
        # translated to the origin: some node of every kept edge lies inside the 200 um box
        inside = ((patch.nodes >= 0) & (patch.nodes < 200)).all(axis=1)
        assert inside[patch.edges].any(axis=1).all()
    assert "too_few_nodes" in capsys.readouterr().out


def test_extract_no_patch_fails_with_advice(tmp_path, capsys):
    from octasim.graph_io import write_graph

    # a dense block "in voxel units": radii all below the 13 um surface threshold
    rng = np.random.default_rng(0)
    nodes = rng.uniform(0, 100, (3000, 3))
    order = np.argsort(nodes[:, 0])
    g = VesselGraph(nodes, np.column_stack([order[:-1], order[1:]]), rng.uniform(0.5, 2.0, 2999))
    path = write_graph(g, tmp_path / "voxels.npz")
    out = tmp_path / "none"
    code = main(["graph", "extract", str(path), "--out", str(out), "--fov-um", "50", "50", "50"])
    assert code != 0
    err = capsys.readouterr().err
    assert "no_surface_vessel" in err and "--voxel-size" in err
    assert not list(out.glob("patch_*.npz")) if out.exists() else True


def test_extract_missing_file_is_a_clear_error(tmp_path, capsys):
    code = main(["graph", "extract", str(tmp_path / "nope.npz"), "--out", str(tmp_path / "o")])
    assert code != 0 and "nope.npz" in capsys.readouterr().err


def test_help_names_units_and_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["graph", "extract", "--help"])
    text = capsys.readouterr().out
    assert "um" in text and "default: 13.0" in text and "default: 3000.0" in text


def test_cli_defaults_are_the_library_defaults():
    """octasim.cli.graph copies the dataclass defaults (importing numpy / scipy would slow `--help`): same values."""
    import inspect

    from octasim.extract import ExtractParams
    from octasim.generator import CortexParams, generate_cortex
    from octasim.cli import graph
    from octasim.cli.cli import build_parser
    from octasim.cli.graph import extract_params_from_args

    extract, cortex = ExtractParams(), CortexParams()
    assert graph.DEFAULT_SIZE_UM == tuple(cortex.size_um)
    assert graph.DEFAULT_FOV_UM == tuple(extract.fov_um)
    assert graph.DEFAULT_MIN_NODES == extract.min_nodes_per_pillar
    assert graph.DEFAULT_MIN_EDGES == extract.min_edges
    assert graph.DEFAULT_SURFACE_RADIUS_UM == extract.surface_radius_um
    assert graph.DEFAULT_CORTEX_DEPTH_UM == extract.cortex_depth_um
    assert graph.DEFAULT_SEED == inspect.signature(generate_cortex).parameters["seed"].default
    # what the parsers hand to the library without options
    parser = build_parser()
    args = parser.parse_args(["graph", "extract", "g.npz", "--out", "d"])
    assert extract_params_from_args(args) == extract
    args = parser.parse_args(["graph", "generate", "--out", "g.npz"])
    assert tuple(args.size_um) == tuple(cortex.size_um) and args.seed == graph.DEFAULT_SEED


def test_graph_command_module_imports_no_numpy():
    """Why the defaults above are copies: `octasim graph --help` must not load numpy / scipy."""
    import subprocess
    import sys

    code = "import sys, octasim.cli.graph; assert 'numpy' not in sys.modules, 'numpy loaded'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


REAL = str(Path(__file__).resolve().parents[1].parent / "shared" / "data" / "vesselgraph_example" / "example_nodes.csv")


@pytest.mark.skipif(not Path(REAL).exists(), reason=f"real VesselGraph example not found at {REAL}")
def test_real_vesselgraph_example_info_and_extract(tmp_path, capsys):
    assert main(["graph", "info", REAL, "--voxel-size", "1", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["n_nodes"] == 2970 and stats["n_edges"] == 3062
    # with the reference thresholds it has no surface vessel (max radius 7): a clear failure ...
    assert main(["graph", "extract", REAL, "--out", str(tmp_path / "a"), "--fov-um", "150", "150", "150"]) != 0
    assert "no_surface_vessel" in capsys.readouterr().err
    # ... and patches once the surface threshold is relaxed
    out = tmp_path / "b"
    assert main(["graph", "extract", REAL, "--out", str(out), "--fov-um", "150", "150", "150",
                 "--surface-radius-um", "5", "--voxel-size", "1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["report"]["n_patches"] == len(list(out.glob("patch_*.npz"))) >= 1
    assert summary["voxel_size_um"] == 1.0


def test_generate_refuses_a_block_too_large_for_the_memory(tmp_path, capsys, monkeypatch):
    import octasim.generator as gen

    def started(*args, **kwargs):
        raise AssertionError("generation started: the size must be checked first")

    monkeypatch.setattr(gen, "_hex_points", started)
    out = tmp_path / "huge.npz"
    assert main(["graph", "generate", "--out", str(out), "--size-um", "200000", "200000", "1200"]) == 2
    err = capsys.readouterr().err
    assert "--size-um 200000 200000 1200" in err and "2.61e+09 vessel edges" in err
    assert "limit is 20,000,000 edges" in err and not out.exists()


@pytest.mark.parametrize("command", ["info", "extract"])
def test_huge_coordinates_are_a_clear_error(tmp_path, capsys, command):
    path = tmp_path / "huge.npz"
    nodes = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 5.0], [1e30, 1e30, 5.0]])
    np.savez(path, nodes=nodes, edges=np.array([[0, 1], [1, 2]]), radius=np.array([2.0, 2.0]))
    extra = ["--out", str(tmp_path / "patches")] if command == "extract" else []
    assert main(["graph", command, str(path), *extra]) == 2
    err = capsys.readouterr().err
    assert "huge.npz: 1 node(s) with coordinates beyond +-1e+07 um (10 m)" in err


def test_extract_refuses_a_pillar_grid_too_large_and_names_the_file(small_block, tmp_path, capsys):
    code = main(["graph", "extract", str(small_block), "--out", str(tmp_path / "p"), "--fov-um", "1e-4", "1e-4", "200"])
    err = capsys.readouterr().err
    assert code == 2 and "block.npz: the graph spans" in err and "limit 10,000,000" in err and "--fov-um" in err
