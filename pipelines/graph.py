"""``octasim graph``: make, inspect and cut vessel graphs (generate / info / extract)."""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

# Defaults shown by --help. They are the library's dataclass defaults (octasim.generator.CortexParams,
# octasim.extract.ExtractParams), copied because importing those modules (numpy, scipy: about 0.5-0.8 s)
# would make `octasim --help` several times slower; tests/test_cli_graph.py checks the copies are equal.
#: CortexParams.size_um
DEFAULT_SIZE_UM = (2000.0, 2000.0, 1200.0)
#: ExtractParams.fov_um
DEFAULT_FOV_UM = (500.0, 500.0, 500.0)
#: ExtractParams.min_nodes_per_pillar and .min_edges (for DEFAULT_FOV_UM; scaled to --fov-um)
DEFAULT_MIN_NODES = 100
DEFAULT_MIN_EDGES = 2000
#: ExtractParams.surface_radius_um and .cortex_depth_um
DEFAULT_SURFACE_RADIUS_UM = 13.0
DEFAULT_CORTEX_DEPTH_UM = 3000.0
#: generate_cortex's seed
DEFAULT_SEED = 0
#: this command's names for the settings the extractor's advice names (``octasim.extract.Knob`` values)
ADVICE_NAMES = {"graph_voxel_size_um": "--voxel-size UM", "fov_um": "--fov-um", "min_nodes_per_pillar": "--min-nodes",
                "min_edges": "--min-edges", "surface_radius_um": "--surface-radius-um",
                "cortex_depth_um": "--cortex-depth-um"}


def register(subparsers) -> None:
    """Add ``graph`` and its sub-commands to the ``octasim`` parser."""
    from .cli import HelpFormatter

    parser = subparsers.add_parser(
        "graph", formatter_class=HelpFormatter, help="make, inspect and cut vessel graphs into FOV patches",
        description="Vessel graphs: positions and radii in micrometres (um), z = depth into the brain.\n"
                    "Formats (chosen by extension or content): VesselGraph CSV pair, ClearMap npy folder,\n"
                    "Secomb .dat, GraphML, GML, and octasim's own .npz.")
    parser.set_defaults(func=lambda args: (parser.print_help(), 1)[1])
    sub = parser.add_subparsers(dest="graph_command", metavar="GRAPH_COMMAND")

    gen = sub.add_parser("generate", formatter_class=HelpFormatter,
                         help="generate a procedural block of mouse cortex vasculature",
                         description="Generate a procedural block of mouse cortical vasculature (pial vessels, "
                                     "penetrating arterioles, ascending venules, capillary bed) and write it.")
    gen.add_argument("--out", required=True, type=Path, default=argparse.SUPPRESS, metavar="FILE",
                     help="output graph file; the format follows the extension (.npz, .graphml, .gml, .dat, ...)")
    gen.add_argument("--size-um", nargs=3, type=float, default=list(DEFAULT_SIZE_UM), metavar=("X", "Y", "Z"),
                     help="block size in um: lateral x, lateral y, depth z (a block estimated above 20 million "
                          "edges, about 9 GB of memory, is refused)")
    gen.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed (same seed, same graph)")
    gen.set_defaults(func=run_generate)

    info = sub.add_parser("info", formatter_class=HelpFormatter, help="print statistics of a vessel graph",
                          description="Print statistics of a vessel graph: counts, length density, volume "
                                      "fraction, radii, branch points and segment lengths.")
    _add_input_options(info)
    info.add_argument("--json", action="store_true", help="print the statistics as JSON instead of text")
    info.set_defaults(func=run_info)

    ext = sub.add_parser("extract", formatter_class=HelpFormatter,
                         help="cut FOV-sized patches out of a large graph (reference method's rules)",
                         description="Cut FOV-sized patches out of a large vessel graph: lateral pillars of the FOV "
                                     "width; drop pillars with too few nodes or no surface vessel; start each patch "
                                     "just above the shallowest surface vessel; drop patches ending below the cortex "
                                     "or holding too few edges. Writes DIR/patch_XXX_YYY.npz (XXX, YYY = pillar "
                                     "column and row) and DIR/summary.json.")
    _add_input_options(ext)
    ext.add_argument("--out", required=True, type=Path, default=argparse.SUPPRESS, metavar="DIR",
                     help="output folder for the patches and summary.json")
    ext.add_argument("--fov-um", nargs=3, type=float, default=list(DEFAULT_FOV_UM), metavar=("X", "Y", "Z"),
                     help="patch size in um: lateral x, lateral y, depth; the pillar grid uses X x Y")
    ext.add_argument("--min-nodes", type=int, default=argparse.SUPPRESS,
                     help=f"minimum nodes per pillar (default: {DEFAULT_MIN_NODES} per {DEFAULT_FOV_UM[0]:g} x "
                          f"{DEFAULT_FOV_UM[1]:g} um, scaled by the FOV's lateral area)")
    ext.add_argument("--min-edges", type=int, default=argparse.SUPPRESS,
                     help=f"minimum edges per patch (default: {DEFAULT_MIN_EDGES} per {DEFAULT_FOV_UM[0]:g} x "
                          f"{DEFAULT_FOV_UM[1]:g} x {DEFAULT_FOV_UM[2]:g} um^3, scaled by the FOV's volume)")
    ext.add_argument("--surface-radius-um", type=float, default=DEFAULT_SURFACE_RADIUS_UM,
                     help="edges with a larger radius (um) are surface (pial) vessels")
    ext.add_argument("--cortex-depth-um", type=float, default=DEFAULT_CORTEX_DEPTH_UM,
                     help="depth (um) of the cortex: pillars span z <= this and patches must end above it")
    ext.add_argument("--drop-outside", action=argparse.BooleanOptionalAction, default=True,
                     help="drop nodes flagged as outside the brain (e.g. ClearMap region 0) before extracting")
    ext.set_defaults(func=run_extract)


def _add_input_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("graph", type=Path, metavar="GRAPH", help="input vessel graph (file, or folder for ClearMap npy)")
    p.add_argument("--voxel-size", type=float, default=None, metavar="UM",
                   help="voxel size in um for graphs stored in voxel units (VesselGraph CSV, ClearMap); "
                        "omit when the file is already in um")


def _read(args, drop_outside: bool = False):
    from octasim.graph_io import read_graph

    if args.voxel_size is not None and args.voxel_size <= 0:
        raise ValueError(f"--voxel-size must be positive (um), got {args.voxel_size}")
    return read_graph(args.graph, voxel_size_um=args.voxel_size, drop_outside=drop_outside)


# --------------------------------------------------------------------------- info
def format_stats(stats: dict[str, Any], kinds: dict[str, int] | None = None) -> str:
    """Human-readable text of ``VesselGraph.stats()`` (units in every line)."""
    lo, hi = stats["box_um"]
    size = [h - l for l, h in zip(lo, hi)]
    dens = stats["length_density_mm_per_mm3"]
    pct = lambda d: ", ".join(f"p{k} {v:.3g}" for k, v in d.items()) or "-"  # noqa: E731
    deg = stats["degree_histogram"]
    lines = [
        f"nodes                 {stats['n_nodes']:,}",
        f"edges                 {stats['n_edges']:,}",
        f"box (um)              {size[0]:.1f} x {size[1]:.1f} x {size[2]:.1f}  "
        f"(from {', '.join(f'{v:.1f}' for v in lo)})",
        f"total length          {stats['total_length_mm']:.2f} mm",
        f"length density        {dens:.1f} mm/mm^3 = {dens / 1000:.3f} m/mm^3   (mouse cortex: 0.5-0.9 m/mm^3)",
        f"volume fraction       {100 * stats['volume_fraction']:.2f} %   (mouse cortex: 1-3 %)",
        f"radius (um)           {pct(stats['radius_um_percentiles'])}",
        f"capillaries (r < 4)   {100 * stats['capillary_length_share']:.1f} % of length, "
        f"median radius {stats['median_capillary_radius_um']:.2f} um",
        f"node degrees          " + ", ".join(f"{d}: {c:,}" for d, c in deg.items()),
        f"degree-3 share        {100 * stats['degree3_share_of_branch_points']:.1f} % of branch points (degree >= 3)",
        f"segments              {stats['n_segments']:,}; length (um) {pct(stats['segment_length_um_percentiles'])}",
    ]
    if kinds:
        lines.append("edge kinds            " + ", ".join(f"{k}: {v:,}" for k, v in kinds.items()))
    return "\n".join(lines)


def _kind_counts(graph) -> dict[str, int] | None:
    import numpy as np

    from octasim.generator import KIND_NAMES

    kind = graph.edge_attrs.get("kind")
    if kind is None:
        return None
    values, counts = np.unique(kind, return_counts=True)
    return {KIND_NAMES.get(int(v), str(v)): int(c) for v, c in zip(values, counts)}


def run_info(args) -> int:
    graph = _read(args)
    stats = graph.stats()
    kinds = _kind_counts(graph)
    if args.json:
        print(json.dumps({**stats, **({"edge_kinds": kinds} if kinds else {})}, indent=2))
    else:
        print(f"{args.graph}")
        print(format_stats(stats, kinds))
    return 0


# ----------------------------------------------------------------------- generate
def run_generate(args) -> int:
    from octasim.generator import CortexParams, check_block_size, generate_cortex
    from octasim.graph_io import _format_for_write, write_graph

    size = tuple(float(v) for v in args.size_um)
    if min(size) <= 0:
        raise ValueError(f"--size-um must be three positive sizes in um, got {list(size)}")
    params = CortexParams(size_um=size)
    check_block_size(params, "--size-um")  # a block too large for the memory fails before the work
    _format_for_write(Path(args.out), None)  # an unknown extension fails before the work
    t0 = time.perf_counter()
    graph = generate_cortex(params, seed=args.seed, progress=sys.stderr.isatty())
    seconds = time.perf_counter() - t0
    path = write_graph(graph, args.out)
    print(f"generated {graph.n_nodes:,} nodes, {graph.n_edges:,} edges in {seconds:.1f} s (seed {args.seed}) "
          f"-> {path}")
    box = ([0.0, 0.0, 0.0], list(size))
    print(format_stats(graph.stats(box=box), _kind_counts(graph)))
    return 0


# ------------------------------------------------------------------------ extract
def extract_params_from_args(args):
    """ExtractParams from the command line: unset minimums are the reference values scaled to --fov-um."""
    from octasim.extract import ExtractParams

    params = ExtractParams(surface_radius_um=args.surface_radius_um, cortex_depth_um=args.cortex_depth_um,
                           outside_attr=ExtractParams.outside_attr if args.drop_outside else None,
                           ).scaled_to(args.fov_um)
    overrides = {}
    if getattr(args, "min_nodes", None) is not None:
        overrides["min_nodes_per_pillar"] = args.min_nodes
    if getattr(args, "min_edges", None) is not None:
        overrides["min_edges"] = args.min_edges
    return ExtractParams(**{**params.__dict__, **overrides}) if overrides else params


def run_extract(args) -> int:
    from dataclasses import asdict

    from octasim.atomic import atomic_path
    from octasim.extract import NoPatchError, extract_patches
    from octasim.graph_io import write_graph

    params = extract_params_from_args(args)
    graph = _read(args, drop_outside=args.drop_outside)
    try:
        patches, report = extract_patches(graph, params, progress=sys.stderr.isatty())
    except ValueError as exc:  # e.g. a pillar grid too large for the memory: name the file
        raise ValueError(f"{args.graph}: {exc}") from exc
    if not patches:
        raise NoPatchError(f"{args.graph}: no patch could be extracted.\n{report.summary()}\n"
                           f"advice: {report.advice(ADVICE_NAMES)}")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for patch in patches:
        path = out / f"{patch.name}.npz"
        patch.graph.meta = {**patch.graph.meta, "source": str(args.graph)}
        write_graph(patch.graph, path, fmt="npz")  # atomic
        records.append({"file": path.name, "pillar": list(patch.pillar),
                        "origin_um": [round(float(v), 6) for v in patch.origin_um],
                        "size_um": [float(v) for v in patch.size_um],
                        "n_nodes": patch.graph.n_nodes, "n_edges": patch.graph.n_edges})
    written = {r["file"] for r in records}
    stale = sorted(p.name for p in out.glob("patch_*.npz") if p.name not in written)
    summary = {"source": str(args.graph), "voxel_size_um": args.voxel_size,
               "params": asdict(params),
               "report": {k: v for k, v in report.to_dict().items() if k != "params"}, "patches": records}
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    print(report.summary())
    edges = [r["n_edges"] for r in records]
    print(f"wrote {len(records)} patches to {out} (edges per patch: min {min(edges):,}, "
          f"median {statistics.median(edges):,.0f}, max {max(edges):,}) and summary.json")
    if stale:
        print(f"note: {len(stale)} older patch file(s) in {out} are not from this run "
              f"(e.g. {stale[0]}); summary.json lists this run's patches", file=sys.stderr)
    return 0
