"""``octasim demo``: the whole pipeline on the embedded default, end to end, in minutes on a CPU.

generate synthetic OCTA (procedural cortex) -> train the default U-Net -> segment held-out
synthetic OCTA and two-photon scans with the freshly trained model and with the bundled model ->
evaluate, printing both models' Dice / clDice and where every output and QC picture is.
"""
from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

from octasim.models import DEFAULT_MODEL


def register(subparsers) -> None:
    from .cli import HelpFormatter

    p = subparsers.add_parser("demo", formatter_class=HelpFormatter,
                              help="run generate -> train -> segment -> evaluate on the embedded default",
                              description=__doc__)
    add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="folder for every output of the demo")
    p.add_argument("--n-train", type=int, default=12, help="synthetic training volumes to generate")
    p.add_argument("--n-test", type=int, default=3, help="held-out synthetic volumes to segment and score")
    p.add_argument("--shape", type=int, default=96, help="edge length of each synthetic volume, voxels")
    p.add_argument("--voxel-size", type=float, default=2.0, help="voxel size of the synthetic volumes, um")
    p.add_argument("--profile", default="octa", help="simulation profile (paper, octa, two-photon or a YAML file)")
    p.add_argument("--steps", type=int, default=1200, help="training steps of the default U-Net (about 0.3 s each on a 2-core CPU)")
    p.add_argument("--workers", type=int, default=2, help="processes for data generation")
    p.add_argument("--seed", type=int, default=0, help="random seed of the whole demo")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")


def _step(title: str) -> float:
    print(f"\n=== {title}", flush=True)
    return time.perf_counter()


def run(args: argparse.Namespace) -> int:
    from .cli import main as octasim

    out: Path = args.out
    shape = str(args.shape)
    started = time.perf_counter()

    t = _step("1/4 generate: synthetic volumes with exact labels from procedural mouse cortex")
    test_profiles = [args.profile] + [p for p in ("two-photon",) if p != args.profile]
    sets = [("train", args.profile, args.n_train, args.seed)]
    sets += [(f"test_{p}", p, args.n_test, args.seed + 1000 + n) for n, p in enumerate(test_profiles)]
    for name, profile, n, seed in sets:
        rc = octasim(["generate", "--out", str(out / f"data_{name}"), "--n", str(n), "--profile", profile,
                      "--shape", shape, "--voxel-size", str(args.voxel_size), "--seed", str(seed),
                      "--workers", str(args.workers)])
        if rc:
            return rc
    print(f"    {time.perf_counter() - t:.0f} s")

    t = _step("2/4 train: MONAI 3D U-Net (default config) on the synthetic training set")
    run_dir = out / "run"
    rc = octasim(["train", "--data", str(out / "data_train"), "--out", str(run_dir), "--config", "default",
                  "--steps", str(args.steps), "--device", args.device, "--seed", str(args.seed)]
                 + (["--resume"] if (run_dir / "last.pt").exists() else []))
    if rc:
        return rc
    print(f"    {time.perf_counter() - t:.0f} s")

    t = _step("3/4 segment: the held-out scans, with the fresh model and with the bundled model")
    models = [("fresh", str(run_dir / "best.pt")), ("bundled", DEFAULT_MODEL)]
    for profile in test_profiles:
        for label, model in models:
            rc = octasim(["segment", str(out / f"data_test_{profile}" / "images"), "--model", model,
                          "--out", str(out / f"segmentation_{label}_{profile}"), "--device", args.device,
                          "--overwrite"])
            if rc:
                return rc
    print(f"    {time.perf_counter() - t:.0f} s")

    t = _step("4/4 evaluate: Dice, clDice and topology errors against the exact labels")
    table = []
    for profile in test_profiles:
        for label, _ in models:
            seg = out / f"segmentation_{label}_{profile}"
            results = out / f"results_{label}_{profile}.csv"
            rc = octasim(["evaluate", "--pred", str(seg), "--prob", str(seg),
                          "--label", str(out / f"data_test_{profile}" / "labels"), "--out", str(results)])
            if rc:
                return rc
            table.append((profile, label, _mean_row(results) or {}))
    print(f"\nDemo finished in {(time.perf_counter() - started) / 60:.1f} min. Held-out synthetic volumes "
          f"({args.n_test} per profile), mean over volumes:")
    print(f"  {'profile':<12} {'model':<40} {'Dice':>6} {'clDice':>7}")
    for profile, label, mean in table:
        name = f"{label} ({run_dir / 'best.pt' if label == 'fresh' else DEFAULT_MODEL})"
        print(f"  {profile:<12} {name:<40} {float(mean.get('dice', 'nan')):>6.3f} "
              f"{float(mean.get('cldice', 'nan')):>7.3f}")
    print(f"Outputs:\n  training data + QC pictures: {out / 'data_train'} (qc/*.png, contact_sheet.png)\n"
          f"  model and curves:            {run_dir} (best.pt, metrics.csv, *.png)\n"
          f"  segmentations + QC overlays: {out}/segmentation_*\n  metrics:                     {out}/results_*.csv")
    return 0


def _mean_row(path: Path) -> dict | None:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        if any(str(v).strip().lower() == "mean" for v in row.values()):
            return row
    return rows[-1] if rows else None


if __name__ == "__main__":
    import sys

    parser = argparse.ArgumentParser(prog="python -m octasim.cli.demo", description=__doc__)
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
