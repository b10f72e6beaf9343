"""Launching on the emulator: EmuModule / EmuKernel (shaped like cupy.RawModule / RawKernel), the
argument checks and marshalling, the thread order, and the hook that tools plug into.

A tool (unetcu.engines.sanitize, unetcu.engines.profile) subclasses Tool and calls register_tool
when it is imported. The emulator never imports a tool: it asks active_tool() which one is on,
builds what that tool's build() names, and calls its hooks around each launch.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import re
import sys
import threading
from typing import NamedTuple

import numpy as np

from .gxx import SAN_BUILD, EmuCompileError, asan_loaded, build

MAX_THREADS_PER_BLOCK = 1024
MAX_BLOCK = (1024, 1024, 64)
MAX_GRID = (2**31 - 1, 65535, 65535)
DEFAULT_SHARED_LIMIT = 48 * 1024  # without the max_dynamic_shared_size_bytes opt-in, as on the GPU
MAX_SHARED_OPTIN = 227 * 1024     # H100 / sm_90

ORDERS = {"forward": 0, "reverse": 1, "random": 2}

_DTYPES = {
    "f32": np.float32, "f64": np.float64, "f16": np.float16, "b8": np.bool_,
    "i8": np.int8, "u8": np.uint8, "i16": np.int16, "u16": np.uint16,
    "i32": np.int32, "u32": np.uint32, "i64": np.int64, "u64": np.uint64,
}
_CTYPES = {
    "f32": ctypes.c_float, "f64": ctypes.c_double, "f16": ctypes.c_uint16, "b8": ctypes.c_bool,
    "i8": ctypes.c_int8, "u8": ctypes.c_uint8, "i16": ctypes.c_int16, "u16": ctypes.c_uint16,
    "i32": ctypes.c_int32, "u32": ctypes.c_uint32, "i64": ctypes.c_int64, "u64": ctypes.c_uint64,
}


class EmulatorError(RuntimeError):
    """A kernel broke a rule at run time: divergent barrier, deadlock, failed assert, ..."""


class CUDADriverError(RuntimeError):
    """What CuPy raises (cupy_backends.cuda.api.driver.CUDADriverError) when the driver cannot
    find a symbol; the message starts as CuPy's does, so code written against one passes on both."""


_NOT_FOUND = "CUDA_ERROR_NOT_FOUND: named symbol not found"


# ---- the tool hook -------------------------------------------------------------------------------
class Shift(NamedTuple):
    """One site of out-of-range shifts in a launch (a line of emu_shift_take, cuda_emu.h)."""
    file: str
    line: str
    op: str      # << or >>
    count: str
    bits: str    # the width of the shifted operand
    typ: str
    hits: str    # how many such shifts at this line in the launch
    tid: str     # a thread and its block that did one, "x,y,z"
    bid: str
    kernel: str  # as the C++ side names it (messages use EmuKernel.name)

    @property
    def what(self) -> str:
        return "is negative" if self.count.startswith("-") else "is not below the width"

    @property
    def gpu(self) -> str:
        """What the GPU computes (and so the emulator): its shift clamps the count."""
        return "0" if self.op == "<<" or not self.typ.startswith(("int", "long")) else "0 or -1 (the sign)"


class Tool:
    """What an instrumentation tool plugs into the emulator. The defaults do nothing; a tool
    overrides what it needs and calls register_tool(instance) when its module is imported."""

    def setting(self) -> str | None:
        """None when the tool is off; else what turned it on, as messages name it
        ("UNETCU_PROFILE", "a sanitizer (racecheck)"). Read at each build and launch."""
        return None

    def build(self) -> str | None:
        """The build mode the tool needs now: "address", "racecheck", "initcheck", "profile", or
        None for the normal build (the tool then only hears about errors and shifts)."""
        return None

    def allocated(self, array: np.ndarray) -> None:
        """A fresh device buffer (an op's output, see allocated()): initcheck tracks it."""

    def begin(self, kernel: "EmuKernel", grid, block, shared_mem: int, args):
        """Before a launch of an instrumented build: set it up (kernel.san_begin, kernel.prof_begin).
        Returns a token that end() gets."""

    def end(self, kernel: "EmuKernel", token, rc: int | None) -> None:
        """After that launch, always (rc None: it raised): collect what the build recorded
        (kernel.san_take, kernel.prof_take) and report it."""

    def error(self, kernel: "EmuKernel", message: str) -> None:
        """The launch failed with `message`; an EmulatorError with it follows."""

    def shifts(self, kernel: "EmuKernel", sites: list[Shift]) -> bool:
        """Shifts of the launch whose count was out of range. True: the tool reported them; False:
        the emulator warns on stderr, once per site in the process."""
        return False


_tools: list[Tool] = []


def register_tool(tool: Tool) -> None:
    if tool not in _tools:
        _tools.append(tool)


def active_tool() -> Tool | None:
    """The registered tool that is on, or None. Two at once are refused: a build is instrumented
    for one tool, and its launches report to one."""
    on = [(t.setting(), t) for t in _tools]
    on = sorted([(s, t) for s, t in on if s], key=lambda st: st[0])  # sorted: the message is not the import order's
    if len(on) > 1:
        raise ValueError(f"{' and '.join(s for s, _ in on)} are both set: the emulator instruments for one at a time")
    return on[0][1] if on else None


def allocated(array: np.ndarray) -> np.ndarray:
    """Tell the active tool about a fresh device buffer (initcheck reports reads of bytes no kernel
    wrote); returns `array`."""
    tool = active_tool()
    if tool is not None:
        tool.allocated(array)
    return array


# ---- thread order --------------------------------------------------------------------------------
_order_local = threading.local()


def _parse_order(spec: str) -> tuple[str, int]:
    name, _, seed = spec.partition(":")
    if name not in ORDERS:
        raise ValueError(f"unknown emulator thread order {spec!r}: use forward, reverse, random or random:SEED")
    return name, int(seed) if seed else 0


def get_order() -> tuple[str, int]:
    """The (order, seed) launches use now: set_order/thread_order, else UNETCU_EMU_ORDER, else forward."""
    o = getattr(_order_local, "order", None)
    if o is not None:
        return o
    return _parse_order(os.environ.get("UNETCU_EMU_ORDER", "forward"))


def set_order(order: str, seed: int = 0) -> None:
    _order_local.order = (_parse_order(order)[0], int(seed))


@contextlib.contextmanager
def thread_order(order: str, seed: int = 0):
    """Run the enclosed launches with threads of each block scheduled in this order."""
    old = getattr(_order_local, "order", None)
    set_order(order, seed)
    try:
        yield
    finally:
        _order_local.order = old


def num_threads() -> int:
    return max(1, int(os.environ.get("UNETCU_EMU_THREADS", os.cpu_count() or 1)))


# ---- modules and kernels -------------------------------------------------------------------------
class EmuModule:
    """What `runtime.compile(..., engine="emu")` returns; shaped like cupy.RawModule."""

    def __init__(self, source: str, options=(), name_expressions=(), filename: str = "kernel.cu"):
        self.filename = filename
        self._source = source
        self._options = tuple(options)
        tool = active_tool()
        self.instrument = tool.build() if tool else None  # the build mode, fixed for the module's life
        if self.instrument == "address" and not asan_loaded():  # ASan aborts a process it was not preloaded into
            raise EmulatorError("an AddressSanitizer build needs libasan preloaded: run the program as "
                                "`unetcu asan python ...` (or LD_PRELOAD=$(g++ -print-file-name=libasan.so))")
        self._lib, unit = build(source, options, tuple(name_expressions), filename, self.instrument)
        self._symbols, self._mangled, self._variables, self._params = unit.symbols, unit.mangled, unit.variables, unit.params
        self._kernels: dict[str, EmuKernel] = {}
        self._globals: dict[str, np.ndarray] = {}

    @property
    def kernel_names(self) -> list[str]:
        return list(self._symbols)

    def get_function(self, name: str) -> "EmuKernel":
        if name not in self._symbols:
            if name in self._mangled:
                why = (f'{self.filename}: kernel {name!r} is not extern "C", so its symbol is the C++-mangled name; '
                       'declare it extern "C" __global__ or list it in name_expressions')
            else:
                why = (f"{self.filename} has no kernel {name!r} (has: {', '.join(self._symbols) or 'none'}); "
                       "template kernels must be listed in name_expressions")
            raise CUDADriverError(f"{_NOT_FOUND} ({why})")
        if name not in self._kernels:
            k = EmuKernel(self._lib, self._symbols[name], name, self._params[name])
            k.source, k.options, k.filename = self._source, self._options, self.filename  # for the profiler's ptxas report
            self._kernels[name] = k
        return self._kernels[name]

    def get_global(self, name: str) -> np.ndarray:
        """A `__constant__` or `__device__` variable as a writable NumPy view of its storage (CuPy's
        get_global gives a device pointer to the same bytes). Its dtype and shape are the
        variable's; a vector type adds a last axis, any other type is seen as bytes."""
        if name not in self._variables:
            raise CUDADriverError(f"{_NOT_FOUND} ({self.filename} defines no __constant__ or __device__ variable "
                                  f"{name!r} at global scope; has: {', '.join(self._variables) or 'none'})")
        if name not in self._globals:
            fn = _bind(self._lib, f"emu_global_{self._variables[name]}", ctypes.c_void_p,
                       [ctypes.POINTER(ctypes.c_size_t), ctypes.c_char_p, ctypes.c_size_t])
            nbytes, info = ctypes.c_size_t(), ctypes.create_string_buffer(512)
            addr = fn(ctypes.byref(nbytes), info, len(info))
            raw = np.ctypeslib.as_array((ctypes.c_uint8 * nbytes.value).from_address(addr))
            code, _, dims = info.value.decode().partition("|")
            shape = tuple(int(d) for d in dims.split(",") if d)
            m = _VEC_CODE.fullmatch(code)
            dtype, shape = (_DTYPES[m.group(1)], shape + (int(m.group(2)),)) if m else (_DTYPES.get(code), shape)
            view = raw
            if dtype is not None and int(np.prod(shape)) * np.dtype(dtype).itemsize == nbytes.value:
                view = raw.view(dtype).reshape(shape)
            self._globals[name] = view
        return self._globals[name]


_VEC_CODE = re.compile(r"([a-z]+\d+)x(\d)a(\d+)")


def _dims(v, what: str, name: str, limits) -> tuple[int, int, int]:
    t = (v,) if isinstance(v, (int, np.integer)) else tuple(v)
    if not 1 <= len(t) <= 3 or not all(isinstance(x, (int, np.integer)) for x in t):
        raise TypeError(f"{name}: {what} must be an int or a tuple of 1-3 ints, got {v!r}")
    t = tuple(int(x) for x in t) + (1,) * (3 - len(t))
    for x, lim in zip(t, limits):
        if not 1 <= x <= lim:
            raise ValueError(f"{name}: {what} {t} outside the device limits {limits}")
    return t


def _bind(lib, name: str, restype, argtypes):
    fn = getattr(lib, name)
    fn.restype, fn.argtypes = restype, argtypes
    return fn


def _take(fn) -> str:
    """The text of emu_san_take / emu_prof_take(buf, n), which return its full length: asked again
    with a buffer that fits when the first was too small (they keep it until the next launch)."""
    buf = ctypes.create_string_buffer(1 << 16)
    need = fn(buf, len(buf))
    if need >= len(buf):
        buf = ctypes.create_string_buffer(need + 1)
        fn(buf, len(buf))
    return buf.value.decode(errors="replace")


class EmuKernel:
    """One kernel; call it like cupy.RawKernel: kernel(grid, block, args, shared_mem=0)."""

    def __init__(self, lib, sym: str, name: str, params=()):
        self.name = name
        text = _bind(lib, f"emu_sig_{sym}", ctypes.c_char_p, [])().decode()
        self.signature = text.split(";") if text else []
        # the parameter names as written (None where unknown), for messages and the tools' reports
        self.params = list(params) if len(params) == len(self.signature) else [None] * len(self.signature)
        for i, code in enumerate(self.signature):
            if code.startswith("?"):
                raise EmuCompileError(f"kernel {name}: parameter {self._what(i)} has type {code[1:]!r}, which the "
                                      "emulator cannot pass (CuPy passes arrays as pointers and NumPy scalars as "
                                      "numbers: use a pointer, or pass the fields as separate scalars)")
        self.so = lib._name  # the built object: tools name code offsets through it (addr2line)
        self.source, self.options, self.filename = "", (), ""  # set by EmuModule, for the profiler's ptxas report
        self.variant = None  # the op's Variant record, set by ops._core.kernel (the profiler's op name and FLOPs)
        self._lib = lib
        self.instrumented = hasattr(lib, "emu_san_begin")  # a racecheck / initcheck / profile build
        self._fn = _bind(lib, f"emu_launch_{sym}", ctypes.c_int,
                         [ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_uint), ctypes.c_size_t, ctypes.c_void_p,
                          ctypes.c_int, ctypes.c_ulonglong, ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t])
        self.max_dynamic_shared_size_bytes = DEFAULT_SHARED_LIMIT
        self._shift_take = _bind(lib, "emu_shift_take", ctypes.c_size_t, [ctypes.c_char_p, ctypes.c_size_t])

    # ---- the instrumented builds' entry points (emu_sanitize.h), called by the tools' begin/end ----
    def san_begin(self, mode: str, ranges) -> None:
        """Start a launch of a racecheck/initcheck/profile build in `mode`: `ranges` is the global
        memory, [lo, hi, initcheck shadow address or 0] per range (sanitize.launch_ranges)."""
        buf = (ctypes.c_size_t * max(1, len(ranges)))(*ranges)
        _bind(self._lib, "emu_san_begin", None, [ctypes.c_int, ctypes.c_void_p, ctypes.c_int])(
            SAN_BUILD[mode], ctypes.cast(buf, ctypes.c_void_p), len(ranges) // 3)

    def san_take(self) -> str:
        """End the launch; its hazards, a line each (emu_sanitize.h's take)."""
        return _take(_bind(self._lib, "emu_san_take", ctypes.c_size_t, [ctypes.c_char_p, ctypes.c_size_t]))

    def prof_begin(self, grid, weights=None) -> None:
        """Which blocks a profile build runs: per grid dimension a weight per index (0: skipped), or all."""
        flat = [x for w in weights for x in w] if weights else [0.0]
        wbuf = (ctypes.c_double * len(flat))(*flat)
        _bind(self._lib, "emu_prof_begin", None, [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint), ctypes.c_int])(
            ctypes.cast(wbuf, ctypes.c_void_p), (ctypes.c_uint * 3)(*grid), int(weights is not None))

    def prof_take(self) -> str:
        """The counters of the launch (emu_profile.h), a line per access site and per range."""
        return _take(_bind(self._lib, "emu_prof_take", ctypes.c_size_t, [ctypes.c_char_p, ctypes.c_size_t]))

    def _what(self, i: int) -> str:
        return f"{i} ({self.params[i]})" if self.params[i] else str(i)

    def _marshal(self, args) -> list:
        if not isinstance(args, (tuple, list)):
            raise TypeError(f"{self.name}: args must be a tuple of arrays and NumPy scalars")
        if len(args) != len(self.signature):
            raise TypeError(f"{self.name} takes {len(self.signature)} arguments ({', '.join(self.signature)}), "
                            f"got {len(args)}")
        holders = []
        for i, (code, a) in enumerate(zip(self.signature, args)):
            if code.startswith("*"):
                const = code[1] == "c"
                base = code[2:] if const else code[1:]
                if a is None:  # a null pointer, as CuPy passes None
                    holders.append(ctypes.c_void_p(0))
                    continue
                if not isinstance(a, np.ndarray):
                    raise TypeError(f"{self.name}: argument {self._what(i)} is a pointer ({code}) and needs a NumPy array, "
                                    f"got {type(a).__name__}")
                vec = _VEC_CODE.fullmatch(base)
                if vec:  # a vector type: an array of its elements, aligned as the GPU's vector access needs
                    elem, align = vec.group(1), int(vec.group(3))
                    if a.dtype != _DTYPES[elem]:
                        raise TypeError(f"{self.name}: argument {self._what(i)} points to {elem}x{vec.group(2)} vectors "
                                        f"and needs an array of {np.dtype(_DTYPES[elem]).name}, got {a.dtype}")
                    if a.ctypes.data % align:
                        raise ValueError(f"{self.name}: argument {self._what(i)} points to {align}-byte aligned vectors but "
                                         f"the array's data is not {align}-byte aligned (cudaMalloc's is; use "
                                         "unetcu.engines.emu.aligned)")
                elif base != "void" and a.dtype != _DTYPES[base]:
                    raise TypeError(f"{self.name}: argument {self._what(i)} points to {base}, got an array of {a.dtype}")
                if not a.flags.c_contiguous:
                    raise ValueError(f"{self.name}: argument {self._what(i)} is not C-contiguous (the kernel would read it wrongly)")
                if not const and not a.flags.writeable:
                    raise ValueError(f"{self.name}: argument {self._what(i)} is read-only but the kernel takes a non-const pointer")
                holders.append(ctypes.c_void_p(a.ctypes.data))
            else:
                want = _DTYPES[code]
                if not isinstance(a, np.generic) or a.dtype != want:
                    got = type(a).__name__ if not isinstance(a, np.generic) else str(a.dtype)
                    raise TypeError(f"{self.name}: argument {self._what(i)} must be a numpy.{np.dtype(want).name} scalar, got {got} "
                                    f"(a Python number would reach the GPU as a 64-bit value; wrap it: "
                                    f"np.{np.dtype(want).name}(x))")
                val = a.view(np.uint16).item() if code == "f16" else a.item()
                holders.append(_CTYPES[code](val))
        return holders

    def __call__(self, grid, block, args, shared_mem: int = 0, stream=None, **_ignored):
        g = _dims(grid, "grid", self.name, MAX_GRID)
        b = _dims(block, "block", self.name, MAX_BLOCK)
        if b[0] * b[1] * b[2] > MAX_THREADS_PER_BLOCK:
            raise ValueError(f"{self.name}: block {b} has more than {MAX_THREADS_PER_BLOCK} threads")
        limit = min(int(self.max_dynamic_shared_size_bytes), MAX_SHARED_OPTIN)
        if not 0 <= int(shared_mem) <= limit:
            raise ValueError(f"{self.name}: shared_mem={shared_mem} exceeds {limit} bytes "
                             "(set kernel.max_dynamic_shared_size_bytes to opt in, up to 227 KiB)")
        holders = self._marshal(args)
        ptrs = (ctypes.c_void_p * max(1, len(holders)))(*[ctypes.addressof(h) for h in holders])
        order, seed = get_order()
        err = ctypes.create_string_buffer(4096)
        tool = active_tool()
        hooked = tool is not None and self.instrumented  # an instrumented build must hear begin/end each launch
        token = tool.begin(self, g, b, int(shared_mem), args) if hooked else None
        rc = None
        try:
            rc = self._fn((ctypes.c_uint * 3)(*g), (ctypes.c_uint * 3)(*b), int(shared_mem), ctypes.cast(ptrs, ctypes.c_void_p),
                          ORDERS[order], seed, num_threads(), err, len(err))
        finally:
            self._report_shifts(tool)
            if hooked:
                tool.end(self, token, rc)
        if rc != 0:
            msg = err.value.decode(errors="replace")
            if tool is not None:
                tool.error(self, msg)
            raise EmulatorError(msg)

    def _report_shifts(self, tool: Tool | None) -> None:
        """The shifts of the launch whose count was out of range: the tool's to report, else a
        warning on stderr, once per site in the process."""
        buf = ctypes.create_string_buffer(1 << 16)
        if not self._shift_take(buf, len(buf)):
            return
        sites = [Shift(*row.split("|")) for row in buf.value.decode(errors="replace").splitlines()]
        if tool is not None and tool.shifts(self, sites):
            return
        for s in sites:
            if (self.so, s.file, s.line, s.op) not in _shift_warned:
                _shift_warned.add((self.so, s.file, s.line, s.op))
                print(f"unetcu emulator: warning: {s.file}:{s.line}: {s.op} by {s.count} of a {s.bits}-bit '{s.typ}' in "
                      f"kernel {self.name} (thread ({s.tid}), block ({s.bid})): the count {s.what}, which C++ leaves "
                      f"undefined; computed as the GPU does ({s.gpu}: its shift clamps the count, x86's would take it "
                      f"modulo {s.bits}); `unetcu sanitize` reports it as an error", file=sys.stderr)


_shift_warned: set = set()  # (build, file, line, op) of the shifts warned about


def aligned(a: np.ndarray, align: int = 256) -> np.ndarray:
    """A C-contiguous copy of `a` whose data starts on an `align`-byte boundary, as cudaMalloc's
    does (NumPy only promises 16 bytes; vector loads and wmma need more)."""
    a = np.asarray(a)
    buf = np.empty(a.nbytes + align, dtype=np.uint8)
    off = (-buf.ctypes.data) % align
    out = buf[off:off + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out
