"""Voxelizer tests on geometry whose answer is known."""
import numpy as np
import pytest
from scipy import ndimage

from octasim.graph import GraphError, VesselGraph
from octasim.voxelize import VoxelMaps, voxelize


def tube(p0, p1, r):
    return VesselGraph(np.array([p0, p1], float), np.array([[0, 1]]), np.array([float(r)]))


def graph(segments):
    """segments: list of (p0, p1, r) -> graph with one edge per segment."""
    nodes = np.array([p for s in segments for p in s[:2]], float)
    edges = np.arange(len(nodes)).reshape(-1, 2)
    return VesselGraph(nodes, edges, np.array([s[2] for s in segments], float))


def centres(shape, vs):
    """(X, Y, Z, 3) voxel centre coordinates, um."""
    axes = [(np.arange(n) + 0.5) * vs for n in shape]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)


def seg_dist(pts, p0, p1):
    """Distance (um) from points (..., 3) to the segment p0-p1."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    u = p1 - p0
    t = np.clip(((pts - p0) @ u) / max(u @ u, 1e-12), 0, 1)
    return np.linalg.norm(pts - p0 - t[..., None] * u, axis=-1)


def capsule_voxels(r, length, vs):
    return (np.pi * r ** 2 * length + 4 / 3 * np.pi * r ** 3) / vs ** 3


@pytest.mark.parametrize("direction, orient", [("lateral", 1.0), ("diving", 0.0)])
def test_straight_tube_count_radius_orientation(direction, orient):
    r, length, vs = 5.0, 40.0, 1.0
    if direction == "lateral":
        g = tube((10.0, 20.3, 19.7), (50.0, 20.3, 19.7), r)
    else:
        g = tube((20.3, 19.7, 10.0), (20.3, 19.7, 50.0), r)
    m = voxelize(g, (60, 40, 60), vs)
    assert isinstance(m, VoxelMaps) and m.shape == (60, 40, 60) and m.voxel_size_um == vs
    assert m.label.dtype == np.uint8 and m.radius.dtype == np.float32
    assert m.orientation.dtype == np.float32 and m.lower_wall.dtype == bool and m.occupancy is None
    inside = m.label == 1
    # tolerance: 5 % of the analytic capsule volume
    assert inside.sum() == pytest.approx(capsule_voxels(r, length, vs), rel=0.05)
    assert np.all(m.radius[inside] == r) and np.all(m.radius[~inside] == 0)
    assert np.allclose(m.orientation[inside], orient) and np.all(m.orientation[~inside] == 0)
    assert set(np.unique(m.label)) == {0, 1}


def test_matches_brute_force_capsules():
    """Label = union of capsules at voxel centres; radius = largest containing capsule."""
    rng = np.random.default_rng(3)
    vs, shape = 1.5, (24, 20, 22)
    segs = [(rng.uniform(-5, 35, 3), rng.uniform(-5, 35, 3), rng.uniform(1.6, 6.0)) for _ in range(25)]
    m = voxelize(graph(segs), shape, vs)
    c = centres(shape, vs)
    d = np.stack([seg_dist(c, a, b) for a, b, _ in segs])  # (E, X, Y, Z)
    radii = np.array([s[2] for s in segs])[:, None, None, None]
    ins = d <= radii
    expected_label = ins.any(0)
    # radii >= 1 voxel: no extra centre-line voxels, so the label is exactly the capsule union
    np.testing.assert_array_equal(m.label.astype(bool), expected_label)
    expected_radius = np.where(ins, radii, 0).max(0)
    np.testing.assert_allclose(m.radius, expected_radius, rtol=1e-6)


def test_subvoxel_oblique_tube_is_one_26_connected_line():
    vs = 2.0
    g = tube((3.1, 4.7, 5.3), (71.0, 52.0, 93.0), 0.3 * vs)
    m = voxelize(g, (40, 40, 50), vs)
    _, n = ndimage.label(m.label, structure=np.ones((3, 3, 3)))
    assert n == 1
    # the voxels holding both end points are part of it
    assert m.label[1, 2, 2] == 1 and m.label[35, 26, 46] == 1
    assert np.all(m.radius[m.label == 1] == pytest.approx(0.6))


def test_thin_axis_aligned_tube_between_voxel_centres():
    """r = 0.2 voxel, axis between voxel centres: still exactly the row of voxels it passes through."""
    m = voxelize(tube((3.0, 9.9, 10.1), (37.0, 9.9, 10.1), 0.4), (20, 10, 10), 2.0)
    expected = np.zeros(m.shape, dtype=np.uint8)
    expected[1:19, 4, 5] = 1  # x 3..37 um -> voxels 1..18; y 9.9 um -> 4; z 10.1 um -> 5
    np.testing.assert_array_equal(m.label, expected)
    np.testing.assert_array_equal(m.lower_wall, expected.astype(bool))


def test_thin_polyline_stays_connected():
    rng = np.random.default_rng(0)
    pts = np.cumsum(rng.normal(0, 6, size=(30, 3)), axis=0) + 60
    assert pts.min() > 0 and pts.max() < 160  # stays inside the volume
    g = VesselGraph(pts, np.stack([np.arange(29), np.arange(1, 30)], 1), np.full(29, 0.5))
    m = voxelize(g, (80, 80, 80), 2.0)
    assert m.label.sum() >= 29
    _, n = ndimage.label(m.label, structure=np.ones((3, 3, 3)))
    assert n == 1


def test_edge_crossing_border_is_clipped_and_outside_edge_skipped():
    vs, r = 1.0, 3.0
    g = graph([((-20.0, 10.2, 9.8), (12.0, 10.2, 9.8), r),     # enters through the x = 0 face
               ((-50.0, -50.0, -50.0), (-30.0, -40.0, -45.0), r)])  # entirely outside
    m = voxelize(g, (20, 20, 20), vs)
    assert m.label[0, 10, 9] == 1  # border voxel on the axis
    assert m.label[:, :, :].any(axis=(1, 2))[0]
    # inside part: a cylinder of length 12 um plus one round cap
    expected = (np.pi * r ** 2 * 12.0 + 2 / 3 * np.pi * r ** 3) / vs ** 3
    assert m.label.sum() == pytest.approx(expected, rel=0.08)
    # edge crossing the whole volume with both ends outside
    m2 = voxelize(tube((10.0, 10.0, -30.0), (10.0, 10.0, 60.0), 2.0), (20, 20, 20), vs)
    assert m2.label[9, 9, :].all() and m2.label.sum() == pytest.approx(np.pi * 4 * 20, rel=0.15)
    # only the outside edge -> empty
    m3 = voxelize(tube((-50.0, -50.0, -50.0), (-30.0, -40.0, -45.0), r), (20, 20, 20), vs)
    assert m3.label.sum() == 0


def test_overlap_thicker_wins():
    vs = 1.0
    thin = ((2.0, 20.0, 20.0), (38.0, 20.0, 20.0), 2.0)   # lateral, a = 1
    thick = ((20.0, 20.0, 2.0), (20.0, 20.0, 38.0), 6.0)  # diving, a = 0
    for order in ([thin, thick], [thick, thin]):
        m = voxelize(graph(order), (40, 40, 40), vs)
        c = centres(m.shape, vs)
        in_thick = seg_dist(c, *thick[:2]) <= 6.0
        in_thin_only = (seg_dist(c, *thin[:2]) <= 2.0) & ~in_thick
        assert np.all(m.radius[in_thick] == 6.0) and np.all(m.orientation[in_thick] == 0.0)
        assert np.all(m.radius[in_thin_only] == 2.0) and np.all(m.orientation[in_thin_only] == 1.0)
        assert in_thin_only.any()


def test_overlap_equal_radius_nearest_axis_wins():
    vs, r = 1.0, 4.0
    a = ((2.0, 15.0, 15.0), (28.0, 15.0, 15.0), r)   # lateral, a = 1
    b = ((5.0, 15.0, 5.0), (25.0, 15.0, 25.0), r)    # 45 deg, a = 0.5
    m = voxelize(graph([a, b]), (30, 30, 30), vs)
    c = centres(m.shape, vs)
    da, db = seg_dist(c, *a[:2]), seg_dist(c, *b[:2])
    both = (da <= r) & (db <= r)
    clear = both & (np.abs(da - db) > 0.01)
    assert clear.sum() > 20
    want = np.where(da < db, 1.0, 0.5)
    np.testing.assert_allclose(m.orientation[clear], want[clear], atol=1e-6)


def test_lower_wall_of_horizontal_tube():
    m = voxelize(tube((4.0, 10.3, 10.6), (36.0, 10.3, 10.6), 4.0), (40, 20, 20), 1.0)
    lab = m.label.astype(bool)
    cols = lab.any(axis=2)
    deepest = lab.shape[2] - 1 - np.argmax(lab[:, :, ::-1], axis=2)
    expected = np.zeros_like(lab)
    ii, jj = np.nonzero(cols)
    expected[ii, jj, deepest[ii, jj]] = True
    np.testing.assert_array_equal(m.lower_wall, expected)
    assert not (m.lower_wall[:, :, :-1] & lab[:, :, 1:]).any()  # nothing vessel right below
    assert not (m.lower_wall & ~lab).any()


def test_lower_wall_at_bottom_border():
    # a diving vessel through the whole depth: its only lower wall is the last slice
    m = voxelize(tube((10.0, 10.0, -10.0), (10.0, 10.0, 40.0), 3.0), (20, 20, 20), 1.0)
    lab = m.label.astype(bool)
    assert lab[:, :, 0].sum() == lab[:, :, -1].sum() > 20
    np.testing.assert_array_equal(m.lower_wall[:, :, -1], lab[:, :, -1])
    assert not m.lower_wall[:, :, :-1].any()


def test_occupancy_partial_volume():
    vs, r, length = 1.0, 5.0, 30.0
    g = tube((10.0, 15.3, 15.6), (40.0, 15.3, 15.6), r)
    m = voxelize(g, (50, 30, 30), vs, occupancy=True)
    occ = m.occupancy
    assert occ.dtype == np.float32 and occ.shape == m.shape
    assert occ.min() >= 0 and occ.max() <= 1
    assert occ[25, 15, 15] == 1.0
    frac = (occ > 0.05) & (occ < 0.95)
    assert frac.sum() > 100  # a fractional shell at the surface
    assert occ.sum() == pytest.approx(capsule_voxels(r, length, vs), rel=0.03)
    assert set(np.unique(m.label)) == {0, 1}
    # same label with and without occupancy
    np.testing.assert_array_equal(m.label, voxelize(g, m.shape, vs).label)


def test_occupancy_thin_vessel_volume():
    vs, r = 2.0, 0.8  # 0.4 voxel
    g = tube((10.3, 20.1, 20.7), (90.0, 70.0, 60.0), r)
    length = np.linalg.norm(np.subtract((90.0, 70.0, 60.0), (10.3, 20.1, 20.7)))
    m = voxelize(g, (50, 50, 50), vs, occupancy=True)
    assert m.occupancy.max() < 1.0
    assert m.occupancy.sum() == pytest.approx(capsule_voxels(r, length, vs), rel=0.1)


def test_empty_graph_gives_zero_maps():
    g = VesselGraph(np.zeros((0, 3)), np.zeros((0, 2), int), np.zeros(0))
    m = voxelize(g, (8, 9, 10), 2.0, occupancy=True)
    assert m.shape == (8, 9, 10)
    for arr in (m.label, m.radius, m.orientation, m.lower_wall, m.occupancy):
        assert arr.shape == (8, 9, 10) and not arr.any()


def test_bad_input_raises():
    g = tube((0.0, 0.0, 0.0), (5.0, 5.0, 5.0), 1.0)
    with pytest.raises(ValueError, match="shape"):
        voxelize(g, (10, 10), 1.0)
    with pytest.raises(ValueError, match="shape"):
        voxelize(g, (10, 0, 10), 1.0)
    with pytest.raises(ValueError, match="voxel size"):
        voxelize(g, (10, 10, 10), 0.0)
    bad = tube((0.0, np.nan, 0.0), (5.0, 5.0, 5.0), 1.0)
    with pytest.raises(GraphError, match="edge 0"):
        voxelize(bad, (10, 10, 10), 1.0)


@pytest.mark.parametrize("far", [1e18, 1e30])
def test_huge_edge_refused_before_allocating(far):
    g = graph([((0.0, 0.0, 0.0), (far, far, 5.0), 2.0), ((0.0, 0.0, 0.0), (10.0, 10.0, 10.0), 2.0)])
    with pytest.raises(GraphError, match=r"cannot voxelize: the edges would be cut into .* pieces .*limit 10,000,000"):
        voxelize(g, (16, 16, 16), 2.0)
