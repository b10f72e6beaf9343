"""The U-Net: the paper's configuration, valid sizes, gradients of the whole model (emulated kernels
vs the float64 reference model, the reference vs finite differences), persistence."""

import numpy as np
import pytest

from conftest import near_pools, near_relus, rel_err
from unetcu import UNet, valid_input_size, reference as R
from unetcu.model import output_size


def test_paper_configuration():
    m = UNet(engine="numpy")
    assert m.n_params == 31_030_658
    convs = [k for k in m.params if k.endswith(".weight")]
    assert len(convs) == 23  # 18 3x3 convs + 4 up-convs + the 1x1 head
    assert m.output_size(572) == 388
    assert list(m.params)[:2] == ["down0.conv1.weight", "down0.conv1.bias"]
    assert list(m.params)[-2:] == ["head.weight", "head.bias"]
    assert m.params["down0.conv1.weight"].shape == (64, 1, 3, 3)
    assert m.params["up3.upconv.weight"].shape == (1024, 512, 2, 2)  # (in, out, 2, 2)
    assert m.params["up0.conv1.weight"].shape == (64, 128, 3, 3)
    assert m.params["head.weight"].shape == (2, 64, 1, 1)


def test_valid_sizes():
    assert valid_input_size(388) == 572
    assert output_size(572 + 16) == 388 + 16  # valid inputs are 16 apart for depth 5
    for depth in (2, 3, 4, 5):
        for want in (1, 50, 101):
            n = valid_input_size(want, depth)
            assert output_size(n, depth) >= want
            smaller = n - 2 ** (depth - 1)  # valid sizes are 2**(depth-1) apart: the one below is too small
            try:
                assert output_size(smaller, depth) < want
            except ValueError:
                pass
    with pytest.raises(ValueError, match=r"input size 570 is not valid.*nearest valid sizes: 556 or 572"):
        output_size(570)
    with pytest.raises(ValueError, match="not valid"):
        UNet(depth=3, base_channels=2, engine="numpy").forward(np.zeros((1, 1, 45, 44), np.float32))


def test_he_initialisation():
    m = UNet(depth=3, base_channels=32, engine="numpy", seed=1)
    w = m.params["down2.conv2.weight"]  # 128 x 128 x 3 x 3, fan-in 1152
    assert abs(w.std() - np.sqrt(2 / 1152)) < 0.02 * np.sqrt(2 / 1152)
    assert abs(w.mean()) < 0.01 * w.std() * 10
    assert np.all(m.params["down2.conv2.bias"] == 0)
    assert not np.array_equal(m.params["down0.conv1.weight"], UNet(depth=3, base_channels=32, engine="numpy", seed=2).params["down0.conv1.weight"])


def small_problem(rng, depth=3, base=3, n=2, size=None, classes=2):
    size = size or valid_input_size(6, depth)
    o = output_size(size, depth)
    x = rng.standard_normal((n, 1, size, size)).astype(np.float32)
    labels = rng.integers(0, classes, (n, o, o)).astype(np.int32)
    weights = rng.uniform(0.5, 5, (n, o, o)).astype(np.float32)
    return x, labels, weights


def decided_problem(rng, model, base, margin=1e-6, dropout_seed=99):
    """small_problem redrawn until every max-pool window and ReLU of model's (float64) forward is
    decided by more than margin x the layer's largest value. fp32 rounding (~1e-7 relative) may
    decide a closer one the other way, which moves one pixel's gradient elsewhere: a 1e-3 gradient
    difference (seen once in 640 problems: a max-pool near-tie) that is no kernel error."""
    for _ in range(50):
        x, labels, weights = small_problem(rng, base=base)
        if near_decisions(model, x.astype(np.float64), margin, dropout_seed) == 0:
            return x, labels, weights
    raise AssertionError("50 problems in a row had a near-tied max-pool or ReLU")


def near_decisions(model, x, margin, dropout_seed=99):
    """How many max-pool windows and ReLUs of model's forward on x are decided by less than margin x
    the layer's largest value (conftest.near_pools, near_relus)."""
    cache = {}
    model.forward(x, train=True, dropout_seed=dropout_seed, _cache=cache)
    near = 0
    for name, entry in cache.items():
        if name.startswith("skip"):  # the map each max-pool reads
            near += near_pools(entry, margin)
        elif ".conv" in name:  # a 3x3 conv + ReLU: its pre-activation
            inp = R.crop_concat_forward(*entry[0]) if isinstance(entry[0], tuple) else entry[0]
            near += near_relus(R.conv3x3_forward(inp, model.params[f"{name}.weight"], model.params[f"{name}.bias"],
                                                 relu=False), margin)
    return near


def decisions(model, x, dropout_seed):
    """Every discrete choice of model's forward on x: the max-pools' argmax and the ReLUs' signs."""
    cache = {}
    model.forward(x, train=True, dropout_seed=dropout_seed, _cache=cache)
    return [v for k, v in cache.items() if k.startswith("pool")] + [v[1] > 0 for k, v in cache.items() if ".conv" in k]


def test_near_decisions_finds_the_max_pool_near_tie():
    """The problem drawn from seed 625 has a max-pool window whose top two values the emulated fp32
    model ordered the other way (a down0.conv1 gradient 1.2e-3 off); decided_problem skips it."""
    ref = UNet(depth=3, base_channels=4, dropout=0.5, engine="numpy", seed=5).reference()
    x = small_problem(np.random.default_rng(625), base=4)[0].astype(np.float64)
    assert near_decisions(ref, x, 1e-6) > 0 and near_decisions(ref, x, 0) == 0


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_reference_model_vs_finite_differences(rng, dropout):
    m = UNet(depth=3, base_channels=2, dropout=dropout, engine="numpy", seed=3).reference()
    x, labels, weights = decided_problem(rng, m, base=2, dropout_seed=11)  # else +-eps may flip most coordinates
    x = x.astype(np.float64)
    loss, grads = m.loss_and_grads(x, labels, weights.astype(np.float64), dropout_seed=11)
    chosen = decisions(m, x, 11)
    checked = 0
    for name in ("down0.conv1.weight", "down2.conv2.bias", "up1.upconv.weight", "up0.conv1.weight", "head.bias"):
        p = m.params[name].reshape(-1)
        for i in rng.choice(p.size, size=min(3, p.size), replace=False):
            old, f, same = p[i], [], True
            for step in (1e-6, -1e-6):
                p[i] = old + step
                f.append(m.loss_and_grads(x, labels, weights.astype(np.float64), dropout_seed=11)[0])
                same = same and all(np.array_equal(a, b) for a, b in zip(decisions(m, x, 11), chosen))
            p[i] = old
            if not same:  # a ReLU or max-pool flips inside +-eps (1 problem in ~150): no derivative to compare
                continue
            num = (f[0] - f[1]) / 2e-6
            ana = grads[name].reshape(-1)[i]
            assert abs(num - ana) <= 1e-6 * max(1.0, abs(num)) + 1e-8, (name, i, num, ana)
            checked += 1
    assert checked >= 10  # of 14: a kink is crossed rarely


@pytest.mark.parametrize("engine", ["emu", "numpy", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("precision", ["fp32", "tf32"])
def test_model_gradients_match_reference(engine, rng, fuse, precision):
    """One training step of a small U-Net: loss and every parameter gradient vs the float64 model.
    tf32 is compared with the exact (fp32) model: rounding the operands of 18 convolutions moves
    the activations by ~1e-4 at the output and the weight gradients, sums of many products that
    largely cancel, by a few percent in this 4-channel net (3-8 % measured; the float64 model
    with the same tf32 rounding does not track it better, since a rounding that flips early is
    amplified downstream; over 12 random problems the worst gradient was 0.6-14 % off). So, on one
    fixed problem (3 % there): loss within 1e-3, every gradient within 20 % and aligned (cosine >
    0.98) — a wrong kernel is off by ~100 %."""
    if precision == "tf32":
        rng = np.random.default_rng(0)
    m = UNet(depth=3, base_channels=4, dropout=0.5, engine=engine, seed=5, fuse=fuse, precision=precision)
    ref = UNet(depth=3, base_channels=4, dropout=0.5, engine="numpy", seed=5).reference()
    x, labels, weights = decided_problem(rng, ref, base=4) if precision == "fp32" else small_problem(rng, base=4)
    rloss, rgrads = ref.loss_and_grads(x.astype(np.float64), labels, weights.astype(np.float64), dropout_seed=99)
    xp = m.xp
    loss, grads = m.loss_and_grads(xp.asarray(x), xp.asarray(labels), xp.asarray(weights), dropout_seed=99)
    tol, loss_tol = (1e-4, 1e-5) if precision == "fp32" else (0.2, 1e-3)
    assert np.isfinite(loss) and abs(loss - rloss) <= loss_tol * abs(rloss)
    assert list(grads) == list(m.params)
    # head.bias's gradient is (s, -s), s a sum over pixels of the 2-class softmax gradient, which can
    # cancel to 1e-3 of its terms (seed 902 of the numpy engine: 1.09 x tol relative): bound it by the
    # summed magnitudes of its terms, |dlogits|; every other bias stayed below 0.14 x tol in 3900 draws
    dz = R.softmax_xent(ref.forward(x.astype(np.float64), train=True, dropout_seed=99), labels,
                        weights.astype(np.float64))[1]
    for k, g in grads.items():
        g = g.get() if hasattr(g, "get") else g
        assert g.shape == m.params[k].shape and g.dtype == np.float32
        if k == "head.bias" and precision == "fp32":
            excess = np.abs(g - rgrads[k]) - tol * np.abs(dz).sum(axis=(0, 2, 3))
            assert (excess <= 0).all(), (k, g, rgrads[k])
            continue
        assert rel_err(g, rgrads[k]) < tol, (k, rel_err(g, rgrads[k]))
        cos = float(np.vdot(g, rgrads[k]) / (np.linalg.norm(g) * np.linalg.norm(rgrads[k])))
        assert cos > 0.98, (k, cos)


@pytest.mark.parametrize("engine", ["emu", "numpy"])
def test_fused_and_plain_paths_agree(engine, rng):
    """fuse=True (concat read in place, ReLU masks in backward-data epilogues) and fuse=False (the
    op chain with crop_concat) give the same logits, loss and gradients."""
    x, labels, weights = small_problem(rng, base=3)
    results = []
    for fuse in (True, False):
        m = UNet(depth=3, base_channels=3, dropout=0.0, engine=engine, seed=8, fuse=fuse)
        results.append((m.forward(x), *m.loss_and_grads(x, labels, weights)))
    (l1, loss1, g1), (l2, loss2, g2) = results
    assert rel_err(l1, l2) < 1e-6 and abs(loss1 - loss2) <= 1e-6 * abs(loss2)
    for k in g1:
        assert rel_err(g1[k], g2[k]) < 1e-5, k


def test_forward_shapes_and_train_flag(rng):
    m = UNet(depth=3, base_channels=4, dropout=0.5, engine="numpy")
    x, _, _ = small_problem(rng, base=4, n=3)
    a = m.forward(x)
    assert a.shape == (3, 2, output_size(x.shape[2], 3), output_size(x.shape[2], 3))
    assert np.array_equal(a, m.forward(x))  # inference: no dropout
    assert not np.array_equal(a, m.forward(x, train=True, dropout_seed=1))
    p = m.predict_proba(x)
    assert np.allclose(p.sum(1), 1, atol=1e-6)


def test_save_load_roundtrip(tmp_path, rng):
    m = UNet(depth=2, base_channels=3, n_classes=3, engine="numpy", seed=4)
    mom = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in m.params.items()}
    path = tmp_path / "m.npz"
    m.save(path, momentum=mom, state={"step": 7})
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]  # no temp files left
    m2, mom2, state = UNet.load(path, engine="numpy", with_state=True)
    assert m2.config == m.config and state == {"step": 7}
    for k in m.params:
        assert np.array_equal(m2.params[k], m.params[k]) and np.array_equal(mom2[k], mom[k])
    # truncated and foreign files are clear errors
    data = path.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable unetcu model file"):
        UNet.load(tmp_path / "cut.npz")
    np.savez(tmp_path / "foreign.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="not a unetcu model file"):
        UNet.load(tmp_path / "foreign.npz")
    with pytest.raises(FileNotFoundError):
        UNet.load(tmp_path / "missing.npz")
