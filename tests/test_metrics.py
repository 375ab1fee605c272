import itertools
import json

import numpy as np
import pytest

from octasim.metrics import (average_precision, betti_errors, betti_numbers, cldice, confusion, dice,
                             evaluate_masks, evaluate_regions, iou, load_regions, precision, recall, roc_auc, skeleton,
                             weighted_mean)


def grid(n):
    return np.mgrid[:n, :n, :n] - (n - 1) / 2.0


def torus(n=32, big=9.0, small=3.0):
    i, j, k = grid(n)
    return (np.sqrt(i ** 2 + j ** 2) - big) ** 2 + k ** 2 <= small ** 2


def tube(n=30, r=2.5, gap=None):
    i, j, k = grid(n)
    t = (i ** 2 + k ** 2 <= r ** 2) & (np.abs(j) < n / 2 - 2)
    if gap is not None:
        t &= ~(np.abs(j) <= gap)
    return t


def test_two_touching_cubes_by_hand():
    pred = np.zeros((10, 10, 10), bool)
    label = np.zeros_like(pred)
    pred[0:4, 0:4, 0:4] = True  # 64 voxels
    label[2:6, 0:4, 0:4] = True  # 64 voxels, overlap 2 x 4 x 4 = 32
    assert confusion(pred, label) == (32, 32, 32)
    assert dice(pred, label) == pytest.approx(2 * 32 / 128)
    assert iou(pred, label) == pytest.approx(32 / 96)
    assert precision(pred, label) == pytest.approx(0.5) and recall(pred, label) == pytest.approx(0.5)
    # cubes only touching faces: no overlap
    label2 = np.zeros_like(pred)
    label2[4:8, 0:4, 0:4] = True
    assert dice(pred, label2) == 0.0
    # recall with a bigger label
    label3 = np.zeros_like(pred)
    label3[0:4, 0:4, 0:8] = True
    assert recall(pred, label3) == pytest.approx(0.5) and precision(pred, label3) == 1.0
    # two touching cubes form one component; separated they are two
    assert betti_numbers(pred | label2)[0] == 1
    assert betti_numbers(pred | np.roll(label2, 1, axis=0))[0] == 2  # one empty slice between them


def test_torus_hollow_sphere_ball():
    assert betti_numbers(torus()) == (1, 1, 0)
    i, j, k = grid(30)
    r2 = i ** 2 + j ** 2 + k ** 2
    assert betti_numbers((r2 <= 12 ** 2) & (r2 >= 8 ** 2)) == (1, 0, 1)  # hollow sphere: a cavity
    assert betti_numbers(r2 <= 10 ** 2) == (1, 0, 0)
    two_tori = np.concatenate([torus(), torus()], axis=0)
    assert betti_numbers(two_tori) == (2, 2, 0)
    assert betti_numbers(np.zeros((5, 5, 5))) == (0, 0, 0)


def test_diagonal_voxels_are_one_component():
    m = np.zeros((4, 4, 4), bool)
    m[0, 0, 0] = m[1, 1, 1] = True
    assert betti_numbers(m)[0] == 1


def test_broken_tube_betti0_error():
    label, broken = tube(), tube(gap=1)
    assert betti_numbers(label)[0] == 1 and betti_numbers(broken)[0] == 2
    assert betti_errors(broken, label) == (1, 0)
    assert betti_errors(torus(), np.zeros((32, 32, 32), bool))[1] == 1
    # a broken ring loses its loop
    ring, cut = torus(), torus()
    cut[:16, 14:18, :] = False  # cut the ring where it crosses j = centre, on one side
    assert betti_errors(cut, ring) == (0, 1)


def test_identical_volumes_are_perfect():
    t = torus()
    m = evaluate_masks(t, t)
    assert m == {"dice": 1.0, "cldice": 1.0, "precision": 1.0, "recall": 1.0, "iou": 1.0,
                 "betti0_error": 0.0, "betti1_error": 0.0}


def test_skeleton_of_even_width_straight_tube_is_not_empty():
    # skimage's Lee thinning deletes this tube entirely (scikit-image #3757); ours keeps a centreline
    t = tube()  # 4 x 4 voxel cross-section, axis-aligned
    sk = skeleton(t)
    assert sk.any() and not (sk & ~t).any()
    assert np.unique(np.argwhere(sk)[:, 1]).size >= 0.8 * np.unique(np.argwhere(t)[:, 1]).size
    assert (np.unique(np.argwhere(sk)[:, [0, 2]], axis=0).shape[0]) == 1  # a straight line


def test_cldice_broken_tube_and_thick_prediction():
    label = tube()
    assert cldice(label, label) == 1.0
    # prediction covering the label generously: topology precision/sensitivity both 1 -> clDice 1, Dice < 1
    i, j, k = grid(30)
    fat = (i ** 2 + k ** 2 <= 5 ** 2) & (np.abs(j) < 13)
    assert cldice(fat, label) == pytest.approx(1.0) and dice(fat, label) < 0.5
    # half of the tube missing: tsens about 1/2, tprec 1 -> clDice about 2/3
    half = label & (j < 0)
    assert cldice(half, label) == pytest.approx(2 / 3, abs=0.08)
    assert cldice(np.zeros_like(label), label) == 0.0
    assert cldice(np.zeros_like(label), np.zeros_like(label)) == 1.0


def test_empty_conventions():
    z = np.zeros((4, 4, 4), bool)
    one = z.copy()
    one[1, 1, 1] = True
    assert dice(z, z) == 1.0 and iou(z, z) == 1.0 and precision(z, z) == 1.0 and recall(z, z) == 1.0
    assert dice(z, one) == 0.0 and precision(z, one) == 0.0 and recall(one, z) == 0.0
    with pytest.raises(ValueError, match="shape"):
        dice(z, np.zeros((4, 4, 5)))


def brute_auc(p, y):
    pos, neg = p[y], p[~y]
    diff = pos[:, None] - neg[None, :]
    return ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size


def test_roc_auc_and_ap_known_answers():
    y = np.array([0, 0, 1, 1], bool)
    s = np.array([0.1, 0.4, 0.35, 0.8])
    assert roc_auc(s, y) == pytest.approx(0.75)
    assert average_precision(s, y) == pytest.approx((1 + 2 / 3) / 2)  # 0.8333
    label = torus()
    assert roc_auc(label.astype(float), label) == 1.0 and average_precision(label.astype(float), label) == 1.0
    assert roc_auc(1.0 - label, label) == 0.0


def test_roc_auc_ties_match_pairwise_count():
    rng = np.random.default_rng(0)
    p = rng.integers(0, 5, 300) / 4.0  # many ties
    y = rng.random(300) < 0.4
    assert roc_auc(p, y) == pytest.approx(brute_auc(p, y))
    # all scores equal: AUC 1/2, AP = prevalence (one threshold step)
    assert roc_auc(np.zeros(300), y) == pytest.approx(0.5)
    assert average_precision(np.zeros(300), y) == pytest.approx(y.mean())


def test_ap_equals_step_definition():
    rng = np.random.default_rng(1)
    p, y = rng.random(200), rng.random(200) < 0.3
    order = np.argsort(-p)
    ap = sum(y[order][: n + 1].mean() for n in range(200) if y[order][n]) / y.sum()  # mean precision at each hit
    assert average_precision(p, y) == pytest.approx(ap)


def test_random_scores_are_chance():
    rng = np.random.default_rng(2)
    p, y = rng.random((30, 30, 30)), rng.random((30, 30, 30)) < 0.5
    assert roc_auc(p, y) == pytest.approx(0.5, abs=0.02)
    assert average_precision(p, y) == pytest.approx(0.5, abs=0.02)
    assert np.isnan(roc_auc(p, np.zeros_like(y))) and np.isnan(average_precision(p, np.zeros_like(y)))


def test_evaluate_masks_with_probability():
    label = tube()
    prob = np.where(label, 0.9, 0.1)
    m = evaluate_masks(prob > 0.5, label, prob)
    assert m["dice"] == 1.0 and m["roc_auc"] == 1.0 and m["average_precision"] == 1.0
    assert "betti0_error" not in evaluate_masks(label, label, topology=False)


def test_regions_weighted_by_volume(tmp_path):
    label = np.zeros((20, 20, 20), bool)
    label[2:8, 2:8, 2:8] = True
    pred = label.copy()
    pred[12:14, 12:14, 12:14] = True  # false positives only in the second region
    label[13, 13, 13] = True
    path = tmp_path / "regions.json"
    path.write_text(json.dumps({"regions": [{"name": "small", "box": [[0, 0, 0], [10, 10, 10]]},
                                            {"name": "large", "box": [[10, 0, 0], [20, 20, 20]]}]}))
    regions = load_regions(path)
    assert [r["name"] for r in regions] == ["small", "large"]
    rows = evaluate_regions(pred, label, regions)
    assert list(rows) == ["small", "large", "weighted"]
    assert rows["small"]["dice"] == 1.0
    assert rows["large"]["dice"] == pytest.approx(2 * 1 / (8 + 1))
    w_small, w_large = 1000, 4000
    assert rows["weighted"]["dice"] == pytest.approx((w_small * 1.0 + w_large * 2 / 9) / (w_small + w_large))


def test_load_regions_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        load_regions(bad)
    bad.write_text(json.dumps({"regions": [{"name": "x", "box": [[0, 0, 0], [0, 5, 5]]}]}))
    with pytest.raises(ValueError, match="empty"):
        load_regions(bad)
    bad.write_text(json.dumps({"regions": [{"name": "x"}]}))
    with pytest.raises(ValueError, match="box"):
        load_regions(bad)
    with pytest.raises(FileNotFoundError):
        load_regions(tmp_path / "nope.json")
    good = tmp_path / "g.json"
    good.write_text(json.dumps({"regions": [{"name": "x", "box": [[0, 0, 0], [50, 5, 5]]}]}))
    with pytest.raises(ValueError, match="beyond"):
        evaluate_regions(np.zeros((10, 10, 10)), np.zeros((10, 10, 10)), load_regions(good))


def test_weighted_mean_ignores_nan():
    rows = [{"a": 1.0, "b": float("nan")}, {"a": 3.0, "b": 2.0}]
    out = weighted_mean(rows, [1, 3])
    assert out["a"] == pytest.approx(2.5) and out["b"] == 2.0


def test_metrics_are_symmetric_where_expected():
    rng = np.random.default_rng(3)
    a, b = rng.random((12, 12, 12)) < 0.3, rng.random((12, 12, 12)) < 0.3
    assert dice(a, b) == pytest.approx(dice(b, a))
    assert precision(a, b) == pytest.approx(recall(b, a))
    for x, y in itertools.permutations([a, b]):
        assert 0 <= cldice(x, y) <= 1
