"""Benchmark: procedural cortex generation and patch extraction on a 2 x 2 x 1.2 mm block.

Prints wall-clock times (seconds) and the patch yield. Usage:
    python benchmarks/bench_graph.py [--size-um 2000 2000 1200] [--seed 0] [--fov-um 500 500 500]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from octasim.extract import ExtractParams, extract_patches
from octasim.generator import CortexParams, generate_cortex


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-um", nargs=3, type=float, default=[2000.0, 2000.0, 1200.0], help="block size, um")
    ap.add_argument("--seed", type=int, default=0, help="generator seed")
    ap.add_argument("--fov-um", nargs=3, type=float, default=[500.0, 500.0, 500.0], help="patch size, um")
    args = ap.parse_args()

    t0 = time.perf_counter()
    graph = generate_cortex(CortexParams(size_um=tuple(args.size_um)), seed=args.seed)
    t_gen = time.perf_counter() - t0
    size = " x ".join(f"{v:g}" for v in args.size_um)
    print(f"generate  {size} um block, seed {args.seed}: {t_gen:6.2f} s  "
          f"({graph.n_nodes:,} nodes, {graph.n_edges:,} edges)")

    params = ExtractParams().scaled_to(args.fov_um)
    t0 = time.perf_counter()
    patches, report = extract_patches(graph, params)
    t_ext = time.perf_counter() - t0
    print(f"extract   fov {' x '.join(f'{v:g}' for v in args.fov_um)} um: {t_ext:6.2f} s  "
          f"({report.n_patches} patches of {report.n_pillars} pillars)")
    print(report.summary())
    if patches:
        edges = np.array([p.graph.n_edges for p in patches])
        print(f"edges per patch: min {edges.min():,}  median {np.median(edges):,.0f}  max {edges.max():,}")
        starts = np.array([p.origin_um[2] for p in patches])
        print(f"patch start depth (um): min {starts.min():.1f}  max {starts.max():.1f}")
    else:
        print("advice:", report.advice())


if __name__ == "__main__":
    main()
