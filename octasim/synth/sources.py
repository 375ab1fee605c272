"""Patch sources: where a sample's vessel patch comes from, behind one interface.

A source has ``draw(rng, geometry) -> (patch, record)``: the FOV patch of one sample (a
:class:`~octasim.extract.Patch`, origin at the window's corner, um) for the drawn
:class:`~octasim.synth.config.Geometry`, and the JSON record of where it came from. Sources:

- :class:`ProceduralSource`: a fresh procedural cortex block per sample, cut with the extractor.
- :class:`GraphSource`: patches of one vessel graph file, extracted once per process.
- :class:`GivenPatches`: a list of patches the caller already has.

A source that yields no patch raises :class:`~octasim.extract.NoPatchError` whose ``problem``
(:class:`NoPatch`) holds the extraction report and the fixes to suggest as data; the message is
worded with the library's names (:data:`API_NAMES`), ``octasim generate`` words it with its options.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Protocol, Sequence

import numpy as np

from octasim.extract import NoPatchError
from octasim.ranges import bounds
from octasim.synth.config import Geometry, SynthConfig, plain

if TYPE_CHECKING:
    from octasim.extract import ExtractionReport, ExtractParams, Patch

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


class PatchSource(Protocol):
    """What :func:`~octasim.synth.sample.render_sample` draws a sample's patch from."""

    def draw(self, rng: np.random.Generator, geometry: Geometry) -> tuple[Patch, dict]:
        """(patch for ``geometry``, JSON record of its origin), using only ``rng`` for randomness."""


# --------------------------------------------------------------------------- no patch, as data
#: suggested fixes: key -> sentence; ``{name}`` fields are setting names looked up in the caller's
#: names (extractor knobs by :class:`~octasim.extract.Knob` value, plus the SynthConfig settings)
FIXES = {
    "graph_units": "if the graph is stored in voxel units, give its voxel size ({graph_voxel_size_um})",
    "smaller_fov": "use a smaller volume ({shape}) or voxel size ({voxel_size_um}) so the FOV is smaller",
    "smaller_ranges": "a smaller depth offset or voxel size range",
    "relax_rule": "relax the rule named above with {extract}",
    "bigger_block": "give a bigger block with {cortex_size_um}",
}

#: how the library (SynthConfig's fields) names the settings of FIXES and of the extractor's advice
API_NAMES: dict[str, str] = {
    "graph_voxel_size_um": "graph_voxel_size_um", "fov_um": "FOV (shape x voxel_size_um)",
    "min_nodes_per_pillar": "extract min_nodes_per_pillar", "min_edges": "extract min_edges",
    "surface_radius_um": "extract surface_radius_um", "cortex_depth_um": "extract cortex_depth_um",
    "shape": "shape", "voxel_size_um": "voxel_size_um",
    "extract": "extract={KEY: VALUE} (e.g. {'min_edges': 500} or {'surface_radius_um': 5})",
    "cortex_size_um": "cortex={'size_um': [X, Y, Z]}",
}


@dataclass(frozen=True)
class NoPatch:
    """Why a source yields no patch, as data: what failed (``headline``, sizes in um, no setting
    names), the extraction that failed (its ``failed_rule`` says which rule) and the fixes to
    suggest (keys of :data:`FIXES`, in order)."""

    headline: str
    report: ExtractionReport
    fixes: tuple[str, ...]

    def message(self, names: Mapping[str, str] | None = None) -> str:
        """The error message, naming settings as ``names`` says (default :data:`API_NAMES`)."""
        names = {**API_NAMES, **(names or {})}
        parts = [FIXES[f].format_map(names) for f in self.fixes]
        fixes = parts[0] if len(parts) == 1 else "; ".join(parts[:-1]) + "; or " + parts[-1]
        return "\n".join([self.headline, self.report.summary().strip(), self.report.advice(names).strip(),
                          f"Suggested fixes: {fixes}."])


def _no_patch(headline: str, report: ExtractionReport, fixes: tuple[str, ...]) -> NoPatchError:
    problem = NoPatch(headline, report, fixes)
    return NoPatchError(problem.message(), problem)


def _size(fov: Sequence[float]) -> str:
    return " x ".join(f"{v:g}" for v in fov)


# --------------------------------------------------------------------------- helpers
def extract_params_for(config: SynthConfig, fov: Sequence[float] | None = None,
                       extra_depth_um: float = 0.0) -> ExtractParams:
    """ExtractParams for a FOV (um; default: the config's, the largest of a voxel-size range), scaled
    from the 500 um reference, then the config's overrides; ``extra_depth_um`` makes the patch box
    that much taller (for a depth offset: the box then reaches the deepest window, and the
    cortex-depth rule applies to the window's end)."""
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


def window_patch(patch: Patch, fov: Sequence[float], depth_offset_um: float,
                 lateral_offset_um: Sequence[float] = (0.0, 0.0)) -> Patch:
    """The part of ``patch`` (origin at its corner) inside the window [x0, x0 + fov_x] x
    [y0, y0 + fov_y] x [d, d + fov_z] ((x0, y0) = ``lateral_offset_um``, d = ``depth_offset_um``,
    um), translated so that the window corner is the origin (edges with one end inside are kept
    whole, as the extractor does). Returns a new Patch."""
    from octasim.extract import Patch

    d = float(depth_offset_um)
    lo = np.array([float(lateral_offset_um[0]), float(lateral_offset_um[1]), d])
    hi = lo + np.asarray(fov, float)
    sub = patch.graph.crop(lo, hi).translate(-lo)
    origin = np.asarray(patch.origin_um, float) + lo
    sub.meta = {**sub.meta, "patch_origin_um": origin.tolist(), "patch_size_um": list(map(float, fov)),
                "depth_offset_um": d}
    return Patch(sub, origin, np.asarray(fov, float).copy(), patch.pillar)


def patch_record(patch: Patch) -> dict:
    """Where a patch lies: origin and size (um), edge count, pillar."""
    rec = {"origin_um": plain(np.asarray(patch.origin_um, float).tolist()),
           "size_um": plain(np.asarray(patch.size_um, float).tolist()),
           "n_edges": int(patch.graph.n_edges)}
    pillar = getattr(patch, "pillar", None)
    if pillar is not None:
        rec["pillar"] = plain(pillar)
    return rec


# --------------------------------------------------------------------------- sources
class GivenPatches:
    """A list of patches the caller already has; outside the reference geometry each is only cut
    (its patches must reach deep and wide enough)."""

    def __init__(self, patches: Sequence[Patch]):
        self.patches = list(patches)

    def draw(self, rng: np.random.Generator, geometry: Geometry) -> tuple[Patch, dict]:
        if not self.patches:
            raise NoPatchError("render_sample: the given list of patches is empty")
        k = int(rng.integers(len(self.patches)))
        patch = self.patches[k]
        if not geometry.reference:
            patch = window_patch(patch, geometry.fov_um, geometry.depth_offset_um)
        return patch, {"graph": "given", "patch_index": k, **patch_record(patch)}


class GraphSource:
    """FOV patches of one vessel graph file, extracted once; samples pick one by their stream.

    Reference geometry: the extractor's patches of the config's FOV. Otherwise every sample's window
    (its drawn FOV, at its drawn depth offset, at a random lateral place) is cut from the patches of
    the largest FOV, tall enough for the deepest offset: they depend on the config alone, so they
    are extracted once, however many voxel sizes are drawn."""

    def __init__(self, config: SynthConfig):
        from octasim.extract import extract_patches
        from octasim.graph_io import read_graph

        self.path = config.graph
        self.config = config
        self._graph = read_graph(config.graph, voxel_size_um=config.graph_voxel_size_um)
        self.patches, self.report = extract_patches(self._graph, extract_params_for(config))
        if not self.patches:
            raise _no_patch(f"{config.graph}: the graph yields no {_size(config.fov_um)} um patch.", self.report,
                            ("graph_units", "smaller_fov", "relax_rule"))
        self._windows: list[Patch] | None = None

    def window_patches(self) -> list[Patch]:
        """Patches of the largest FOV, deep enough for the largest depth offset (extracted on first use)."""
        if self._windows is None:
            d_max = bounds(self.config.depth_offset_um)[1]
            if d_max == 0.0:
                self._windows = self.patches
            else:
                from octasim.extract import extract_patches

                patches, report = extract_patches(self._graph, extract_params_for(self.config, None, d_max))
                if not patches:
                    raise _no_patch(f"{self.path}: the graph yields no {_size(self.config.fov_um)} um patch "
                                    f"with a depth offset up to {d_max:g} um.", report,
                                    ("smaller_ranges", "relax_rule"))
                self._windows = patches
        return self._windows

    def draw(self, rng: np.random.Generator, geometry: Geometry) -> tuple[Patch, dict]:
        patches = self.patches if geometry.reference else self.window_patches()
        k = int(rng.integers(len(patches)))
        patch = patches[k]
        if not geometry.reference:
            slack = np.asarray(patch.size_um, float)[:2] - np.asarray(geometry.fov_um, float)[:2]
            lateral = [float(rng.uniform(0.0, s)) if s > 0 else 0.0 for s in slack]
            patch = window_patch(patch, geometry.fov_um, geometry.depth_offset_um, lateral)
        return patch, {"graph": self.path, "patch_index": k, "n_patches": len(patches), **patch_record(patch)}


class ProceduralSource:
    """A fresh procedural cortex block per sample, just big enough for the largest FOV at the
    deepest offset (laterally at least ``PROCEDURAL_MIN_LATERAL_UM`` so that it holds pial trunks),
    cut with the extractor for the drawn FOV; one of its patches is taken at random."""

    def __init__(self, config: SynthConfig):
        from octasim.generator import CortexParams

        fov = config.fov_um  # the largest FOV of a voxel-size range
        d_max = bounds(config.depth_offset_um)[1]
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
        self.extract_params = extract_params_for(config)
        # probe one block now, so that parameters that can never yield a patch fail before any work
        probe = Geometry(bounds(config.voxel_size_um)[1], fov, d_max, None, reference=d_max == 0.0)
        self.draw(np.random.default_rng(config.seed), probe)

    def draw(self, rng: np.random.Generator, geometry: Geometry) -> tuple[Patch, dict]:
        from octasim.extract import extract_patches
        from octasim.generator import generate_cortex

        fov, depth, reference = tuple(geometry.fov_um), float(geometry.depth_offset_um), geometry.reference
        cortex_params = self.cortex_params
        if geometry.pial_radius_min_um is not None:
            lo = float(geometry.pial_radius_min_um)
            cortex_params = replace(cortex_params, pial_radius_um=(lo, max(lo, cortex_params.pial_radius_um[1])))
        params = self.extract_params if reference else extract_params_for(self.config, fov, depth)
        report = None
        for attempt in range(PROCEDURAL_ATTEMPTS):
            block_seed = int(rng.integers(2**31))
            patches, report = extract_patches(generate_cortex(cortex_params, seed=block_seed), params)
            if patches:
                k = int(rng.integers(len(patches)))
                patch = patches[k] if reference else window_patch(patches[k], fov, depth)
                return patch, {"graph": "procedural", "block_seed": block_seed, "attempt": attempt,
                               "block_size_um": list(self.cortex_params.size_um),
                               "patch_index": k, "n_patches": len(patches), **patch_record(patch)}
        raise _no_patch(f"procedural cortex: {PROCEDURAL_ATTEMPTS} generated blocks of "
                        f"{_size(self.cortex_params.size_um)} um all yielded no patch of {_size(fov)} um at "
                        f"depth offset {depth:g} um. Last extraction:", report, ("relax_rule", "bigger_block"))


_SOURCES: dict[str, GraphSource | ProceduralSource] = {}


def patch_source_for(config: SynthConfig) -> GraphSource | ProceduralSource:
    """The source of a resolved or unresolved config, one per process for each source setting
    (a graph file is read and cut once, again only when its modification time changes)."""
    key_data = {"graph": config.graph, "graph_voxel_size_um": config.graph_voxel_size_um,
                "shape": list(config.shape), "voxel_size_um": config.voxel_size_um,
                "depth_offset_um": config.depth_offset_um, "cortex": config.cortex, "extract": config.extract}
    if config.graph is not None:
        p = Path(config.graph)
        key_data["mtime"] = p.stat().st_mtime_ns if p.exists() else None
    key = json.dumps(plain(key_data), sort_keys=True)
    source = _SOURCES.get(key)
    if source is None:
        source = GraphSource(config) if config.graph is not None else ProceduralSource(config)
        if len(_SOURCES) > 8:
            _SOURCES.clear()
        _SOURCES[key] = source
    return source


def as_patch_source(patch_source: PatchSource | Sequence[Patch] | None, config: SynthConfig) -> PatchSource:
    """``patch_source`` as a source: None -> the config's (:func:`patch_source_for`), a list of
    patches -> :class:`GivenPatches`, a source -> itself."""
    if patch_source is None:
        return patch_source_for(config)
    if isinstance(patch_source, (list, tuple)):
        return GivenPatches(patch_source)
    return patch_source
