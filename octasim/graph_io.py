"""Read and write vessel graphs in the real-world formats; the format is detected by extension or content.

Formats (``fmt`` names), files and units:

``vesselgraph``  VesselGraph / Voreen CSV pair ``<prefix>_nodes*.csv`` + ``<prefix>_edges*.csv``, ``;``-separated
    (``,`` is accepted too). Nodes: ``id;pos_x;pos_y;pos_z[;degree;isAtSampleBorder]``; edges:
    ``node1id;node2id;...;avgRadiusAvg;...``. Positions and radii in **voxels** (times ``voxel_size_um``).
    Node ids are matched through the ``id`` column, not the row order. Kept attributes: node
    ``at_border`` (bool, from ``isAtSampleBorder``), edge ``length`` (um, along the vessel, from
    ``length``) and ``curveness`` (length / distance), when those columns exist. The writer writes
    ``id;pos_x;pos_y;pos_z;degree;isAtSampleBorder`` and
    ``id;node1id;node2id;length;distance;curveness;avgRadiusAvg;node1_degree;node2_degree``
    (12 significant digits), in voxels of ``voxel_size_um`` (default 1 um).
``clearmap``     ClearMap / TubeMap folder of ``.npy`` arrays: ``vertices.npy`` (N, 3), ``edges.npy`` (E, 2, row
    indices), ``radius_for_edges.npy`` (E,), optional ``region_for_vertices.npy`` (N,) atlas region ids.
    Positions and radii in **voxels**. Region 0 means outside the brain: node attributes ``region``
    (int) and ``outside_brain`` (bool); ``drop_outside=True`` removes those nodes and their edges.
``secomb``       Secomb network ``.dat`` (microvascular flow codes): title line, box / tissue-point / bound /
    max-length / max-segments lines, ``N total number of segments``, header
    ``name type from to diam flow HD``, N rows (``from``/``to`` are node *names*; ``diam`` in um, radius
    = diam / 2), ``M total number of nodes``, header ``name x y z ...``, M rows (um); each section must
    hold exactly its announced number of rows (up to the next ``total number of`` line); later
    sections are ignored. Kept edge attributes: ``type`` (int), ``flow`` (nl/min), ``hd`` (discharge
    haematocrit) when present. The writer names nodes and segments 1..M / 1..E and lists degree-1
    nodes as boundary nodes with placeholder conditions (``bctyp 0 bcprfl 0 bchd 0.45``): set real
    boundary conditions before running a flow code.
``graphml``, ``gml``  through networkx. Node attributes ``x``, ``y``, ``z`` (um; a ``pos`` attribute
    holding three numbers, or a string of them, is accepted instead), edge attribute ``radius``
    (um). Other scalar attributes present on every node / edge become node / edge attributes. The
    writer also stores graph attributes ``octasim_meta`` (JSON of ``meta``) and ``octasim_dtypes``
    (JSON of attribute dtypes) so our own files read back with their dtypes and meta.
``npz``          our own ``.npz``: ``nodes`` (N, 3) um, ``edges`` (E, 2), ``radius`` (E,) um,
    ``node_attr__<name>``, ``edge_attr__<name>``, ``meta`` (JSON string). Lossless; read back with
    exactly the stored ``meta``.

Readers raise :class:`~octasim.graph.GraphError` naming the file and, for text formats, the line.

It stays one module (about 790 lines): the six formats share one detection and dispatch table and one
set of parsing and checking helpers (line-numbered errors, node-id lookup, finite / positive checks,
atomic text tables), and each format's reader and writer are a few dozen lines; it is organised in
sections per format, so a split along them is possible when a format grows.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .atomic import atomic_path
from .graph import GraphError, VesselGraph, common_scalar_attrs

FORMATS = ("vesselgraph", "clearmap", "secomb", "graphml", "gml", "npz")
#: formats whose files hold positions and radii in voxels
VOXEL_FORMATS = ("vesselgraph", "clearmap")
CLEARMAP_FILES = ("vertices.npy", "edges.npy", "radius_for_edges.npy")
_SUFFIX = {".npz": "npz", ".dat": "secomb", ".graphml": "graphml", ".gml": "gml", ".csv": "vesselgraph"}


class GraphFileNotFoundError(GraphError, FileNotFoundError):
    """A graph file (or the partner file of a pair) does not exist."""


# ======================================================================= detection
def _vg_pair_in_dir(folder: Path) -> list[tuple[Path, Path]]:
    pairs = []
    for nodes in sorted(folder.glob("*_nodes*.csv")):
        edges = nodes.with_name(_partner_name(nodes.name, "_nodes", "_edges"))
        pairs.append((nodes, edges))
    if not pairs:  # only edges files: report the missing partner later
        for edges in sorted(folder.glob("*_edges*.csv")):
            pairs.append((edges.with_name(_partner_name(edges.name, "_edges", "_nodes")), edges))
    return pairs


def _partner_name(name: str, old: str, new: str) -> str:
    i = name.rfind(old)
    return name[:i] + new + name[i + len(old):]


def _sniff(path: Path) -> str | None:
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError as exc:
        raise GraphError(f"{path}: cannot read ({exc})") from exc
    if head.startswith(b"PK"):
        return "npz"
    text = head.decode("utf-8", errors="replace").lstrip().lower()
    if text.startswith("<?xml") or text.startswith("<graphml"):
        return "graphml" if "graphml" in text else None
    if re.match(r"(creator\s+\"[^\"]*\"\s*)?graph\s*\[", text):
        return "gml"
    if "total number of segments" in text:
        return "secomb"
    first = text.splitlines()[0] if text else ""
    if "node1id" in first or "pos_x" in first:
        return "vesselgraph"
    return None


def detect_format(path: str | Path) -> str:
    """Name of the graph format of ``path`` (one of :data:`FORMATS`), by extension, then by content."""
    path = Path(path)
    if path.is_dir():
        if any((path / f).exists() for f in CLEARMAP_FILES):
            return "clearmap"
        if _vg_pair_in_dir(path):
            return "vesselgraph"
        raise GraphError(f"{path}: folder holds neither a ClearMap graph ({', '.join(CLEARMAP_FILES)}) "
                         "nor a VesselGraph CSV pair (*_nodes.csv + *_edges.csv)")
    if not path.exists():
        if Path(f"{path}_nodes.csv").exists() or Path(f"{path}_edges.csv").exists():
            return "vesselgraph"
        raise GraphFileNotFoundError(f"{path}: no such file or folder")
    suffix = path.suffix.lower()
    if suffix == ".npy" and path.name in CLEARMAP_FILES + ("region_for_vertices.npy",):
        return "clearmap"
    if suffix == ".csv":
        if "_nodes" in path.name or "_edges" in path.name or _sniff(path) == "vesselgraph":
            return "vesselgraph"
        raise GraphError(f"{path}: a .csv graph must be a VesselGraph pair named *_nodes*.csv / *_edges*.csv "
                         "or have pos_x / node1id columns")
    if suffix in _SUFFIX:
        return _SUFFIX[suffix]
    fmt = _sniff(path)  # no or unknown suffix (.xml, .txt ...): by content
    if fmt is None:
        raise GraphError(f"{path}: unknown graph format (expected one of {', '.join(FORMATS)}; "
                         "give the file its format's suffix, or pass fmt=)")
    return fmt


# ======================================================================= reading
def read_graph(path: str | Path, voxel_size_um: float | None = None, fmt: str | None = None,
               drop_outside: bool = False) -> VesselGraph:
    """Read a vessel graph file into a validated :class:`VesselGraph` in micrometres.

    voxel_size_um: size of one file unit in um. Voxel formats (vesselgraph, clearmap) default to
        1.0 and record it in ``meta['voxel_size_um']``; for the um formats it is only applied when given.
    fmt: one of :data:`FORMATS`; default: :func:`detect_format`.
    drop_outside: remove nodes flagged ``outside_brain`` (ClearMap region 0) and their edges.
    ``meta`` gets ``source`` (the path) and ``format`` (except npz, whose stored meta is returned as is).
    """
    path = Path(path)
    fmt = detect_format(path) if fmt is None else fmt.lower()
    if fmt not in FORMATS:
        raise GraphError(f"{path}: unknown graph format {fmt!r} (choose from {', '.join(FORMATS)})")
    if voxel_size_um is not None and not (np.isfinite(voxel_size_um) and voxel_size_um > 0):
        raise GraphError(f"{path}: voxel size must be a positive number of um, got {voxel_size_um}")
    reader = {"vesselgraph": _read_vesselgraph, "clearmap": _read_clearmap, "secomb": _read_secomb,
              "graphml": _read_networkx, "gml": _read_networkx, "npz": _read_npz}[fmt]
    graph, source = reader(path) if fmt not in ("graphml", "gml") else reader(path, fmt)
    scale = voxel_size_um if voxel_size_um is not None else (1.0 if fmt in VOXEL_FORMATS else None)
    if scale is not None:
        graph.nodes = graph.nodes * scale
        graph.radius = graph.radius * scale
        if fmt == "vesselgraph" and "length" in graph.edge_attrs:
            graph.edge_attrs["length"] = graph.edge_attrs["length"] * scale
        graph.meta["voxel_size_um"] = float(scale)
    if fmt != "npz":
        graph.meta["source"] = str(source)
        graph.meta["format"] = fmt
    if drop_outside and "outside_brain" in graph.node_attrs:
        flag = graph.node_attrs["outside_brain"]
        if flag.ndim != 1 or flag.dtype.kind not in "biu":
            raise GraphError(f"{source}: node attribute 'outside_brain' must hold one bool per node, "
                             f"got dtype {flag.dtype}, shape {flag.shape}")
        graph = _drop_nodes(graph, flag.astype(bool))
    return graph.validate(source=str(source))


def _drop_nodes(g: VesselGraph, drop: np.ndarray) -> VesselGraph:
    """Remove the flagged nodes and every edge touching one; other nodes (even isolated) stay."""
    keep = ~drop
    new_index = np.cumsum(keep) - 1
    ekeep = keep[g.edges].all(axis=1)
    return VesselGraph(g.nodes[keep], new_index[g.edges[ekeep]], g.radius[ekeep],
                       {k: v[keep] for k, v in g.node_attrs.items()},
                       {k: v[ekeep] for k, v in g.edge_attrs.items()}, dict(g.meta))


# ---------------------------------------------------------------- text helpers
def _data_lines(path: Path) -> list[tuple[int, str]]:
    """Non-blank lines of a text file with their 1-based line numbers."""
    try:
        text = path.read_text(encoding="utf-8-sig", errors="replace")
    except FileNotFoundError as exc:
        raise GraphFileNotFoundError(f"{path}: no such file") from exc
    except OSError as exc:
        raise GraphError(f"{path}: cannot read ({exc})") from exc
    return [(i + 1, line) for i, line in enumerate(text.splitlines()) if line.strip()]


def _load_columns(fname: Path, rows: Sequence[tuple[int, str]], cols: Sequence[int], names: Sequence[str],
                  delimiter: str | None) -> np.ndarray:
    """(len(rows), len(cols)) float64 table of the given columns; errors name the file, line and column."""
    lines = [r[1] for r in rows]
    if not lines:
        return np.zeros((0, len(cols)))
    try:
        return np.loadtxt(lines, delimiter=delimiter, usecols=list(cols), ndmin=2, dtype=np.float64,
                          comments=None)
    except (ValueError, IndexError):
        pass  # find the culprit to report it precisely
    for lineno, line in rows:
        fields = line.split(delimiter) if delimiter else line.split()
        for c, name in zip(cols, names):
            if c >= len(fields):
                raise GraphError(f"{fname}, line {lineno}: only {len(fields)} fields, column {name!r} "
                                 f"(field {c + 1}) is missing")
            try:
                float(fields[c])
            except ValueError:
                raise GraphError(f"{fname}, line {lineno}: column {name!r} holds {fields[c].strip()!r}, "
                                 "not a number") from None
    raise GraphError(f"{fname}: cannot parse the table")


def _check_finite(fname: Path, values: np.ndarray, rows: Sequence[tuple[int, str]], what: str) -> None:
    bad = ~np.isfinite(values).all(axis=1) if values.ndim == 2 else ~np.isfinite(values)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise GraphError(f"{fname}, line {rows[i][0]}: NaN or infinite {what} ({bad.sum()} row(s) affected)")


def _check_radius(fname: Path, radius: np.ndarray, rows: Sequence[tuple[int, str]] | None, what: str) -> None:
    bad = ~np.isfinite(radius) | (radius <= 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        where = f"line {rows[i][0]}" if rows is not None else f"row {i}"
        raise GraphError(f"{fname}, {where}: {what} {radius[i]:g} is not a positive number "
                         f"({bad.sum()} edge(s) with a zero, negative or NaN radius)")


def _id_index(fname: Path, ids: np.ndarray, rows: Sequence[tuple[int, str]], what: str = "node id"):
    """Sorted ids and their row positions; raises on duplicates (naming both lines)."""
    order = np.argsort(ids, kind="stable")
    sids = ids[order]
    dup = np.flatnonzero(sids[1:] == sids[:-1])
    if len(dup):
        a, b = order[dup[0]], order[dup[0] + 1]
        raise GraphError(f"{fname}, line {rows[b][0]}: duplicate {what} {_fmt_id(ids[b])} "
                         f"(first on line {rows[a][0]})")
    return sids, order


def _lookup(fname: Path, sids: np.ndarray, order: np.ndarray, wanted: np.ndarray,
            rows: Sequence[tuple[int, str]], column: str, nodes_file: Path) -> np.ndarray:
    """Row indices of ``wanted`` ids; a missing id is a dangling reference (error names the line)."""
    pos = np.clip(np.searchsorted(sids, wanted), 0, max(len(sids) - 1, 0))
    found = (sids[pos] == wanted) if len(sids) else np.zeros(len(wanted), bool)
    if not found.all():
        i = int(np.flatnonzero(~found)[0])
        raise GraphError(f"{fname}, line {rows[i][0]}: {column} {_fmt_id(wanted[i])} is not a node of "
                         f"{nodes_file.name} (dangling node id; {int((~found).sum())} such reference(s))")
    return order[pos]


def _numeric(fname: Path, arr: np.ndarray, what: str, integer: bool = False) -> np.ndarray:
    """``arr`` when it holds real numbers (bool, int, float; for ``integer``, integral values); else a
    GraphError naming the file (a corrupt header may turn an array into text, complex or raw bytes)."""
    if arr.dtype.kind not in "biuf":
        raise GraphError(f"{fname}: {what} must be numbers, got dtype {arr.dtype} (corrupt or foreign file)")
    if integer and arr.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            if not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
                raise GraphError(f"{fname}: {what} must be integers")
    return arr


def _fmt_id(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


# ---------------------------------------------------------------- VesselGraph CSV
def _vesselgraph_pair(path: Path) -> tuple[Path, Path]:
    if path.is_dir():
        pairs = _vg_pair_in_dir(path)
        if len(pairs) != 1:
            names = ", ".join(p[0].name for p in pairs) or "none"
            raise GraphError(f"{path}: expected exactly one *_nodes*.csv / *_edges*.csv pair, found {names}")
        nodes, edges = pairs[0]
    elif "_nodes" in path.name:
        nodes, edges = path, path.with_name(_partner_name(path.name, "_nodes", "_edges"))
    elif "_edges" in path.name:
        nodes, edges = path.with_name(_partner_name(path.name, "_edges", "_nodes")), path
    elif not path.exists():  # a prefix
        nodes, edges = Path(f"{path}_nodes.csv"), Path(f"{path}_edges.csv")
    else:
        raise GraphError(f"{path}: cannot tell whether this is the nodes or the edges file of a VesselGraph "
                         "pair (names must contain _nodes / _edges)")
    for f, partner in ((nodes, edges), (edges, nodes)):
        if not f.exists():
            raise GraphFileNotFoundError(f"{f}: missing partner file of {partner} (VesselGraph graphs are a "
                                         "*_nodes.csv + *_edges.csv pair)")
    return nodes, edges


def _csv_header(fname: Path, rows: list[tuple[int, str]], required: Sequence[str]):
    if not rows:
        raise GraphError(f"{fname}: empty file (no header line)")
    header_line = rows[0][1]
    delimiter = ";" if ";" in header_line else ","
    names = [h.strip().strip('"').strip("'") for h in header_line.split(delimiter)]
    col = {n: i for i, n in enumerate(names)}
    missing = [r for r in required if r not in col]
    if missing:
        raise GraphError(f"{fname}, line {rows[0][0]}: missing column(s) {', '.join(missing)} "
                         f"(header has: {', '.join(names)})")
    return delimiter, col


def _read_vesselgraph(path: Path) -> tuple[VesselGraph, Path]:
    nodes_f, edges_f = _vesselgraph_pair(path)
    # nodes
    rows = _data_lines(nodes_f)
    need = ["id", "pos_x", "pos_y", "pos_z"]
    delim, col = _csv_header(nodes_f, rows, need)
    data_rows = rows[1:]
    opt = [c for c in ("isAtSampleBorder",) if c in col]
    table = _load_columns(nodes_f, data_rows, [col[c] for c in need + opt], need + opt, delim)
    if len(table) == 0:
        raise GraphError(f"{nodes_f}: no node rows (empty graph)")
    ids, pos = table[:, 0], table[:, 1:4]
    _check_finite(nodes_f, pos, data_rows, "coordinates")
    _check_finite(nodes_f, ids, data_rows, "node id")
    sids, order = _id_index(nodes_f, ids, data_rows)
    node_attrs = {"at_border": table[:, 4] != 0} if opt else {}
    # edges
    erows = _data_lines(edges_f)
    need_e = ["node1id", "node2id", "avgRadiusAvg"]
    delim_e, col_e = _csv_header(edges_f, erows, need_e)
    edata = erows[1:]
    opt_e = [c for c in ("length", "curveness") if c in col_e]
    et = _load_columns(edges_f, edata, [col_e[c] for c in need_e + opt_e], need_e + opt_e, delim_e)
    if len(et) == 0:
        raise GraphError(f"{edges_f}: no edge rows (empty graph)")
    a = _lookup(edges_f, sids, order, et[:, 0], edata, "node1id", nodes_f)
    b = _lookup(edges_f, sids, order, et[:, 1], edata, "node2id", nodes_f)
    radius = et[:, 2]
    _check_radius(edges_f, radius, edata, "avgRadiusAvg")
    edge_attrs = {name: et[:, 3 + i].copy() for i, name in enumerate(opt_e)}
    g = VesselGraph(pos, np.stack([a, b], axis=1), radius, node_attrs, edge_attrs)
    return g, nodes_f


# ---------------------------------------------------------------- ClearMap
def _load_npy(f: Path) -> np.ndarray:
    try:
        return np.load(f, allow_pickle=False)
    except FileNotFoundError as exc:
        raise GraphFileNotFoundError(f"{f}: missing (a ClearMap graph folder needs {', '.join(CLEARMAP_FILES)})") from exc
    except Exception as exc:  # numpy raises many types for damaged headers (SyntaxError, EOFError, OverflowError...)
        raise GraphError(f"{f}: not a readable .npy array ({type(exc).__name__}: {exc})") from exc


def _read_clearmap(path: Path) -> tuple[VesselGraph, Path]:
    folder = path if path.is_dir() else path.parent
    vf, ef, rf, gf = (folder / n for n in CLEARMAP_FILES + ("region_for_vertices.npy",))
    vertices, edges, radius = _load_npy(vf), _load_npy(ef), _load_npy(rf)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise GraphError(f"{vf}: expected an (N, 3) array of positions, got shape {vertices.shape}")
    if edges.ndim != 2 or edges.shape[1] != 2:
        raise GraphError(f"{ef}: expected an (E, 2) array of vertex indices, got shape {edges.shape}")
    radius = radius.reshape(-1) if radius.ndim == 2 and 1 in radius.shape else radius
    if radius.ndim != 1 or len(radius) != len(edges):
        raise GraphError(f"{rf}: expected {len(edges)} radii (one per row of {ef.name}), got shape {radius.shape}")
    if len(vertices) == 0 or len(edges) == 0:
        raise GraphError(f"{folder}: empty graph ({len(vertices)} vertices, {len(edges)} edges)")
    vertices = _numeric(vf, vertices, "positions").astype(np.float64)
    bad = ~np.isfinite(vertices).all(axis=1)
    if bad.any():
        raise GraphError(f"{vf}: row {int(np.flatnonzero(bad)[0])} has NaN or infinite coordinates "
                         f"({bad.sum()} row(s) affected)")
    _numeric(ef, edges, "vertex indices", integer=True)
    if edges.dtype.kind == "u" and edges.size and edges.max() > np.iinfo(np.int64).max:
        edges = np.minimum(edges, len(vertices))  # beyond int64: dangling anyway, reported below
    edges = edges.astype(np.int64)
    bad = ((edges < 0) | (edges >= len(vertices))).any(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise GraphError(f"{ef}: row {i} refers to vertex {tuple(edges[i].tolist())} but {vf.name} holds "
                         f"{len(vertices)} vertices (dangling index; {bad.sum()} row(s) affected)")
    radius = _numeric(rf, radius, "radii").astype(np.float64)
    _check_radius(rf, radius, None, "radius")
    node_attrs = {}
    if gf.exists():
        region = _load_npy(gf)
        region = region.reshape(-1) if region.ndim == 2 and 1 in region.shape else region
        if region.ndim != 1 or len(region) != len(vertices):
            raise GraphError(f"{gf}: expected {len(vertices)} region ids (one per vertex), got shape {region.shape}")
        _numeric(gf, region, "region ids", integer=True)
        node_attrs = {"region": region.astype(np.int64), "outside_brain": region == 0}
    return VesselGraph(vertices, edges, radius, node_attrs), folder


# ---------------------------------------------------------------- Secomb .dat
_SEG_RE = re.compile(r"^\s*(\d+)\s+total\s+number\s+of\s+segments", re.I)
_NODE_RE = re.compile(r"^\s*(\d+)\s+total\s+number\s+of\s+nodes", re.I)
_ANY_COUNT_RE = re.compile(r"^\s*\d+\s+total\s+number\s+of\b", re.I)  # starts a section


def _find_col(fname: Path, lineno: int, header: list[str], want: str, prefix: bool = False,
              required: bool = True) -> int | None:
    for i, h in enumerate(header):
        h = h.lower()
        if h == want or (prefix and h.startswith(want)):
            return i
    if required:
        raise GraphError(f"{fname}, line {lineno}: missing column {want!r} in header {' '.join(header)!r}")
    return None


def _section(fname: Path, rows: list[tuple[int, str]], regex: re.Pattern, start: int, what: str):
    """Find the '<count> total number of <what>' line at or after ``start``: (its row index, the count,
    the header's column names, the data rows). The data rows run up to the next '<count> total number
    of ...' line or the end of the file, and their number must equal the announced count."""
    for k in range(start, len(rows)):
        m = regex.match(rows[k][1])
        if m:
            try:
                n = int(m.group(1))
            except ValueError:  # more digits than Python converts (4300)
                raise GraphError(f"{fname}, line {rows[k][0]}: {what} count {m.group(1)[:20]}... is not a "
                                 "usable number") from None
            if k + 1 >= len(rows):
                raise GraphError(f"{fname}, line {rows[k][0]}: file ends before the {what} header line")
            header = rows[k + 1][1].split()
            end = next((i for i in range(k + 2, len(rows)) if _ANY_COUNT_RE.match(rows[i][1])), len(rows))
            body = rows[k + 2: end]
            if len(body) != n:
                span = f"lines {body[0][0]}-{body[-1][0]}" if body else "none"
                if len(body) < n:
                    problem = (f"but the {what} section holds only {len(body)} row(s) after its header ({span}): "
                               "the file is truncated or the count is wrong")
                else:
                    problem = (f"but {len(body)} rows follow its header ({span}, up to the next "
                               "'total number of' line or the end of the file): correct the count line or "
                               "remove the extra rows")
                raise GraphError(f"{fname}, line {rows[k][0]}: announces {n} {what} {problem}")
            return k, n, header, body
    raise GraphError(f"{fname}: no line '<count> total number of {what}' found (not a Secomb network file?)")


def _read_secomb(path: Path) -> tuple[VesselGraph, Path]:
    rows = _data_lines(path)
    k, n_seg, sh, seg_rows = _section(path, rows, _SEG_RE, 0, "segments")
    hl = rows[k + 1][0]
    c_from = _find_col(path, hl, sh, "from")
    c_to = _find_col(path, hl, sh, "to")
    c_diam = _find_col(path, hl, sh, "diam", prefix=True)
    opt = {name: _find_col(path, hl, sh, key, prefix=True, required=False)
           for name, key in (("type", "typ"), ("flow", "flow"), ("hd", "hd"))}
    opt = {n: c for n, c in opt.items() if c is not None}
    seg = _load_columns(path, seg_rows, [c_from, c_to, c_diam, *opt.values()], ["from", "to", "diam", *opt], None)
    k2, n_nodes, nh, node_rows = _section(path, rows, _NODE_RE, k + 2 + n_seg, "nodes")
    hl2 = rows[k2 + 1][0]
    cols = [_find_col(path, hl2, nh, c) for c in ("name", "x", "y", "z")]
    nodes = _load_columns(path, node_rows, cols, ["name", "x", "y", "z"], None)
    if n_nodes == 0 or n_seg == 0:
        raise GraphError(f"{path}: empty graph ({n_nodes} nodes, {n_seg} segments)")
    _check_finite(path, nodes[:, 1:], node_rows, "coordinates")
    sids, order = _id_index(path, nodes[:, 0], node_rows, "node name")
    a = _lookup(path, sids, order, seg[:, 0], seg_rows, "from", path)
    b = _lookup(path, sids, order, seg[:, 1], seg_rows, "to", path)
    _check_radius(path, seg[:, 2], seg_rows, "diameter")
    attrs = {n: seg[:, 3 + i].copy() for i, n in enumerate(opt)}
    if "type" in attrs and np.all(attrs["type"] == np.round(attrs["type"])):
        attrs["type"] = attrs["type"].astype(np.int64)
    return VesselGraph(nodes[:, 1:], np.stack([a, b], 1), seg[:, 2] / 2.0, {}, attrs), path


# ---------------------------------------------------------------- GraphML / GML
_NUM_RE = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)", re.I)


def _float(path: Path, value, what: str) -> float:
    """``float(value)``, or a GraphError naming the file and what the value is."""
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        raise GraphError(f"{path}: {what} is {str(value)[:40]!r}, not a number") from None


def _pos_of(path: Path, node, data: dict) -> list[float]:
    if all(c in data for c in ("x", "y", "z")):
        return [_float(path, data[c], f"coordinate {c!r} of node {node}") for c in ("x", "y", "z")]
    if "pos" in data:
        p = data["pos"]
        if isinstance(p, str):
            p = _NUM_RE.findall(p)
        elif not isinstance(p, (list, tuple)):
            p = [p]
        vals = [_float(path, v, f"'pos' of node {node}") for v in p]
        if len(vals) != 3:
            raise GraphError(f"{path}: node {node} has a 'pos' attribute of {len(vals)} numbers, need 3 (x, y, z um)")
        return vals
    raise GraphError(f"{path}: node {node} has no position: needs attributes 'x', 'y', 'z' (um) or 'pos'")


def _read_networkx(path: Path, fmt: str) -> tuple[VesselGraph, Path]:
    import networkx as nx

    if not path.exists():
        raise GraphFileNotFoundError(f"{path}: no such file")
    try:
        g = nx.read_graphml(path) if fmt == "graphml" else nx.read_gml(path, label="id")
    except Exception as exc:  # networkx / xml parse errors carry the detail (and the line, where known)
        raise GraphError(f"{path}: not a readable {fmt.upper()} graph ({exc})") from exc
    index = {n: i for i, n in enumerate(g.nodes)}
    ndata = [g.nodes[n] for n in g.nodes]
    nodes = np.array([_pos_of(path, n, d) for n, d in zip(g.nodes, ndata)], dtype=np.float64).reshape(-1, 3)
    bad = ~np.isfinite(nodes).all(axis=1)
    if bad.any():
        raise GraphError(f"{path}: node {list(g.nodes)[int(np.flatnonzero(bad)[0])]} has NaN or infinite coordinates")
    edges, radius, edata = [], [], []
    for a, b, d in g.edges(data=True):
        if "radius" not in d:
            raise GraphError(f"{path}: edge ({a}, {b}) has no 'radius' attribute (um)")
        r = _float(path, d["radius"], f"the radius of edge ({a}, {b})")
        if not (np.isfinite(r) and r > 0):
            raise GraphError(f"{path}: edge ({a}, {b}) has radius {r:g}, not a positive number")
        edges.append((index[a], index[b]))
        radius.append(r)
        edata.append(d)
    dtypes = _json_attr(path, g.graph.get("octasim_dtypes"), {}, "octasim_dtypes")
    skip_n = {"x", "y", "z", "pos"} | ({"label"} if fmt == "gml" else set())
    node_attrs = {k: _as_array(v, dtypes.get(f"node:{k}")) for k, v in common_scalar_attrs(ndata, skip_n).items()}
    edge_attrs = {k: _as_array(v, dtypes.get(f"edge:{k}")) for k, v in common_scalar_attrs(edata, {"radius"}).items()}
    meta = _json_attr(path, g.graph.get("octasim_meta"), {}, "octasim_meta")
    return VesselGraph(nodes, np.array(edges, np.int64).reshape(-1, 2), np.array(radius, float),
                       node_attrs, edge_attrs, meta), path


def _json_attr(path: Path, text, default: dict, name: str) -> dict:
    """The JSON object stored as ``name`` (a graph attribute or the npz's ``meta``), or ``default``."""
    if text is None:
        return default
    try:
        value = json.loads(text)
    except (TypeError, ValueError, RecursionError) as exc:
        raise GraphError(f"{path}: {name} is not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise GraphError(f"{path}: {name} must be a JSON object ({{...}}), got {type(value).__name__}")
    return value


def _as_array(values: list, dtype: str | None) -> np.ndarray:
    arr = np.asarray(values)
    if dtype is not None:
        try:
            arr = arr.astype(dtype)
        except (TypeError, ValueError, OverflowError):  # a foreign or damaged dtype note: keep the values
            pass
    return arr


# ---------------------------------------------------------------- npz
def _read_npz(path: Path) -> tuple[VesselGraph, Path]:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError as exc:
        raise GraphFileNotFoundError(f"{path}: no such file") from exc
    except Exception as exc:  # zipfile, zlib and numpy raise many types for damaged archives
        raise GraphError(f"{path}: not a readable .npz archive ({type(exc).__name__}: {exc})") from exc
    raw = sorted(k for k, v in arrays.items() if not isinstance(v, np.ndarray))
    if raw:  # np.load hands out members not named *.npy as raw bytes
        raise GraphError(f"{path}: member(s) {', '.join(map(repr, raw))} are not .npy arrays (corrupt archive)")
    missing = [k for k in ("nodes", "edges", "radius") if k not in arrays]
    if missing:
        raise GraphError(f"{path}: missing array(s) {', '.join(missing)} (has: {', '.join(sorted(arrays))})")
    nodes, edges = arrays["nodes"], arrays["edges"]
    if nodes.ndim != 2 or nodes.shape[1] != 3:
        raise GraphError(f"{path}: 'nodes' must be (N, 3), got shape {nodes.shape}")
    if edges.ndim != 2 or edges.shape[1] != 2:
        raise GraphError(f"{path}: 'edges' must be (E, 2), got shape {edges.shape}")
    _numeric(path, nodes, "'nodes'")
    _numeric(path, edges, "'edges' (node indices)", integer=True)
    _numeric(path, arrays["radius"], "'radius'")
    meta = _json_attr(path, str(arrays["meta"]), {}, "'meta'") if "meta" in arrays else {}
    node_attrs = {k[len("node_attr__"):]: v for k, v in arrays.items() if k.startswith("node_attr__")}
    edge_attrs = {k[len("edge_attr__"):]: v for k, v in arrays.items() if k.startswith("edge_attr__")}
    try:
        g = VesselGraph(nodes, edges, arrays["radius"], node_attrs, edge_attrs, meta)
    except GraphError as exc:
        raise GraphError(f"{path}: {exc}") from exc
    return g, path


# ======================================================================= writing
def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"meta value of type {type(obj).__name__} is not JSON serialisable")


def _format_for_write(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        fmt = fmt.lower()
        if fmt not in FORMATS:
            raise GraphError(f"{path}: unknown graph format {fmt!r} (choose from {', '.join(FORMATS)})")
        return fmt
    suffix = path.suffix.lower()
    if suffix in _SUFFIX:
        return _SUFFIX[suffix]
    if path.is_dir():
        return "clearmap"
    raise GraphError(f"{path}: cannot tell the graph format from the name; use a suffix "
                     f"({', '.join(_SUFFIX)}) or pass fmt= (one of {', '.join(FORMATS)})")


def write_graph(graph: VesselGraph, path: str | Path, fmt: str | None = None,
                voxel_size_um: float | None = None) -> Path:
    """Write ``graph`` (um) to ``path`` in ``fmt`` (default: from the suffix); every file atomically.

    vesselgraph: ``path`` is the nodes file or a prefix: writes ``<prefix>_nodes.csv`` and
    ``<prefix>_edges.csv`` and returns the nodes file. clearmap: ``path`` is the folder (created).
    voxel_size_um: for the voxel formats, positions and radii are written divided by it (default 1).
    """
    path = Path(path)
    fmt = _format_for_write(path, fmt)
    graph.validate(source=f"graph to write to {path}")
    vs = 1.0 if voxel_size_um is None else float(voxel_size_um)
    if not (np.isfinite(vs) and vs > 0):
        raise ValueError(f"voxel size must be a positive number of um, got {voxel_size_um}")
    if fmt == "vesselgraph":
        return _write_vesselgraph(graph, path, vs)
    if fmt == "clearmap":
        return _write_clearmap(graph, path, vs)
    if fmt == "secomb":
        return _write_text(path, _secomb_text(graph))
    if fmt in ("graphml", "gml"):
        return _write_networkx(graph, path, fmt)
    return _write_npz(graph, path)


def _write_text(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def _table(columns: Sequence[np.ndarray], fmts: Sequence[str], delimiter: str) -> str:
    """Rows of formatted numbers (vectorized with np.char.mod)."""
    if not len(columns[0]):
        return ""
    parts = [np.char.mod(f, c) for f, c in zip(fmts, columns)]
    joined = parts[0]
    for p in parts[1:]:
        joined = np.char.add(np.char.add(joined, delimiter), p)
    return "\n".join(joined.tolist()) + "\n"


def _write_vesselgraph(g: VesselGraph, path: Path, vs: float) -> Path:
    if path.is_dir():
        prefix = path / "graph"
    else:
        name = path.name
        for tag in ("_nodes", "_edges"):
            if tag in name:
                name = name[: name.rfind(tag)]
                break
        else:
            name = path.stem if path.suffix.lower() == ".csv" else name
        prefix = path.with_name(name)
    nodes_f, edges_f = Path(f"{prefix}_nodes.csv"), Path(f"{prefix}_edges.csv")
    deg = g.degrees()
    border = g.node_attrs.get("at_border", np.zeros(g.n_nodes, bool)).astype(bool).astype(np.int64)
    pos = g.nodes / vs
    ids = np.arange(g.n_nodes)
    ntext = "id;pos_x;pos_y;pos_z;degree;isAtSampleBorder\n" + _table(
        [ids, pos[:, 0], pos[:, 1], pos[:, 2], deg, border], ["%d", "%.12g", "%.12g", "%.12g", "%d", "%d"], ";")
    dist = g.edge_lengths() / vs
    length = g.edge_attrs["length"] / vs if "length" in g.edge_attrs else dist
    curve = g.edge_attrs["curveness"] if "curveness" in g.edge_attrs else np.divide(
        length, dist, out=np.ones_like(dist), where=dist > 0)
    etext = "id;node1id;node2id;length;distance;curveness;avgRadiusAvg;node1_degree;node2_degree\n" + _table(
        [np.arange(g.n_edges), g.edges[:, 0], g.edges[:, 1], length, dist, curve, g.radius / vs,
         deg[g.edges[:, 0]], deg[g.edges[:, 1]]],
        ["%d", "%d", "%d", "%.12g", "%.12g", "%.12g", "%.12g", "%d", "%d"], ";")
    _write_text(edges_f, etext)
    _write_text(nodes_f, ntext)
    return nodes_f


def _write_clearmap(g: VesselGraph, folder: Path, vs: float) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"vertices.npy": g.nodes / vs, "edges.npy": g.edges, "radius_for_edges.npy": g.radius / vs}
    if "region" in g.node_attrs:
        arrays["region_for_vertices.npy"] = g.node_attrs["region"].astype(np.int64)
    elif "outside_brain" in g.node_attrs:
        arrays["region_for_vertices.npy"] = np.where(g.node_attrs["outside_brain"].astype(bool), 0, 1)
    for name, arr in arrays.items():
        with atomic_path(folder / name) as tmp:
            np.save(tmp, arr)
    return folder


def _secomb_text(g: VesselGraph) -> str:
    lo, hi = g.bounding_box()
    ext = np.maximum(hi - lo, 1.0)
    deg = g.degrees()
    typ = g.edge_attrs.get("type", np.full(g.n_edges, 4)).astype(np.int64)
    flow = g.edge_attrs.get("flow", np.zeros(g.n_edges)).astype(float)
    hd = g.edge_attrs.get("hd", np.full(g.n_edges, 0.45)).astype(float)
    lines = [
        f"octasim vessel graph ({g.n_nodes} nodes, {g.n_edges} segments), units um",
        f"{ext[0]:.6f} {ext[1]:.6f} {ext[2]:.6f}  box dimensions in microns",
        "10 10 10  number of tissue points in x,y,z directions",
        "10.0  outer bound distance",
        f"{max(float(np.ceil(g.edge_lengths().max())), 1.0):.1f}  max. segment length",
        f"{int(deg.max())}  maximum number of segments per node",
        f"{g.n_edges}  total number of segments",
        "name type from to diam flow[nl/min] HD",
    ]
    seg = _table([np.arange(1, g.n_edges + 1), typ, g.edges[:, 0] + 1, g.edges[:, 1] + 1, 2.0 * g.radius, flow, hd],
                 ["%d", "%d", "%d", "%d", "%.12g", "%.12g", "%.12g"], " ")
    node = _table([np.arange(1, g.n_nodes + 1), g.nodes[:, 0], g.nodes[:, 1], g.nodes[:, 2]],
                  ["%d", "%.12g", "%.12g", "%.12g"], " ")
    ends = np.flatnonzero(deg == 1)
    bnd = _table([ends + 1, np.zeros(len(ends)), np.zeros(len(ends)), np.full(len(ends), 0.45)],
                 ["%d", "%d", "%g", "%g"], " ")
    return ("\n".join(lines) + "\n" + seg + f"{g.n_nodes}  total number of nodes\nname x y z\n" + node
            + f"{len(ends)}  total number of boundary nodes\nname bctyp bcprfl bchd\n" + bnd)



def _write_networkx(g: VesselGraph, path: Path, fmt: str) -> Path:
    import networkx as nx

    for kind, attrs in (("node", g.node_attrs), ("edge", g.edge_attrs)):
        for name, arr in attrs.items():
            if arr.ndim != 1 or arr.dtype.kind not in "biufU":
                raise GraphError(f"{path}: {kind} attribute {name!r} (dtype {arr.dtype}, shape {arr.shape}) "
                                 f"cannot be stored in {fmt.upper()}; use .npz")
    reserved_n = {"x", "y", "z", "pos", "label", "id"}
    clash = reserved_n.intersection(g.node_attrs) | {"radius"}.intersection(g.edge_attrs)
    if clash:
        raise GraphError(f"{path}: attribute name(s) {', '.join(sorted(clash))} are reserved in {fmt.upper()}")
    nx_g = nx.MultiGraph()
    nx_g.graph["octasim_meta"] = json.dumps(g.meta, default=_json_default)
    nx_g.graph["octasim_dtypes"] = json.dumps(
        {**{f"node:{k}": v.dtype.str for k, v in g.node_attrs.items()},
         **{f"edge:{k}": v.dtype.str for k, v in g.edge_attrs.items()}})
    nattr = {k: v.tolist() for k, v in g.node_attrs.items()}
    eattr = {k: v.tolist() for k, v in g.edge_attrs.items()}
    xyz = g.nodes.tolist()
    nx_g.add_nodes_from((i, {"x": p[0], "y": p[1], "z": p[2], **{k: v[i] for k, v in nattr.items()}})
                        for i, p in enumerate(xyz))
    r = g.radius.tolist()
    nx_g.add_edges_from((int(a), int(b), {"radius": r[e], **{k: v[e] for k, v in eattr.items()}})
                        for e, (a, b) in enumerate(g.edges.tolist()))
    try:
        with atomic_path(path) as tmp:
            if fmt == "graphml":
                nx.write_graphml(nx_g, tmp)
            else:
                nx.write_gml(nx_g, tmp)
    except nx.NetworkXError as exc:
        raise GraphError(f"{path}: cannot write {fmt.upper()} ({exc})") from exc
    return path


def _write_npz(g: VesselGraph, path: Path) -> Path:
    arrays: dict[str, Any] = {"nodes": g.nodes, "edges": g.edges, "radius": g.radius,
                              "meta": np.array(json.dumps(g.meta, default=_json_default))}
    for k, v in g.node_attrs.items():
        if v.dtype == object:
            raise GraphError(f"{path}: node attribute {k!r} has dtype object; store numbers, bools or strings")
        arrays[f"node_attr__{k}"] = v
    for k, v in g.edge_attrs.items():
        if v.dtype == object:
            raise GraphError(f"{path}: edge attribute {k!r} has dtype object; store numbers, bools or strings")
        arrays[f"edge_attr__{k}"] = v
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, **arrays)
    return path
