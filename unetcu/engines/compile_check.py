"""Compile every kernels/*.cu for a GPU architecture (default sm_90) with the runtime's own options
and print registers, spills, stack and shared memory per kernel, from ptxas's -v report.

Compiler: CuPy's NVRTC (the path the cuda engine uses; works without a GPU) when CuPy and an NVRTC
library are installed, else nvcc when it is on PATH. `python -m unetcu.engines.compile_check` or
`unetcu compile-check`; exit status 1 if a file fails to compile (or spills, with --fail-on-spill),
or if a kernel that the op registry (unetcu.ops.REGISTRY) names is missing from its file. Each
kernel is printed with the variants that launch it.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import runtime
from .emu import kernel_names

_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\d+a?)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


@dataclass
class KernelReport:
    file: str
    kernel: str
    arch: str
    registers: int = -1
    stack: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    smem: int = 0

    @property
    def spills(self) -> bool:
        return self.spill_stores > 0 or self.spill_loads > 0


def parse_ptxas(log: str, file: str) -> list[KernelReport]:
    out: list[KernelReport] = []
    for line in log.splitlines():
        m = _ENTRY.search(line)
        if m:
            out.append(KernelReport(file, m.group(1), m.group(2)))
            continue
        if not out:
            continue
        m = _FRAME.search(line)
        if m:
            out[-1].stack, out[-1].spill_stores, out[-1].spill_loads = map(int, m.groups())
        m = _REGS.search(line)
        if m:
            out[-1].registers = int(m.group(1))
            sm = _SMEM.search(line)  # after "used N barriers" and "N bytes cumulative stack size", if any
            out[-1].smem = int(sm.group(1)) if sm else 0
    return out


def available_compiler() -> tuple[str | None, str]:
    """('nvrtc' | 'nvcc' | None, reason)."""
    why = []
    try:
        from cupy.cuda import nvrtc
        nvrtc.getVersion()
        return "nvrtc", "CuPy's NVRTC"
    except Exception as e:  # ImportError, or the NVRTC library cannot be loaded
        why.append(f"CuPy NVRTC unavailable ({type(e).__name__}: {e})")
    if shutil.which("nvcc"):
        return "nvcc", "nvcc on PATH"
    why.append("no nvcc on PATH")
    return None, "; ".join(why)


def compile_file(path: Path, compiler: str, arch: str = "90") -> list[KernelReport]:
    source = path.read_text()
    opts = runtime.nvrtc_options(source, include_dirs=(str(path.parent),))
    if compiler == "nvrtc":
        log = runtime.nvrtc_compile_report(source, opts, arch=arch, filename=str(path))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = ["nvcc", f"-arch=sm_{arch}", "-cubin", "-Xptxas", "-v", "-o", str(Path(tmp) / "out.cubin"),
                   *[o.replace("--std=", "-std=") for o in opts], str(path)]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"nvcc failed on {path.name}:\n{r.stderr}")
            log = r.stdout + r.stderr
    reports = parse_ptxas(log, path.name)
    missing = set(kernel_names(source)) - {r.kernel for r in reports}
    if missing:
        raise RuntimeError(f"{path.name}: ptxas reported nothing for {sorted(missing)}")
    return reports


def check(files=None, arch: str = "90", compiler: str | None = None, out=sys.stdout) -> list[KernelReport]:
    compiler = compiler or available_compiler()[0]
    if compiler is None:
        raise RuntimeError(f"no CUDA compiler: {available_compiler()[1]}")
    files = [Path(f) for f in files] if files else sorted(runtime.kernels_dir().glob("*.cu")) + sorted(runtime.kernels_dir().glob("examples/*.cu"))
    reports: list[KernelReport] = []
    for f in files:
        reports += compile_file(f, compiler, arch)
    from .. import ops  # the registry of the layer above: only this walk over it needs it
    owners = ops.kernel_owners()
    compiled = {f.name for f in files}
    missing = sorted(f"{r.file}: {name} ({', '.join(owners[name])})" for op in ops.REGISTRY for r in ops.variants(op)
                     if r.file in compiled for name in [*r.kernel_names, *r.helpers]
                     if name not in {k.kernel for k in reports})
    if missing:
        raise RuntimeError(f"the op registry names kernels its files lack: {'; '.join(missing)}")
    print(f"{'file':<18} {'kernel':<40} {'arch':<6} {'regs':>4} {'stack':>6} {'spill st':>8} {'spill ld':>8} {'smem':>6}  variants",
          file=out)
    for r in reports:
        print(f"{r.file:<18} {r.kernel:<40} {r.arch:<6} {r.registers:>4} {r.stack:>6} {r.spill_stores:>8} "
              f"{r.spill_loads:>8} {r.smem:>6}  {', '.join(owners.get(r.kernel, ['-']))}{'  SPILLS' if r.spills else ''}",
              file=out)
    print(f"{len(reports)} kernels in {len(files)} files compiled for sm_{arch} with {compiler}", file=out)
    return reports


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="unetcu compile-check", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", help=".cu files (default: every kernels/*.cu)")
    ap.add_argument("--arch", default="90", help="compute capability, e.g. 90 for H100 (default 90)")
    ap.add_argument("--compiler", choices=("nvrtc", "nvcc"), help="default: NVRTC if CuPy has it, else nvcc")
    ap.add_argument("--fail-on-spill", action="store_true", help="exit 1 if any kernel spills registers")
    a = ap.parse_args(argv)
    try:
        reports = check(a.files, a.arch, a.compiler)
    except (RuntimeError, FileNotFoundError) as e:
        print(f"unetcu compile-check: {e}", file=sys.stderr)
        return 1
    if a.fail_on_spill and any(r.spills for r in reports):
        print("register spills found (see SPILLS above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
