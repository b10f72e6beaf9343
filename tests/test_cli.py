"""The command line: train -> predict round trip, and one-line errors with a non-zero exit for
bad paths, unreadable images and label values outside the classes, with nothing half-written."""
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from unetcu.data import synthetic_cells


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "unetcu.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    r = run("train", "--preset", "tiny", "--steps", "30", "--val-every", "15", "--ckpt-every", "15",
            "--n-synthetic", "3", "--engine", "numpy", "--out", str(d / "out"), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "validation: loss" in r.stdout
    return d


def test_train_then_predict(trained, tmp_path):
    for f in ("checkpoint.npz", "log.csv", "curves.png", "samples.png"):
        assert (trained / "out" / f).stat().st_size > 0
    imgs = []
    for i, shape in enumerate([(70, 90), (33, 20)]):
        img, _ = synthetic_cells(shape, seed=50 + i)
        p = tmp_path / f"img{i}.png"
        Image.fromarray((img * 255).astype(np.uint8)).save(p)
        imgs.append(str(p))
    r = run("predict", str(trained / "out" / "checkpoint.npz"), *imgs, "--out", str(tmp_path / "pred"), "--engine", "numpy")
    assert r.returncode == 0, r.stderr
    import tifffile
    from unetcu import UNet
    assert UNet.load(trained / "out" / "checkpoint.npz").config["n_classes"] == 2  # (--border off, the default)
    for i, shape in enumerate([(70, 90), (33, 20)]):
        prob = tifffile.imread(tmp_path / "pred" / f"img{i}_prob.tif")
        assert prob.shape == (2,) + shape and np.allclose(prob.sum(0), 1, atol=1e-5)
        lab = np.asarray(Image.open(tmp_path / "pred" / f"img{i}_labels.png"))
        assert lab.shape == shape and set(np.unique(lab)) <= {0, 255}
        assert np.asarray(Image.open(tmp_path / "pred" / f"img{i}_instances.png")).shape == shape


def test_predict_errors_write_nothing(trained, tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    ckpt = str(trained / "out" / "checkpoint.npz")
    cases = [
        ((ckpt, str(good), str(bad)), "cannot read image"),
        ((ckpt, str(good), str(tmp_path / "missing.png")), "no such image file"),
        ((str(tmp_path / "missing.npz"), str(good)), "no model file"),
        ((str(bad), str(good)), "not a readable unetcu model file"),
    ]
    for args, msg in cases:
        out = tmp_path / "out"
        r = run("predict", *args, "--out", str(out))
        assert r.returncode != 0
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and msg in lines[0], r.stderr
        assert not out.exists() or not any(out.iterdir())


def test_train_errors(tmp_path):
    r = run("train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"))
    assert r.returncode != 0 and "no such data folder" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    # a class map with a value outside the 2 classes
    (tmp_path / "d" / "images").mkdir(parents=True)
    (tmp_path / "d" / "labels").mkdir()
    for k in range(2):
        Image.fromarray(np.full((40, 40), 100, np.uint8)).save(tmp_path / "d" / "images" / f"{k}.png")
        Image.fromarray(np.full((40, 40), 5 if k else 1, np.uint8)).save(tmp_path / "d" / "labels" / f"{k}.png")
    r = run("train", "--data", str(tmp_path / "d"), "--labels", "classes", "--preset", "tiny", "--steps", "2",
            "--engine", "numpy", "--out", str(tmp_path / "o2"), "--no-progress", "--val-fraction", "0")
    assert r.returncode != 0 and "label value 5 is outside the model's 2 classes" in r.stderr, r.stderr
    r = run("train", "--engine", "cuda", "--out", str(tmp_path / "o3"))
    from unetcu.engines import runtime
    if not runtime.gpu_available():
        assert r.returncode != 0 and "no GPU is usable" in r.stderr


# ---- inputs and outputs of predict / evaluate / train (README "Input formats") ---------------------
@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    """An untrained small net: enough for predict's file handling."""
    from unetcu import UNet
    p = tmp_path_factory.mktemp("model") / "checkpoint.npz"
    UNet(depth=2, base_channels=2, engine="numpy").save(p)
    return str(p)


def one_line_error(r, *parts):
    assert r.returncode != 0, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for s in parts:
        assert s in lines[0], lines[0]
    return lines[0]


def snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_predict_never_overwrites(small_model, tmp_path):
    """Issue input: `predict cell.png cell_labels.png --out <their folder>` used to replace the
    ground truth cell_labels.png with a prediction. Now refused, with or without --overwrite, and
    an existing output of any name is refused unless --overwrite."""
    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 255, (23, 31), dtype=np.uint8)).save(tmp_path / "cell.png")
    Image.fromarray((rng.random((23, 31)) > 0.5).astype(np.uint8) * 255).save(tmp_path / "cell_labels.png")
    before = snapshot(tmp_path)
    for extra in ([], ["--overwrite"]):
        r = run("predict", small_model, str(tmp_path / "cell.png"), str(tmp_path / "cell_labels.png"),
                "--out", str(tmp_path), "--engine", "numpy", *extra)
        one_line_error(r, "cell_labels.png would overwrite the input", "cell_labels.png")
        assert snapshot(tmp_path) == before  # nothing written, nothing replaced
    out = tmp_path / "out"
    r = run("predict", small_model, str(tmp_path / "cell.png"), "--out", str(out), "--engine", "numpy", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["cell_instances.png", "cell_labels.png", "cell_overlay.png", "cell_prob.tif"]
    for name in ("cell_prob.tif", "cell_overlay.png"):  # neighbours: each output name on its own
        done = snapshot(out)
        for p in out.iterdir():
            if p.name != name:
                p.unlink()
        (out / name).write_bytes(b"someone's file")
        r = run("predict", small_model, str(tmp_path / "cell.png"), "--out", str(out), "--engine", "numpy")
        one_line_error(r, f"{name} already exists", "--overwrite")
        assert snapshot(out) == {name: b"someone's file"}
        r = run("predict", small_model, str(tmp_path / "cell.png"), "--out", str(out), "--engine", "numpy",
                "--overwrite", "--no-progress")
        assert r.returncode == 0 and snapshot(out) == done, r.stderr
    r = run("predict", small_model, str(tmp_path / "cell.png"), "--out", str(tmp_path / "cell.png"))
    one_line_error(r, "is a file; expected a folder")


def test_predict_rgb_tiff_stack_and_overlay(small_model, tmp_path):
    """Issue input: an RGB TIFF (H, W, 3) gave H output files; it is one image. A 3-page stack gives
    three, each equal to predicting its page alone (streaming changes nothing)."""
    import tifffile
    rng = np.random.default_rng(6)
    rgb = rng.integers(0, 255, (29, 35, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    stack = rng.integers(0, 255, (3, 29, 35), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    Image.fromarray(stack[1]).save(tmp_path / "page1.png")
    out = tmp_path / "out"
    r = run("predict", small_model, str(tmp_path / "rgb.tif"), str(tmp_path / "stack.tif"), str(tmp_path / "page1.png"),
            "--out", str(out), "--engine", "numpy")
    assert r.returncode == 0, r.stderr
    stems = sorted({p.name.rsplit("_", 1)[0] for p in out.iterdir()})
    assert stems == ["page1", "rgb", "stack-000", "stack-001", "stack-002"]
    assert "[5/5]" in r.stderr
    assert np.array_equal(tifffile.imread(out / "stack-001_prob.tif"), tifffile.imread(out / "page1_prob.tif"))
    ov = np.asarray(Image.open(out / "rgb_overlay.png"))
    inst = np.asarray(Image.open(out / "rgb_instances.png"))
    assert ov.shape == (29, 35, 3) and ov.dtype == np.uint8
    gray = (ov[..., 0] == ov[..., 1]) & (ov[..., 1] == ov[..., 2])
    assert gray[inst == 0].all()  # background: the gray image
    assert not gray[inst > 0].any()  # objects: coloured


def test_non_finite_input_refused_everywhere(small_model, tmp_path):
    """Issue input: a float32 TIFF with 8 NaN pixels. train stopped with 'loss became nan ... lower
    the learning rate', predict exited 0 with NaN probabilities. Now each command refuses it up
    front, naming the file and the count (Inf as well as NaN)."""
    import tifffile
    rng = np.random.default_rng(7)
    img = rng.standard_normal((40, 44)).astype(np.float32)
    img.flat[rng.choice(img.size, 8, replace=False)] = np.nan
    img.flat[0] = np.inf  # and one Inf: 9 in all
    d = tmp_path / "d"
    (d / "images").mkdir(parents=True)
    (d / "labels").mkdir()
    for k in range(2):
        tifffile.imwrite(d / "images" / f"{k}.tif", img if k else np.nan_to_num(img))
        lab = np.zeros((40, 44), np.uint8)
        lab[5:20, 5:20] = 255
        Image.fromarray(lab).save(d / "labels" / f"{k}.png")
    r = run("train", "--data", str(d), "--preset", "tiny", "--steps", "2", "--engine", "numpy",
            "--out", str(tmp_path / "o"), "--no-progress", "--val-fraction", "0")
    one_line_error(r, "unetcu train:", "1.tif: 9 non-finite pixel values")
    out = tmp_path / "out"
    r = run("predict", small_model, str(d / "images" / "0.tif"), str(d / "images" / "1.tif"), "--out", str(out))
    one_line_error(r, "unetcu predict:", "1.tif: 9 non-finite pixel values")
    assert not out.exists()
    prob = np.stack([np.full((40, 44), 0.5, np.float32)] * 2)
    prob[1, 3, 3] = np.inf
    (tmp_path / "pred").mkdir()
    tifffile.imwrite(tmp_path / "pred" / "0_prob.tif", prob)
    r = run("evaluate", str(tmp_path / "pred"), str(d / "labels"))
    one_line_error(r, "unetcu evaluate:", "0_prob.tif page 1: 1 non-finite pixel values")


def test_messages_say_what_was_expected(small_model, tmp_path):
    """Issue inputs: a folder given as an image, a PNG given as the model, evaluate on a size
    mismatch (its prefix appeared twice), a JPEG label mask."""
    Image.fromarray(np.random.default_rng(8).integers(0, 255, (30, 30), dtype=np.uint8)).save(tmp_path / "a.png")
    r = run("predict", small_model, str(tmp_path), "--out", str(tmp_path / "o"))
    one_line_error(r, "is a folder, not an image file")
    r = run("predict", str(tmp_path / "a.png"), str(tmp_path / "a.png"), "--out", str(tmp_path / "o"))
    one_line_error(r, "a.png: not a readable unetcu model file (a PNG image)", "checkpoint.npz written by `unetcu train`",
                   "the model comes first, then the images")
    (tmp_path / "notes (an image).txt").write_text("not a model")  # the hint follows the content, not the name
    r = run("predict", str(tmp_path / "notes (an image).txt"), str(tmp_path / "a.png"), "--out", str(tmp_path / "o"))
    assert "comes first" not in one_line_error(r, "not a readable unetcu model file (not an .npz archive)")
    (tmp_path / "pred").mkdir()
    (tmp_path / "gt").mkdir()
    Image.fromarray(np.zeros((30, 30), np.uint16)).save(tmp_path / "pred" / "a_instances.png")
    Image.fromarray(np.zeros((30, 31), np.uint8)).save(tmp_path / "gt" / "a.png")
    line = one_line_error(run("evaluate", str(tmp_path / "pred"), str(tmp_path / "gt")),
                          "(1 page of 30x30) and label", "(1 page of 30x31) differ in size")
    assert line.count("evaluate") == 1
    m = np.zeros((30, 31), np.uint8)
    m[5:15, 5:15] = 255
    Image.fromarray(m).save(tmp_path / "gt" / "a.jpg")
    (tmp_path / "gt" / "a.png").unlink()
    Image.fromarray(np.zeros((30, 31), np.uint16)).save(tmp_path / "pred" / "a_instances.png")
    one_line_error(run("evaluate", str(tmp_path / "pred"), str(tmp_path / "gt")), "a.jpg: a label image in a lossy format")
    r = run("evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"), "--label-mode", "threshold")
    assert r.returncode == 0, r.stderr


def test_evaluate_plain_instance_labels_against_themselves(tmp_path):
    """Label images of another tool keep their instance ids: touching cells scored against
    themselves are perfect (SEG 1, errors 0), not merged into connected components."""
    assert run("synth", str(tmp_path / "ex"), "--count", "2", "--size", "96").returncode == 0
    r = run("evaluate", str(tmp_path / "ex" / "labels"), str(tmp_path / "ex" / "labels"))
    assert r.returncode == 0, r.stderr
    mean = r.stdout.strip().splitlines()[-1].split()
    assert mean[0] == "mean" and [float(v) for v in mean[1:]] == [0.0, 0.0, 1.0, 1.0, 0.0, 0.0], r.stdout


def test_evaluate_says_the_order_and_names_images_given_as_labels(tmp_path):
    """Issue 24: `evaluate predictions examples/images` advised label mode 'threshold' (which scored
    the images as masks, exit 0); `evaluate examples/labels predictions` gave no hint of the order."""
    from unetcu.predict import write_results
    assert run("synth", str(tmp_path / "ex"), "--count", "2", "--size", "64", "--seed", "7").returncode == 0
    ex = tmp_path / "ex"
    (tmp_path / "pred").mkdir()
    for k in range(2):
        inst = np.asarray(Image.open(ex / "labels" / f"synth_{k:03d}.png"))
        fg = (inst > 0).astype(np.float32)
        write_results(tmp_path / "pred", f"synth_{k:03d}", np.stack([1 - fg, fg]), np.zeros(fg.shape))
    assert run("evaluate", str(tmp_path / "pred"), str(ex / "labels")).returncode == 0
    for mode in ("auto", "threshold"):
        r = run("evaluate", str(tmp_path / "pred"), str(ex / "images"), "--label-mode", mode)
        line = one_line_error(r, "looks like an image, not a label image", "evaluate takes PREDICTIONS then LABELS",
                              str(ex / "labels"))
        assert "threshold" not in line and r.returncode == 1
    r = run("evaluate", str(ex / "labels"), str(tmp_path / "pred"))
    one_line_error(r, "evaluate takes PREDICTIONS then LABELS", f"unetcu evaluate {tmp_path / 'pred'} {ex / 'labels'}")


def test_evaluate_per_page_predictions_against_a_stack(tmp_path):
    """Issue 24: per-page predictions (predict's names for a stack's pages) against a label stack."""
    import tifffile
    rng = np.random.default_rng()
    labs = np.stack([synthetic_cells((48, 56), seed=int(s))[1] for s in rng.integers(0, 1 << 30, 3)]).astype(np.uint16)
    tifffile.imwrite(tmp_path / "train-labels.tif", labs, photometric="minisblack")
    (tmp_path / "pred").mkdir()
    for k in range(3):
        Image.fromarray(labs[k]).save(tmp_path / "pred" / f"train-volume-{k:03d}_instances.png")
    r = run("evaluate", str(tmp_path / "pred"), str(tmp_path / "train-labels.tif"))
    assert r.returncode == 0, r.stderr
    rows = r.stdout.strip().splitlines()
    assert [x.split()[0] for x in rows[1:]] == ["train-volume-000", "train-volume-001", "train-volume-002", "mean"]
    assert [float(v) for v in rows[-1].split()[1:]] == [0.0, 0.0, 1.0, 1.0, 0.0, 0.0], r.stdout
    r = run("evaluate", str(tmp_path / "pred"), str(tmp_path / "train-labels.tif"))
    (tmp_path / "pred" / "train-volume-002_instances.png").unlink()
    r = run("evaluate", str(tmp_path / "pred"), str(tmp_path / "train-labels.tif"))
    one_line_error(r, "2 pages of predictions", "3 pages of labels", "differ in number")
