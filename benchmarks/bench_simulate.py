"""Speed benchmark of the voxelizer + `paper` artifact simulator (issue 3, "Speed"). Prints figures.

1. One 250^3 sample at 2 um from a procedural patch of >= 2,000 edges: voxelization and the full
   `paper` simulation timed separately and together, on one core (target: <= 2 s together).
2. A straightforward per-voxel Python loop implementing the same `paper` model (written here, not
   in the library) against the library on the same input: times, speed ratio (target >= 50x) and
   the vessel-voxel and tail-voxel means of both (target: within 2 %). The loop runs on a lateral
   window of the volume (every depth); the per-voxel time is extrapolated to the full volume.
3. Peak memory (VmHWM, else ru_maxrss) of one full 250^3 sample (`render_sample`: procedural block,
   extraction, voxelization with occupancy, simulation) in a fresh process (target < 1.5 GB).

Usage: python benchmarks/bench_simulate.py [--window 48] [--repeat 3] [--seed 0]
"""
from __future__ import annotations

import os

# one core: thread pools read these when numpy / scipy / torch are first imported
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import math  # noqa: E402
import random  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

SHAPE = (250, 250, 250)
VOXEL_UM = 2.0
NOISE_STD = 0.7  # granular noise std fixed for the comparison (paper draws it from [0, 1.4])


def _limit_torch_threads() -> None:
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


def make_patch(seed: int):
    """A 500 um FOV patch (>= 2,000 edges) of a procedural cortex block, with default extractor rules."""
    from octasim.extract import ExtractParams, extract_patches
    from octasim.generator import CortexParams, generate_cortex

    t = time.perf_counter()
    block = generate_cortex(CortexParams(size_um=(520.0, 520.0, 650.0)), seed=seed)
    t_gen = time.perf_counter() - t
    t = time.perf_counter()
    patches, report = extract_patches(block, ExtractParams())
    t_ext = time.perf_counter() - t
    if not patches:
        raise SystemExit("no patch from the procedural block:\n" + report.summary())
    return patches[0], t_gen, t_ext


def paper_params(seed: int, **changes) -> dict:
    from octasim.profiles import load_profile, sample_parameters

    params = sample_parameters(load_profile("paper"), np.random.default_rng(seed))
    params.update(changes)
    return params


# ----------------------------------------------------------------------------- the reference loop
def loop_paper(label, radius, orient, lower, vs_um: float, p: dict, seed: int):
    """The `paper` artifact model (docs/design.md, "Signal model") as a straightforward per-voxel Python loop.

    Returns (image in [0, 1], tail mask: non-vessel voxels that a tail reached). The Gaussian
    smoothing uses scipy, as the reference implementation did; everything else is per voxel.
    """
    rnd = random.Random(seed)
    nx, ny, nz = label.shape
    vessel = np.zeros(label.shape, dtype=np.float64)
    tails = np.zeros(label.shape, dtype=np.float64)
    tail_mask = np.zeros(label.shape, dtype=bool)
    for i in range(nx):
        for j in range(ny):
            for k in range(nz):
                if not label[i, j, k]:
                    continue
                r_hat = min(max(float(radius[i, j, k]) / p["r_norm_um"], 0.0), 1.0)
                i_ang = 1.0
                if p["angle_loss"]:
                    i_ang = p["angle_loss_floor"] * 10.0 ** float(orient[i, j, k])
                    if p["angle_correction"]:
                        sig = 1.0 / (1.0 + math.exp(-p["angle_correction_slope"] * (r_hat - p["angle_correction_center"])))
                        i_ang = max(i_ang, sig)
                s = (9.0 * i_ang + r_hat) / 10.0
                vessel[i, j, k] = p["vessel_gain"] * s
                if not (p["tails"] and lower[i, j, k]):
                    continue
                length = int(round(r_hat * p["tail_length_um"] * p["len_tail"] / vs_um))
                start = max(p["tail_start_gain"] * s * r_hat, 1e-12)
                cap = p["tail_cap_fraction"] * p["vessel_gain"] * s
                for d in range(length):
                    kk = k + 1 + d
                    if kk >= nz:
                        break
                    frac = d / (length - 1) if length > 1 else 0.0
                    val = start * (p["tail_end_value"] / start) ** frac
                    val += rnd.gauss(0.0, p["tail_noise_std"])
                    val = min(max(val, 0.0), cap)
                    if val > tails[i, j, kk]:
                        tails[i, j, kk] = val
                    tail_mask[i, j, kk] = True
    image = np.zeros(label.shape, dtype=np.float64)
    std = p["granular_noise_std"] if p["granular_noise"] else 0.0
    for i in range(nx):
        for j in range(ny):
            for k in range(nz):
                v = max(tails[i, j, k], vessel[i, j, k])
                if std > 0:
                    v += rnd.gauss(0.0, std)
                image[i, j, k] = v
    if p["smoothing"]:
        image = ndimage.gaussian_filter(image, p["smooth_sigma_vox"])
    top = p["intensity_max"]
    for i in range(nx):
        for j in range(ny):
            for k in range(nz):
                image[i, j, k] = min(max(image[i, j, k] / top, 0.0), 1.0)
    tail_mask &= label == 0
    return image.astype(np.float32), tail_mask


def crop_maps(maps, window: int):
    """The maps of a central lateral window (window x window columns, all depths)."""
    from octasim.voxelize import VoxelMaps

    i0 = (maps.shape[0] - window) // 2
    j0 = (maps.shape[1] - window) // 2
    sl = (slice(i0, i0 + window), slice(j0, j0 + window), slice(None))
    return VoxelMaps(label=np.ascontiguousarray(maps.label[sl]), radius=np.ascontiguousarray(maps.radius[sl]),
                     orientation=np.ascontiguousarray(maps.orientation[sl]),
                     lower_wall=np.ascontiguousarray(maps.lower_wall[sl]), occupancy=None,
                     voxel_size_um=maps.voxel_size_um)


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


# ----------------------------------------------------------------------------- parts
def part_speed(args, patch):
    from octasim.simulate import simulate
    from octasim.voxelize import voxelize

    print(f"\n[1] one {SHAPE[0]}^3 sample at {VOXEL_UM:g} um, patch of {patch.graph.n_edges} edges, one core "
          f"(best of {args.repeat})")
    t_vox, t_vox_occ, t_sim = [], [], []
    for r in range(args.repeat):
        t = time.perf_counter()
        maps = voxelize(patch.graph, SHAPE, VOXEL_UM, occupancy=False)
        t_vox.append(time.perf_counter() - t)
        t = time.perf_counter()
        voxelize(patch.graph, SHAPE, VOXEL_UM, occupancy=True)
        t_vox_occ.append(time.perf_counter() - t)
        params = paper_params(args.seed + r)
        t = time.perf_counter()
        simulate(maps, params, np.random.default_rng(args.seed + r))
        t_sim.append(time.perf_counter() - t)
    vox, vox_occ, sim = min(t_vox), min(t_vox_occ), min(t_sim)
    print(f"    voxelization              {vox:6.2f} s   (with partial-volume occupancy: {vox_occ:.2f} s)")
    print(f"    paper simulation          {sim:6.2f} s")
    print(f"    together                  {vox + sim:6.2f} s   target <= 2 s: {'OK' if vox + sim <= 2 else 'MISSED'}")
    print(f"    vessel voxels {int(maps.label.sum())} ({100 * maps.label.mean():.2f} %), "
          f"lower-wall voxels {int(maps.lower_wall.sum())}")
    return maps, sim


def part_loop(args, maps, t_lib_full: float):
    from octasim.simulate import simulate

    w = args.window
    sub = crop_maps(maps, w)
    n_sub = int(np.prod(sub.shape))
    n_full = int(np.prod(maps.shape))
    print(f"\n[2] per-voxel Python loop vs library, same input: central window of {w} x {w} columns x "
          f"{sub.shape[2]} depths = {n_sub} voxels ({100 * n_sub / n_full:.1f} % of the volume; the loop's "
          f"full-volume time is extrapolated per voxel)")
    rows = []
    for name, changes in (("signal + tails (no noise, no smoothing)", dict(granular_noise=False, smoothing=False)),
                          (f"full paper model (granular noise std {NOISE_STD})", dict(granular_noise_std=NOISE_STD))):
        params = paper_params(args.seed, **changes)
        t = time.perf_counter()
        lib = simulate(sub, params, np.random.default_rng(args.seed))
        t_lib = time.perf_counter() - t
        t = time.perf_counter()
        ref, tail_mask = loop_paper(sub.label, sub.radius, sub.orientation, sub.lower_wall,
                                    sub.voxel_size_um, params, args.seed + 1)
        t_loop = time.perf_counter() - t
        rows.append((name, params, lib, ref, tail_mask, t_lib, t_loop))

    vessel = sub.label > 0
    ok_all = True
    for name, params, lib, ref, tail_mask, t_lib, t_loop in rows:
        print(f"    {name}:")
        print(f"      time on the window: loop {t_loop:8.2f} s   library {t_lib:7.3f} s   ratio {t_loop / t_lib:7.0f}x")
        for what, mask in (("vessel", vessel), ("tail", tail_mask)):
            a, b = float(lib[mask].mean()), float(ref[mask].mean())
            ok = _rel(a, b) <= 0.02
            ok_all &= ok
            print(f"      {what:6s}-voxel mean ({int(mask.sum()):7d} voxels): library {a:.4f}  loop {b:.4f}  "
                  f"difference {100 * _rel(a, b):.2f} %  {'OK' if ok else 'MISSED'} (target <= 2 %)")
    t_loop_full = rows[-1][6] / n_sub * n_full
    ratio = t_loop_full / t_lib_full
    print(f"    full paper model on the whole {SHAPE[0]}^3 volume: loop ~{t_loop_full:.0f} s (extrapolated from "
          f"{rows[-1][6]:.1f} s on {n_sub} voxels), library {t_lib_full:.2f} s (measured) -> "
          f"{ratio:.0f}x  target >= 50x: {'OK' if ratio >= 50 else 'MISSED'}")
    print(f"    means agree within 2 %: {'OK' if ok_all else 'MISSED'}")


def part_memory(args):
    print(f"\n[3] peak memory of one {SHAPE[0]}^3 sample (render_sample in a fresh process: procedural block, "
          "extraction, voxelization with occupancy, simulation)")
    # VmHWM (/proc/self/status) is this process's own peak; ru_maxrss of a child may include the
    # parent's size at fork time, so it is only the fallback
    code = ("import resource, time\n"
            "def peak():\n"
            "    try:\n"
            "        for line in open('/proc/self/status'):\n"
            "            if line.startswith('VmHWM:'):\n"
            "                return int(line.split()[1])\n"
            "    except OSError:\n"
            "        pass\n"
            "    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "base = peak()\n"
            "from octasim.synth import SynthConfig, render_sample\n"
            "import octasim.simulate, octasim.generator, octasim.extract, octasim.voxelize\n"
            "imp = peak()\n"
            f"t = time.perf_counter(); s = render_sample(SynthConfig(shape={SHAPE}, voxel_size_um={VOXEL_UM}, seed={args.seed}), 0)\n"
            "dt = time.perf_counter() - t\n"
            "print(base, imp, peak(), dt, s.record['source']['n_edges'])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ))
    if out.returncode:
        raise SystemExit(f"memory measurement failed:\n{out.stderr}")
    base, imp, peak, dt, n_edges = out.stdout.split()
    peak_mb = int(peak) / 1024  # KiB -> MiB
    print(f"    interpreter {int(base) / 1024:.0f} MB, after imports {int(imp) / 1024:.0f} MB, "
          f"peak {peak_mb:.0f} MB  target < 1536 MB: {'OK' if peak_mb < 1536 else 'MISSED'}")
    print(f"    that sample (patch of {n_edges} edges) took {float(dt):.2f} s end to end, "
          "block generation and extraction included")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--window", type=int, default=48, help="lateral window (columns per side) for the loop")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions of the timed library calls")
    parser.add_argument("--seed", type=int, default=0, help="seed of the block and the simulation")
    parser.add_argument("--skip-memory", action="store_true", help="skip part 3")
    args = parser.parse_args()
    _limit_torch_threads()
    import octasim.simulate  # noqa: F401  (import time not counted)

    patch, t_gen, t_ext = make_patch(args.seed)
    print(f"procedural block 520 x 520 x 650 um: generated in {t_gen:.2f} s, patches extracted in {t_ext:.2f} s")
    maps, t_sim = part_speed(args, patch)
    part_loop(args, maps, t_sim)
    if not args.skip_memory:
        part_memory(args)
    print(f"\n(ru_maxrss of this benchmark process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")


if __name__ == "__main__":
    main()
