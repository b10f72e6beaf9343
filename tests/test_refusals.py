"""Inputs that once gave a wrong result with exit 0, overwrote a file, hung or printed a traceback:
each is refused in one line now, or read right (found by trying to break the command line)."""
import os
import signal
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from unetcu import UNet
from unetcu.data import InputError, find_pairs, read_image


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "unetcu.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def one_line(r):
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def write_png(path, a, colour_type, depth):
    """A PNG written by hand (Pillow cannot write 16-bit colour or gray+alpha)."""
    h = a.shape[0]

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    raw = b"".join(b"\0" + a[y].astype(">u2" if depth == 16 else "u1").tobytes() for y in range(h))
    head = struct.pack(">IIBBBBB", a.shape[1], h, depth, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("colour_type,channels", [(4, 2), (2, 3), (6, 4)], ids=["LA16", "RGB16", "RGBA16"])
def test_16bit_colour_png_is_refused_not_cut_to_8_bits(tmp_path, rng, colour_type, channels):
    a = rng.integers(0, 65536, (9, 11, channels)).astype(np.uint16)
    a[..., 0].flat[:4] = [0, 1, 300, 4464]  # ids that 8 bits would turn into 0, 0, 1, 17
    write_png(tmp_path / "x.png", a, colour_type, 16)
    for role in ("image", "label"):
        with pytest.raises(InputError, match=r"x.png: a 16-bit .* PNG .*low 8 bits"):
            read_image(tmp_path / "x.png", role)
    write_png(tmp_path / "g.png", a[..., 0], 0, 16)  # 16-bit gray is read exactly
    assert np.array_equal(read_image(tmp_path / "g.png", "label"), a[..., 0])


def test_pairing_never_gives_one_label_to_two_images(tmp_path):
    for sub in ("images", "labels"):
        (tmp_path / "d" / sub).mkdir(parents=True)
    img = np.arange(20 * 24, dtype=np.uint8).reshape(20, 24)
    for n in ("cellA_01", "cellB_01"):
        Image.fromarray(img).save(tmp_path / "d" / "images" / f"{n}.png")
    for n in ("cellA_01", "cellB_02"):
        Image.fromarray((img > 100).astype(np.uint8) * 255).save(tmp_path / "d" / "labels" / f"{n}.png")
    # cellA_01's label is cellA_01's by name: cellB_01 has none (it used to get cellA_01's by number)
    with pytest.raises(ValueError, match="cannot pair image cellB_01.png"):
        find_pairs(tmp_path / "d")
    pred = tmp_path / "pred"
    pred.mkdir()
    for n in ("cellA_01", "cellB_01"):
        Image.fromarray((img > 100).astype(np.uint16)).save(pred / f"{n}_instances.png")
    r = run("evaluate", str(pred), str(tmp_path / "d" / "labels"))
    assert r.returncode == 1 and "no label image for prediction cellB_01_instances.png" in one_line(r)
    # one label whose number two images share: refused, never given to both
    (tmp_path / "d" / "labels" / "cellA_01.png").rename(tmp_path / "d" / "labels" / "seg_01.png")
    with pytest.raises(ValueError, match="seg_01.png would pair with both cellA_01 and cellB_01"):
        find_pairs(tmp_path / "d")
    r = run("evaluate", str(pred), str(tmp_path / "d" / "labels"))
    assert r.returncode == 1 and "would pair with both" in one_line(r)
    # the DIC-HeLa naming still pairs by number
    (tmp_path / "d" / "labels" / "cellB_02.png").unlink()
    (tmp_path / "d" / "images" / "cellB_01.png").unlink()
    assert [(a.name, b.name) for a, b in find_pairs(tmp_path / "d")] == [("cellA_01.png", "seg_01.png")]


def test_outputs_never_replace_an_input(tmp_path):
    img = np.arange(30 * 20, dtype=np.uint8).reshape(30, 20)
    Image.fromarray(img).save(tmp_path / "x.png")
    UNet(depth=2, base_channels=2, engine="numpy").save(tmp_path / "x_overlay.png")  # a model with an output's name
    model = (tmp_path / "x_overlay.png").read_bytes()
    r = run("predict", "x_overlay.png", "x.png", "--out", ".", "--overwrite", "--engine", "numpy", cwd=tmp_path)
    assert r.returncode == 1 and "would overwrite the input" in one_line(r)
    assert (tmp_path / "x_overlay.png").read_bytes() == model and not (tmp_path / "x_prob.tif").exists()
    # evaluate --json: never an input, never an existing file without --overwrite, written whole
    Image.fromarray((img > 100).astype(np.uint16)).save(tmp_path / "p_instances.png")
    Image.fromarray((img > 90).astype(np.uint8) * 255).save(tmp_path / "lab.png")
    truth = (tmp_path / "lab.png").read_bytes()
    for target, msg in (("lab.png", "is one of the inputs"), ("p_instances.png", "is one of the inputs")):
        r = run("evaluate", "p_instances.png", "lab.png", "--json", target, "--overwrite", cwd=tmp_path)
        assert r.returncode == 1 and msg in one_line(r)
    assert (tmp_path / "lab.png").read_bytes() == truth
    assert run("evaluate", "p_instances.png", "lab.png", "--json", "s.json", cwd=tmp_path).returncode == 0
    r = run("evaluate", "p_instances.png", "lab.png", "--json", "s.json", cwd=tmp_path)
    assert r.returncode == 1 and "already exists" in one_line(r)
    assert run("evaluate", "p_instances.png", "lab.png", "--json", "s.json", "--overwrite", cwd=tmp_path).returncode == 0


BAD = [("--tile", "99999999999999999999"), ("--sigma", "inf"), ("--sigma", "1e300"), ("--sigma", "1e-300"),
       ("--lr", "inf"), ("--lr", "1e308"), ("--w0", "inf"), ("--weight-decay", "1e30"), ("--clip", "inf"),
       ("--batch", "99999999999"), ("--lr", "1e-320"), ("--steps", "99999999999999999999")]


@pytest.mark.parametrize("opt,value", BAD, ids=[f"{o}={v}" for o, v in BAD])
def test_infinite_and_huge_options_are_refused_at_once(tmp_path, opt, value):
    t0 = time.perf_counter()
    r = run("train", opt, value, "--preset", "tiny", "--engine", "numpy", cwd=tmp_path)
    assert r.returncode == 2 and f"argument {opt}: must be" in one_line(r)
    assert time.perf_counter() - t0 < 60 and not any(tmp_path.iterdir())


def test_resume_from_an_image_says_what_was_expected(tmp_path):
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(tmp_path / "x.png")
    r = run("train", "--resume", "x.png", cwd=tmp_path)
    line = one_line(r)
    assert r.returncode == 1 and "not a readable unetcu model file (a PNG image)" in line and "pickle" not in line
    assert "predict" not in line and "images" not in line  # predict's argument order is not train's business


def test_ctrl_c_after_the_last_step_still_reports_the_checkpoint(tmp_path, monkeypatch):
    from unetcu import train as T
    from unetcu.data import synthetic_dataset
    from unetcu import run as R
    from unetcu.run import Run

    def planted(*a, **k):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.5)
    monkeypatch.setattr(T, "plot_samples", planted)
    depth, base, tile = R.PRESETS["tiny"]
    cfg = R.TrainConfig(steps=3, tile=tile, val_every=3, out=str(tmp_path / "r"))
    with pytest.raises(T.TrainingInterrupted) as e:
        T.train(Run.of(UNet(depth=depth, base_channels=base, engine="numpy"), synthetic_dataset(2, (96, 96), seed=1),
                       synthetic_dataset(1, (96, 96), seed=2), cfg), progress=False, log=lambda *a: None)
    assert e.value.step == 3 and e.value.checkpoint == tmp_path / "r" / "checkpoint.npz"


def test_interrupted_predict_and_synth_leave_no_partial_set(tmp_path, monkeypatch):
    """Ctrl-C in predict keeps the pages whose four outputs are complete and none of the page it
    was writing; in synth, nothing of the run (no image without its label, no empty folder)."""
    from unetcu import cli, data, predict
    UNet(depth=2, base_channels=2, engine="numpy").save(tmp_path / "m.npz")
    for k in range(3):
        Image.fromarray(np.arange(20 * 26, dtype=np.uint8).reshape(20, 26) * (k + 1)).save(tmp_path / f"x{k}.png")
    real, calls = predict.atomic_write, {"n": 0}

    def planted(path, write):
        calls["n"] += 1
        if calls["n"] == 6:  # the 2nd output of the 2nd page
            raise KeyboardInterrupt
        return real(path, write)
    monkeypatch.setattr(predict, "atomic_write", planted)
    with pytest.raises(predict.PredictInterrupted) as e:
        predict.predict_files(tmp_path / "m.npz", [tmp_path / f"x{k}.png" for k in range(3)], tmp_path / "out",
                              engine="numpy", progress=False)
    assert e.value.done == ["x0"] and e.value.left == ["x1", "x2"]
    assert sorted(f.name for f in (tmp_path / "out").iterdir()) == sorted(f"x0{s}" for s in predict.OUTPUTS)
    monkeypatch.setattr(predict, "atomic_write", real)

    def stop(*a, **k):
        raise KeyboardInterrupt
    n = {"k": 0}
    real_cells = data.synthetic_cells

    def cells(*a, **k):
        n["k"] += 1
        return stop() if n["k"] == 3 else real_cells(*a, **k)
    monkeypatch.setattr(data, "synthetic_cells", cells)
    assert cli.main(["synth", str(tmp_path / "s" / "ex"), "--count", "4", "--size", "32"]) == 130
    assert not (tmp_path / "s" / "ex").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # main() gives Ctrl-C back


def test_evaluate_json_needs_a_writable_name(tmp_path):
    img = np.arange(30 * 20, dtype=np.uint8).reshape(30, 20)
    Image.fromarray((img > 100).astype(np.uint16)).save(tmp_path / "p_instances.png")
    Image.fromarray((img > 90).astype(np.uint8) * 255).save(tmp_path / "lab.png")
    for name, msg in (("", "--json needs a file name"), ("no/dir/s.json", "cannot write no/dir/s.json: no folder no/dir")):
        r = run("evaluate", "p_instances.png", "lab.png", "--json", name, cwd=tmp_path)
        assert r.returncode == 1 and msg in one_line(r), r.stderr


def test_interrupting_an_overwrite_before_its_first_step_claims_nothing(tmp_path):
    """The old run stays, and the message does not offer its checkpoint as this run's."""
    assert run("train", "--preset", "tiny", "--engine", "numpy", "--n-synthetic", "2", "--steps", "2",
               "--val-every", "2", "--out", "r", "--no-progress", cwd=tmp_path).returncode == 0
    before = (tmp_path / "r" / "checkpoint.npz").read_bytes()
    env = dict(os.environ)
    p = subprocess.Popen([sys.executable, "-c", SLOW_FIRST_STEP, "train", "--preset", "tiny", "--engine", "numpy",
                          "--n-synthetic", "2", "--steps", "5", "--out", "r", "--overwrite", "--no-progress"],
                         cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    t0 = time.time()
    while "training" not in (p.stdout.readline() or "") and time.time() - t0 < 120:
        pass
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert one_line(subprocess.CompletedProcess([], 0, "", err)) == \
        "unetcu train: interrupted before the first step finished; nothing was saved (r/ holds what it held before)"
    assert (tmp_path / "r" / "checkpoint.npz").read_bytes() == before


# the CLI with a first step that takes long (a model whose loss sleeps once), to interrupt it for sure
SLOW_FIRST_STEP = """
import sys, time
from unetcu import cli
from unetcu.model import UNet
real = UNet.loss_and_grads
def slow(self, *a, **k):
    time.sleep(30)
    return real(self, *a, **k)
UNet.loss_and_grads = slow
sys.exit(cli.main())
"""


@pytest.mark.parametrize("args, msg", [(("--momentum", "0.5"), "--momentum applies to --optimizer sgd"),
                                       (("--warmup", "50", "--steps", "20"), "--warmup 50 must be below --steps 20")])
def test_options_that_would_be_ignored_or_never_take_effect_are_refused(tmp_path, args, msg):
    r = run("train", "--preset", "tiny", "--engine", "numpy", "--n-synthetic", "2", "--out", "r", "--no-progress", *args,
            cwd=tmp_path)
    assert r.returncode == 1 and msg in one_line(r), r.stderr
    assert not (tmp_path / "r").exists()


# ---- class maps (issue 24, item 3) ------------------------------------------------------------------
def class_folder(path, rng, values, n=3, size=48):
    """images/ + labels/ of n class maps: 6x6 blocks of 8 pixels drawn from `values`, each value in every map."""
    for d in ("images", "labels"):
        (path / d).mkdir(parents=True)
    for k in range(n):
        grid = rng.choice(values, (6, 6))
        grid.flat[:len(values)] = values
        Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(path / "images" / f"c{k}.png")
        Image.fromarray(np.kron(grid, np.ones((8, 8), int)).astype(np.uint8)).save(path / "labels" / f"c{k}.png")
    return path


def train(tmp_path, *args):
    return run("train", "--preset", "tiny", "--engine", "numpy", "--steps", "2", "--out", str(tmp_path / "r"),
               "--no-progress", "--overwrite", *args)


def test_class_map_under_auto_is_read_as_class_ids(tmp_path, rng):
    """Issue input: `train --classes 3` on class maps {0,1,2} under the default --labels auto read
    them as instance ids (targets {0,1}) with no word. Now auto means class ids above 2 classes, and
    every run says in one line how its labels were read."""
    from unetcu import data as D
    d = class_folder(tmp_path / "d3", rng, [0, 1, 2])
    for s in D.load_folder(d, "auto", 3):
        assert s.semantic and s.read_as == "classes" and sorted(np.unique(s.classes())) == [0, 1, 2]
    r = train(tmp_path, "--data", str(d), "--classes", "3")
    assert r.returncode == 0, r.stderr
    assert "labels: class ids 0..2 (3 classes), 3 images" in r.stdout.splitlines()
    # neighbours: 4 classes; 3 classes of which the maps use 2 (said); --val-data read the same way
    d4 = class_folder(tmp_path / "d4", rng, [0, 1, 2, 3])
    r = train(tmp_path, "--data", str(d4), "--classes", "4")
    assert r.returncode == 0 and "labels: class ids 0..3 (4 classes), 3 images" in r.stdout, r.stderr
    d01 = class_folder(tmp_path / "d01", rng, [0, 1])
    r = train(tmp_path, "--data", str(d01), "--classes", "3", "--val-data", str(d))
    assert r.returncode == 0, r.stderr
    assert "labels: class ids 0..2 (3 classes), 6 images" in r.stdout
    assert any(s.read_as == "classes" for s in D.load_folder(d, "auto", 3))
    r = train(tmp_path, "--data", str(d01), "--classes", "3", "--val-fraction", "0")
    assert r.returncode == 0 and "labels: class ids 0, 1 of 3 classes (class 2 in no image" in r.stdout, r.stderr
    # two classes: binary masks and instance ids say so, with their object counts
    r = train(tmp_path, "--data", str(d01))
    assert r.returncode == 0 and "labels: binary masks (objects: connected components), 3 images, " in r.stdout, r.stderr


@pytest.mark.parametrize("extra, msg", [
    (("--classes", "3"), "label value 3 is outside the model's 3 classes (0..2"),  # values >= classes
    (("--classes", "3", "--labels", "instance"), "--labels instance gives 2 classes (background, object interior), "
                                                 "not the 3 of --classes 3"),
    (("--classes", "3", "--labels", "binary"), "--labels binary gives 2 classes"),
])
def test_class_maps_that_do_not_fit_are_refused_in_one_line(tmp_path, rng, extra, msg):
    d = class_folder(tmp_path / "d", rng, [0, 1, 2, 3])
    r = train(tmp_path, "--data", str(d), *extra)
    line = one_line(r)
    assert r.returncode == 1 and msg in line, r.stderr
    if "outside" in msg:
        assert "labels/c0.png" in line
    assert not (tmp_path / "r").exists()


def test_val_data_class_values_are_checked_naming_the_file(tmp_path, rng):
    d = class_folder(tmp_path / "d", rng, [0, 1, 2])
    v = class_folder(tmp_path / "v", rng, [0, 1, 2, 5])
    r = train(tmp_path, "--data", str(d), "--classes", "3", "--val-data", str(v))
    assert r.returncode == 1 and "v/labels/c0.png: label value 5 is outside the model's 3 classes" in one_line(r)


def test_synthetic_default_says_its_labels_and_refuses_more_classes(tmp_path):
    r = train(tmp_path, "--n-synthetic", "1")
    assert r.returncode == 0, r.stderr
    assert any(line.startswith("labels: instance ids (synthetic), 2 images, ") for line in r.stdout.splitlines()), r.stdout
    r = train(tmp_path, "--n-synthetic", "1", "--classes", "3")
    assert r.returncode == 1 and "--classes 3: the synthetic cells have 2 classes" in one_line(r)
    r = train(tmp_path, "--n-synthetic", "1", "--labels", "classes")
    assert r.returncode == 1 and "--labels classes applies to label images of --data" in one_line(r)
