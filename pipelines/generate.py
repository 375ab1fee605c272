"""``octasim generate``: write a synthetic OCTA / two-photon dataset (NIfTI pairs + dataset.json)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from octasim.errors import OctasimError


def register(subparsers) -> None:
    """Add ``generate`` to the ``octasim`` parser."""
    from .cli import HelpFormatter

    p = subparsers.add_parser(
        "generate", formatter_class=HelpFormatter,
        help="write synthetic volumes with exact vessel labels (NIfTI + dataset.json)",
        description="Render synthetic 3D OCTA (or two-photon) volumes with exact vessel labels from FOV patches of a\n"
                    "vessel graph (--graph) or of freshly generated procedural mouse cortex (default).\n"
                    "Writes DIR/images/<id>.nii.gz (float32 in [0, 1]), DIR/labels/<id>.nii.gz (uint8),\n"
                    "DIR/qc/<id>.png, DIR/contact_sheet.png and DIR/dataset.json (seeds, sources, all\n"
                    "sampled parameters). The same command and seed give byte-identical volumes; running it\n"
                    "again on an interrupted folder finishes the missing samples only (and renders again\n"
                    "any sample whose files were truncated or damaged since).\n"
                    "Scaling out: --scheduler renders one task per sample on a dask.distributed cluster;\n"
                    "--shard I/N renders one part of the set per task of a SLURM/PBS job array, and the same\n"
                    "command with --finalize (instead of --shard) then writes dataset.json and the contact sheet.")
    p.add_argument("--out", required=True, type=Path, default=argparse.SUPPRESS, metavar="DIR",
                   help="output dataset folder (created; an existing folder of the same dataset is resumed)")
    p.add_argument("--n", required=True, type=int, default=argparse.SUPPRESS, metavar="N",
                   help="number of samples")
    p.add_argument("--graph", type=Path, default=None, metavar="FILE",
                   help="vessel graph file (any format `octasim graph` reads); patches are cut out of it with the "
                        "reference extractor. Default: procedural mouse cortex, a fresh block per sample")
    p.add_argument("--graph-voxel-size", type=float, default=None, metavar="UM",
                   help="voxel size in um of a graph stored in voxel units (VesselGraph CSV, ClearMap); "
                        "omit when the file is in um")
    p.add_argument("--profile", default="paper", metavar="NAME|FILE.yaml",
                   help="simulation profile: paper (reference OCTA model), octa (extended OCTA artifacts), "
                        "two-photon, or a YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a profile parameter (repeatable); VALUE is YAML, a [lo, hi] list is a range "
                        "sampled per volume, e.g. --set len_tail=0.5 --set granular_noise_std=[0.5,1.0]")
    p.add_argument("--shape", type=int, nargs="+", default=[250], metavar="VOXELS",
                   help="volume shape in voxels: one edge length or three (i j k, depth = k)")
    p.add_argument("--voxel-size", type=float, default=2.0, metavar="UM",
                   help="isotropic voxel size, um (FOV = shape x voxel size; extractor thresholds scale with it)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed; sample i uses a seed derived from (seed, i)")
    p.add_argument("--workers", type=int, default=1, metavar="K",
                   help="parallel worker processes on this machine (one thread each); with --scheduler local, the "
                        "number of dask worker processes. The files are identical for any K")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS|local",
                   help="render on a dask.distributed cluster, one task per sample (retried when a worker is lost): "
                        "the running scheduler's address, e.g. tcp://node01:8786 (its workers need octasim installed "
                        "and must see --out at the same path, i.e. a shared filesystem), or 'local' for a LocalCluster "
                        "of --workers processes on this machine; none: --workers local processes, no dask")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="render only the samples whose index %% N == I (0 <= I < N), one task of a job array, e.g. "
                        "--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT; writes per-sample files and "
                        "DIR/shards/shard_I_of_N.json only, so shards may run at the same time into one folder; "
                        "none: all samples")
    p.add_argument("--finalize", action="store_true",
                   help="after all shards: check that every sample is present and readable, then write "
                        "dataset.json and the contact sheet (the shards' arguments, without --shard). Missing "
                        "samples are an error naming their indices and the shard that should have produced them")
    p.add_argument("--no-qc", action="store_true", help="skip the per-sample QC PNGs and the contact sheet")
    p.add_argument("--extract", dest="extract_overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a patch-extractor threshold (after scaling to the FOV), e.g. "
                        "--extract min_edges=500 --extract surface_radius_um=8")
    p.add_argument("--cortex", dest="cortex_overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a procedural-cortex generator parameter, e.g. --cortex size_um=[600,600,700]")
    p.add_argument("--no-occupancy", action="store_true",
                   help="render from the binary label instead of the partial-volume occupancy (two-photon)")
    p.add_argument("--depth-offset-um", type=float, nargs="+", default=[0.0], metavar="UM",
                   help="depth (um) of the volume below the extractor's start just above the surface vessels: "
                        "one value, or LO HI for a range drawn per sample (e.g. 0 400 gives surface and deep cortex)")
    p.add_argument("--pial-radius-min-um", type=float, nargs="+", default=None, metavar="UM",
                   help="smallest radius (um) of the procedural pial vessels: one value or LO HI per sample "
                        "(real surface vessels reach 25-50 um); default: the generator's Murray-law radii")
    p.add_argument("--label-acquisition", action="store_true",
                   help="with simulated scanner sampling, draw the label on the scanner grid, as a person labels "
                        "an acquired stack (a cell is vessel if any voxel in it is)")
    p.set_defaults(func=run)


def parse_assignments(items: list[str], option: str) -> dict:
    """``["a=1", "b=[0.5, 1]"]`` -> ``{"a": 1, "b": [0.5, 1]}`` (values parsed as YAML)."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"{option} {item!r}: expected KEY=VALUE")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ValueError(f"{option} {item!r}: the value is not valid YAML ({exc})") from exc
    return out


def _value_or_range(values: list[float], option: str):
    """One number -> the number; two -> the range [LO, HI] drawn per sample (LO > HI is an error)."""
    from octasim.ranges import parse_range

    if len(values) not in (1, 2):
        raise ValueError(f"{option} takes one value or LO HI, got {len(values)} values")
    return parse_range(values, option)


#: ``octasim generate``'s names for the settings a "no patch" error suggests changing
#: (keys: ``octasim.extract.Knob`` values and ``octasim.synth.sources.FIXES`` fields)
ADVICE_NAMES = {
    "graph_voxel_size_um": "--graph-voxel-size UM", "fov_um": "FOV (--shape x --voxel-size)",
    "min_nodes_per_pillar": "--extract min_nodes_per_pillar=N", "min_edges": "--extract min_edges=N",
    "surface_radius_um": "--extract surface_radius_um=UM", "cortex_depth_um": "--extract cortex_depth_um=UM",
    "shape": "--shape", "voxel_size_um": "--voxel-size",
    "extract": "--extract KEY=VALUE (e.g. --extract min_edges=500, --extract surface_radius_um=5)",
    "cortex_size_um": "--cortex size_um=[X,Y,Z]",
}


def parse_shard(text: str) -> tuple[int, int]:
    """``"3/8"`` -> ``(3, 8)``, checked: 0 <= I < N."""
    from octasim.synth import check_shard

    index, sep, count = str(text).partition("/")
    try:
        if not sep:
            raise ValueError
        shard = (int(index), int(count))
    except ValueError:
        raise OctasimError(f"--shard {text!r}: expected I/N, two integers, e.g. --shard 0/8") from None
    try:
        return check_shard(shard)
    except OctasimError as exc:  # "shard I/N: ..." -> "--shard I/N: ..."
        raise OctasimError(f"--{exc}") from None


def run(args: argparse.Namespace) -> int:
    from octasim.synth import NoPatchError, SynthConfig, finalize_dataset, generate_dataset, resolve_profile

    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    if len(args.shape) not in (1, 3):
        raise ValueError(f"--shape takes one or three integers, got {len(args.shape)}")
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    shard = None if args.shard is None else parse_shard(args.shard)
    if args.finalize and shard is not None:
        raise OctasimError("--finalize takes the shards' arguments without --shard "
                           "(it checks the samples of all shards)")
    overrides = parse_assignments(args.overrides, "--set")
    profile, name = resolve_profile(str(args.profile), overrides or None)  # unknown keys raise ValueError here
    config = SynthConfig(profile=profile, profile_name=name, shape=tuple(args.shape),
                         voxel_size_um=args.voxel_size, graph=str(args.graph) if args.graph else None,
                         graph_voxel_size_um=args.graph_voxel_size, seed=args.seed,
                         extract=parse_assignments(args.extract_overrides, "--extract"),
                         cortex=parse_assignments(args.cortex_overrides, "--cortex"),
                         occupancy=not args.no_occupancy,
                         depth_offset_um=_value_or_range(args.depth_offset_um, "--depth-offset-um"),
                         pial_radius_min_um=(None if args.pial_radius_min_um is None else
                                             _value_or_range(args.pial_radius_min_um, "--pial-radius-min-um")),
                         label_acquisition=args.label_acquisition)
    shape = " x ".join(str(s) for s in config.shape)
    source = args.graph if args.graph else "procedural cortex"
    if args.finalize:
        what = "finalize"
    elif shard is not None:
        what = f"shard {shard[0]}/{shard[1]} (indices {shard[0]}, {shard[0] + shard[1]}, ...) of"
    else:
        what = "generate"
    where = ""
    if args.scheduler and not args.finalize:
        where = (f" on a dask LocalCluster of {args.workers} workers" if args.scheduler == "local"
                 else f" on the dask scheduler {args.scheduler}")
    print(f"octasim generate: {what} {args.n} samples of {shape} voxels at {config.voxel_size_um:g} um, "
          f"profile {name}, source {source}, seed {args.seed} -> {args.out}{where}", flush=True)
    started = time.perf_counter()

    def report_broken(sid: str, path: Path) -> None:
        print(f"octasim generate: {path} cannot be read completely (truncated or damaged since it was "
              f"written); rendering sample {sid} again", file=sys.stderr, flush=True)

    try:
        if args.finalize:
            manifest = finalize_dataset(config, args.out, args.n, qc=not args.no_qc, progress=True)
        else:
            manifest = generate_dataset(config, args.out, args.n, workers=args.workers, progress=True,
                                        qc=not args.no_qc, on_broken=report_broken, scheduler=args.scheduler,
                                        shard=shard)
    except NoPatchError as exc:  # word the fixes with this command's options
        if exc.problem is None:
            raise
        raise NoPatchError(exc.problem.message(ADVICE_NAMES), exc.problem) from None
    if shard is not None:
        print(f"shard {shard[0]}/{shard[1]} done in {time.perf_counter() - started:.1f} s ({manifest})")
        print("  when every shard is done, run the same command with --finalize instead of --shard "
              "to check the set and write dataset.json and the contact sheet")
        return 0
    out = manifest.parent
    print(f"done in {time.perf_counter() - started:.1f} s")
    print(f"  manifest:      {manifest}")
    print(f"  images:        {out / 'images'}")
    print(f"  labels:        {out / 'labels'}")
    if not args.no_qc:
        print(f"  QC pictures:   {out / 'qc'}")
        print(f"  contact sheet: {out / 'contact_sheet.png'}")
    return 0
