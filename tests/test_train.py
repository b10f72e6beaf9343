"""Training: the loss goes down and a stated IoU is reached on held-out synthetic images (numpy
engine, small preset), resume repeats the uninterrupted run's losses exactly, a NaN stops it."""
import numpy as np
import pytest

from unetcu import UNet
from unetcu.data import synthetic_dataset
from unetcu.run import PRESETS, Run, TrainConfig
from unetcu.train import TrainingDiverged, train


def test_training_reaches_iou_on_synthetic_cells(tmp_path):
    depth, base, tile = PRESETS["small"]
    m = UNet(depth=depth, base_channels=base, engine="numpy", seed=0)
    cfg = TrainConfig(steps=300, lr=0.003, clip=0.0, tile=tile, val_every=300, ckpt_every=300, out=str(tmp_path), seed=0)
    hist = train(Run.of(m, synthetic_dataset(8, (256, 256), seed=1), synthetic_dataset(2, (256, 256), seed=2), cfg),
                 progress=False, log=lambda *a: None)
    losses = np.array([r["loss"] for r in hist])
    assert losses[-50:].mean() < 0.6 * losses[:20].mean()
    assert hist[-1]["val_iou"] >= 0.85, hist[-1]
    for f in ("checkpoint.npz", "log.csv", "curves.png", "samples.png"):
        assert (tmp_path / f).stat().st_size > 0


def _tiny(tmp_path, steps, name, resume=None, ckpt_every=5, **kw):
    depth, base, tile = PRESETS["tiny"]
    m = UNet(depth=depth, base_channels=base, engine="numpy", seed=3)
    cfg = TrainConfig(steps=steps, tile=tile, val_every=1000, ckpt_every=ckpt_every, out=str(tmp_path / name), seed=4, **kw)
    data = synthetic_dataset(3, (128, 128), seed=5)
    return train(Run.of(m, data, [], cfg, resume=resume), progress=False, log=lambda *a: None)


@pytest.mark.parametrize("recipe", [dict(), dict(optimizer="adam", lr=3e-3, warmup=4, schedule="cosine"),
                                    dict(optimizer="adamw", weight_decay=0.01, schedule="poly")],
                         ids=["sgd", "adam-warmup-cosine", "adamw-poly"])
def test_resume_is_bit_exact(tmp_path, monkeypatch, recipe):
    """Stopped by Ctrl-C after step 6 of 12 and resumed: the same losses and learning rates (the
    schedule is that of the whole run; the optimizer's state comes back from the checkpoint)."""
    from unetcu import train as T
    full = _tiny(tmp_path, 12, "full", **recipe)
    real, drawn = T.render_batch, []

    def ctrl_c_at_step_7(*a):  # step 7's tiles are rendered ahead, in the worker, during step 6
        drawn.append(1)
        if len(drawn) == 7:
            raise KeyboardInterrupt
        return real(*a)
    monkeypatch.setattr(T, "render_batch", ctrl_c_at_step_7)
    with pytest.raises(T.TrainingInterrupted) as e:
        _tiny(tmp_path, 12, "half", ckpt_every=100, **recipe)
    assert e.value.step == 6
    monkeypatch.setattr(T, "render_batch", real)
    resumed = _tiny(tmp_path, 12, "half", resume=str(tmp_path / "half" / "checkpoint.npz"), **recipe)
    assert [r["loss"] for r in resumed] == [r["loss"] for r in full]
    assert [r["lr"] for r in resumed] == [r["lr"] for r in full]


@pytest.mark.parametrize("augment", ["elastic", "flips"])
def test_tiles_rendered_ahead_are_the_tiles_drawn_in_place(tmp_path, monkeypatch, augment):
    """The worker that renders the next step's tiles changes nothing: the same losses, bit for bit, as a
    loop that draws and renders every step's tiles in place, and the same generator state saved."""
    from unetcu import train as T
    ahead = _tiny(tmp_path, 6, "ahead", augment=augment)

    class InPlace(T.TileAhead):  # the loop without a worker: draw_batch at every step
        def ahead(self):
            return self.rng.bit_generator.state
    monkeypatch.setattr(T, "TileAhead", InPlace)
    in_place = _tiny(tmp_path, 6, "in_place", augment=augment)
    assert [r["loss"] for r in ahead] == [r["loss"] for r in in_place]
    saved = [UNet.load(str(tmp_path / n / "checkpoint.npz"), with_state=True)[2]["rng"] for n in ("ahead", "in_place")]
    assert saved[0] == saved[1]


def test_nan_loss_stops_training_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    real = UNet.loss_and_grads
    calls = {"n": 0}

    def planted(self, *a, **k):
        calls["n"] += 1
        loss, g = real(self, *a, **k)
        return (float("nan") if calls["n"] == 7 else loss), g

    monkeypatch.setattr(UNet, "loss_and_grads", planted)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 7.*last good checkpoint"):
        _tiny(tmp_path, 12, "nan", ckpt_every=5)
    m, _, state = UNet.load(tmp_path / "nan" / "checkpoint.npz", with_state=True)
    assert state["step"] == 5
    assert all(np.isfinite(p).all() for p in m.params.values())


def test_clip_gradients(rng):
    from unetcu.optim import clip_gradients
    g = {"a": rng.standard_normal(10).astype(np.float32), "b": rng.standard_normal((3, 4)).astype(np.float32)}
    norm = np.sqrt(sum((v.astype(np.float64) ** 2).sum() for v in g.values()))
    before = {k: v.copy() for k, v in g.items()}
    assert clip_gradients(g, 2 * norm) == pytest.approx(norm) and all(np.array_equal(g[k], before[k]) for k in g)
    clip_gradients(g, norm / 4)
    after = np.sqrt(sum((v.astype(np.float64) ** 2).sum() for v in g.values()))
    assert after == pytest.approx(norm / 4, rel=1e-5)
    assert np.allclose(g["a"] * 4, before["a"], rtol=1e-5)


def test_learning_rate_schedules():
    from unetcu.optim import lr_at
    lrs = lambda sched, warm: [lr_at(t, 100, 0.01, warm, sched) for t in range(1, 101)]  # noqa: E731
    assert lrs("constant", 0) == [0.01] * 100
    w = lrs("constant", 10)
    assert w[:10] == pytest.approx([0.001 * t for t in range(1, 11)]) and w[10:] == [0.01] * 90
    c = lrs("cosine", 10)
    assert c[10] == pytest.approx(0.01) and all(a > b for a, b in zip(c[10:], c[11:])) and 0 < c[-1] < 1e-4
    p = lrs("poly", 0)
    assert p[0] == pytest.approx(0.01) and all(a > b > 0 for a, b in zip(p, p[1:]))
    assert p[49] == pytest.approx(0.01 * 0.51 ** 0.9)
    with pytest.raises(ValueError, match="schedule must be one of"):
        lr_at(1, 10, 0.01, 0, "step")


def test_resume_refuses_another_optimizers_state(tmp_path):
    _tiny(tmp_path, 3, "sgd", ckpt_every=3, optimizer="sgd")
    with pytest.raises(ValueError, match="holds the state of sgd, not of adam"):
        _tiny(tmp_path, 6, "sgd", resume=str(tmp_path / "sgd" / "checkpoint.npz"), optimizer="adam")
    _tiny(tmp_path, 3, "adam", ckpt_every=3, optimizer="adam")
    with pytest.raises(ValueError, match="holds the state of adam or adamw, not of sgd"):
        _tiny(tmp_path, 6, "adam", resume=str(tmp_path / "adam" / "checkpoint.npz"), optimizer="sgd")


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_adam_training_reaches_iou_on_synthetic_cells(tmp_path, optimizer):
    depth, base, tile = PRESETS["tiny"]
    m = UNet(depth=depth, base_channels=base, engine="numpy", seed=0)
    cfg = TrainConfig(steps=150, optimizer=optimizer, lr=3e-3, warmup=10, schedule="cosine", clip=0.0, tile=tile,
                      val_every=150, ckpt_every=150, out=str(tmp_path), seed=0, weight_decay=1e-4)
    hist = train(Run.of(m, synthetic_dataset(6, (128, 128), seed=1), synthetic_dataset(2, (128, 128), seed=2), cfg),
                 progress=False, log=lambda *a: None)
    losses = np.array([r["loss"] for r in hist])
    assert losses[-30:].mean() < 0.6 * losses[:10].mean()
    assert hist[-1]["val_iou"] >= 0.7, hist[-1]


def test_warmup_must_end_before_the_run_and_is_pinned_for_a_resume(tmp_path):
    with pytest.raises(ValueError, match="--warmup 20 must be below --steps 20"):
        _tiny(tmp_path, 20, "w", warmup=20)
    _tiny(tmp_path, 30, "auto", ckpt_every=30)  # the warm-up by default: min(100, 30 // 10) = 3 steps
    _, _, state = UNet.load(tmp_path / "auto" / "checkpoint.npz", with_state=True)
    assert state["config"]["warmup"] == 3
