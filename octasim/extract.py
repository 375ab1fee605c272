"""FOV patch extraction from a large vessel graph (the reference method's rules, in micrometres).

Rules, applied in this order to a lateral grid of pillars (docs/design.md, "Patch extraction"):

1. ``too_few_nodes``: the pillar (side = FOV lateral size, depth up to ``cortex_depth_um``) holds
   fewer than ``min_nodes_per_pillar`` nodes, counted after dropping nodes flagged outside the brain.
2. ``no_surface_vessel``: no node of the pillar belongs to an edge with radius > ``surface_radius_um``.
3. ``below_cortex_depth``: the patch would start at (shallowest surface-vessel node z) - (largest
   radius in the pillar) and end ``fov_um[2]`` deeper; it is dropped if it ends below
   ``cortex_depth_um``.
4. ``too_few_edges``: the patch box keeps every edge with at least one end inside it
   (:meth:`VesselGraph.crop`, edges kept whole); fewer than ``min_edges`` edges drops it.

Each kept patch is translated so that its box corner is the origin.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from typing import Any, Mapping

import numpy as np

from octasim.errors import OctasimError
from octasim.graph import VesselGraph

#: rule names, in the order they are applied (keys of ``ExtractionReport.rejected``)
RULES = ("too_few_nodes", "no_surface_vessel", "below_cortex_depth", "too_few_edges")
#: ``ExtractionReport.failed_rule`` when no pillar was laid out (no node within the cortex depth)
NO_PILLARS = "no_pillars"
#: most pillars one extraction may lay out (about 100 bytes each: 10 million take about 1 GB)
MAX_PILLARS = 10_000_000


class NoPatchError(OctasimError):
    """A graph (or the vessel source of a dataset) yields no FOV patch; the message holds the extraction
    report, which extractor rule rejected the pillars, and advice. The one class for this error.

    ``problem``: the same as data, or None: an object whose ``message(names)`` words the error again
    with a caller's names for the settings (``octasim generate`` passes its option names)."""

    def __init__(self, message: str, problem: Any = None):
        super().__init__(message)
        self.problem = problem

    def __reduce__(self):  # keep ``problem`` across processes (worker pools, dask)
        return type(self), (str(self), self.problem)


class Knob(Enum):
    """A setting the extractor's advice may tell the user to change. Its value is the parameter's
    library name (an ``ExtractParams`` field; ``read_graph``'s voxel size for GRAPH_VOXEL_SIZE);
    :meth:`ExtractionReport.advice` takes a mapping from these values to the caller's own names
    (command-line options, config keys)."""

    GRAPH_VOXEL_SIZE = "graph_voxel_size_um"
    FOV = "fov_um"
    MIN_NODES = "min_nodes_per_pillar"
    MIN_EDGES = "min_edges"
    SURFACE_RADIUS = "surface_radius_um"
    CORTEX_DEPTH = "cortex_depth_um"


#: how the library names each knob in its own advice
API_NAMES: dict[str, str] = {Knob.GRAPH_VOXEL_SIZE.value: "read_graph(voxel_size_um=)",
                             **{k.value: k.value for k in Knob if k is not Knob.GRAPH_VOXEL_SIZE}}


@dataclass
class ExtractParams:
    """Thresholds of the patch extractor; all lengths in um.

    fov_um: patch size (lateral x, lateral y, depth); the pillar grid's cell is fov_um[0] x fov_um[1].
    min_nodes_per_pillar: pillars with fewer nodes (depth <= cortex_depth_um) are dropped.
    surface_radius_um: edges with a larger radius are surface (pial) vessels.
    cortex_depth_um: pillars span depth z <= this; patches ending deeper are dropped.
    min_edges: patches with fewer edges are dropped.
    outside_attr: boolean node attribute flagging nodes outside the brain, dropped first
        (None: keep every node; an attribute the graph lacks is ignored).
    """

    fov_um: tuple[float, float, float] = (500.0, 500.0, 500.0)
    min_nodes_per_pillar: int = 100
    surface_radius_um: float = 13.0
    cortex_depth_um: float = 3000.0
    min_edges: int = 2000
    outside_attr: str | None = "outside_brain"

    def __post_init__(self) -> None:
        self.fov_um = tuple(float(v) for v in np.broadcast_to(np.asarray(self.fov_um, float), 3))
        if min(self.fov_um) <= 0 or not np.isfinite(self.fov_um).all():
            raise ValueError(f"fov_um must be three positive sizes in um, got {self.fov_um}")
        if self.min_nodes_per_pillar < 0 or self.min_edges < 0:
            raise ValueError("min_nodes_per_pillar and min_edges must be >= 0")
        if self.cortex_depth_um <= 0:
            raise ValueError(f"cortex_depth_um must be positive, got {self.cortex_depth_um}")

    def scaled_to(self, fov_um) -> "ExtractParams":
        """Same rules for another FOV: min_nodes_per_pillar scaled by the lateral area ratio,
        min_edges by the FOV volume ratio (each at least 1); other thresholds unchanged."""
        new = np.broadcast_to(np.asarray(fov_um, float), 3)
        old = np.asarray(self.fov_um, float)
        area = float(new[0] * new[1] / (old[0] * old[1]))
        volume = float(np.prod(new) / np.prod(old))
        return replace(self, fov_um=tuple(new.tolist()),
                       min_nodes_per_pillar=max(1, int(round(self.min_nodes_per_pillar * area))),
                       min_edges=max(1, int(round(self.min_edges * volume))))


@dataclass
class Patch:
    """One extracted patch: ``graph`` is translated so that the patch corner is the origin (um)."""

    graph: VesselGraph
    origin_um: np.ndarray   # patch corner (x, y, z) in the source graph's coordinates
    size_um: np.ndarray     # (3,) box size = fov_um
    pillar: tuple[int, int]  # (column along x, row along y) in the pillar grid

    @property
    def name(self) -> str:
        """File stem ``patch_XXX_YYY`` (pillar indices along x and y)."""
        return f"patch_{self.pillar[0]:03d}_{self.pillar[1]:03d}"


@dataclass
class ExtractionReport:
    """How many pillars each rule rejected (in rule order), and figures that explain why."""

    n_pillars: int
    rejected: dict[str, int]
    n_patches: int
    params: ExtractParams = field(default_factory=ExtractParams)
    diagnostics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {"n_pillars": self.n_pillars, "rejected": dict(self.rejected), "n_patches": self.n_patches,
                "params": asdict(self.params), "diagnostics": self.diagnostics}

    def summary(self) -> str:
        """One line per rule, then the number of patches."""
        p = self.params
        what = {
            "too_few_nodes": f"fewer than {p.min_nodes_per_pillar} nodes in the pillar",
            "no_surface_vessel": f"no surface vessel (radius > {p.surface_radius_um:g} um)",
            "below_cortex_depth": f"patch would end below the cortex depth {p.cortex_depth_um:g} um",
            "too_few_edges": f"fewer than {p.min_edges} edges in the patch",
        }
        lines = [f"{self.n_pillars} pillars of {p.fov_um[0]:g} x {p.fov_um[1]:g} um"]
        for rule in RULES:
            lines.append(f"  rejected {self.rejected.get(rule, 0):5d}  {rule}: {what[rule]}")
        lines.append(f"  kept     {self.n_patches:5d}  patches of {p.fov_um[0]:g} x {p.fov_um[1]:g} x {p.fov_um[2]:g} um")
        return "\n".join(lines)

    @property
    def failed_rule(self) -> str | None:
        """Why no patch came out, as data: the rule that rejected most pillars (first rule wins ties),
        ``NO_PILLARS`` when there was no pillar at all, None when patches came out."""
        if self.n_patches > 0:
            return None
        if self.n_pillars == 0:
            return NO_PILLARS
        return max(RULES, key=lambda r: self.rejected.get(r, 0))

    def advice(self, names: Mapping[str, str] | None = None) -> str:
        """When no patch came out: which rule rejected most pillars, the figures that explain it and
        what to change ('' otherwise). ``names`` maps :class:`Knob` values to the caller's names for
        those settings (default :data:`API_NAMES`)."""
        rule = self.failed_rule
        if rule is None:
            return ""
        names = {**API_NAMES, **(names or {})}
        knob = lambda k: names[k.value]  # noqa: E731
        d, p = self.diagnostics, self.params
        if rule == NO_PILLARS:
            return ("the graph has no nodes within the cortex depth range "
                    f"(z <= {p.cortex_depth_um:g} um, after dropping nodes outside the brain); "
                    "check that z is depth in um, increasing into the brain (voxel-unit graphs need their "
                    f"voxel size: {knob(Knob.GRAPH_VOXEL_SIZE)}).")
        max_r = d.get("max_radius_um", float("nan"))
        med_r = d.get("median_radius_um", float("nan"))
        extent = d.get("lateral_extent_um", [float("nan")] * 2)
        vs = d.get("voxel_size_um")
        if vs is None:
            voxel_hint = f"if the graph is stored in voxel units, pass its voxel size ({knob(Knob.GRAPH_VOXEL_SIZE)})"
        else:
            voxel_hint = (f"the graph was read with a voxel size of {vs:g} um; if that is not its real voxel "
                          f"size, pass the right one ({knob(Knob.GRAPH_VOXEL_SIZE)})")
        head = f"most pillars ({self.rejected[rule]} of {self.n_pillars}) were rejected by rule {rule!r}: "
        if rule == "no_surface_vessel":
            far = max_r < p.surface_radius_um / 2 or med_r < 1.0
            msg = (f"the largest vessel radius is {max_r:.3g} (median {med_r:.3g}), "
                   f"{'far ' if far else ''}below the surface-vessel threshold {p.surface_radius_um:g} um. ")
            if max_r <= p.surface_radius_um:
                msg += (("Units look wrong: " if far else "") + voxel_hint[0].upper() + voxel_hint[1:]
                        + "; if the graph has no pial vessels (e.g. a piece cut below the surface), "
                        f"lower {knob(Knob.SURFACE_RADIUS)}.")
            else:
                msg += (f"Some pillars hold no pial vessel; lower {knob(Knob.SURFACE_RADIUS)} or use a larger "
                        f"{knob(Knob.FOV)}.")
            return head + msg
        if rule == "too_few_nodes":
            msg = (f"pillars hold at most {d.get('max_pillar_nodes', 0)} nodes (need {p.min_nodes_per_pillar}); "
                   f"the graph spans {extent[0]:.4g} x {extent[1]:.4g} laterally for pillars of "
                   f"{p.fov_um[0]:g} x {p.fov_um[1]:g} um. ")
            if max(extent) < min(p.fov_um[:2]) or med_r < 1.0:
                msg += voxel_hint[0].upper() + voxel_hint[1:] + "; otherwise "
            return head + msg + (f"lower {knob(Knob.MIN_NODES)}, or use a smaller {knob(Knob.FOV)} "
                                 "(thresholds scale with it).")
        if rule == "below_cortex_depth":
            return head + (f"patches would start at depth {d.get('min_patch_start_um', float('nan')):.4g} um or "
                           f"deeper and end below {p.cortex_depth_um:g} um. Check that z is depth increasing "
                           f"into the brain (surface at small z); otherwise raise {knob(Knob.CORTEX_DEPTH)} or "
                           "use a smaller FOV depth.")
        return head + (f"the fullest candidate patch has {d.get('max_patch_edges', 0)} edges (need {p.min_edges}). "
                       f"Lower {knob(Knob.MIN_EDGES)} or use a larger {knob(Knob.FOV)}; a graph in the wrong "
                       "units also looks like this (" + voxel_hint + ").")


def _group_reduce(ufunc, groups: np.ndarray, values: np.ndarray, n: int, fill: float) -> np.ndarray:
    """Per-group reduction (min / max) of ``values`` into an array of ``n`` groups."""
    out = np.full(n, fill, dtype=np.float64)
    ufunc.at(out, groups, values)
    return out


def _csr(keys: np.ndarray, n_keys: int) -> tuple[np.ndarray, np.ndarray]:
    """(order, starts): ``order[starts[k]:starts[k + 1]]`` are the positions where ``keys == k``."""
    order = np.argsort(keys, kind="stable")
    starts = np.zeros(n_keys + 1, dtype=np.int64)
    np.cumsum(np.bincount(keys, minlength=n_keys), out=starts[1:])
    return order, starts


def _gather(order: np.ndarray, starts: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Concatenation of the CSR rows of ``keys`` (vectorized)."""
    lo, hi = starts[keys], starts[keys + 1]
    counts = hi - lo
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    shift = np.repeat(lo - np.cumsum(counts) + counts, counts)
    return order[shift + np.arange(total)]


class _LocalCropper:
    """Same result as :meth:`VesselGraph.crop` for boxes aligned with the pillar grid, touching only
    the nodes of the pillar and its neighbours, so that a whole-brain graph with thousands of
    pillars is cut in time linear in its size (not pillars x size)."""

    def __init__(self, g: VesselGraph, lo_xy: np.ndarray, side: np.ndarray, n_cols: int, n_rows: int):
        self.g, self.n_rows = g, n_rows + 2
        # cells of an extended grid (one ring of border cells) so that rounding at pillar faces is
        # covered by looking at the neighbouring cells too; the exact box test follows
        cell = np.floor((g.nodes[:, :2] - lo_xy) / side).astype(np.int64) + 1
        cell = np.clip(cell, 0, [n_cols + 1, n_rows + 1])
        key = cell[:, 0] * self.n_rows + cell[:, 1]
        self.node_order, self.node_starts = _csr(key, (n_cols + 2) * self.n_rows)
        self.edge_order, self.edge_starts = _csr(g.edges.ravel(), g.n_nodes)

    def crop(self, i: int, j: int, lo: np.ndarray, hi: np.ndarray) -> VesselGraph:
        g = self.g
        cells = np.array([(i + 1 + di) * self.n_rows + (j + 1 + dj) for di in (-1, 0, 1) for dj in (-1, 0, 1)])
        cand = _gather(self.node_order, self.node_starts, cells)
        pos = g.nodes[cand]
        inside = cand[((pos >= lo) & (pos < hi)).all(axis=1)]
        keep = np.unique(_gather(self.edge_order, self.edge_starts, inside) // 2)  # edge ids, ascending
        ends = g.edges[keep]
        used, new_edges = np.unique(ends, return_inverse=True)  # nodes in source order, as select_edges
        return VesselGraph(g.nodes[used], new_edges.reshape(-1, 2), g.radius[keep],
                           {k: v[used] for k, v in g.node_attrs.items()},
                           {k: v[keep] for k, v in g.edge_attrs.items()}, dict(g.meta))


def extract_patches(graph: VesselGraph, params: ExtractParams = ExtractParams(),
                    progress: bool = False) -> tuple[list[Patch], ExtractionReport]:
    """Cut FOV-sized patches out of ``graph`` (um, z = depth) with the reference method's rules.

    Returns the patches (each translated so its box corner is the origin) and a report of how many
    pillars each rule rejected. Pillars are laid from the graph's lateral minimum (x, y) with side
    ``params.fov_um[:2]``; the last row / column may extend past the graph (nodes exactly on the
    graph's far face count in the last pillar). Nodes above z = 0 (e.g.
    pial vessels lying on the surface) count as part of the pillar. Raises ValueError (before
    allocating) when the grid would hold more than ``MAX_PILLARS`` pillars.
    """
    from tqdm.auto import tqdm

    fov = np.asarray(params.fov_um, float)
    g = graph
    if params.outside_attr and params.outside_attr in g.node_attrs:
        g = g.select_nodes(~g.node_attrs[params.outside_attr].astype(bool))
    diagnostics: dict[str, Any] = {"n_nodes": g.n_nodes, "n_edges": g.n_edges}
    if "voxel_size_um" in graph.meta:  # recorded by read_graph for voxel-unit formats
        diagnostics["voxel_size_um"] = float(graph.meta["voxel_size_um"])
    rejected = {r: 0 for r in RULES}
    if g.n_nodes == 0 or g.n_edges == 0:
        return [], ExtractionReport(0, rejected, 0, params, diagnostics)

    diagnostics["max_radius_um"] = float(g.radius.max())
    diagnostics["median_radius_um"] = float(np.median(g.radius))
    in_depth = g.nodes[:, 2] <= params.cortex_depth_um
    if not in_depth.any():
        lo, hi = g.bounding_box()
        diagnostics["lateral_extent_um"] = (hi - lo)[:2].tolist()
        return [], ExtractionReport(0, rejected, 0, params, diagnostics)

    xy = g.nodes[in_depth, :2]
    lo_xy = xy.min(axis=0)
    extent = xy.max(axis=0) - lo_xy
    diagnostics["lateral_extent_um"] = extent.tolist()
    # ceil: a graph exactly n FOVs wide (nodes on its far face) gives n pillars, not n + a sliver
    grid = np.maximum(1, np.ceil(extent / fov[:2] - 1e-6))
    if float(np.prod(grid)) > MAX_PILLARS:
        raise ValueError(f"the graph spans {extent[0]:.4g} x {extent[1]:.4g} um laterally, which makes "
                         f"{np.prod(grid):.3g} pillars of {fov[0]:g} x {fov[1]:g} um (the FOV's lateral size; "
                         f"limit {MAX_PILLARS:,}, about 1 GB of memory): use a larger FOV (--fov-um), crop the "
                         "graph, or check its units (--voxel-size for graphs in voxels)")
    n_cols, n_rows = grid.astype(np.int64).tolist()
    n_pillars = n_cols * n_rows

    # pillar index of every node (-1: deeper than the cortex)
    cell = np.floor((g.nodes[:, :2] - lo_xy) / fov[:2]).astype(np.int64)
    cell = np.clip(cell, 0, [n_cols - 1, n_rows - 1])  # far-face nodes into the last pillar
    pillar = np.where(in_depth, cell[:, 0] * n_rows + cell[:, 1], -1)
    valid = pillar >= 0
    pv = pillar[valid]

    # rule 1: nodes per pillar
    counts = np.bincount(pv, minlength=n_pillars)
    diagnostics["max_pillar_nodes"] = int(counts.max())
    alive = counts >= params.min_nodes_per_pillar
    rejected["too_few_nodes"] = int((~alive).sum())

    # rule 2: surface vessels = nodes in the pillar on an edge with radius > threshold
    node_rmax = np.zeros(g.n_nodes)
    np.maximum.at(node_rmax, g.edges[:, 0], g.radius)
    np.maximum.at(node_rmax, g.edges[:, 1], g.radius)
    surface = valid & (node_rmax > params.surface_radius_um)
    top_z = _group_reduce(np.minimum, pillar[surface], g.nodes[surface, 2], n_pillars, np.inf)
    max_r = _group_reduce(np.maximum, pv, node_rmax[valid], n_pillars, 0.0)
    has_surface = np.isfinite(top_z)
    rejected["no_surface_vessel"] = int((alive & ~has_surface).sum())
    alive &= has_surface

    # rule 3: the patch must end within the cortex
    start = top_z - max_r
    if alive.any():
        diagnostics["min_patch_start_um"] = float(start[alive].min())
    fits = start + fov[2] <= params.cortex_depth_um
    rejected["below_cortex_depth"] = int((alive & ~fits).sum())
    alive &= fits

    # rule 4: crop, count edges, translate
    cropper = _LocalCropper(g, lo_xy, fov[:2], n_cols, n_rows) if alive.any() else None
    patches: list[Patch] = []
    max_edges = 0
    for pid in tqdm(np.flatnonzero(alive), desc="patches", unit="patch", disable=not progress):
        i, j = divmod(int(pid), n_rows)
        origin = np.array([lo_xy[0] + i * fov[0], lo_xy[1] + j * fov[1], start[pid]])
        sub = cropper.crop(i, j, origin, origin + fov)
        max_edges = max(max_edges, sub.n_edges)
        if sub.n_edges < params.min_edges or sub.n_edges == 0:
            rejected["too_few_edges"] += 1
            continue
        sub = sub.translate(-origin)
        sub.meta = {**sub.meta, "patch_origin_um": origin.tolist(), "patch_size_um": fov.tolist(),
                    "pillar": [i, j]}
        patches.append(Patch(sub, origin, fov.copy(), (i, j)))
    diagnostics["max_patch_edges"] = int(max_edges)
    return patches, ExtractionReport(n_pillars, rejected, len(patches), params, diagnostics)
