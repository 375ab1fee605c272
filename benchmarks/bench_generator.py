"""Benchmark: procedural mouse-cortex generator, time and morphometry of a 2 x 2 x 1.2 mm block.

Prints the generation time (best of --repeat runs, one core) and the block's statistics beside
the published mouse-cortex ranges (docs/design.md, "Mouse cortex morphometry"). Usage:
    python benchmarks/bench_generator.py [--size-um 2000 2000 1200] [--seed 0] [--repeat 3]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.spatial import cKDTree

from octasim.generator import KIND_NAMES, CortexParams, generate_cortex


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-um", nargs=3, type=float, default=[2000.0, 2000.0, 1200.0], help="block size x y z, um")
    ap.add_argument("--seed", type=int, default=0, help="generator seed")
    ap.add_argument("--repeat", type=int, default=3, help="generation runs; the best time is printed")
    args = ap.parse_args()
    size = tuple(args.size_um)

    times = []
    for _ in range(max(1, args.repeat)):
        t0 = time.perf_counter()
        g = generate_cortex(CortexParams(size_um=size), seed=args.seed)
        times.append(time.perf_counter() - t0)
    print(f"generate {' x '.join(f'{v:g}' for v in size)} um, seed {args.seed}: best {min(times):.2f} s, "
          f"median {np.median(times):.2f} s over {len(times)} run(s); {g.n_nodes:,} nodes, {g.n_edges:,} edges")

    t0 = time.perf_counter()
    st = g.stats(box=([0.0, 0.0, 0.0], list(size)))
    t_stats = time.perf_counter() - t0
    kind, length = g.edge_attrs["kind"], g.edge_lengths()
    segs = g.segments()
    cap_seg = np.array([length[s].sum() for s in segs if (kind[s] == 0).all()])
    dive = _dive_points(g)
    nn = cKDTree(dive).query(dive, k=2)[0][:, 1] if len(dive) > 1 else np.array([np.nan])
    pial = kind >= 3

    rows = [
        ("length density (mm/mm^3)", f"{st['length_density_mm_per_mm3']:.0f}", "500-900"),
        ("vascular volume fraction (%)", f"{100 * st['volume_fraction']:.2f}", "1-3"),
        ("median capillary radius (um)", f"{st['median_capillary_radius_um']:.2f}", "2-3"),
        ("capillary (r < 4 um) length share", f"{st['capillary_length_share']:.2f}", "most"),
        ("degree-3 share of branch points", f"{st['degree3_share_of_branch_points']:.3f}", "almost all"),
        ("median capillary segment length (um)", f"{np.median(cap_seg):.1f}", "40-80"),
        ("capillary segment length 25-75 % (um)", f"{np.percentile(cap_seg, 25):.0f}-{np.percentile(cap_seg, 75):.0f}", ""),
        ("penetrating vessels / nearest spacing (um)", f"{len(dive)} / {np.median(nn):.0f}", "every 100-150"),
        ("pial radius max / edges r >= 25 um", f"{g.radius[pial].max():.1f} / {(g.radius[pial] >= 25).sum()}", "10-50"),
    ]
    print(f"stats computed in {t_stats:.2f} s")
    w = max(len(r[0]) for r in rows)
    print(f"{'statistic':<{w}}  {'value':>12}  published")
    for name, value, ref in rows:
        print(f"{name:<{w}}  {value:>12}  {ref}")
    print("radius percentiles (um, per edge):", st["radius_um_percentiles"])
    print("degree histogram:", st["degree_histogram"])
    for code, name in KIND_NAMES.items():
        sel = kind == code
        if sel.any():
            print(f"  kind {code} {name:<22} {sel.sum():>8,} edges  {length[sel].sum() / 1000:8.1f} mm  "
                  f"radius {np.median(g.radius[sel]):5.1f} (median) {g.radius[sel].max():5.1f} (max) um")


def _dive_points(g) -> np.ndarray:
    """(x, y) of nodes where a penetrating vessel (kind 1, 2) meets its pial tree (kind 3, 4)."""
    kind = g.edge_attrs["kind"]
    pen = np.zeros(g.n_nodes, bool)
    pen[g.edges[(kind == 1) | (kind == 2)].ravel()] = True
    pial = np.zeros(g.n_nodes, bool)
    pial[g.edges[kind >= 3].ravel()] = True
    return g.nodes[pen & pial, :2]


if __name__ == "__main__":
    main()
