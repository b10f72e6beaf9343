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


# ---- stacks and per-page files (issue 24, item 12) -------------------------------------------------
def _pages(rng, n, h=30, w=38):
    """n instance label pages of random blobs, each page different (so a page paired with another
    page's prediction scores below 1)."""
    from scipy import ndimage as ndi
    out = []
    for _ in range(n):
        m = ndi.gaussian_filter(rng.standard_normal((h, w)), 2.5) > 0.15
        m[0, 0], m[-1, -1] = True, False
        out.append(ndi.label(m)[0].astype(np.uint16))
    return np.stack(out)


def _perfect(rows, names):
    assert [n for n, _ in rows] == names
    for n, r in rows:
        assert r["iou"] == 1.0 and r["seg"] == 1.0 and r["pixel_error"] == 0.0, (n, r)


def test_per_page_predictions_against_a_label_stack(tmp_path, rng):
    """Issue input: predict of a multi-page stack writes one file per page (vol-000_prob.tif, ...);
    evaluate against the multi-page label stack (ISBI's train-labels.tif) pairs page k with page k
    (it refused the stack). Neighbours: 1-based unpadded names, other kinds of predict's outputs."""
    import tifffile
    from PIL import Image
    from unetcu.data import ImageFile, page_names
    labs = _pages(rng, 12)
    tifffile.imwrite(tmp_path / "train-labels.tif", labs, photometric="minisblack")
    names = page_names(ImageFile(tmp_path / "train-labels.tif"))
    assert names[:2] == ["train-labels-000", "train-labels-001"]  # what predict names a stack's pages
    (tmp_path / "pred").mkdir()
    order = rng.permutation(12)  # files written in random order
    for k in order:
        fg = (labs[k] > 0).astype(np.float32)
        tifffile.imwrite(tmp_path / "pred" / f"vol-{k:03d}_prob.tif", np.stack([1 - fg, fg]), photometric="minisblack")
    _perfect(M.evaluate_files(tmp_path / "pred", tmp_path / "train-labels.tif"), [f"vol-{k:03d}" for k in range(12)])
    (tmp_path / "plain").mkdir()
    for k in order:  # another tool's per-page instance labels, numbered from 1, unpadded
        Image.fromarray(labs[k]).save(tmp_path / "plain" / f"slice_{k + 1}.png")
    _perfect(M.evaluate_files(tmp_path / "plain", tmp_path / "train-labels.tif"), [f"slice_{k + 1}" for k in range(12)])


def test_prediction_stack_against_per_page_labels_and_stack_against_stack(tmp_path, rng):
    import tifffile
    from PIL import Image
    labs = _pages(rng, 5)
    tifffile.imwrite(tmp_path / "pred.tif", labs, photometric="minisblack")  # a stack of instance labels
    (tmp_path / "gt").mkdir()
    for k in rng.permutation(5):
        Image.fromarray(labs[k]).save(tmp_path / "gt" / f"man_seg{k:02d}.png")
    _perfect(M.evaluate_files(tmp_path / "pred.tif", tmp_path / "gt"), [f"pred-{k:03d}" for k in range(5)])
    tifffile.imwrite(tmp_path / "gt.tif", labs, photometric="minisblack")
    _perfect(M.evaluate_files(tmp_path / "pred.tif", tmp_path / "gt.tif"), [f"pred-{k:03d}" for k in range(5)])
    # a shifted pairing would not be perfect: the pages differ
    tifffile.imwrite(tmp_path / "rolled.tif", np.roll(labs, 1, axis=0), photometric="minisblack")
    rows = M.evaluate_files(tmp_path / "rolled.tif", tmp_path / "gt.tif")
    assert all(r["iou"] < 1 for _, r in rows)


def test_page_count_mismatch_refused_in_one_line(tmp_path, rng):
    import tifffile
    from PIL import Image
    from unetcu.data import InputError
    labs = _pages(rng, 4)
    tifffile.imwrite(tmp_path / "gt.tif", labs, photometric="minisblack")
    (tmp_path / "pred").mkdir()
    for k in range(3):
        Image.fromarray(labs[k]).save(tmp_path / "pred" / f"p{k}.png")
    with pytest.raises(InputError, match=r"3 pages of predictions \(.*pred: 3 files\) and 4 pages of labels \(.*gt\.tif: "
                                         r"4 pages of 30x38\) differ in number") as e:
        M.evaluate_files(tmp_path / "pred", tmp_path / "gt.tif")
    assert "\n" not in str(e.value)
    tifffile.imwrite(tmp_path / "pred3.tif", labs[:3], photometric="minisblack")
    with pytest.raises(InputError, match=r"3 pages of predictions .*pred3\.tif.* and 4 pages of labels"):
        M.evaluate_files(tmp_path / "pred3.tif", tmp_path / "gt.tif")
    with pytest.raises(InputError, match=r"4 pages of predictions .* and 3 pages of labels"):
        M.evaluate_files(tmp_path / "gt.tif", tmp_path / "pred")
    # folders of stacks pair by name, then page by page; a stack against one page is refused
    for d in ("ps", "ls"):
        (tmp_path / d).mkdir()
    for name, n in (("a", 2), ("b", 3)):
        tifffile.imwrite(tmp_path / "ps" / f"{name}.tif", labs[:n], photometric="minisblack")
        tifffile.imwrite(tmp_path / "ls" / f"{name}.tif", labs[:n], photometric="minisblack")
    _perfect(M.evaluate_files(tmp_path / "ps", tmp_path / "ls"), ["a-000", "a-001", "b-000", "b-001", "b-002"])
    Image.fromarray(labs[0]).save(tmp_path / "ls" / "b.png")
    (tmp_path / "ls" / "b.tif").unlink()
    with pytest.raises(InputError, match=r"prediction .*b\.tif \(3 pages of 30x38\) and label .*b\.png \(1 page of "
                                         r"30x38\) differ in number of pages"):
        M.evaluate_files(tmp_path / "ps", tmp_path / "ls")


# ---- new users' trips (issue 24, item 16) ---------------------------------------------------------
def _example(tmp_path, rng):
    """A synth-like folder (images/, labels/) and predict's outputs for it."""
    from PIL import Image
    from unetcu.data import synthetic_cells
    from unetcu.predict import write_results
    for d in ("images", "labels", "pred"):
        (tmp_path / d).mkdir()
    for k in range(2):
        img, inst = synthetic_cells((64, 64), seed=int(rng.integers(1 << 30)))
        Image.fromarray(np.round(img * 255).astype(np.uint8)).save(tmp_path / "images" / f"s_{k:03d}.png")
        Image.fromarray(inst.astype(np.uint16)).save(tmp_path / "labels" / f"s_{k:03d}.png")
        fg = (inst > 0).astype(np.float32)
        write_results(tmp_path / "pred", f"s_{k:03d}", np.stack([1 - fg, fg]), img)
    return tmp_path


def test_images_given_as_labels_say_so(tmp_path, rng):
    """Issue input: `evaluate predictions examples/images`: the images were taken for a damaged mask
    and the advice was label mode 'threshold', which then scored the images as masks (exit 0). Now:
    they look like images, the labels folder beside them is named, threshold is not suggested (and
    refuses them too)."""
    from unetcu.data import InputError
    d = _example(tmp_path, rng)
    assert M.evaluate_files(d / "pred", d / "labels")  # the right call works
    for mode in ("auto", "instance", "threshold"):
        with pytest.raises(InputError, match=r"LABELS .*images: .*s_000\.png looks like an image, not a label image") as e:
            M.evaluate_files(d / "pred", d / "images", mode)
        msg = str(e.value)
        assert "threshold" not in msg and "evaluate takes PREDICTIONS then LABELS" in msg and str(d / "labels") in msg
    with pytest.raises(InputError, match=r"PREDICTIONS .*images: .*s_000\.png looks like an image"):
        M.evaluate_files(d / "images", d / "labels")


def test_swapped_arguments_get_the_order(tmp_path, rng):
    """Issue input: `evaluate examples/labels predictions` (swapped) said only that no label was
    found; now it says the order, as predict does for a model and images given the other way."""
    d = _example(tmp_path, rng)
    with pytest.raises(ValueError, match=r"evaluate takes PREDICTIONS then LABELS: .*pred holds predict's outputs"):
        M.evaluate_files(d / "labels", d / "pred")
    with pytest.raises(ValueError, match=r"evaluate takes PREDICTIONS then LABELS"):
        M.evaluate_files(d / "labels" / "s_000.png", d / "pred" / "s_000_prob.tif")
    # ground truth that happens to be named NAME_labels.png is no prediction: no hint, it is scored
    from PIL import Image
    (d / "gt").mkdir()
    for k in range(2):
        Image.open(d / "labels" / f"s_{k:03d}.png").save(d / "gt" / f"s_{k:03d}_labels.png")
    rows = M.evaluate_files(d / "labels", d / "gt")
    assert [r["seg"] for _, r in rows] == [1.0, 1.0]


def test_predictions_given_as_labels_are_named_as_such(tmp_path, rng):
    """`evaluate predictions predictions`: predict's outputs as the ground truth get the order, not
    'no label image for prediction'."""
    d = _example(tmp_path, rng)
    with pytest.raises(ValueError, match=r"LABELS .*pred holds predict's outputs .*not ground truth: evaluate takes "
                                         r"PREDICTIONS then LABELS"):
        M.evaluate_files(d / "pred", d / "pred")


def test_a_probability_file_is_one_prediction_not_a_stack(tmp_path, rng):
    """Neighbour: NAME_prob.tif's pages are classes: against a 2-page label stack it is one page."""
    import tifffile
    from unetcu.data import InputError
    labs = _pages(rng, 2)
    tifffile.imwrite(tmp_path / "gt.tif", labs, photometric="minisblack")
    fg = (labs[0] > 0).astype(np.float32)
    tifffile.imwrite(tmp_path / "a_prob.tif", np.stack([1 - fg, fg]), photometric="minisblack")
    with pytest.raises(InputError, match=r"1 page of predictions \(.*a_prob\.tif: 2 pages of 30x38, one page per class\)"
                                         r" and 2 pages of labels"):
        M.evaluate_files(tmp_path / "a_prob.tif", tmp_path / "gt.tif")
