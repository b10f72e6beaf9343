"""Every kernel and variant against the float64 reference, through the op layer: fresh random inputs,
odd and non-tile-multiple sizes, N > 1, channel counts that are not multiples of 4/8/16, outputs
poisoned with NaN (emu poisons every output buffer), any NaN/Inf fails, relative L2 error <= 1e-5
(fp32), every emulator thread order. The same tests run on a GPU (engine "cuda", marked gpu)."""
import itertools

import numpy as np
import pytest

from conftest import near_pools, near_relus, rel_err
from unetcu import ops, reference as R
from unetcu.ops import conv3x3 as C3
from unetcu.ops.dropout import SEED_IN_MEMORY

TOL = 1e-5


@pytest.fixture(params=["emu", pytest.param("cuda", marks=pytest.mark.gpu)])
def engine(request, order):
    if request.param == "cuda" and order[0] != "forward":
        pytest.skip("the thread order is an emulator setting")
    return request.param


def dev(a, engine):
    if engine == "cuda":
        import cupy
        return cupy.asarray(a)
    return np.array(a, copy=True, order="C")  # a copy: ops may write into it


def host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


def close(out, ref, magnitude=None, tol=TOL):
    """Relative L2 error <= tol, NaN fails. For a sum (a convolution), pass `magnitude`, the same sum
    over its terms' absolute values (`sums`): the error is then relative to ||magnitude||, which
    bounds fp32 rounding, so an output that cancels to near 0 (one ReLU survivor of 0.001 from terms
    of 0.3) does not fail a correct kernel."""
    out = host(out)
    err = rel_err(out, ref)
    if magnitude is not None and np.isfinite(err):
        err = float(np.linalg.norm(out.astype(np.float64) - ref) / max(np.linalg.norm(magnitude), 1e-300))
    assert err <= tol, f"relative L2 error {err:.3e} > {tol}" + (" (relative to the summed magnitudes)" if magnitude is not None else "")
    maxabs = np.abs(out.astype(np.float64) - ref).max() if out.size else 0.0
    assert maxabs <= 100 * tol * max(1.0, np.abs(ref).max()), f"max abs error {maxabs:.3e}"


def sums(f, *args):
    """f (a reference op) over the float64 inputs, and over their absolute values: the magnitudes
    that bound each output's fp32 rounding error (for `close(..., magnitude=)`)."""
    a64 = [np.asarray(a, np.float64) if isinstance(a, np.ndarray) else a for a in args]
    return f(*a64), f(*(np.abs(a) if isinstance(a, np.ndarray) else a for a in a64))


def close_acc(out, grad, start, tol=TOL):
    """out = start + grad, accumulated in fp32: the error is relative to |start| + |grad|, since the
    sum can cancel (a single bias of 0.002 from -0.5 + 0.502 would fail a plain relative test)."""
    out = host(out).astype(np.float64)
    want = grad + start
    scale = np.linalg.norm(np.abs(grad) + np.abs(start))
    err = float(np.linalg.norm(out - want) / scale) if np.all(np.isfinite(out)) else float("inf")
    assert err <= tol, f"relative error {err:.3e} > {tol} (relative to |start| + |grad|)"


def f32(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


# the smallest has several outputs: one output near zero would make a relative error meaningless;
# (1, 7, 8, 9, 67) has more than 64 output channels, so the implicit GEMMs' N tiles and every
# thread's loads are all exercised; (2, 4, 10, 8, 6) takes the 16-byte paths (9C and Ho*Wo multiples of 4)
CONV_SHAPES = [(1, 1, 4, 5, 1), (2, 3, 11, 13, 5), (2, 5, 20, 19, 9), (1, 7, 8, 9, 67), (2, 4, 10, 8, 6)]  # N, C, H, W, K


def conv_cases(op):
    """(variant, tile) for every variant of a conv op; the implicit GEMMs once per tile shape."""
    cases = []
    for rec in ops.variants(op):
        cases += [pytest.param(rec.number, t, id=f"v{rec.number}" + (f"-{t[0]}x{t[1]}" if t else ""))
                  for t in rec.tiles or (None,)]
    return cases


def precision(op, variant):
    """tf32 variants are checked against the reference with the same tf32 rounding of the
    products' operands (so only the fp32 summation differs, and TOL holds for them too)."""
    return ops.REGISTRY[op][variant].precision


def family_variants(*op_names):
    """Every combination of the registered variants of these ops, one test case each: a variant
    added to the registry is tested against the reference with nothing else to edit."""
    combos = itertools.product(*[[r.number for r in ops.variants(o)] for o in op_names])
    return [pytest.param(dict(zip(op_names, c)), id="v" + "-".join(map(str, c))) for c in combos]


def tiled(variant, tile, op, **kw):
    kw = dict(kw, variant=variant, precision=precision(op, variant))
    if tile is not None:
        kw["tile"] = tile
    return kw


@pytest.mark.parametrize("variant,tile", conv_cases("conv3x3_forward"))
@pytest.mark.parametrize("shape", CONV_SHAPES)
@pytest.mark.parametrize("relu", [False, True])
def test_conv3x3_forward(engine, rng, variant, tile, shape, relu):
    op = "conv3x3_forward"
    n, c, h, w, k = shape
    x, wt, b = f32(rng, n, c, h, w), f32(rng, k, c, 3, 3, scale=0.3), f32(rng, k)
    out = ops.conv3x3_forward(dev(x, engine), dev(wt, engine), dev(b, engine), relu=relu, engine=engine,
                              **tiled(variant, tile, op))
    ref, mag = sums(R.conv3x3_forward, x, wt, b, relu, precision(op, variant))
    close(out, ref, magnitude=mag)


# skip (Hs, Ws), (N, Cs, Cu, H, W, K); the smallest has 4 output channels: with one, the ReLU could
# leave a single output of 0.009 from terms of 6, whose fp32 rounding alone is 1.3e-5 relative
CONCAT_SHAPES = [((6, 7), (1, 1, 2, 4, 5, 4)), ((13, 12), (2, 3, 4, 9, 8, 5)),
                 ((21, 21), (2, 5, 3, 15, 15, 7))]


def test_close_to_the_summed_magnitudes_still_fails_a_wrong_sum(rng):
    """The bound relative to the terms' magnitudes passes fp32 rounding of an output that cancels,
    and still fails a sum missing one term, a NaN, or an output off by 1e-4 relative."""
    x, wt, b = f32(rng, 2, 3, 11, 13), f32(rng, 5, 3, 3, 3, scale=0.3), f32(rng, 5)
    ref, mag = sums(R.conv3x3_forward, x, wt, b, True, "fp32")
    close(ref.astype(np.float32), ref, magnitude=mag)
    missing = wt.copy()
    missing[2, 1, 0, 2] = 0
    poisoned = ref.astype(np.float32)
    poisoned[1, 4, 3, 3] = np.nan
    for wrong in (R.conv3x3_forward(x.astype(np.float64), missing.astype(np.float64), b.astype(np.float64), True),
                  poisoned, ref * (1 + 1e-4)):
        with pytest.raises(AssertionError):
            close(wrong, ref, magnitude=mag)


@pytest.mark.parametrize("variant,tile", conv_cases("conv3x3_forward_concat"))
@pytest.mark.parametrize("skip_hw,up_shape", CONCAT_SHAPES)
def test_conv3x3_forward_concat(engine, rng, variant, tile, skip_hw, up_shape):
    op = "conv3x3_forward_concat"
    n, cs, cu, h, w, k = up_shape
    skip, up = f32(rng, n, cs, *skip_hw), f32(rng, n, cu, h, w)
    wt, b = f32(rng, k, cs + cu, 3, 3, scale=0.3), f32(rng, k)
    out = ops.conv3x3_forward_concat(dev(skip, engine), dev(up, engine), dev(wt, engine), dev(b, engine), engine=engine,
                                     **tiled(variant, tile, op))
    cat = R.crop_concat_forward(skip.astype(np.float64), up.astype(np.float64))
    ref, mag = sums(R.conv3x3_forward, cat, wt, b, True, precision(op, variant))
    close(out, ref, magnitude=mag)


@pytest.mark.parametrize("variant,tile", conv_cases("conv3x3_backward_data"))
@pytest.mark.parametrize("shape", CONV_SHAPES)
@pytest.mark.parametrize("relu", [False, True])
def test_conv3x3_backward_data(engine, rng, variant, tile, shape, relu):
    op = "conv3x3_backward_data"
    n, c, h, w, k = shape
    dout, wt = f32(rng, n, k, h - 2, w - 2), f32(rng, k, c, 3, 3)
    out = np.maximum(f32(rng, n, k, h - 2, w - 2), 0) if relu else None  # forward's ReLU output
    dx = ops.conv3x3_backward_data(dev(dout, engine), dev(wt, engine), None if out is None else dev(out, engine),
                                   engine=engine, **tiled(variant, tile, op))
    ref, mag = sums(R.conv3x3_backward_data, dout, wt, out, precision(op, variant))
    close(dx, ref, magnitude=mag)


@pytest.mark.parametrize("variant", [r.number for r in ops.variants("conv3x3_backward_data") if r.tiles])
@pytest.mark.parametrize("shape", CONV_SHAPES[1:])
def test_conv3x3_backward_data_applies_the_input_relu_mask(engine, rng, variant, shape):
    op = "conv3x3_backward_data"
    n, c, h, w, k = shape
    dout, wt = f32(rng, n, k, h - 2, w - 2), f32(rng, k, c, 3, 3)
    out, mask = np.maximum(f32(rng, n, k, h - 2, w - 2), 0), np.maximum(f32(rng, n, c, h, w), 0)
    dx = ops.conv3x3_backward_data(dev(dout, engine), dev(wt, engine), dev(out, engine), mask=dev(mask, engine),
                                   engine=engine, **tiled(variant, None, op))
    ref, mag = sums(R.conv3x3_backward_data, dout, wt, out, precision(op, variant))
    assert (host(dx)[mask == 0] == 0).all()
    close(dx, R.relu_mask(ref, mask), magnitude=R.relu_mask(mag, mask))


@pytest.mark.parametrize("variant,tile", conv_cases("conv3x3_backward_data_concat"))
@pytest.mark.parametrize("skip_hw,up_shape", CONCAT_SHAPES)
@pytest.mark.parametrize("relu", [False, True])
def test_conv3x3_backward_data_concat(engine, rng, variant, tile, skip_hw, up_shape, relu):
    op = "conv3x3_backward_data_concat"
    n, cs, cu, h, w, k = up_shape
    dout, wt = f32(rng, n, k, h - 2, w - 2), f32(rng, k, cs + cu, 3, 3)
    out = np.maximum(f32(rng, n, k, h - 2, w - 2), 0) if relu else None
    dwin, dup = ops.conv3x3_backward_data_concat(dev(dout, engine), dev(wt, engine), cs,
                                                 None if out is None else dev(out, engine), engine=engine,
                                                 **tiled(variant, tile, op))
    dx, mag = sums(R.conv3x3_backward_data, dout, wt, out, precision(op, variant))
    # the same as the unfused path: crop_concat_backward of the concatenated input's gradient
    (dskip, rdup), (mskip, mup) = (R.crop_concat_backward(a, (n, cs) + skip_hw) for a in (dx, mag))
    oy, ox = R.crop_offsets(skip_hw, (h, w))
    close(dwin, dskip[:, :, oy:oy + h, ox:ox + w], magnitude=mskip[:, :, oy:oy + h, ox:ox + w])
    close(dup, rdup, magnitude=mup)


@pytest.mark.parametrize("variant,tile", conv_cases("conv3x3_backward_weight"))
@pytest.mark.parametrize("shape", CONV_SHAPES)
@pytest.mark.parametrize("relu", [False, True])
def test_conv3x3_backward_weight_accumulates(engine, rng, variant, tile, shape, relu):
    op = "conv3x3_backward_weight"
    n, c, h, w, k = shape
    dout, x = f32(rng, n, k, h - 2, w - 2), f32(rng, n, c, h, w)
    out = np.maximum(f32(rng, n, k, h - 2, w - 2), 0) if relu else None
    dw0, db0 = f32(rng, k, c, 3, 3), f32(rng, k)
    dw, db = dev(dw0, engine), dev(db0, engine)
    rdw, rdb = dw, db
    dw, db = ops.conv3x3_backward_weight(dev(dout, engine), dev(x, engine), None if out is None else dev(out, engine),
                                         dw=dw, db=db, engine=engine, **tiled(variant, tile, op))
    assert dw is rdw and db is rdb  # accumulated in place
    gw, gb = R.conv3x3_backward_weight(dout.astype(np.float64), x.astype(np.float64), out, precision(op, variant))
    close_acc(dw, gw, dw0)
    close_acc(db, gb, db0)


@pytest.mark.parametrize("variant", [r.number for r in ops.variants("conv3x3_backward_weight") if r.tiles])
@pytest.mark.parametrize("splits", [2, 7, 40])  # 40 > the reduction's steps: some splits are empty
def test_conv3x3_backward_weight_split_over_pixels(engine, rng, variant, splits):
    op = "conv3x3_backward_weight"
    n, c, h, w, k = 2, 3, 17, 14, 6
    dout, x = f32(rng, n, k, h - 2, w - 2), f32(rng, n, c, h, w)
    out = np.maximum(f32(rng, n, k, h - 2, w - 2), 0)
    dw0, db0 = f32(rng, k, c, 3, 3), f32(rng, k)
    dw, db = ops.conv3x3_backward_weight(dev(dout, engine), dev(x, engine), dev(out, engine), dw=dev(dw0, engine),
                                         db=dev(db0, engine), engine=engine, splits=splits, **tiled(variant, None, op))
    gw, gb = R.conv3x3_backward_weight(dout.astype(np.float64), x.astype(np.float64), out, precision(op, variant))
    close_acc(dw, gw, dw0)
    close_acc(db, gb, db0)


@pytest.mark.parametrize("variant,tile", conv_cases("conv3x3_backward_weight_concat"))
@pytest.mark.parametrize("skip_hw,up_shape", CONCAT_SHAPES)
def test_conv3x3_backward_weight_concat(engine, rng, variant, tile, skip_hw, up_shape):
    op = "conv3x3_backward_weight_concat"
    n, cs, cu, h, w, k = up_shape
    skip, up = f32(rng, n, cs, *skip_hw), f32(rng, n, cu, h, w)
    dout, out = f32(rng, n, k, h - 2, w - 2), np.maximum(f32(rng, n, k, h - 2, w - 2), 0)
    dw0, db0 = f32(rng, k, cs + cu, 3, 3), f32(rng, k)
    dw, db = ops.conv3x3_backward_weight_concat(dev(dout, engine), dev(skip, engine), dev(up, engine), dev(out, engine),
                                                dw=dev(dw0, engine), db=dev(db0, engine), engine=engine,
                                                **tiled(variant, tile, op))
    cat = R.crop_concat_forward(skip.astype(np.float64), up.astype(np.float64))
    gw, gb = R.conv3x3_backward_weight(dout.astype(np.float64), cat, out, precision(op, variant))
    close_acc(dw, gw, dw0)
    close_acc(db, gb, db0)


def test_tf32_variants_round_and_stay_within_tf32_error(rng):
    """The tf32 kernels really compute in tf32 (an fp32 result would sit ~1e-7 from the fp32
    reference) and their error against the exact result is what tf32 gives: ~1e-3 or less."""
    n, c, h, w, k = 1, 16, 12, 12, 16
    x, wt, b = f32(rng, n, c, h, w), f32(rng, k, c, 3, 3, scale=0.3), f32(rng, k)
    exact = R.conv3x3_forward(x.astype(np.float64), wt.astype(np.float64), b.astype(np.float64), False)
    for v in [r.number for r in ops.variants("conv3x3_forward", "tf32")]:
        err = rel_err(ops.conv3x3_forward(x, wt, b, relu=False, engine="emu", variant=v, precision="tf32"), exact)
        assert 1e-5 < err < 2e-3, (v, err)
    fp32 = rel_err(ops.conv3x3_forward(x, wt, b, relu=False, engine="emu"), exact)
    assert fp32 < 1e-6


def test_precision_and_variant_must_agree():
    x, wt, b = (np.ones(s, np.float32) for s in ((1, 2, 5, 5), (3, 2, 3, 3), (3,)))
    with pytest.raises(ValueError, match="computes in tf32; pass precision='tf32'"):
        ops.conv3x3_forward(x, wt, b, engine="emu", variant=4)
    with pytest.raises(ValueError, match="computes in fp32"):
        ops.conv3x3_forward(x, wt, b, engine="emu", variant=2, precision="tf32")
    with pytest.raises(ValueError, match="precision must be one of"):
        ops.conv3x3_forward(x, wt, b, engine="emu", precision="fp16")
    with pytest.raises(ValueError, match="tile"):
        ops.conv3x3_forward(x, wt, b, engine="emu", tile=(32, 32))
    with pytest.raises(ValueError, match="implicit-GEMM variants only"):
        ops.conv3x3_forward(x, wt, b, engine="emu", variant=2, tile=(64, 64))
    assert ops.default_variant("conv3x3_forward") == 3 and ops.default_variant("conv3x3_forward", "tf32") == 4


def test_tile_heuristic_fills_the_machine():
    # the paper's first layers (570x570 pixels, 64 channels): never 128 wide over 64 channels
    assert C3.pick_tile(570 * 570, 64) == (128, 64)
    # the bottleneck (28x28 pixels, 1024 channels): 128x128 would give 7 x 8 = 56 blocks for 132 SMs
    assert C3.pick_tile(28 * 28, 1024) == (64, 64)
    # 138x138 pixels, 256 channels: 128x128 is 298 blocks = 2 waves, the second 13 % full
    assert C3.pick_tile(138 * 138, 256) == (128, 64)
    # a wide layer whose 128x128 blocks fill whole waves keeps the big tile
    assert C3.pick_tile(128 * 264 * 4, 128) == (128, 128)
    # backward-weight of the first layer: a 9 x 64 product over 325k pixels is split
    assert C3.pick_splits(9, 64, 570 * 570, (64, 64)) == 264
    assert C3.pick_splits(9 * 1024, 1024, 784, (128, 128)) == 1


@pytest.mark.parametrize("v", family_variants("maxpool2x2_forward", "maxpool2x2_backward"))
@pytest.mark.parametrize("shape", [(1, 1, 2, 2), (2, 3, 6, 10), (3, 5, 14, 8)])
def test_maxpool2x2(engine, rng, shape, v):
    x = f32(rng, *shape)
    out, am = ops.maxpool2x2_forward(dev(x, engine), engine=engine, variant=v["maxpool2x2_forward"])
    rout, ram = R.maxpool2x2_forward(x.astype(np.float64))
    close(out, rout)
    assert np.array_equal(host(am), ram)
    dout = f32(rng, *rout.shape)
    dx = ops.maxpool2x2_backward(dev(dout, engine), am, engine=engine, variant=v["maxpool2x2_backward"])
    close(dx, R.maxpool2x2_backward(dout.astype(np.float64), ram))


@pytest.mark.parametrize("v", family_variants("upconv2x2_forward", "upconv2x2_backward_data", "upconv2x2_backward_weight"))
@pytest.mark.parametrize("shape", [(1, 2, 2, 3, 1), (2, 3, 5, 7, 5), (2, 9, 4, 3, 6)])  # N, C, H, W, K
def test_upconv2x2(engine, rng, shape, v):
    n, c, h, w, k = shape
    x, wt, b = f32(rng, n, c, h, w), f32(rng, c, k, 2, 2), f32(rng, k)
    x64 = x.astype(np.float64)
    close(ops.upconv2x2_forward(dev(x, engine), dev(wt, engine), dev(b, engine), engine=engine, variant=v["upconv2x2_forward"]),
          *sums(R.upconv2x2_forward, x, wt, b))
    dout = f32(rng, n, k, 2 * h, 2 * w)
    close(ops.upconv2x2_backward_data(dev(dout, engine), dev(wt, engine), engine=engine, variant=v["upconv2x2_backward_data"]),
          *sums(R.upconv2x2_backward_data, dout, wt))
    dw0, db0 = f32(rng, c, k, 2, 2), f32(rng, k)
    dw, db = ops.upconv2x2_backward_weight(dev(dout, engine), dev(x, engine), dw=dev(dw0, engine), db=dev(db0, engine), engine=engine,
                                           variant=v["upconv2x2_backward_weight"])
    gw, gb = R.upconv2x2_backward_weight(dout.astype(np.float64), x64)
    close_acc(dw, gw, dw0)
    close_acc(db, gb, db0)


@pytest.mark.parametrize("skip_shape,up_shape", [((1, 1, 4, 4), (1, 1, 4, 4)), ((2, 3, 9, 8), (2, 2, 5, 4)),
                                                 ((2, 4, 12, 12), (2, 4, 8, 8))])
@pytest.mark.parametrize("v", family_variants("crop_concat_forward", "crop_concat_backward"))
def test_crop_concat(engine, rng, skip_shape, up_shape, v):
    skip, up = f32(rng, *skip_shape), f32(rng, *up_shape)
    out = ops.crop_concat_forward(dev(skip, engine), dev(up, engine), engine=engine, variant=v["crop_concat_forward"])
    ref = R.crop_concat_forward(skip.astype(np.float64), up.astype(np.float64))
    assert np.array_equal(host(out), ref)  # pure data movement: exact
    dout = f32(rng, *ref.shape)
    ds, du = ops.crop_concat_backward(dev(dout, engine), skip_shape, engine=engine, variant=v["crop_concat_backward"])
    rds, rdu = R.crop_concat_backward(dout.astype(np.float64), skip_shape)
    assert np.array_equal(host(ds), rds) and np.array_equal(host(du), rdu)


@pytest.mark.parametrize("v", family_variants("softmax_xent", "softmax"))
@pytest.mark.parametrize("shape", [(1, 2, 1, 1), (2, 2, 7, 9), (3, 5, 6, 11)])
def test_softmax_xent(engine, rng, shape, v):
    n, k, h, w = shape
    logits = f32(rng, n, k, h, w, scale=4)
    labels = rng.integers(0, k, (n, h, w)).astype(np.int32)
    weights = rng.uniform(0.5, 11, (n, h, w)).astype(np.float32)
    loss, d = ops.softmax_xent(dev(logits, engine), dev(labels, engine), dev(weights, engine), engine=engine,
                               variant=v["softmax_xent"])
    rloss, rd = R.softmax_xent(logits.astype(np.float64), labels, weights.astype(np.float64))
    assert np.isfinite(loss) and abs(loss - rloss) <= TOL * abs(rloss)
    close(d, rd)
    close(ops.softmax(dev(logits, engine), engine=engine, variant=v["softmax"]), R.softmax(logits.astype(np.float64)))


@pytest.mark.parametrize("v", family_variants("softmax_xent"))
@pytest.mark.parametrize("margins", [(20, 40), (60, 80)])
def test_softmax_xent_confident_pixels(engine, rng, v, margins):
    """Label margins of 20..80 (loss per pixel 2e-9 .. 2e-35): p_label - 1 and log p_label must not
    round to 0 in fp32. The loss (a sum over one margin range, so the smallest margins do not hide the
    largest) and every dlogit (each on its own) within 1e-5 of the float64 reference."""
    n, k, h, w = 2, 2, 5, 7
    labels = rng.integers(0, k, (n, h, w)).astype(np.int32)
    margin = rng.uniform(*margins, (n, h, w))
    logits = np.where(np.arange(k)[None, :, None, None] == labels[:, None], margin[:, None], 0).astype(np.float32)
    logits += f32(rng, n, 1, h, w)  # the same shift for both classes: the margins stay
    weights = rng.uniform(0.5, 11, (n, h, w)).astype(np.float32)
    loss, d = ops.softmax_xent(dev(logits, engine), dev(labels, engine), dev(weights, engine), engine=engine,
                               variant=v["softmax_xent"])
    rloss, rd = R.softmax_xent(logits.astype(np.float64), labels, weights.astype(np.float64))
    assert rloss > 0 and np.isfinite(loss) and abs(loss - rloss) <= TOL * rloss, (loss, rloss)
    d = host(d).astype(np.float64)
    assert np.isfinite(d).all() and (np.abs(d - rd) <= TOL * np.abs(rd)).all(), np.abs(d / rd - 1).max()


def test_softmax_xent_rejects_bad_labels(engine, rng):
    logits = f32(rng, 1, 2, 3, 3)
    labels = np.zeros((1, 3, 3), np.int32)
    labels[0, 1, 2] = 2
    with pytest.raises(ValueError, match=r"softmax_xent: labels must lie in \[0, 2\), found 0..2"):
        ops.softmax_xent(dev(logits, engine), dev(labels, engine), dev(np.ones((1, 3, 3), np.float32), engine), engine=engine)


@pytest.mark.parametrize("v", family_variants("conv1x1_forward", "conv1x1_backward_data", "conv1x1_backward_weight"))
@pytest.mark.parametrize("shape", [(1, 2, 2, 3, 1), (2, 64, 5, 3, 2), (2, 7, 6, 6, 3)])  # N, C, H, W, K
def test_conv1x1(engine, rng, shape, v):
    n, c, h, w, k = shape
    x, wt, b = f32(rng, n, c, h, w), f32(rng, k, c, 1, 1), f32(rng, k)
    close(ops.conv1x1_forward(dev(x, engine), dev(wt, engine), dev(b, engine), engine=engine, variant=v["conv1x1_forward"]),
          *sums(R.conv1x1_forward, x, wt, b))
    dout = f32(rng, n, k, h, w)
    close(ops.conv1x1_backward_data(dev(dout, engine), dev(wt, engine), engine=engine, variant=v["conv1x1_backward_data"]),
          *sums(R.conv1x1_backward_data, dout, wt))
    dw, db = ops.conv1x1_backward_weight(dev(dout, engine), dev(x, engine), engine=engine, variant=v["conv1x1_backward_weight"])
    gw, gb = R.conv1x1_backward_weight(dout.astype(np.float64), x.astype(np.float64))
    # sums over N*H*W pixels (6 in the smallest shape) can cancel: bound the error by the summed magnitudes
    close(dw, gw, magnitude=R.conv1x1_backward_weight(np.abs(dout.astype(np.float64)), np.abs(x.astype(np.float64)))[0])
    close(db, gb, magnitude=np.abs(dout.astype(np.float64)).sum(axis=(0, 2, 3)))


@pytest.mark.parametrize("v", family_variants("dropout_forward", "dropout_backward"))
@pytest.mark.parametrize("p", [0.0, 0.5, 0.9])
def test_dropout_same_mask_on_every_engine(engine, rng, p, v):
    x = f32(rng, 3, 7, 11) + 5  # never 0, so a zero output means "dropped"
    seed = int(rng.integers(0, 2**63))

    def seed_for(op):  # the form the variant takes: an int, or a (1,) uint64 array on the engine
        return dev(np.array([seed], np.uint64), engine) if v[op] == SEED_IN_MEMORY else seed
    y = host(ops.dropout_forward(dev(x, engine), p=p, seed=seed_for("dropout_forward"), engine=engine,
                                 variant=v["dropout_forward"]))
    close(y, R.dropout_forward(x.astype(np.float64), p, seed))
    dout = f32(rng, 3, 7, 11) + 5
    dx = host(ops.dropout_backward(dev(dout, engine), p=p, seed=seed_for("dropout_backward"), engine=engine,
                                   variant=v["dropout_backward"]))
    assert np.array_equal(dx != 0, y != 0)
    close(dx, R.dropout_backward(dout.astype(np.float64), p, seed))


@pytest.mark.parametrize("v", family_variants("dropout_forward"))
def test_dropout_keeps_exactly_the_draws_at_or_above_p(engine, v):
    """p = (k + 0.4) / 2^24 between two draws: fp32 rounds it down to k / 2^24, so a kernel comparing
    with p in fp32 would keep draw k, which p drops; draw k + 1 is kept. Every engine, every variant."""
    seed, n = 99, 4000
    bits = R.dropout_bits(seed, n)
    i = int(np.argmax(bits >= 2 ** 23))  # a draw in [0.5, 1): fp32's spacing there is 2^-24
    k = int(bits[i])
    assert np.float32((k + 0.4) / 2 ** 24) == k / 2 ** 24  # the fp32 p that would keep draw k
    for p, kept in (((k + 0.4) / 2 ** 24, False), ((k - 0.4) / 2 ** 24, True), (k / 2 ** 24, True)):
        s = dev(np.array([seed], np.uint64), engine) if v["dropout_forward"] == SEED_IN_MEMORY else seed
        y = host(ops.dropout_forward(dev(np.full(n, 2.0, np.float32), engine), p=p, seed=s, engine=engine,
                                     variant=v["dropout_forward"]))
        assert (y[i] != 0) == kept, (p, k)
        assert np.array_equal(y != 0, bits >= R.dropout_threshold(p))


@pytest.mark.parametrize("v", family_variants("sgd_momentum_update"))
def test_sgd_momentum_update(engine, rng, v):
    p0, g, v0 = f32(rng, 1001), f32(rng, 1001), f32(rng, 1001)
    p, vel = dev(p0, engine), dev(v0, engine)
    for _ in range(3):
        ops.sgd_momentum_update(p, dev(g, engine), vel, lr=0.01, momentum=0.99, weight_decay=5e-4, engine=engine,
                                variant=v["sgd_momentum_update"])
    rp, rv = p0.astype(np.float64), v0.astype(np.float64)
    for _ in range(3):
        rp, rv = R.sgd_momentum(rp, g.astype(np.float64), rv, 0.01, 0.99, 5e-4)
    close(p, rp)
    close(vel, rv)


@pytest.mark.parametrize("va", family_variants("adam_update"))
@pytest.mark.parametrize("decoupled", [False, True], ids=["adam", "adamw"])
def test_adam_update(engine, rng, decoupled, va):
    # odd size (not a multiple of the block), moments from earlier steps, gradients of both signs and
    # of very different sizes: the sqrt(v) + eps denominator is exercised where it matters
    n = 1003
    p0, m0 = f32(rng, n), f32(rng, n, scale=0.1)
    v0 = np.abs(f32(rng, n, scale=0.01)) + np.float32(1e-6)
    grads = [f32(rng, n) * np.float32(10.0) ** rng.integers(-4, 2, n).astype(np.float32) for _ in range(3)]
    p, m, v = dev(p0, engine), dev(m0, engine), dev(v0, engine)
    rp, rm, rv = (a.astype(np.float64) for a in (p0, m0, v0))
    for t, g in enumerate(grads, start=5):
        ops.adam_update(p, dev(g, engine), m, v, step=t, lr=3e-3, weight_decay=0.01, decoupled=decoupled, engine=engine,
                        variant=va["adam_update"])
        rp, rm, rv = R.adam(rp, g.astype(np.float64), rm, rv, t, 3e-3, weight_decay=0.01, decoupled=decoupled)
    close(p, rp)
    close(m, rm)
    close(v, rv)


def test_adam_update_on_the_numpy_engine_stays_float32_in_place(rng):
    p0, g = f32(rng, 99), f32(rng, 99)
    p, m, v = p0.copy(), np.zeros(99, np.float32), np.zeros(99, np.float32)
    assert ops.adam_update(p, g, m, v, step=1, lr=1e-2, engine="numpy") is p
    assert p.dtype == m.dtype == v.dtype == np.float32
    close(p, R.adam(p0.astype(np.float64), g.astype(np.float64), np.zeros(99), np.zeros(99), 1, 1e-2)[0])


def test_adam_update_refuses_step_0_and_a_strided_moment():
    p = np.ones(8, np.float32)
    with pytest.raises(ValueError, match="step counts from 1"):
        ops.adam_update(p, p.copy(), np.zeros(8, np.float32), np.zeros(8, np.float32), step=0, lr=1e-3, engine="numpy")
    with pytest.raises(ValueError, match="m must be C-contiguous"):
        ops.adam_update(p, p.copy(), np.zeros(16, np.float32)[::2], np.zeros(8, np.float32), step=1, lr=1e-3, engine="numpy")


# ---- a chain of ops, forward and backward --------------------------------------------------------
def chain(x, p, labels, weights, engine):
    """conv+ReLU -> pool -> conv+ReLU -> upconv -> crop_concat -> conv+ReLU -> 1x1 -> softmax_xent,
    and the hand-written backward through all of it. Returns loss, the gradients and dz (the
    loss's gradient at the logits)."""
    if engine == "ref":
        conv, convbd, convbw = R.conv3x3_forward, R.conv3x3_backward_data, R.conv3x3_backward_weight
        pool, poolb = R.maxpool2x2_forward, R.maxpool2x2_backward
        up, upbd, upbw = R.upconv2x2_forward, R.upconv2x2_backward_data, R.upconv2x2_backward_weight
        cc, ccb = R.crop_concat_forward, R.crop_concat_backward
        head, headbd, headbw = R.conv1x1_forward, R.conv1x1_backward_data, R.conv1x1_backward_weight
        xent = R.softmax_xent
    else:
        e = dict(engine=engine)
        conv = lambda a, w, b, relu: ops.conv3x3_forward(a, w, b, relu, **e)
        convbd = lambda d, w, out: ops.conv3x3_backward_data(d, w, out, **e)
        convbw = lambda d, a, out: ops.conv3x3_backward_weight(d, a, out, **e)
        pool, poolb = (lambda a: ops.maxpool2x2_forward(a, **e)), (lambda d, am: ops.maxpool2x2_backward(d, am, **e))
        up = lambda a, w, b: ops.upconv2x2_forward(a, w, b, **e)
        upbd, upbw = (lambda d, w: ops.upconv2x2_backward_data(d, w, **e)), (lambda d, a: ops.upconv2x2_backward_weight(d, a, **e))
        cc, ccb = (lambda s, u: ops.crop_concat_forward(s, u, **e)), (lambda d, s: ops.crop_concat_backward(d, s, **e))
        head = lambda a, w, b: ops.conv1x1_forward(a, w, b, **e)
        headbd, headbw = (lambda d, w: ops.conv1x1_backward_data(d, w, **e)), (lambda d, a: ops.conv1x1_backward_weight(d, a, **e))
        xent = lambda z, l, w: ops.softmax_xent(z, l, w, **e)
    a1 = conv(x, p["w1"], p["b1"], True)                 # (N, 4, 18, 18)
    a2, am = pool(a1)                                     # (N, 4, 9, 9)  -> pools need even: 18
    a3 = conv(a2, p["w2"], p["b2"], True)                 # (N, 6, 7, 7)
    a4 = up(a3, p["wu"], p["bu"])                         # (N, 4, 14, 14)
    a5 = cc(a1, a4)                                       # (N, 8, 14, 14)
    a6 = conv(a5, p["w3"], p["b3"], True)                 # (N, 4, 12, 12)
    z = head(a6, p["wh"], p["bh"])                        # (N, 2, 12, 12)
    loss, dz = xent(z, labels, weights)
    g = {}
    g["wh"], g["bh"] = headbw(dz, a6)
    da6 = headbd(dz, p["wh"])
    g["w3"], g["b3"] = convbw(da6, a5, a6)
    da5 = convbd(da6, p["w3"], a6)
    da1_skip, da4 = ccb(da5, a1.shape)
    g["wu"], g["bu"] = upbw(da4, a3)
    da3 = upbd(da4, p["wu"])
    g["w2"], g["b2"] = convbw(da3, a2, a3)
    da2 = convbd(da3, p["w2"], a3)
    da1 = poolb(da2, am) + da1_skip
    g["w1"], g["b1"] = convbw(da1, x, a1)
    g["x"] = convbd(da1, p["w1"], a1)
    return loss, g, dz


def chain_problem(rng, n, margin=1e-6):
    """Parameters and input of `chain`, redrawn until no ReLU or max-pool of the float64 forward is
    decided by less than margin x its layer's largest value (conftest.near_relus): fp32 rounding may
    decide a closer one the other way and move a pixel's gradient (seed 1410: 1.6e-3 relative)."""
    shapes = {"w1": (4, 3, 3, 3), "b1": (4,), "w2": (6, 4, 3, 3), "b2": (6,), "wu": (6, 4, 2, 2), "bu": (4,),
              "w3": (4, 8, 3, 3), "b3": (4,), "wh": (2, 4, 1, 1), "bh": (2,)}
    for _ in range(50):
        p = {k: (rng.standard_normal(s) * (0.5 if k.startswith("w") else 0.1)).astype(np.float32) for k, s in shapes.items()}
        x = f32(rng, n, 3, 20, 20)
        q = {k: v.astype(np.float64) for k, v in p.items()}
        pre1 = R.conv3x3_forward(x.astype(np.float64), q["w1"], q["b1"], False)
        a1 = np.maximum(pre1, 0)
        pre3 = R.conv3x3_forward(R.maxpool2x2_forward(a1)[0], q["w2"], q["b2"], False)
        a4 = R.upconv2x2_forward(np.maximum(pre3, 0), q["wu"], q["bu"])
        pre6 = R.conv3x3_forward(R.crop_concat_forward(a1, a4), q["w3"], q["b3"], False)
        if near_relus(pre1, margin) + near_pools(a1, margin) + near_relus(pre3, margin) + near_relus(pre6, margin) == 0:
            return p, x
    raise AssertionError("50 problems in a row had a near-tied ReLU or max-pool")


def test_chain_matches_reference(engine, rng):
    n = 2
    p, x = chain_problem(rng, n)
    labels = rng.integers(0, 2, (n, 12, 12)).astype(np.int32)
    weights = rng.uniform(1, 5, (n, 12, 12)).astype(np.float32)
    rloss, rg, rdz = chain(x.astype(np.float64), {k: v.astype(np.float64) for k, v in p.items()}, labels,
                           weights.astype(np.float64), "ref")
    loss, g, _ = chain(dev(x, engine), {k: dev(v, engine) for k, v in p.items()}, dev(labels, engine),
                       dev(weights, engine), engine)
    assert abs(loss - rloss) <= TOL * abs(rloss)
    for k in rg:
        if k == "bh":  # sum over pixels of the 2-class softmax gradient: it cancels (seed 4215904433: 7e-5 relative)
            close(g[k], rg[k], magnitude=np.abs(rdz).sum(axis=(0, 2, 3)), tol=5e-5)
        else:
            close(g[k], rg[k], tol=5e-5)  # a longer chain of fp32 sums


# ---- the op layer's argument checks --------------------------------------------------------------
def test_argument_errors():
    x = np.ones((1, 2, 8, 8), np.float32)
    with pytest.raises(ValueError, match=r"conv3x3_forward: w must have shape \(K, C, 3, 3\) = \(\?, 2, 3, 3\), got \(4, 3, 3, 3\)"):
        ops.conv3x3_forward(x, np.ones((4, 3, 3, 3), np.float32), np.ones(4, np.float32), engine="numpy")
    with pytest.raises(TypeError, match=r"conv3x3_forward: x must be float32, got float16"):
        ops.conv3x3_forward(x.astype(np.float16), np.ones((4, 2, 3, 3), np.float32), np.ones(4, np.float32), engine="numpy")
    with pytest.raises(TypeError, match=r"conv3x3_forward: x must be float32, got float64"):  # kernels: float32 only
        ops.conv3x3_forward(x.astype(np.float64), np.ones((4, 2, 3, 3), np.float32), np.ones(4, np.float32), engine="emu")
    with pytest.raises(ValueError, match=r"b must have shape \(K,\) = \(4,\), got \(3,\)"):
        ops.conv3x3_forward(x, np.ones((4, 2, 3, 3), np.float32), np.ones(3, np.float32), engine="numpy")
    with pytest.raises(ValueError, match=r"at least 3x3"):
        ops.conv3x3_forward(np.ones((1, 2, 2, 8), np.float32), np.ones((4, 2, 3, 3), np.float32), np.ones(4, np.float32))
    with pytest.raises(ValueError, match=r"maxpool2x2_forward: x must have even.*got 7x8"):
        ops.maxpool2x2_forward(np.ones((1, 1, 7, 8), np.float32), engine="numpy")
    with pytest.raises(ValueError, match=r"no variant 7"):
        ops.conv3x3_forward(x, np.ones((4, 2, 3, 3), np.float32), np.ones(4, np.float32), engine="emu", variant=7)
    with pytest.raises(ValueError, match="unknown engine"):
        ops.softmax(x, engine="tpu")
    with pytest.raises(ValueError, match=r"crop_concat_forward: the up-sampled map \(9x9\) is larger"):
        ops.crop_concat_forward(x, np.ones((1, 2, 9, 9), np.float32), engine="numpy")
    with pytest.raises(ValueError, match=r"dropout_forward: p must lie in \[0, 1\)"):
        ops.dropout_forward(x, p=1.0, engine="numpy")
    with pytest.raises(ValueError, match=r"dropout_forward: p must lie in \[0, 1\), got '0.5'"):
        ops.dropout_forward(x, p="0.5", engine="numpy")
    for seed in (1.5, None, -1, 2 ** 64):  # never truncated or wrapped into another seed
        with pytest.raises(ValueError, match=r"dropout_forward: seed must be an integer in \[0, 2\^64\) or a \(1,\) uint64"):
            ops.dropout_forward(x, seed=seed, engine="numpy")
    assert np.array_equal(ops.dropout_forward(x, seed=np.int64(5), engine="numpy"), ops.dropout_forward(x, seed=5, engine="numpy"))


def test_non_contiguous_inputs_are_copied(rng):
    x = f32(rng, 1, 2, 9, 16)[:, :, :, ::2]  # a strided view
    w, b = f32(rng, 3, 2, 3, 3), f32(rng, 3)
    ref = R.conv3x3_forward(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64))
    close(ops.conv3x3_forward(x, w, b, engine="emu"), ref)


def test_numpy_engine_matches_reference(rng):
    x, w, b = f32(rng, 2, 3, 9, 7), f32(rng, 4, 3, 3, 3), f32(rng, 4)
    out = ops.conv3x3_forward(x, w, b, engine="numpy")
    assert out.dtype == np.float32
    close(out, R.conv3x3_forward(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64)))


# ---- paper-sized shapes, on a GPU only -----------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("c,hw,k", [(64, 570, 64), (512, 32, 1024)])
def test_conv3x3_paper_sizes_gpu(rng, c, hw, k):
    """Every variant (tf32 ones against the tf32-rounded reference) at the paper's largest and
    deepest shapes, where tiles, splits and 16-byte loads all take their production paths."""
    import cupy
    x, w, b = f32(rng, 1, c, hw, hw), f32(rng, k, c, 3, 3, scale=(2 / (9 * c)) ** 0.5), f32(rng, k)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    dx, dw_, db_ = cupy.asarray(x), cupy.asarray(w), cupy.asarray(b)
    ref = {}
    for v in ops.REGISTRY["conv3x3_forward"]:
        p = precision("conv3x3_forward", v)
        ref[p] = R.conv3x3_forward(x64, w64, b.astype(np.float64), True, p)
        close(ops.conv3x3_forward(dx, dw_, db_, engine="cuda", variant=v, precision=p), ref[p])
    dout = f32(rng, *ref["fp32"].shape)
    out = np.maximum(ref["fp32"], 0).astype(np.float32)
    for v in ops.REGISTRY["conv3x3_backward_data"]:
        p = precision("conv3x3_backward_data", v)
        close(ops.conv3x3_backward_data(cupy.asarray(dout), dw_, cupy.asarray(out), engine="cuda", variant=v, precision=p),
              R.conv3x3_backward_data(dout.astype(np.float64), w64, out, p))
    for v in ops.REGISTRY["conv3x3_backward_weight"]:
        p = precision("conv3x3_backward_weight", v)
        gw, gb = R.conv3x3_backward_weight(dout.astype(np.float64), x64, out, p)
        dw, db = ops.conv3x3_backward_weight(cupy.asarray(dout), dx, cupy.asarray(out), engine="cuda", variant=v,
                                             precision=p)
        close(dw, gw, tol=1e-4)  # sums over 323k pixels in fp32
        close(db, gb, tol=1e-4)


@pytest.mark.gpu
def test_other_ops_paper_sizes_gpu(rng):
    import cupy
    x = f32(rng, 1, 64, 568, 568)
    out, am = ops.maxpool2x2_forward(cupy.asarray(x), engine="cuda")
    rout, ram = R.maxpool2x2_forward(x)
    assert np.array_equal(out.get(), rout) and np.array_equal(am.get(), ram)
    a, wt, b = f32(rng, 1, 1024, 28, 28), f32(rng, 1024, 512, 2, 2, scale=0.05), f32(rng, 512)
    close(ops.upconv2x2_forward(cupy.asarray(a), cupy.asarray(wt), cupy.asarray(b), engine="cuda"),
          R.upconv2x2_forward(a.astype(np.float64), wt.astype(np.float64), b.astype(np.float64)))
    z = f32(rng, 1, 2, 388, 388, scale=3)
    lab = rng.integers(0, 2, (1, 388, 388)).astype(np.int32)
    wts = rng.uniform(1, 10, (1, 388, 388)).astype(np.float32)
    loss, d = ops.softmax_xent(cupy.asarray(z), cupy.asarray(lab), cupy.asarray(wts), engine="cuda")
    rloss, rd = R.softmax_xent(z.astype(np.float64), lab, wts.astype(np.float64))
    assert abs(loss - rloss) <= 1e-4 * rloss
    close(d, rd)


@pytest.mark.gpu
def test_conv3x3_backward_weight_is_deterministic_gpu(rng):
    """The paper's second layer splits its 323k-pixel reduction over ~53 blocks; the partial sums
    are added in a fixed order, so two runs give the same bits (atomics would not)."""
    import cupy
    dout, x = cupy.asarray(f32(rng, 1, 64, 568, 568)), cupy.asarray(f32(rng, 1, 64, 570, 570))
    for prec in ("fp32", "tf32"):
        a = ops.conv3x3_backward_weight(dout, x, engine="cuda", precision=prec)
        b = ops.conv3x3_backward_weight(dout, x, engine="cuda", precision=prec)
        assert all(bool((p == q).all()) for p, q in zip(a, b)), prec
