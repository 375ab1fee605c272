"""Procedural mouse-cortex vessel graph: pial trees, penetrating vessels and a capillary bed (um).

The generator builds a block of cortical angioarchitecture whose statistics fall in the published
ranges for mouse somatosensory cortex (docs/design.md, "Mouse cortex morphometry"):

1. Dive points of penetrating vessels on a jittered hexagonal grid (spacing ~125 um), each an
   arteriole or a venule.
2. Two pial trees on the surface (arterial, venous), one per kind, grown as shortest-path forests
   from a few trunks entering through the block's sides to every dive point of that kind; edge
   radii follow Murray's law from the dive radii (so trunks reach 25-50 um in a 2 mm block).
   Pial vessels lie on the surface: their centre is at depth z = radius.
3. Penetrating arterioles / ascending venules diving from their pial tree, meandering, tapering
   with depth, with a few lateral branches.
4. A capillary bed: junction points on a jittered grid, linked greedily by short candidate links
   to at most three neighbours (mostly three-way junctions), joined to the penetrating vessels,
   with stray pieces attached to the rest.
5. Every link is cut into short edges (~10 um) with smooth random lateral displacement, so
   vessels are tortuous rather than straight sticks.

Everything is vectorized except a few greedy loops over candidate links (fast, plain Python over
a few hundred thousand integers); a 2 x 2 x 1.2 mm block takes seconds. Same seed -> identical
arrays.

It stays one module (about 580 lines): the stages are steps of one algorithm that build one
``_Net`` together and draw from one random stream in a fixed order (which is what makes a seed
reproducible), and about 120 of its lines are the documented fields of :class:`CortexParams`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
from scipy import sparse
from scipy.sparse import csgraph
from scipy.spatial import Delaunay, QhullError, cKDTree

from octasim.graph import VesselGraph

#: ``edge_attrs['kind']`` codes (int8).
KIND_CAPILLARY = 0
KIND_ARTERIOLE = 1  #: penetrating arteriole (and its lateral branches)
KIND_VENULE = 2  #: ascending venule (and its lateral branches)
KIND_PIAL_ARTERY = 3
KIND_PIAL_VEIN = 4
KIND_NAMES = {KIND_CAPILLARY: "capillary", KIND_ARTERIOLE: "penetrating arteriole",
              KIND_VENULE: "ascending venule", KIND_PIAL_ARTERY: "pial artery", KIND_PIAL_VEIN: "pial vein"}

# pial trees: shortest-path weight = length ** this; > 1 favours chains of short hops (branching trees)
_PIAL_HOP_EXPONENT = 2.0


@dataclass
class CortexParams:
    """Parameters of the procedural cortex (lengths and radii in um). Defaults: mouse cortex.

    Block
      size_um: (x, y, z) extent; x, y lateral, z depth from the pial surface (z = 0).
      edge_length_um: target length of the short straight edges every vessel is cut into.

    Penetrating vessels (arterioles diving, venules ascending)
      penetrating_spacing_um: hexagonal-grid spacing of their dive points on the surface.
      penetrating_jitter: random shift of each dive point, as a fraction of the spacing.
      arteriole_fraction: share of dive points that are arterioles (the rest are venules).
      arteriole_radius_um / venule_radius_um: (min, max) radius at the surface, drawn uniformly.
      penetrating_taper: radius at the bottom of the block as a fraction of the surface radius.
      penetrating_min_radius_um: floor of the tapered radius.
      deep_fraction: share reaching the bottom of the block; the others end between 30 % and
        95 % of the depth.
      penetrating_wander_um: amplitude of the smooth lateral meander of the dive.
      penetrating_tilt: largest lateral drift per um of depth (a slope).
      branch_spacing_um: mean depth interval between lateral branches of one vessel.
      branch_length_um: (min, max) length of a lateral branch.
      branch_radius_ratio: (min, max) branch radius as a fraction of the parent radius.
      connection_spacing_um: depth interval between capillaries leaving a penetrating vessel.

    Pial vessels (on the surface)
      pial_trunks_per_mm: trunks entering the block per mm of its lateral perimeter, per tree
        (arterial and venous; at least one each).
      murray_exponent: r_parent^k = sum r_child^k along the pial trees (3 = Murray's law).
      pial_radius_um: (min, max) radius of pial vessels.
      pial_tortuosity: lateral meander amplitude, fraction of the link length.

    Capillary bed
      capillary_spacing_um: mean distance between capillary junction points (jittered grid);
        sets the length density and the segment length.
      capillary_jitter: random shift of each junction point, fraction of the grid cell.
      capillary_top_um: shallowest depth of capillary junction points.
      capillary_radius_um / capillary_radius_sd_um: mean and sd of the capillary radius.
      capillary_radius_range_um: (min, max) clip of the capillary radius.
      capillary_max_link_um: longest straight link between two junction points.
      capillary_tortuosity: meander amplitude of capillaries, fraction of the link length.
      vessel_clearance_um: no capillary junction point within this distance of a larger
        vessel's wall.
    """

    size_um: tuple[float, float, float] = (2000.0, 2000.0, 1200.0)
    edge_length_um: float = 10.0
    # penetrating vessels
    penetrating_spacing_um: float = 140.0
    penetrating_jitter: float = 0.2
    arteriole_fraction: float = 0.4
    arteriole_radius_um: tuple[float, float] = (4.5, 7.0)
    venule_radius_um: tuple[float, float] = (5.5, 10.0)
    penetrating_taper: float = 0.5
    penetrating_min_radius_um: float = 3.5
    deep_fraction: float = 0.7
    penetrating_wander_um: float = 12.0
    penetrating_tilt: float = 0.1
    branch_spacing_um: float = 150.0
    branch_length_um: tuple[float, float] = (40.0, 100.0)
    branch_radius_ratio: tuple[float, float] = (0.4, 0.6)
    connection_spacing_um: float = 40.0
    # pial vessels
    pial_trunks_per_mm: float = 0.25
    murray_exponent: float = 2.3
    pial_radius_um: tuple[float, float] = (8.0, 50.0)
    pial_tortuosity: float = 0.08
    # capillaries
    capillary_spacing_um: float = 52.0
    capillary_jitter: float = 0.8
    capillary_top_um: float = 10.0
    capillary_radius_um: float = 2.3
    capillary_radius_sd_um: float = 0.35
    capillary_radius_range_um: tuple[float, float] = (1.5, 3.8)
    capillary_max_link_um: float = 100.0
    capillary_tortuosity: float = 0.25
    vessel_clearance_um: float = 8.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (list, tuple)):
                setattr(self, f.name, tuple(float(v) for v in value))
            else:
                setattr(self, f.name, float(value))
        self.check()

    def check(self) -> "CortexParams":
        """Raise ValueError naming the first parameter out of range."""
        if len(self.size_um) != 3 or min(self.size_um) <= 0:
            raise ValueError(f"size_um must be three positive sizes in um, got {list(self.size_um)}")
        for name in ("edge_length_um", "penetrating_spacing_um", "capillary_spacing_um", "branch_spacing_um",
                     "connection_spacing_um", "capillary_radius_um", "penetrating_min_radius_um",
                     "capillary_max_link_um", "murray_exponent"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("penetrating_jitter", "arteriole_fraction", "penetrating_taper", "deep_fraction",
                     "capillary_jitter"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        for name in ("penetrating_wander_um", "penetrating_tilt", "pial_trunks_per_mm", "pial_tortuosity",
                     "capillary_top_um", "capillary_radius_sd_um", "capillary_tortuosity", "vessel_clearance_um"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        for name in ("arteriole_radius_um", "venule_radius_um", "branch_length_um", "branch_radius_ratio",
                     "pial_radius_um", "capillary_radius_range_um"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must be a (min, max) range with 0 < min <= max, got {(lo, hi)}")
        return self


#: largest block :func:`generate_cortex` builds, in estimated edges (17 x 17 x 1.2 mm at the defaults)
MAX_EDGES = 20_000_000
#: peak memory per edge while generating, bytes (measured: 0.95 GB for a 6 x 6 x 1.2 mm block)
BYTES_PER_EDGE = 450
# edges per um^3 of block (capillary bed, penetrating vessels) and per um^2 of surface (pial trees) at
# the default parameters (measured on 2 x 2 x 1.2, 3 x 3 x 0.6 and 4 x 4 x 0.005 mm blocks)
_EDGES_PER_UM3 = 5.35e-5
_EDGES_PER_UM2 = 1e-3


def estimate_edges(p: CortexParams) -> float:
    """Approximate number of edges :func:`generate_cortex` makes for ``p`` (within ~10 % at the defaults).

    Scales with the block volume and surface (um^3, um^2), the inverse square of the capillary spacing
    (length density) and the inverse of the edge length.
    """
    x, y, z = p.size_um
    per_um3 = _EDGES_PER_UM3 * (CortexParams.capillary_spacing_um / p.capillary_spacing_um) ** 2
    return (per_um3 * x * y * z + _EDGES_PER_UM2 * x * y) * CortexParams.edge_length_um / p.edge_length_um


def check_block_size(p: CortexParams, name: str = "size_um") -> float:
    """Estimated edge count of the block; ValueError naming ``name`` (the size option) above MAX_EDGES."""
    n = estimate_edges(p)
    if n > MAX_EDGES:
        x, y, z = p.size_um
        raise ValueError(f"{name} {x:g} {y:g} {z:g}: a block of {x * y * z / 1e9:.3g} mm^3 would hold about "
                         f"{n:.3g} vessel edges and need about {n * BYTES_PER_EDGE / 1e9:,.0f} GB of memory; the "
                         f"limit is {MAX_EDGES:,} edges (about {MAX_EDGES * BYTES_PER_EDGE / 1e9:.0f} GB, e.g. "
                         "17 x 17 x 1.2 mm). Generate a smaller block (sizes are in um: 2000 = 2 mm)")
    return n


class _Net:
    """Key nodes and straight links, before links are cut into tortuous short edges."""

    def __init__(self) -> None:
        self.pos: list[np.ndarray] = []
        self.n = 0
        self.links: list[tuple[np.ndarray, ...]] = []

    def add_nodes(self, pos: np.ndarray) -> np.ndarray:
        pos = np.asarray(pos, float).reshape(-1, 3)
        ids = self.n + np.arange(len(pos))
        self.pos.append(pos)
        self.n += len(pos)
        return ids

    def add_links(self, a, b, radius, kind, tortuosity, lateral: bool = False) -> None:
        a = np.asarray(a, np.int64).ravel()
        b = np.asarray(b, np.int64).ravel()
        m = len(a)
        self.links.append((a, b, np.broadcast_to(np.asarray(radius, float), (m,)).copy(),
                           np.full(m, kind, np.int8), np.broadcast_to(np.asarray(tortuosity, float), (m,)).copy(),
                           np.full(m, lateral, bool)))

    def all_pos(self) -> np.ndarray:
        return np.concatenate(self.pos) if self.pos else np.zeros((0, 3))

    def all_links(self) -> tuple[np.ndarray, ...]:
        return tuple(np.concatenate(parts) for parts in zip(*self.links))


# ----------------------------------------------------------------------------- public entry
def generate_cortex(params: CortexParams | None = None, seed: int = 0, progress: bool = False) -> VesselGraph:
    """Generate a block of mouse cortical vasculature (um; z = depth, 0 at the pial surface).

    Returns a VesselGraph with ``edge_attrs['kind']`` (int8, see ``KIND_*``) and ``meta`` holding
    the generator name, the seed, every parameter and the kind codes. Same params and seed ->
    identical arrays. Raises ValueError, before any work, for blocks estimated above ``MAX_EDGES``
    edges (see :func:`estimate_edges`).
    """
    from tqdm import tqdm

    p = (params or CortexParams()).check()
    check_block_size(p)
    rng = np.random.default_rng(seed)
    size = np.asarray(p.size_um, float)
    net = _Net()
    bar = tqdm(total=6, desc="cortex", disable=not progress, unit="step")

    # 1. dive points of penetrating vessels
    tops_xy = _hex_points(size[:2], p.penetrating_spacing_um, p.penetrating_jitter, rng)
    if len(tops_xy) == 0:  # block narrower than the spacing: still one vessel diving
        tops_xy = rng.uniform(0, 1, (1, 2)) * size[:2]
    is_art = rng.random(len(tops_xy)) < p.arteriole_fraction
    r_top = np.where(is_art, rng.uniform(*p.arteriole_radius_um, len(tops_xy)),
                     rng.uniform(*p.venule_radius_um, len(tops_xy)))
    bar.update()

    # 2. pial trees (one per kind); top node ids and the depth of each dive's first node
    top_ids = np.zeros(len(tops_xy), np.int64)
    top_z = np.zeros(len(tops_xy))
    pial_samples = []  # (points, radii) along pial links, for capillary clearance
    for art in (True, False):
        sel = np.flatnonzero(is_art == art)
        if len(sel) == 0:
            continue
        ids, z, samples = _pial_tree(net, size, tops_xy[sel], r_top[sel], p, rng,
                                     KIND_PIAL_ARTERY if art else KIND_PIAL_VEIN)
        top_ids[sel], top_z[sel] = ids, z
        pial_samples.append(samples)
    bar.update()

    # 3. penetrating vessels, lateral branches; anchors = (key node, number of capillaries to attach)
    anchors, trunk_pos, trunk_r = _penetrating(net, size, tops_xy, top_ids, top_z, r_top, is_art, p, rng)
    bar.update()

    # 4. capillary junction points, kept clear of larger vessels
    cap_pos = _capillary_points(size, p, rng)
    clear_pos = np.concatenate([trunk_pos] + [s[0] for s in pial_samples]) if len(trunk_pos) else np.zeros((0, 3))
    clear_r = np.concatenate([trunk_r] + [s[1] for s in pial_samples]) if len(trunk_pos) else np.zeros(0)
    if len(clear_pos) and len(cap_pos):
        k = min(4, len(clear_pos))
        d, j = cKDTree(clear_pos).query(cap_pos, k=k)
        d, j = d.reshape(len(cap_pos), k), j.reshape(len(cap_pos), k)
        cap_pos = cap_pos[(d > clear_r[j] + p.vessel_clearance_um).all(axis=1)]
    cap_ids = net.add_nodes(cap_pos)
    bar.update()

    # 5. capillary links: anchors first, then a greedy degree-3 bed, then join stray pieces
    _capillary_bed(net, cap_ids, cap_pos, anchors, p, rng)
    bar.update()

    # 6. cut links into short tortuous edges
    graph = _realize(net, size, p, rng)
    graph.meta = {"generator": "octasim.generator.generate_cortex", "seed": int(seed), "units": "um",
                  "params": _plain_params(p), "kind_codes": {str(k): v for k, v in KIND_NAMES.items()}}
    bar.update()
    bar.close()
    return graph


def _plain_params(p: CortexParams) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(p).items()}


# ----------------------------------------------------------------------------- stages
def _hex_points(extent: np.ndarray, spacing: float, jitter: float, rng: np.random.Generator) -> np.ndarray:
    """Jittered hexagonal grid of points inside [0, extent) (2D, um), random grid offset."""
    dy = spacing * np.sqrt(3) / 2
    off = rng.uniform(0, 1, 2) * np.array([spacing, dy])
    rows = np.arange(-1, int(np.ceil(extent[1] / dy)) + 2)
    cols = np.arange(-1, int(np.ceil(extent[0] / spacing)) + 2)
    gx, gy = np.meshgrid(cols, rows, indexing="xy")
    x = off[0] + (gx + 0.5 * (gy % 2)) * spacing
    y = off[1] + gy * dy
    pts = np.stack([x.ravel(), y.ravel()], axis=1)
    ang = rng.uniform(0, 2 * np.pi, len(pts))
    rad = jitter * spacing * np.sqrt(rng.uniform(0, 1, len(pts)))
    pts = pts + rad[:, None] * np.stack([np.cos(ang), np.sin(ang)], axis=1)
    inside = (pts >= 0).all(axis=1) & (pts < extent).all(axis=1)
    return pts[inside]


def _perimeter_points(extent: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n points spread along the rectangle's perimeter (stratified random), 2D um."""
    w, h = extent
    per = 2 * (w + h)
    u = (np.arange(n) + rng.uniform(0.2, 0.8, n)) / n * per + rng.uniform(0, per)
    u = u % per
    x = np.select([u < w, u < w + h, u < 2 * w + h], [u, w, w - (u - w - h)], 0.0)
    y = np.select([u < w, u < w + h, u < 2 * w + h], [0.0, u - w, h], h - (u - 2 * w - h))
    return np.stack([x, y], axis=1)


def _pial_tree(net: _Net, size: np.ndarray, tops: np.ndarray, r_top: np.ndarray, p: CortexParams,
               rng: np.random.Generator, kind: int):
    """Shortest-path forest from trunks at the block sides to every dive point; Murray radii.

    Returns (key node id of each top, depth of each top node, (sample points, radii) along links).
    """
    n_roots = max(1, int(round(2 * (size[0] + size[1]) / 1000.0 * p.pial_trunks_per_mm)))
    roots = _perimeter_points(size[:2], n_roots, rng)
    pts = np.concatenate([roots, tops])
    n = len(pts)
    pairs = None
    if n >= 4:
        try:
            tri = Delaunay(pts)
            s = tri.simplices
            pairs = np.concatenate([s[:, [0, 1]], s[:, [1, 2]], s[:, [0, 2]]])
        except QhullError:
            pairs = None
    if pairs is None:
        ii, jj = np.triu_indices(n, 1)
        pairs = np.stack([ii, jj], axis=1)
    pairs = np.unique(np.sort(pairs, axis=1), axis=0)
    length = np.linalg.norm(pts[pairs[:, 0]] - pts[pairs[:, 1]], axis=1)
    # squared lengths favour chains of short hops: branching trees instead of straight spokes
    w = length ** _PIAL_HOP_EXPONENT + 1e-6
    mat = sparse.coo_matrix((np.concatenate([w, w]), (np.concatenate(pairs.T[::-1]), np.concatenate(pairs.T))),
                            shape=(n, n)).tocsr()
    dist, pred = csgraph.dijkstra(mat, directed=False, indices=np.arange(n_roots), min_only=True,
                                  return_predecessors=True)[:2]
    flow = np.zeros(n)
    flow[n_roots:] = r_top ** p.murray_exponent
    order = np.argsort(-dist, kind="stable")
    for node in order:
        if pred[node] >= 0:
            flow[pred[node]] += flow[node]
    child = np.flatnonzero(pred >= 0)
    parent = pred[child]
    rmin, rmax = p.pial_radius_um
    radius = np.clip(flow[child] ** (1.0 / p.murray_exponent), rmin, rmax)
    node_z = np.zeros(n)
    np.maximum.at(node_z, child, radius)
    np.maximum.at(node_z, parent, radius)
    node_z = np.minimum(node_z, size[2])
    ids = net.add_nodes(np.column_stack([pts, node_z]))
    net.add_links(ids[parent], ids[child], radius, kind, p.pial_tortuosity, lateral=True)
    # points along each link (straight chord) for capillary clearance
    t = np.linspace(0, 1, 9)
    a, b = pts[parent], pts[child]
    xy = (a[:, None, :] + t[None, :, None] * (b - a)[:, None, :]).reshape(-1, 2)
    rr = np.repeat(radius, len(t))
    samples = (np.column_stack([xy, np.minimum(rr, size[2])]), rr)
    return ids[n_roots:], node_z[n_roots:], samples


def _penetrating(net: _Net, size: np.ndarray, tops_xy: np.ndarray, top_ids: np.ndarray, top_z: np.ndarray,
                 r_top: np.ndarray, is_art: np.ndarray, p: CortexParams, rng: np.random.Generator):
    """Diving vessels as chains of ~edge_length links; returns anchors and trunk sample points."""
    m = len(tops_xy)
    if m == 0:
        return (np.zeros(0, np.int64), np.zeros(0, np.int64)), np.zeros((0, 3)), np.zeros(0)
    depth = size[2]
    deep = rng.random(m) < p.deep_fraction
    z_end = np.where(deep, depth, rng.uniform(0.3, 0.95, m) * depth)
    z_end = np.maximum(z_end, top_z + p.edge_length_um)
    z_end = np.minimum(z_end, depth)
    n_seg = np.maximum(1, np.ceil((z_end - top_z) / p.edge_length_um).astype(np.int64))
    tilt = rng.uniform(-p.penetrating_tilt, p.penetrating_tilt, (m, 2))
    lam = rng.uniform(200.0, 600.0, (m, 2, 2))  # (vessel, mode, axis) wavelengths, um
    phase = rng.uniform(0, 2 * np.pi, (m, 2, 2))
    amp = p.penetrating_wander_um * rng.uniform(0.3, 1.0, (m, 2, 2)) / np.sqrt(2)
    # trunk nodes below each top: k = 1..n_seg
    vessel = np.repeat(np.arange(m), n_seg)
    start = np.concatenate([[0], np.cumsum(n_seg)[:-1]])
    k = np.arange(n_seg.sum()) - start[vessel] + 1
    z = top_z[vessel] + (z_end - top_z)[vessel] * k / n_seg[vessel]
    dz = (z - top_z[vessel])[:, None, None]
    wave = amp[vessel] * (np.sin(2 * np.pi * z[:, None, None] / lam[vessel] + phase[vessel])
                          - np.sin(2 * np.pi * top_z[vessel][:, None, None] / lam[vessel] + phase[vessel]))
    xy = tops_xy[vessel] + tilt[vessel] * dz[:, :, 0] + wave.sum(axis=1)
    xy = np.clip(xy, 0.0, size[:2])
    ids = net.add_nodes(np.column_stack([xy, z]))
    prev = np.where(k == 1, top_ids[vessel], ids - 1)
    z_prev = np.where(k == 1, top_z[vessel], z - (z_end - top_z)[vessel] / n_seg[vessel])
    frac = 0.5 * (z + z_prev) / depth
    radius = np.maximum(r_top[vessel] * (1.0 - (1.0 - p.penetrating_taper) * frac), p.penetrating_min_radius_um)
    kind = np.where(is_art[vessel], KIND_ARTERIOLE, KIND_VENULE)
    for code in (KIND_ARTERIOLE, KIND_VENULE):
        s = kind == code
        net.add_links(prev[s], ids[s], radius[s], code, 0.0)

    # anchors: every connection_spacing along the trunk (phase random), two at the bottom end
    last = k == n_seg[vessel]
    step = max(1, int(round(p.connection_spacing_um / p.edge_length_um)))
    phase_k = rng.integers(0, step, m)
    is_anchor = ((k + phase_k[vessel]) % step == 0) & (z >= p.capillary_top_um) & ~last
    # lateral branches from other trunk nodes
    cand = ~is_anchor & ~last & (k > 1) & (z >= p.capillary_top_um)
    is_branch = cand & (rng.random(len(z)) < p.edge_length_um / p.branch_spacing_um)
    b_nodes = ids[is_branch]
    nb = len(b_nodes)
    ang = rng.uniform(0, 2 * np.pi, nb)
    blen = rng.uniform(*p.branch_length_um, nb)
    slope = rng.uniform(-0.2, 0.3, nb)
    vec = np.column_stack([np.cos(ang), np.sin(ang), slope])
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    end = np.column_stack([xy[is_branch], z[is_branch]]) + blen[:, None] * vec
    end = np.clip(end, [0.0, 0.0, p.capillary_top_um], size)
    end_ids = net.add_nodes(end)
    b_r = np.maximum(radius[is_branch] * rng.uniform(*p.branch_radius_ratio, nb), p.capillary_radius_range_um[1])
    b_kind = kind[is_branch]
    for code in (KIND_ARTERIOLE, KIND_VENULE):
        s = b_kind == code
        net.add_links(b_nodes[s], end_ids[s], b_r[s], code, p.capillary_tortuosity)
    anchor_node = np.concatenate([ids[is_anchor], ids[last], end_ids])
    anchor_count = np.concatenate([np.ones(is_anchor.sum(), np.int64), np.full(last.sum(), 2, np.int64),
                                   np.full(nb, 2, np.int64)])
    trunk_pos = np.column_stack([xy, z])
    return (anchor_node, anchor_count), np.concatenate([trunk_pos, end]), np.concatenate([radius, b_r])


def _capillary_points(size: np.ndarray, p: CortexParams, rng: np.random.Generator) -> np.ndarray:
    """Junction points on a jittered cubic grid filling x, y and capillary_top..depth (um)."""
    lo = np.array([0.0, 0.0, min(p.capillary_top_um, size[2])])
    ext = size - lo
    if ext[2] <= 0:
        return np.zeros((0, 3))
    n = np.maximum(1, np.round(ext / p.capillary_spacing_um).astype(np.int64))
    cell = ext / n
    grid = np.stack(np.meshgrid(*[np.arange(c) for c in n], indexing="ij"), axis=-1).reshape(-1, 3)
    jit = rng.uniform(-0.5, 0.5, grid.shape) * p.capillary_jitter
    return lo + (grid + 0.5 + jit) * cell


def _capillary_bed(net: _Net, cap_ids: np.ndarray, cap_pos: np.ndarray, anchors, p: CortexParams,
                   rng: np.random.Generator) -> None:
    """Link anchors to junction points, junction points to each other (degree <= 3), join pieces."""
    nc = len(cap_pos)
    if nc == 0:
        return
    anchor_node, anchor_count = anchors
    key_pos = net.all_pos()
    tree = cKDTree(cap_pos)
    capacity = [3] * nc
    src, dst = [], []
    if len(anchor_node):
        k = min(10, nc)
        _, near = tree.query(key_pos[anchor_node], k=k)
        near = np.asarray(near).reshape(len(anchor_node), k).tolist()
        for i in rng.permutation(len(anchor_node)).tolist():
            need = int(anchor_count[i])
            got = [c for c in near[i] if capacity[c] > 0][:need]
            if len(got) < need:
                got += [c for c in near[i] if c not in got][: need - len(got)]
            for c in got:
                capacity[c] -= 1
                src.append(int(anchor_node[i]))
                dst.append(int(cap_ids[c]))

    # candidate links between junction points, shortest first (slightly shuffled)
    if nc >= 2:
        k = min(13, nc)
        d, j = tree.query(cap_pos, k=k)
        i = np.repeat(np.arange(nc), k - 1)
        j = j[:, 1:].ravel()
        d = d[:, 1:].ravel()
        ok = (d <= p.capillary_max_link_um) & (i < j)
        ci, cj, cd = i[ok], j[ok], d[ok]
        order = np.argsort(cd * rng.uniform(0.9, 1.1, len(cd)), kind="stable")
        ci, cj = ci[order], cj[order]
    else:
        ci = cj = np.zeros(0, np.int64)
    chosen = np.zeros(len(ci), bool)
    li, lj = ci.tolist(), cj.tolist()
    for e in range(len(li)):
        a, b = li[e], lj[e]
        if capacity[a] > 0 and capacity[b] > 0:
            capacity[a] -= 1
            capacity[b] -= 1
            chosen[e] = True
    a_all = np.concatenate([np.asarray(src, np.int64), cap_ids[ci[chosen]]])
    b_all = np.concatenate([np.asarray(dst, np.int64), cap_ids[cj[chosen]]])
    net.add_links(a_all, b_all, _capillary_radius(len(a_all), p, rng), KIND_CAPILLARY, p.capillary_tortuosity)

    # join stray pieces: Kruskal over the unused candidate links between different components
    a, b = net.all_links()[:2]
    n = net.n
    adj = sparse.coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n))
    n_comp, label = csgraph.connected_components(adj, directed=False)
    if n_comp > 1:
        la, lb = label[cap_ids[ci]], label[cap_ids[cj]]
        cross = np.flatnonzero(~chosen & (la != lb))
        parent = list(range(n_comp))

        def find(x: int) -> int:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        extra = []
        for e, x, y in zip(cross.tolist(), la[cross].tolist(), lb[cross].tolist()):
            rx, ry = find(x), find(y)
            if rx != ry:
                parent[rx] = ry
                extra.append(e)
        extra = np.asarray(extra, np.int64)
        if len(extra):
            net.add_links(cap_ids[ci[extra]], cap_ids[cj[extra]], _capillary_radius(len(extra), p, rng),
                          KIND_CAPILLARY, p.capillary_tortuosity)


def _capillary_radius(m: int, p: CortexParams, rng: np.random.Generator) -> np.ndarray:
    return np.clip(rng.normal(p.capillary_radius_um, p.capillary_radius_sd_um, m), *p.capillary_radius_range_um)


def _realize(net: _Net, size: np.ndarray, p: CortexParams, rng: np.random.Generator) -> VesselGraph:
    """Cut every link into ~edge_length pieces displaced by smooth sine modes (ends fixed)."""
    pos = net.all_pos()
    a, b, radius, kind, tort, lateral = net.all_links()
    m = len(a)
    chord = pos[b] - pos[a]
    length = np.linalg.norm(chord, axis=1)
    n = np.maximum(1, np.rint(length / p.edge_length_um).astype(np.int64))
    d = chord / np.maximum(length, 1e-12)[:, None]
    # perpendicular directions: random for 3D vessels, in the surface plane for pial ones
    v = rng.normal(size=(m, 3))
    u1 = v - (v * d).sum(axis=1, keepdims=True) * d
    flat = np.cross(d, [0.0, 0.0, 1.0])
    u1[lateral] = flat[lateral]
    u1 /= np.maximum(np.linalg.norm(u1, axis=1, keepdims=True), 1e-12)
    u2 = np.cross(d, u1)
    u2[lateral] = u1[lateral]
    c1 = rng.normal(size=m) * tort * length
    c2 = rng.normal(size=m) * tort * 0.5 * length
    inner = n - 1
    link = np.repeat(np.arange(m), inner)
    base = np.concatenate([[0], np.cumsum(inner)[:-1]])
    j = np.arange(inner.sum()) - base[link] + 1
    t = (j / n[link])[:, None]
    mid = (pos[a][link] + t * chord[link] + np.sin(np.pi * t) * c1[link, None] * u1[link]
           + np.sin(2 * np.pi * t) * c2[link, None] * u2[link])
    lat = lateral[link]
    mid[lat, 2] = radius[link][lat]
    nodes = np.concatenate([pos, mid])
    nodes = np.clip(nodes, 0.0, size)
    # pieces: link l has n[l] pieces chaining a -> inner nodes -> b
    first_inner = len(pos) + base
    plink = np.repeat(np.arange(m), n)
    pstart = np.concatenate([[0], np.cumsum(n)[:-1]])
    q = np.arange(n.sum()) - pstart[plink]
    e0 = np.where(q == 0, a[plink], first_inner[plink] + q - 1)
    e1 = np.where(q == n[plink] - 1, b[plink], first_inner[plink] + q)
    graph = VesselGraph(nodes, np.stack([e0, e1], axis=1), radius[plink], edge_attrs={"kind": kind[plink]})
    return graph.remove_isolated_nodes()
