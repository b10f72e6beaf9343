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
        assert write_results(tmp_path / m, "x", probs, method=m) == n
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
    from unetcu.train import PRESETS, TrainConfig, train
    depth, base, tile = PRESETS["tiny"]
    data = synthetic_dataset(2, (96, 96), seed=5)
    train(UNet(depth=depth, base_channels=base, engine="numpy"), data, [],
          TrainConfig(steps=1, tile=tile, out=str(tmp_path / "run")), progress=False, log=lambda *a: None)
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
    with pytest.raises(ValueError, match="instances must be one of"):
        predict_files(tmp_path / "bare.npz", [tmp_path / "a.png"], tmp_path / "r", engine="numpy", instances="blobs")


def test_min_distance_without_watershed_is_refused(tmp_path):
    from unetcu import UNet
    from unetcu.predict import predict_files
    UNet(depth=2, base_channels=2, engine="numpy").save(tmp_path / "m.npz")
    Image.fromarray(np.full((20, 20), 7, np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(ValueError, match="give it with --instances watershed"):
        predict_files(tmp_path / "m.npz", [tmp_path / "a.png"], tmp_path / "o", engine="numpy", min_distance=5)
    assert not (tmp_path / "o").exists()
