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
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"rng seed {seed}")
    return np.random.default_rng(seed)


# rel_err(out, ref): ||out - ref|| / ||ref||, inf for any NaN/Inf; the tests import it from here
from unetcu.reference import rel_err  # noqa: E402,F401
