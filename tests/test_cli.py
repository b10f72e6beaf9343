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
    from unetcu import runtime
    if not runtime.gpu_available():
        assert r.returncode != 0 and "no GPU is usable" in r.stderr
