"""The float64 NumPy reference: backward passes against central finite differences (relative error
< 1e-6) and forward passes against small hand-computed cases."""
import numpy as np
import pytest

from unetcu import reference as R


def fd_check(f, params, grads, rng, eps=1e-6, n_coords=12, decisions=None):
    """f() -> scalar using the arrays in params (perturbed in place); grads: analytic gradients.
    Checks n_coords random coordinates of each parameter by central differences. decisions() -> the
    function's discrete choices (ReLU signs, max-pool argmax): a coordinate whose +-eps changes them
    crosses a kink, where the difference quotient is no derivative (1 draw in ~20000), and is skipped."""
    chosen = decisions() if decisions else None
    for p, g in zip(params, grads):
        assert g.shape == p.shape
        flat = p.reshape(-1)
        checked = 0
        for i in rng.choice(flat.size, size=min(n_coords, flat.size), replace=False):
            old, f_at, same = flat[i], [], True
            for step in (eps, -eps):
                flat[i] = old + step
                f_at.append(f())
                same = same and (chosen is None or all(np.array_equal(a, b) for a, b in zip(decisions(), chosen)))
            flat[i] = old
            if not same:
                continue
            num = (f_at[0] - f_at[1]) / (2 * eps)
            ana = g.reshape(-1)[i]
            assert abs(num - ana) <= 1e-6 * max(1.0, abs(num), abs(ana)) + 1e-9, (i, num, ana)
            checked += 1
        assert checked >= min(n_coords, flat.size) // 2, "most coordinates crossed a kink: decisions() is wrong"


def test_conv3x3_gradients(rng):
    x = rng.standard_normal((2, 3, 7, 6))
    w = rng.standard_normal((4, 3, 3, 3))
    b = rng.standard_normal(4)
    for relu in (False, True):
        r = rng.standard_normal((2, 4, 5, 4))
        out = R.conv3x3_forward(x, w, b, relu)
        dx = R.conv3x3_backward_data(r, w, out if relu else None)
        dw, db = R.conv3x3_backward_weight(r, x, out if relu else None)
        fd_check(lambda: (r * R.conv3x3_forward(x, w, b, relu)).sum(), [x, w, b], [dx, dw, db], rng,
                 decisions=(lambda: [R.conv3x3_forward(x, w, b, relu=False) > 0]) if relu else None)


def test_conv3x3_hand_computed():
    # 4x4 input 0..15, one 3x3 kernel of ones except a 2 in the centre, bias 1:
    # out[y,x] = 1 + sum of the window + the centre pixel
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    w = np.ones((1, 1, 3, 3))
    w[0, 0, 1, 1] = 2
    out = R.conv3x3_forward(x, w, np.array([1.0]), relu=False)
    # window sums: (0+1+2+4+5+6+8+9+10)=45 + centre 5 + 1 = 51; next: 54+6+1=61; 81+9+1=91; 90+10+1=101
    assert out[0, 0].tolist() == [[51, 61], [91, 101]]
    # a negative-only kernel: ReLU zeroes everything
    assert np.all(R.conv3x3_forward(x, -w, np.array([0.0]), relu=True) == 0)


def test_maxpool_hand_and_gradient(rng):
    x = np.array([[[[1, 5, 2, 2], [3, 4, 2, 9], [0, 0, -1, -2], [0, 7, -3, -4]]]], dtype=np.float64)
    out, am = R.maxpool2x2_forward(x)
    assert out[0, 0].tolist() == [[5, 9], [7, -1]]
    assert am[0, 0].tolist() == [[1, 3], [3, 0]]  # ties (the zeros, the 2s) go to the first
    x = rng.standard_normal((2, 3, 6, 8))
    r = rng.standard_normal((2, 3, 3, 4))
    out, am = R.maxpool2x2_forward(x)
    fd_check(lambda: (r * R.maxpool2x2_forward(x)[0]).sum(), [x], [R.maxpool2x2_backward(r, am)], rng,
             decisions=lambda: [R.maxpool2x2_forward(x)[1]])


def test_upconv_hand_and_gradients(rng):
    x = np.array([[[[1.0, 2.0]]]])  # (1, 1, 1, 2)
    w = np.arange(4, dtype=np.float64).reshape(1, 1, 2, 2)  # [[0, 1], [2, 3]]
    out = R.upconv2x2_forward(x, w, np.array([0.5]))
    assert out[0, 0].tolist() == [[0.5, 1.5, 0.5, 2.5], [2.5, 3.5, 4.5, 6.5]]
    x = rng.standard_normal((2, 3, 3, 4))
    w = rng.standard_normal((3, 5, 2, 2))
    b = rng.standard_normal(5)
    r = rng.standard_normal((2, 5, 6, 8))
    dx = R.upconv2x2_backward_data(r, w)
    dw, db = R.upconv2x2_backward_weight(r, x)
    fd_check(lambda: (r * R.upconv2x2_forward(x, w, b)).sum(), [x, w, b], [dx, dw, db], rng)


def test_crop_concat_offsets_and_gradient(rng):
    # the paper's crops: 64->56, 136->104, 280->200, 568->392
    for hs, h, o in ((64, 56, 4), (136, 104, 16), (280, 200, 40), (568, 392, 88)):
        assert R.crop_offsets((hs, hs), (h, h)) == (o, o)
    assert R.crop_offsets((7, 9), (4, 4)) == (1, 2)  # odd differences round down
    skip = rng.standard_normal((2, 3, 9, 8))
    up = rng.standard_normal((2, 2, 5, 4))
    out = R.crop_concat_forward(skip, up)
    assert np.array_equal(out[:, :3], skip[:, :, 2:7, 2:6]) and np.array_equal(out[:, 3:], up)
    r = rng.standard_normal(out.shape)
    ds, du = R.crop_concat_backward(r, skip.shape)
    fd_check(lambda: (r * R.crop_concat_forward(skip, up)).sum(), [skip, up], [ds, du], rng)
    with pytest.raises(ValueError, match="larger than the skip"):
        R.crop_offsets((4, 4), (5, 4))


def test_softmax_xent_hand_and_gradient(rng):
    # two classes, one pixel, logits (0, log 3): p = (1/4, 3/4); label 1, weight 2 -> 2 * -log(3/4)
    logits = np.array([0.0, np.log(3.0)]).reshape(1, 2, 1, 1)
    loss, d = R.softmax_xent(logits, np.array([[[1]]]), np.array([[[2.0]]]))
    assert loss == pytest.approx(-2 * np.log(0.75), rel=1e-14)
    assert d[0, :, 0, 0] == pytest.approx([2 * 0.25, 2 * (0.75 - 1)], rel=1e-14)
    # numerically stable for huge logits
    big = np.array([1000.0, 0.0]).reshape(1, 2, 1, 1)
    assert np.isfinite(R.softmax_xent(big, np.array([[[1]]]), np.ones((1, 1, 1)))[0])
    # accurate for a confident right answer: margin m gives loss log1p(e^-m) and dlogit -e^-m / (1 + e^-m)
    # at the label (log(1 + e^-m) and p - 1 would both be 0 or off by far more than 1e-5 beyond m ~ 26)
    for m, label in ((30.0, 0), (45.0, 1), (700.0, 2)):
        logits = np.zeros((1, 3, 1, 1))
        logits[0, label, 0, 0] = m
        logits[0, (label + 2) % 3, 0, 0] = -1e4  # a third class that contributes nothing
        loss, d = R.softmax_xent(logits, np.array([[[label]]]), np.ones((1, 1, 1)))
        tail = np.exp(-m)
        assert loss == pytest.approx(np.log1p(tail), rel=1e-14) and loss > 0
        assert d[0, label, 0, 0] == pytest.approx(-tail / (1 + tail), rel=1e-14)
        assert d[0, (label + 1) % 3, 0, 0] == pytest.approx(tail / (1 + tail), rel=1e-14)
    logits = rng.standard_normal((2, 3, 4, 5)) * 3
    labels = rng.integers(0, 3, (2, 4, 5))
    weights = rng.uniform(0.5, 10, (2, 4, 5))
    loss, d = R.softmax_xent(logits, labels, weights)
    fd_check(lambda: R.softmax_xent(logits, labels, weights)[0], [logits], [d], rng)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        R.softmax_xent(logits, labels + 1, weights)


def test_conv1x1_gradients(rng):
    x = rng.standard_normal((2, 5, 3, 4))
    w = rng.standard_normal((3, 5, 1, 1))
    b = rng.standard_normal(3)
    r = rng.standard_normal((2, 3, 3, 4))
    dw, db = R.conv1x1_backward_weight(r, x)
    fd_check(lambda: (r * R.conv1x1_forward(x, w, b)).sum(), [x, w, b], [R.conv1x1_backward_data(r, w), dw, db], rng)


def test_dropout_statistics_and_gradient(rng):
    u = R.dropout_bits(123, 200_000) / 2 ** 24  # the draws as floats in [0, 1)
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.005
    assert np.array_equal(u, R.dropout_bits(123, 200_000) / 2 ** 24) and not np.array_equal(u, R.dropout_bits(124, 200_000) / 2 ** 24)
    x = rng.standard_normal(50_000) + 3
    y = R.dropout_forward(x, 0.3, seed=7)
    kept = y != 0
    assert abs(kept.mean() - 0.7) < 0.01
    assert np.allclose(y[kept], x[kept] / 0.7)
    r = rng.standard_normal(x.shape)
    assert np.array_equal(R.dropout_backward(r, 0.3, 7) != 0, kept)


def test_adam_first_step_moves_each_weight_by_lr_against_its_gradient_sign():
    # step 1: m = (1-b1) g, v = (1-b2) g^2, the bias corrections undo both factors: lr * g / (|g| + eps)
    g = np.array([3.0, -1e-3, 0.25])
    p, m, v = R.adam(np.zeros(3), g, np.zeros(3), np.zeros(3), step=1, lr=0.01)
    assert np.allclose(p, -0.01 * g / (np.abs(g) + 1e-8), rtol=1e-12)
    assert np.allclose(m, 0.1 * g) and np.allclose(v, 0.001 * g * g)
    # AdamW scales the weights by 1 - lr*wd before the step; Adam adds wd*param to the gradient
    pw, _, _ = R.adam(np.ones(3), g, np.zeros(3), np.zeros(3), 1, 0.01, weight_decay=0.5, decoupled=True)
    assert np.allclose(pw, 0.995 - 0.01 * np.sign(g), rtol=1e-6)
    pl, _, _ = R.adam(np.ones(3), g, np.zeros(3), np.zeros(3), 1, 0.01, weight_decay=0.5)
    assert np.allclose(pl, 1 - 0.01 * np.sign(g + 0.5), rtol=1e-6)


@pytest.mark.parametrize("decoupled", [False, True], ids=["adam", "adamw"])
def test_adam_matches_torch_optim_where_torch_is_installed(rng, decoupled):
    """The reference is PyTorch's rule (the quality benchmark's peer trains with it). Skipped without torch (CI)."""
    torch = pytest.importorskip("torch")
    p0 = rng.standard_normal(50)
    grads = [rng.standard_normal(50) * 10.0 ** rng.integers(-3, 2, 50) for _ in range(6)]
    t = torch.tensor(p0, requires_grad=True)
    opt = (torch.optim.AdamW if decoupled else torch.optim.Adam)([t], lr=1e-2, weight_decay=0.1)
    p, m, v = p0, np.zeros(50), np.zeros(50)
    for step, g in enumerate(grads, start=1):
        t.grad = torch.tensor(g)
        opt.step()
        p, m, v = R.adam(p, g, m, v, step, 1e-2, weight_decay=0.1, decoupled=decoupled)
    assert np.allclose(p, t.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_sgd_momentum_rule():
    p, v = R.sgd_momentum(np.array([1.0]), np.array([0.5]), np.array([0.2]), lr=0.1, momentum=0.9, weight_decay=0.01)
    assert v[0] == pytest.approx(0.9 * 0.2 - 0.1 * (0.5 + 0.01 * 1.0))
    assert p[0] == pytest.approx(1.0 + v[0])
