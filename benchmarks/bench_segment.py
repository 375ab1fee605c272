"""Time segmenting a 160^3 volume on CPU: octasim's segment_volume vs MONAI's plain sliding_window_inference.

Model: the ``model`` section of data/configs/default.yaml when present, else a small UNet
(channels 16-32-64-128, strides 2, 2 residual units), randomly initialised (weights do not change
the timing). Target (issue 4): segment_volume <= 15 s on the project's 2-core CPU.

    .venv/bin/python benchmarks/bench_segment.py [--size 160] [--repeats 2] [--batch-size 4] [--tta]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

ASSUMED_MODEL = {"channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 2}


def default_model_config() -> tuple[dict, str]:
    from octasim.paths import DATA_DIR

    path = Path(DATA_DIR) / "configs" / "default.yaml"
    if path.exists():
        import yaml

        cfg = yaml.safe_load(path.read_text()) or {}
        if isinstance(cfg.get("model"), dict):
            return cfg["model"], str(path)
    return dict(ASSUMED_MODEL), "assumed small config (data/configs/default.yaml not found)"


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=160, help="edge of the cubic test volume (voxels)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per method (best is printed)")
    parser.add_argument("--batch-size", type=int, default=4, help="windows per forward pass for segment_volume")
    parser.add_argument("--overlap", type=float, default=0.5, help="window overlap for segment_volume")
    parser.add_argument("--tta", action="store_true",
                        help="also time segment_volume with its default lateral flips (test-time augmentation)")
    args = parser.parse_args()

    import torch
    from monai.inferers import sliding_window_inference

    from octasim.model import build_unet
    from octasim.segment import prepare_model, segment_volume

    torch.manual_seed(0)
    config, source = default_model_config()
    net = build_unet(config).eval()
    state = {"model_state": net.state_dict(), "model_config": config, "voxel_size_um": 2.0,
             "patch_size": [64, 64, 64], "preprocessing": {"clip_percentiles": [0.5, 99.5]}, "threshold": 0.5}
    rng = np.random.default_rng(0)
    volume = rng.gamma(2.0, 1.0, size=(args.size,) * 3).astype(np.float32)
    spacing = (2.0, 2.0, 2.0)
    print(f"model: {config} ({source}); volume {volume.shape} at 2 um; torch threads {torch.get_num_threads()}")

    model, _ = prepare_model(state, "cpu")
    segment_volume(volume[:64, :64, :64], spacing, state, model=model)  # warm-up (oneDNN kernel selection)
    # without the lateral flips: the same work as the plain MONAI loop below (``--tta`` times them too)
    ours = best_of(lambda: segment_volume(volume, spacing, state, overlap=args.overlap, tta=False,
                                          sw_batch_size=args.batch_size, model=model), args.repeats)
    print(f"octasim segment_volume without flips (gaussian blending, overlap {args.overlap}, "
          f"batch {args.batch_size}, "
          f"normalization + resampling + threshold included): {ours:.2f} s")
    if args.tta:
        tta = best_of(lambda: segment_volume(volume, spacing, state, overlap=args.overlap, tta=True,
                                             sw_batch_size=args.batch_size, model=model), 1)
        print(f"octasim segment_volume with TTA (4 lateral flips): {tta:.2f} s")

    x = torch.from_numpy(volume)[None, None]

    def plain():
        with torch.no_grad():
            sliding_window_inference(x, (64, 64, 64), 1, net)  # MONAI defaults: batch 1, overlap 0.25, constant

    plain()
    ref = best_of(plain, args.repeats)
    print(f"MONAI sliding_window_inference (defaults: sw_batch_size 1, overlap 0.25, mode constant): {ref:.2f} s")
    print(f"ratio octasim / MONAI plain: {ours / ref:.2f} (octasim uses overlap {args.overlap} = "
          f"{'more' if args.overlap > 0.25 else 'as many'} windows, with Gaussian blending)")

    def same_settings():  # where the gain comes from: batching vs. channels-last layout
        with torch.inference_mode():
            sliding_window_inference(x, (64, 64, 64), args.batch_size, net, overlap=args.overlap, mode="gaussian")

    same = best_of(same_settings, 1)
    print(f"MONAI sliding_window_inference with octasim's settings but the default NCDHW layout, no "
          f"normalization / resampling: {same:.2f} s")
    print(f"target <= 15 s: {'met' if ours <= 15 else 'NOT met'}")


if __name__ == "__main__":
    main()
