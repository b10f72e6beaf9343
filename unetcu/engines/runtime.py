"""Engines, and compiling and launching CUDA C on them.

One engine concept for the whole package (Engine, resolve_engine, UNETCU_ENGINE):
    numpy  the float reference (unetcu.reference) on the CPU; runs no kernels
    emu    the project's CUDA kernels compiled with g++ against kernels/emu/ and run on the CPU
    cuda   the same kernels on the GPU through CuPy (NVRTC)
Choice: an explicit engine wins; else UNETCU_ENGINE; else cuda when CuPy sees a usable GPU, else
numpy. Asking for cuda without a GPU is an error, never a silent fallback. Where kernels are needed
(compile, load, the demo), a default of numpy becomes emu and an explicit numpy is refused.

Modules compile once per engine and device and are called like cupy.RawKernel::

    mod = unetcu.engines.runtime.compile(source, engine="emu")       # or load("conv3x3.cu")
    mod.get_function("my_kernel")(grid, block, (x, y, np.int32(n)), shared_mem=0)

Arrays are NumPy arrays on "emu" and CuPy arrays on "cuda"; scalars are NumPy scalars on both.
"""
from __future__ import annotations

import ctypes
import enum
import functools
import glob
import io
import os
import re
from pathlib import Path

from . import emu


class Engine(str, enum.Enum):
    """The engines, in the order of the docstring above; members compare equal to their names."""
    NUMPY = "numpy"
    EMU = "emu"
    CUDA = "cuda"


ENGINES = tuple(e.value for e in Engine)  # ("numpy", "emu", "cuda"): argparse choices, messages
ENGINE_ENV = "UNETCU_ENGINE"
NVRTC_OPTIONS = ("--std=c++17",)


kernels_dir = emu.kernels_dir  # where the project's .cu files are (one definition, in emu/gxx.py, which also finds kernels/emu from it)


@functools.lru_cache(maxsize=None)
def gpu_status() -> tuple[bool, str]:
    """(usable, reason): whether CuPy is importable and sees a working CUDA device."""
    try:
        import cupy
    except ImportError as e:
        return False, f"CuPy is not installed ({e}); install unetcu[cuda13] or unetcu[cuda12]"
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False, "CuPy is installed but there is no NVIDIA driver here (libcuda.so.1 cannot be loaded)"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
        if n < 1:
            return False, "CuPy found no CUDA device"
        cupy.cuda.Device(0).compute_capability  # touches the driver
        return True, f"{n} CUDA device(s)"
    except Exception as e:  # CUDARuntimeError, driver too old, ...
        return False, f"CuPy cannot use a GPU: {type(e).__name__}: {e}"


def gpu_available() -> bool:
    return gpu_status()[0]


def available_bytes(engine: str) -> int | None:
    """Memory a job may still take: the GPU's free memory on "cuda", else the host's MemAvailable
    (Linux /proc/meminfo); None if unknown."""
    if engine == "cuda":
        import cupy
        return int(cupy.cuda.Device().mem_info[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def resolve_engine(engine: str | None = None, kernels: bool = False) -> str:
    """The engine to run on, as its name ("numpy" | "emu" | "cuda"): engine if given, else
    UNETCU_ENGINE, else cuda on a usable GPU, else numpy. kernels=True for callers that launch
    kernels: the default numpy becomes emu, an explicit numpy is refused.
    Raises ValueError for an unknown name, RuntimeError for cuda without a usable GPU."""
    given = engine
    if engine is None:
        engine = os.environ.get(ENGINE_ENV) or (Engine.CUDA.value if gpu_available() else Engine.NUMPY.value)
    origin = f"{ENGINE_ENV}={engine}" if given is None and os.environ.get(ENGINE_ENV) else None
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}{f' ({origin})' if origin else ''}: choose one of {', '.join(ENGINES)}")
    engine = Engine(engine).value
    if kernels and engine == Engine.NUMPY:
        if given is None:
            engine = Engine.EMU.value  # the kernels' own default without a GPU
        else:
            raise ValueError("engine numpy runs no kernels: choose emu (the CPU emulator) or cuda (a GPU)")
    if engine == Engine.CUDA:
        ok, why = gpu_status()
        if not ok:
            cpu = ("engine emu (--engine emu: these CUDA kernels emulated on the CPU)" if kernels else
                   "engine numpy (--engine numpy: trains and predicts on the CPU) or emu (--engine emu: these CUDA "
                   "kernels emulated on the CPU, for checking them; slow)")
            raise RuntimeError(f"engine cuda needs a GPU and no GPU is usable: {why}. Without a GPU use {cpu}")
    return engine


# ---- the CUDA include directory for <mma.h> ------------------------------------------------------
@functools.lru_cache(maxsize=None)
def cuda_include_dir() -> str | None:
    """A CUDA include directory that has crt/mma.h. CuPy's bundled headers lack it, so NVRTC needs
    one from a full toolkit (CUDA_PATH, CUDA_HOME, /usr/local/cuda*) or the nvidia pip packages."""
    cands = []
    for var in ("CUDA_PATH", "CUDA_HOME", "CUDA_ROOT"):
        if os.environ.get(var):
            cands.append(Path(os.environ[var]) / "include")
    cands += [Path("/usr/local/cuda/include")]
    cands += [Path(p) for p in sorted(glob.glob("/usr/local/cuda-*/include"), reverse=True)]
    try:
        import nvidia
        for root in nvidia.__path__:
            cands += [Path(p).parent.parent for p in glob.glob(os.path.join(root, "*", "include", "crt", "mma.h"))]
            cands += [Path(p).parent.parent for p in glob.glob(os.path.join(root, "*", "*", "include", "crt", "mma.h"))]
    except ImportError:
        pass
    for c in cands:
        if (c / "crt" / "mma.h").is_file():
            return str(c)
    return None


# <mma.h> and <cooperative_groups.h> (with its cooperative_groups/*.h) come from a full toolkit
_MMA_RE = re.compile(r"#\s*include\s*[<\"](mma|cooperative_groups(/\w+)?)\.h[>\"]")
_LOCAL_INCLUDE_RE = re.compile(r"#\s*include\s*\"([^\"]+)\"")


def _includes_mma(source: str, include_dirs, seen=None) -> bool:
    """Whether the source, or a local header it includes (found in include_dirs), includes <mma.h>
    or a cooperative groups header (both need the toolkit's include directory)."""
    if _MMA_RE.search(source):
        return True
    seen = set() if seen is None else seen
    for name in _LOCAL_INCLUDE_RE.findall(source):
        for d in include_dirs:
            f = Path(d) / name
            if f.is_file() and f not in seen:
                seen.add(f)
                if _includes_mma(f.read_text(), include_dirs, seen):
                    return True
    return False


def nvrtc_options(source: str, options=(), include_dirs=()) -> tuple[str, ...]:
    """The options the cuda engine compiles with (and the compile check uses)."""
    opts = list(NVRTC_OPTIONS) + [f"-I{d}" for d in include_dirs] + list(options)
    dirs = list(include_dirs) + [o[2:] for o in options if o.startswith("-I")]
    if _includes_mma(source, dirs):
        inc = cuda_include_dir()
        if inc is None:
            raise RuntimeError("this kernel includes <mma.h> or <cooperative_groups.h>, which CuPy's headers lack, and no CUDA "
                               "toolkit include directory was found: set CUDA_PATH to a CUDA toolkit")
        opts.append(f"-I{inc}")
    return tuple(opts)


class CudaModule:
    """A cupy.RawModule with the project's options; get_function returns a cupy.RawKernel."""

    def __init__(self, source: str, options=(), name_expressions=(), filename: str = "kernel.cu", include_dirs=()):
        import cupy
        self.filename = filename
        self.options = nvrtc_options(source, options, include_dirs)
        self._mod = cupy.RawModule(code=source, options=self.options,
                                   name_expressions=tuple(name_expressions) or None)

    def get_function(self, name: str):
        return self._mod.get_function(name)

    def get_global(self, name: str):
        """CuPy's cupy.cuda.MemoryPointer to a __constant__ / __device__ variable (the emulator's
        module gives a writable NumPy view of the same variable)."""
        return self._mod.get_global(name)


def compile(source: str, engine: str | None = None, options=(), name_expressions=(), filename: str = "kernel.cu"):
    """Compile CUDA C source for an engine; returns a module with get_function(name)."""
    engine = resolve_engine(engine, kernels=True)
    if engine == "cuda":
        return CudaModule(source, options, name_expressions, filename)
    return emu.EmuModule(source, tuple(options) + NVRTC_OPTIONS, name_expressions, filename)


@functools.lru_cache(maxsize=None)
def _load(filename: str, engine: str, device: int, options: tuple, name_expressions: tuple, stamp: float):
    path = kernels_dir() / filename
    source = path.read_text()
    if engine == "cuda":
        return CudaModule(source, options, name_expressions, str(path), include_dirs=(str(kernels_dir()),))
    return emu.EmuModule(source, options + NVRTC_OPTIONS + (f"-I{kernels_dir()}",), name_expressions, str(path))


def load(filename: str, engine: str | None = None, options=(), name_expressions=()):
    """Load one of the project's kernels/*.cu files, compiled once per engine and device."""
    engine = resolve_engine(engine, kernels=True)
    path = kernels_dir() / filename
    if not path.is_file():
        raise FileNotFoundError(f"no kernel file {filename!r} in {kernels_dir()}")
    device = 0
    if engine == "cuda":
        import cupy
        device = cupy.cuda.Device().id
    stamp = max(p.stat().st_mtime for p in [path, *kernels_dir().glob("*.cuh")])
    return _load(filename, engine, device, tuple(options), tuple(name_expressions), stamp)


def xp(engine: str):
    """The array module of an engine: cupy for cuda, numpy otherwise."""
    if engine == "cuda":
        import cupy
        return cupy
    import numpy
    return numpy


def nvrtc_compile_report(source: str, options=(), arch: str = "90", filename: str = "kernel.cu") -> str:
    """Compile with CuPy's NVRTC path for sm_<arch> without touching a GPU; return ptxas's -v log.

    CuPy asks the driver for the architecture; with an explicit arch only its helper that picks
    `-arch=sm_XX` needs the device, so that helper is swapped for the duration of the call."""
    from cupy.cuda import compiler
    log = io.StringIO()
    saved = compiler._get_arch_for_options_for_nvrtc
    compiler._get_arch_for_options_for_nvrtc = lambda arch=None: (f"-arch=sm_{arch}", "cubin")
    try:
        compiler.compile_using_nvrtc(source, options=tuple(options) + ("--ptxas-options=-v",), arch=arch,
                                     filename=os.path.basename(filename), log_stream=log)
    finally:
        compiler._get_arch_for_options_for_nvrtc = saved
    return log.getvalue()
