"""Metrics: hand-computed cases, and cross-checks against scikit-image's adapted Rand error and
variation of information (a test-only dependency)."""
import numpy as np
import pytest

from unetcu import metrics as M


def test_hand_computed():
    true = np.array([[1, 1, 0, 2],
                     [1, 1, 0, 2]])
    pred = np.array([[1, 1, 1, 0],
                     [1, 1, 0, 0]])
    assert M.pixel_error(pred > 0, true > 0) == pytest.approx(3 / 8)
    assert M.iou(pred > 0, true > 0) == pytest.approx(4 / 7)
    # SEG: object 1 (4 px) matched by pred 1 (5 px, overlap 4) -> 4/5; object 2 unmatched -> 0
    assert M.seg_score(true, pred) == pytest.approx(0.4)
    # Rand, restricted to truth != 0 (6 pixels): p = {(1,1): 4/6, (2,0): 2/6}; s = t = (4/6, 2/6)
    assert M.rand_score(true, pred) == pytest.approx(1.0)  # a perfect partition of the foreground
    pred2 = np.array([[1, 2, 0, 0], [1, 2, 0, 0]])
    p2 = (2 / 6) ** 2 * 2 + (2 / 6) ** 2
    s2 = (4 / 6) ** 2 + (2 / 6) ** 2
    t2 = (2 / 6) ** 2 * 3
    assert M.rand_score(true, pred2) == pytest.approx(p2 / (0.5 * s2 + 0.5 * t2))
    assert M.info_score(true, true) == pytest.approx(1.0)


def test_threshold_sweep_takes_the_best():
    true = np.zeros((10, 10), int)
    true[2:5, 2:5], true[6:9, 6:9] = 1, 2
    prob = np.where(true > 0, 0.35, 0.05)  # only thresholds below 0.35 find the objects
    r = M.evaluate(true, prob_fg=prob)
    assert r["rand_error"] == pytest.approx(0.0) and r["info_error"] == pytest.approx(0.0, abs=1e-12)
    assert r["pixel_error_fscore"] == pytest.approx(0.0)
    assert r["iou"] == 0.0  # the hard map at 0.5 misses everything


def test_cross_check_with_scikit_image(rng):
    skm = pytest.importorskip("skimage.metrics")
    from unetcu.data import synthetic_cells
    _, true = synthetic_cells((80, 90), seed=int(rng.integers(1000)))
    _, pred = synthetic_cells((80, 90), seed=int(rng.integers(1000)))
    pred = np.where(rng.random(pred.shape) < 0.05, 0, pred)
    are, _, _ = skm.adapted_rand_error(true, pred, ignore_labels=(0,))
    assert M.rand_score(true, pred, pairs=True) == pytest.approx(1 - are, rel=1e-9)  # skimage counts pairs
    assert abs(M.rand_score(true, pred) - (1 - are)) < 0.01  # the ISBI formula differs only by self-pairs
    # V_info from scikit-image's conditional entropies over the same (truth != 0) pixels
    m = true > 0
    # (H(pred|true), H(true|pred)) in bits
    h_p_given_t, h_t_given_p = np.log(2) * skm.variation_of_information(true[m], pred[m])
    from scipy.stats import entropy
    ht = entropy(np.bincount(true[m]))
    hp = entropy(np.bincount(pred[m]))
    mi = ht - h_t_given_p
    assert hp - h_p_given_t == pytest.approx(mi, abs=1e-9)
    assert M.info_score(true, pred) == pytest.approx(2 * mi / (ht + hp), rel=1e-9)


def test_evaluate_files(tmp_path):
    from PIL import Image
    import tifffile
    from unetcu.data import synthetic_cells
    _, inst = synthetic_cells((64, 64), seed=3)
    (tmp_path / "pred").mkdir()
    (tmp_path / "gt").mkdir()
    Image.fromarray(inst.astype(np.uint16)).save(tmp_path / "gt" / "img_007.png")
    prob = np.stack([1.0 - (inst > 0), (inst > 0)]).astype(np.float32)
    tifffile.imwrite(tmp_path / "pred" / "img007_prob.tif", prob)
    rows = M.evaluate_files(tmp_path / "pred", tmp_path / "gt")
    assert [n for n, _ in rows] == ["img007"]
    r = rows[0][1]
    assert r["pixel_error"] == 0 and r["iou"] == 1.0 and r["rand_error"] == pytest.approx(0, abs=1e-12)
    # touching objects merge in a pure foreground map: SEG stays below 1
    assert r["seg"] <= 1.0
    with pytest.raises(FileNotFoundError):
        M.evaluate_files(tmp_path / "nope", tmp_path / "gt")


def test_empty_cases(rng):
    """No ground-truth foreground: agreement scores perfect in every metric, a prediction with
    foreground there scores as wrong; the same numbers from M.evaluate, evaluate_files and M.iou
    (the trainer's validation uses M.iou too)."""
    empty = np.zeros((13, 17), int)
    assert M.iou(empty > 0, empty > 0) == 1.0
    assert M.seg_score(empty, empty) == 1.0
    assert M.rand_score(empty, empty) == 1.0 and M.info_score(empty, empty) == 1.0
    assert M.pixel_error(empty > 0, empty > 0) == 0.0
    assert M.pixel_error_fscore(np.zeros((13, 17)), empty > 0) == 0.0
    r = M.evaluate(empty, pred_inst=empty)
    assert r == dict(pixel_error=0.0, pixel_error_fscore=0.0, iou=1.0, seg=1.0, rand_error=0.0, info_error=0.0)
    r = M.evaluate(empty, prob_fg=rng.uniform(0, 0.4, empty.shape))  # all below 0.5: all background
    assert r["iou"] == 1.0 and r["seg"] == 1.0 and r["pixel_error"] == 0.0
    some = empty.copy()
    some[2:5, 3:9] = 1  # 18 pixels predicted where the truth has none
    assert M.iou(some > 0, empty > 0) == 0.0 and M.seg_score(empty, some) == 0.0
    assert M.pixel_error(some > 0, empty > 0) == pytest.approx(18 / (13 * 17))
    assert M.pixel_error_fscore(some.astype(float), empty > 0, (0.5,)) == 1.0
    # truth has objects, prediction none: everything wrong
    assert M.iou(empty > 0, some > 0) == 0.0 and M.seg_score(some, empty) == 0.0


def test_evaluate_files_empty_and_mismatch(tmp_path):
    from PIL import Image
    (tmp_path / "pred").mkdir()
    (tmp_path / "gt").mkdir()
    Image.fromarray(np.zeros((21, 19), np.uint16)).save(tmp_path / "pred" / "a_instances.png")
    Image.fromarray(np.zeros((21, 19), np.uint8)).save(tmp_path / "gt" / "a.png")
    (r,) = M.evaluate_files(tmp_path / "pred", tmp_path / "gt")
    assert r[1]["iou"] == 1.0 and r[1]["seg"] == 1.0
    Image.fromarray(np.zeros((20, 19), np.uint8)).save(tmp_path / "gt" / "a.png")
    with pytest.raises(ValueError, match=r"prediction .*a_instances\.png \(1 page of 21x19\) and label .*a\.png "
                                         r"\(1 page of 20x19\) differ in size"):
        M.evaluate_files(tmp_path / "pred", tmp_path / "gt")
