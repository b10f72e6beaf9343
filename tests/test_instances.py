"""The instance step (unetcu.instances, predict --instances): connected components keep touching
objects together, the distance-transform watershed splits them at the neck, and neither loses or
invents foreground."""
import numpy as np
import pytest
from PIL import Image

from unetcu.instances import METHODS, instances
from unetcu.metrics import seg_score


def _disks(centres, r, shape=(70, 110)):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    lab = np.zeros(shape, np.int32)
    for k, (cy, cx) in enumerate(centres, 1):
        lab[((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (lab == 0)] = k
    return lab


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_watershed_splits_touching_disks_that_components_merge(seed):
    rng = np.random.default_rng(seed)
    r = int(rng.integers(11, 16))
    cy, cx = int(rng.integers(r + 2, 70 - r - 2)), int(rng.integers(r + 2, 40))
    truth = _disks([(cy, cx), (cy + int(rng.integers(-3, 4)), cx + 2 * r - 3)], r)  # overlapping by 3 px: one blob
    fg = truth > 0
    cc, ws = instances(fg, "components"), instances(fg, "watershed")
    assert cc.max() == 1 and ws.max() == 2
    assert seg_score(truth, ws) > 0.9 and seg_score(truth, cc) < 0.55  # the merged blob: IoU ~0.5 with each
    for lab in (cc, ws):  # every foreground pixel in an object, no object outside the foreground
        assert np.array_equal(lab > 0, fg) and lab.dtype == np.int32


def test_both_methods_agree_on_separate_objects_and_keep_slivers():
    truth = _disks([(20, 20), (45, 70)], 10)
    truth[60:62, 5:7] = 3   # a 2x2 sliver: its distance transform has no peak of its own
    truth[2, 100] = 4       # a single pixel
    for m in METHODS:
        lab = instances(truth > 0, m)
        assert lab.max() == 4 and seg_score(truth, lab) == pytest.approx(1.0)
    assert instances(np.zeros((5, 7), bool), "watershed").max() == 0


def test_instances_refuses_unknown_methods_and_non_2d_masks():
    with pytest.raises(ValueError, match="method must be one of"):
        instances(np.ones((4, 4), bool), "stardist")
    with pytest.raises(ValueError, match=r"expected a \(H, W\) foreground mask"):
        instances(np.ones((2, 4, 4), bool))


def test_predict_writes_the_chosen_instances(tmp_path):
    from unetcu.predict import write_results
    truth = _disks([(35, 30), (35, 56)], 14)
    p_fg = np.where(truth > 0, 0.9, 0.1).astype(np.float32)
    probs = np.stack([1 - p_fg, p_fg])
    for m, n in (("components", 1), ("watershed", 2)):
        (tmp_path / m).mkdir()
        assert write_results(tmp_path / m, "x", probs, method=m) == (n, 0)
        assert np.asarray(Image.open(tmp_path / m / "x_instances.png")).max() == n


def test_object_radius_is_the_median_equivalent_radius():
    from unetcu.instances import min_distance_for, object_radius
    maps = [_disks([(20, 20), (45, 70)], 10), _disks([(30, 30)], 14), np.zeros((5, 5), np.int32)]
    assert object_radius(maps) == pytest.approx(10, abs=0.3)  # areas ~314, 314, 615: the median is a 10-px disk
    assert object_radius([np.zeros((4, 4), np.int32)]) is None
    assert min_distance_for(10.0) == 9 and min_distance_for(0.5) == 2


def test_predict_watershed_takes_the_spacing_from_the_checkpoint(tmp_path):
    """A trained checkpoint records its objects' median radius; predict --instances watershed uses it,
    and asks for --min-distance when a checkpoint has none."""
    from unetcu import UNet
    from unetcu.data import synthetic_dataset
    from unetcu.predict import predict_files
    from unetcu.run import PRESETS, Run, TrainConfig
    from unetcu.train import train
    depth, base, tile = PRESETS["tiny"]
    data = synthetic_dataset(2, (96, 96), seed=5)
    train(Run.of(UNet(depth=depth, base_channels=base, engine="numpy"), data, [],
                 TrainConfig(steps=1, tile=tile, out=str(tmp_path / "run"))), progress=False, log=lambda *a: None)
    _, _, state = UNet.load(tmp_path / "run" / "checkpoint.npz", with_state=True)
    from unetcu.instances import object_radius
    assert state["object_radius"] == pytest.approx(object_radius([s.instances for s in data]))
    Image.fromarray((data[0].image * 40 + 120).clip(0, 255).astype(np.uint8)).save(tmp_path / "a.png")
    predict_files(tmp_path / "run" / "checkpoint.npz", [tmp_path / "a.png"], tmp_path / "p", engine="numpy",
                  progress=False, instances="watershed")
    assert (tmp_path / "p" / "a_instances.png").exists()
    UNet(depth=depth, base_channels=base, engine="numpy").save(tmp_path / "bare.npz")  # no training state
    with pytest.raises(ValueError, match="give --min-distance PX"):
        predict_files(tmp_path / "bare.npz", [tmp_path / "a.png"], tmp_path / "q", engine="numpy", progress=False,
                      instances="watershed")
    predict_files(tmp_path / "bare.npz", [tmp_path / "a.png"], tmp_path / "q", engine="numpy", progress=False,
                  instances="watershed", min_distance=5)
    with pytest.raises(ValueError, match="instances must be auto or one of"):
        predict_files(tmp_path / "bare.npz", [tmp_path / "a.png"], tmp_path / "r", engine="numpy", instances="blobs")
    # auto: the watershed for a model whose training objects touched (the synthetic cells do), else components
    from unetcu.data import touching_fraction
    from unetcu.predict import instance_method
    assert state["touching"] == pytest.approx(touching_fraction([s.instances for s in data])) and state["touching"] > 0.1
    assert instance_method("auto", state) == "watershed" and instance_method("auto", {}) == "components"
    assert instance_method("auto", dict(state, touching=0.05)) == "components"
    assert instance_method("components", state) == "components"
    for how, out in (("auto", "s"), ("auto", "t")):
        predict_files(tmp_path / ("run/checkpoint.npz" if out == "s" else "bare.npz"), [tmp_path / "a.png"],
                      tmp_path / out, engine="numpy", progress=False, instances=how)
    read = lambda d: np.asarray(Image.open(tmp_path / d / "a_instances.png"))
    assert np.array_equal(read("s"), read("p"))  # the trained model: auto is its watershed
    labels = np.asarray(Image.open(tmp_path / "t" / "a_labels.png"))
    assert np.array_equal(read("t"), instances(labels > 0, "components"))  # the bare one: components (min size 0)


def test_min_distance_without_watershed_is_refused(tmp_path):
    from unetcu import UNet
    from unetcu.predict import predict_files
    UNet(depth=2, base_channels=2, engine="numpy").save(tmp_path / "m.npz")
    Image.fromarray(np.full((20, 20), 7, np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(ValueError, match="give it with --instances watershed"):
        predict_files(tmp_path / "m.npz", [tmp_path / "a.png"], tmp_path / "o", engine="numpy", min_distance=5)
    assert not (tmp_path / "o").exists()


def test_remove_small_drops_specks_and_renumbers_the_rest():
    """Against an independent count: random blobs of random sizes, every threshold from 0 to the largest."""
    from unetcu.instances import min_size_for, remove_small
    rng = np.random.default_rng()
    inst = np.zeros((40, 53), np.int32)
    for k in range(1, 30):  # rectangles of 1..60 px, later ones over earlier (some ids vanish entirely)
        y, x = rng.integers(0, 38), rng.integers(0, 50)
        inst[y:y + rng.integers(1, 7), x:x + rng.integers(1, 11)] = k
    ids, areas = np.unique(inst[inst > 0], return_counts=True)
    for t in range(0, int(areas.max()) + 2):
        out, removed = remove_small(inst, t)
        kept = ids[areas >= t]
        assert removed == int((areas < t).sum())
        assert out.max() == len(kept) and set(np.unique(out[out > 0])) == set(range(1, len(kept) + 1))
        assert np.array_equal(out > 0, np.isin(inst, kept))
        for new, old in enumerate(kept, start=1):  # renumbered in their order, each object whole
            assert np.array_equal(out == new, inst == old)
    assert min_size_for(10.0) == 31 and min_size_for(0.5) == 1


def _speckled_run(tmp_path):
    """A checkpoint of the tiny net trained 1 step on synthetic cells, and an image with specks."""
    from unetcu import UNet
    from unetcu.data import synthetic_dataset
    from unetcu.run import PRESETS, Run, TrainConfig
    from unetcu.train import train
    depth, base, tile = PRESETS["tiny"]
    data = synthetic_dataset(2, (96, 96), seed=5)
    train(Run.of(UNet(depth=depth, base_channels=base, engine="numpy"), data, [],
                 TrainConfig(steps=1, tile=tile, out=str(tmp_path / "run"))), progress=False, log=lambda *a: None)
    return tmp_path / "run" / "checkpoint.npz"


def test_predict_leaves_specks_out_of_the_instances_and_counts_them(tmp_path, monkeypatch, capsys):
    """A foreground of 2 large objects and 9 one-pixel specks: NAME_instances.png holds the 2 by default
    (a tenth of the training objects' area), all 11 with --min-size 0, and the line says how many went;
    NAME_labels.png keeps the specks (the network's output)."""
    from unetcu import predict as P
    from unetcu.cli import main
    ckpt = _speckled_run(tmp_path)
    fg = _disks([(30, 30), (70, 70)], 12) > 0
    rng = np.random.default_rng()
    for y, x in rng.choice(np.argwhere(ndi_free(fg)), 9, replace=False):
        fg[y, x] = True
    monkeypatch.setattr(P, "predict_probs", lambda model, img, **kw: np.stack([1.0 - fg, fg * 1.0]).astype(np.float32))
    Image.fromarray(rng.integers(0, 255, fg.shape, dtype=np.uint8)).save(tmp_path / "a.png")
    assert main(["predict", str(ckpt), str(tmp_path / "a.png"), "--out", str(tmp_path / "p")]) == 0
    err = capsys.readouterr().err
    assert "2 objects (9 under" in err and "px left out)" in err, err
    assert "to look at: " in err and "_overlay.png" in err and "near black in a photo viewer" in err, err
    assert np.asarray(Image.open(tmp_path / "p" / "a_instances.png")).max() == 2
    assert (np.asarray(Image.open(tmp_path / "p" / "a_labels.png")) > 0).sum() == fg.sum()
    assert main(["predict", str(ckpt), str(tmp_path / "a.png"), "--out", str(tmp_path / "q"), "--min-size", "0"]) == 0
    err = capsys.readouterr().err
    assert "11 objects ->" in err and "left out" not in err, err
    assert np.asarray(Image.open(tmp_path / "q" / "a_instances.png")).max() == 11


def ndi_free(fg):
    """Pixels 3 px from the foreground, on a grid of spacing 3: specks there touch nothing, nor each other."""
    from scipy import ndimage as ndi
    grid = np.zeros(fg.shape, bool)
    grid[::3, ::3] = True
    return grid & ~ndi.binary_dilation(fg, iterations=3)


def test_predict_refuses_non_finite_probabilities(tmp_path, monkeypatch):
    """Finite weights so large that a pixel's logits overflow: NaN would become background with exit 0."""
    from unetcu import predict as P
    ckpt = _speckled_run(tmp_path)
    Image.fromarray(np.random.default_rng().integers(0, 255, (40, 40), dtype=np.uint8)).save(tmp_path / "a.png")
    probs = np.full((2, 40, 40), 0.5, np.float32)
    probs[:, 3, 7] = np.nan
    monkeypatch.setattr(P, "predict_probs", lambda model, img, **kw: probs)
    with pytest.raises(ValueError, match="a: the model's output is not finite"):
        P.predict_files(ckpt, [tmp_path / "a.png"], tmp_path / "p", engine="numpy", progress=False)
