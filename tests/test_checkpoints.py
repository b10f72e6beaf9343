"""Checkpoints unetcu did not write as it writes them: non-finite weights or optimizer state (a diverged
run saved by another tool, a damaged file) and files of a newer unetcu (unknown network or training
options, unknown arrays). Each is refused in one line by predict and by train --resume, never loaded
into a network that predicts NaN or runs without the option."""
import json

import numpy as np
import pytest

from unetcu import UNet, __version__
from unetcu.cli import main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A real checkpoint of `unetcu train` (tiny preset, Adam state, training options) and an image."""
    d = tmp_path_factory.mktemp("ckpt")
    assert main(["synth", str(d / "ex"), "--count", "3", "--size", "64"]) == 0
    assert main(["train", "--preset", "tiny", "--steps", "2", "--data", str(d / "ex"), "--out", str(d / "run"),
                 "--no-progress"]) == 0
    return d


def rewrite(src, dst, edit_arrays=None, edit_meta=None):
    """Copy the .npz src to dst with its arrays and its JSON header edited in place."""
    with np.load(src) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(bytes(arrays["meta"]).decode())
    if edit_arrays:
        edit_arrays(arrays)
    if edit_meta:
        edit_meta(meta)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(dst, **arrays)
    return str(dst)


def poison(key, value, index):
    def edit(arrays):
        a = arrays[key].copy()
        a.flat[index] = value
        arrays[key] = a
    return edit


def one_line_refusal(capsys, argv, *words):
    assert main(argv) == 1
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.err, out.err
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def test_a_saved_checkpoint_records_the_version(run):
    with np.load(run / "run" / "checkpoint.npz") as z:
        assert json.loads(bytes(z["meta"]).decode())["version"] == __version__


@pytest.mark.parametrize("key", ["param/down0.conv1.weight", "param/down1.conv2.bias", "param/head.weight"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_refused_by_predict(run, tmp_path, capsys, key, value):
    rng = np.random.default_rng()
    with np.load(run / "run" / "checkpoint.npz") as z:
        index = int(rng.integers(z[key].size))
    bad = rewrite(run / "run" / "checkpoint.npz", tmp_path / "bad.npz", poison(key, value, index))
    name = key[len("param/"):]
    kind = "1 NaN and 0 Inf" if np.isnan(value) else "0 NaN and 1 Inf"
    one_line_refusal(capsys, ["predict", bad, str(run / "ex" / "images" / "synth_000.png"), "--out",
                              str(tmp_path / "pred")], name, kind, "refusing")
    assert not (tmp_path / "pred").exists() or not any((tmp_path / "pred").iterdir())


def test_non_finite_weights_and_optimizer_state_are_refused_by_resume(run, tmp_path, capsys):
    ckpt = run / "run" / "checkpoint.npz"
    bad = rewrite(ckpt, tmp_path / "w.npz", poison("param/up0.conv1.weight", np.nan, 3))
    one_line_refusal(capsys, ["train", "--resume", bad, "--steps", "3"], "up0.conv1.weight", "NaN")
    bad = rewrite(ckpt, tmp_path / "m.npz", poison("momentum/v:head.bias", np.inf, 0))
    one_line_refusal(capsys, ["train", "--resume", bad, "--steps", "3"], "optimizer state v:head.bias", "Inf")


def test_the_model_api_refuses_them_too(run, tmp_path):
    bad = rewrite(run / "run" / "checkpoint.npz", tmp_path / "bad.npz", poison("param/head.bias", np.nan, 1))
    with pytest.raises(ValueError, match="head.bias holds 1 NaN"):
        UNet.load(bad, engine="numpy")


def newer(meta, **config):
    meta["version"] = "9.1.0"
    meta["config"].update(config)


@pytest.mark.parametrize("cmd", ["predict", "resume"])
def test_a_newer_network_option_is_named_with_the_version_that_wrote_it(run, tmp_path, capsys, cmd):
    bad = rewrite(run / "run" / "checkpoint.npz", tmp_path / "new.npz", edit_meta=lambda m: newer(m, norm="batch"))
    argv = (["predict", bad, str(run / "ex" / "images" / "synth_000.png"), "--out", str(tmp_path / "p")]
            if cmd == "predict" else ["train", "--resume", bad, "--steps", "3"])
    one_line_refusal(capsys, argv, "'norm'", "unetcu 9.1.0", __version__)


def test_a_newer_training_option_is_refused_by_resume(run, tmp_path, capsys):
    def edit(meta):
        meta["version"] = "9.1.0"
        meta["state"]["config"]["ema_decay"] = 0.999
    bad = rewrite(run / "run" / "checkpoint.npz", tmp_path / "new.npz", edit_meta=edit)
    one_line_refusal(capsys, ["train", "--resume", bad, "--steps", "3"], "'ema_decay'", "unetcu 9.1.0")


def test_unknown_arrays_missing_or_mistyped_options_are_refused(run, tmp_path):
    ckpt = run / "run" / "checkpoint.npz"

    def extra(arrays):
        arrays["param/down0.norm.weight"] = np.ones(8, np.float32)
    with pytest.raises(ValueError, match=rf"param/down0.norm.weight\) that this unetcu {__version__} does not know; update"):
        UNet.load(rewrite(ckpt, tmp_path / "a.npz", extra, edit_meta=lambda m: m.update(version="9.1.0")),
                  engine="numpy")

    def unversioned(meta):
        del meta["version"]
        meta["config"]["attention"] = True
    with pytest.raises(ValueError, match="did not record its version.*'attention'"):
        UNet.load(rewrite(ckpt, tmp_path / "b.npz", edit_meta=unversioned), engine="numpy")
    with pytest.raises(ValueError, match="lacks network option.*'depth'"):
        UNet.load(rewrite(ckpt, tmp_path / "c.npz", edit_meta=lambda m: m["config"].pop("depth")), engine="numpy")
    for value in ("3", 2.5, True, None):
        with pytest.raises(ValueError, match="network option 'depth' is"):
            UNet.load(rewrite(ckpt, tmp_path / "d.npz", edit_meta=lambda m: m["config"].update(depth=value)),
                      engine="numpy")

    def integers(arrays):
        arrays["param/head.bias"] = np.arange(1, 1 + arrays["param/head.bias"].size, dtype=np.int64)
    with pytest.raises(ValueError, match="head.bias is stored as int64"):
        UNet.load(rewrite(ckpt, tmp_path / "e.npz", integers), engine="numpy")


def test_an_intact_checkpoint_still_loads_with_its_state(run):
    model, momentum, state = UNet.load(run / "run" / "checkpoint.npz", engine="numpy", with_state=True)
    assert set(momentum) == {f"{s}:{k}" for s in "mv" for k in model.params}
    assert state["step"] == 2
    assert all(np.isfinite(p).all() for p in model.params.values())


def test_a_diverging_run_ends_in_one_line_without_numpy_warnings(run, tmp_path):
    """SGD at lr 10 overflows within a few steps: the user sees the one-line reason, not numpy's
    RuntimeWarnings with their source lines."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "unetcu.cli", "train", "--preset", "tiny", "--steps", "40", "--data",
                        str(run / "ex"), "--out", str(tmp_path / "div"), "--optimizer", "sgd", "--lr", "10",
                        "--warmup", "0", "--no-progress"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 3, r.stderr
    assert "Warning" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "became nan" in r.stderr or "became inf" in r.stderr or "non-finite" in r.stderr, r.stderr


def test_non_finite_weights_after_the_last_update_are_never_saved(run, tmp_path, capsys, monkeypatch):
    """A gradient that overflows while the loss stays finite poisons the weights after the loss was
    checked: the checkpoint of that step is refused, the previous one kept."""
    from unetcu import optim
    step = optim.Optimizer.step

    def poisoned(self, params, grads, lr, t):
        step(self, params, grads, lr, t)
        if t == 3:
            params["up0.conv2.weight"][0, 0, 1, 1] = np.inf
    monkeypatch.setattr(optim.Optimizer, "step", poisoned)
    out = tmp_path / "r"
    argv = ["train", "--preset", "tiny", "--steps", "3", "--ckpt-every", "2", "--data", str(run / "ex"), "--out",
            str(out), "--no-progress"]
    assert main(argv) == 3
    err = capsys.readouterr().err
    assert "the weights (up0.conv2.weight) became non-finite at step 3" in err and "last good checkpoint" in err, err
    _, _, state = UNet.load(out / "checkpoint.npz", engine="numpy", with_state=True)
    assert state["step"] == 2


@pytest.mark.parametrize("edit,words", [
    (lambda m: m["state"]["config"].update(lr="fast"), "--lr is 'fast'"),
    (lambda m: m["state"]["config"].update(steps="x"), "--steps is 'x'"),
    (lambda m: m["state"]["config"].update(seed=1.5), "--seed is 1.5"),
    (lambda m: m["state"]["config"].update(batch=0), "--batch is 0"),
    (lambda m: m["state"]["config"].update(w0=-5.0), "--w0 is -5.0"),
    (lambda m: m["state"]["config"].update(sigma=0.0), "--sigma is 0.0"),
    (lambda m: m["state"]["config"].update(momentum=5.0), "--momentum is 5.0"),
    (lambda m: m["state"]["config"].update(val_every=-1), "--val-every is -1"),
    (lambda m: m["state"]["config"].update(augment="rotate"), "--augment is 'rotate'"),
    (lambda m: m["state"]["config"]["run"].update(preset="huge"), "--preset is 'huge'"),
    (lambda m: m["state"]["config"]["run"].update(classes="2"), "--classes is '2'"),
    (lambda m: m["state"]["config"]["run"].update(no_dropout="no"), "--no-dropout is 'no'"),
    (lambda m: m["state"]["config"]["run"].update(foo=1), "'run.foo'"),
    (lambda m: m["state"].pop("config"), "holds no training options"),
    (lambda m: m["state"].update(history="x"), "history"),
    (lambda m: m["state"].update(step=-2), "its step is -2"),
    (lambda m: m["state"].update(rng=None), "generator state"),
    (lambda m: m.update(state=[1, 2]), "training state is list"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_saved_training_options_are_held_to_the_command_lines_rules(run, tmp_path, capsys, edit, words):
    """A checkpoint's training options and state, edited or damaged, are refused in one line by
    --resume (they used to end in tracebacks, or train with a --w0 the command line refuses)."""
    bad = rewrite(run / "run" / "checkpoint.npz", tmp_path / "bad.npz", edit_meta=edit)
    one_line_refusal(capsys, ["train", "--resume", bad, "--steps", "3"], words)


def test_unknown_options_of_the_same_version_are_called_an_edit_not_a_newer_file(run, tmp_path, capsys):
    bad = rewrite(run / "run" / "checkpoint.npz", tmp_path / "same.npz", edit_meta=lambda m: m["config"].update(norm=1))
    line = one_line_refusal(capsys, ["predict", bad, str(run / "ex" / "images" / "synth_000.png"), "--out",
                                     str(tmp_path / "p")], "'norm'", "edited or damaged")
    assert "update unetcu" not in line
    with pytest.raises(ValueError, match="not a unetcu model file"):
        UNet.load(rewrite(run / "run" / "checkpoint.npz", tmp_path / "list.npz", edit_meta=lambda m: (m.clear())),
                  engine="numpy")


@pytest.mark.parametrize("radius", ["big", float("nan"), -3.0, True])
def test_predict_refuses_a_damaged_object_size(run, tmp_path, capsys, radius):
    bad = rewrite(run / "run" / "checkpoint.npz", tmp_path / "r.npz",
                  edit_meta=lambda m: m["state"].update(object_radius=radius))
    one_line_refusal(capsys, ["predict", bad, str(run / "ex" / "images" / "synth_000.png"), "--out",
                              str(tmp_path / "p")], "object_radius")
