"""Property-based fuzzing of every reader: damaged copies of small valid files.

Each test starts from a small valid file written by the project's own writers (or nibabel / tifffile),
damages it (truncations, byte flips, inserted or deleted bytes, malformed numbers and header fields,
arrays of the wrong dtype or shape) and asserts that the reader either succeeds or raises its own
error (GraphError / VolumeError, both OctasimError) naming the file; any other exception fails.

Deterministic by default (``derandomize``, 40 examples a test, no example database written);
``OCTASIM_FUZZ_EXAMPLES=2000`` runs a longer, randomized search.
"""
from __future__ import annotations

import gzip
import os
import re
import shutil
import tempfile
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import networkx as nx
import nibabel as nib
import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from octasim.errors import OctasimError
from octasim.graph import GraphError, VesselGraph
from octasim.graph_io import read_graph, write_graph
from octasim.nifti import VolumeError, read_volume, write_volume
from octasim.tiff import read_tiff, write_tiff

_LONG = int(os.environ.get("OCTASIM_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=_LONG or 40, deadline=None, derandomize=not _LONG, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

#: values a corrupt or hand-edited text file may hold where a number belongs
MALFORMED = ["nan", "NaN", "inf", "-inf", "-1", "0", "-0", "1e400", "-1e400", "1e30", "1e-320", "", " ", "abc",
             "0x1f", "1,5", "1.2.3", "--1", "99999999999999999999999999", "1e", "+", "\x00", ";", ",", "\"", "<", "&",
             "]", "[", "#", "true", "None", "1_000", "\u0661", "3" * 5000]


# ======================================================================= fixtures
@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def graph() -> VesselGraph:
    """6 nodes, 7 edges (a ring and a chord), attributes of several dtypes; all values in range."""
    rng = np.random.default_rng(0)
    nodes = rng.uniform(0, 100, (6, 3)).round(3)
    edges = np.array([(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 0), (1, 4)])
    return VesselGraph(nodes, edges, rng.uniform(1, 5, len(edges)).round(3),
                       {"region": np.array([1, 1, 0, 2, 2, 1]), "at_border": np.array([1, 0, 0, 0, 0, 1], bool),
                        "outside_brain": np.array([0, 0, 1, 0, 0, 0], bool)},
                       {"kind": np.arange(len(edges)) % 3, "flow": np.linspace(0.1, 1.0, len(edges))},
                       {"seed": 1, "note": "fuzz template"})


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    return (np.random.default_rng(1).random((5, 6, 7)) * 100).astype(np.float32)


class Template:
    """A valid file (or folder) written once; :meth:`copy` gives a fresh copy to damage."""

    def __init__(self, folder: Path, entry: str):
        self.folder, self.entry = folder, entry

    @contextmanager
    def copy(self, base: Path) -> Iterator[Path]:
        """A fresh copy in its own folder (removed afterwards): the path the reader is given."""
        work = Path(tempfile.mkdtemp(dir=base))
        shutil.copytree(self.folder, work, dirs_exist_ok=True)
        try:
            yield work / self.entry
        finally:
            shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def templates(base, graph, volume) -> dict[str, Template]:
    out = {}
    for fmt, entry in [("npz", "g.npz"), ("graphml", "g.graphml"), ("gml", "g.gml"), ("secomb", "g.dat"),
                       ("vesselgraph", "g_nodes.csv"), ("clearmap", "cm")]:
        folder = base / f"template_{fmt}"
        folder.mkdir()
        write_graph(graph, folder / entry, fmt=fmt)
        read_graph(folder / entry)  # the template itself is valid
        out[fmt] = Template(folder, entry)
    for name in ("v.nii", "v.nii.gz"):
        folder = base / f"template_{name}"
        folder.mkdir()
        write_volume(folder / name, volume, spacing_um=(1.0, 1.0, 2.0))
        read_volume(folder / name)
        out[name] = Template(folder, name)
    folder = base / "template_tif"
    folder.mkdir()
    tifffile.imwrite(folder / "v.tif", (volume * 100).astype(np.uint16), photometric="minisblack")
    read_tiff(folder / "v.tif", 1.0)
    out["tif"] = Template(folder, "v.tif")
    for name, write in [("ij.tif", lambda f: write_tiff(f, volume, (0.5, 0.5, 2.0))),
                        ("ome.tif", lambda f: tifffile.imwrite(
                            f, np.stack([volume, volume], axis=1), ome=True,
                            metadata={"axes": "ZCYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5,
                                      "PhysicalSizeZ": 2000.0, "PhysicalSizeZUnit": "nm"}))]:
        folder = base / f"template_{name}"
        folder.mkdir()
        write(folder / name)
        read_tiff(folder / name, channel=0)  # calibrated: reads without a voxel size
        out[name] = Template(folder, name)
    return out


# ======================================================================= damage
@st.composite
def byte_damage(draw, data: bytes, text: bool = False) -> bytes:
    """1-4 edits: truncation, byte flip, inserted / deleted bytes; for text also malformed numbers
    and duplicated, dropped or swapped lines."""
    kinds = ["truncate", "flip", "flip", "insert", "delete"] + (["number", "number", "line"] if text else [])
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        if not out:
            break
        kind = draw(st.sampled_from(kinds))
        # positions anywhere, or within the first 512 bytes where binary headers lie
        i = draw(st.one_of(st.integers(0, len(out) - 1), st.integers(0, min(len(out), 512) - 1)))
        if kind == "truncate":
            del out[i:]
        elif kind == "flip":
            out[i] ^= draw(st.integers(1, 255))
        elif kind == "insert":
            out[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del out[i:i + draw(st.integers(1, 32))]
        elif kind == "number":
            s = out.decode("latin-1")
            tokens = list(re.finditer(r"[-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?", s))
            if tokens:
                m = tokens[draw(st.integers(0, len(tokens) - 1))]
                new = draw(st.one_of(st.sampled_from(MALFORMED), st.text(max_size=6)))
                out = bytearray((s[:m.start()] + new + s[m.end():]).encode("utf-8", "surrogatepass"))
        else:
            lines = out.split(b"\n")
            j = draw(st.integers(0, len(lines) - 1))
            op = draw(st.sampled_from(["dup", "drop", "swap"]))
            if op == "dup":
                lines.insert(j, lines[j])
            elif op == "drop":
                del lines[j]
            elif j + 1 < len(lines):
                lines[j], lines[j + 1] = lines[j + 1], lines[j]
            out = bytearray(b"\n".join(lines))
    return bytes(out)


#: arrays a damaged or foreign .npy / .npz may hold: any dtype numpy saves without pickling, any small shape
odd_arrays = hnp.arrays(
    dtype=st.one_of(hnp.scalar_dtypes(), hnp.unicode_string_dtypes(max_len=4), hnp.byte_string_dtypes(max_len=4)),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=8))


def damage_file(draw, f: Path, text: bool = False) -> None:
    f.write_bytes(draw(byte_damage(f.read_bytes(), text)))


# ======================================================================= checks
def reads_or_own_error(read: Callable[[], object], error: type[OctasimError], names: list[str]) -> None:
    """``read()`` succeeds, or raises ``error`` whose message names one of ``names``; any other
    exception propagates and fails the test."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy cast warnings, nibabel header notes
            read()
    except OctasimError as exc:
        assert isinstance(exc, error), f"{type(exc).__name__} instead of {error.__name__}: {exc}"
        assert any(n in str(exc) for n in names), f"message names none of {names}: {exc}"


def clearmap_names(folder: Path) -> list[str]:
    return [str(folder)] + [p.name for p in folder.iterdir()]


# ======================================================================= graph readers
@FUZZ
@given(data=st.data(), drop=st.booleans())
@pytest.mark.parametrize("fmt", ["secomb", "graphml", "gml"])
def test_text_graph_formats(templates, base, fmt, data, drop):
    with templates[fmt].copy(base) as entry:
        damage_file(data.draw, entry, text=True)
        reads_or_own_error(lambda: read_graph(entry, fmt=fmt, drop_outside=drop), GraphError, [entry.name])


@FUZZ
@given(data=st.data(), which=st.sampled_from(["g_nodes.csv", "g_edges.csv"]))
def test_vesselgraph_csv_pair(templates, base, data, which):
    with templates["vesselgraph"].copy(base) as entry:
        damage_file(data.draw, entry.with_name(which), text=True)
        reads_or_own_error(lambda: read_graph(entry), GraphError, ["g_nodes.csv", "g_edges.csv"])


@FUZZ
@given(data=st.data(), drop=st.booleans())
def test_npz_bytes(templates, base, data, drop):
    with templates["npz"].copy(base) as entry:
        damage_file(data.draw, entry)
        reads_or_own_error(lambda: read_graph(entry, drop_outside=drop), GraphError, [entry.name])


@FUZZ
@given(key=st.sampled_from(["nodes", "edges", "radius", "meta", "node_attr__outside_brain", "node_attr__region",
                            "edge_attr__kind"]),
       value=st.one_of(odd_arrays, st.sampled_from([np.array("[1, 2]"), np.array("5"), np.array("{"),
                                                    np.array(["{}", "{}"])])),
       drop=st.booleans())
def test_npz_malformed_arrays(templates, base, key, value, drop):
    with templates["npz"].copy(base) as entry:
        with np.load(entry) as z:
            arrays = dict(z)
        arrays[key] = value
        np.savez(entry, **arrays)
        reads_or_own_error(lambda: read_graph(entry, drop_outside=drop), GraphError, [entry.name])


CLEARMAP = ["vertices.npy", "edges.npy", "radius_for_edges.npy", "region_for_vertices.npy"]


@FUZZ
@given(data=st.data(), which=st.sampled_from(CLEARMAP), drop=st.booleans())
def test_clearmap_bytes(templates, base, data, which, drop):
    with templates["clearmap"].copy(base) as entry:
        damage_file(data.draw, entry / which)
        reads_or_own_error(lambda: read_graph(entry, drop_outside=drop), GraphError, clearmap_names(entry))


@FUZZ
@given(which=st.sampled_from(CLEARMAP), value=odd_arrays, drop=st.booleans())
def test_clearmap_malformed_arrays(templates, base, which, value, drop):
    with templates["clearmap"].copy(base) as entry:
        np.save(entry / which, value)
        reads_or_own_error(lambda: read_graph(entry, drop_outside=drop), GraphError, clearmap_names(entry))


# ======================================================================= volumes
@FUZZ
@given(data=st.data(), name=st.sampled_from(["v.nii", "v.nii.gz"]))
def test_nifti_bytes(templates, base, data, name):
    with templates[name].copy(base) as entry:
        damage_file(data.draw, entry)
        reads_or_own_error(lambda: read_volume(entry), VolumeError, [entry.name])


HEADER_FIELDS = [n for n in nib.nifti1.header_dtype.names if n not in ("magic",)]


@FUZZ
@given(field=st.sampled_from(HEADER_FIELDS + ["dim", "dim", "datatype", "bitpix", "vox_offset", "scl_slope"]),
       data=st.data(), name=st.sampled_from(["v.nii", "v.nii.gz"]))
def test_nifti_malformed_header_fields(templates, base, field, data, name):
    """One header field (dim, datatype, vox_offset, pixdim, qform ...) overwritten with arbitrary bytes."""
    dtype, offset = nib.nifti1.header_dtype.fields[field][:2]
    with templates[name].copy(base) as entry:
        gz = name.endswith(".gz")
        raw = bytearray(gzip.decompress(entry.read_bytes()) if gz else entry.read_bytes())
        raw[offset:offset + dtype.itemsize] = data.draw(st.binary(min_size=dtype.itemsize, max_size=dtype.itemsize))
        entry.write_bytes(gzip.compress(bytes(raw)) if gz else bytes(raw))
        reads_or_own_error(lambda: read_volume(entry), VolumeError, [entry.name])


@FUZZ
@given(data=st.data())
def test_tiff_bytes(templates, base, data):
    with templates["tif"].copy(base) as entry:
        damage_file(data.draw, entry)
        reads_or_own_error(lambda: read_tiff(entry, 1.0), VolumeError, [entry.name])


@FUZZ
@given(data=st.data(), name=st.sampled_from(["ij.tif", "ome.tif"]), text=st.booleans())
def test_calibrated_tiff_bytes(templates, base, data, name, text):
    """ImageJ / OME-TIFF files damaged anywhere, including their metadata text, read without --voxel-size."""
    with templates[name].copy(base) as entry:
        damage_file(data.draw, entry, text=text)
        reads_or_own_error(lambda: read_tiff(entry, channel=0), VolumeError, [entry.name])


@FUZZ
@given(head=st.sampled_from([b"", b"II*\x00", b"MM\x00*", b"II+\x00\x08\x00\x00\x00"]), body=st.binary(max_size=600),
       channel=st.sampled_from([None, 0, 1]), axes=st.sampled_from([None, "zyx", "zcyx"]))
def test_tiff_arbitrary_bytes(base, head, body, channel, axes):
    """Any bytes (also behind a TIFF / BigTIFF signature) give a TIFF or a VolumeError naming the file."""
    folder = Path(tempfile.mkdtemp(dir=base))
    try:
        (folder / "x.tif").write_bytes(head + body)
        reads_or_own_error(lambda: read_tiff(folder / "x.tif", channel=channel, axes=axes), VolumeError, ["x.tif"])
        reads_or_own_error(lambda: read_tiff(folder / "x.tif", 2.0, channel=channel), VolumeError, ["x.tif"])
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def tiff_tags(templates) -> list[tuple[int, int]]:
    """(offset, size) of every tag's value bytes and of its type and count fields, on every page of
    the TIFF template."""
    out = []
    with tifffile.TiffFile(templates["tif"].folder / "v.tif") as tif:
        for page in tif.pages:
            for tag in page.tags.values():
                out.append((tag.valueoffset, max(1, min(tag.valuebytecount, 16))))
                out.append((tag.offset + 2, 6))  # entry: code (2 bytes), type (2), count (4), value
    return out


@FUZZ
@given(data=st.data())
def test_tiff_malformed_tag_values(templates, base, tiff_tags, data):
    """One tag value (image size, strip offsets and byte counts, bits per sample ...) overwritten."""
    offset, size = data.draw(st.sampled_from(tiff_tags))
    with templates["tif"].copy(base) as entry:
        raw = bytearray(entry.read_bytes())
        raw[offset:offset + size] = data.draw(st.binary(min_size=size, max_size=size))
        entry.write_bytes(bytes(raw))
        reads_or_own_error(lambda: read_tiff(entry, 1.0), VolumeError, [entry.name])


# ======================================================================= regressions the fuzzing found
def _npz_with(path: Path, graph: VesselGraph, **changes) -> Path:
    write_graph(graph, path)
    with np.load(path) as z:
        arrays = {**dict(z), **changes}
    np.savez(path, **arrays)
    return path


def _nifti_field(path: Path, volume: np.ndarray, field: str, raw: bytes) -> Path:
    write_volume(path, volume, spacing_um=1.0)
    offset = nib.nifti1.header_dtype.fields[field][1]
    data = bytearray(path.read_bytes())
    data[offset:offset + len(raw)] = raw
    path.write_bytes(bytes(data))
    return path


def test_found_graph_reader_bugs(tmp_path, graph):
    """Each of these raised a bare TypeError / ValueError / OverflowError / zlib.error / EOFError."""
    cases = [
        (_npz_with(tmp_path / "attr.npz", graph, edge_attr__kind=np.array(3)), r"attr\.npz: edge attribute 'kind'"),
        (_npz_with(tmp_path / "text.npz", graph, radius=np.array(["1", "x"])), r"text\.npz: 'radius' must be numbers"),
        (_npz_with(tmp_path / "meta.npz", graph, meta=np.array("[1, 2]")), r"meta\.npz: 'meta' must be a JSON object"),
    ]
    deflated = write_graph(graph, tmp_path / "deflate.npz")  # damage the compressed stream of 'nodes'
    with zipfile.ZipFile(deflated) as z:
        head = z.getinfo("nodes.npy").header_offset
    raw = bytearray(deflated.read_bytes())
    name_len, extra_len = np.frombuffer(bytes(raw[head + 26: head + 30]), "<u2")  # local file header
    start = head + 30 + int(name_len) + int(extra_len)
    raw[start + 2: start + 12] = bytes(10)
    deflated.write_bytes(bytes(raw))
    cases.append((deflated, r"deflate\.npz: not a readable \.npz archive"))
    for cm, name, value, pattern in [
            ("cm1", "vertices.npy", np.full((6, 3), ""), r"vertices\.npy: positions must be numbers"),
            ("cm2", "edges.npy", None, r"edges\.npy: not a readable \.npy array")]:
        folder = write_graph(graph, tmp_path / cm, fmt="clearmap")
        if value is None:  # header cut in the middle
            (folder / name).write_bytes((folder / name).read_bytes()[:40])
        else:
            np.save(folder / name, value)
        cases.append((folder, pattern))
    g = nx.Graph(octasim_dtypes='{"edge:kind": "<i8"}')
    g.add_node(0, x="", y=1.0, z=2.0)
    g.add_node(1, x=1.0, y=1.0, z=2.0)
    g.add_edge(0, 1, radius=2.0)
    nx.write_graphml(g, tmp_path / "empty_x.graphml")
    cases.append((tmp_path / "empty_x.graphml", r"empty_x\.graphml: coordinate 'x' of node 0 is '', not a number"))
    g.nodes[0]["x"] = 0.0
    g.edges[0, 1]["kind"] = 10 ** 30  # more than int64 although the dtype note says <i8: kept as read
    nx.write_graphml(g, tmp_path / "big_int.graphml")
    assert read_graph(tmp_path / "big_int.graphml").edge_attrs["kind"][0] == 10 ** 30
    for path, pattern in cases:
        with pytest.raises(GraphError, match=pattern):
            read_graph(path)


@pytest.mark.parametrize("field, raw, pattern", [
    ("xyzt_units", b"\x04", r"xyzt_units \(4\) holds no valid NIfTI unit code"),  # was KeyError
    ("vox_offset", b"\x00\x00\x00\x5f", r"announces 5 x 6 x 7 voxels .* more than the file holds"),  # was OverflowError
    ("datatype", b"\x00\x10", r"truncated or corrupt \(HeaderDataError: data code 4096"),  # was HeaderDataError
    # 2000 x 2000 x 100 float32 voxels announced: refused before 1.6 GB are allocated and zero-filled
    ("dim", np.array([3, 2000, 2000, 100], "<i2").tobytes(), r"announces 2000 x 2000 x 100 voxels of float32"),
])
def test_found_nifti_reader_bugs(tmp_path, volume, field, raw, pattern):
    path = _nifti_field(tmp_path / "bad.nii", volume, field, raw)
    with pytest.raises(VolumeError, match=pattern) as err:
        read_volume(path)
    assert "bad.nii" in str(err.value)
