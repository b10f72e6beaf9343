"""The numpy engine's fast float32 convolutions (unetcu/cpu.py) against the float64 oracle, through the
op layer as the model calls them: every direction, with and without the ReLU masks, the concatenated
inputs, fp32 and tf32, at the op suite's odd shapes and a few more (1x1 outputs, W = 3, N > 1)."""
import numpy as np
import pytest

from conftest import near_relus  # noqa: F401 (the op suite's helpers)
from test_ops import CONV_SHAPES, close, f32, sums
from unetcu import cpu, ops, reference as R

SHAPES = CONV_SHAPES + [(1, 2, 3, 3, 3), (3, 2, 5, 3, 2), (1, 3, 3, 9, 4)]


@pytest.mark.parametrize("chunk", [None, 7])
@pytest.mark.parametrize("precision", ["fp32", "tf32"])
@pytest.mark.parametrize("shape", SHAPES)
def test_fast_conv3x3_matches_the_oracle(rng, shape, precision, chunk, monkeypatch):
    """chunk 7: the im2col matrix in many chunks of columns, the last one partial, as at the 188 tile."""
    if chunk:
        monkeypatch.setattr(cpu, "CHUNK", chunk)
    n, c, h, w, k = shape
    x, wt, b = f32(rng, n, c, h, w), f32(rng, k, c, 3, 3, scale=0.3), f32(rng, k)
    for relu in (False, True):
        out = ops.conv3x3_forward(x, wt, b, relu=relu, engine="numpy", precision=precision)
        assert out.dtype == np.float32 and out.flags.c_contiguous
        close(out, *sums(R.conv3x3_forward, x, wt, b, relu, precision))
    dout = f32(rng, n, k, h - 2, w - 2)
    relu_out = np.maximum(f32(rng, n, k, h - 2, w - 2), 0)
    for o in (None, relu_out):
        dx = ops.conv3x3_backward_data(dout, wt, o, engine="numpy", precision=precision)
        assert dx.dtype == np.float32
        close(dx, *sums(R.conv3x3_backward_data, dout, wt, o, precision))
        dw0, db0 = f32(rng, k, c, 3, 3), f32(rng, k)  # accumulated into, as the op layer promises
        dw, db = ops.conv3x3_backward_weight(dout, x, o, dw=dw0.copy(), db=db0.copy(), engine="numpy",
                                             precision=precision)
        (gw, gb), (mw, mb) = sums(R.conv3x3_backward_weight, dout, x, o, precision)
        close(dw, gw + dw0, magnitude=mw + np.abs(dw0))
        close(db, gb + db0, magnitude=mb + np.abs(db0))


def test_fast_conv3x3_of_a_concatenation_matches_the_oracle(rng):
    skip, up = f32(rng, 2, 3, 14, 15), f32(rng, 2, 4, 8, 9)
    wt, b = f32(rng, 5, 7, 3, 3, scale=0.3), f32(rng, 5)
    x = R.crop_concat_forward(skip, up)
    close(ops.conv3x3_forward_concat(skip, up, wt, b, engine="numpy"), *sums(R.conv3x3_forward, x, wt, b, True))
    dout = f32(rng, 2, 5, 6, 7)
    dwin, dup = ops.conv3x3_backward_data_concat(dout, wt, 3, engine="numpy")
    ref, mag = sums(R.conv3x3_backward_data, dout, wt, None)
    close(dwin, ref[:, :3], mag[:, :3])
    close(dup, ref[:, 3:], mag[:, 3:])
    dw, db = ops.conv3x3_backward_weight_concat(dout, skip, up, engine="numpy")
    (gw, gb), (mw, mb) = sums(R.conv3x3_backward_weight, dout, x, None)
    close(dw, gw, mw)
    close(db, gb, mb)


def test_reused_buffers_never_leak_between_calls(rng):
    """The im2col and wide buffers are reused per shape: a second call with other values, and a call of
    another shape in between, give exactly what a fresh computation gives."""
    x1, x2 = f32(rng, 1, 3, 9, 11), f32(rng, 1, 3, 9, 11)
    wt, b = f32(rng, 4, 3, 3, 3), f32(rng, 4)
    first = cpu.conv3x3_forward(x2, wt, b).copy()
    cpu.conv3x3_forward(x1, wt, b)
    cpu.conv3x3_forward(f32(rng, 2, 3, 6, 5), wt, b)
    assert np.array_equal(cpu.conv3x3_forward(x2, wt, b), first)
    dout = f32(rng, 1, 4, 7, 9)
    dw1, db1 = cpu.conv3x3_backward_weight(dout, x2)
    cpu.conv3x3_backward_weight(f32(rng, 1, 4, 7, 9), x1)
    dw2, db2 = cpu.conv3x3_backward_weight(dout, x2)
    assert np.array_equal(dw1, dw2) and np.array_equal(db1, db2)


def test_the_float64_oracle_is_still_the_reference_code(rng):
    """float64 inputs on the numpy engine take reference.py, not the fast path (the oracle stays plain)."""
    x, wt, b = (a.astype(np.float64) for a in (f32(rng, 1, 2, 6, 7), f32(rng, 3, 2, 3, 3), f32(rng, 3)))
    out = ops.conv3x3_forward(x, wt, b, engine="numpy")
    assert out.dtype == np.float64 and np.array_equal(out, R.conv3x3_forward(x, wt, b))


@pytest.mark.parametrize("shape", [(1, 1, 2, 2), (2, 3, 6, 10), (1, 5, 14, 4)])
def test_fast_maxpool_matches_the_oracle_ties_included(rng, shape):
    """Values drawn from a few levels so that windows tie (ties go to the first position)."""
    x = rng.integers(-2, 3, shape).astype(np.float32) + f32(rng, *shape) * (rng.random(shape) < 0.5)
    out, am = ops.maxpool2x2_forward(x, engine="numpy")
    rout, ram = R.maxpool2x2_forward(x.astype(np.float64))
    assert am.dtype == np.uint8 and np.array_equal(am, ram) and np.array_equal(out, rout)
    dout = f32(rng, *out.shape)
    dx = ops.maxpool2x2_backward(dout, am, engine="numpy")
    assert dx.dtype == np.float32 and np.array_equal(dx, R.maxpool2x2_backward(dout.astype(np.float64), ram))


def test_fast_maxpool_keeps_a_nan_where_the_oracle_does(rng):
    """A NaN in a window is its maximum (the oracle's argmax: the first NaN), wherever it sits, so a
    diverging activation reaches the loss instead of being pooled away."""
    x = f32(rng, 2, 3, 8, 6)
    flat = x.reshape(-1)
    flat[rng.choice(flat.size, 20, replace=False)] = np.nan
    x[0, 0, :2, :2] = np.nan  # a window of NaNs only
    out, am = ops.maxpool2x2_forward(x, engine="numpy")
    rout, ram = R.maxpool2x2_forward(x.astype(np.float64))
    assert np.isnan(out).sum() > 0 and np.array_equal(am, ram) and np.array_equal(out, rout, equal_nan=True)


@pytest.mark.parametrize("shape", [(1, 1, 3, 4, 2), (3, 5, 6, 7, 4), (2, 16, 9, 5, 8)])  # N, C, H, W, K
def test_fast_upconv_and_conv1x1_match_the_oracle(rng, shape):
    n, c, h, w, k = shape
    x = f32(rng, n, c, h, w)
    wu, bu = f32(rng, c, k, 2, 2), f32(rng, k)
    close(ops.upconv2x2_forward(x, wu, bu, engine="numpy"), *sums(R.upconv2x2_forward, x, wu, bu))
    du = f32(rng, n, k, 2 * h, 2 * w)
    close(ops.upconv2x2_backward_data(du, wu, engine="numpy"), *sums(R.upconv2x2_backward_data, du, wu))
    dw, db = ops.upconv2x2_backward_weight(du, x, engine="numpy")
    (gw, gb), (mw, mb) = sums(R.upconv2x2_backward_weight, du, x)
    close(dw, gw, mw)
    close(db, gb, mb)
    w1, b1 = f32(rng, k, c, 1, 1), f32(rng, k)
    close(ops.conv1x1_forward(x, w1, b1, engine="numpy"), *sums(R.conv1x1_forward, x, w1, b1))
    d1 = f32(rng, n, k, h, w)
    close(ops.conv1x1_backward_data(d1, w1, engine="numpy"), *sums(R.conv1x1_backward_data, d1, w1))
    dw, db = ops.conv1x1_backward_weight(d1, x, engine="numpy")
    (gw, gb), (mw, mb) = sums(R.conv1x1_backward_weight, d1, x)
    close(dw, gw, mw)
    close(db, gb, mb)


def test_a_batch_computes_exactly_what_its_images_compute_alone(rng):
    """Every float32 GEMM op of the numpy engine, bit for bit: a batch's outputs are its images' own,
    and its weight gradients the in-order sum of the images' (what train --distributed's ranks add).
    The shapes are the small preset's first level, where the im2col matrix comes in several chunks."""
    n, c, h, w, k = 3, 4, 60, 70, 5
    x, dout = f32(rng, n, c, h, w), f32(rng, n, k, h - 2, w - 2)
    relu_out = np.maximum(f32(rng, n, k, h - 2, w - 2), 0)
    w3, b3 = f32(rng, k, c, 3, 3), f32(rng, k)
    wu, bu, du = f32(rng, c, k, 2, 2), f32(rng, k), f32(rng, n, k, 2 * h, 2 * w)
    w1, b1, d1 = f32(rng, k, c, 1, 1), f32(rng, k), f32(rng, n, k, h, w)
    per_image = [  # (op, its inputs with the batch first, which inputs are batched)
        (ops.conv3x3_forward, (x, w3, b3), (0,)),
        (ops.conv3x3_backward_data, (dout, w3, relu_out), (0, 2)),
        (ops.upconv2x2_forward, (x, wu, bu), (0,)),
        (ops.upconv2x2_backward_data, (du, wu), (0,)),
        (ops.conv1x1_forward, (x, w1, b1), (0,)),
        (ops.conv1x1_backward_data, (d1, w1), (0,))]
    for op, args, batched in per_image:
        whole = op(*args, engine="numpy")
        for i in range(n):
            one = op(*(a[i:i + 1] if j in batched else a for j, a in enumerate(args)), engine="numpy")
            assert np.array_equal(whole[i:i + 1], one), (op.__name__, i)
    summed = [(ops.conv3x3_backward_weight, (dout, x, relu_out)), (ops.upconv2x2_backward_weight, (du, x)),
              (ops.conv1x1_backward_weight, (d1, x))]
    for op, args in summed:
        whole = op(*args, engine="numpy")
        acc = None
        for i in range(n):
            one = op(*(a[i:i + 1] for a in args), engine="numpy")
            acc = one if acc is None else tuple(s + o for s, o in zip(acc, one))
        for got, want in zip(whole, acc):
            assert np.array_equal(got, want), op.__name__


def test_the_blas_and_its_threads_are_named(tmp_path):
    """The numpy engine's speed is mostly its BLAS's: `unetcu train` names it and its threads."""
    from unetcu.cli import main
    import contextlib
    import io
    info = cpu.blas_info()
    assert " threads" in info and info.split()[0] in ("openblas", "mkl", "blis", "accelerate", "flexiblas"), info
    out = io.StringIO()
    assert main(["synth", str(tmp_path / "ex"), "--count", "2", "--size", "64"]) == 0
    with contextlib.redirect_stdout(out):
        assert main(["train", "--preset", "tiny", "--steps", "1", "--data", str(tmp_path / "ex"), "--out",
                     str(tmp_path / "run"), "--no-progress", "--engine", "numpy"]) == 0
    assert f"on engine 'numpy' ({cpu.blas_info()}):" in out.getvalue(), out.getvalue()
    assert cpu.blas_info() == info  # NumPy's BLAS only, whatever other libraries loaded since


def test_relu_mask_in_place_is_the_oracles(rng):
    """backward-data's mask of its input (the ReLU that produced it), in place: dx where x > 0, else 0,
    also where dx is NaN or x is NaN or -0."""
    from unetcu import cpu
    dx, x = f32(rng, 2, 3, 7, 5), f32(rng, 2, 3, 7, 5)
    x.reshape(-1)[:4] = [np.nan, -0.0, 0.0, np.inf]
    dx.reshape(-1)[4:8] = np.nan
    want = R.relu_mask(dx.astype(np.float64), x.astype(np.float64))
    got = dx.copy()
    assert cpu.relu_mask_(got, x) is got and np.array_equal(got, want, equal_nan=True)
