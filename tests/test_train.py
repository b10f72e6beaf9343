"""Training: the loss goes down and a stated IoU is reached on held-out synthetic images (numpy
engine, small preset), resume repeats the uninterrupted run's losses exactly, a NaN stops it."""
import numpy as np
import pytest

from unetcu import UNet
from unetcu.data import synthetic_dataset
from unetcu.train import PRESETS, TrainConfig, TrainingDiverged, train


def test_training_reaches_iou_on_synthetic_cells(tmp_path):
    depth, base, tile = PRESETS["small"]
    m = UNet(depth=depth, base_channels=base, engine="numpy", seed=0)
    cfg = TrainConfig(steps=300, lr=0.003, clip=0.0, tile=tile, val_every=300, ckpt_every=300, out=str(tmp_path), seed=0)
    hist = train(m, synthetic_dataset(8, (256, 256), seed=1), synthetic_dataset(2, (256, 256), seed=2), cfg, progress=False,
                 log=lambda *a: None)
    losses = np.array([r["loss"] for r in hist])
    assert losses[-50:].mean() < 0.6 * losses[:20].mean()
    assert hist[-1]["val_iou"] >= 0.85, hist[-1]
    for f in ("checkpoint.npz", "log.csv", "curves.png", "samples.png"):
        assert (tmp_path / f).stat().st_size > 0


def _tiny(tmp_path, steps, name, resume=None, ckpt_every=5):
    depth, base, tile = PRESETS["tiny"]
    m = UNet(depth=depth, base_channels=base, engine="numpy", seed=3)
    cfg = TrainConfig(steps=steps, tile=tile, val_every=1000, ckpt_every=ckpt_every, out=str(tmp_path / name), seed=4)
    data = synthetic_dataset(3, (128, 128), seed=5)
    return train(m, data, [], cfg, resume=resume, progress=False, log=lambda *a: None)


def test_resume_is_bit_exact(tmp_path):
    full = _tiny(tmp_path, 12, "full")
    _tiny(tmp_path, 6, "half", ckpt_every=6)
    resumed = _tiny(tmp_path, 12, "half", resume=str(tmp_path / "half" / "checkpoint.npz"))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in full]


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
    from unetcu.train import clip_gradients
    g = {"a": rng.standard_normal(10).astype(np.float32), "b": rng.standard_normal((3, 4)).astype(np.float32)}
    norm = np.sqrt(sum((v.astype(np.float64) ** 2).sum() for v in g.values()))
    before = {k: v.copy() for k, v in g.items()}
    assert clip_gradients(g, 2 * norm) == pytest.approx(norm) and all(np.array_equal(g[k], before[k]) for k in g)
    clip_gradients(g, norm / 4)
    after = np.sqrt(sum((v.astype(np.float64) ** 2).sum() for v in g.values()))
    assert after == pytest.approx(norm / 4, rel=1e-5)
    assert np.allclose(g["a"] * 4, before["a"], rtol=1e-5)
