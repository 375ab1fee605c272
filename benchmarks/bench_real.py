"""Real stacks: Otsu against the bundled model and other checkpoints, single view against the pyramid.

Data: every labelled real stack in ``../shared/data/two_photon_sample/`` (``STACKS``): in-vivo
two-photon stacks of mouse cortex, TIFF (z, y, x), 0.994 x 0.994 x 5 um, manual label > 0; one deep
with thin vessels (poon2015, 3.7 % vessel), one at the surface with 50-100 um vessels (burgess2014,
42 % vessel). Nothing here is tuned on them: thresholds are the checkpoints' own (0.5 for the
shipped recipes) and Otsu's.

Printed per stack and as the mean over stacks: Dice, clDice, precision, recall, predicted and
labelled vessel fraction, seconds; then each model's margin over Otsu on every stack (target of
issue 9: the bundled model >= 0.10 above Otsu on Dice and clDice on each stack).

    python benchmarks/bench_real.py                                # Otsu + the bundled model, both modes
    python benchmarks/bench_real.py --models runs/a/best.pt runs/b/best.pt --modes pyramid
    python benchmarks/bench_real.py --models snapshots/step_*.pt   # a training-length curve
    python benchmarks/bench_real.py --timing                       # segment time of a 512 x 512 x 25 stack
    python benchmarks/bench_real.py --wide-vessels                 # recall on synthetic r 30-60 um vessels
    python benchmarks/bench_real.py --dim-vessels                  # recall when vessels lie low on the scale
    python benchmarks/bench_real.py --surface-stacks               # procedural surface stacks, lower-half recall
    python benchmarks/bench_real.py --octa-volumes                 # procedural OCTA at the reference's test geometry
    python benchmarks/bench_real.py --selection-score --models runs/*/last.pt   # choose among candidates (suite score)

Modes (the ablation of the image pyramid, ``octasim.inference``): ``single`` = the training grid only;
``pyramid`` = the default path of ``octasim segment`` (a coarser view fused only if it finds a vessel
wider than its finer neighbour segments whole and twice as bright as its tissue,
``octasim.inference.finds_wide_vessels``, each window
averaged over its four lateral flips, the mask made as ``segment`` makes it, wide vessels completed
below their round section's middle and from the scan's top where it cuts them, and their lumen followed
below where it closes, ``octasim.segment.mask_from_probability``, in every mode but one); ``no-tta`` = the default path
without the flips; ``no-completion`` = the default path without that completion; ``all-views`` = every
view the checkpoint allows, whether needed or not; ``max`` = all views fused by a plain maximum
(coarse views not opened); ``unflattened`` = all views without flattening the coarse views' gain
(``octasim.inference.local_brightness``).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STACK_DIR = ROOT.parent / "shared" / "data" / "two_photon_sample"
SPACING_UM = (0.994, 0.994, 5.0)  # x, y, z (z = depth) of both stacks
#: (name, image TIFF, label TIFF)
STACKS = (
    ("poon2015 (deep, thin vessels)", "poon2015_BBB_noLeakage_BM4D_denoised.tif",
     "poon2015_BBB_noLeakage_manualLabel_v2.tif"),
    ("burgess2014 (surface, 50-100 um vessels)", "burgess2014_noisySparseVessels_BM4D_denoised.tif",
     "burgess2014_noisySparseVessels_labels_v1.tif"),
)
MODES = ("single", "pyramid", "no-tta", "no-completion", "all-views", "max", "unflattened")
TARGET_MARGIN = 0.10
DIM_GAINS = (1.0, 0.5, 0.25)  #: vessel gains of the dimmed-slab check (--dim-vessels, --selection-score)


def load_stacks(stack_dir: Path):
    """[(name, image (i, j, k) float32, label bool)] for every stack present in ``stack_dir``."""
    from octasim.tiff import read_tiff

    out = []
    for name, image_tif, label_tif in STACKS:
        if not (stack_dir / image_tif).exists():
            print(f"skipping {name}: {stack_dir / image_tif} not found", file=sys.stderr)
            continue
        image = read_tiff(stack_dir / image_tif, SPACING_UM).data.astype(np.float32)
        label = read_tiff(stack_dir / label_tif, SPACING_UM).data > 0
        out.append((name, image, label))
    return out


def scores(mask: np.ndarray, label: np.ndarray) -> dict[str, float]:
    from octasim.metrics import cldice, dice, precision, recall

    return {"dice": dice(mask, label), "cldice": cldice(mask, label), "precision": precision(mask, label),
            "recall": recall(mask, label), "pred_frac": float(mask.mean()), "label_frac": float(label.mean())}


def predict(state: dict, model, image: np.ndarray, mode: str) -> np.ndarray:
    """Probability of a stack by one of ``MODES``."""
    import torch

    from octasim.inference import ModelGrid, predict_probability, pyramid_voxel_sizes

    grid = ModelGrid.from_checkpoint(state)
    views = pyramid_voxel_sizes(grid)
    dev = torch.device("cpu")
    if mode == "single":
        return predict_probability(model, image, SPACING_UM, grid, dev, views_um=views[:1])
    if mode == "pyramid":
        return predict_probability(model, image, SPACING_UM, grid, dev)
    if mode == "no-tta":
        return predict_probability(model, image, SPACING_UM, grid, dev, tta=False)
    if mode == "no-completion":
        return predict_probability(model, image, SPACING_UM, grid, dev)
    if mode == "all-views":
        return predict_probability(model, image, SPACING_UM, grid, dev, views_um=views)
    if mode == "unflattened":
        return predict_probability(model, image, SPACING_UM, grid, dev, views_um=views, flatten=False)
    return predict_probability(model, image, SPACING_UM, grid, dev, views_um=views, fusion="max")


def run_model(label_name: str, state: dict, stacks, modes) -> list[dict]:
    from octasim.inference import ModelGrid, pyramid_voxel_sizes
    from octasim.segment import mask_from_probability, prepare_model

    model, _ = prepare_model(state, "cpu")
    views = pyramid_voxel_sizes(ModelGrid.from_checkpoint(state))
    rows = []
    for mode in modes:
        if mode != "single" and len(views) == 1:
            continue
        for name, image, label in stacks:
            t = time.perf_counter()
            mask = mask_from_probability(predict(state, model, image, mode), SPACING_UM, state,
                                         complete_lumens=mode != "no-completion", volume=image) > 0
            seconds = time.perf_counter() - t
            rows.append({"method": f"{label_name} [{mode}]", "stack": name, "seconds": seconds,
                         **scores(mask, label)})
    return rows


def print_table(rows: list[dict]) -> None:
    cols = ("dice", "cldice", "precision", "recall", "pred_frac", "label_frac", "seconds")
    print(f"| method | stack | {' | '.join(cols)} |")
    print("|---|---|" + "---|" * len(cols))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for m in methods:
        mine = [r for r in rows if r["method"] == m]
        for r in mine + [{"method": m, "stack": "**mean**", **{c: float(np.mean([x[c] for x in mine]))
                                                              for c in cols}}]:
            vals = " | ".join(f"{r[c]:.1%}" if c.endswith("frac") else f"{r[c]:.3f}" for c in cols)
            print(f"| {r['method']} | {r['stack']} | {vals} |")


def print_margins(rows: list[dict]) -> None:
    otsu = {r["stack"]: r for r in rows if r["method"].startswith("otsu")}
    print(f"\nmargin over Otsu (Dice / clDice); target >= {TARGET_MARGIN:+.2f} on both, on each stack")
    for m in dict.fromkeys(r["method"] for r in rows if not r["method"].startswith("otsu")):
        parts, ok = [], True
        for r in (r for r in rows if r["method"] == m):
            dd, dc = r["dice"] - otsu[r["stack"]]["dice"], r["cldice"] - otsu[r["stack"]]["cldice"]
            ok &= dd >= TARGET_MARGIN and dc >= TARGET_MARGIN
            parts.append(f"{r['stack'].split()[0]} {dd:+.4f} / {dc:+.4f}")  # 4 decimals: +0.0997 is not +0.10
        print(f"  {m}: {'; '.join(parts)}  -> {'met' if ok else 'not met'}")


def wide_vessel_volume(profile: str, radius_um: float, seed: int, shape=(256, 256, 160)):
    """A synthetic scan at 1 um voxels holding one horizontal surface vessel of ``radius_um`` (um)
    across the field of view, rendered with ``profile``: (image, label)."""
    from octasim.graph import VesselGraph
    from octasim.profiles import load_profile, sample_parameters
    from octasim.simulate import simulate
    from octasim.voxelize import voxelize

    rng = np.random.default_rng(seed)
    y, z = shape[1] / 2.0, radius_um + 10.0  # just below the surface
    nodes = np.array([[-20.0, y - 15, z], [shape[0] / 2.0, y, z + 5], [shape[0] + 20.0, y + 15, z]])
    graph = VesselGraph(nodes, np.array([[0, 1], [1, 2]]), np.array([radius_um, radius_um]))
    maps = voxelize(graph, shape, 1.0, occupancy=True)
    params = sample_parameters(load_profile(profile), rng)
    return simulate(maps, params, rng), maps.label > 0


def wide_vessel_recall(state: dict) -> None:
    """Recall of vessels of r 30-60 um at 1 um voxels, synthetic two-photon and OCTA (target >= 0.9)."""
    from octasim.segment import prepare_model, segment_volume

    model, _ = prepare_model(state, "cpu")
    print("\nsynthetic wide vessels at 1 um voxels (target: recall >= 0.9), single view / pyramid:")
    for profile in ("two-photon", "octa"):
        for n, radius in enumerate((30.0, 45.0, 60.0)):
            image, label = wide_vessel_volume(profile, radius, seed=n)
            out = []
            for views in ("single", None):
                v = [float(state.get("voxel_size_um", 2.0))] if views == "single" else None
                _, mask = segment_volume(image, (1.0, 1.0, 1.0), state, model=model, views_um=v)
                out.append(scores(mask > 0, label))
            print(f"  {profile:<10} r = {radius:.0f} um: recall {out[0]['recall']:.3f} / {out[1]['recall']:.3f}, "
                  f"precision {out[0]['precision']:.3f} / {out[1]['precision']:.3f}")


def dim_vessel_recall(state: dict) -> None:
    """Recall on a synthetic scan whose vessels lie low on its percentile scale.

    A scan is scaled by its own percentiles, so its vessels end wherever the brightest 0.5 % of it
    puts them (a bright slice, a bright cell, a bright vessel elsewhere). The same synthetic
    two-photon slab (10 slices of 5 um through a surface vessel of r = 50 um, 1 um pixels) is given
    a bright corner of 1 % of its voxels at full scale and its vessel scaled by ``gain``: a model that
    tells vessels by their contrast to the tissue around them keeps its recall at every gain.
    """
    from octasim.segment import prepare_model, segment_volume

    model, _ = prepare_model(state, "cpu")
    print("\nsynthetic surface slab with a bright corner (vessel at a fraction of the scale), recall / Dice:")
    for gain in DIM_GAINS:
        scan, label = dimmed_slab(gain)
        _, mask = segment_volume(scan, (1.0, 1.0, 5.0), state, model=model)
        s = scores(mask > 0, label)
        print(f"  gain {gain:.2f}: recall {s['recall']:.3f}, Dice {s['dice']:.3f}")



def dimmed_slab(gain: float) -> tuple[np.ndarray, np.ndarray]:
    """The slab of :func:`dim_vessel_recall` at one ``gain``: 10 slices of 5 um (1 um pixels) through a
    two-photon surface vessel of r = 50 um, scaled by ``gain``, with a bright corner (1 % of the voxels)
    at full scale: (image, label)."""
    image, label = wide_vessel_volume("two-photon", 50.0, seed=1, shape=(256, 256, 140))
    scan = np.clip(image[:, :, 35:85:5] * gain, 0.0, 1.0)
    scan[:26, :26, :] = 1.0
    return scan, label[:, :, 35:85:5]


def deep_volumes(n: int = 3):
    """Procedural two-photon volumes of deep cortex, (image, label) at 2 um voxels: 512 x 512 x 128 um
    windows 150-300 um below the surface (capillaries and penetrating vessels, a few % vessel), labels
    generous by partial volume as the training labels (``SynthConfig.label_min_occupancy`` 0.1: a voxel a
    tenth inside a lumen is vessel; ``octasim generate --profile two-photon --shape 256 256 64
    --voxel-size 2 --seed 12 --depth-offset-um 150 300`` writes the same images with the centre-test
    label)."""
    from octasim.synth.config import SynthConfig
    from octasim.synth.sample import render_sample

    config = SynthConfig(profile="two-photon", shape=(256, 256, 64), voxel_size_um=2.0, seed=12, occupancy=True,
                         depth_offset_um=(150.0, 300.0), label_min_occupancy=0.1)
    for index in range(n):
        sample = render_sample(config, index)
        yield sample.image, sample.label > 0


def selection_score(path: Path) -> None:
    """The scores that choose among trained candidates without any real scan (data/models/README.md),
    ``segment``'s default path, Dice:

    - *wide / dim* (the selection score of v3's time): mean over nine volumes, the two-photon and OCTA
      vessels of r 30 / 45 / 60 um of :func:`wide_vessel_recall` and the slab of
      :func:`dim_vessel_recall` at gain 1 / 0.5 / 0.25;
    - one group per kind of scan users bring: procedural two-photon surface stacks
      (:func:`surface_stacks`), deep two-photon volumes (:func:`deep_volumes`) and OCTA volumes at the
      reference's test geometry (:func:`octa_volumes`);
    - *suite*: the mean of the four groups' means, each kind of scan weighing the same."""
    from octasim.model import load_checkpoint
    from octasim.segment import prepare_model, segment_volume

    state = load_checkpoint(path)
    model, _ = prepare_model(state, "cpu")
    volumes = [(f"{p[:3]} r{r:.0f}", *wide_vessel_volume(p, r, seed=n), (1.0, 1.0, 1.0))
               for p in ("two-photon", "octa") for n, r in enumerate((30.0, 45.0, 60.0))]
    volumes += [(f"dim {g:g}", *dimmed_slab(g), (1.0, 1.0, 5.0)) for g in DIM_GAINS]
    parts, dices = [], []
    for name, image, label, spacing in volumes:
        _, mask = segment_volume(image, spacing, state, model=model)
        s = scores(mask > 0, label)
        dices.append(s["dice"])
        parts.append(f"{name} {s['dice']:.2f} ({s['recall']:.2f} / {s['precision']:.2f})")
    print(f"{path}: selection score (wide / dim) {np.mean(dices):.3f} | Dice (recall / precision): " + ", ".join(parts))
    groups = {"wide / dim": float(np.mean(dices))}
    kinds = (("surface 2P", ((im, lab, (2.0, 2.0, 2.0)) for im, lab in surface_stacks())),
             ("deep 2P", ((im, lab, (2.0, 2.0, 2.0)) for im, lab in deep_volumes())),
             ("OCTA", ((im, lab, (2.0, 2.0, 2.0)) for _, im, lab in octa_volumes())))
    for kind, items in kinds:
        group = []
        for image, label, spacing in items:
            _, mask = segment_volume(image, spacing, state, model=model)
            group.append(scores(mask > 0, label)["dice"])
        groups[kind] = float(np.mean(group))
        print(f"  {kind}: Dice " + " / ".join(f"{d:.3f}" for d in group) + f", mean {groups[kind]:.3f}", flush=True)
    print(f"{path}: suite score {np.mean(list(groups.values())):.3f} ("
          + ", ".join(f"{k} {v:.3f}" for k, v in groups.items()) + ")")


def timing(state: dict) -> None:
    """Seconds to segment a 512 x 512 x 25 stack at 1 x 1 x 5 um, single view and the whole pyramid, with
    the lateral flips (segment's default) and without."""
    import torch

    from octasim.inference import ModelGrid, pyramid_voxel_sizes
    from octasim.segment import prepare_model, segment_volume

    rng = np.random.default_rng(0)
    stack = rng.random((512, 512, 25), dtype=np.float32)
    model, _ = prepare_model(state, "cpu")
    views = pyramid_voxel_sizes(ModelGrid.from_checkpoint(state))
    segment_volume(stack[:64, :64], (1.0, 1.0, 5.0), state, model=model)  # warm-up (oneDNN kernels)
    print(f"\nsegment 512 x 512 x 25 at 1 x 1 x 5 um on {torch.get_num_threads()} CPU threads:")
    for tta in (True, False):
        for label, v in (("single view", views[:1]), (f"pyramid {views} um", views)):
            t = time.perf_counter()
            segment_volume(stack, (1.0, 1.0, 5.0), state, model=model, views_um=v, tta=tta)
            print(f"  {label}, {'lateral flips' if tta else 'no flips'}: {time.perf_counter() - t:.1f} s "
                  "(target for the pyramid: <= 30 s)")


def surface_stacks(n: int = 3):
    """Procedural two-photon stacks at the brain surface, (image, label) at 2 um voxels: 512 x 512 x 128
    um windows 0-30 um below the surface with pial vessels of r >= 20-45 um (22-28 % vessel in the first
    two, the third deeper in its draw), exact labels; what ``octasim generate --profile two-photon --shape
    256 256 64 --voxel-size 2 --seed 11 --depth-offset-um 0 30 --pial-radius-min-um 20 45`` writes."""
    from octasim.synth.config import SynthConfig
    from octasim.synth.sample import render_sample

    config = SynthConfig(profile="two-photon", shape=(256, 256, 64), voxel_size_um=2.0, seed=11, occupancy=True,
                         depth_offset_um=(0.0, 30.0), pial_radius_min_um=(20.0, 45.0))
    for index in range(n):
        sample = render_sample(config, index)
        yield sample.image, sample.label > 0


def surface_stack_scores(state: dict) -> None:
    """Dice, recall and precision of ``segment``'s default path on :func:`surface_stacks`, and the
    recall in the upper and the lower half (by depth) of the labelled vessel of each stack: a
    two-photon lumen dims with depth inside itself, so the lower half is where wide vessels are lost."""
    from octasim.segment import prepare_model, segment_volume

    model, _ = prepare_model(state, "cpu")
    print("\nprocedural two-photon surface stacks (512 x 512 x 128 um at 2 um), default path:")
    dices = []
    for n, (image, label) in enumerate(surface_stacks()):
        for complete in (False, True):
            _, mask = segment_volume(image, (2.0, 2.0, 2.0), state, model=model, complete_lumens=complete)
            mask = mask > 0
            s = scores(mask, label)
            middle = int(np.median(np.nonzero(label)[2]))  # half of the vessel voxels above, half below
            halves = [(mask & label)[..., a:b].sum() / max(1, label[..., a:b].sum())
                      for a, b in ((0, middle), (middle, label.shape[2]))]
            print(f"  stack {n} ({label.mean():.1%} vessel) {'completed' if complete else 'network':<9}: "
                  f"Dice {s['dice']:.3f}, clDice {s['cldice']:.3f}, recall {s['recall']:.3f} (upper / lower "
                  f"half {halves[0]:.2f} / {halves[1]:.2f}), precision {s['precision']:.3f}")
            if complete:
                dices.append(s["dice"])
    print(f"  mean Dice (default path) {np.mean(dices):.3f}")


def octa_volumes(n: int = 3):
    """Procedural OCTA volumes at the reference method's test geometry (160^3 voxels at 2 um from the
    brain surface down, DESIGN.md), ``n`` of each OCTA profile: (name, image, label). Labels exact by
    construction and generous by partial volume as the training labels (``label_min_occupancy`` 0.1);
    ``octasim generate --profile paper --shape 160 160 160 --voxel-size 2 --seed 101`` (and ``--profile
    octa``) writes the same images with the centre-test label."""
    from octasim.synth.config import SynthConfig
    from octasim.synth.sample import render_sample

    for profile in ("paper", "octa"):
        config = SynthConfig(profile=profile, shape=(160, 160, 160), voxel_size_um=2.0, seed=101, occupancy=True,
                             label_min_occupancy=0.1)
        for index in range(n):
            sample = render_sample(config, index)
            yield f"{profile} {index}", sample.image, sample.label > 0


def false_positive_shares(mask: np.ndarray, label: np.ndarray, tail_voxels: int = 10) -> tuple[float, ...]:
    """Where a mask's false voxels lie: shares (near, tail, elsewhere) of them within one voxel of a
    labelled voxel, farther but at most ``tail_voxels`` below a labelled voxel of their column (depth =
    k: where OCTA projection tails are brightest), and the rest; then the share of the unlabelled
    volume in that tail region (what a mask placed at random would find there)."""
    from scipy import ndimage

    near_label = ndimage.binary_dilation(label, np.ones((3, 3, 3), bool))
    below = np.zeros_like(label)
    for d in range(1, tail_voxels + 1):
        below[:, :, d:] |= label[:, :, :-d]
    tail_region = below & ~near_label
    false = mask & ~label
    near, tail = false & near_label, false & tail_region
    total = max(int(false.sum()), 1)
    chance = tail_region.sum() / max(int((~label).sum()), 1)
    return near.sum() / total, tail.sum() / total, (false & ~near & ~tail).sum() / total, chance


def octa_volume_scores(state: dict) -> None:
    """Otsu and ``segment``'s default path on :func:`octa_volumes`, and where the false voxels lie."""
    from octasim.segment import otsu_segment, prepare_model, segment_volume

    model, _ = prepare_model(state, "cpu")
    print("\nprocedural OCTA volumes, 160^3 at 2 um from the surface (the reference's test geometry), "
          "Otsu / default path:")
    means = {"otsu": [], "model": []}
    for name, image, label in octa_volumes():
        _, otsu = otsu_segment(image, (2.0, 2.0, 2.0))
        _, mask = segment_volume(image, (2.0, 2.0, 2.0), state, model=model)
        o, s = scores(otsu > 0, label), scores(mask > 0, label)
        near, tail, other, chance = false_positive_shares(mask > 0, label)
        means["otsu"].append((o["dice"], o["cldice"]))
        means["model"].append((s["dice"], s["cldice"]))
        print(f"  {name}: Otsu {o['dice']:.3f} / {o['cldice']:.3f}, model Dice {s['dice']:.3f}, clDice "
              f"{s['cldice']:.3f}, precision {s['precision']:.3f}, recall {s['recall']:.3f}, vessel "
              f"{(mask > 0).mean():.3f} / {label.mean():.3f}; false voxels near / in tails (0-20 um below a "
              f"vessel) / elsewhere {near:.2f} / {tail:.2f} / {other:.2f} (tail region: {chance:.2f} of the volume)")
    for key, values in means.items():
        d, c = np.mean(values, axis=0)
        print(f"  mean {key}: Dice {d:.3f}, clDice {c:.3f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stack-dir", type=Path, default=DEFAULT_STACK_DIR)
    p.add_argument("--models", nargs="*", default=None,
                   help="checkpoints (paths) or bundled model names to measure (default: the bundled model)")
    p.add_argument("--modes", nargs="+", choices=MODES, default=["single", "pyramid"])
    p.add_argument("--no-otsu", action="store_true")
    p.add_argument("--timing", action="store_true", help="also time segment on a 512 x 512 x 25 stack")
    p.add_argument("--wide-vessels", action="store_true",
                   help="also measure recall on synthetic vessels of r 30-60 um at 1 um voxels")
    p.add_argument("--dim-vessels", action="store_true",
                   help="also measure recall on a synthetic slab whose vessel lies low on its intensity scale")
    p.add_argument("--surface-stacks", action="store_true",
                   help="also segment three procedural two-photon surface stacks (pial vessels r 20-45 um) "
                        "with and without the completion of wide lumens")
    p.add_argument("--octa-volumes", action="store_true",
                   help="only six procedural OCTA volumes at the reference's test geometry (160^3 at 2 um), Otsu "
                        "against each model (no real stack)")
    p.add_argument("--selection-score", action="store_true",
                   help="only the synthetic scores of each model (no real stack): the wide-vessel and "
                        "dimmed-slab score, procedural surface, deep and OCTA volumes, and the suite score "
                        "(mean of the four)")
    args = p.parse_args(argv)
    from octasim.models import bundled_model_path, resolve_model

    paths = [resolve_model(m) for m in args.models] if args.models else [bundled_model_path()]
    if args.octa_volumes:
        from octasim.model import load_checkpoint

        for path in paths:
            print(path)
            octa_volume_scores(load_checkpoint(path))
        return 0
    if args.selection_score:
        for path in paths:
            selection_score(path)
        return 0

    from octasim.model import load_checkpoint
    from octasim.segment import otsu_segment

    stacks = load_stacks(args.stack_dir)
    if not stacks:
        print(f"no stacks found in {args.stack_dir}", file=sys.stderr)
        return 1
    rows = []
    if not args.no_otsu:
        for name, image, label in stacks:
            t = time.perf_counter()
            _, mask = otsu_segment(image, SPACING_UM)
            rows.append({"method": "otsu", "stack": name, "seconds": time.perf_counter() - t,
                         **scores(mask > 0, label)})
    state = None
    names = [p.name for p in paths]
    for path in paths:
        state = load_checkpoint(path)
        step = state.get("step")
        name = path.name if names.count(path.name) == 1 else str(path)  # runs/a/last.pt, runs/b/last.pt
        rows += run_model(f"{name} (step {step})", state, stacks, args.modes)
        print(f"measured {path}", file=sys.stderr)
    print_table(rows)
    if not args.no_otsu:
        print_margins(rows)
    if args.wide_vessels and state is not None:
        wide_vessel_recall(state)
    if args.dim_vessels and state is not None:
        dim_vessel_recall(state)
    if args.surface_stacks and state is not None:
        surface_stack_scores(state)
    if args.timing and state is not None:
        timing(state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
