"""Training speed and (with --full) the issue-4 accuracy target of the default config, on CPU.

Prints: the network's training step rate (steps/s, patches/s) for the default config; the loader's
throughput alone (patches/s, in-memory and on-the-fly) so one can see that the loader keeps up; the
forward time of a batch of 64^3 inference windows (and the implied time for a 160^3 volume with
overlap 0.5).

--full: the target run: generate 16 `octa` volumes of 128^3 (plus 4 held-out test volumes from another
seed), train the default config on CPU for at most --minutes, and report Dice on the test volumes
(sliding window 64^3, overlap 0.5, the threshold calibrated on the validation volumes), beside two
intensity-only references on the same volumes: Otsu, and the best single global threshold chosen on
the test volumes themselves. Target: Dice >= 0.85 within 20 minutes.

    python benchmarks/bench_train.py                 # speed figures, ~2-3 minutes
    python benchmarks/bench_train.py --full          # + the 20-minute accuracy run
"""
from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def make_data(root: Path, n: int, seed: int, shape: int, workers: int) -> Path:
    from octasim.synth import SynthConfig, generate_dataset

    generate_dataset(SynthConfig(profile="octa", shape=(shape,) * 3, voxel_size_um=2.0, seed=seed), root, n,
                     workers=workers, progress=True, qc=False)
    return root


def loader_rate(loader, n_batches: int, batch_size: int) -> float:
    """Patches per second from the loader alone (after a warm-up batch)."""
    it = iter(loader)
    next(it)
    t = time.perf_counter()
    for _ in range(n_batches):
        next(it)
    return n_batches * batch_size / (time.perf_counter() - t)


def step_rate(cfg, batch, n_steps: int) -> float:
    """Optimizer steps per second of the network alone, on a fixed batch (CPU, fp32)."""
    from octasim.model import build_unet
    from octasim.train.trainer import make_loss
    import dataclasses

    model = build_unet(dataclasses.asdict(cfg.model)).train().to(memory_format=torch.channels_last_3d)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optimizer.lr)
    loss_fn = make_loss(cfg)
    x, y = batch["image"].contiguous(memory_format=torch.channels_last_3d), batch["label"]  # as the trainer on CPU

    def one():
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    one()
    t = time.perf_counter()
    for _ in range(n_steps):
        one()
    return n_steps / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="existing dataset folder (default: generate 4 octa 128^3 volumes)")
    ap.add_argument("--config", default="default", help="training config name or YAML")
    ap.add_argument("--steps", type=int, default=5, help="timed training steps")
    ap.add_argument("--full", action="store_true", help="run the issue-4 accuracy target (<= --minutes)")
    ap.add_argument("--minutes", type=float, default=20.0, help="training budget of --full, minutes")
    ap.add_argument("--workdir", type=Path, default=None, help="where --full writes data and the run")
    args = ap.parse_args()

    from octasim.train.config import load_config
    from octasim.train.data import (OnTheFlyDataset, PatchDataset, load_dataset_samples, load_volumes,
                                    worker_init)

    cfg = load_config(args.config)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; config {args.config}: channels "
          f"{cfg.model.channels}, batch {cfg.batch_size}, patch {cfg.patch_size}^3, crop {cfg.crop}^3, "
          f"workers {cfg.num_workers}")
    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    data = args.data or make_data(tmp / "data", 4, 1, 128, 1)
    vols = load_volumes(load_dataset_samples([data]).samples)
    bs = cfg.batch_size

    # loader alone
    ds = PatchDataset(vols, cfg, length=10_000)
    loader_main = None
    for workers in sorted({0, cfg.num_workers}):
        loader = torch.utils.data.DataLoader(ds, batch_size=bs, num_workers=workers,
                                             worker_init_fn=worker_init if workers else None)
        rate = loader_rate(loader, 8, bs)
        loader_main = rate if workers == 0 else loader_main
        print(f"loader in-memory, {workers} worker(s): {rate:.2f} patches/s")
    otf = OnTheFlyDataset(cfg)
    loader = torch.utils.data.DataLoader(otf, batch_size=bs, num_workers=cfg.num_workers,
                                         worker_init_fn=worker_init if cfg.num_workers else None)
    n = max(2, 2 * cfg.on_the_fly.crops_per_volume // bs)
    print(f"loader on-the-fly ({'/'.join(p.name for p in cfg.on_the_fly.profiles)}, "
          f"{'x'.join(map(str, cfg.on_the_fly.shape))} voxels, {cfg.on_the_fly.crops_per_volume} crops/volume), "
          f"{cfg.num_workers} worker(s): {loader_rate(loader, n, bs):.2f} patches/s")
    del loader

    # network alone
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=bs)))
    sr = step_rate(cfg, batch, args.steps)
    print(f"training step (network, fp32 CPU): {sr:.3f} steps/s = {sr * bs:.2f} patches/s "
          f"({1 / sr:.2f} s/step)")

    # inference windows
    import dataclasses
    from octasim.model import build_unet
    model = build_unet(dataclasses.asdict(cfg.model)).eval()
    x = torch.rand(4, 1, cfg.patch_size, cfg.patch_size, cfg.patch_size)
    with torch.inference_mode():
        model(x)
        t = time.perf_counter()
        model(x)
        dt = (time.perf_counter() - t) / 4
    n_win = math.ceil((160 - cfg.patch_size) / (cfg.patch_size * 0.5) + 1) ** 3
    print(f"inference: {dt:.3f} s per {cfg.patch_size}^3 window (batch 4) -> ~{dt * n_win:.1f} s for the "
          f"{n_win} windows of a 160^3 volume at overlap 0.5")

    if not args.full:
        return

    from octasim.metrics import dice as dice_score
    from octasim.train.trainer import train

    work = args.workdir or tmp
    train_dir = make_data(work / "octa_train", 16, 11, 128, 2)
    test_dir = make_data(work / "octa_test", 4, 12, 128, 2)
    budget_s = args.minutes * 60
    # the schedule (constant lr, then linear decay) is sized to fill the budget: on 2 cores the loader
    # worker and the network take turns, so a step costs the network's time plus the loader's time for
    # a batch (measured in the main process); less 10 % for validation. The time cap ends the run anyway.
    shared = 1.0 / (1.0 / sr + bs / loader_main)
    steps = int(0.9 * budget_s * shared)
    print(f"full run: training {steps} steps (budget {args.minutes:.0f} min at ~{shared:.2f} steps/s with "
          f"the loader sharing the cores)")
    t = time.perf_counter()
    m = train(cfg, [train_dir], work / "run", steps=steps, device="cpu", progress=True, max_seconds=budget_s)
    train_s = time.perf_counter() - t
    from octasim.model import load_checkpoint
    from octasim.segment import otsu_segment, prepare_model, segment_volume
    ck = load_checkpoint(work / "run" / "best.pt")
    model, _ = prepare_model(ck, "cpu")
    scores, otsu, images, labels = [], [], [], []
    for image, label in load_volumes(load_dataset_samples([test_dir]).samples):
        _, mask = segment_volume(image, (ck["voxel_size_um"],) * 3, ck, model=model, overlap=0.5)
        scores.append(dice_score(mask, label))
        otsu.append(dice_score(otsu_segment(image)[1], label))
        images.append(image)
        labels.append(label)
    # intensity-only reference: one global threshold, chosen on these test volumes themselves (an
    # upper bound for any method that thresholds intensity, Otsu included)
    grid = np.linspace(0.02, 0.98, 49)
    by_t = [np.mean([dice_score(im > t, lb) for im, lb in zip(images, labels)]) for t in grid]
    k = int(np.argmax(by_t))
    print(f"full run: {m['step']} steps in {train_s / 60:.1f} min (wall, incl. loading and validation); "
          f"best validation Dice {m['best_val_dice']:.4f} at step {m['best_step']}, threshold {ck['threshold']:.2f}")
    print(f"held-out octa test Dice (4 x 128^3, overlap 0.5): U-Net mean {np.mean(scores):.4f} "
          f"[{', '.join(f'{s:.3f}' for s in scores)}]; Otsu {np.mean(otsu):.4f}; best single intensity "
          f"threshold {by_t[k]:.4f} (at {grid[k]:.2f}, chosen on the test volumes)")
    print(f"target Dice >= 0.85 within {args.minutes:.0f} min: "
          f"{'MET' if np.mean(scores) >= 0.85 and train_s <= budget_s * 1.05 else 'NOT met'}")


if __name__ == "__main__":
    main()
