"""Synthetic datasets: one sample = graph patch -> voxel maps -> simulated image; and dataset folders.

A dataset is fully defined by a :class:`SynthConfig` (profile, volume shape, voxel size, vessel
source, seed). Sample ``index`` is a deterministic function of ``(config, index)`` alone, so samples
can be rendered in any order, by any number of worker processes, on disk (:func:`generate_dataset`)
or on the fly during training (:func:`render_sample`), with identical results.

Folder layout written by :func:`generate_dataset`::

    DIR/dataset.json            manifest (format "octasim-dataset", version 1), written atomically
    DIR/images/<id>.nii.gz      float32 image in [0, 1], affine in mm (voxel size / 1000)
    DIR/labels/<id>.nii.gz      uint8 binary vessel label
    DIR/qc/<id>.png             orthogonal slices + depth projection, image and label
    DIR/records/<id>.json       per-sample record, written last: marks the sample as finished
    DIR/contact_sheet.png       depth projections of the samples
    DIR/shards/shard_I_of_N.json  while a job array fills the folder (``shard=``): one per shard
                                that has started (config, n, complete); removed by :func:`finalize_dataset`

Samples render in this process, in a process pool (``workers``), or as one task each on a
dask.distributed cluster (``scheduler``); a job array's tasks each render one shard (``shard``)
and :func:`finalize_dataset` writes the shared files. The files are the same in every case.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import time
import uuid
from contextlib import closing, contextmanager
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from octasim import __version__
from octasim.atomic import atomic_path
from octasim.errors import OctasimError
from octasim.extract import NoPatchError

FORMAT = "octasim-dataset"
FORMAT_VERSION = 1
#: extra depth (um) of a procedural block beyond the FOV, so the patch starting below the
#: surface vessels still fits above the bottom of the block
PROCEDURAL_EXTRA_DEPTH_UM = 150.0
#: lateral margin (um) of a procedural block beyond the FOV
PROCEDURAL_MARGIN_UM = 20.0
#: smallest lateral size (um) of a procedural block: smaller blocks lack realistic pial trunks
#: (radius > 13 um), so small FOVs are cut from a block of this size (generation costs ~0.03 s)
PROCEDURAL_MIN_LATERAL_UM = 500.0
#: how many fresh procedural blocks are tried before giving up on a sample
PROCEDURAL_ATTEMPTS = 8
#: the contact sheet shows at most this many samples (the first ones)
CONTACT_SHEET_MAX = 100
SUBDIRS = ("images", "labels", "qc", "records")
#: folder of the per-shard files of a job array (``generate_dataset(..., shard=(i, n))``)
SHARDS_DIR = "shards"
SHARD_FORMAT = "octasim-dataset-shard"
#: how often dask runs a sample's task again after an error (a lost worker's tasks are rerun anyway)
DASK_RETRIES = 2
#: seconds to wait for a dask scheduler to answer
SCHEDULER_TIMEOUT_S = 30


class DatasetError(OctasimError):
    """A dataset folder or manifest cannot be used; the message names the folder and the problem."""


class MissingSamplesError(DatasetError):
    """``finalize_dataset``: samples are missing or damaged; ``indices`` lists them."""

    def __init__(self, message: str, indices: list[int]):
        super().__init__(message)
        self.indices = list(indices)


class ClusterError(OctasimError):
    """The dask scheduler cannot be reached, or its workers cannot see the output folder."""


# --------------------------------------------------------------------------- configuration
@dataclass
class SynthConfig:
    """Everything that defines a synthetic dataset (plain data; JSON round trip).

    profile:            simulation profile: a shipped name ('paper', 'octa', 'two-photon'), a YAML
                        path, or a dict; :meth:`resolved` replaces it with the full profile dict.
    shape:              volume shape in voxels (i, j, k), depth = k.
    voxel_size_um:      isotropic voxel edge, um.
    graph:              vessel graph file (any format octasim reads); None = procedural cortex.
    graph_voxel_size_um: voxel size (um) of a graph stored in voxel units; None = already in um.
    seed:               dataset seed; sample i uses a seed derived from (seed, i).
    cortex:             overrides of ``CortexParams`` for procedural blocks.
    extract:            overrides of ``ExtractParams`` (applied after scaling to the FOV).
    occupancy:          render partial-volume occupancy (smoother image; label stays binary).
    profile_name:       name recorded for the profile (set by :meth:`resolved`).
    depth_offset_um:    how far (um) the patch window lies below the extractor's start (just above
                        the shallowest surface vessel): fixed, or [lo, hi] drawn per sample.
                        0 (default) = the reference rule, every patch at the brain surface; deeper
                        offsets give deep-cortex volumes (capillaries and penetrating vessels, a few %
                        vessel voxels). Procedural blocks are made deeper by the largest offset.
    voxel_size_um:      may also be a range [lo, hi] (um), drawn per sample: the same voxel grid
                        then covers a different field of view (shape x voxel size), so vessels
                        appear at different scales in voxels (scale randomization; a small FOV over
                        a pial vessel is mostly vessel). Written volumes carry the drawn voxel size.
    pial_radius_min_um: None (default): procedural pial vessels as ``cortex`` says. A value or a
                        [lo, hi] range (drawn per sample), um: the smallest pial vessel radius of the
                        sample's procedural block (raises ``CortexParams.pial_radius_um[0]``; pial
                        radii of small blocks come out near 10-20 um by Murray's law, while real
                        surface vessels reach r = 25-50 um). Ignored for graph files.
    label_min_occupancy: None (default): the label is the centre test of the voxelizer. A number in
                        (0, 1]: voxels whose partial-volume occupancy is at least this are labelled
                        too (a more generous label, like manual labels of real stacks; at most
                        about half a voxel wider than the centre test).
    label_acquisition:  False (default): the label is exact on the voxel grid. True: for samples whose
                        profile simulates acquisition (``acquisition`` on), the label is drawn as a
                        person labels the acquired stack: a voxel is vessel when any vessel voxel lies
                        in the same scanner cell (lateral step x slice spacing), e.g. a lateral
                        capillary 5 um tall fills the whole 5 um slice(s) it touches.
    voxel_size_log:     False (default): a voxel-size range is drawn uniformly. True: log-uniformly,
                        so every octave of scale (1-2, 2-4, 4-8 um) is drawn equally often; vessel
                        widths in voxels then cover a wide range evenly (scale-robust training).
    """

    profile: str | dict = "paper"
    shape: tuple[int, int, int] = (250, 250, 250)
    voxel_size_um: float = 2.0
    graph: str | None = None
    graph_voxel_size_um: float | None = None
    seed: int = 0
    cortex: dict = field(default_factory=dict)
    extract: dict = field(default_factory=dict)
    occupancy: bool = True
    profile_name: str | None = None
    depth_offset_um: float | list[float] = 0.0
    pial_radius_min_um: float | list[float] | None = None
    label_min_occupancy: float | None = None
    label_acquisition: bool = False
    voxel_size_log: bool = False

    def __post_init__(self) -> None:
        shape = np.atleast_1d(np.asarray(self.shape, dtype=int)).tolist()
        if len(shape) == 1:
            shape = shape * 3
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"shape must be one or three positive integers, got {self.shape!r}")
        self.shape = tuple(int(s) for s in shape)
        self.voxel_size_um = _value_or_range(self.voxel_size_um, "voxel_size_um")
        if not min(_bounds(self.voxel_size_um)) > 0:
            raise ValueError(f"voxel size must be positive (um), got {self.voxel_size_um}")
        self.depth_offset_um = _value_or_range(self.depth_offset_um, "depth_offset_um")
        if min(_bounds(self.depth_offset_um)) < 0:
            raise ValueError(f"depth_offset_um must be >= 0 (um below the extractor's start), "
                             f"got {self.depth_offset_um}")
        if self.pial_radius_min_um is not None:
            self.pial_radius_min_um = _value_or_range(self.pial_radius_min_um, "pial_radius_min_um")
            if not min(_bounds(self.pial_radius_min_um)) > 0:
                raise ValueError(f"pial_radius_min_um must be positive (um), got {self.pial_radius_min_um}")
        if self.label_min_occupancy is not None:
            self.label_min_occupancy = float(self.label_min_occupancy)
            if not 0.0 < self.label_min_occupancy <= 1.0:
                raise ValueError(f"label_min_occupancy must be in (0, 1] or None, got {self.label_min_occupancy}")
        self.voxel_size_log = bool(self.voxel_size_log)
        self.seed = int(self.seed)
        if self.graph is not None:
            self.graph = str(self.graph)
        if self.graph_voxel_size_um is not None:
            self.graph_voxel_size_um = float(self.graph_voxel_size_um)
        self.cortex = dict(self.cortex or {})
        self.extract = dict(self.extract or {})
        self.occupancy = bool(self.occupancy)
        self.label_acquisition = bool(self.label_acquisition)

    @property
    def fov_um(self) -> tuple[float, float, float]:
        """Field of view of one sample, um (shape * voxel size; the largest one for a voxel-size range)."""
        return self.fov_for(max(_bounds(self.voxel_size_um)))

    def fov_for(self, voxel_size_um: float) -> tuple[float, float, float]:
        """Field of view (um) of the voxel grid at ``voxel_size_um``."""
        return tuple(float(s) * float(voxel_size_um) for s in self.shape)

    @property
    def nominal_voxel_size_um(self) -> float:
        """The voxel size (um) a dataset records: the fixed value, or the middle of a range (the
        geometric middle when drawn log-uniformly)."""
        lo, hi = _bounds(self.voxel_size_um)
        return float(np.sqrt(lo * hi)) if self.voxel_size_log else 0.5 * (lo + hi)

    @property
    def fixed_geometry(self) -> bool:
        """True when voxel size and depth offset are fixed and the offset is 0 (the reference rule)."""
        return not isinstance(self.voxel_size_um, list) and self.depth_offset_um == 0.0 \
            and not isinstance(self.depth_offset_um, list) and self.pial_radius_min_um is None

    def to_dict(self) -> dict:
        """Plain JSON-serializable dict (keys of the realism options are left out at their defaults,
        so manifests of datasets that do not use them stay as before)."""
        d = asdict(self)
        d["shape"] = list(self.shape)
        for key, default in _OPTIONAL_DEFAULTS.items():
            if d.get(key) == default and not isinstance(d.get(key), list):
                d.pop(key)
        return _plain(d)

    @classmethod
    def from_dict(cls, d: dict) -> "SynthConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise ValueError."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown dataset config key(s): {', '.join(unknown)} (known: {', '.join(sorted(names))})")
        return cls(**d)

    def resolved(self) -> "SynthConfig":
        """Copy with the profile loaded into a full dict, the graph path absolute and the
        profile name recorded; resolving twice changes nothing."""
        from octasim.profiles import load_profile

        spec = self.profile
        name = self.profile_name
        if name is None:
            if isinstance(spec, dict):
                name = str(spec.get("name", "custom"))
            else:
                name = Path(spec).stem if str(spec).lower().endswith((".yaml", ".yml")) else str(spec)
        profile = _plain(load_profile(spec))
        graph = str(Path(self.graph).expanduser().resolve()) if self.graph is not None else None
        return replace(self, profile=profile, graph=graph, profile_name=name)


#: SynthConfig keys omitted from ``to_dict`` at these default values
_OPTIONAL_DEFAULTS = {"depth_offset_um": 0.0, "pial_radius_min_um": None, "label_min_occupancy": None,
                      "label_acquisition": False, "voxel_size_log": False}


def _value_or_range(value, name: str) -> float | list[float]:
    """A float, or a [lo, hi] list of two floats with lo <= hi."""
    if isinstance(value, (list, tuple, np.ndarray)):
        vals = [float(v) for v in np.asarray(value, dtype=float).ravel()]
        if len(vals) == 1:
            return vals[0]
        if len(vals) != 2 or not all(np.isfinite(vals)) or vals[0] > vals[1]:
            raise ValueError(f"{name} must be a number or a range [lo, hi] with lo <= hi, got {value!r}")
        return vals[0] if vals[0] == vals[1] else vals
    v = float(value)
    if not np.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return v


def _bounds(value: float | list[float]) -> tuple[float, float]:
    """(lo, hi) of a value or range."""
    return (float(value[0]), float(value[1])) if isinstance(value, list) else (float(value), float(value))


def _draw(value: float | list[float], rng: np.random.Generator, log: bool = False) -> float:
    """A fixed value, or uniform in [lo, hi] (``log``: uniform in log space; lo must be > 0)."""
    lo, hi = _bounds(value)
    if lo == hi:
        return lo
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if log else float(rng.uniform(lo, hi))


# --------------------------------------------------------------------------- seeds
def sample_seed(config: SynthConfig, index: int) -> int:
    """The seed of sample ``index`` (a 32-bit integer derived from (config.seed, index))."""
    if index < 0:
        raise ValueError(f"sample index must be >= 0, got {index}")
    return int(np.random.SeedSequence([config.seed, int(index)]).generate_state(1, dtype=np.uint32)[0])


def sample_id(index: int) -> str:
    """Zero-padded sample id, e.g. ``sample_0007``."""
    return f"sample_{index:04d}"


# --------------------------------------------------------------------------- patch sources
def _extract_params(config: SynthConfig, fov: tuple[float, float, float] | None = None,
                    extra_depth_um: float = 0.0):
    """ExtractParams for a FOV (default: the config's; scaled from the 500 um reference), then user
    overrides; ``extra_depth_um`` makes the patch box that much taller (for a depth offset: the
    box then reaches the deepest window, and the cortex-depth rule applies to the window's end)."""
    from octasim.extract import ExtractParams

    params = ExtractParams()
    fov = config.fov_um if fov is None else tuple(float(v) for v in fov)
    if tuple(float(v) for v in np.broadcast_to(params.fov_um, (3,))) != fov:
        params = params.scaled_to(fov)
    if config.extract:
        known = {f.name for f in fields(params)}
        unknown = sorted(set(config.extract) - known)
        if unknown:
            raise ValueError(f"unknown extractor parameter(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        params = replace(params, **config.extract)
    if extra_depth_um > 0:
        f = params.fov_um
        params = replace(params, fov_um=(f[0], f[1], f[2] + float(extra_depth_um)))
    return params


def window_patch(patch, fov: tuple[float, float, float], depth_offset_um: float):
    """The part of ``patch`` (origin at its corner) inside the window [0, fov_x] x [0, fov_y] x
    [d, d + fov_z] (d = ``depth_offset_um``), translated so that the window corner is the origin
    (edges with one end inside are kept whole, as the extractor does). Returns a new Patch."""
    from octasim.extract import Patch

    d = float(depth_offset_um)
    lo = np.array([0.0, 0.0, d])
    hi = lo + np.asarray(fov, float)
    sub = patch.graph.crop(lo, hi).translate(-lo)
    origin = np.asarray(patch.origin_um, float) + lo
    sub.meta = {**sub.meta, "patch_origin_um": origin.tolist(), "patch_size_um": list(map(float, fov)),
                "depth_offset_um": d}
    return Patch(sub, origin, np.asarray(fov, float).copy(), patch.pillar)


#: the extractor's advice names ``octasim graph extract`` options; their ``octasim generate`` twins
_OPTION_NAMES = (("--voxel-size UM", "--graph-voxel-size UM"), ("--surface-radius-um", "--extract surface_radius_um=UM"),
                 ("--min-nodes", "--extract min_nodes_per_pillar=N"), ("--min-edges", "--extract min_edges=N"),
                 ("--cortex-depth-um", "--extract cortex_depth_um=UM"),
                 ("--fov-um", "FOV (--shape x --voxel-size)"))


def _report_text(report) -> str:
    """The extractor's summary and advice, with option names as ``octasim generate`` spells them."""
    parts = []
    for attr in ("summary", "advice"):
        fn = getattr(report, attr, None)
        text = fn() if callable(fn) else fn
        if text:
            parts.append(str(text).strip())
    text = "\n".join(parts)
    for old, new in _OPTION_NAMES:
        text = text.replace(old, new)
    return text


class GraphPatchSource:
    """FOV patches of one vessel graph file, extracted once; samples pick one by their seed."""

    def __init__(self, config: SynthConfig):
        from octasim.extract import extract_patches
        from octasim.graph_io import read_graph

        self.path = config.graph
        graph = read_graph(config.graph, voxel_size_um=config.graph_voxel_size_um)
        params = _extract_params(config)
        self.patches, self.report = extract_patches(graph, params)
        if not self.patches:
            fov = " x ".join(f"{v:g}" for v in config.fov_um)
            hint = ("Suggested fixes: if the graph is stored in voxel units, give its voxel size "
                    "(--graph-voxel-size UM); use a smaller volume (--shape) or voxel size (--voxel-size) "
                    "so the FOV is smaller; or relax the rule named above with --extract KEY=VALUE "
                    "(e.g. --extract min_edges=500, --extract surface_radius_um=5).")
            raise NoPatchError(f"{config.graph}: the graph yields no {fov} um patch.\n"
                               f"{_report_text(self.report)}\n{hint}")

        self.config = config
        self._graph = graph
        self._by_fov: dict[tuple, tuple] = {}

    def _patches_for(self, fov: tuple[float, float, float]):
        """Patches with boxes of ``fov`` laterally, tall enough for the config's largest depth
        offset (extracted once per FOV, a few FOVs cached)."""
        d_max = _bounds(self.config.depth_offset_um)[1]
        key = (tuple(fov), d_max)
        if key not in self._by_fov:
            from octasim.extract import extract_patches

            patches, report = extract_patches(self._graph, _extract_params(self.config, fov, d_max))
            if not patches:
                size = " x ".join(f"{v:g}" for v in fov)
                raise NoPatchError(f"{self.path}: the graph yields no {size} um patch with a depth offset "
                                   f"up to {d_max:g} um.\n{_report_text(report)}\nSuggested fixes: a "
                                   "smaller depth offset or voxel size range, or relax the rule named "
                                   "above with --extract KEY=VALUE.")
            if len(self._by_fov) >= 8:
                self._by_fov.clear()
            self._by_fov[key] = (patches, report)
        return self._by_fov[key][0]

    def draw(self, rng: np.random.Generator, seed: int, fov: tuple[float, float, float] | None = None,
             depth_offset_um: float = 0.0):
        """(patch, source record) for one sample; ``fov`` / ``depth_offset_um`` (um) other than the
        config's fixed FOV at offset 0 cut the window from patches extracted for that FOV."""
        if fov is None or (tuple(fov) == self.config.fov_um and depth_offset_um == 0.0
                           and _bounds(self.config.depth_offset_um)[1] == 0.0):
            patches = self.patches
        else:
            patches = self._patches_for(tuple(fov))
        k = int(rng.integers(len(patches)))
        patch = patches[k]
        if patches is not self.patches:
            patch = window_patch(patch, fov, depth_offset_um)
        return patch, {"graph": self.path, "patch_index": k, "n_patches": len(patches),
                       **_patch_record(patch)}


class ProceduralPatchSource:
    """A fresh procedural cortex block per sample, just big enough for one FOV patch (laterally
    at least ``PROCEDURAL_MIN_LATERAL_UM`` so that it holds pial trunks), cut with the extractor;
    one of its patches is taken at random."""

    def __init__(self, config: SynthConfig):
        from octasim.generator import CortexParams

        fov = config.fov_um  # the largest FOV of a voxel-size range
        d_max = _bounds(config.depth_offset_um)[1]
        overrides = dict(config.cortex)
        size = overrides.pop("size_um", None)
        if size is None:  # deep enough for the deepest window (largest FOV at the largest offset)
            size = (max(fov[0], PROCEDURAL_MIN_LATERAL_UM) + PROCEDURAL_MARGIN_UM,
                    max(fov[1], PROCEDURAL_MIN_LATERAL_UM) + PROCEDURAL_MARGIN_UM,
                    fov[2] + PROCEDURAL_EXTRA_DEPTH_UM + d_max)
        known = {f.name for f in fields(CortexParams)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown cortex generator parameter(s): {', '.join(unknown)} "
                             f"(known: {', '.join(sorted(known))})")
        self.cortex_params = CortexParams(size_um=tuple(float(s) for s in size), **overrides)
        self.config = config
        self.extract_params = _extract_params(config)
        self.fov = fov
        # probe one block now, so that parameters that can never yield a patch fail before any work
        self.draw(np.random.default_rng(config.seed), -1, fov, d_max)

    def draw(self, rng: np.random.Generator, seed: int, fov: tuple[float, float, float] | None = None,
             depth_offset_um: float = 0.0, pial_radius_min_um: float | None = None):
        """(patch, source record) from a fresh block; ``fov`` / ``depth_offset_um`` (um): the window
        (default: the config's FOV at the extractor's start); ``pial_radius_min_um``: raise the
        block's smallest pial radius to this (um)."""
        from octasim.extract import extract_patches
        from octasim.generator import generate_cortex

        fov = self.fov if fov is None else tuple(float(v) for v in fov)
        default = fov == self.fov and depth_offset_um == 0.0
        cortex_params = self.cortex_params
        if pial_radius_min_um is not None:
            lo, hi = cortex_params.pial_radius_um
            lo = float(pial_radius_min_um)
            cortex_params = replace(cortex_params, pial_radius_um=(lo, max(lo, hi)))
        params = self.extract_params if default else _extract_params(self.config, fov, depth_offset_um)
        reports = []
        for attempt in range(PROCEDURAL_ATTEMPTS):
            block_seed = int(rng.integers(2**31))
            block = generate_cortex(cortex_params, seed=block_seed)
            patches, report = extract_patches(block, params)
            if patches:
                k = int(rng.integers(len(patches)))
                patch = patches[k]
                if not default:
                    patch = window_patch(patch, fov, depth_offset_um)
                return patch, {"graph": "procedural", "block_seed": block_seed, "attempt": attempt,
                               "block_size_um": list(self.cortex_params.size_um),
                               "patch_index": k, "n_patches": len(patches), **_patch_record(patch)}
            reports.append(report)
        size = " x ".join(f"{v:g}" for v in self.cortex_params.size_um)
        raise NoPatchError(
            f"procedural cortex: {PROCEDURAL_ATTEMPTS} generated blocks of {size} um all yielded no "
            f"patch of {' x '.join(f'{v:g}' for v in fov)} um at depth offset {depth_offset_um:g} um. "
            "Last extraction:\n"
            f"{_report_text(reports[-1])}\nSuggested fixes: relax the rule named above with "
            "--extract KEY=VALUE, or give a bigger block with --cortex size_um=[X,Y,Z].")


def _patch_record(patch) -> dict:
    rec = {"origin_um": _plain(np.asarray(patch.origin_um, float).tolist()),
           "size_um": _plain(np.asarray(patch.size_um, float).tolist()),
           "n_edges": int(patch.graph.n_edges)}
    pillar = getattr(patch, "pillar", None)
    if pillar is not None:
        rec["pillar"] = _plain(pillar)
    return rec


_SOURCE_CACHE: dict[str, Any] = {}


def patch_source_for(config: SynthConfig):
    """The (per-process cached) patch source of a resolved or unresolved config."""
    key_data = {"graph": config.graph, "graph_voxel_size_um": config.graph_voxel_size_um,
                "shape": list(config.shape), "voxel_size_um": config.voxel_size_um,
                "depth_offset_um": config.depth_offset_um, "cortex": config.cortex, "extract": config.extract}
    if config.graph is not None:
        p = Path(config.graph)
        key_data["mtime"] = p.stat().st_mtime_ns if p.exists() else None
    key = json.dumps(_plain(key_data), sort_keys=True)
    source = _SOURCE_CACHE.get(key)
    if source is None:
        source = GraphPatchSource(config) if config.graph is not None else ProceduralPatchSource(config)
        if len(_SOURCE_CACHE) > 8:
            _SOURCE_CACHE.clear()
        _SOURCE_CACHE[key] = source
    return source


# --------------------------------------------------------------------------- one sample
@dataclass
class Sample:
    """One synthetic sample: image float32 in [0, 1], label uint8 {0, 1}, and its record."""

    image: np.ndarray
    label: np.ndarray
    record: dict


_RESOLVED_CACHE: dict[str, SynthConfig] = {}


def _resolve_cached(config: SynthConfig) -> SynthConfig:
    """``config.resolved()``, memoized per process (render_sample is called per training volume)."""
    key = json.dumps(config.to_dict(), sort_keys=True)
    if key not in _RESOLVED_CACHE:
        if len(_RESOLVED_CACHE) > 64:
            _RESOLVED_CACHE.clear()
        _RESOLVED_CACHE[key] = config.resolved()
    return _RESOLVED_CACHE[key]


def render_sample(config: SynthConfig, index: int, patch_source=None) -> Sample:
    """Render sample ``index`` of the dataset ``config`` (deterministic in (config, index)).

    ``patch_source``: an object with ``draw(rng, seed) -> (Patch, source_record)`` or a list of
    ``Patch``; default: the config's graph file (patches extracted once per process) or a fresh
    procedural cortex block. The profile's random parameters are sampled per sample and recorded.

    Geometry (``config.voxel_size_um`` and ``config.depth_offset_um``, each fixed or a range) is
    drawn from a stream of its own and recorded as ``voxel_size_um`` / ``depth_offset_um``; the
    built-in sources extract for the drawn FOV and cut the window at the drawn offset; a given
    list of patches, or another source, is only cut (its patches must reach deep enough). With a
    fixed voxel size and offset 0 the result is exactly that of the reference rule.
    """
    from octasim.profiles import sample_parameters
    from octasim.simulate import simulate
    from octasim.voxelize import voxelize

    config = _resolve_cached(config)
    seed = sample_seed(config, index)
    # spawn(4)[:3] == spawn(3): the geometry stream leaves the reference streams unchanged
    patch_ss, param_ss, sim_ss, geo_ss = np.random.SeedSequence(seed).spawn(4)
    rng_geo = np.random.default_rng(geo_ss)
    vs = _draw(config.voxel_size_um, rng_geo, log=config.voxel_size_log)
    depth = _draw(config.depth_offset_um, rng_geo)
    pial = None if config.pial_radius_min_um is None else _draw(config.pial_radius_min_um, rng_geo)
    fov = config.fov_for(vs)
    default_geometry = config.fixed_geometry
    if patch_source is None:
        patch_source = patch_source_for(config)
    rng_patch = np.random.default_rng(patch_ss)
    if isinstance(patch_source, (list, tuple)):
        if not patch_source:
            raise NoPatchError("render_sample: the given list of patches is empty")
        k = int(rng_patch.integers(len(patch_source)))
        patch = patch_source[k]
        if not default_geometry:
            patch = window_patch(patch, fov, depth)
        source = {"graph": "given", "patch_index": k, **_patch_record(patch)}
    elif default_geometry:
        patch, source = patch_source.draw(rng_patch, seed)
    elif isinstance(patch_source, ProceduralPatchSource):
        patch, source = patch_source.draw(rng_patch, seed, fov, depth, pial)
    elif isinstance(patch_source, GraphPatchSource):
        patch, source = patch_source.draw(rng_patch, seed, fov, depth)
    else:
        patch, source = patch_source.draw(rng_patch, seed)
        patch = window_patch(patch, fov, depth)
    params = _plain(sample_parameters(config.profile, np.random.default_rng(param_ss)))
    cut = config.label_min_occupancy
    maps = voxelize(patch.graph, config.shape, vs, occupancy=config.occupancy or cut is not None)
    maps.depth_origin_um = float(depth)  # the window lies this far below the patch's surface start
    label = np.asarray(maps.label) > 0
    if cut is not None:
        label |= np.asarray(maps.occupancy) >= np.float32(cut)
        if not config.occupancy:
            maps = replace(maps, occupancy=None)
    image = simulate(maps, params, np.random.default_rng(sim_ss))
    image = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    if config.label_acquisition and params.get("acquisition"):
        from octasim.simulate.acquisition import factors

        label = label_on_scanner_grid(label, factors(params, vs))
    label = label.astype(np.uint8)
    record = {"id": sample_id(index), "index": int(index), "seed": seed, "source": _plain(source),
              "profile": config.profile_name, "params": params,
              "voxel_size_um": float(vs), "depth_offset_um": float(depth),
              **({} if pial is None else {"pial_radius_min_um": float(pial)}),
              "vessel_fraction": float(label.mean())}
    return Sample(image=image, label=label, record=record)


def label_on_scanner_grid(label: np.ndarray, f) -> np.ndarray:
    """Binary label as drawn on an acquired stack: the grid is cut, per axis, into the scanner's
    cells (``max(2, round(n / f))`` equal cells of about ``f`` voxels, as the acquisition stage samples
    it), a cell is vessel when any of its voxels is, and every voxel takes its cell's value.
    ``f``: cell size per axis in voxels (scanner step / voxel size); axes with f <= 1 are unchanged."""
    out = np.asarray(label).astype(bool)
    for axis, fa in enumerate(np.broadcast_to(np.asarray(f, float), (3,))):
        n = out.shape[axis]
        cells = max(2, int(np.rint(n / fa))) if fa > 1 else n
        if cells >= n:
            continue
        starts = (np.arange(cells) * n) // cells
        coarse = np.logical_or.reduceat(out, starts, axis=axis)
        owner = np.searchsorted(starts, np.arange(n), side="right") - 1
        out = np.take(coarse, owner, axis=axis)
    return out


# --------------------------------------------------------------------------- dataset folders
def _sample_paths(out_dir: Path, sid: str) -> dict[str, Path]:
    return {"image": out_dir / "images" / f"{sid}.nii.gz", "label": out_dir / "labels" / f"{sid}.nii.gz",
            "qc": out_dir / "qc" / f"{sid}.png", "record": out_dir / "records" / f"{sid}.json"}


def _is_done(out_dir: Path, sid: str, qc: bool) -> bool:
    paths = _sample_paths(out_dir, sid)
    needed = ["record", "image", "label"] + (["qc"] if qc else [])
    return all(paths[k].is_file() for k in needed)


def _unreadable_file(out_dir: Path, sid: str) -> Path | None:
    """The first of a finished sample's record, image and label that cannot be read completely (a file
    truncated or damaged after it was written), else None. Decompresses every volume in full: the
    whole gzip stream (length and checksum) and as many voxels as the NIfTI header announces."""
    import gzip

    import nibabel as nib

    paths = _sample_paths(out_dir, sid)
    try:
        json.loads(paths["record"].read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return paths["record"]
    for key in ("image", "label"):
        try:
            image = nib.Nifti1Image.from_bytes(gzip.decompress(paths[key].read_bytes()))
            np.asarray(image.dataobj)
        except Exception:  # gzip, zlib and nibabel raise many types for a truncated or corrupt file
            return paths[key]
    return None


def _write_json(path: Path, data: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")


def _make_sample(config_dict: dict, out_dir: str, index: int, qc: bool) -> tuple[int, dict, np.ndarray]:
    """Worker: render sample ``index``, write its files (record last); return (index, record, MIP)."""
    from octasim.nifti import affine_for_spacing, write_volume
    from octasim.qc import save_sample_qc

    config = SynthConfig.from_dict(config_dict)
    out = Path(out_dir)
    sample = render_sample(config, index)
    sid = sample.record["id"]
    paths = _sample_paths(out, sid)
    spacing = sample.record["voxel_size_um"]  # the drawn one, for a voxel-size range
    # octasim's one convention: depth k points inferior, voxel (0, 0, 0)'s centre at world 0
    affine = affine_for_spacing(spacing)
    write_volume(paths["image"], sample.image, affine=affine)
    write_volume(paths["label"], sample.label, affine=affine)
    if qc:
        src = sample.record["source"]
        title = (f"{sid}  seed {sample.record['seed']}  profile {config.profile_name}  "
                 f"source {Path(str(src.get('graph'))).name}  vessel fraction {sample.record['vessel_fraction']:.3f}")
        save_sample_qc(sample.image, sample.label, paths["qc"], title=title, spacing_um=spacing)
    record = dict(sample.record)
    record.update({"image": f"images/{sid}.nii.gz", "label": f"labels/{sid}.nii.gz",
                   "qc": f"qc/{sid}.png" if qc else None})
    _write_json(paths["record"], record)
    return index, record, sample.image.max(axis=2)


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys where two plain-data trees differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            key = f"{prefix}.{k}" if prefix else str(k)
            if k not in a or k not in b:
                out.append(key)
            else:
                out.extend(_diff_keys(a[k], b[k], key))
        return out
    return [] if a == b else [prefix or "(root)"]


def _remove_stale_temps(out_dir: Path, ids: set[str] | None = None) -> None:
    """Delete temporary files an interrupted run left behind (``.<name>.tmp-<pid>...``); with ``ids``,
    only those of these samples (a shard must not delete the files other shards are writing)."""
    for sub in (out_dir, *(out_dir / s for s in SUBDIRS)):
        if sub.is_dir():
            for p in sub.iterdir():
                if p.name.startswith(".") and ".tmp-" in p.name and p.is_file():
                    if ids is None or p.name.split(".tmp-")[0][1:] in ids:
                        p.unlink(missing_ok=True)


def _manifest(config: SynthConfig, n: int, samples: list[dict], complete: bool) -> dict:
    return {"format": FORMAT, "version": FORMAT_VERSION, "octasim_version": __version__,
            "config": config.to_dict(), "voxel_size_um": config.nominal_voxel_size_um,
            "shape": list(config.shape), "n": int(n), "complete": bool(complete), "samples": samples}


def _check_folder(out_dir: Path, config: SynthConfig) -> None:
    """Refuse a folder that holds a different dataset (manifest or shard files) or unrelated files."""
    manifest_path = out_dir / "dataset.json"
    if manifest_path.exists():
        try:
            old = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DatasetError(f"{manifest_path}: unreadable dataset manifest ({exc}); "
                               "choose another --out folder or delete this one") from exc
        if old.get("format") != FORMAT:
            raise DatasetError(f"{manifest_path}: not an octasim dataset manifest; choose another --out folder")
        diff = _diff_keys(old.get("config"), config.to_dict())
        if diff:
            raise DatasetError(
                f"{out_dir}: the folder holds a different dataset (config differs in: {', '.join(diff)}); "
                "choose another --out folder, or repeat the original settings to resume it")
    elif out_dir.exists() and any(p for p in out_dir.iterdir() if p.name not in (*SUBDIRS, SHARDS_DIR)):
        raise DatasetError(f"{out_dir}: the folder is not empty and holds no dataset.json; "
                           "choose a new or empty --out folder")
    for path, data in _shard_files(out_dir):
        diff = _diff_keys(data.get("config"), config.to_dict())
        if diff:
            raise DatasetError(
                f"{path}: this shard of a job array rendered a different dataset into {out_dir} (config "
                f"differs in: {', '.join(diff)}); repeat the shards' settings, or choose another --out folder")


# --------------------------------------------------------------------------- shards (job arrays)
def check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    """``(i, n_shards)`` as ints with 0 <= i < n_shards; else OctasimError."""
    try:
        i, count = (int(v) for v in shard)
    except (TypeError, ValueError) as exc:
        raise OctasimError(f"shard must be (I, N), two integers, got {shard!r}") from exc
    if count < 1 or not 0 <= i < count:
        raise OctasimError(f"shard {i}/{count}: expected I/N with N >= 1 and 0 <= I < N "
                           "(SLURM: --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT with --array=0-N-1)")
    return i, count


def _shard_path(out_dir: Path, shard: tuple[int, int]) -> Path:
    return out_dir / SHARDS_DIR / f"shard_{shard[0]}_of_{shard[1]}.json"


def _shard_files(out_dir: Path) -> list[tuple[Path, dict]]:
    """(path, content) of the shard files in ``out_dir/shards`` (one per shard that has started)."""
    folder = out_dir / SHARDS_DIR
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.glob("shard_*_of_*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DatasetError(f"{path}: unreadable shard file ({exc}); delete it and run that shard again") from exc
        if not isinstance(data, dict) or data.get("format") != SHARD_FORMAT:
            raise DatasetError(f"{path}: not an octasim shard file; delete it")
        found.append((path, data))
    return found


def _shard_record(config: SynthConfig, n: int, shard: tuple[int, int], complete: bool) -> dict:
    return {"format": SHARD_FORMAT, "octasim_version": __version__, "config": config.to_dict(), "n": int(n),
            "shard": list(shard), "complete": bool(complete)}


def _index_list(indices: list[int], most: int = 40) -> str:
    """``1, 3, 5`` (the first ``most``, then how many more)."""
    text = ", ".join(str(i) for i in indices[:most])
    return text + (f" and {len(indices) - most} more" if len(indices) > most else "")


def _missing_message(out_dir: Path, n: int, problems: dict[int, str]) -> str:
    """Which samples are missing or damaged, grouped by the shard(s) that should have produced them."""
    shards = {tuple(d.get("shard", ())): d for _, d in _shard_files(out_dir)}
    counts = sorted({int(s[1]) for s in shards if len(s) == 2})
    groups: dict[tuple[tuple[int, int], ...], list[int]] = {}
    for i in sorted(problems):
        groups.setdefault(tuple((i % c, c) for c in counts), []).append(i)
    lines = [f"{out_dir}: {len(problems)} of {n} samples are missing or damaged, so dataset.json was not written:"]
    for owners, indices in groups.items():
        if owners:
            states = []
            for owner in owners:
                data = shards.get(owner)
                state = ("never started" if data is None else
                         "finished, but its files were removed or damaged since" if data.get("complete") else
                         "started but did not finish (still running, or stopped)")
                states.append(f"shard {owner[0]}/{owner[1]} ({state})")
            who = " or ".join(states) + " should have produced"
        else:
            who = f"no shard has started (no shard file in {out_dir / SHARDS_DIR}); run --shard I/N first to produce"
        details = "; ".join(f"{sample_id(i)}: {problems[i]}" for i in indices[:3])
        lines.append(f"  {who} indices {_index_list(indices)} ({details}{'; ...' if len(indices) > 3 else ''})")
    lines.append("Run those shards again with the same arguments (finished samples are skipped), then --finalize.")
    return "\n".join(lines)


# --------------------------------------------------------------------------- executors
def _render(todo: list[int], cfg: dict, out: Path, qc: bool, workers: int,
            scheduler: str | None) -> Iterator[tuple[int, dict, np.ndarray]]:
    """Render samples ``todo`` with :func:`_make_sample`, yielding its results as they finish: in this
    process, in a pool of ``workers`` spawned processes, or on a dask cluster (``scheduler``)."""
    if not todo:
        return
    if scheduler is not None:
        yield from _render_on_dask(todo, cfg, out, qc, scheduler, workers)
    elif workers <= 1 or len(todo) <= 1:
        for i in todo:
            yield _make_sample(cfg, str(out), i, qc)
    else:
        with _single_threaded_env(), ProcessPoolExecutor(
                max_workers=min(workers, len(todo)), mp_context=multiprocessing.get_context("spawn"),
                initializer=exit_with_parent, initargs=(os.getpid(),)) as pool:
            pending = {pool.submit(_make_sample, cfg, str(out), i, qc) for i in todo}
            try:
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        yield fut.result()
            except BaseException:  # also GeneratorExit: the caller stopped early
                for fut in pending:
                    fut.cancel()
                raise


@contextmanager
def _dask_client(scheduler: str, workers: int) -> Iterator[Any]:
    """A ``distributed.Client`` of the scheduler at ``scheduler`` (an address such as
    ``tcp://host:8786``), or, for ``"local"``, of a new LocalCluster of ``workers`` processes with
    one thread each (closed afterwards)."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise ClusterError("--scheduler needs dask.distributed: pip install 'dask[distributed]'") from exc
    if scheduler == "local":
        with _single_threaded_env(), LocalCluster(n_workers=max(1, int(workers)), threads_per_worker=1,
                                                  processes=True, dashboard_address=None) as cluster, \
                Client(cluster, set_as_default=False) as client:
            yield client
        return
    try:
        client = Client(scheduler, timeout=SCHEDULER_TIMEOUT_S, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ClusterError(f"cannot reach the dask scheduler at {scheduler!r} ({exc}); start one "
                           "(`dask scheduler`, dask-jobqueue) and give its address, or use --scheduler local") from exc
    try:
        yield client
    finally:
        client.close()


def _dask_task(marker: str, config_dict: dict, out_dir: str, index: int, qc: bool) -> tuple[int, dict, np.ndarray]:
    """Dask task: :func:`_make_sample`, once this worker has shown that it sees the client's output
    folder (the ``marker`` file the client wrote there); else ClusterError."""
    if not os.path.exists(marker):
        import socket

        raise ClusterError(f"dask worker on {socket.gethostname()} cannot see {out_dir} (no {marker}): --out "
                           "must be a folder that the client and every worker see at the same path "
                           "(a shared filesystem)")
    return _make_sample(config_dict, out_dir, index, qc)


def _render_on_dask(todo: list[int], cfg: dict, out: Path, qc: bool, scheduler: str,
                    workers: int) -> Iterator[tuple[int, dict, np.ndarray]]:
    """One dask task per sample (retried ``DASK_RETRIES`` times on an error; a lost worker's tasks
    are run again elsewhere by the scheduler); yields results in the order they finish."""
    from distributed import KilledWorker, as_completed

    root = out.resolve()
    token = uuid.uuid4().hex[:12]
    marker = root / "records" / f".dask-{token}.tmp-{os.getpid()}"
    marker.write_text("octasim generate: dask workers check that they see this folder\n")
    try:
        with _dask_client(scheduler, workers) as client:
            futures = [client.submit(_dask_task, str(marker), cfg, str(root), i, qc, retries=DASK_RETRIES,
                                     key=f"octasim-{sample_id(i)}-{token}") for i in todo]
            try:
                for fut in as_completed(futures, loop=client.loop):
                    try:
                        result = fut.result()
                    except KilledWorker as exc:
                        raise ClusterError(f"dask: every worker that rendered {fut.key} died ({exc}); out of "
                                           "memory? give the workers more memory or use a smaller --shape") from exc
                    fut.release()
                    yield result
            finally:
                client.cancel([f for f in futures if not f.done()])
    finally:
        marker.unlink(missing_ok=True)


# --------------------------------------------------------------------------- dataset folders
def generate_dataset(config: SynthConfig, out_dir: str | Path, n: int, workers: int = 1,
                     progress: bool = True, qc: bool = True,
                     on_sample: Callable[[dict], None] | None = None,
                     on_broken: Callable[[str, Path], None] | None = None,
                     scheduler: str | None = None, shard: tuple[int, int] | None = None) -> Path:
    """Write ``n`` samples of ``config`` into ``out_dir``; return the path of ``dataset.json``.

    Resumes a folder holding the same dataset: finished samples, marked by their record file, are
    skipped once their record and volumes read completely; a sample with a truncated or damaged file
    is rendered again and ``on_broken(sample id, file)`` is called; files are written under temporary
    names and renamed. A folder holding a different dataset raises DatasetError naming the differing
    config keys. ``workers`` > 1 renders in that many processes (spawn); the files are identical for
    any number of workers.

    ``scheduler``: render on a dask.distributed cluster instead, one task per sample: a scheduler
    address (``tcp://host:8786``; the workers must see ``out_dir`` at the same path) or ``"local"``
    (a LocalCluster of ``workers`` processes, one thread each). A task is retried on an error, and
    a lost worker's samples are rendered elsewhere; the files are the same as from one process.

    ``shard=(i, n_shards)`` (one task of a job array): render only the samples whose index %
    n_shards == i, write their files and ``shards/shard_<i>_of_<n_shards>.json`` but no shared
    file, and return the shard file's path; :func:`finalize_dataset` writes dataset.json and the
    contact sheet once every shard is done. Shards may run at the same time.
    """
    if n < 1:
        raise ValueError(f"the number of samples must be >= 1, got {n}")
    if shard is not None:
        shard = check_shard(shard)
    config = config.resolved()
    out = Path(out_dir)
    _check_folder(out, config)
    # fail early, before anything is written, with a clear message if the source yields no patch
    patch_source_for(config)
    for sub in SUBDIRS:
        (out / sub).mkdir(parents=True, exist_ok=True)
    indices = list(range(n)) if shard is None else list(range(shard[0], n, shard[1]))
    ids = None if shard is None else {sample_id(i) for i in indices}
    _remove_stale_temps(out, ids)
    if shard is None:
        _write_json(out / "dataset.json", _manifest(config, n, [], complete=False))
    else:  # per-shard file only: concurrent shards never write the same file
        _write_json(_shard_path(out, shard), _shard_record(config, n, shard, complete=False))

    records: dict[int, dict] = {}
    mips: dict[int, np.ndarray] = {}
    todo = []
    for i in indices:
        sid = sample_id(i)
        if not _is_done(out, sid, qc):
            todo.append(i)
        elif (broken := _unreadable_file(out, sid)) is not None:
            _sample_paths(out, sid)["record"].unlink()  # no longer marked finished until rendered again
            if on_broken is not None:
                on_broken(sid, broken)
            todo.append(i)
        else:
            records[i] = json.loads(_sample_paths(out, sid)["record"].read_text())

    from tqdm import tqdm

    bar = tqdm(total=len(indices), initial=len(indices) - len(todo), unit="sample",
               desc="generate" if shard is None else f"shard {shard[0]}/{shard[1]}",
               disable=None if progress else True)
    cfg = config.to_dict()

    def done(result):
        i, rec, mip = result
        records[i] = rec
        mips[i] = mip
        bar.update(1)
        if on_sample is not None:
            on_sample(rec)

    try:
        with closing(_render(todo, cfg, out, qc, workers, scheduler)) as results:
            for result in results:
                done(result)
    finally:
        bar.close()

    _remove_stale_temps(out, ids)  # e.g. of a worker lost mid-sample
    if shard is not None:
        _write_json(_shard_path(out, shard), _shard_record(config, n, shard, complete=True))
        return _shard_path(out, shard)
    return _write_final(out, config, n, qc, records, mips)


def finalize_dataset(config: SynthConfig, out_dir: str | Path, n: int, qc: bool = True,
                     progress: bool = True) -> Path:
    """After the shards of a job array (``generate_dataset(..., shard=...)``): check that each of
    the ``n`` samples has its record, image, label (and QC picture with ``qc``), that they read
    completely and belong to ``config``; then write the contact sheet and dataset.json. Return the
    manifest's path. Missing or damaged samples raise MissingSamplesError naming their indices and
    the shard that should have produced them; nothing is written then."""
    if n < 1:
        raise ValueError(f"the number of samples must be >= 1, got {n}")
    config = config.resolved()
    out = Path(out_dir)
    if not out.is_dir():
        raise DatasetError(f"{out}: no such dataset folder; run the shards (--shard I/N) before --finalize")
    _check_folder(out, config)
    for path, data in _shard_files(out):
        if data.get("n") != n:
            raise DatasetError(f"{path}: the shards rendered --n {data.get('n')}, --finalize got --n {n}; "
                               "give --finalize the shards' arguments (or delete the stale shard file)")
    from tqdm import tqdm

    records: dict[int, dict] = {}
    problems: dict[int, str] = {}
    needed = ["record", "image", "label"] + (["qc"] if qc else [])
    for i in tqdm(range(n), desc="check", unit="sample", disable=None if progress else True):
        sid = sample_id(i)
        paths = _sample_paths(out, sid)
        missing = [paths[k] for k in needed if not paths[k].is_file()]
        if missing:
            problems[i] = "missing " + ", ".join(str(p.relative_to(out)) for p in missing)
        elif (broken := _unreadable_file(out, sid)) is not None:
            problems[i] = f"{broken.relative_to(out)} cannot be read completely"
        else:
            rec = json.loads(paths["record"].read_text())
            if rec.get("id") != sid or rec.get("seed") != sample_seed(config, i):
                problems[i] = f"{paths['record'].relative_to(out)} belongs to another dataset (seed {rec.get('seed')})"
            else:
                records[i] = rec
    if problems:
        raise MissingSamplesError(_missing_message(out, n, problems), sorted(problems))
    _remove_stale_temps(out)
    return _write_final(out, config, n, qc, records, {})


def _write_final(out: Path, config: SynthConfig, n: int, qc: bool, records: dict[int, dict],
                 mips: dict[int, np.ndarray]) -> Path:
    """The shared files of a finished dataset: contact sheet (``qc``; depth projections from
    ``mips`` or read from the images) and the complete dataset.json; shard files are removed."""
    from octasim.qc import save_contact_sheet

    samples = [records[i] for i in range(n)]
    if qc:
        shown = list(range(min(n, CONTACT_SHEET_MAX)))
        tiles = []
        for i in shown:
            mip = mips.get(i)
            if mip is None:
                from octasim.nifti import read_volume

                mip = read_volume(out / samples[i]["image"]).data.max(axis=2)
            tiles.append(mip[..., None])
        save_contact_sheet(tiles, [sample_id(i) for i in shown], out / "contact_sheet.png")
    manifest_path = out / "dataset.json"
    _write_json(manifest_path, _manifest(config, n, samples, complete=True))
    for path, _ in _shard_files(out):
        path.unlink(missing_ok=True)
    if (out / SHARDS_DIR).is_dir() and not any((out / SHARDS_DIR).iterdir()):
        (out / SHARDS_DIR).rmdir()
    return manifest_path


def exit_with_parent(parent_pid: int, interval_s: float = 0.5) -> None:
    """Worker initializer: end this process as soon as its parent is gone (e.g. killed with SIGKILL,
    which gives the pool no chance to stop its workers), instead of rendering samples for nobody."""
    import threading

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


class _single_threaded_env:
    """Context manager: one BLAS/OpenMP thread per worker process (spawned children inherit it)."""

    VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

    def __enter__(self):
        self.saved = {k: os.environ.get(k) for k in self.VARS}
        for k in self.VARS:
            os.environ.setdefault(k, "1")
        return self

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        return False


def load_dataset(path: str | Path) -> dict:
    """Read and check ``dataset.json`` of a dataset folder (or the file itself).

    Returns the manifest with ``root`` (the folder, absolute) added; sample paths stay relative to
    it. Raises DatasetError naming the file for a missing or malformed manifest, an unfinished run
    or missing sample files.
    """
    path = Path(path)
    manifest_path = path / "dataset.json" if path.is_dir() or not path.suffix else path
    if not manifest_path.is_file():
        raise DatasetError(f"{manifest_path}: no such dataset manifest (expected a folder written by `octasim generate`)")
    try:
        data = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{manifest_path}: unreadable dataset manifest ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DatasetError(f"{manifest_path}: not an octasim dataset manifest (format {data.get('format')!r})"
                           if isinstance(data, dict) else f"{manifest_path}: not an octasim dataset manifest")
    if data.get("version") != FORMAT_VERSION:
        raise DatasetError(f"{manifest_path}: dataset format version {data.get('version')!r} "
                           f"is not supported (expected {FORMAT_VERSION})")
    for key in ("config", "voxel_size_um", "shape", "n", "samples"):
        if key not in data:
            raise DatasetError(f"{manifest_path}: the manifest lacks the key {key!r}")
    if not data.get("complete", True) or len(data["samples"]) != data["n"]:
        raise DatasetError(f"{manifest_path}: the dataset is unfinished ({len(data['samples'])} of {data['n']} "
                           "samples listed); run the same `octasim generate` command again to complete it")
    root = manifest_path.parent.resolve()
    for s in data["samples"]:
        for key in ("id", "image", "label", "seed"):
            if key not in s:
                raise DatasetError(f"{manifest_path}: sample {s.get('id', '?')} lacks {key!r}")
        for key in ("image", "label"):
            if not (root / s[key]).is_file():
                raise DatasetError(f"{manifest_path}: sample {s['id']}: missing file {root / s[key]}")
    data["root"] = str(root)
    return data


# --------------------------------------------------------------------------- helpers
def _plain(value):
    """Convert numpy scalars / arrays / tuples / paths to JSON-serializable plain data."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    return value
