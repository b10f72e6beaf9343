"""A training run's lifecycle: nothing trained is overwritten, Ctrl-C saves the last finished step
and resumes exactly, logs are written as the run goes, --resume needs only the checkpoint, every
numeric option is range-checked before anything is created, the engine report is the one train
and predict use, and the files are readable by the umask's rules."""
import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from unetcu import UNet
from unetcu.data import synthetic_dataset
from unetcu.report import loss_axis
from unetcu.run import PRESETS, Run, TrainConfig
from unetcu.train import TrainingInterrupted, train

TINY = ("--preset", "tiny", "--n-synthetic", "3", "--engine", "numpy", "--no-progress")


def run(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "unetcu.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600, env=env)


def one_line(r):
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


# ---- overwrite -----------------------------------------------------------------------------------
def test_a_run_is_never_overwritten_without_overwrite(tmp_path):
    out = tmp_path / "run"
    r = run("train", *TINY, "--steps", "4", "--val-every", "2", "--out", str(out))
    assert r.returncode == 0, r.stderr
    before = (out / "checkpoint.npz").read_bytes()
    r = run("train", *TINY, "--steps", "1", "--out", str(out))
    assert r.returncode == 1 and "already holds a training run" in one_line(r) and "--overwrite" in r.stderr
    assert (out / "checkpoint.npz").read_bytes() == before
    r = run("train", *TINY, "--steps", "1", "--out", str(out), "--seed", "7", "--overwrite")
    assert r.returncode == 0, r.stderr
    _, _, state = UNet.load(out / "checkpoint.npz", with_state=True)
    assert state["step"] == 1 and len(rows(out / "log.csv")) == 1  # the old run's log went with it


# ---- Ctrl-C, live logs, resume from the checkpoint alone -------------------------------------------
def test_ctrl_c_saves_logs_and_resumes_from_the_checkpoint_alone(tmp_path):
    out = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "unetcu.cli", "train", "--preset", "tiny", "--n-synthetic", "3",
                          "--engine", "numpy", "--steps", "100000", "--val-every", "5", "--ckpt-every", "1000",
                          "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    seen = 0
    while time.time() - t0 < 300:  # the log grows while the run goes on, curves.png appears at the first validation
        if (out / "log.csv").exists():
            seen = len(rows(out / "log.csv"))
            if seen >= 12 and (out / "curves.png").exists():
                break
        time.sleep(0.2)
    assert seen >= 12, "log.csv did not grow while training"
    assert not (out / "checkpoint.npz").exists()  # the first checkpoint would come at step 1000
    for _ in range(3):  # an impatient user: more Ctrl-C while the step is saved lose nothing
        p.send_signal(signal.SIGINT)
        time.sleep(0.005)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert stderr.splitlines()[0].startswith("step 0/100000")  # a progress line at once, on a non-terminal
    assert stderr.splitlines()[1].startswith("step 1/100000")
    last = stderr.strip().splitlines()[-1]
    assert "interrupted" in last and f"resume with: unetcu train --resume {out / 'checkpoint.npz'}" in last
    _, _, state = UNet.load(out / "checkpoint.npz", with_state=True)
    log = rows(out / "log.csv")
    assert state["step"] == int(log[-1]["step"]) >= seen and len(log) == state["step"]
    assert [int(r["step"]) for r in log] == list(range(1, state["step"] + 1))
    assert (out / "curves.png").stat().st_size > 0
    k = state["step"]

    r = run("train", "--resume", str(out / "checkpoint.npz"), "--steps", str(k + 3), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert f"resumed from {out / 'checkpoint.npz'} at step {k}" in r.stdout
    log = rows(out / "log.csv")
    assert [int(r["step"]) for r in log] == list(range(1, k + 4))
    assert float(log[k]["seconds"]) > float(log[k - 1]["seconds"])  # the clock goes on, it does not restart
    _, _, state = UNet.load(out / "checkpoint.npz", with_state=True)
    assert state["step"] == k + 3 and state["config"]["run"]["preset"] == "tiny"


def _tiny_run(tmp_path, name, steps=10, resume=None, val=(), overwrite=False, **kw):
    depth, base, tile = PRESETS["tiny"]
    m = UNet(depth=depth, base_channels=base, engine="numpy", seed=3)
    cfg = TrainConfig(steps=steps, tile=tile, val_every=4, ckpt_every=1000, out=str(tmp_path / name), seed=4, **kw)
    return train(Run.of(m, synthetic_dataset(3, (128, 128), seed=5), list(val), cfg, resume=resume, overwrite=overwrite),
                 progress=False, log=lambda *a: None)


@pytest.mark.parametrize("where", ["forward", "update-sgd", "update-adam", "validation"])
def test_interrupt_anywhere_in_a_step_resumes_exactly(tmp_path, monkeypatch, where):
    """SIGINT in the forward pass loses that step; in the middle of the weight update it is held
    until the update is complete (the saved state is never half a step); during validation the step
    is kept. The resumed run repeats the uninterrupted run's losses bit for bit."""
    val = synthetic_dataset(1, (64, 64), seed=9)
    where, _, optimizer = where.partition("-")
    kw = dict(optimizer=optimizer, warmup=3, schedule="cosine") if optimizer else {}
    full = [r["loss"] for r in _tiny_run(tmp_path, "full", val=val, **kw)]
    from unetcu import ops, train as T
    calls = {"n": 0}
    target = {"forward": (UNet, "loss_and_grads"), "validation": (T, "evaluate"),
              "update": (ops, "adam_update" if optimizer == "adam" else "sgd_momentum_update")}[where]
    real = getattr(*target)
    nparams = len(UNet(depth=3, base_channels=8, engine="numpy").params)
    fire_at = {"forward": 6, "update": 5 * nparams + 3, "validation": 1}[where]

    def planted(*a, **k):
        calls["n"] += 1
        if calls["n"] == fire_at:
            os.kill(os.getpid(), signal.SIGINT)  # a real signal, delivered through the trainer's handler
        return real(*a, **k)

    monkeypatch.setattr(*target, planted)
    with pytest.raises(TrainingInterrupted) as e:
        _tiny_run(tmp_path, "cut", val=val, **kw)
    monkeypatch.setattr(*target, real)
    expect = {"forward": 5, "update": 6, "validation": 4}[where]
    assert e.value.step == expect and e.value.checkpoint == tmp_path / "cut" / "checkpoint.npz"
    assert [int(r["step"]) for r in rows(tmp_path / "cut" / "log.csv")] == list(range(1, expect + 1))
    resumed = _tiny_run(tmp_path, "cut", resume=str(tmp_path / "cut" / "checkpoint.npz"), val=val, **kw)
    assert [r["loss"] for r in resumed] == full


def test_interrupt_before_the_first_step_leaves_no_folder(tmp_path, monkeypatch):
    def planted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(UNet, "loss_and_grads", planted)
    with pytest.raises(TrainingInterrupted) as e:
        _tiny_run(tmp_path, "never")
    assert e.value.step == 0 and e.value.checkpoint is None
    assert not (tmp_path / "never").exists()


def test_overwrite_replaces_nothing_before_the_first_step(tmp_path, monkeypatch):
    _tiny_run(tmp_path, "old", steps=3)
    before = {f.name: f.read_bytes() for f in (tmp_path / "old").iterdir()}

    def planted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(UNet, "loss_and_grads", planted)
    with pytest.raises(TrainingInterrupted) as e:
        _tiny_run(tmp_path, "old", overwrite=True)
    assert e.value.step == 0
    assert {f.name: f.read_bytes() for f in (tmp_path / "old").iterdir()} == before


def test_a_ctrl_c_swallowed_by_a_callback_still_stops_the_run(tmp_path, monkeypatch):
    """A KeyboardInterrupt raised inside a C callback (llvmlite's, while Numba compiles) is printed
    and dropped by that library: the trainer still stops, right after the draw it happened in, so
    that step is not taken. The warp compiles in the first step's draw, in the loop's thread (later
    steps' tiles are rendered ahead in a worker): a run of 3 steps stops before its first."""
    from unetcu import train as T
    real, calls = T.draw_batch, {"n": 0}

    def planted(*a, **k):
        calls["n"] += 1
        if calls["n"] == 1:
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.5)  # the handler runs here, and its exception is swallowed below
            except KeyboardInterrupt:
                pass
        return real(*a, **k)
    monkeypatch.setattr(T, "draw_batch", planted)
    with pytest.raises(TrainingInterrupted) as e:
        _tiny_run(tmp_path, "cb")
    assert e.value.step == 0 and e.value.checkpoint is None and calls["n"] == 1


def test_resume_checks(tmp_path):
    out = tmp_path / "run"
    r = run("train", *TINY, "--steps", "3", "--val-every", "3", "--out", str(out))
    assert r.returncode == 0, r.stderr
    ck = str(out / "checkpoint.npz")
    cases = [
        (("--resume", ck, "--tile", "44"), "--tile 44 differs from the run's 92"),
        (("--resume", ck, "--preset", "small"), "--preset small differs from the run's 'tiny'"),
        (("--resume", ck, "--seed", "5"), "--seed 5 differs from the run's 0"),
        (("--resume", ck, "--steps", "3"), "at step 3 already"),
        (("--resume", str(tmp_path / "missing.npz")), "no model file"),
        (("--resume", str(out / "log.csv")), "not a readable unetcu model file"),
    ]
    for args, msg in cases:
        new = tmp_path / "elsewhere"
        r = run("train", *args, "--out", str(new), "--no-progress")
        assert r.returncode == 1 and msg in one_line(r), (args, r.stderr)
        assert not new.exists(), args  # a failed resume creates nothing
    # the seed is not part of the network: the same architecture under another seed is the same network
    assert UNet(depth=2, base_channels=2, seed=1).config == UNet(depth=2, base_channels=2, seed=2).config


# ---- arguments -----------------------------------------------------------------------------------
BAD_ARGS = [
    (("train", "--steps", "-3"), "--steps: must be an integer >= 1 and <= 100000000, got '-3'"),
    (("train", "--steps", "0"), "--steps: must be an integer >= 1"),
    (("train", "--tile", "0"), "--tile: must be an integer >= 1"),
    (("train", "--batch", "0"), "--batch: must be an integer >= 1"),
    (("train", "--val-every", "0"), "--val-every: must be an integer >= 1"),
    (("train", "--ckpt-every", "-1"), "--ckpt-every: must be an integer >= 1"),
    (("train", "--lr", "nan"), "--lr: must be a number >= 1e-10 and <= 10"),
    (("train", "--lr", "0"), "--lr: must be a number >= 1e-10"),
    (("train", "--steps", "99999999999999999999"), "--steps: must be an integer >= 1 and <= 100000000"),
    (("train", "--momentum", "1"), "--momentum: must be a number >= 0 and < 1"),
    (("train", "--val-fraction", "1.5"), "--val-fraction: must be a number >= 0 and < 1"),
    (("train", "--sigma", "0"), "--sigma: must be a number >= 0.1 and <= 1000"),
    (("train", "--w0", "-1"), "--w0: must be a number >= 0"),
    (("train", "--clip", "-0.5"), "--clip: must be a number >= 0"),
    (("train", "--classes", "1"), "--classes: must be an integer >= 2"),
    (("train", "--n-synthetic", "0"), "--n-synthetic: must be an integer >= 1"),
    (("train", "--seed", "-1"), "--seed: must be an integer >= 0"),
    (("train", "--steps", "ten"), "--steps: must be an integer >= 1 and <= 100000000, got 'ten'"),
    (("predict", "m.npz", "x.png", "--out", "p", "--batch", "-1"), "--batch: must be an integer >= 1"),
    (("predict", "m.npz", "x.png", "--out", "p", "--batch", "0"), "--batch: must be an integer >= 1"),
    (("predict", "m.npz", "x.png", "--out", "p", "--tile", "0"), "--tile: must be an integer >= 1"),
    (("demo", "--size", "0"), "--size: must be an integer >= 8 and <= 1024"),
    (("synth", "ex", "--count", "0"), "--count: must be an integer >= 1"),
    (("synth", "ex", "--size", "3"), "--size: must be an integer >= 16"),
]


@pytest.mark.parametrize("args,msg", BAD_ARGS, ids=[" ".join(a) for a, _ in BAD_ARGS])
def test_numeric_options_are_range_checked(tmp_path, args, msg):
    r = run(*args, cwd=tmp_path)
    assert r.returncode == 2 and msg in one_line(r), r.stderr
    assert not any(tmp_path.iterdir())  # no folder, no file


def test_impossible_sizes_are_refused_before_anything_is_made(tmp_path):
    for args, rc, msg in [(("--tile", "1000000"), 2, "--tile: must be an integer >= 1 and <= 100000"),
                          (("--tile", "99996"), 1, "need about 6.8 TiB for one training step"),
                          (("--tile", "101"), 1, "input size 101 is not valid"),
                          (("--batch", "100000"), 1, "need about")]:
        r = run("train", "--preset", "tiny", *args, "--engine", "numpy", cwd=tmp_path)
        assert r.returncode == rc and msg in one_line(r), r.stderr
        assert not any(tmp_path.iterdir())
        assert "data:" not in r.stdout  # nothing generated before the options were known to be valid
    UNet(depth=3, base_channels=8, engine="numpy").save(tmp_path / "m.npz")
    from PIL import Image
    Image.fromarray(np.arange(30 * 40, dtype=np.uint8).reshape(30, 40)).save(tmp_path / "x.png")
    for args in (("--batch", "100000"), ("--tile", "100000")):
        r = run("predict", "m.npz", "x.png", "--out", "p", "--engine", "numpy", *args, cwd=tmp_path)
        assert r.returncode == 1 and "for one forward pass" in one_line(r), r.stderr
        assert not (tmp_path / "p").exists()


# ---- engines -------------------------------------------------------------------------------------
def test_engine_report_is_what_train_uses(tmp_path):
    from unetcu.engines import runtime
    env = {k: v for k, v in os.environ.items() if k != "UNETCU_ENGINE"}
    r = run("engines", env=env)
    assert r.returncode == 0
    want = "cuda" if runtime.gpu_available() else "numpy"
    assert f"train, predict use: {want} (" in r.stdout
    r = run("engines", env=dict(env, UNETCU_ENGINE="emu"))
    assert "train, predict use: emu (UNETCU_ENGINE=emu)" in r.stdout
    assert "demo and runtime.compile use: emu" in r.stdout
    if not runtime.gpu_available():
        r = run("train", "--engine", "cuda", "--out", str(tmp_path / "o"))
        line = one_line(r)
        assert r.returncode == 1 and "no GPU is usable" in line and "--engine numpy" in line and "engine='" not in line
        assert not (tmp_path / "o").exists()


# ---- files people can open -----------------------------------------------------------------------
def test_files_follow_the_umask(tmp_path):
    from unetcu.files import atomic_write
    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "a.txt", lambda p: open(p, "w").write("x"))
        UNet(depth=2, base_channels=2, engine="numpy").save(tmp_path / "m.npz")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "m.npz").stat().st_mode & 0o777 == 0o640
    # a failed write leaves the old file and no temporary file
    def fail(p):
        open(p, "w").write("half")
        raise OSError("disk full")
    with pytest.raises(OSError):
        atomic_write(tmp_path / "a.txt", fail)
    assert (tmp_path / "a.txt").read_text() == "x" and sorted(f.name for f in tmp_path.iterdir()) == ["a.txt", "m.npz"]


def test_loss_axis_ignores_a_few_near_zero_steps():
    loss = np.r_[np.linspace(2.0, 0.1, 300), 1e-5]
    lo, hi = loss_axis(loss)
    assert 0.05 < lo < 0.1 and 2.0 < hi <= 3.0
    assert loss_axis([0.0, np.nan]) == (1e-3, 1.0)
    lo, hi = loss_axis([0.5, 0.5])  # a flat curve still gets a decade
    assert hi / lo >= 10


def test_colour_instances(rng):
    from unetcu.viz import colour_instances
    inst = rng.integers(0, 40, (23, 31))
    rgb = colour_instances(inst)
    assert rgb.shape == (23, 31, 3) and rgb.dtype == np.uint8
    assert (rgb[inst == 0] == 0).all() and (rgb[inst > 0].max(1) > 0).all()
    colours = {k: tuple(rgb[inst == k][0]) for k in np.unique(inst) if k > 0}
    assert len(set(colours.values())) == len(colours)  # every object its own colour
    img = rng.standard_normal((23, 31))
    over = colour_instances(inst, img)
    g = np.clip((img - np.percentile(img, 1)) / (np.percentile(img, 99) - np.percentile(img, 1)), 0, 1) * 255
    assert np.abs(over[inst == 0].astype(float) - np.round(g[inst == 0])[:, None]).max() <= 1  # background: the image


def test_synth_writes_a_data_folder(tmp_path):
    from PIL import Image
    r = run("synth", str(tmp_path / "ex"), "--count", "2", "--size", "70")
    assert r.returncode == 0, r.stderr
    for i in range(2):
        img = np.asarray(Image.open(tmp_path / "ex" / "images" / f"synth_{i:03d}.png"))
        lab = np.asarray(Image.open(tmp_path / "ex" / "labels" / f"synth_{i:03d}.png"))
        assert img.shape == lab.shape == (70, 70) and img.dtype == np.uint8 and img.std() > 0
        assert lab.dtype == np.uint16 and lab.max() >= 2 and lab.min() == 0
    before = (tmp_path / "ex" / "labels" / "synth_000.png").read_bytes()
    r = run("synth", str(tmp_path / "ex"), "--count", "2", "--size", "90")
    assert r.returncode == 1 and "exists" in one_line(r)
    assert (tmp_path / "ex" / "labels" / "synth_000.png").read_bytes() == before


def test_resume_of_a_folder_run_from_elsewhere(tmp_path):
    """The data folder is recorded absolute: a resume from another directory finds it, and naming
    the same folder another way is no conflict."""
    assert run("synth", "ex", "--count", "3", "--size", "64", cwd=tmp_path).returncode == 0
    r = run("train", *TINY, "--data", "ex", "--steps", "2", "--val-every", "2", "--out", "run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    ck = str(tmp_path / "run" / "checkpoint.npz")
    r = run("train", "--resume", ck, "--steps", "4", "--data", str(tmp_path / "ex"), "--no-progress", cwd=tmp_path.parent)
    assert r.returncode == 0, r.stderr
    assert f"data: {tmp_path / 'ex'}: 2 training, 1 validation images" in r.stdout
    assert [int(x["step"]) for x in rows(tmp_path / "run" / "log.csv")] == [1, 2, 3, 4]


# ---- the data of a resumed run: the same files, wherever they are -------------------------------
def _synth(folder, count, seed, cwd):
    r = run("synth", folder, "--count", str(count), "--size", "64", "--seed", str(seed), "--overwrite", cwd=cwd)
    assert r.returncode == 0, r.stderr


def test_resume_follows_moved_data_and_refuses_changed_files(tmp_path):
    """A run records the content of its --data and --val-data (data.fingerprint: a hash per file,
    named in the folder). --resume takes the folders at another path (relative or absolute) when
    they hold the same files, and refuses in one line, naming the first differing file, a folder
    whose files changed, moved or not; a folder gone from the run's path is named."""
    _synth("ex", 3, 100, tmp_path)
    _synth("val", 1, 7, tmp_path)
    r = run("train", *TINY, "--data", "ex", "--val-data", "val", "--steps", "2", "--val-every", "2", "--out", "run",
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    ck = str(tmp_path / "run" / "checkpoint.npz")
    os.rename(tmp_path / "ex", tmp_path / "ex2")
    os.rename(tmp_path / "val", tmp_path / "val2")
    refused = [
        ((), f"the run's --data {tmp_path / 'ex'} is gone; if it was moved, give its new place with --data"),
        (("--data", "ex2"), f"the run's --val-data {tmp_path / 'val'} is gone"),
        (("--data", "ex2", "--val-data", "ex2"), f"--val-data {tmp_path / 'ex2'} does not hold the run's files (from "
                                                 f"{tmp_path / 'val'}): images/synth_000.png has other content"),
    ]
    for args, msg in refused:
        r = run("train", "--resume", ck, "--steps", "3", *args, "--no-progress", cwd=tmp_path)
        assert r.returncode == 1 and msg in one_line(r), (args, r.stderr)
    r = run("train", "--resume", ck, "--steps", "3", "--data", "ex2", "--val-data", str(tmp_path / "val2"),
            "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"data: {tmp_path / 'ex2'}: 3 training, 1 validation images" in r.stdout
    state = UNet.load(ck, with_state=True)[2]["config"]["run"]
    assert (state["data"], state["val_data"]) == (str(tmp_path / "ex2"), str(tmp_path / "val2"))
    # the new place is the run's now: no option needed; a changed or missing file is refused by name
    _synth("ex2", 1, 5, tmp_path)  # synth_000 replaced by another image
    r = run("train", "--resume", ck, "--steps", "4", "--no-progress", cwd=tmp_path)
    assert r.returncode == 1 and (f"the run's --data {tmp_path / 'ex2'} changed since the run started: "
                                  "images/synth_000.png has other content;") in one_line(r), r.stderr
    os.rename(tmp_path / "ex2", tmp_path / "ex3")
    r = run("train", "--resume", ck, "--steps", "4", "--data", "ex3", "--no-progress", cwd=tmp_path)
    assert r.returncode == 1 and (f"--data {tmp_path / 'ex3'} does not hold the run's files (from {tmp_path / 'ex2'}): "
                                  "images/synth_000.png has other content") in one_line(r), r.stderr
    _synth("ex3", 1, 100, tmp_path)  # the original synth_000 back ...
    for sub in ("images", "labels"):
        os.remove(tmp_path / "ex3" / sub / "synth_002.png")  # ... and a pair gone
    r = run("train", "--resume", ck, "--steps", "4", "--data", "ex3", "--no-progress", cwd=tmp_path)
    assert r.returncode == 1 and "images/synth_002.png is missing" in one_line(r), r.stderr
    assert [int(x["step"]) for x in rows(tmp_path / "run" / "log.csv")] == [1, 2, 3]  # refusals wrote nothing


def test_resume_of_a_checkpoint_that_records_no_data_content(tmp_path):
    """A checkpoint written before runs recorded their data's content cannot tell whether another
    folder holds the same files: the run's own path is taken (and the output says its files were
    not checked), another path is refused saying why."""
    import json
    _synth("ex", 3, 100, tmp_path)
    r = run("train", *TINY, "--data", "ex", "--steps", "2", "--val-every", "2", "--out", "run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    ck = tmp_path / "run" / "checkpoint.npz"
    with np.load(ck) as z:
        arrays = dict(z)
    meta = json.loads(arrays["meta"].tobytes())
    for k in ("data_files", "val_data_files"):
        del meta["state"]["config"]["run"][k]
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(ck, **arrays)
    os.rename(tmp_path / "ex", tmp_path / "ex2")
    r = run("train", "--resume", str(ck), "--steps", "3", "--data", "ex2", "--no-progress", cwd=tmp_path)
    assert r.returncode == 1 and (f"--data {tmp_path / 'ex2'} differs from the run's {tmp_path / 'ex'}, and this "
                                  "checkpoint (written before unetcu recorded the content of a run's data) cannot tell "
                                  "whether it holds the same files") in one_line(r), r.stderr
    os.rename(tmp_path / "ex2", tmp_path / "ex")
    r = run("train", "--resume", str(ck), "--steps", "3", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"records no content of its --data (written before unetcu did): the files in {tmp_path / 'ex'}" in r.stdout
    assert UNet.load(ck, with_state=True)[2]["config"]["run"]["data_files"]  # recorded from now on


def test_resume_with_val_data_of_a_run_that_had_none_says_so(tmp_path):
    """A run that validated on its --data's last images has no --val-data to move: one line that says
    so, not 'differs from the run's None'."""
    _synth("ex", 3, 100, tmp_path)
    r = run("train", *TINY, "--data", "ex", "--steps", "2", "--val-every", "2", "--out", "run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = run("train", "--resume", str(tmp_path / "run" / "checkpoint.npz"), "--steps", "3", "--val-data", "ex",
            "--no-progress", cwd=tmp_path)
    assert r.returncode == 1 and "the run had no --val-data" in one_line(r) and "None" not in r.stderr, r.stderr


def test_a_run_built_in_python_is_held_to_the_command_lines_rules(tmp_path):
    """Run.of (the Python API) refuses what `unetcu train` refuses, before any step and with the
    same one-line messages; plan_run takes whole numbers for integer options and names its
    misuse (resume is its own argument)."""
    from unetcu.run import plan_run
    depth, base, tile = PRESETS["tiny"]
    data = synthetic_dataset(2, (96, 96), seed=5)
    for kw, want in ((dict(lr=-1.0), "--lr is -1.0, which --lr does not take: it must be a number >= 1e-10"),
                     (dict(batch=0), "--batch is 0, which --batch does not take"),
                     (dict(tile=93), "--tile: input size 93 is not valid"),
                     (dict(tile=100000), "need about .* for one training step"),
                     (dict(augment="warp"), "it must be one of elastic, flips, none"),
                     (dict(steps=10, warmup=10), "--warmup 10 must be below --steps 10")):
        cfg = TrainConfig(**{**dict(steps=3, tile=tile, out=str(tmp_path / "r")), **kw})
        with pytest.raises((ValueError, MemoryError), match=want):
            Run.of(UNet(depth=depth, base_channels=base, engine="numpy"), data, [], cfg)
        assert not (tmp_path / "r").exists()
    with pytest.raises(ValueError, match="resume is plan_run's second argument"):
        plan_run({"resume": "x.npz"})
    with pytest.raises(ValueError, match=r"--steps is '20', which --steps does not take: it must be an integer"):
        plan_run({"steps": "20"})
    run = plan_run({"preset": "tiny", "engine": "numpy", "n_synthetic": 2, "steps": 4.0, "seed": 2.0,
                    "no_progress": True, "out": str(tmp_path / "p")}, log=lambda *a: None)
    assert run.cfg.steps == 4 and type(run.cfg.steps) is int and type(run.cfg.seed) is int and run.progress is False


def test_python_run_resumes_on_its_own_terms(tmp_path):
    """A checkpoint of a run started by Run.of on samples of its own: the command line refuses to
    resume it (its data is not a folder or the synthetic set: resuming would train on other images
    without a word), and Run.of(..., resume=) refuses a recipe that differs from the run's."""
    _tiny_run(tmp_path, "py", steps=3)
    ck = str(tmp_path / "py" / "checkpoint.npz")
    r = run("train", "--resume", ck, "--steps", "5", "--no-progress", cwd=tmp_path)
    assert r.returncode == 1 and "was started from Python on samples of its own" in one_line(r), r.stderr
    with pytest.raises(ValueError, match="tile 44 differs from the run's 92"):
        Run.of(UNet(depth=3, base_channels=8, engine="numpy", seed=3), synthetic_dataset(3, (128, 128), seed=5), [],
               TrainConfig(steps=5, tile=44, out=str(tmp_path / "py"), seed=4), resume=ck)
    assert len(_tiny_run(tmp_path, "py", steps=5, resume=ck)) == 5
    # the other way round: a command-line run continued in Python on other samples is Python's from then on
    r = run("train", *TINY, "--steps", "2", "--seed", "4", "--border", "off", "--out", "cli", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    _tiny_run(tmp_path, "cli", steps=4, resume=str(tmp_path / "cli" / "checkpoint.npz"))
    r = run("train", "--resume", str(tmp_path / "cli" / "checkpoint.npz"), "--steps", "6", "--no-progress", cwd=tmp_path)
    assert r.returncode == 1 and "was started from Python on samples of its own" in one_line(r), r.stderr
    with pytest.raises(ValueError, match="elastic_sigma is -1.0, not a warp strength"):
        _tiny_run(tmp_path, "sigma", steps=2, elastic_sigma=-1.0)


def test_refusals_found_by_trying_to_break_the_run(tmp_path):
    """A Run trains once, and never over a run written into its folder after it was planned; options
    that would be silently ignored or point nowhere are refused before any work; the predict API
    refuses a tile or batch the command line would."""
    from unetcu.predict import predict_files
    depth, base, tile = PRESETS["tiny"]
    planned = [Run.of(UNet(depth=depth, base_channels=base, engine="numpy", seed=s), synthetic_dataset(2, (96, 96), seed=5),
                      [], TrainConfig(steps=2, tile=tile, out=str(tmp_path / "r"), seed=s)) for s in (0, 1)]
    train(planned[0], progress=False, log=lambda *a: None)
    before = (tmp_path / "r" / "checkpoint.npz").read_bytes()
    with pytest.raises(ValueError, match="this Run has trained already"):
        train(planned[0], progress=False)
    with pytest.raises(FileExistsError, match="already holds a training run"):
        train(planned[1], progress=False)
    assert (tmp_path / "r" / "checkpoint.npz").read_bytes() == before
    _synth("ex", 2, 100, tmp_path)
    (tmp_path / "afile").write_text("x")
    for args, want in ((("--val-data", "ex"), "--val-data applies to --data folders"),
                       (("--val-fraction", "0.5"), "--val-fraction applies to --data folders"),
                       (("--data", "ex", "--val-data", "ex"), "/ex is --data itself"),
                       (("--out", "afile/sub"), "afile is a file, not a folder"),
                       (("--out", ""), "give the run's folder")):
        r = run("train", *TINY, "--steps", "2", *(("--out", "o") if "--out" not in args else ()), *args, cwd=tmp_path)
        assert r.returncode == 1 and want in one_line(r), (args, r.stderr)
        assert not (tmp_path / "o").exists()
    img = tmp_path / "ex" / "images" / "synth_000.png"
    for kw, want in ((dict(tile=0), "--tile 0: give a whole number"), (dict(batch=0), "--batch 0: give a whole number"),
                     (dict(tile=92.0), "--tile 92.0"), (dict(batch=-1), "--batch -1")):
        with pytest.raises(ValueError, match=want):
            predict_files(tmp_path / "r" / "checkpoint.npz", [img], tmp_path / "pred", progress=False, **kw)
        assert not (tmp_path / "pred").exists()
