"""The CPU emulator's Python side: build a .cu source with g++ against kernels/emu, launch it.

A source is turned into one translation unit::

    (cuda_emu.h, force-included)
    #line 1 "<the .cu file>"
    <the source, with `extern __shared__ T name[];` pointed at the dynamic buffer>
    #include "emu_launch.h"
    <one exported launcher + signature function per kernel>

compiled to a shared object cached by the content hash of everything that goes into it, and loaded
with ctypes. `EmuKernel.__call__(grid, block, args, shared_mem=0)` mirrors `cupy.RawKernel`.

Knobs (environment variables, or the functions below):
  UNETCU_EMU_ORDER     forward | reverse | random | random:SEED  thread order inside each round
  UNETCU_EMU_THREADS   OS threads that run blocks in parallel (default: all cores)
  UNETCU_EMU_SANITIZE  address  -> AddressSanitizer build (run under `unetcu asan ...`)
  UNETCU_EMU_STACK_KB  fiber stack size (default 256)
  UNETCU_CACHE_DIR     where built objects go (default ~/.cache/unetcu)
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import re
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np

EMU_DIR = Path(__file__).resolve().parent / "kernels" / "emu"
if not EMU_DIR.is_dir():  # running from a source tree that is not installed
    EMU_DIR = Path(__file__).resolve().parent.parent / "kernels" / "emu"

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


class EmuCompileError(RuntimeError):
    """g++ rejected the emulated source; the message holds its diagnostics."""


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


def sanitize_mode() -> str | None:
    mode = os.environ.get("UNETCU_EMU_SANITIZE", "").strip() or None
    if mode not in (None, "address"):
        raise ValueError(f"UNETCU_EMU_SANITIZE={mode!r}: only 'address' is supported")
    return mode


def asan_runtime() -> str:
    """Path of g++'s libasan, which must be preloaded into a Python that loads an ASan build."""
    out = subprocess.run(["g++", "-print-file-name=libasan.so"], capture_output=True, text=True, check=True)
    return os.path.realpath(out.stdout.strip())


def _asan_loaded() -> bool:
    try:
        with open("/proc/self/maps") as f:
            return "libasan" in f.read()
    except OSError:
        return False


# ---- source handling -----------------------------------------------------------------------------
def strip_comments(src: str) -> str:
    """Blank out comments and string literals, keeping every newline (so offsets keep their line)."""
    def blank(m):
        return re.sub(r"[^\n]", " ", m.group(0))
    return re.sub(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"', blank, src, flags=re.S)


_GLOBAL_RE = re.compile(r"\b__global__\b")
_NAME_RE = re.compile(r"\bvoid\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?([A-Za-z_]\w*)\s*\(")


def kernel_names(src: str) -> list[str]:
    """Names of the non-template `__global__` functions of a source, in order."""
    code = strip_comments(src)
    names = []
    for m in _GLOBAL_RE.finditer(code):
        head = code[max(code.rfind(";", 0, m.start()), code.rfind("}", 0, m.start()),
                        code.rfind("{", 0, m.start())) + 1:m.start()]
        if re.search(r"\btemplate\b", head):
            continue
        n = _NAME_RE.search(code, m.end())
        if n:
            names.append(n.group(1))
    return names


_EXTERN_SMEM = re.compile(
    r"^([ \t]*)extern\s+__shared__\s+(?:__align__\s*\(\s*\d+\s*\)\s*)?([A-Za-z_][\w:<>, ]*?[\w>])\s*"
    r"(?:__align__\s*\(\s*\d+\s*\)\s*)?([A-Za-z_]\w*)\s*\[\s*\]\s*;[ \t]*$", re.M)


def rewrite(src: str) -> tuple[str, list[str]]:
    """The two source edits the emulator needs; both keep every line where it was.

    `extern __shared__ T name[];` alone on its line becomes, inside a function, a local pointer to
    the dynamic buffer; at file scope, a macro for it (returned, so it can be #undef'd after the
    source). `static __shared__` becomes `__shared__` (the header adds the static).
    """
    code = strip_comments(src)
    macros = []

    def repl(m):
        indent, typ, name = m.group(1), m.group(2), m.group(3)
        if code.count("{", 0, m.start()) - code.count("}", 0, m.start()) > 0:
            return f"{indent}{typ}* const {name} = ({typ}*)::emu::dynamic_smem();"
        macros.append(name)
        return f"#define {name} (({typ}*)::emu::dynamic_smem())"
    out = _EXTERN_SMEM.sub(repl, src)
    if re.search(r"\bextern\s+__shared__\b", strip_comments(out)):
        raise EmuCompileError("the emulator needs each `extern __shared__ T name[];` alone on its line")
    return re.sub(r"\bstatic(\s+)__shared__\b", r"\1__shared__", out), macros


_OPT_TAKES_VALUE = {"-I", "-D", "-U", "--include-path", "--define-macro", "--undefine-macro"}


def gxx_options(options) -> list[str]:
    """The NVRTC options g++ understands: include paths, macros, the C++ standard. Others
    (arch, fast-math, ptxas flags, ...) have no meaning on the CPU and are left out."""
    out, opts, i = [], list(options), 0
    while i < len(opts):
        o = opts[i]
        if o in _OPT_TAKES_VALUE and i + 1 < len(opts):
            o, i = o + "=" + opts[i + 1], i + 1
        for long, short in (("--include-path=", "-I"), ("--define-macro=", "-D"), ("--undefine-macro=", "-U")):
            if o.startswith(long):
                o = short + o[len(long):]
        if o.startswith(("-I=", "-D=", "-U=")):
            o = o[:2] + o[3:]
        if o.startswith(("-I", "-D", "-U")):
            out.append(o)
        elif o.startswith(("-std=", "--std=")):
            out.append("-std=" + o.split("=", 1)[1])
        i += 1
    return out


# ---- building ------------------------------------------------------------------------------------
_GXX_VERSION = None
_build_lock = threading.Lock()
_loaded: dict[str, ctypes.CDLL] = {}


def _gxx_version() -> str:
    global _GXX_VERSION
    if _GXX_VERSION is None:
        try:
            _GXX_VERSION = subprocess.run(["g++", "--version"], capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError) as e:
            raise EmuCompileError(f"the emulator needs g++ (C++17) on PATH: {e}") from e
    return _GXX_VERSION


def cache_dir() -> Path:
    d = Path(os.environ.get("UNETCU_CACHE_DIR", Path.home() / ".cache" / "unetcu")) / "emu"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _header_files(include_dirs) -> list[Path]:
    files = sorted(f for f in EMU_DIR.rglob("*") if f.is_file() and f.suffix != ".md")
    for d in include_dirs:
        p = Path(d)
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix in (".cuh", ".h", ".hpp", ".inc"))
    return files


def build(source: str, options=(), name_expressions=(), filename: str = "kernel.cu"):
    """Compile `source` for the emulator (cached) and return (ctypes library, {name: symbol})."""
    names = kernel_names(source)
    exprs = [e for e in name_expressions if e not in names]
    launchers = []
    symbols = {}
    for i, name in enumerate(names + exprs):
        sym = f"k{i}"
        symbols[name] = sym
        launchers.append(
            f'extern "C" __attribute__((visibility("default"))) const char* emu_sig_{sym}() '
            f'{{ static const std::string s = ::emu::signature(&{name}); return s.c_str(); }}\n'
            f'extern "C" __attribute__((visibility("default"))) int emu_launch_{sym}(const unsigned* g, '
            f'const unsigned* b, size_t sm, void** a, int order, unsigned long long seed, int nt, char* err, size_t el) '
            f'{{ return ::emu::launch("{name}", &{name}, g, b, sm, a, order, seed, nt, err, el); }}\n')
    src_path = os.path.abspath(filename) if os.path.exists(filename) else filename
    body, macros = rewrite(source)
    tu = (f'#line 1 "{src_path}"\n{body}\n' + "".join(f"#undef {m}\n" for m in macros) +
          '#include "emu_launch.h"\n' + "".join(launchers))
    sanitize = sanitize_mode()
    gopts = gxx_options(options)
    flags = ["-std=c++17", "-shared", "-fPIC", "-fvisibility=hidden", "-fno-gnu-unique", "-fno-strict-aliasing",
             "-w", "-I", str(EMU_DIR / "include"), "-I", str(EMU_DIR), "-include", str(EMU_DIR / "cuda_emu.h")]
    if sanitize == "address":
        if not _asan_loaded():
            raise EmulatorError("an AddressSanitizer build needs libasan preloaded: run the program as "
                                "`unetcu asan python ...` (or LD_PRELOAD=$(g++ -print-file-name=libasan.so))")
        flags += ["-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer"]
    else:
        flags += ["-O2", "-fopenmp"]
    flags += gopts
    if os.path.exists(filename):
        flags += ["-I", os.path.dirname(os.path.abspath(filename))]
    include_dirs = [o[2:] for o in flags if o.startswith("-I") and len(o) > 2]
    include_dirs += [flags[i + 1] for i, o in enumerate(flags) if o == "-I"]
    h = hashlib.sha256()
    for part in (tu, "\0".join(flags), _gxx_version()):
        h.update(part.encode())
    for f in _header_files(include_dirs):
        h.update(str(f).encode())
        h.update(f.read_bytes())
    key = h.hexdigest()[:24]
    so = cache_dir() / f"{Path(filename).stem}-{key}{'-asan' if sanitize else ''}.so"
    with _build_lock:
        if not so.exists():
            with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
                cpp = Path(tmp) / "unit.cpp"
                cpp.write_text(tu)
                out = Path(tmp) / "unit.so"
                r = subprocess.run(["g++", *flags, str(cpp), "-o", str(out)], capture_output=True, text=True)
                if r.returncode != 0:
                    raise EmuCompileError(f"emulator build of {filename} failed:\n{r.stderr[-6000:]}")
                os.replace(out, so)
        lib = _loaded.get(str(so))
        if lib is None:
            lib = _loaded[str(so)] = ctypes.CDLL(str(so), mode=os.RTLD_LOCAL)
    return lib, symbols


class EmuModule:
    """What `runtime.compile(..., engine="emu")` returns; shaped like cupy.RawModule."""

    def __init__(self, source: str, options=(), name_expressions=(), filename: str = "kernel.cu"):
        self.filename = filename
        self._lib, self._symbols = build(source, options, tuple(name_expressions), filename)
        self._kernels: dict[str, EmuKernel] = {}

    @property
    def kernel_names(self) -> list[str]:
        return list(self._symbols)

    def get_function(self, name: str) -> "EmuKernel":
        if name not in self._symbols:
            raise AttributeError(f"{self.filename} has no kernel {name!r} (has: {', '.join(self._symbols) or 'none'}); "
                                 "template kernels must be listed in name_expressions")
        if name not in self._kernels:
            self._kernels[name] = EmuKernel(self._lib, self._symbols[name], name)
        return self._kernels[name]


def _dims(v, what: str, name: str, limits) -> tuple[int, int, int]:
    t = (v,) if isinstance(v, (int, np.integer)) else tuple(v)
    if not 1 <= len(t) <= 3 or not all(isinstance(x, (int, np.integer)) for x in t):
        raise TypeError(f"{name}: {what} must be an int or a tuple of 1-3 ints, got {v!r}")
    t = tuple(int(x) for x in t) + (1,) * (3 - len(t))
    for x, lim in zip(t, limits):
        if not 1 <= x <= lim:
            raise ValueError(f"{name}: {what} {t} outside the device limits {limits}")
    return t


class EmuKernel:
    """One kernel; call it like cupy.RawKernel: kernel(grid, block, args, shared_mem=0)."""

    def __init__(self, lib, sym: str, name: str):
        self.name = name
        sig = getattr(lib, f"emu_sig_{sym}")
        sig.restype = ctypes.c_char_p
        text = sig().decode()
        self.signature = text.split(",") if text else []
        if "?" in "".join(self.signature):
            raise EmuCompileError(f"kernel {name} has a parameter type the emulator cannot pass: ({text})")
        self._fn = getattr(lib, f"emu_launch_{sym}")
        self._fn.restype = ctypes.c_int
        self._fn.argtypes = [ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_uint), ctypes.c_size_t,
                             ctypes.c_void_p, ctypes.c_int, ctypes.c_ulonglong, ctypes.c_int,
                             ctypes.c_char_p, ctypes.c_size_t]
        self.max_dynamic_shared_size_bytes = DEFAULT_SHARED_LIMIT

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
                    raise TypeError(f"{self.name}: argument {i} is a pointer ({code}) and needs a NumPy array, "
                                    f"got {type(a).__name__}")
                if base != "void" and a.dtype != _DTYPES[base]:
                    raise TypeError(f"{self.name}: argument {i} points to {base}, got an array of {a.dtype}")
                if not a.flags.c_contiguous:
                    raise ValueError(f"{self.name}: argument {i} is not C-contiguous (the kernel would read it wrongly)")
                if not const and not a.flags.writeable:
                    raise ValueError(f"{self.name}: argument {i} is read-only but the kernel takes a non-const pointer")
                holders.append(ctypes.c_void_p(a.ctypes.data))
            else:
                want = _DTYPES[code]
                if not isinstance(a, np.generic) or a.dtype != want:
                    got = type(a).__name__ if not isinstance(a, np.generic) else str(a.dtype)
                    raise TypeError(f"{self.name}: argument {i} must be a numpy.{np.dtype(want).name} scalar, got {got} "
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
        rc = self._fn((ctypes.c_uint * 3)(*g), (ctypes.c_uint * 3)(*b), int(shared_mem), ctypes.cast(ptrs, ctypes.c_void_p),
                      ORDERS[order], seed, num_threads(), err, len(err))
        if rc != 0:
            raise EmulatorError(err.value.decode(errors="replace"))


def aligned(a: np.ndarray, align: int = 256) -> np.ndarray:
    """A C-contiguous copy of `a` whose data starts on an `align`-byte boundary, as cudaMalloc's
    does (NumPy only promises 16 bytes; vector loads and wmma need more)."""
    a = np.asarray(a)
    buf = np.empty(a.nbytes + align, dtype=np.uint8)
    off = (-buf.ctypes.data) % align
    out = buf[off:off + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out
