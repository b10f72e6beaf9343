"""The variant registry (unetcu.ops.REGISTRY): every record names kernels its file has, every op
kernel is registered, defaults and numbers follow the stated rules, and a variant added by one
record is dispatched, tested and compiled like the others."""
import numpy as np
import pytest

from unetcu import ops

from unetcu.engines import emu, runtime
from unetcu.ops import Variant, register


def _file_kernels(name):
    return set(emu.kernel_names((runtime.kernels_dir() / name).read_text()))


def test_every_registered_kernel_is_in_its_file():
    assert len(ops.REGISTRY) >= 20
    for op in ops.REGISTRY:
        for r in ops.variants(op):
            have = _file_kernels(r.file)
            missing = [k for k in [*r.kernel_names, *r.helpers] if k not in have]
            assert not missing, (op, r.number, missing)


def test_every_op_kernel_is_registered():
    """No kernel of an op file is left out of the registry (and so out of the tests, benchmarks and
    RESULTS.md); demo.cu is the teaching example, not an op."""
    owners = ops.kernel_owners()
    files = {r.file for op in ops.REGISTRY for r in ops.variants(op)}
    assert "demo.cu" not in files and len(files) >= 9
    orphans = sorted(f"{f}: {k}" for f in files for k in _file_kernels(f) if k not in owners)
    assert not orphans, orphans


def test_records_follow_the_rules():
    for op in ops.REGISTRY:
        recs = ops.variants(op)
        assert [r.number for r in recs] == sorted(ops.REGISTRY[op]) and all(r.op == op for r in recs)
        for p in ops.PRECISIONS:
            mine = ops.variants(op, p)
            if mine:  # the default of a precision: the record marked default, else its highest number
                marked = [r.number for r in mine if r.default]
                assert len(marked) <= 1 and ops.default_variant(op, p) == (marked or [mine[-1].number])[0]
        for r in recs:
            assert r.precision in ops.PRECISIONS and r.algorithm
            assert bool(r.tiles) == ("implicit GEMM" in r.algorithm) == (r.launch == "igemm"), (op, r.number)
            assert all(name.startswith(op.split("_")[0]) for name in r.kernel_names)


def test_numbers_line_up_across_directions_or_say_why():
    """Within one kernel file, variants of the same algorithm and precision share a number across
    directions and fused forms; a record whose number differs says why in its note."""
    by_kind = {}
    for op in ops.REGISTRY:
        for r in ops.variants(op):
            if r.tiles:
                by_kind.setdefault((r.file, r.precision), []).append(r)
    assert by_kind
    for kind, recs in by_kind.items():
        numbers = [r.number for r in recs]
        usual = max(set(numbers), key=numbers.count)
        odd = [(r.op, r.number) for r in recs if r.number != usual and not r.note]
        assert not odd, (kind, usual, odd)


def test_register_refuses_a_duplicate_and_a_bad_precision():
    with pytest.raises(ValueError, match="registered twice"):
        register(Variant("maxpool2x2_forward", 1, "maxpool2x2_forward_kernel1", "maxpool2x2.cu", "a copy"))
    with pytest.raises(ValueError, match="precision must be one of"):
        register(Variant("maxpool2x2_forward", 8, "maxpool2x2_forward_kernel1", "maxpool2x2.cu", "a copy", "fp16"))
    assert 8 not in ops.REGISTRY["maxpool2x2_forward"]


def test_a_variant_added_by_one_record_is_dispatched(rng):
    """What adding a variant takes: its kernel in the .cu file and one record. Here the record
    points at variant 1's kernel under a new number: the op launches it by number, it becomes the
    default (the highest), and the registry lists it for the tests and benchmarks."""
    op = "maxpool2x2_forward"
    before = ops.default_variant(op)
    register(Variant(op, 9, "maxpool2x2_forward_kernel1", "maxpool2x2.cu", "one thread per output (a copy)"))
    try:
        assert ops.default_variant(op) == 9 and ops.variants(op)[-1].number == 9
        x = rng.standard_normal((2, 3, 6, 8)).astype(np.float32)
        out9, am9 = ops.maxpool2x2_forward(x, engine="emu", variant=9)
        out1, am1 = ops.maxpool2x2_forward(x, engine="emu", variant=1)
        assert np.array_equal(out9, out1) and np.array_equal(am9, am1) and np.isfinite(out9).all()
    finally:
        del ops.REGISTRY[op][9]
    assert ops.default_variant(op) == before


def test_a_record_whose_launch_its_launcher_does_not_build_is_refused(rng):
    """A record names the grid it needs; a launcher never runs a kernel with another variant's grid."""
    op = "maxpool2x2_forward"
    register(Variant(op, 9, "maxpool2x2_forward_kernel1", "maxpool2x2.cu", "a copy", launch="warp_per_row"))
    try:
        x = rng.standard_normal((1, 2, 4, 4)).astype(np.float32)
        with pytest.raises(ValueError, match="wants launch 'warp_per_row'"):
            ops.maxpool2x2_forward(x, engine="emu", variant=9)
    finally:
        del ops.REGISTRY[op][9]


def test_registry_refusals():
    with pytest.raises(ValueError, match="no op 'nope'"):
        ops.default_variant("nope")
    with pytest.raises(ValueError, match="no variant 9"):
        ops.kernel_names("conv3x3_forward", 9)
    with pytest.raises(ValueError, match="precision must be one of"):
        ops.variants("conv3x3_forward", "fp16")
    x = np.ones((1, 1, 4, 4), np.float32)
    for bad in (True, 3.0, "3"):
        with pytest.raises(ValueError, match="no variant"):
            ops.conv3x3_forward(x, np.ones((1, 1, 3, 3), np.float32), np.ones(1, np.float32), engine="numpy", variant=bad)
    with pytest.raises(ValueError, match="no variant 7"):  # the numpy engine checks variant= too
        ops.maxpool2x2_forward(x, engine="numpy", variant=7)
    with pytest.raises(ValueError, match="already has a fp32 default"):
        register(Variant("dropout_forward", 5, "dropout_forward_kernel1", "dropout.cu", "a copy", default=True))
    assert 5 not in ops.REGISTRY["dropout_forward"]


def test_numpy_engine_refuses_mixed_float_types(rng):
    """float32 and float64 inputs of one op are refused, never rounded or widened silently."""
    from unetcu import UNet
    x, w, b = (rng.standard_normal(s).astype(np.float32) for s in ((1, 2, 5, 5), (3, 2, 3, 3), (3,)))
    for args in ((x, w, b.astype(np.float64)), (x.astype(np.float64), w, b)):
        with pytest.raises(TypeError, match="conv3x3_forward: the float inputs mix float32 and float64"):
            ops.conv3x3_forward(*args, engine="numpy")
    m = UNet(depth=2, base_channels=2, engine="numpy")
    with pytest.raises(TypeError, match="mix float32 and float64"):
        m.forward(rng.standard_normal((1, 1, 44, 44)))
    for bad in (None, np.float16, np.int32):
        with pytest.raises(ValueError, match="dtype must be float32, or float64 on engine numpy"):
            UNet(depth=2, base_channels=2, engine="numpy", dtype=bad)


def test_numpy_engine_keeps_float64_and_the_float64_model_is_a_unet(rng):
    """One reference path: the numpy engine computes in float64 when given float64, so the oracle
    is UNet(engine="numpy", dtype=np.float64); the kernels' engines stay float32-only."""
    from unetcu import UNet, reference as R
    x, w, b = (rng.standard_normal(s) for s in ((2, 3, 9, 7), (4, 3, 3, 3), (4,)))
    out = ops.conv3x3_forward(x, w, b, engine="numpy")
    assert out.dtype == np.float64 and np.array_equal(out, R.conv3x3_forward(x, w, b))
    m = UNet(depth=2, base_channels=2, engine="numpy", dtype=np.float64, dropout=0.0)
    assert all(p.dtype == np.float64 for p in m.params.values())
    xin = rng.standard_normal((1, 1, 44, 44))
    assert m.forward(xin).dtype == np.float64
    ref = UNet(depth=2, base_channels=2, engine="numpy", dropout=0.0).reference()
    assert ref.dtype == np.float64 and all(np.array_equal(ref.params[k], m.params[k]) for k in m.params)
    with pytest.raises(ValueError, match="needs engine numpy"):
        UNet(depth=2, base_channels=2, engine="emu", dtype=np.float64)


def test_layer_shapes_are_the_models():
    """UNet.layers: the one shape table (model, tests, benchmarks) agrees with the parameters and
    with the output size, and activation_bytes is its sum."""
    from unetcu import UNet
    from unetcu.model import activation_bytes, layer_shapes
    m = UNet(depth=3, base_channels=4, engine="numpy")
    layers = m.layers(92, batch=2)
    convs = {l["name"]: l for l in layers if l["op"] in ("conv3x3", "conv1x1", "upconv2x2")}
    for name, l in convs.items():
        w = m.params[f"{name}.weight"]
        assert (w.shape[1], w.shape[0]) == ((l["C"], l["K"]) if l["op"] != "upconv2x2" else (l["K"], l["C"])), name
    assert layers[-1]["H"] == m.output_size(92) and all(l["N"] == 2 for l in layers)
    assert layer_shapes(572)[0] == dict(op="conv3x3", name="down0.conv1", N=1, C=1, H=572, W=572, K=64)
    for tile, depth, base, batch in ((572, 5, 64, 1), (188, 4, 16, 3), (92, 3, 8, 2)):
        for training in (False, True):
            assert activation_bytes(tile, depth, base, batch=batch, training=training) == \
                _bytes_level_by_level(tile, depth, base, 2, 1, batch, training)


def _bytes_level_by_level(tile, depth, base, n_classes, in_channels, batch, training):
    """The feature maps counted level by level (an independent derivation of activation_bytes)."""
    total, s, sizes = in_channels * tile * tile, tile, []
    for level in range(depth):  # contracting: conv1, conv2, pool
        c = base << level
        total += c * ((s - 2) ** 2 + (s - 4) ** 2)
        sizes.append(s - 4)
        if level < depth - 1:
            s = (s - 4) // 2
            total += c * s * s
    u = sizes[-1]
    for level in range(depth - 2, -1, -1):  # expanding: up-conv, concat, conv1, conv2
        c = base << level
        total += c * (3 * (2 * u) ** 2 + (2 * u - 2) ** 2 + (2 * u - 4) ** 2)
        u = 2 * u - 4
    total += n_classes * u * u
    return 4 * batch * total * (2 if training else 1)
