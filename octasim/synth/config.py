"""``SynthConfig``: everything that defines a synthetic dataset, its checks, and the per-sample
geometry drawn from it (voxel size, depth offset, pial radius)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from octasim.ranges import ValueOrRange, bounds, draw, parse_range


@dataclass
class SynthConfig:
    """Everything that defines a synthetic dataset (plain data; JSON round trip).

    profile:            simulation profile: a shipped name ('paper', 'octa', 'two-photon'), a YAML
                        path, or a dict; :meth:`resolved` replaces it with the full profile dict.
    shape:              volume shape in voxels (i, j, k), depth = k.
    voxel_size_um:      voxel edge, um: a value, or a range [lo, hi] drawn per sample (scale
                        randomization: the same voxel grid then covers a different field of view,
                        shape x voxel size, so vessels appear at different scales in voxels).
                        Two voxel sizes follow from it: the *drawn* one of each sample (its record's
                        ``voxel_size_um``, the spacing of its written volumes) and the *nominal grid*
                        :attr:`nominal_voxel_size_um` (the dataset's, recorded in dataset.json).
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
    voxel_size_um: ValueOrRange = 2.0
    graph: str | None = None
    graph_voxel_size_um: float | None = None
    seed: int = 0
    cortex: dict = field(default_factory=dict)
    extract: dict = field(default_factory=dict)
    occupancy: bool = True
    profile_name: str | None = None
    depth_offset_um: ValueOrRange = 0.0
    pial_radius_min_um: ValueOrRange | None = None
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
        self.voxel_size_um = parse_range(self.voxel_size_um, "voxel_size_um")
        if not min(bounds(self.voxel_size_um)) > 0:
            raise ValueError(f"voxel size must be positive (um), got {self.voxel_size_um}")
        self.depth_offset_um = parse_range(self.depth_offset_um, "depth_offset_um")
        if min(bounds(self.depth_offset_um)) < 0:
            raise ValueError(f"depth_offset_um must be >= 0 (um below the extractor's start), "
                             f"got {self.depth_offset_um}")
        if self.pial_radius_min_um is not None:
            self.pial_radius_min_um = parse_range(self.pial_radius_min_um, "pial_radius_min_um")
            if not min(bounds(self.pial_radius_min_um)) > 0:
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
        return self.fov_for(bounds(self.voxel_size_um)[1])

    def fov_for(self, voxel_size_um: float) -> tuple[float, float, float]:
        """Field of view (um) of the voxel grid at ``voxel_size_um``."""
        return tuple(float(s) * float(voxel_size_um) for s in self.shape)

    @property
    def nominal_voxel_size_um(self) -> float:
        """The nominal grid (um): the one voxel size that stands for the dataset (dataset.json's
        ``voxel_size_um``; a training config's ``on_the_fly.voxel_size_um`` should equal it). The fixed
        value, or the middle of a range (the geometric middle when drawn log-uniformly). Each sample
        is rendered at its own drawn voxel size (:meth:`draw_geometry`)."""
        lo, hi = bounds(self.voxel_size_um)
        return float(np.sqrt(lo * hi)) if self.voxel_size_log else 0.5 * (lo + hi)

    def draw_geometry(self, rng: np.random.Generator) -> "Geometry":
        """One sample's geometry: voxel size, then depth offset, then pial radius, each drawn from
        ``rng`` only when it is a range."""
        vs = draw(self.voxel_size_um, rng, log=self.voxel_size_log)
        depth = draw(self.depth_offset_um, rng)
        pial = None if self.pial_radius_min_um is None else draw(self.pial_radius_min_um, rng)
        fov = self.fov_for(vs)
        return Geometry(vs, fov, depth, pial, reference=fov == self.fov_um and depth == 0.0)

    def to_dict(self) -> dict:
        """Plain JSON-serializable dict (keys of the realism options are left out at their defaults,
        so manifests of datasets that do not use them stay as before)."""
        d = asdict(self)
        d["shape"] = list(self.shape)
        for key, default in _OPTIONAL_DEFAULTS.items():
            if d.get(key) == default and not isinstance(d.get(key), list):
                d.pop(key)
        return plain(d)

    @classmethod
    def from_dict(cls, d: dict) -> "SynthConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise ValueError."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown dataset config key(s): {', '.join(unknown)} (known: {', '.join(sorted(names))})")
        return cls(**d)

    def resolved(self) -> "SynthConfig":
        """Copy with the profile loaded into a full dict (:func:`resolve_profile`, read once per
        process), the graph path absolute and the profile name recorded; resolving twice changes
        nothing."""
        profile, name = resolve_profile(self.profile)
        graph = str(Path(self.graph).expanduser().resolve()) if self.graph is not None else None
        return replace(self, profile=profile, graph=graph,
                       profile_name=name if self.profile_name is None else self.profile_name)


@dataclass(frozen=True)
class Geometry:
    """The geometry drawn for one sample (:meth:`SynthConfig.draw_geometry`).

    voxel_size_um:      the sample's voxel size, um (its volumes' spacing).
    fov_um:             shape x voxel_size_um, um.
    depth_offset_um:    depth of the window below the extractor's start, um.
    pial_radius_min_um: smallest pial radius of a procedural block, um (None: the generator's).
    reference:          the window is the config's FOV (the largest) at offset 0: sources give the
                        reference rule's patch as extracted, with no window cut out of a larger one.
    """

    voxel_size_um: float
    fov_um: tuple[float, float, float]
    depth_offset_um: float = 0.0
    pial_radius_min_um: float | None = None
    reference: bool = True


#: SynthConfig keys omitted from ``to_dict`` at these default values
_OPTIONAL_DEFAULTS = {"depth_offset_um": 0.0, "pial_radius_min_um": None, "label_min_occupancy": None,
                      "label_acquisition": False, "voxel_size_log": False}

#: resolved named / YAML profiles of this process: spec -> (file mtime, profile)
_PROFILES: dict[str, tuple[int | None, dict]] = {}


def profile_display_name(spec: str | Path | dict) -> str:
    """The name recorded for a profile spec: a shipped name as given, a YAML file's stem, or a
    dict's ``name`` (default ``custom``)."""
    if isinstance(spec, dict):
        return str(spec.get("name", "custom"))
    text = str(spec)
    return Path(text).stem if text.lower().endswith((".yaml", ".yml")) else text


def resolve_profile(spec: str | Path | dict, overrides: dict | None = None) -> tuple[dict, str]:
    """(full profile dict as plain data, recorded name) of a profile spec plus ``overrides``.

    A shipped name or YAML path is read once per process (again only when the file's modification
    time changes); a dict is checked (an already complete one without ``base`` reads no file)."""
    from octasim.profiles import _locate, load_profile

    name = profile_display_name(spec)
    if isinstance(spec, dict) or overrides:
        return plain(load_profile(spec, overrides)), name
    key = str(spec)
    try:
        mtime = _locate(key, None).stat().st_mtime_ns
    except (OSError, ValueError):
        mtime = None  # load_profile below names the problem
    cached = _PROFILES.get(key)
    if cached is None or cached[0] != mtime or mtime is None:
        if len(_PROFILES) > 32:
            _PROFILES.clear()
        _PROFILES[key] = cached = (mtime, plain(load_profile(spec)))
    return dict(cached[1]), name


def plain(value: Any) -> Any:
    """Convert numpy scalars / arrays / tuples / paths to JSON-serializable plain data."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    return value
