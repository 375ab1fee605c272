"""The vessel graph: node positions, edges and radii in micrometres (z = depth, into the brain)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from octasim.errors import OctasimError


class GraphError(OctasimError):
    """A vessel graph (or the file it came from) is malformed; the message names what is wrong."""


#: largest plausible |coordinate| and radius, um (10 m); larger values mean a corrupt file or wrong units
MAX_COORDINATE_UM = 1e7


@dataclass
class VesselGraph:
    """A vascular network as straight edges between nodes.

    nodes:  (N, 3) float64 positions x, y, z in um; z is depth, increasing away from the surface.
    edges:  (E, 2) int64 node indices (rows of ``nodes``).
    radius: (E,) float64 vessel radius of each edge in um.
    node_attrs / edge_attrs: optional arrays of length N / E (e.g. ``outside_brain``, ``kind``).
    meta: free-form plain data (source file, generator parameters, units...).
    """

    nodes: np.ndarray
    edges: np.ndarray
    radius: np.ndarray
    node_attrs: dict[str, np.ndarray] = field(default_factory=dict)
    edge_attrs: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.nodes = _as_table(self.nodes, 3, np.float64, "nodes")
        self.edges = _as_table(self.edges, 2, np.int64, "edges")
        self.radius = np.asarray(self.radius, dtype=np.float64).reshape(-1)
        self.node_attrs = {k: np.asarray(v) for k, v in self.node_attrs.items()}
        self.edge_attrs = {k: np.asarray(v) for k, v in self.edge_attrs.items()}
        if len(self.radius) != len(self.edges):
            raise GraphError(f"{len(self.edges)} edges but {len(self.radius)} radii")
        for name, arr in self.node_attrs.items():
            if arr.ndim == 0 or len(arr) != len(self.nodes):
                raise GraphError(f"node attribute {name!r} has {len(arr) if arr.ndim else 'a single'} value(s) "
                                 f"(shape {arr.shape}) for {len(self.nodes)} nodes")
        for name, arr in self.edge_attrs.items():
            if arr.ndim == 0 or len(arr) != len(self.edges):
                raise GraphError(f"edge attribute {name!r} has {len(arr) if arr.ndim else 'a single'} value(s) "
                                 f"(shape {arr.shape}) for {len(self.edges)} edges")

    # ------------------------------------------------------------------ checks
    def validate(self, source: str = "graph") -> "VesselGraph":
        """Raise GraphError naming ``source`` if the graph is empty or holds invalid values (NaN, dangling
        edges, radius <= 0, coordinates or radii beyond ``MAX_COORDINATE_UM``)."""
        if len(self.nodes) == 0 or len(self.edges) == 0:
            raise GraphError(f"{source}: empty graph ({len(self.nodes)} nodes, {len(self.edges)} edges)")
        bad = ~np.isfinite(self.nodes).all(axis=1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise GraphError(f"{source}: {bad.sum()} node(s) with NaN or infinite coordinates (first: node index {i})")
        bad = (np.abs(self.nodes) > MAX_COORDINATE_UM).any(axis=1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise GraphError(f"{source}: {bad.sum()} node(s) with coordinates beyond +-{MAX_COORDINATE_UM:g} um "
                             f"(10 m), far larger than any brain (first: node index {i} at "
                             f"{', '.join(f'{v:.3g}' for v in self.nodes[i])} um); the file is corrupt or "
                             "not in um (for a graph in voxels, check the voxel size given)")
        if self.edges.min() < 0 or self.edges.max() >= len(self.nodes):
            i = int(np.flatnonzero((self.edges < 0).any(1) | (self.edges >= len(self.nodes)).any(1))[0])
            raise GraphError(f"{source}: edge {i} refers to a node that does not exist {tuple(self.edges[i])}")
        bad = ~np.isfinite(self.radius) | (self.radius <= 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise GraphError(f"{source}: {bad.sum()} edge(s) with a zero, negative or NaN radius "
                             f"(first: edge {i}, radius {self.radius[i]})")
        bad = self.radius > MAX_COORDINATE_UM
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise GraphError(f"{source}: {bad.sum()} edge(s) with a radius above {MAX_COORDINATE_UM:g} um (10 m), "
                             f"far larger than any vessel (first: edge {i}, radius {self.radius[i]:.3g} um); "
                             "the file is corrupt or not in um")
        return self

    # ----------------------------------------------------------- basic shapes
    @property
    def n_nodes(self) -> int:
        return len(self.nodes)

    @property
    def n_edges(self) -> int:
        return len(self.edges)

    def edge_vectors(self) -> np.ndarray:
        """(E, 3) vector from the first to the second node of each edge, um."""
        return self.nodes[self.edges[:, 1]] - self.nodes[self.edges[:, 0]]

    def edge_lengths(self) -> np.ndarray:
        """(E,) straight length of each edge, um."""
        return np.linalg.norm(self.edge_vectors(), axis=1)

    def orientation(self) -> np.ndarray:
        """(E,) value a = 1 - |theta - 90 deg| / 90 deg, theta the angle to the depth (z) axis.

        1 for a lateral (horizontal) edge, 0 for a vertical (diving) one; 1 for zero-length edges.
        """
        vec = self.edge_vectors()
        length = np.linalg.norm(vec, axis=1)
        cos = np.divide(np.abs(vec[:, 2]), length, out=np.zeros_like(length), where=length > 0)
        theta = np.degrees(np.arccos(np.clip(cos, 0.0, 1.0)))  # 0..90 deg since |cos|
        return 1.0 - np.abs(theta - 90.0) / 90.0

    def degrees(self) -> np.ndarray:
        """(N,) number of edges at each node (self-loops count twice)."""
        return np.bincount(self.edges.ravel(), minlength=self.n_nodes)

    def bounding_box(self) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) corners of the nodes' bounding box, um."""
        return self.nodes.min(axis=0), self.nodes.max(axis=0)

    # ------------------------------------------------------------- subgraphs
    def select_edges(self, keep: np.ndarray) -> "VesselGraph":
        """Graph with only the edges where ``keep`` is True (bool mask or indices); unused nodes removed."""
        keep = np.asarray(keep)
        if keep.dtype != bool:
            mask = np.zeros(self.n_edges, dtype=bool)
            mask[keep] = True
            keep = mask
        sub = VesselGraph(self.nodes, self.edges[keep], self.radius[keep], dict(self.node_attrs),
                          {k: v[keep] for k, v in self.edge_attrs.items()}, dict(self.meta))
        return sub.remove_isolated_nodes()

    def select_nodes(self, keep: np.ndarray) -> "VesselGraph":
        """Graph restricted to nodes where ``keep`` is True; edges touching a dropped node go too."""
        keep = np.asarray(keep, dtype=bool)
        edge_keep = keep[self.edges].all(axis=1)
        return self.select_edges(edge_keep)

    def remove_isolated_nodes(self) -> "VesselGraph":
        """Drop nodes without edges and re-index the edges; node order is otherwise kept."""
        used = np.zeros(self.n_nodes, dtype=bool)
        used[self.edges.ravel()] = True
        new_index = np.cumsum(used) - 1
        return VesselGraph(self.nodes[used], new_index[self.edges], self.radius.copy(),
                           {k: v[used] for k, v in self.node_attrs.items()},
                           {k: v.copy() for k, v in self.edge_attrs.items()}, dict(self.meta))

    def crop(self, lo, hi) -> "VesselGraph":
        """Edges with at least one end inside the box lo <= p < hi (um), kept whole.

        Edges are not clipped at the box faces: an edge crossing a face keeps its outside node,
        so vessels leave the box naturally; the voxelizer clips to the volume.
        """
        lo, hi = np.asarray(lo, float), np.asarray(hi, float)
        inside = ((self.nodes >= lo) & (self.nodes < hi)).all(axis=1)
        return self.select_edges(inside[self.edges].any(axis=1))

    def translate(self, offset) -> "VesselGraph":
        """Copy of the graph with every node moved by ``offset`` (um)."""
        return VesselGraph(self.nodes + np.asarray(offset, float), self.edges.copy(), self.radius.copy(),
                           dict(self.node_attrs), dict(self.edge_attrs), dict(self.meta))

    def split_long_edges(self, max_length: float) -> "VesselGraph":
        """Split every edge longer than ``max_length`` (um) into equal straight pieces.

        New nodes lie on the edge; the pieces inherit the edge's radius and attributes; new nodes
        get the attribute values of the edge's first node.
        """
        if max_length <= 0:
            raise ValueError("max_length must be positive (um)")
        lengths = self.edge_lengths()
        pieces = np.maximum(1, np.ceil(lengths / max_length).astype(np.int64))
        if (pieces == 1).all():
            return self
        new_nodes = [self.nodes]
        new_node_src = [np.arange(self.n_nodes)]
        edge_a, edge_b, edge_src = [], [], []
        next_id = self.n_nodes
        simple = pieces == 1
        edge_a.append(self.edges[simple, 0]); edge_b.append(self.edges[simple, 1])
        edge_src.append(np.flatnonzero(simple))
        for k in np.unique(pieces[~simple]):
            idx = np.flatnonzero(pieces == k)
            p0 = self.nodes[self.edges[idx, 0]]
            p1 = self.nodes[self.edges[idx, 1]]
            t = np.arange(1, k) / k  # (k-1,)
            inner = p0[:, None, :] + t[None, :, None] * (p1 - p0)[:, None, :]  # (m, k-1, 3)
            ids = next_id + np.arange(len(idx) * (k - 1)).reshape(len(idx), k - 1)
            next_id += ids.size
            new_nodes.append(inner.reshape(-1, 3))
            new_node_src.append(np.repeat(self.edges[idx, 0], k - 1))
            chain = np.concatenate([self.edges[idx, :1], ids, self.edges[idx, 1:]], axis=1)  # (m, k+1)
            edge_a.append(chain[:, :-1].ravel()); edge_b.append(chain[:, 1:].ravel())
            edge_src.append(np.repeat(idx, k))
        src_e = np.concatenate(edge_src)
        src_n = np.concatenate(new_node_src)
        return VesselGraph(np.concatenate(new_nodes), np.stack([np.concatenate(edge_a), np.concatenate(edge_b)], 1),
                           self.radius[src_e], {k: v[src_n] for k, v in self.node_attrs.items()},
                           {k: v[src_e] for k, v in self.edge_attrs.items()}, dict(self.meta))

    # ------------------------------------------------------------ statistics
    def segments(self) -> list[np.ndarray]:
        """Chains of edges between branch points or ends (nodes of degree != 2), as edge-index arrays.

        Closed loops made only of degree-2 nodes come out as one segment each.
        """
        deg = self.degrees()
        incident: list[list[int]] = [[] for _ in range(self.n_nodes)]
        for e, (a, b) in enumerate(self.edges):
            incident[a].append(e)
            incident[b].append(e)
        seen = np.zeros(self.n_edges, dtype=bool)
        out: list[np.ndarray] = []

        def walk(start_node: int, first_edge: int) -> list[int]:
            chain, node, e = [], start_node, first_edge
            while True:
                seen[e] = True
                chain.append(e)
                a, b = self.edges[e]
                node = b if a == node else a
                if deg[node] != 2:
                    return chain
                nxt = [x for x in incident[node] if not seen[x]]
                if not nxt:
                    return chain
                e = nxt[0]

        for n in np.flatnonzero(deg != 2):
            for e in incident[n]:
                if not seen[e]:
                    out.append(np.array(walk(int(n), e)))
        for e in np.flatnonzero(~seen):  # pure loops
            if not seen[e]:
                out.append(np.array(walk(int(self.edges[e, 0]), int(e))))
        return out

    def stats(self, box: tuple | None = None) -> dict[str, Any]:
        """Summary statistics (plain data). ``box`` = (lo, hi) in um; default: the bounding box.

        length_density_mm_per_mm3 (note 1 m/mm^3 = 1000 mm/mm^3), volume_fraction (sum of
        pi r^2 L over the box volume, overlaps not removed), radius percentiles (length-weighted is
        not used: plain per edge), degree histogram, share of degree 3 among branch points
        (degree >= 3), segment (branch point to branch point) length percentiles in um.
        """
        lo, hi = (self.bounding_box() if box is None else (np.asarray(box[0], float), np.asarray(box[1], float)))
        extent = np.maximum(hi - lo, 1e-9)
        vol_mm3 = float(np.prod(extent)) * 1e-9
        lengths = self.edge_lengths()
        total_um = float(lengths.sum())
        deg = self.degrees()
        hist = np.bincount(deg)
        branch = deg >= 3
        seg_len = np.array([lengths[s].sum() for s in self.segments()]) if self.n_edges else np.zeros(0)
        cap = self.radius < 4.0
        pct = [5, 25, 50, 75, 95]
        return {
            "n_nodes": self.n_nodes,
            "n_edges": self.n_edges,
            "box_um": [lo.tolist(), hi.tolist()],
            "total_length_mm": total_um / 1000.0,
            "length_density_mm_per_mm3": total_um / 1000.0 / vol_mm3,
            "volume_fraction": float((np.pi * self.radius ** 2 * lengths).sum()) * 1e-9 / vol_mm3,
            "radius_um_percentiles": dict(zip(map(str, pct), np.percentile(self.radius, pct).round(3).tolist()))
            if self.n_edges else {},
            "capillary_length_share": float(lengths[cap].sum() / total_um) if total_um > 0 else 0.0,
            "median_capillary_radius_um": float(np.median(self.radius[cap])) if cap.any() else float("nan"),
            "degree_histogram": {str(d): int(c) for d, c in enumerate(hist) if c},
            "degree3_share_of_branch_points": float((deg == 3).sum() / branch.sum()) if branch.any() else 0.0,
            "n_segments": int(len(seg_len)),
            "segment_length_um_percentiles": dict(zip(map(str, pct), np.percentile(seg_len, pct).round(2).tolist()))
            if len(seg_len) else {},
        }

    # ------------------------------------------------------------- networkx
    def to_networkx(self):
        """networkx.MultiGraph with node attribute ``pos`` (x, y, z um) and edge attribute ``radius`` (um)."""
        import networkx as nx

        g = nx.MultiGraph()
        for i, p in enumerate(self.nodes):
            attrs = {k: _plain(v[i]) for k, v in self.node_attrs.items()}
            g.add_node(i, pos=tuple(float(c) for c in p), **attrs)
        for e, (a, b) in enumerate(self.edges):
            attrs = {k: _plain(v[e]) for k, v in self.edge_attrs.items()}
            g.add_edge(int(a), int(b), radius=float(self.radius[e]), **attrs)
        return g

    @classmethod
    def from_networkx(cls, g, pos_key: str = "pos", radius_key: str = "radius") -> "VesselGraph":
        """Build from a networkx graph whose nodes carry ``pos`` = (x, y, z) and edges ``radius`` (um).

        Other scalar attributes that every node (edge) carries become node (edge) attributes.
        """
        index = {n: i for i, n in enumerate(g.nodes)}
        try:
            nodes = np.array([g.nodes[n][pos_key] for n in g.nodes], dtype=float).reshape(-1, 3)
        except KeyError as exc:
            raise GraphError(f"a node has no {pos_key!r} attribute") from exc
        edges, radius, edata = [], [], []
        for a, b, data in g.edges(data=True):
            if radius_key not in data:
                raise GraphError(f"edge ({a}, {b}) has no {radius_key!r} attribute")
            edges.append((index[a], index[b]))
            radius.append(float(data[radius_key]))
            edata.append(data)
        return cls(nodes, np.array(edges, dtype=np.int64).reshape(-1, 2), np.array(radius),
                   {k: np.asarray(v) for k, v in common_scalar_attrs([g.nodes[n] for n in g.nodes], {pos_key}).items()},
                   {k: np.asarray(v) for k, v in common_scalar_attrs(edata, {radius_key}).items()})


def common_scalar_attrs(items: list[dict], skip: set[str]) -> dict[str, list]:
    """Scalar attributes that every dict in ``items`` has (names in ``skip`` excepted), as value lists."""
    if not items:
        return {}
    names = set(items[0]).difference(skip)
    for d in items[1:]:
        names &= d.keys()
    out = {}
    for name in sorted(names):
        values = [d[name] for d in items]
        if all(isinstance(v, (bool, int, float, str, np.generic)) for v in values):
            out[name] = values
    return out


def _as_table(values, width: int, dtype, name: str) -> np.ndarray:
    """(n, width) array; a flat array of a multiple of ``width`` values is accepted, any other shape is refused."""
    arr = np.asarray(values, dtype=dtype)
    if arr.size == 0:
        return arr.reshape(0, width)
    if arr.ndim == 1 and arr.size % width == 0:
        return arr.reshape(-1, width)
    if arr.ndim != 2 or arr.shape[1] != width:
        raise GraphError(f"{name} must be an (n, {width}) array, got shape {arr.shape}")
    return arr


def _plain(value):
    """numpy scalar -> Python scalar (for networkx / JSON)."""
    return value.item() if hasattr(value, "item") else value
