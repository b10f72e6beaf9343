"""Shared test setup. Markers: `gpu` tests need a usable CUDA GPU (skipped otherwise, run by
benchmarks/device_check.sh); `asan` tests build kernels under AddressSanitizer in a subprocess."""
import os

import numpy as np
import pytest

from unetcu import runtime

ORDERS = ("forward", "reverse", "random")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU through CuPy (skipped without one)")
    config.addinivalue_line("markers", "asan: builds emulated kernels under AddressSanitizer (subprocess)")


def pytest_collection_modifyitems(config, items):
    ok, why = runtime.gpu_status()
    if ok:
        return
    skip = pytest.mark.skip(reason=f"no usable GPU: {why}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=ORDERS)
def order(request):
    """Run the test once per emulator thread order; the random order gets a fresh seed each run
    (printed on failure through the test id's fixture value)."""
    from unetcu.emu import thread_order
    seed = int.from_bytes(os.urandom(4), "little") if request.param == "random" else 0
    with thread_order(request.param, seed):
        yield (request.param, seed)


@pytest.fixture
def rng():
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"rng seed {seed}")
    return np.random.default_rng(seed)


def rel_err(out, ref) -> float:
    """||out - ref|| / ||ref||, and inf if out holds any NaN or Inf (a NaN must never pass)."""
    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert out.shape == ref.shape, (out.shape, ref.shape)
    if not np.all(np.isfinite(out)):
        return float("inf")
    return float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-300))
