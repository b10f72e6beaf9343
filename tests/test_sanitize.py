"""The sanitizer tools (unetcu sanitize): each planted bug of tests/cuda/sanitizer_bugs.cu is
reported with its .cu lines, in every thread order, and its correct twin is not."""
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from unetcu.engines import emu, runtime, sanitize
from unetcu.engines.emu import EmulatorError

HERE = Path(__file__).resolve().parent
BUGS = HERE / "cuda" / "sanitizer_bugs.cu"
i32 = np.int32
ORDERS = [("forward", 0), ("reverse", 0), ("random", 7), ("random", 12345)]


def line(tag: str) -> str:
    for n, text in enumerate(BUGS.read_text().splitlines(), 1):
        if f"BUG-{tag}" in text:
            return f"sanitizer_bugs.cu:{n}"
    raise KeyError(tag)


def build(monkeypatch, tool):
    monkeypatch.setenv(sanitize.ENV, tool)
    return runtime.compile(BUGS.read_text(), engine="emu", filename=str(BUGS))


@pytest.fixture
def race(monkeypatch):
    return build(monkeypatch, "racecheck")


@pytest.fixture
def init(monkeypatch):
    return build(monkeypatch, "initcheck")


def run(fn, *args, **kw):
    with sanitize.expected() as got:
        fn(*args, **kw)
    return "".join(got)


def gemm(mod, name, rng, M=37, N=29, K=45):
    A = rng.standard_normal((M, K)).astype(np.float32)
    B = rng.standard_normal((K, N)).astype(np.float32)
    C = np.full((M, N), np.nan, np.float32)
    out = run(mod.get_function(name), (2, 3), (16, 16), (A, B, C, i32(M), i32(N), i32(K)))
    return out, C, A @ B


# ---- racecheck -------------------------------------------------------------------------------------
@pytest.mark.parametrize("order,seed", ORDERS)
def test_racecheck_finds_a_missing_barrier_in_a_tiled_gemm_in_every_order(race, rng, order, seed):
    with emu.thread_order(order, seed):
        out, C, ref = gemm(race, "gemm_ok", rng)
        assert out == "" and np.allclose(C, ref, atol=1e-4)
        out, _, _ = gemm(race, "gemm_no_sync_after_load", rng)
        # the tile is read (line gemm-read) with no barrier after another thread wrote it (gemm-write-a)
        assert re.search(rf"Potential (RAW|WAR) hazard detected at __shared__ As\+0x[0-9a-f]+ in block \(\d+,\d+,\d+\) "
                         rf"of kernel gemm_no_sync_after_load", out), out
        assert f"{line('gemm-write-a')} in tiled_gemm (4 bytes)" in out and f"{line('gemm-read')} in tiled_gemm (4 bytes)" in out
        assert re.search(r"(Write|Read) Thread \(\d+,\d+,\d+\) at .*\n.*(Read|Write) Thread \(\d+,\d+,\d+\)", out)
        out, _, _ = gemm(race, "gemm_no_sync_after_use", rng)
        # the next tile's load overwrites what other threads still read: a WAR hazard
        assert re.search(rf"Potential WAR hazard detected at __shared__ As.*\n.*Read Thread .* at .*{line('gemm-read')}.*\n"
                         rf".*Write Thread .* at .*{line('gemm-write-a')}", out), out


@pytest.mark.parametrize("order,seed", ORDERS)
def test_racecheck_finds_a_warp_reduction_without_syncwarp(race, rng, order, seed):
    x = rng.standard_normal(128).astype(np.float32)
    y = np.zeros(2, np.float32)
    with emu.thread_order(order, seed):
        assert run(race.get_function("warp_sum_ok"), (2,), (64,), (x, y)) == ""
        assert np.allclose(y, x.reshape(2, 64).sum(1), atol=1e-4)
        out = run(race.get_function("warp_sum_no_syncwarp"), (2,), (64,), (x, y))
    assert "of kernel warp_sum_no_syncwarp" in out and "__shared__ s+0x" in out
    assert line("warp-read") in out and line("warp-write") in out
    assert "Both threads are in one warp" in out and "__syncwarp" in out


def test_racecheck_global_memory_and_atomics(race, rng):
    x = rng.standard_normal(64).astype(np.float32)
    y = np.zeros(1, np.float32)
    out = run(race.get_function("global_sum_plain"), (1,), (64,), (x, y, i32(64)))
    assert re.search(rf"Potential (RAW|WAW) hazard detected at __global__ y\+0x0 .*\n.* at .*{line('global-race')}", out), out
    y[:] = 0
    assert run(race.get_function("global_sum_atomic"), (1,), (64,), (x, y, i32(64))) == ""
    assert abs(y[0] - x.sum()) < 1e-4


# ---- initcheck -------------------------------------------------------------------------------------
@pytest.mark.parametrize("order,seed", ORDERS[:3])
def test_initcheck_unwritten_shared_memory(init, order, seed):
    y = np.zeros(64, np.float32)
    with emu.thread_order(order, seed):
        assert run(init.get_function("read_unwritten_shared"), (1,), (64,), (y, i32(64)), shared_mem=256) == ""
        out = run(init.get_function("read_unwritten_shared"), (1,), (64,), (y, i32(40)), shared_mem=256)
        assert re.search(rf"Uninitialized __shared__ memory read of size 4 bytes\n.*at .*{line('uninit-shared')} in "
                         r"read_unwritten_shared\n.*by thread \((39|[45]\d|6[0-2]),0,0\) in block \(0,0,0\)", out), out  # 39..62 read unwritten slots
        out = run(init.get_function("read_unwritten_static_shared"), (3,), (64,), (y,))
        assert f"{line('uninit-static')} in read_unwritten_static_shared" in out
        assert re.search(r"Address table\+0x[0-9a-f]*[4c] \(96 such reads in this launch\)", out), out  # odd slots, 3 blocks


def test_initcheck_uninitialised_device_buffer(init):
    n = 100
    x = np.ones(n, np.float32)
    y = np.zeros(n, np.float32)
    scratch = sanitize.track(np.empty(n, np.float32))  # what ops' output buffers get
    out = run(init.get_function("add_scratch"), (1,), (128,), (x, scratch, y, i32(n)))
    assert re.search(rf"Uninitialized __global__ memory read of size 4 bytes\n.*{line('uninit-global')} in add_scratch\n"
                     r".*by thread \(0,0,0\) in block \(0,0,0\) of kernel add_scratch\n.*Address scratch\+0x0", out), out
    scratch = sanitize.track(np.empty(n, np.float32))
    assert run(init.get_function("fill_then_add"), (1,), (128,), (x, scratch, y, i32(n))) == ""
    # written by a kernel, it stays initialised for the next launch
    assert run(init.get_function("add_scratch"), (1,), (128,), (x, scratch, y, i32(n))) == ""
    # filled by the host
    sanitize.untrack(scratch)
    assert run(init.get_function("add_scratch"), (1,), (128,), (x, scratch, y, i32(n))) == ""


# ---- synccheck -------------------------------------------------------------------------------------
def test_synccheck_reports_in_compute_sanitizer_shape(monkeypatch):
    mod = build(monkeypatch, "synccheck")
    y = np.zeros(64, np.float32)
    with sanitize.expected() as got, pytest.raises(EmulatorError, match="exited"):
        mod.get_function("syncwarp_exited_lanes")((1,), (32,), (y,))
    assert re.search(rf"Barrier error detected. Invalid arguments: the mask names exited lanes\n.*at .*{line('syncwarp-exited')} "
                     r"in syncwarp_exited_lanes\n.*by thread \(\d+,0,0\) in block \(0,0,0\)", got[0]), got
    with sanitize.expected() as got, pytest.raises(EmulatorError, match="divergent __syncthreads"):
        mod.get_function("barrier_in_divergent_warp")((1,), (64,), (y,))
    assert "Barrier error detected. Divergent thread(s) in block" in got[0] and line("divergent-warp") in got[0]


# ---- shifts the GPU clamps ------------------------------------------------------------------------
SHIFTS = HERE / "cuda" / "shifts.cu"


@pytest.mark.parametrize("tool", ["synccheck", "racecheck", "initcheck"])
def test_out_of_range_shift_is_a_finding(monkeypatch, capfd, tool):
    # simpleAtomicIntrinsics' atomicOr(&x, 1 << tid): the kernel runs as on the GPU (bits past 31
    # set nothing) and the tool reports the shift; a plain run only warns (tests/test_emulator.py)
    monkeypatch.setenv(sanitize.ENV, tool)
    mod = runtime.compile(SHIFTS.read_text(), engine="emu", filename=str(SHIFTS))
    at = next(n for n, text in enumerate(SHIFTS.read_text().splitlines(), 1) if "atomicOr" in text)
    for _ in range(2):  # a finding in every launch, not once per process
        word = np.zeros(1, np.int32)
        with sanitize.expected() as got:
            mod.get_function("or_bits")((2,), (64,), (word,))
        assert word[0] == -1
        assert len(got) == 1 and re.search(rf"Undefined shift: << by \d+ of a 32-bit 'int': the count is not below the width\n"
                                           rf".*at .*shifts.cu:{at} in or_bits\n.*by thread \(\d+,0,0\) in block \(\d+,0,0\) "
                                           r"\(96 such shifts at this line in this launch\)", got[0]), got
    assert "unetcu emulator: warning" not in capfd.readouterr().err


# ---- memcheck and the front end ---------------------------------------------------------------------
def front_end(tmp_path, tool, body):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(f"""
        import numpy as np
        from unetcu.engines import runtime
        from unetcu.engines.emu import aligned
        m = runtime.compile(open({str(BUGS)!r}).read(), engine="emu", filename={str(BUGS)!r})
    """) + textwrap.dedent(body))
    env = dict(os.environ, UNETCU_CACHE_DIR=os.environ.get("UNETCU_CACHE_DIR", str(tmp_path / "cache")))
    env.pop(sanitize.ENV, None)
    return subprocess.run([sys.executable, "-m", "unetcu.cli", "sanitize", "--tool", tool, "--", sys.executable, str(script)],
                          capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.asan
def test_memcheck_misaligned_float4(tmp_path):
    r = front_end(tmp_path, "memcheck", """
        x = aligned(np.arange(64, dtype=np.float32)); y = np.zeros(8, np.float32)
        m.get_function("load_float4")((1,), (8,), (x, y, np.int32(4)))  # aligned: fine
        print("ALIGNED OK", flush=True)
        m.get_function("load_float4")((1,), (8,), (x, y, np.int32(1)))
    """)
    assert "ALIGNED OK" in r.stdout, r.stderr[-3000:]
    assert r.returncode == 1
    assert re.search(rf"Invalid memory access: misaligned address\n.*at .*{line('misaligned')} in load_float4", r.stderr), r.stderr[-3000:]
    assert "needs 16-byte alignment" in r.stderr and "ERROR SUMMARY: 1 error" in r.stderr


@pytest.mark.asan
def test_memcheck_static_shared_overflow(tmp_path):
    r = front_end(tmp_path, "memcheck", """
        y = np.zeros(33, np.float32)
        m.get_function("static_shared_overflow")((1,), (33,), (y,))
        print("NOT CAUGHT")
    """)
    assert r.returncode != 0 and "NOT CAUGHT" not in r.stdout
    assert re.search(rf"Invalid __shared__ or __device__ write of size 4 bytes\n.*at .*{line('static-oob')}\n"
                     r".*by thread \(32,0,0\) in block \(0,0,0\) of kernel static_shared_overflow", r.stderr), r.stderr[-3000:]
    assert "global-buffer-overflow" in r.stderr and "ERROR SUMMARY: 1 error" in r.stderr


def test_front_end_exit_status(tmp_path):
    racy = """
        x = np.ones(64, np.float32); y = np.zeros(1, np.float32)
        m.get_function("global_sum_plain")((1,), (64,), (x, y, np.int32(64)))
        print("RAN")
    """
    r = front_end(tmp_path, "racecheck", racy)
    assert r.returncode == 1 and "RAN" in r.stdout, r.stderr[-3000:]
    assert r.stderr.startswith("========= UNETCU-SANITIZER (racecheck")
    assert "ERROR SUMMARY: 2 errors" in r.stderr  # RAW and WAW on y[0]
    r = front_end(tmp_path, "racecheck", racy.replace("global_sum_plain", "global_sum_atomic"))
    assert r.returncode == 0 and "ERROR SUMMARY: 0 errors" in r.stderr, r.stderr[-3000:]


def test_front_end_names_a_missing_command_in_one_line():
    """Nothing ran under the tool, so no banner and no ERROR SUMMARY: one line, exit 127."""
    r = subprocess.run([sys.executable, "-m", "unetcu.cli", "sanitize", "--tool", "racecheck", "--", "no_such_command_xyz"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 127 and r.stderr.strip() == ("unetcu sanitize: cannot run 'no_such_command_xyz': "
                                                        "not found or not executable"), r.stderr


def test_sanitizer_builds_are_cached_apart(monkeypatch, tmp_path):
    monkeypatch.setenv("UNETCU_CACHE_DIR", str(tmp_path))
    src = 'extern "C" __global__ void k(float* y) { y[threadIdx.x] = 1.0f; }'
    for tool in ("racecheck", "initcheck", "synccheck"):
        monkeypatch.setenv(sanitize.ENV, tool)
        runtime.compile(src, engine="emu", filename="k.cu")
    names = sorted(p.name.rsplit("-", 1)[-1] for p in (tmp_path / "emu").glob("k-*.so"))
    assert len(names) == 3 and "init.so" in names and "race.so" in names


def test_unknown_tool_is_refused(monkeypatch):
    monkeypatch.setenv(sanitize.ENV, "leakcheck")
    with pytest.raises(ValueError, match="UNETCU_SANITIZE='leakcheck': choose one of memcheck, racecheck"):
        runtime.compile('extern "C" __global__ void k(float* y) { y[0] = 1.0f; }', engine="emu", filename="k.cu")
