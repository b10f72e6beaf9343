"""The border class (train --border): where touching objects meet is learnt as a third class and
objects are the cell class grown back into it. Its target against a brute-force definition, the
instances it gives back, the auto rule on touching cells and on membrane labels, and the model
carrying it through training, a checkpoint, predict, resume and ONNX."""
import json
import subprocess
import sys

import numpy as np
import pytest

from unetcu import UNet
from unetcu.data import Sample, border_classes, synthetic_dataset, touching_fraction
from unetcu.instances import from_classes, grow_cores, min_size_for, remove_small
from unetcu.metrics import seg_score
from unetcu.run import border_width, targets
from unetcu.weightmap import weight_map


def _voronoi(shape, n, rng, walls=False, holes=True):
    """Random objects that tile the image (every neighbour touches), some removed (background);
    walls: a 3-px background line between neighbours instead (membrane labels, as ISBI 2012's)."""
    pts = rng.uniform(0, 1, (n, 2)) * shape
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    d = (yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2
    lab = (np.argmin(d, -1) + 1).astype(np.int32)
    if holes:
        lab[np.isin(lab, rng.choice(np.arange(1, n + 1), n // 4, replace=False))] = 0
    if walls:
        wall = np.zeros(shape, bool)
        wall[:, 1:] |= (lab[:, 1:] != lab[:, :-1])
        wall[1:, :] |= (lab[1:, :] != lab[:-1, :])
        lab[__import__("scipy.ndimage").ndimage.binary_dilation(wall)] = 0  # 3 px: no diagonal contact
    return lab


def _brute(inst, width):
    out = (inst > 0).astype(np.int32)
    H, W = inst.shape
    for y, x in zip(*np.nonzero(inst)):
        y0, y1, x0, x1 = max(0, y - width), min(H, y + width + 1), max(0, x - width), min(W, x + width + 1)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        near = (yy - y) ** 2 + (xx - x) ** 2 <= width * width
        win = inst[y0:y1, x0:x1]
        if np.any(near & (win > 0) & (win != inst[y, x])):
            out[y, x] = 2
    return out


@pytest.mark.parametrize("seed,width", [(0, 1), (1, 2), (2, 3), (3, 5)])
def test_border_classes_equal_the_brute_force_definition(seed, width):
    rng = np.random.default_rng(seed)
    inst = _voronoi((37, 53), 12, rng)
    got = border_classes(inst, width)
    assert got.dtype == np.int32 and np.array_equal(got, _brute(inst, width))
    assert (got == 2).any() and (got == 1).any() and (got == 0).any()  # all three classes occur


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_perfect_border_classes_give_the_objects_back_and_lose_no_pixel(seed):
    rng = np.random.default_rng(seed)
    inst = _voronoi((61, 47), 9, rng)
    for width in (1, 2, 3):
        cls = border_classes(inst, width)
        got = from_classes(cls, border=width)
        assert np.array_equal(got > 0, inst > 0) and got.dtype == np.int32
        assert seg_score(inst, got) > 0.9 > seg_score(inst, from_classes((cls > 0).astype(np.int32)))
    # a piece of border with no cell class in it is an object of its own, not dropped
    cls = np.zeros((9, 11), np.int32)
    cls[1:4, 1:4] = 1
    cls[6:8, 6:9] = 2
    got = grow_cores(np.where(cls == 1, 1, 0), cls > 0)
    assert got.max() == 2 and np.array_equal(got > 0, cls > 0)


def test_auto_is_on_for_touching_cells_and_off_for_membranes():
    rng = np.random.default_rng(4)
    cells = [Sample(np.zeros((80, 90), np.float32), _voronoi((80, 90), 20, rng), f"c{i}") for i in range(2)]
    membranes = [Sample(np.zeros((80, 90), np.float32), _voronoi((80, 90), 20, rng, walls=True, holes=False), "m")]
    assert touching_fraction([s.instances for s in cells]) > 0.5 and touching_fraction([s.instances for s in membranes]) == 0
    assert border_width(cells, "auto") >= 2 and border_width(membranes, "auto") == 0
    assert border_width(cells, "off") == 0 and border_width(membranes, "on") >= 2
    semantic = [Sample(np.zeros((8, 8), np.float32), np.ones((8, 8), np.int32), "s", semantic=True)]
    assert border_width(semantic, "on") == 0
    with pytest.raises(ValueError, match="--border must be auto, on or off"):
        border_width(cells, "yes")


def test_target_and_weight_map_of_a_border_model():
    rng = np.random.default_rng(5)
    s = Sample(np.zeros((40, 50), np.float32), _voronoi((40, 50), 10, rng), "v")
    model = UNet(depth=2, base_channels=2, n_classes=3, border=2, engine="numpy")
    cls = targets(s, model)
    assert np.array_equal(cls, border_classes(s.instances, 2))
    w = weight_map(s.instances, 0.0, 5.0, 3, classes=cls)  # class balance alone: each class weighs the same in total
    totals = [w[cls == k].sum() for k in range(3)]
    assert np.allclose(totals, totals[0], rtol=1e-5)
    from unetcu.run import TrainConfig, weights
    from unetcu.weightmap import BORDER_WEIGHT, border_weight_map
    bw = weights(s, cls, TrainConfig(w0=0.0), model)  # the map training uses for a border model
    assert np.array_equal(bw, border_weight_map(s.instances, cls, 0.0, 5.0))
    fg = cls > 0  # background against objects balanced: each side weighs half the image, before the border's factor
    plain = np.where(cls == 2, bw / BORDER_WEIGHT, bw)
    assert np.isclose(plain[fg].sum(), plain[~fg].sum(), rtol=1e-5) and np.isclose(plain.mean(), 1.0, rtol=1e-5)
    assert np.allclose(bw[cls == 2], BORDER_WEIGHT * bw[cls == 1][0]) and np.allclose(bw[cls == 1], bw[cls == 1][0])
    with pytest.raises(ValueError, match="learns it from instance labels"):
        targets(Sample(s.image, cls, "sem", semantic=True), model)
    for bad in (dict(n_classes=2, border=2), dict(n_classes=3, border=-1), dict(n_classes=3, border=1.5),
                dict(n_classes=3, border=True)):
        with pytest.raises(ValueError, match="border"):
            UNet(depth=2, base_channels=2, engine="numpy", **bad)


def run(*args, cwd):
    return subprocess.run([sys.executable, "-m", "unetcu.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_train_predict_resume_export_carry_the_border_class(tmp_path):
    """Synthetic touching cells: --border auto turns the border class on; the checkpoint, predict's instances
    (auto: the cell class's components grown into the border),
    a resume and an ONNX round trip all keep it; what would change it is refused."""
    tiny = ("--preset", "tiny", "--n-synthetic", "3", "--engine", "numpy", "--no-progress", "--steps", "3")
    r = run("train", *tiny, "--border", "auto", "--out", "b", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "border class: on" in r.stdout
    model, _, state = UNet.load(tmp_path / "b" / "checkpoint.npz", with_state=True)
    assert model.config["n_classes"] == 3 and model.config["border"] >= 2
    assert state["config"]["run"]["border"] == "auto"
    r = run("train", "--resume", "b/checkpoint.npz", "--steps", "4", "--border", "off", cwd=tmp_path)
    assert r.returncode == 1 and "--border off differs from the run's model" in r.stderr, r.stderr
    r = run("train", "--resume", "b/checkpoint.npz", "--steps", "4", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s = synthetic_dataset(1, (120, 130), seed=9)[0]
    from PIL import Image
    Image.fromarray((s.image - s.image.min()) / np.ptp(s.image) * 255).convert("L").save(tmp_path / "x.png")
    r = run("predict", "b/checkpoint.npz", "x.png", "--out", "p", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    probs = __import__("tifffile").imread(tmp_path / "p" / "x_prob.tif")
    inst = np.asarray(Image.open(tmp_path / "p" / "x_instances.png"))
    want, _ = remove_small(from_classes(probs.argmax(0), model.config["border"]), min_size_for(state["object_radius"]))
    assert probs.shape[0] == 3 and np.array_equal(inst, want)  # the cells grown into the border, specks left out
    (tmp_path / "truth").mkdir()
    Image.fromarray(s.instances.astype(np.uint16)).save(tmp_path / "truth" / "x.png")
    from unetcu.metrics import evaluate, evaluate_files
    (name, m), = evaluate_files(tmp_path / "p", tmp_path / "truth")  # scores x_prob.tif: objects as predict makes them
    assert m["seg"] == seg_score(s.instances, from_classes(probs.argmax(0), model.config["border"]))
    for f in ("x_prob.tif", "x_instances.png"):  # the class map alone is scored the same way
        (tmp_path / "p" / f).unlink()
    (_, m2), = evaluate_files(tmp_path / "p", tmp_path / "truth")
    assert m2["seg"] == m["seg"] and m2["rand_error"] == pytest.approx(
        evaluate(s.instances, pred_inst=from_classes(probs.argmax(0), model.config["border"]))["rand_error"])
    r = run("train", *tiny, "--border", "on", "--classes", "3", "--out", "c", cwd=tmp_path)
    assert r.returncode == 1 and "--border on adds a border class" in r.stderr, r.stderr
    r = run("train", *tiny, "--border", "off", "--out", "d", cwd=tmp_path)
    assert r.returncode == 0 and "border class" not in r.stdout, r.stderr
    assert UNet.load(tmp_path / "d" / "checkpoint.npz").config["border"] == 0
    pytest.importorskip("onnx")
    from unetcu.export import from_onnx, to_onnx
    import onnx
    onnx.save(to_onnx(model), tmp_path / "m.onnx")
    assert from_onnx(tmp_path / "m.onnx").config == model.config


def test_a_checkpoint_written_before_the_border_class_loads_without_one(tmp_path):
    m = UNet(depth=2, base_channels=2, engine="numpy")
    m.save(tmp_path / "old.npz")
    z = dict(np.load(tmp_path / "old.npz"))
    meta = json.loads(bytes(z["meta"]).decode())
    assert "border" not in meta["config"]  # no border class: the header a unetcu before it reads
    meta["config"]["border"] = 0
    z["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(tmp_path / "new.npz", **z)
    assert UNet.load(tmp_path / "new.npz").config == m.config
    del meta["config"]["border"]
    z["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(tmp_path / "old2.npz", **z)
    assert UNet.load(tmp_path / "old2.npz").config == m.config
