"""On-the-fly data against the network (issue 12): can the loader feed training, per CPU core?

Two figures, both per CPU core, on this machine:
  loader    on-the-fly patches/s of ``OnTheFlyDataset`` (the config's simulator profiles, crops and
            augmentation) through a DataLoader with 0, 1 and 2 worker processes; every process runs
            one thread, so 0 workers (the main process loads) and 1 worker use one core, 2 use two.
            The time runs from the first batch (the workers' start-up and first imports excluded) to
            the last of ``--volumes`` rendered volumes per process.
  network   training steps/s of the config's U-Net (forward, loss, backward, Adam step) on random
            batches of ``batch_size`` ``patch_size``^3 patches, with ``--threads`` torch threads
            (channels-last on CPU, as ``octasim train``); patches/s = steps/s x batch_size.

The ratio network patches/s / loader patches/s per core is the number of cores a loader needs to keep
one training process busy (with torchrun on CPU: per rank).

Usage: python benchmarks/bench_loader.py [--data-config multiscale] [--configs default multiscale]
       [--workers 0 1 2] [--volumes 2] [--steps 4] [--threads N]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import time


def loader_rate(cfg, workers: int, volumes: int) -> tuple[float, int]:
    """(patches/s from the first batch to the last, patches timed) of on-the-fly loading."""
    import torch

    from octasim.train.data import OnTheFlyDataset, worker_init

    bs, per_volume = cfg.batch_size, cfg.on_the_fly.crops_per_volume
    n_batches = max(2, volumes * max(1, workers) * per_volume // bs)
    loader = torch.utils.data.DataLoader(OnTheFlyDataset(cfg), batch_size=bs, num_workers=workers,
                                         worker_init_fn=worker_init if workers else None,
                                         prefetch_factor=2 if workers else None)
    it = iter(loader)
    next(it)  # start-up: worker processes, imports, the first volumes
    t0 = time.perf_counter()
    for _ in range(n_batches - 1):
        next(it)
    seconds = time.perf_counter() - t0
    del it
    return (n_batches - 1) * bs / seconds, (n_batches - 1) * bs


def network_rate(cfg, steps: int) -> float:
    """Training steps/s of the config's network on random patches (CPU, channels-last)."""
    import torch

    from octasim.model import build_unet
    from octasim.train.trainer import make_loss

    model = build_unet(dataclasses.asdict(cfg.model)).to(memory_format=torch.channels_last_3d).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = make_loss(cfg)
    shape = (cfg.batch_size, 1) + (cfg.patch_size,) * 3
    x = torch.rand(shape).contiguous(memory_format=torch.channels_last_3d)
    y = (torch.rand(shape) < 0.05).float()

    def step() -> None:
        loss = loss_fn(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up (oneDNN primitives)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - t0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-config", default="multiscale", help="config whose on-the-fly rendering is timed")
    parser.add_argument("--configs", nargs="+", default=["default", "multiscale"], help="networks to time")
    parser.add_argument("--workers", nargs="+", type=int, default=[0, 1, 2], help="loader worker counts")
    parser.add_argument("--volumes", type=int, default=2, help="rendered volumes timed per loading process")
    parser.add_argument("--steps", type=int, default=4, help="timed training steps per network")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of the network")
    args = parser.parse_args()

    import torch

    from octasim.train.config import load_config

    print(f"machine: {os.cpu_count()} CPU core(s), torch {torch.__version__}, load average "
          f"{os.getloadavg()[0]:.1f} (other work on the cores lowers every figure)")
    cfg = load_config(args.data_config)
    otf = cfg.on_the_fly
    print(f"\nloader: config {args.data_config!r}, {'x'.join(map(str, otf.shape))} volumes, "
          f"{otf.crops_per_volume} crops of {cfg.crop}^3 -> {cfg.patch_size}^3 per volume, batch {cfg.batch_size}")
    print(f"{'workers':>8} {'cores':>6} {'patches':>8} {'patches/s':>10} {'per core':>9}")
    per_core = {}
    torch.set_num_threads(1)  # the main process loads with one thread, as each worker does
    for w in args.workers:
        rate, n = loader_rate(cfg, w, args.volumes)
        cores = max(1, w)
        per_core[w] = rate / cores
        print(f"{w:>8} {cores:>6} {n:>8} {rate:>10.2f} {rate / cores:>9.2f}")
    best = max(per_core.values())

    torch.set_num_threads(args.threads)
    print(f"\nnetwork: {args.threads} torch thread(s), {args.steps} timed steps after one warm-up")
    print(f"{'config':>12} {'batch':>6} {'patch':>6} {'steps/s':>8} {'patches/s':>10} {'per core':>9} "
          f"{'loader cores needed':>20}")
    for name in args.configs:
        net = load_config(name)
        sps = network_rate(net, args.steps)
        pps = sps * net.batch_size
        print(f"{name:>12} {net.batch_size:>6} {net.patch_size:>6} {sps:>8.3f} {pps:>10.2f} "
              f"{pps / args.threads:>9.2f} {pps / best:>20.2f}")
    print("\nloader cores needed: network patches/s / best loader patches/s per core")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
