"""Shared test setup. Markers: `gpu` tests need a usable CUDA GPU (skipped otherwise, run by
benchmarks/device_check.sh); `asan` tests build kernels under AddressSanitizer in a subprocess."""
import os

import numpy as np
import pytest

from unetcu.engines import runtime, sanitize
from unetcu.engines.sanitize import pytest_addoption  # noqa: F401  (--sanitize=TOOL)

ORDERS = ("forward", "reverse", "random")


def pytest_configure(config):
    sanitize.configure(config)  # --sanitize=TOOL
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


@pytest.fixture(autouse=True)
def _sanitizer_hazards():
    """Under a sanitizer tool, a test during which a hazard was reported fails."""
    yield from sanitize.hazard_check()


@pytest.fixture(params=ORDERS)
def order(request):
    """Run the test once per emulator thread order; the random order gets a fresh seed each run
    (printed on failure through the test id's fixture value)."""
    from unetcu.engines.emu import thread_order
    seed = int.from_bytes(os.urandom(4), "little") if request.param == "random" else 0
    with thread_order(request.param, seed):
        yield (request.param, seed)


@pytest.fixture
def rng():
    """A fresh seed each run, printed with a failure; UNETCU_TEST_SEED=N repeats that draw."""
    seed = int(os.environ.get("UNETCU_TEST_SEED") or int.from_bytes(os.urandom(4), "little"))
    print(f"rng seed {seed} (UNETCU_TEST_SEED={seed} repeats it)")
    return np.random.default_rng(seed)


# rel_err(out, ref): ||out - ref|| / ||ref||, inf for any NaN/Inf; the tests import it from here
from unetcu.reference import rel_err  # noqa: E402,F401


# ---- decisions an fp32 result may take the other way -----------------------------------------------
# A ReLU whose pre-activation is near 0, or a 2x2 max-pool window whose top two values are near-equal,
# may be decided differently in fp32 than in the float64 reference (rounding ~1e-7 relative), or
# inside a finite difference's +-eps: one pixel's gradient then moves elsewhere, a large difference
# that is no kernel error. Tests that compare across such decisions draw problems without them.
def near_relus(pre, margin) -> int:
    """How many pre-activations lie within margin x the layer's largest |value| of 0."""
    return int((np.abs(pre) < margin * np.abs(pre).max()).sum())


def near_pools(a, margin) -> int:
    """How many 2x2 windows of a (N, C, H, W; H, W even) with a positive maximum have their top two
    values within margin x a's largest |value| (windows of ReLU zeros tie exactly, on every engine,
    and get no gradient)."""
    n, c, h, w = a.shape
    win = np.sort(a.reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(-1, 4), axis=1)
    return int(((win[:, 3] - win[:, 2] < margin * np.abs(a).max()) & (win[:, 3] > 0)).sum())
