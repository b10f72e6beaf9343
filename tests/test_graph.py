"""The pieces a captured CUDA-graph step relies on, on the CPU (emulator): the dropout seed read
from device memory, the loss and bad-label flag left on the device, clipping without a read-back;
and, on a GPU, the captured step against the eager one."""
import numpy as np
import pytest

from conftest import rel_err
from unetcu import UNet, ops
from unetcu.optim import Optimizer, clip_gradients
from unetcu.run import Run, TrainConfig
from unetcu.train import train


@pytest.mark.parametrize("engine", ["emu", "numpy"])
def test_dropout_seed_from_memory_draws_the_same_mask(engine, rng):
    x = rng.standard_normal((2, 3, 5, 7)).astype(np.float32)
    seed = int(rng.integers(2**63))
    a = ops.dropout_forward(x, 0.5, seed, engine=engine)
    b = ops.dropout_forward(x, 0.5, np.array([seed], np.uint64), engine=engine)
    assert np.array_equal(a, b) and 0 < (a == 0).mean() < 1
    d = rng.standard_normal(x.shape).astype(np.float32)
    assert np.array_equal(ops.dropout_backward(d, 0.5, seed, engine=engine),
                          ops.dropout_backward(d, 0.5, np.array([seed], np.uint64), engine=engine))
    with pytest.raises(ValueError, match="takes the seed"):
        ops.dropout_forward(x, 0.5, seed, engine="emu", variant=2)


@pytest.mark.parametrize("engine", ["emu", "numpy"])
def test_softmax_xent_without_sync(engine, rng):
    z = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    lab = rng.integers(0, 3, (2, 4, 5)).astype(np.int32)
    w = rng.uniform(1, 5, (2, 4, 5)).astype(np.float32)
    loss, d = ops.softmax_xent(z, lab, w, engine=engine)
    (dloss, bad), d2 = ops.softmax_xent(z, lab, w, engine=engine, sync=False)
    assert dloss.shape == (1,) and abs(float(dloss[0]) - loss) <= 1e-6 * loss and int(bad[0]) == 0
    assert np.array_equal(d, d2)
    lab[1, 2, 3] = 7
    (_, bad), _ = ops.softmax_xent(z, lab, w, engine=engine, sync=False)
    assert int(bad[0]) != 0


def test_clipping_on_the_device_matches(rng):
    for max_norm in (0.5, 1e6):  # clipped, and left alone
        g1 = {k: rng.standard_normal((3, 4)).astype(np.float32) for k in "ab"}
        g2 = {k: v.copy() for k, v in g1.items()}
        n1 = clip_gradients(g1, max_norm)
        n2 = clip_gradients(g2, max_norm, sync=False)
        assert n2.shape == (1,) and abs(float(n2[0]) - n1) <= 1e-12 * n1
        for k in g1:
            assert np.array_equal(g1[k], g2[k])


def test_model_step_without_sync_matches(rng):
    m = UNet(depth=2, base_channels=3, dropout=0.5, engine="emu", seed=2)
    x = rng.standard_normal((1, 1, 28, 28)).astype(np.float32)
    o = m.output_size(28)
    lab = rng.integers(0, 2, (1, o, o)).astype(np.int32)
    w = rng.uniform(1, 3, (1, o, o)).astype(np.float32)
    loss, g = m.loss_and_grads(x, lab, w, dropout_seed=123)
    (dloss, bad), g2 = m.loss_and_grads(x, lab, w, dropout_seed=np.array([123], np.uint64), sync=False)
    assert abs(float(dloss[0]) - loss) <= 1e-6 * loss and int(bad[0]) == 0
    for k in g:
        assert rel_err(g2[k], g[k]) < 1e-6, k


def test_cuda_graph_needs_the_cuda_engine(tmp_path):
    from unetcu.data import synthetic_dataset
    m = UNet(depth=2, base_channels=2, engine="numpy")
    with pytest.raises(ValueError, match="--cuda-graph needs the cuda engine"):
        train(Run.of(m, synthetic_dataset(1, (64, 64), seed=0), [], TrainConfig(steps=1, tile=44, out=str(tmp_path),
                                                                                 cuda_graph=True)),
              progress=False, log=lambda *a: None)


@pytest.mark.gpu
def test_graph_step_matches_the_eager_step(rng):
    import cupy
    from unetcu.graph import GraphStep
    args = dict(depth=3, base_channels=8, dropout=0.5, engine="cuda", seed=1)
    eager, graphed = UNet(**args), UNet(**args)
    ve = {k: cupy.zeros_like(v) for k, v in eager.params.items()}
    step = GraphStep(graphed, Optimizer("sgd", graphed.params, "cuda", cupy, momentum=0.99), lr=1e-3, clip=1.0)
    o = eager.output_size(92)
    for i in range(4):  # the first call captures, the rest replay
        x = cupy.asarray(rng.standard_normal((1, 1, 92, 92)).astype(np.float32))
        lab = cupy.asarray(rng.integers(0, 2, (1, o, o)).astype(np.int32))
        w = cupy.asarray(rng.uniform(1, 3, (1, o, o)).astype(np.float32))
        loss, grads = eager.loss_and_grads(x, lab, w, dropout_seed=100 + i)
        clip_gradients(grads, 1.0, cupy)
        for k, p in eager.params.items():
            ops.sgd_momentum_update(p, grads[k], ve[k], 1e-3, 0.99, engine="cuda")
        gloss, bad = step(x, lab, w, 100 + i)
        assert bad == 0 and abs(gloss - loss) <= 1e-4 * abs(loss), (i, gloss, loss)
        if i == 1:
            held = (step.pool.total_bytes(), step.pool.used_bytes())
    assert (step.pool.total_bytes(), step.pool.used_bytes()) == held  # replays allocate nothing
    for k in eager.params:  # the same kernels in the same order: equal (a tolerance, not bits, to be safe)
        assert rel_err(graphed.params[k].get(), eager.params[k].get()) < 1e-6, k
