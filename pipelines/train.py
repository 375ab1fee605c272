"""``octasim train``: train a 3D U-Net on synthetic datasets (or on the fly) and write checkpoints."""
from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = """\
Train a MONAI 3D U-Net on datasets written by `octasim generate` (held in memory; whole samples are
held out for validation) or on volumes synthesized on the fly (--on-the-fly). The run folder gets
last.pt (resumable), best.pt (best validation Dice; give it to `octasim segment --model`),
metrics.csv and curves.png. After training, the probability threshold that maximizes mean Dice on
the held-out validation volumes (grid 0.05 ... 0.95) is stored in best.pt and printed; `octasim
segment` uses it unless --threshold is given (config key calibrate_threshold: false turns this off).

examples:
  octasim train --data runs/data_octa --out runs/unet_small            # CPU-sized default config
  octasim train --data runs/data_octa --out runs/unet_small --resume --steps 1200
  octasim train --on-the-fly --config mixed --out runs/unet_mixed      # random profiles per volume
  octasim train --on-the-fly --config mixed --out runs/m8 --steps 900 --max-minutes 8   # time cap
  octasim train --data DIR --out runs/paper --config paper --device cuda
  octasim train --init octasim-multiscale-v3 --data my_labelled_scans/ --out runs/ft   # fine-tune on real labels
  torchrun --standalone --nproc-per-node 4 -m octasim.cli train --data DIR --out runs/ddp --config paper

Fine-tuning (--init) on labelled real scans: the scans are prepared as `octasim segment` prepares them
(percentile scaling, resampling from their header voxel size to every view of the model's image
pyramid); with four or more scans whole scans are held out for validation, with fewer each scan's
last quarter along its longer lateral axis. The threshold calibrated on the held-out real data is applied.

Distributed training: started by torchrun with N processes (one per GPU, NCCL; or on CPU, gloo), every
process trains on its own share of the patches (on the fly: renders its own volumes) with
DistributedDataParallel, so the effective batch is N x batch_size per step; process 0 alone validates,
calibrates and writes the run folder. --resume needs the same N (last.pt records it).
"""


def register(subparsers) -> None:
    from .cli import HelpFormatter

    p = subparsers.add_parser("train", help="train a 3D U-Net on synthetic data", description=DESCRIPTION,
                              formatter_class=HelpFormatter)
    p.add_argument("--data", action="append", type=Path, default=[], metavar="DIR",
                   help="a dataset folder from `octasim generate` (with dataset.json), or a folder of labelled real "
                        "scans: NAME.nii.gz (or .tif) with NAME_label.nii.gz, or nnU-Net's imagesTr/ + labelsTr/ "
                        "(repeat for several; with --on-the-fly: validation data)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="run folder for checkpoints and metrics")
    p.add_argument("--config", default=None, metavar="NAME|FILE.yaml",
                   help="training config: default (small, CPU), paper (reference recipe), mixed (on the fly, "
                        "random profiles), multiscale, multiscale-v2, multiscale-v3 (recipes of the bundled models v1-v3), "
                        "multiscale-v4 (the default bundled model's fine network: v3's recipe, the learning rate "
                        "falling to 0 over its last 500 of 1,500 steps), multiscale-surface, finetune (few real "
                        "scans) or a "
                        "YAML file; keys it leaves out come from default.yaml, or with --init from the starting "
                        "model's own config. Default: default, or finetune with --init")
    p.add_argument("--steps", type=int, default=None, metavar="N",
                   help="optimizer steps of the whole run (overrides the config; sets the lr schedule)")
    p.add_argument("--device", default="auto",
                   help="where to train: auto (CUDA when available), cpu, cuda or cuda:N (AMP on CUDA, fp32 on CPU; "
                        "under torchrun: auto, cpu or cuda, each process on GPU LOCAL_RANK)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out exactly from its last.pt (under torchrun: with as many processes)")
    p.add_argument("--on-the-fly", action="store_true",
                   help="render fresh training volumes in loader workers instead of reading --data")
    p.add_argument("--seed", type=int, default=None, metavar="S", help="random seed (overrides the config)")
    p.add_argument("--workers", type=int, default=None, metavar="K",
                   help="data loader worker processes (overrides the config; 0 = main process)")
    p.add_argument("--max-minutes", type=float, default=None, metavar="MIN",
                   help="stop after this many minutes of training (checkpoints written; --resume continues)")
    p.add_argument("--stop-at", type=int, default=None, metavar="STEP",
                   help="end this call at this step, with checkpoints written; the learning-rate schedule stays "
                        "that of --steps and --resume continues the run exactly")
    p.add_argument("--init", default=None, metavar="MODEL",
                   help="start from this model's weights (a bundled model name or a checkpoint file) instead of "
                        "random ones: fine-tuning; the config's model must be the same network")
    p.add_argument("--synthetic-fraction", type=float, default=None, metavar="F",
                   help="with --data: share of training patches (0-1) drawn from synthetic volumes rendered at the "
                        "start, so a few real scans do not make the model forget the rest (config key "
                        "synthetic_fraction; finetune: 0.25, others: 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from octasim.train.config import load_config
    from octasim.train.trainer import train

    if args.workers is not None and args.workers < 0:  # checked here: the config file is not to blame
        raise ValueError(f"--workers must be 0 (load data in the main process) or more, got {args.workers}")
    base = None
    if args.init is not None:  # fine-tuning: the starting model's own config fills what --config leaves out
        from octasim.model import load_checkpoint
        from octasim.models import resolve_model
        base = load_checkpoint(resolve_model(args.init)).get("train_config")
    config = args.config or ("finetune" if args.init is not None else "default")
    cfg = load_config(config, {"seed": args.seed, "num_workers": args.workers,
                               "synthetic_fraction": args.synthetic_fraction}, base=base)
    if not args.data and not args.on_the_fly:
        raise ValueError("no training data: give --data DIR (a folder from `octasim generate`, or of labelled real scans) "
                         "or --on-the-fly")
    if args.max_minutes is not None and args.max_minutes <= 0:
        raise ValueError(f"--max-minutes must be positive, got {args.max_minutes}")
    m = train(cfg, args.data, args.out, steps=args.steps, device=args.device, resume=args.resume,
              on_the_fly=args.on_the_fly, progress=not args.no_progress,
              max_seconds=None if args.max_minutes is None else 60.0 * args.max_minutes, init=args.init,
              stop_at=args.stop_at)
    if m.get("rank", 0) != 0:  # torchrun: process 0 reports
        return 0
    if m.get("world_size", 1) > 1:
        print(f"{m['world_size']} processes, effective batch {m['effective_batch_size']} patches per step")
    print(f"trained {m['step']} steps in {m['seconds']:.0f} s ({m['steps_per_s']:.2f} steps/s); "
          f"validation Dice {m['val_dice']:.4f}, best {m['best_val_dice']:.4f} at step {m['best_step']}")
    cal = m.get("threshold_calibration")
    if cal and cal.get("applied", True):
        print(f"threshold {cal['chosen']:.2f} (calibrated on {cal['n_volumes']} validation volume(s): "
              f"Dice {cal['dice_at_chosen']:.4f}, at 0.5 {cal['dice_at_0.5']:.4f}); stored in best.pt")
    elif cal:
        print(f"threshold {m['threshold']:.2f} kept (apply_calibrated_threshold: false); calibrated on "
              f"{cal['n_volumes']} validation volume(s), the optimum was {cal['chosen']:.2f} (Dice "
              f"{cal['dice_at_chosen']:.4f}, at 0.5 {cal['dice_at_0.5']:.4f}), recorded in best.pt; "
              f"segment --threshold {cal['chosen']:.2f} uses it")
    else:
        print(f"threshold {m['threshold']:.2f} (not calibrated)")
    print(f"model: {m['best']}  (resume from {m['last']}; curves in {Path(m['out_dir']) / 'curves.png'})")
    return 0
