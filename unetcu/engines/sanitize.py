"""compute-sanitizer's four tools on the CPU emulator: memcheck, racecheck, initcheck, synccheck.

    unetcu sanitize --tool racecheck -- python my_test.py     # or UNETCU_SANITIZE=racecheck
    python -m pytest --sanitize=initcheck tests/test_ops.py

The tool is chosen by the environment variable UNETCU_SANITIZE (the front end sets it, and preloads
libasan for memcheck). Every emulator build of the process is then made for that tool (cached
apart, keyed by its flags):

  memcheck   AddressSanitizer (out-of-bounds and use-after-free of global, shared and local memory)
             plus UBSan's alignment check (a float4 access at an address not 16-byte aligned).
             The first error abandons the process, as ASan does.
  racecheck  g++'s ThreadSanitizer instrumentation with the emulator's own handlers
             (kernels/emu/emu_sanitize.h): two threads of a block touching the same shared or
             global byte, one writing, with no __syncthreads between them (for two lanes of one
             warp: no __syncwarp or other warp collective of both). Reported and the launch runs on.
  initcheck  the same instrumentation: a read of shared memory no thread of the block wrote, or of
             a tracked device buffer (an op's output buffer, see track()) the host never filled
             and no kernel wrote.
  synccheck  the emulator's barrier and warp-collective checks (always on), reported in the same
             shape.

Each hazard is printed to stderr in compute-sanitizer's shape (lines starting `=========`), kept
in HAZARDS, and appended to the file named by UNETCU_SANITIZE_LOG; the front end exits 1 when that
file is not empty. Errors that abandon a launch (synccheck, memcheck's alignment check) still raise
unetcu.engines.emu.EmulatorError.

The emulator hears of the tool through its hook (unetcu.engines.emu.Tool): _Sanitizer below,
registered when this module is imported. It also reads UNETCU_EMU_SANITIZE=address (`unetcu asan`):
the same ASan build with no tool's reports.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import weakref

import numpy as np

from . import emu

TOOLS = ("memcheck", "racecheck", "initcheck", "synccheck")
ENV = "UNETCU_SANITIZE"
LOG_ENV = "UNETCU_SANITIZE_LOG"
PREFIX = "========= "
# build mode per tool: what the emulator builds for it (None: the normal build)
BUILD = {"memcheck": "address", "racecheck": "racecheck", "initcheck": "initcheck", "synccheck": None}

HAZARDS: list[str] = []          # reports of this process not inside expected()
_expect_stack: list[list[str]] = []
_lock = threading.Lock()


def tool() -> str | None:
    """The tool named by UNETCU_SANITIZE, or None. An unknown name is a ValueError."""
    t = os.environ.get(ENV, "").strip() or None
    if t is not None and t not in TOOLS:
        raise ValueError(f"{ENV}={t!r}: choose one of {', '.join(TOOLS)}")
    return t


# ---- tracked device allocations (initcheck) -------------------------------------------------------
_tracked: dict[int, tuple[int, np.ndarray]] = {}  # data address -> (nbytes, written-bytes shadow)


def track(a: np.ndarray) -> np.ndarray:
    """Mark a freshly allocated device buffer as uninitialised for initcheck (a no-op under other
    tools): a kernel that reads a byte of it before a kernel wrote it is reported. Returns `a`.
    The host writing into it with NumPy is not seen: call untrack() after such a write."""
    if tool() != "initcheck" or a.nbytes == 0:
        return a
    addr = a.ctypes.data
    _tracked[addr] = (a.nbytes, np.zeros(a.nbytes, np.uint8))
    weakref.finalize(a, _tracked.pop, addr, None)
    return a


def untrack(a: np.ndarray) -> None:
    """The host has filled `a`: its bytes count as initialised."""
    _tracked.pop(a.ctypes.data, None)


def launch_ranges(arrays, names=None) -> tuple[list[int], list[str]]:
    """[lo, hi, init shadow address or 0] per pointer argument, for emu_san_begin: the tracked
    allocation that holds the argument if there is one (so its shadow carries over launches);
    and the names of the ranges (the parameters'), for the reports."""
    out, seen, labels = [], set(), []
    for k, a in enumerate(arrays):
        lo, hi = a.ctypes.data, a.ctypes.data + a.nbytes
        shadow = 0
        for base, (n, sh) in _tracked.items():
            if base <= lo and hi <= base + n:
                lo, hi, shadow = base, base + n, sh.ctypes.data
                break
        if (lo, hi) not in seen and hi > lo:
            seen.add((lo, hi))
            out += [lo, hi, shadow]
            labels.append(names[k] if names and names[k] else f"argument {k}")
    return out, labels


# ---- reports ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def expected():
    """Collect the hazards reported inside into the yielded list instead of HAZARDS (for tests of
    planted bugs); they are still printed, but not logged for the front end's exit status."""
    got: list[str] = []
    _expect_stack.append(got)
    try:
        yield got
    finally:
        _expect_stack.remove(got)


def emit(text: str, raised: bool = False) -> None:
    """Print one hazard report and count it (in the innermost expected(), else the log and, unless
    it comes with an EmulatorError that the caller sees anyway, HAZARDS)."""
    lines = "".join(PREFIX + line + "\n" for line in text.rstrip("\n").split("\n"))
    with _lock:
        sys.stderr.write(lines)
        sys.stderr.flush()
        if _expect_stack:
            _expect_stack[-1].append(lines)
            return
        if not raised:
            HAZARDS.append(lines)
        log = os.environ.get(LOG_ENV)
        if log:
            with open(log, "a") as f:
                f.write(lines)


_sites: dict[tuple[str, int], str] = {}
_EMU_DIR = os.path.join("kernels", "emu") + os.sep


def symbolize(so: str, offsets) -> dict[int, str]:
    """{offset: "file:line in function"} for code offsets of an emulator build: the innermost
    inlined frame outside the emulator's own headers (the .cu line), through addr2line."""
    want = sorted({o for o in offsets if (so, o) not in _sites})
    if want:
        r = subprocess.run(["addr2line", "-e", so, "-a", "-f", "-i", "-C", *[hex(o) for o in want]],
                           capture_output=True, text=True)
        groups, cur = [], None
        for line in r.stdout.splitlines():
            if re.fullmatch(r"0x[0-9a-f]+", line.strip()):
                cur = []
                groups.append(cur)
            elif cur is not None:
                cur.append(line.strip())
        for o, g in zip(want, groups):
            frames = [(g[i], g[i + 1]) for i in range(0, len(g) - 1, 2)]  # (function, file:line), innermost first
            pick = next((f for f in frames if _EMU_DIR not in f[1] and "/emu/" not in f[1]), frames[0] if frames else None)
            if pick is None:
                _sites[(so, o)] = f"{os.path.basename(so)}+{o:#x}"
            else:
                fn, loc = pick
                loc = re.sub(r" \(discriminator \d+\)$", "", loc)
                _sites[(so, o)] = f"{loc} in {fn.split('(')[0]}"
    return {o: _sites[(so, o)] for o in offsets}


def report_launch(kernel: str, so: str, text: str, labels=()) -> None:
    """Turn emu_san_take()'s lines (see emu_sanitize.h) into compute-sanitizer-shaped reports."""
    rows = [line.split("|") for line in text.splitlines() if line]
    offs = []
    for r in rows:
        if r[0] != "DROPPED":
            offs += [int(r[7].split(",")[0]), int(r[8].split(",")[0])]
    where = symbolize(so, offs)
    for r in rows:
        if r[0] == "DROPPED":
            emit(f"Warning: {r[1]} more hazards of kernel {kernel} not shown (64 distinct ones per launch)")
            continue
        kind, space, name, offset, block, t1, t2, a1, a2, same_warp, count = r
        s1, z1 = (int(x) for x in a1.split(","))
        s2, z2 = (int(x) for x in a2.split(","))
        mem = f"__{space}__"
        if space == "shared":
            var = f"{name[:-2]}+{int(offset):#x}"  # name ends in the range index -1
        else:
            i = int(name)
            var = f"{labels[i] if i < len(labels) else 'argument'}+{int(offset):#x}"
        if kind == "UNINIT":
            emit(f"Uninitialized {mem} memory read of size {z2} bytes\n"
                 f"    at {where[s2]}\n"
                 f"    by thread ({t2}) in block ({block}) of kernel {kernel}\n"
                 f"    Address {var} ({int(count)} such read{'s' if int(count) > 1 else ''} in this launch)")
            continue
        first, second = {"RAW": ("Write", "Read"), "WAR": ("Read", "Write"), "WAW": ("Write", "Write")}[kind]
        text = (f"Error: Potential {kind} hazard detected at {mem} {var} in block ({block}) of kernel {kernel} :\n"
                f"    {first} Thread ({t1}) at {where[s1]} ({z1} bytes)\n"
                f"    {second} Thread ({t2}) at {where[s2]} ({z2} bytes)\n")
        if same_warp == "1":
            text += ("    Both threads are in one warp: without __syncwarp (or another warp collective of both) "
                     "between the accesses they race (independent thread scheduling since Volta)\n")
        text += f"    {int(count)} hazard{'s' if int(count) > 1 else ''} between these two lines in this launch"
        emit(text)


_SYNC_KINDS = [
    (r"^divergent __syncthreads", "Barrier error detected. Divergent thread(s) in block"),
    (r"warp-collective deadlock|lanes of warp \d+ disagree", "Barrier error detected. Divergent thread(s) in warp"),
    (r"has exited: a warp collective", "Barrier error detected. Invalid arguments: the mask names exited lanes"),
    (r"does not exist|mask 0x00000000|does not name the calling lane|width \d+ is not|not in the mask",
     "Barrier error detected. Invalid arguments"),
    (r"is misaligned|not \d+-byte aligned", "Invalid memory access: misaligned address"),
    (r"^assertion", "Device-side assertion failed"),
    (r"^__trap", "Trap"),
    (r"^shift by", "Undefined shift"),
]


def report_error(kernel: str, message: str) -> None:
    """An error that abandoned a launch (EmulatorError), printed in compute-sanitizer's shape."""
    head = next((h for pat, h in _SYNC_KINDS if re.search(pat, message)), "Error")
    at = re.search(r"(\S+\.(?:cu|cuh|h|hpp)):(\d+)", message)
    block = re.search(r"block \((\d+,\d+,\d+)\)", message)
    thread = re.search(r"thread \((\d+,\d+,\d+)\)", message)
    text = head + "\n"
    if at:
        text += f"    at {at.group(1)}:{at.group(2)} in {kernel}\n"
    if thread or block:
        text += (f"    by thread ({thread.group(1)})" if thread else "    ") + (f" in block ({block.group(1)})" if block else "") + "\n"
    text += "    " + message
    emit(text, raised=True)


# ---- the emulator's hook -----------------------------------------------------------------------------
def build_mode() -> str | None:
    """What the emulator builds: "address" for UNETCU_EMU_SANITIZE=address (`unetcu asan`) or
    memcheck, "racecheck" / "initcheck" for those tools, else None (synccheck's checks are always on)."""
    mode = os.environ.get("UNETCU_EMU_SANITIZE", "").strip() or None
    if mode not in (None, "address"):
        raise ValueError(f"UNETCU_EMU_SANITIZE={mode!r}: only 'address' is supported")
    t = tool()
    return mode or (BUILD[t] if t else None)


class _Sanitizer(emu.Tool):
    def setting(self):
        mode, t = build_mode(), tool()
        return f"a sanitizer ({mode or t})" if mode or t else None

    def build(self):
        return build_mode()

    def allocated(self, array):
        track(array)

    def begin(self, kernel, grid, block, shared_mem, args):
        # which memory is global: the pointer arguments (a tracked allocation as a whole, with its
        # initcheck shadow); the parameter names label the reports
        arrays = [(a, kernel.params[i]) for i, a in enumerate(args) if isinstance(a, np.ndarray)]
        ranges, labels = launch_ranges([a for a, _ in arrays], [n for _, n in arrays])
        kernel.san_begin(build_mode(), ranges)
        return labels

    def end(self, kernel, labels, rc):
        text = kernel.san_take()
        if text:
            report_launch(kernel.name, kernel.so, text, labels)

    def error(self, kernel, message):
        if tool():  # not under `unetcu asan` alone, which has no reports: the EmulatorError says it
            report_error(kernel.name, message)

    def shifts(self, kernel, sites):
        if not tool():
            return False
        for s in sites:
            emit(f"Undefined shift: {s.op} by {s.count} of a {s.bits}-bit '{s.typ}': the count {s.what}\n"
                 f"    at {s.file}:{s.line} in {kernel.name}\n"
                 f"    by thread ({s.tid}) in block ({s.bid}) ({s.hits} such shift{'s' if s.hits != '1' else ''} at this "
                 "line in this launch)\n"
                 f"    C++ leaves it undefined; the GPU clamps the count, so the emulator computed {s.gpu}, as "
                 "the GPU does")
        return True


emu.register_tool(_Sanitizer())


# ---- the front end ---------------------------------------------------------------------------------
def child_env(name: str, log: str | None = None) -> dict:
    """The environment a command runs in under tool `name`."""
    env = dict(os.environ, **{ENV: name})
    env.pop("UNETCU_EMU_SANITIZE", None)
    if log:
        env[LOG_ENV] = log
    if name == "memcheck":
        env["LD_PRELOAD"] = emu.asan_runtime()
        env["ASAN_OPTIONS"] = os.environ.get("ASAN_OPTIONS", "detect_leaks=0")
    return env


def run(name: str, cmd) -> int:
    fd, log = tempfile.mkstemp(prefix="unetcu-sanitize-", suffix=".log")
    os.close(fd)
    try:
        if shutil.which(cmd[0]) is None:  # before the banner: nothing ran under the tool
            print(f"unetcu sanitize: cannot run {cmd[0]!r}: not found or not executable", file=sys.stderr)
            return 127
        sys.stderr.write(f"{PREFIX}UNETCU-SANITIZER ({name}, CPU emulator)\n")
        sys.stderr.flush()
        try:
            rc = subprocess.call(cmd, env=child_env(name, log))
        except OSError as e:
            print(f"unetcu sanitize: cannot run {cmd[0]!r}: {e.strerror}", file=sys.stderr)
            return 127
        with open(log) as f:
            n = sum(1 for line in f if line.startswith(PREFIX) and not line.startswith(PREFIX + "    "))
        sys.stderr.write(f"{PREFIX}ERROR SUMMARY: {n} error{'s' if n != 1 else ''}\n")
        if rc < 0:  # killed by a signal (ASan aborts)
            return 128 - rc
        return rc if rc != 0 else (1 if n else 0)
    finally:
        os.unlink(log)


# ---- pytest: --sanitize=TOOL ------------------------------------------------------------------------
# tests/conftest.py imports these three names. A test that plants a bug wraps it in expected().
def pytest_addoption(parser):
    parser.addoption("--sanitize", choices=TOOLS, default=None,
                     help="run every emulated kernel under this compute-sanitizer tool (unetcu sanitize); "
                          "a test during which a hazard is reported fails")


def configure(config) -> None:
    """Set the tool for the pytest run (memcheck: re-run pytest with libasan preloaded)."""
    name = config.getoption("--sanitize", default=None)
    if not name:
        return
    if name == "memcheck":
        if not emu.asan_loaded():
            env = child_env(name)
            os.execvpe(sys.executable, [sys.executable, "-m", "pytest", *sys.argv[1:]], env)
    os.environ[ENV] = name


def hazard_check():
    """Autouse fixture body: fail the test if it reported a hazard outside expected()."""
    before = len(HAZARDS)
    yield
    new = HAZARDS[before:]
    if new:
        import pytest
        pytest.fail(f"{tool() or 'sanitizer'} reported {len(new)} hazard(s):\n" + "".join(new), pytrace=False)
