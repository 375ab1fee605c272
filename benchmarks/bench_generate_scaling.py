"""Scaling of `octasim generate` (issue 12): samples/s with the plain process pool (--workers K) and
with a dask LocalCluster (--scheduler local --workers K), K = 1 and 2, and the speed-up of K = 2 over
K = 1 (target >= 1.8x on 2 cores). Every run writes a fresh folder; all must be byte-identical.

Two figures per run:
  end-to-end  n / wall time of the whole `generate_dataset` call, with process or cluster start-up
              (and each worker's first imports) included: what a user of a short run sees;
  steady      samples/s once every worker has finished its first sample: (n - K) / (time of the
              last completion - time of the K-th), i.e. the throughput of a long run.

Usage: python benchmarks/bench_generate_scaling.py [--n 8] [--shape 64] [--voxel-size 2]
       [--profile paper] [--no-qc] [--repeat 1]
(--repeat R: the best of R runs of each setting, for a machine shared with other work)
"""
from __future__ import annotations

import os

# one thread per worker everywhere (the in-process K = 1 run too), as the pool and dask workers use
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import importlib  # noqa: E402
import logging  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402


def run_once(config, out: Path, n: int, workers: int, scheduler: str | None, qc: bool) -> tuple[float, float]:
    """(end-to-end samples/s, steady samples/s) of one `generate_dataset` call into ``out``."""
    from octasim.synth import generate_dataset

    finished: list[float] = []
    start = time.perf_counter()
    generate_dataset(config, out, n, workers=workers, scheduler=scheduler, progress=False, qc=qc,
                     on_sample=lambda rec: finished.append(time.perf_counter()))
    total = time.perf_counter() - start
    k = min(workers, n - 1)
    steady = (n - k) / (finished[-1] - finished[k - 1]) if n > k and finished[-1] > finished[k - 1] else float("nan")
    return n / total, steady


def volumes(out: Path) -> dict[str, bytes]:
    """Relative path -> bytes of the images, labels and records."""
    return {f"{sub}/{p.name}": p.read_bytes() for sub in ("images", "labels", "records")
            for p in sorted((out / sub).iterdir())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=8, help="samples per run")
    parser.add_argument("--shape", type=int, default=64, help="volume edge, voxels")
    parser.add_argument("--voxel-size", type=float, default=2.0, help="voxel size, um")
    parser.add_argument("--profile", default="paper")
    parser.add_argument("--no-qc", action="store_true", help="skip QC pictures and the contact sheet")
    parser.add_argument("--repeat", type=int, default=1, help="runs per setting; the best is reported")
    args = parser.parse_args()
    logging.getLogger("distributed").setLevel(logging.ERROR)

    from octasim.synth import SynthConfig, render_sample

    config = SynthConfig(profile=args.profile, shape=args.shape, voxel_size_um=args.voxel_size, seed=0)
    render_sample(SynthConfig(profile=args.profile, shape=args.shape, voxel_size_um=args.voxel_size, seed=99), 0)
    if not args.no_qc:
        importlib.import_module("octasim.qc")  # warm-up: the in-process K = 1 run should not pay the imports
    print(f"octasim generate scaling: {args.n} samples of {args.shape}^3 at {args.voxel_size:g} um, "
          f"profile {args.profile}, QC {'off' if args.no_qc else 'on'}, {os.cpu_count()} CPUs")
    runs = [("process pool", 1, None), ("process pool", 2, None), ("dask LocalCluster", 1, "local"),
            ("dask LocalCluster", 2, "local")]
    results: dict[tuple[str, int], tuple[float, float]] = {}
    reference = None
    with tempfile.TemporaryDirectory(prefix="octasim-bench-scaling-") as tmp:
        for name, k, scheduler in runs:
            best = (0.0, 0.0)
            same = "identical"
            for r in range(max(1, args.repeat)):
                out = Path(tmp) / f"{name.split()[0]}-{k}-{r}"
                e2e, steady = run_once(config, out, args.n, k, scheduler, not args.no_qc)
                best = (max(best[0], e2e), max(best[1], steady))
                files = volumes(out)
                reference = files if reference is None else reference
                same = same if files == reference else "DIFFERENT FILES"
            results[(name, k)] = best
            e2e, steady = results[(name, k)]
            print(f"  {name:18s} {k} worker{'s' if k > 1 else ' '}: {e2e:6.2f} samples/s end-to-end, "
                  f"{steady:6.2f} samples/s steady  ({same})")
    for name in ("process pool", "dask LocalCluster"):
        (e1, s1), (e2, s2) = results[(name, 1)], results[(name, 2)]
        print(f"  {name:18s} 2 vs 1 workers: {e2 / e1:.2f}x end-to-end, {s2 / s1:.2f}x steady (target >= 1.8x)")
    (p1, ps1), (d1, ds1) = results[("process pool", 1)], results[("dask LocalCluster", 1)]
    (p2, ps2), (d2, ds2) = results[("process pool", 2)], results[("dask LocalCluster", 2)]
    print(f"  dask / process pool: {d1 / p1:.2f}x (1 worker), {d2 / p2:.2f}x (2 workers) end-to-end; "
          f"{ds1 / ps1:.2f}x, {ds2 / ps2:.2f}x steady")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
