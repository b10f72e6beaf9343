"""The emulator's build: one .cu source -> one g++ shared object, cached, loaded with ctypes.

build() asks no tool what to build: the caller passes `instrument` ("address", "racecheck",
"initcheck", "profile" or None, see launch.Tool.build). A build is cached under cache_dir() by the
hash of everything that goes into it (the translation unit, the flags, the headers, g++'s version),
so changing any of them builds anew and nothing else does. compile_error turns g++'s refusal into
one line naming the user's file and line.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import re
import subprocess
import tempfile
import threading
from pathlib import Path

from .source import EmuCompileError, translation_unit


def kernels_dir() -> Path:
    """Where the project's .cu files are: inside the installed package, else the source tree.
    (Here because the emulator's headers, kernels/emu, are found from it; runtime re-exports it.)"""
    package = Path(__file__).resolve().parents[2]  # unetcu/ (this file is unetcu/engines/emu/gxx.py)
    for d in (package / "kernels", package.parent / "kernels"):
        if (d / "emu" / "cuda_emu.h").is_file():
            return d
    raise FileNotFoundError("unetcu's kernels/ directory is missing from the installation")


# The emulator's headers. Everything below reads this name when it runs (not a copy), so
# benchmarks/bench_emulator.py can point it at another revision's headers for a baseline.
EMU_DIR = kernels_dir() / "emu"

# EMU_SANITIZE of the instrumented builds (emu_sanitize.h); emu_san_begin takes the same number
SAN_BUILD = {"racecheck": 1, "initcheck": 2, "profile": 3}
SUFFIX = {None: "", "address": "-asan", "racecheck": "-race", "initcheck": "-init", "profile": "-prof"}


def asan_runtime() -> str:
    """Path of g++'s libasan, which must be preloaded into a Python that loads an ASan build."""
    out = subprocess.run(["g++", "-print-file-name=libasan.so"], capture_output=True, text=True, check=True)
    return os.path.realpath(out.stdout.strip())


def asan_loaded() -> bool:
    """Whether libasan is in this process (an "address" build loads only then)."""
    try:
        with open("/proc/self/maps") as f:
            return "libasan" in f.read()
    except OSError:
        return False


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


# ---- g++'s verdict ---------------------------------------------------------------------------------
_DIAG = re.compile(r"^(?P<file>[^\n:]+):(?P<line>\d+):\d+: (?P<kind>fatal error|error): (?P<msg>[^\n]*)$", re.M)
_REQUIRED_FROM = re.compile(r"^(?P<file>[^\n:]+):(?P<line>\d+):\d+:   required from ", re.M)
# headers a CUDA source may include that the emulator refuses on purpose, and why
_REFUSED_HEADERS = {
    "cuda/barrier": "asynchronous barriers", "cuda/pipeline": "asynchronous copies", "cuda_pipeline.h": "asynchronous copies",
    "cuda_awbarrier.h": "asynchronous barriers", "cooperative_groups/memcpy_async.h": "asynchronous copies",
    "texture_fetch_functions.h": "textures", "texture_indirect_functions.h": "textures",
    "surface_functions.h": "surfaces", "surface_indirect_functions.h": "surfaces",
}


def _emu_header(path: str) -> bool:
    return os.path.abspath(path).startswith(str(EMU_DIR) + os.sep)


def compile_error(filename: str, stderr: str) -> str:
    """What an EmuCompileError says: one line `file:line: what` for what the emulator refuses (its
    headers' error attributes and static_asserts, named at the user's line that led there) and for
    a header it does not have; g++'s own diagnostics for an error in the user's code."""
    first = _DIAG.search(stderr)
    if first:
        f, line, msg = first.group("file"), first.group("line"), first.group("msg")
        refused = re.search(r"declared with attribute error: (.*)", msg)
        if refused:  # g++ names the call's own line, also when it was inlined
            return f"{f}:{line}: {refused.group(1)}"
        missing = re.fullmatch(r"(.+): No such file or directory", msg)
        if first.group("kind") == "fatal error" and missing:
            name = missing.group(1)
            if name in _REFUSED_HEADERS:
                why = (f"{_REFUSED_HEADERS[name]} are not supported by the emulator (no hardware to model, or no meaning on "
                       "a CPU; see kernels/emu/README.md)")
            else:
                ours = sorted(str(p.relative_to(EMU_DIR / "include")) for p in (EMU_DIR / "include").rglob("*") if p.is_file())
                why = (f"no such header: the emulator provides {', '.join(ours)} (host-side headers are not needed: it "
                       "compiles device code, as NVRTC does) and it is not in the -I folders of options")
            return f"{f}:{line}: #include <{name}>: {why}"
        if _emu_header(f):  # deep in the emulator's headers: the innermost user line that led there
            chain = stderr.rfind("In instantiation of", 0, first.start())
            here = [m for m in _REQUIRED_FROM.finditer(stderr, max(chain, 0), first.start()) if not _emu_header(m.group("file"))]
            if here:
                msg = re.sub(r"^static assertion failed: ", "", msg)
                return f"{here[0].group('file')}:{here[0].group('line')}: {msg}"
    return f"emulator build of {filename} failed:\n{stderr[-6000:]}"



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


def _flags(instrument: str | None) -> list[str]:
    """g++'s flags for a build mode (without the user's -I/-D/-U)."""
    # -fsanitize=shift-exponent: a shift by >= the width is reported at its line by the handler in
    # cuda_emu.h; the handler cannot be hidden (g++ declares it), -Bsymbolic binds each build to its own
    flags = ["-std=c++17", "-shared", "-fPIC", "-fvisibility=hidden", "-fno-gnu-unique", "-fno-strict-aliasing",
             "-fsanitize=shift-exponent", "-Wl,-Bsymbolic", "-w", "-I", str(EMU_DIR / "include"), "-I", str(EMU_DIR),
             "-include", str(EMU_DIR / "cuda_emu.h")]
    if instrument == "address":
        return flags + ["-O1", "-gdwarf-4", "-fsanitize=address", "-fno-omit-frame-pointer", "-fsanitize=alignment"]
    if instrument in SAN_BUILD:
        # g++'s ThreadSanitizer instrumentation, our handlers (emu_sanitize.h, emu_profile.h), no
        # TSan runtime; one OS thread runs the blocks
        flags += ["-O1", "-gdwarf-4", "-fsanitize=thread", "--param=tsan-instrument-func-entry-exit=0",
                  "-fsanitize=alignment", f"-DEMU_SANITIZE={SAN_BUILD[instrument]}"]
        if instrument == "profile":  # keep a vector load one access (SRA would split a float4 into four)
            flags += ["-fno-tree-sra"]
        return flags
    if instrument is not None:
        raise ValueError(f"unknown emulator build mode {instrument!r}")
    return flags + ["-O2", "-fopenmp"]


def _compile(tu: str, flags: list[str], so: Path, instrument: str | None, filename: str) -> None:
    """g++ the translation unit into `so` (atomically: a build that fails or is cut off leaves nothing)."""
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        cpp = Path(tmp) / "unit.cpp"
        cpp.write_text(tu)
        out = Path(tmp) / "unit.so"
        if instrument in SAN_BUILD:  # compile, then link without libtsan
            obj = Path(tmp) / "unit.o"
            r = subprocess.run(["g++", *[f for f in flags if f != "-shared"], "-c", str(cpp), "-o", str(obj)],
                               capture_output=True, text=True)
            if r.returncode == 0:
                r = subprocess.run(["g++", "-shared", "-Wl,-Bsymbolic", "-Wl,-z,defs", str(obj), "-o", str(out)],
                                   capture_output=True, text=True)
        else:
            r = subprocess.run(["g++", *flags, str(cpp), "-o", str(out)], capture_output=True, text=True)
        if r.returncode != 0:
            raise EmuCompileError(compile_error(filename, r.stderr))
        os.replace(out, so)


def build(source: str, options=(), name_expressions=(), filename: str = "kernel.cu", instrument: str | None = None):
    """Compile `source` for the emulator (cached) and return (ctypes library, its
    source.TranslationUnit: the kernels' and variables' exported symbols, the parameter names).

    `instrument` is the build mode: None (the normal build: -O2, OpenMP), "address" (ASan; loads
    only into a process with libasan preloaded, which the caller checks), "racecheck", "initcheck"
    or "profile" (the access instrumentation of emu_sanitize.h / emu_profile.h)."""
    src_path = os.path.abspath(filename) if os.path.exists(filename) else filename
    gopts = gxx_options(options)
    user_dirs = [o[2:] for o in gopts if o.startswith("-I") and len(o) > 2]
    if os.path.exists(filename):
        user_dirs.append(os.path.dirname(os.path.abspath(filename)))
    unit = translation_unit(source, src_path, user_dirs, [str(EMU_DIR / "include"), str(EMU_DIR)], name_expressions)

    flags = _flags(instrument) + gopts
    if os.path.exists(filename):
        flags += ["-I", os.path.dirname(os.path.abspath(filename))]
    include_dirs = [o[2:] for o in flags if o.startswith("-I") and len(o) > 2]
    include_dirs += [flags[i + 1] for i, o in enumerate(flags) if o == "-I"]
    h = hashlib.sha256()
    for part in (unit.text, "\0".join(flags), _gxx_version()):
        h.update(part.encode())
    for f in _header_files(include_dirs):
        h.update(str(f).encode())
        h.update(f.read_bytes())
    so = cache_dir() / f"{Path(filename).stem}-{h.hexdigest()[:24]}{SUFFIX[instrument]}.so"
    with _build_lock:
        if not so.exists():
            _compile(unit.text, flags, so, instrument, filename)
        lib = _loaded.get(str(so))
        if lib is None:  # RTLD_LOCAL (with -Bsymbolic): no build's symbols resolve another's
            lib = _loaded[str(so)] = ctypes.CDLL(str(so), mode=os.RTLD_LOCAL)
    return lib, unit
