"""The shared inference path: image pyramid, mirror padding of shallow stacks, fusion of views."""
import numpy as np
import pytest
import torch

from octasim.inference import MAX_GAIN_CORRECTION, MIN_LUMEN_CONTRAST, ModelGrid, fills_window, finds_wide_vessels, \
    lateral_disk, local_brightness, lumen_contrast, predict_probability, pyramid_voxel_sizes, trained_voxel_range, \
    wide_part, widest_vessel_um


class ProbIsImage(torch.nn.Module):
    """A 'network' whose vessel probability is its input intensity."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, x):
        x = x.clamp(1e-4, 1 - 1e-4)
        return self.w * torch.log(x / (1 - x))


class NeedsContext(torch.nn.Module):
    """A 'network' that calls a bright voxel vessel only when its window also holds dark tissue, like a
    network whose window lies entirely inside a vessel wider than the window (a bright, textureless
    region it cannot place)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, x):
        sees_tissue = (x.amin(dim=(2, 3, 4), keepdim=True) < 0.5).float()
        return self.w * (20.0 * (x > 0.5).float() * sees_tissue - 10.0)


def test_pyramid_views_cover_the_widest_vessels_within_the_trained_range():
    # window 64 x 2 um = 128 um < 4 x 100 um: coarser views until the window spans 512 um
    assert pyramid_voxel_sizes(ModelGrid(2.0, (64,) * 3, max_voxel_size_um=8.0)) == [2.0, 4.0, 8.0]
    assert pyramid_voxel_sizes(ModelGrid(2.0, (64,) * 3, max_voxel_size_um=16.0)) == [2.0, 4.0, 8.0]
    assert pyramid_voxel_sizes(ModelGrid(1.0, (64,) * 3, max_voxel_size_um=8.0)) == [1.0, 2.0, 4.0, 8.0]
    # never coarser than the model was trained on: a single-scale model gets one view
    assert pyramid_voxel_sizes(ModelGrid(2.0, (64,) * 3, max_voxel_size_um=2.0)) == [2.0]
    assert pyramid_voxel_sizes(ModelGrid(1.0, (64,) * 3, max_voxel_size_um=3.0)) == [1.0, 2.0]
    # a view whose window the scan fills less than half of is not used (it would see mostly padding)
    grid = ModelGrid(2.0, (64,) * 3, max_voxel_size_um=8.0)
    assert pyramid_voxel_sizes(grid, extent_um=100.0) == [2.0]        # 4 um window: 256 um
    assert pyramid_voxel_sizes(grid, extent_um=192.0) == [2.0, 4.0]   # 8 um window: 512 um
    assert pyramid_voxel_sizes(grid, extent_um=509.0) == [2.0, 4.0, 8.0]


def test_trained_voxel_range_from_checkpoints_old_and_new():
    assert trained_voxel_range({"train_voxel_range_um": [1.0, 8.0]}) == (1.0, 8.0)
    old_otf = {"voxel_size_um": 1.5, "on_the_fly": True,
               "train_config": {"on_the_fly": {"synth_options": {"voxel_size_um": [1.0, 2.0]}}}}
    assert trained_voxel_range(old_otf) == (1.0, 2.0)
    assert trained_voxel_range({"voxel_size_um": 2.0}) == (2.0, 2.0)
    grid = ModelGrid.from_checkpoint({**old_otf, "patch_size": 32, "preprocessing": {"clip_percentiles": [1, 99]}})
    assert grid == ModelGrid(1.5, (32, 32, 32), (1.0, 99.0), 2.0)


class WindowMean(torch.nn.Module):
    """A 'network' whose vessel probability is the mean intensity of its whole window."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, x):
        m = x.mean(dim=(2, 3, 4), keepdim=True).clamp(1e-4, 1 - 1e-4).expand_as(x)
        return self.w * torch.log(m / (1 - m))


def test_shallow_stack_is_padded_dark_as_in_training():
    """A bright stack of 6 slices seen through a 16-voxel window: the 10 planes beyond the stack are
    dark (0, as ``RandDepthSlabd`` shows slabs in training), not a mirror or a repeat of the stack."""
    vol = np.full((24, 24, 6), 0.8, np.float32)
    vol[0, 0, 0] = 0.0
    prob = predict_probability(WindowMean(), vol, (2.0, 2.0, 2.0), ModelGrid(2.0, (16, 16, 16), (0.0, 100.0)),
                               torch.device("cpu"))
    assert prob.shape == vol.shape
    np.testing.assert_allclose(prob[8:16, 8:16], 6 / 16, atol=0.01)


def test_coarse_view_fills_wide_vessels_but_does_not_widen_thin_ones():
    """A 'network' that needs context: on the fine grid a vessel wider than its window is labelled near
    its walls only; the coarse view fills its inside. A thin vessel is not widened by the coarse view."""
    vol = np.zeros((96, 96, 16), np.float32)
    vol[16:80, :, :] = 1.0          # a 64 um wide slab-like vessel along j (1 um voxels)
    grid = ModelGrid(1.0, (16, 16, 16), (0.0, 100.0), max_voxel_size_um=8.0)
    net, cpu = NeedsContext(), torch.device("cpu")
    single = predict_probability(net, vol, (1.0,) * 3, grid, cpu, views_um=[1.0])
    fused = predict_probability(net, vol, (1.0,) * 3, grid, cpu, views_um=[1.0, 8.0])
    inside = (slice(30, 66), slice(None), slice(None))
    assert (single[inside] > 0.5).mean() < 0.5        # the fine window misses the inside
    assert (fused[inside] > 0.5).mean() > 0.9         # the coarse view fills the inside
    assert (fused[:8] > 0.5).mean() < 0.05            # background far from the vessel stays background

    thin = np.zeros((96, 96, 16), np.float32)
    thin[47:49, :, :] = 1.0        # 2 um wide: one coarse voxel or less at 8 um
    p_max = predict_probability(ProbIsImage(), thin, (1.0,) * 3, grid, cpu, views_um=[1.0, 8.0], fusion="max")
    p_int = predict_probability(ProbIsImage(), thin, (1.0,) * 3, grid, cpu, views_um=[1.0, 8.0])
    p_one = predict_probability(ProbIsImage(), thin, (1.0,) * 3, grid, cpu, views_um=[1.0])
    assert (p_int > 0.05).sum() == (p_one > 0.05).sum()   # the opened coarse view adds nothing
    assert (p_max > 0.05).sum() > (p_one > 0.05).sum()    # a plain maximum widens it


def test_wide_part_keeps_wide_regions_whole_and_drops_thin_ones():
    p = np.zeros((16, 16, 12), np.float32)
    p[1:6, 1:6, 1:6] = 1.0      # 5 voxels wide laterally: kept
    p[1:7, 8:14, 9] = 0.9       # 6 x 6 laterally, one slice deep (a shallow stack at a coarse view): kept
    p[10, :, 3] = 1.0           # one voxel wide: removed
    p[:, 14:16, 0:4] = 0.7      # two voxels wide: removed
    p[11:15, 1:7, 6:9] = 0.8    # four voxels wide: removed
    w = wide_part(p)
    disk = lateral_disk()[..., 0]
    assert disk.sum() == 21 and not disk[0, 0] and disk[0, 2] and disk[2].all()  # 5 x 5 less its corners
    assert (w[1:6, 1:6, 1:6] == 1.0).sum() == 21 * 5    # the disk that fits; a square's corners are not a vessel
    assert np.isclose(w[1:7, 8:14, 9], 0.9).sum() == 36 - 4    # 6 x 6 less its four corner voxels
    assert w[10, :, 3].max() == 0 and w[:, 14:16, 0:4].max() == 0 and w[11:15, 1:7, 6:9].max() == 0
    assert w.sum() == pytest.approx(21 * 5 + 32 * 0.9)  # nothing else


def test_wide_part_does_not_depend_on_the_vessels_direction():
    """A band 5 voxels across is kept whole whether it runs along j or diagonally (a 5 x 5 box would
    need 6.7 voxels at 45 degrees and drop it), and a band 3.5 voxels across is dropped both ways."""
    i, j = np.mgrid[0:32, 0:32]
    for half, kept in ((3, True), (2, False)):  # diagonals |i - j| <= half: 2 half + 1 of them, 5 / 3.5 voxels across
        diagonal = np.repeat((np.abs(i - j) <= half)[..., None], 3, axis=2).astype(np.float32)
        along_j = np.zeros_like(diagonal)
        along_j[10:10 + (5 if kept else 3), :, :] = 1.0
        for band in (diagonal, along_j):
            w = wide_part(band)
            assert (w <= band).all()                      # an opening never adds
            if kept:
                assert (w == band).all()
            else:  # away from the array's corners, where the nearest-edge extension widens a diagonal
                assert w[4:-4, 4:-4].max() == 0
    with pytest.raises(ValueError, match="odd"):
        lateral_disk(4)


def test_bad_fusion_and_views_are_errors():
    vol = np.random.default_rng(0).random((8, 8, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="fusion"):
        predict_probability(ProbIsImage(), vol, (1, 1, 1), ModelGrid(1.0, (8, 8, 8)), torch.device("cpu"),
                            fusion="mean")
    with pytest.raises(ValueError, match="view"):
        predict_probability(ProbIsImage(), vol, (1, 1, 1), ModelGrid(1.0, (8, 8, 8)), torch.device("cpu"),
                            views_um=[0.0])


def test_local_brightness_follows_a_smooth_gain_and_is_bounded():
    """Vessels everywhere, the right half twice as dim: divided by the local brightness both halves'
    vessels are about equally bright; a half four times dimmer, or tissue far from any vessel, is lifted
    at most ``MAX_GAIN_CORRECTION``-fold; an all-zero view stays finite."""
    vol = np.full((96, 48, 24), 0.05, np.float32)
    for i in range(3, 96, 12):                    # vessels 3 voxels wide along j, 12 voxels apart
        for k in (3, 11, 19):
            vol[i:i + 3, :, k:k + 3] = 0.9
    centres = (slice(4, 40, 12), slice(None), slice(4, None, 8)), (slice(64, 92, 12), slice(None), slice(4, None, 8))
    for dimming, expected in ((2.0, 1.0), (4.0, MAX_GAIN_CORRECTION / 4.0)):
        scan = vol.copy()
        scan[48:] /= dimming
        local = local_brightness(scan, 1.0, 16.0)
        assert local.shape == scan.shape and local.dtype == np.float32
        flat = scan / local
        assert flat[centres[0]].mean() == pytest.approx(1.0, abs=0.1)
        assert flat[centres[1]].mean() == pytest.approx(expected, abs=0.1)
    empty = np.full((32, 32, 8), 0.05, np.float32)
    empty[1:4, 1:4, 1:4] = 1.0                    # one vessel in a corner, tissue elsewhere
    assert (empty / local_brightness(empty, 1.0, 8.0))[16:, 16:].max() <= 0.05 * MAX_GAIN_CORRECTION + 1e-6
    assert np.isfinite(local_brightness(np.zeros((8, 8, 8), np.float32), 1.0, 4.0)).all()


class RelativeNeedsContext(NeedsContext):
    """``NeedsContext`` on its window scaled by the window's brightest voxel, like a network that sees
    every window at the same gain (``model.input_scale: window``)."""

    def forward(self, x):
        return super().forward(x / x.amax(dim=(2, 3, 4), keepdim=True).clamp_min(1e-6))


def test_coarse_view_sees_a_dim_vessel_at_the_gain_of_the_finest_window():
    """Two 56 um wide vessels, one three times dimmer. The fine window sees only their walls; the coarse
    window holds both, so without flattening the dim one is dim next to the bright one and its inside
    is missed; divided by the fine view's local brightness it is filled like the bright one."""
    vol = np.zeros((160, 128, 16), np.float32)   # the 8 um view (20 x 16) fills its 16-voxel window
    vol[8:64] = 0.9
    vol[96:152] = 0.3
    grid = ModelGrid(1.0, (16, 16, 16), (0.0, 100.0), max_voxel_size_um=8.0)
    net, cpu = RelativeNeedsContext(), torch.device("cpu")
    flat = predict_probability(net, vol, (1.0,) * 3, grid, cpu, views_um=[1.0, 8.0])
    plain = predict_probability(net, vol, (1.0,) * 3, grid, cpu, views_um=[1.0, 8.0], flatten=False)
    bright_inside, dim_inside = (slice(20, 52), slice(8, 120)), (slice(108, 140), slice(8, 120))
    assert (plain[bright_inside] > 0.5).mean() > 0.9 and (flat[bright_inside] > 0.5).mean() > 0.9
    assert (plain[dim_inside] > 0.5).mean() < 0.1
    assert (flat[dim_inside] > 0.5).mean() > 0.9
    assert (flat[70:90] > 0.5).mean() < 0.05      # tissue between them stays tissue
    # a scan narrower than the coarse window (64 um along j: half of it padding) is not corrected
    narrow = predict_probability(net, vol[:, :64], (1.0,) * 3, grid, cpu, views_um=[1.0, 8.0])
    np.testing.assert_array_equal(narrow, predict_probability(net, vol[:, :64], (1.0,) * 3, grid, cpu,
                                                              views_um=[1.0, 8.0], flatten=False))
    assert fills_window((20, 16, 2), (16, 16, 16)) and not fills_window((20, 8, 2), (16, 16, 16))


def test_views_must_be_finest_first():
    vol = np.random.default_rng(0).random((16, 16, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="finest first"):
        predict_probability(ProbIsImage(), vol, (1, 1, 1), ModelGrid(1.0, (8, 8, 8)), torch.device("cpu"),
                            views_um=[2.0, 1.0])


def test_widest_vessel_is_measured_across_the_lateral_plane():
    mask = np.zeros((40, 40, 6), bool)
    assert widest_vessel_um(mask, 2.0) == 0.0
    mask[5:10, :, 2] = True                       # a band 5 voxels wide in one slice
    assert widest_vessel_um(mask, 2.0) == pytest.approx(10.0)
    mask[20, 20, :] = True                        # one voxel wide, the whole depth: lateral width 1 voxel
    assert widest_vessel_um(mask, 2.0) == pytest.approx(10.0)
    mask[20:35, 20:35, 4] = True                  # 15 x 15 voxels
    assert widest_vessel_um(mask, 2.0) == pytest.approx(30.0)
    edge = np.zeros((40, 40, 1), bool)
    edge[:5, :, 0] = True                         # 5 voxels wide along the scan's edge: outside is background
    assert widest_vessel_um(edge, 2.0) == pytest.approx(10.0)
    assert widest_vessel_um(np.ones((9, 40, 1), bool), 1.0) == pytest.approx(9.0)   # all vessel: the slice's width
    grid = ModelGrid(2.0, (64,) * 3, max_voxel_size_um=8.0)
    # the 8 um view is needed for vessels wider than a quarter of the 4 um view's window (64 um)
    prob = np.zeros((64, 64, 4), np.float32)
    prob[10:17, :, 1] = 0.9                       # 7 voxels of 8 um = 56 um
    assert not finds_wide_vessels(prob, 8.0, 4.0, grid)
    prob[10:19, :, 1] = 0.9                       # 9 voxels = 72 um
    assert finds_wide_vessels(prob, 8.0, 4.0, grid)
    assert not finds_wide_vessels(prob, 8.0, 8.0, grid)   # the 8 um view's own quarter window: 128 um


def test_coarse_view_fused_only_where_its_wide_vessel_is_brighter_than_tissue():
    """A view that calls a stretch of dim tissue a wide vessel is not fused: the lumen must be at least
    MIN_LUMEN_CONTRAST times as bright as the tissue (mean over the wide part / median of the rest)."""
    grid = ModelGrid(2.0, (64,) * 3, max_voxel_size_um=8.0)
    prob = np.zeros((64, 64, 4), np.float32)
    prob[10:19, :, 1] = 0.9                       # 72 um wide: wide enough for the 8 um view
    view = np.full(prob.shape, 0.2, np.float32)   # tissue
    view[10:19, :, 1] = 0.6                       # a lumen 3x as bright: a vessel
    assert lumen_contrast(view, prob) == pytest.approx(3.0)
    assert finds_wide_vessels(prob, 8.0, 4.0, grid, view)
    view[10:19, :, 1] = 0.2 * (MIN_LUMEN_CONTRAST - 0.3)   # barely brighter than the tissue
    assert not finds_wide_vessels(prob, 8.0, 4.0, grid, view)
    assert finds_wide_vessels(prob, 8.0, 4.0, grid)         # without the view: width alone decides
    view[:] = 0.0                                 # no signal outside the region imaged: not tissue
    view[10:19, :, 1] = 0.6
    view[30:40] = 0.2
    assert lumen_contrast(view, prob) == pytest.approx(3.0)
    view[30:40] = 0.0
    assert lumen_contrast(view, prob) == float("inf")       # no tissue with signal at all
    assert lumen_contrast(view, np.zeros_like(prob)) == 0.0  # nothing wide


def test_predict_probability_gives_the_gate_each_coarse_view_it_predicted(monkeypatch):
    """The contrast is judged on the image the network saw at that view: predict_probability passes the
    view (the prediction's shape) to finds_wide_vessels, and a view the gate refuses is not fused."""
    from octasim import inference

    seen = []

    def refuse(prob, voxel_um, finer_voxel_um, grid, view=None):
        seen.append((voxel_um, None if view is None else view.shape, prob.shape, None if view is None else view.max()))
        return False

    monkeypatch.setattr(inference, "finds_wide_vessels", refuse)
    grid = ModelGrid(2.0, (16,) * 3, max_voxel_size_um=8.0)
    scan = np.zeros((80, 80, 6), np.float32)
    scan[20:60] = 1.0                                       # 40 um wide, bright
    fused: list[float] = []
    prob = predict_probability(ProbIsImage(), scan, (1.0, 1.0, 5.0), grid, torch.device("cpu"), fused_views=fused)
    assert [v for v, *_ in seen] == [4.0, 8.0]
    assert all(view_shape == prob_shape for _, view_shape, prob_shape, _ in seen)
    assert all(brightest == pytest.approx(1.0) for *_, brightest in seen)   # the scan's image, scaled to [0, 1]
    assert fused == [2.0]
    np.testing.assert_array_equal(prob, predict_probability(ProbIsImage(), scan, (1.0, 1.0, 5.0), grid,
                                                            torch.device("cpu"), views_um=[2.0]))


class Widens(torch.nn.Module):
    """A 'network' that calls vessel everything within two voxels (across the lateral plane) of a bright
    voxel, at every view: like a coarse view that draws a thin bright vessel as a band 5 voxels wide."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, x):
        bright = torch.nn.functional.max_pool3d((x > 0.5).float(), (5, 5, 1), stride=1, padding=(2, 2, 0))
        return self.w * (20.0 * bright - 10.0)


def test_a_coarse_view_is_fused_only_where_it_finds_vessels_its_finer_neighbour_cannot_segment():
    """The default views: 2, 4 and 8 um. A thin vessel the coarse views widen by two of their voxels on
    each side (48 um at 8 um, narrower than the 64 um the 4 um view segments whole) gets the fine view
    alone; a 120 um vessel gets every view (the plain pyramid)."""
    grid = ModelGrid(2.0, (64,) * 3, (0.0, 100.0), max_voxel_size_um=8.0)
    net, cpu, spacing = Widens(), torch.device("cpu"), (1.0, 1.0, 5.0)
    thin = np.zeros((320, 320, 10), np.float32)
    thin[154:166] = 1.0                                         # 12 um wide, along j
    fused: list[float] = []
    default = predict_probability(net, thin, spacing, grid, cpu, fused_views=fused)
    assert fused == [2.0]
    every = predict_probability(net, thin, spacing, grid, cpu, views_um=[2.0, 4.0, 8.0])
    single = predict_probability(net, thin, spacing, grid, cpu, views_um=[2.0])
    np.testing.assert_array_equal(default, single)
    assert (default[:, 160] > 0.5).sum(axis=0).max() <= 24     # 12 um + 2 fine voxels on each side
    assert (every[:, 160] > 0.5).sum(axis=0).max() >= 40       # the 8 um view's 5-voxel band
    wide = np.zeros((320, 320, 10), np.float32)
    wide[100:220] = 1.0                                         # 120 um wide
    fused = []
    np.testing.assert_array_equal(predict_probability(net, wide, spacing, grid, cpu, fused_views=fused),
                                  predict_probability(net, wide, spacing, grid, cpu, views_um=[2.0, 4.0, 8.0]))
    assert fused == [2.0, 4.0, 8.0]
    # 48 um: the 4 um view draws it about 60 um wide (> 32, its finer neighbour's quarter window), the 8 um
    # view about 72 um (> 64): both fused, although neither exceeds a quarter of its own window (64, 128 um)
    mid = np.zeros((320, 320, 10), np.float32)
    mid[136:184] = 1.0
    fused = []
    predict_probability(net, mid, spacing, grid, cpu, fused_views=fused)
    assert fused == [2.0, 4.0, 8.0]


class _Counter:
    """A tqdm-like bar that records what it is told."""

    def __init__(self):
        self.total, self.n, self.resets = None, 5, 0  # n: left over from an earlier scan

    def update(self, n):
        self.n += n

    def reset(self, total=None):
        self.total, self.n, self.resets = total, 0, self.resets + 1


@pytest.mark.parametrize("tta", [False, True])
def test_progress_counts_every_window_of_every_view(tta):
    """The bar's total is the windows of all views (counted before any is predicted) and every window
    advances it once, flips or not; views smaller than the window along an axis count one window there."""
    from octasim.inference import window_count

    rng = np.random.default_rng(0)
    volume = rng.random((72, 40, 6)).astype(np.float32)
    grid = ModelGrid(2.0, (16,) * 3, max_voxel_size_um=8.0)
    bar = _Counter()
    predict_probability(ProbIsImage(), volume, (1.0, 1.0, 5.0), grid, torch.device("cpu"), tta=tta,
                        views_um=[2.0, 4.0, 8.0], sw_batch_size=3, progress=bar)
    assert bar.total == bar.n and bar.resets == 1
    # 2 um view: 36 x 20 x 15 voxels -> 4 x 2 x 1 windows (step 8); 4 um: 18 x 10 x 8 -> 2 x 1 x 1; 8 um: 1
    assert bar.n == 8 + 2 + 1
    assert window_count((16, 16, 16), (16,) * 3, 0.5) == 1 and window_count((17, 5, 16), (16,) * 3, 0.5) == 2
    assert window_count((100, 16, 16), (16,) * 3, 0.25) == 8  # starts 0, 12, ..., 84


def test_region_of_interest_decides_which_views_are_fused(monkeypatch):
    """A 'network' that calls everything vessel: without a region the coarse view finds a vessel as wide
    as the scan and is fused; with a region 4 um wide it finds nothing wider than the region (1 voxel of
    the 4 um view) and is not, and nothing outside the region is vessel."""
    import octasim.inference as inference

    monkeypatch.setattr(inference, "predict_view", lambda model, image, *a, **k: np.ones_like(image))
    grid = inference.ModelGrid(voxel_size_um=2.0, patch_size=(16, 16, 16), max_voxel_size_um=4.0)
    scan = np.random.default_rng(0).random((64, 64, 8)).astype(np.float32)
    views = []
    inference.predict_probability(None, scan, (2.0, 2.0, 2.0), grid, None, fused_views=views)
    assert views == [2.0, 4.0]
    roi = np.zeros(scan.shape, bool)
    roi[:2] = True
    views = []
    prob = inference.predict_probability(None, scan, (2.0, 2.0, 2.0), grid, None, fused_views=views, roi=roi)
    assert views == [2.0]
    assert prob[roi].min() == 1.0 and not prob[~roi].any()
