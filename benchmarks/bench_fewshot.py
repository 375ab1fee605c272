"""Few-shot fine-tuning on real labels: zero-shot bundled model vs fine-tuned vs trained from scratch.

Each labelled real stack of ``../shared/data/two_photon_sample`` (see ``bench_real.STACKS``) is split into
two lateral halves along its first axis (i). For each direction (train on one half, test on the other):

- **zero-shot**: the bundled model as shipped (``--model``, default v3; its threshold, image pyramid);
- **fine-tuned**: ``octasim train --init <the bundled model> --data HALF/`` with the shipped ``finetune``
  config (lr 1e-4, a quarter of the patches synthetic, threshold calibrated on the held-out quarter of
  the training half);
- **scratch**: the same network from random weights, trained on the same half for the same wall-clock
  time with the bundled recipe's own learning rate (1e-3), no synthetic patches, same threshold calibration.

The test half is never seen in training, validation or threshold choice. Printed: Dice / clDice per
stack and direction, the mean over directions, and whether fine-tuned beats zero-shot by >= 0.05 Dice
and beats scratch on each stack (the targets of issue 13).

    python benchmarks/bench_fewshot.py                    # both stacks, both directions, 200 steps
    python benchmarks/bench_fewshot.py --steps 150 --directions 1
    python benchmarks/bench_fewshot.py --split stacks --no-scratch   # train on one stack, test on the other
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_real import DEFAULT_STACK_DIR, SPACING_UM, load_stacks, scores  # noqa: E402

TARGET_GAIN = 0.05


def write_half(folder: Path, name: str, image: np.ndarray, label: np.ndarray) -> Path:
    """A folder of one labelled scan (NAME.nii.gz + NAME_label.nii.gz) with the stack's voxel size."""
    from octasim.nifti import write_volume

    write_volume(folder / f"{name}.nii.gz", image.astype(np.float32), spacing_um=SPACING_UM)
    write_volume(folder / f"{name}_label.nii.gz", label.astype(np.uint8), spacing_um=SPACING_UM)
    return folder


def evaluate(checkpoint, image: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """Scores of a checkpoint (path or state) on a test half, at its own threshold, through segment's path."""
    from octasim.model import load_checkpoint
    from octasim.segment import segment_volume

    state = load_checkpoint(checkpoint) if isinstance(checkpoint, (str, Path)) else checkpoint
    _, mask = segment_volume(image, SPACING_UM, state, device="cpu")
    return {**scores(mask > 0, label), "threshold": float(state.get("threshold", 0.5))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stack-dir", type=Path, default=DEFAULT_STACK_DIR)
    p.add_argument("--steps", type=int, default=200, help="fine-tuning steps (finetune config: 200)")
    p.add_argument("--directions", type=int, choices=(1, 2), default=2,
                   help="1: train on the first half only; 2: also the reverse")
    p.add_argument("--split", choices=("halves", "stacks"), default="halves",
                   help="halves: train on one lateral half of a stack, test on the other; stacks: train on one "
                        "whole stack, test on the other stack (does fine-tuning transfer across acquisitions?)")
    p.add_argument("--no-scratch", action="store_true", help="skip the from-scratch baseline")
    p.add_argument("--lr", type=float, default=None, help="fine-tuning learning rate (default: the finetune config's)")
    p.add_argument("--synthetic-fraction", type=float, default=None,
                   help="fine-tuning synthetic share (default: the finetune config's)")
    p.add_argument("--work", type=Path, default=None, help="folder for the halves and runs (default: a temp dir)")
    p.add_argument("--model", default="octasim-multiscale-v3",
                   help="the bundled model (name or checkpoint) to start from and compare with (default: "
                        "octasim-multiscale-v3, whose one network segments every view, as a fine-tuned model's "
                        "does; the default octasim-multiscale-v4 would be fine-tuned from its fine network only)")
    args = p.parse_args(argv)

    from octasim.model import load_checkpoint
    from octasim.models import resolve_model
    from octasim.train.config import config_from_dict, load_config, merged
    from octasim.train.trainer import train

    stacks = load_stacks(args.stack_dir)
    if not stacks:
        print(f"no labelled stacks in {args.stack_dir}", file=sys.stderr)
        return 1
    if args.split == "stacks" and len(stacks) < 2:
        print("--split stacks needs two labelled stacks", file=sys.stderr)
        return 1
    bundled = resolve_model(args.model)
    state = load_checkpoint(bundled)
    base = state["train_config"]
    work = args.work or Path(tempfile.mkdtemp(prefix="octasim_fewshot_"))
    rows = []
    tasks = []  # (test stack name, tag, train image, train label, test image, test label)
    for n, (name, image, label) in enumerate(stacks):
        short = name.split()[0]
        if args.split == "stacks":  # train on this whole stack, test on the next one
            other_name, other_img, other_lab = stacks[(n + 1) % len(stacks)]
            tasks.append((other_name.split()[0], f"{short}_to_{other_name.split()[0]}", image, label,
                          other_img, other_lab))
            continue
        cut = image.shape[0] // 2
        halves = [(image[:cut], label[:cut]), (image[cut:], label[cut:])]
        for d in range(args.directions):
            (tr_img, tr_lab), (te_img, te_lab) = halves[d], halves[1 - d]
            tasks.append((short, f"{short}_half{d}", tr_img, tr_lab, te_img, te_lab))
    for short, tag, tr_img, tr_lab, te_img, te_lab in tasks:
        data = write_half(work / tag / "data", short, tr_img, tr_lab)
        zero = evaluate(state, te_img, te_lab)
        ft_cfg = load_config("finetune", {"synthetic_fraction": args.synthetic_fraction}, base=base)
        if args.lr is not None:
            ft_cfg = config_from_dict(merged(ft_cfg.to_dict(), {"optimizer": {"lr": args.lr}}))
        t = time.perf_counter()
        ft = train(ft_cfg, [data], work / tag / "finetuned", steps=args.steps, device="cpu", progress=False,
                   init=bundled)
        ft_wall = time.perf_counter() - t
        scratch_cfg = config_from_dict(merged(base, {
            "steps": 100000, "val_every": ft_cfg.val_every, "n_val": 1, "synthetic_fraction": 0.0,
            "calibrate_threshold": True, "apply_calibrated_threshold": True}))
        out = {"zero-shot": zero, "fine-tuned": evaluate(work / tag / "finetuned" / "best.pt", te_img, te_lab)}
        sc = {"step": 0, "seconds": 0.0}
        if not args.no_scratch:
            sc = train(scratch_cfg, [data], work / tag / "scratch", device="cpu", progress=False,
                       max_seconds=ft["seconds"])
            out["scratch"] = evaluate(work / tag / "scratch" / "best.pt", te_img, te_lab)
        for method, r in out.items():
            rows.append({"stack": short, "task": tag, "method": method, **r})
        print(f"{tag} (tested on {short}): fine-tuning {ft['step']} steps in "
              f"{ft['seconds']:.0f} s (wall {ft_wall:.0f} s with rendering the synthetic share), scratch "
              f"{sc['step']} steps in {sc['seconds']:.0f} s; " + "; ".join(
                  f"{m} Dice {r['dice']:.3f} clDice {r['cldice']:.3f} (t {r['threshold']:.2f})"
                  for m, r in out.items()), flush=True)

    print("\n| stack | method | Dice | clDice | precision | recall | predicted / labelled |")
    print("|---|---|---|---|---|---|---|")
    verdicts = []
    for short in dict.fromkeys(r["stack"] for r in rows):
        mean = {}
        for method in ("zero-shot", "fine-tuned", "scratch"):
            mine = [r for r in rows if r["stack"] == short and r["method"] == method]
            if not mine:
                continue
            mean[method] = {k: float(np.mean([r[k] for r in mine]))
                            for k in ("dice", "cldice", "precision", "recall", "pred_frac", "label_frac")}
            m = mean[method]
            print(f"| {short} | {method} | {m['dice']:.3f} | {m['cldice']:.3f} | {m['precision']:.3f} | "
                  f"{m['recall']:.3f} | {m['pred_frac']:.1%} / {m['label_frac']:.1%} |")
        gain = mean["fine-tuned"]["dice"] - mean["zero-shot"]["dice"]
        over = mean["fine-tuned"]["dice"] - mean["scratch"]["dice"] if "scratch" in mean else float("nan")
        ok = gain >= TARGET_GAIN and not over <= 0
        verdicts.append(ok)
        print(f"|  | fine-tuned - zero-shot {gain:+.3f}, fine-tuned - scratch {over:+.3f} | "
              f"{'met' if ok else 'not met'} | | | | |")
    print(f"\nfine-tuning: lr {ft_cfg.optimizer.lr:g}, synthetic share {ft_cfg.synthetic_fraction:g}, "
          f"{args.steps} steps")
    print(f"\ntarget (fine-tuned >= zero-shot + {TARGET_GAIN} Dice and > scratch, on each stack): "
          f"{'met' if all(verdicts) else 'not met'}; runs in {work}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
