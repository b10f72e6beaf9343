"""Nsight-Compute-class memory counters, occupancy and roofline bounds from the CPU emulator.

    unetcu profile [--kernel REGEX] [--json FILE] [--sample S] -- python my_script.py

Every emulated kernel of COMMAND is built with the emulator's access instrumentation (the one
racecheck uses, kernels/emu/emu_profile.h counts) and, per launch, these are measured, under
Nsight Compute's metric names so that `ncu --metrics ...` on a GPU can be held against them key by key:

  l1tex__t_requests_pipe_lsu_mem_global_op_{ld,st}.sum    warp-level global load/store instructions
  l1tex__t_sectors_pipe_lsu_mem_global_op_{ld,st}.sum     32-byte sectors they touch
  l1tex__data_pipe_lsu_wavefronts_mem_shared_op_{ld,st}.sum      shared-memory wavefronts
  l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_{ld,st}.sum  wavefronts beyond one per phase
  unetcu__compulsory_bytes_{read,written}   distinct global bytes (the floor of DRAM traffic)
  sm__maximum_warps_per_active_cycle_pct    theoretical occupancy on sm_90 (H100/H200), from the
                                            registers and static shared memory ptxas reports for
                                            the kernel (NVRTC, sm_90), its block and dynamic shared
                                            memory, by cudaOccupancyMaxActiveBlocksPerMultiprocessor's rules
  unetcu__flop                              the op registry's FLOP count for the launch (None for
                                            kernels that are not an op's or whose op is memory-bound)
  unetcu__roofline_bound_us_<gpu>_<fp32|tf32>  max(FLOP / peak, compulsory bytes / bandwidth): a
                                            lower bound on the launch's time, never a time

The model behind the counts (what a request is, divergent lanes, the shared-memory phases) is
in kernels/emu/emu_profile.h and the README's "Nsight Compute counters without a GPU". What only a
GPU shows: caches (L1/L2 hit rates, so DRAM bytes above the compulsory ones), latency, stalls,
clocks and timing.

--sample S runs, per grid dimension longer than S, only its first and last index and S-2 evenly
spaced ones between (weighted so that they stand for the rest) and scales the counts: paper-sized
grids in seconds. Blocks outside the sample do not run, so the command's own results are not
meaningful then; the compulsory bytes of a sampled launch are scaled per argument and capped at its
size (an estimate, marked as sampled).

Set by the front end in the command's environment: UNETCU_PROFILE=1, UNETCU_PROFILE_KERNEL (regex),
UNETCU_PROFILE_SAMPLE, UNETCU_PROFILE_LOG (a file that gets one JSON line per launch). In-process:
`with profile.collect() as launches:` gathers the records of the launches inside.

The emulator hears of the profiler through its hook (unetcu.engines.emu.Tool): _Profiler below,
registered when this module is imported.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading

import numpy as np

from . import emu
from .sanitize import launch_ranges, symbolize

ENV = "UNETCU_PROFILE"
KERNEL_ENV = "UNETCU_PROFILE_KERNEL"
SAMPLE_ENV = "UNETCU_PROFILE_SAMPLE"
LOG_ENV = "UNETCU_PROFILE_LOG"

GLOBAL_KEYS = {(op, what): f"l1tex__t_{what}_pipe_lsu_mem_global_op_{op}.sum"
               for op in ("ld", "st") for what in ("requests", "sectors")}
SHARED_KEYS = {(op, what): f"l1tex__data{'_bank_conflicts' if what == 'conflicts' else ''}_pipe_lsu"
                           f"{'_wavefronts' if what == 'wavefronts' else ''}_mem_shared_op_{op}.sum"
               for op in ("ld", "st") for what in ("wavefronts", "conflicts")}
OCCUPANCY_KEY = "sm__maximum_warps_per_active_cycle_pct"

# Peaks for the roofline bound (NVIDIA's H100 SXM5 and H200 SXM datasheets; dense tensor-core TF32,
# not the doubled "with sparsity" figure). Bandwidth in bytes/s, peaks in FLOP/s.
GPUS = {
    "h100_sxm": {"fp32": 67e12, "tf32": 494.7e12, "bandwidth": 3.35e12},
    "h200": {"fp32": 67e12, "tf32": 494.7e12, "bandwidth": 4.8e12},
}

# sm_90's occupancy limits (cuda_occupancy.h for compute capability 9.0; the same SM on H100 and H200)
SM90 = dict(max_warps=64, max_blocks=32, regs_per_sm=65536, regs_per_block=65536, reg_granularity=256,
            max_regs_per_thread=256, sub_partitions=4, smem_per_sm=233472, smem_per_block=49152,
            smem_per_block_optin=232448, reserved_smem_per_block=1024, smem_granularity=128,
            # the shared-memory carve-outs the SM can be configured to (KB)
            carveouts=(0, 8, 16, 32, 64, 100, 132, 164, 196, 228))


def enabled() -> bool:
    return os.environ.get(ENV, "").strip() not in ("", "0")


def sample_size() -> int | None:
    v = os.environ.get(SAMPLE_ENV, "").strip()
    if not v:
        return None
    if not v.isdigit() or int(v) < 3:
        raise ValueError(f"{SAMPLE_ENV}={v!r}: the sample is an integer >= 3 (first, last and S-2 indices between "
                         "per grid dimension)")
    return int(v)


def wanted(kernel: str) -> bool:
    pat = os.environ.get(KERNEL_ENV, "")
    return not pat or re.search(pat, kernel) is not None


# ---- which blocks run ------------------------------------------------------------------------------
def sample_weights(grid, s: int | None) -> list[list[float]] | None:
    """Per grid dimension, a weight per index (0: not run): the first and last index weigh 1 (edge
    blocks: partial tiles, image borders), and the G-2 interior ones are cut into S-2 equal strata,
    each stood for by its centre index. None: every block runs."""
    if s is None or all(g <= s for g in grid):
        return None
    out = []
    for g in grid:
        w = [0.0] * g
        if g <= s:
            w = [1.0] * g
        else:
            inner = sorted({1 + int((i + 0.5) * (g - 2) / (s - 2)) for i in range(s - 2)})
            w[0] = w[g - 1] = 1.0
            for i in inner:
                w[i] = (g - 2) / len(inner)
        out.append(w)
    return out


# ---- occupancy ---------------------------------------------------------------------------------------
def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def occupancy_sm90(threads: int, registers: int, static_smem: int, dynamic_smem: int) -> dict:
    """cudaOccupancyMaxActiveBlocksPerMultiprocessor on an H100/H200 (sm_90), default carve-out,
    for a kernel of `registers` per thread and `static_smem` bytes launched with `threads` per block
    and `dynamic_smem` bytes: {"blocks", "warps", "pct", "limiter"} (limiter: the resource that
    binds). More than 48 KB of shared memory in all counts as opted in (the launch fails otherwise).
    Source: cuda_occupancy.h (CUDA 13.0), cudaOccMaxActiveBlocksPerMultiprocessor; the test
    compiles that header and compares over a grid of inputs."""
    a = SM90
    if threads < 1 or threads > 1024:
        raise ValueError(f"block of {threads} threads: 1 to 1024")
    warps = -(-threads // 32)
    limits = {"warps": a["max_warps"] // warps, "blocks": a["max_blocks"]}
    per_warp = _round_up(registers * 32, a["reg_granularity"])
    per_cta = per_warp * warps
    assumed = per_warp * _round_up(warps, a["sub_partitions"])
    if a["regs_per_block"] < assumed or a["regs_per_block"] < per_cta or registers > a["max_regs_per_thread"]:
        limits["registers"] = 0
    elif per_warp > 0:
        limits["registers"] = (a["regs_per_sm"] // a["sub_partitions"] // per_warp) * a["sub_partitions"] // warps
    static = static_smem + a["reserved_smem_per_block"]
    alloc = _round_up(static + dynamic_smem, a["smem_granularity"])
    optin = static_smem + dynamic_smem > a["smem_per_block"]
    per_block_limit = (a["smem_per_block_optin"] if optin else a["smem_per_block"]) + a["reserved_smem_per_block"]
    if alloc > per_block_limit:
        limits["shared memory"] = 0
    else:
        sm = a["smem_per_sm"]
        if sm < alloc:  # (cannot happen on sm_90: 228 KB is the largest carve-out and the largest block)
            sm = next(c * 1024 for c in a["carveouts"] if c * 1024 >= alloc)
        limits["shared memory"] = sm // alloc
    blocks = min(limits.values())
    limiter = min(limits, key=lambda k: (limits[k], k != "warps"))
    return {"blocks": blocks, "warps": blocks * warps, "pct": 100.0 * blocks * warps / a["max_warps"],
            "limiter": limiter}


_ptxas_lock = threading.Lock()
_ptxas: dict[str, dict | str] = {}


def kernel_resources(source: str, options, filename: str) -> dict | str:
    """{kernel: KernelReport} from ptxas for sm_90 (NVRTC through CuPy, else nvcc), cached per
    source and options; a string saying why not where no compiler is available."""
    from . import compile_check, runtime
    key = hashlib.sha256((source + "\0" + "\0".join(options) + "\0" + filename).encode()).hexdigest()
    with _ptxas_lock:
        if key in _ptxas:
            return _ptxas[key]
        compiler, why = compile_check.available_compiler()
        if compiler is None:
            _ptxas[key] = f"registers unknown: {why}"
            return _ptxas[key]
        user = [o for o in options if o not in runtime.NVRTC_OPTIONS]
        dirs = [os.path.dirname(os.path.abspath(filename))] if os.path.exists(filename) else []
        opts = runtime.nvrtc_options(source, user, include_dirs=dirs)
        try:
            if compiler == "nvrtc":
                log = runtime.nvrtc_compile_report(source, opts, arch="90", filename=filename)
            else:
                with tempfile.TemporaryDirectory() as tmp:
                    src = os.path.join(tmp, os.path.basename(filename) if filename.endswith(".cu") else "kernel.cu")
                    with open(src, "w") as f:
                        f.write(source)
                    r = subprocess.run(["nvcc", "-arch=sm_90", "-cubin", "-Xptxas", "-v", "-o", os.path.join(tmp, "k.cubin"),
                                        *[o.replace("--std=", "-std=") for o in opts], src], capture_output=True, text=True)
                    if r.returncode:
                        raise RuntimeError(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "nvcc failed")
                    log = r.stdout + r.stderr
            _ptxas[key] = {k.kernel: k for k in compile_check.parse_ptxas(log, filename)}
        except Exception as e:  # a source NVRTC refuses still runs on the emulator
            _ptxas[key] = f"registers unknown: {compiler} could not compile {os.path.basename(filename)} for sm_90 ({e})"
        return _ptxas[key]


# ---- FLOPs and the roofline ---------------------------------------------------------------------------
def roofline(flop: float | None, nbytes: float) -> dict:
    """{f"unetcu__roofline_bound_us_{gpu}_{precision}": microseconds}: the time below which the
    launch cannot run on that GPU (its FLOPs at the peak, its compulsory bytes at the bandwidth)."""
    out = {}
    for gpu, peak in GPUS.items():
        for prec in ("fp32", "tf32"):
            out[f"unetcu__roofline_bound_us_{gpu}_{prec}"] = 1e6 * max((flop or 0.0) / peak[prec], nbytes / peak["bandwidth"])
    return out


# ---- one launch --------------------------------------------------------------------------------------
_collectors: list[list[dict]] = []
_lock = threading.Lock()


@contextlib.contextmanager
def collect():
    """The records of the launches made inside (also appended to the log file if one is set)."""
    got: list[dict] = []
    _collectors.append(got)
    try:
        yield got
    finally:
        _collectors.remove(got)


def _relative(site: str) -> str:
    """"file:line in function" with the file relative to the working directory when inside it."""
    f, sep, rest = site.partition(":")
    if os.path.isabs(f) and f.startswith(os.getcwd() + os.sep):
        return os.path.relpath(f) + sep + rest
    return site


def launch_record(kernel, grid, block, shared_mem: int, args, text: str, range_bytes, weights) -> dict:
    """Turn emu_prof_take's lines into a launch's record (see the module docstring for the keys)."""
    sites, ranges = [], {}
    for line in text.splitlines():
        f = line.split("|")
        if f[0] == "S":
            sites.append((int(f[1]), f[2] == "1", f[3] == "1", float(f[4]), float(f[5]), float(f[6])))
        elif f[0] == "R":
            ranges[int(f[1])] = (float(f[2]), float(f[3]))
    m = {k: 0.0 for k in [*GLOBAL_KEYS.values(), *SHARED_KEYS.values(), "unetcu__shared_requests_op_ld",
                          "unetcu__shared_requests_op_st"]}
    ideal_sectors = {"ld": 0.0, "st": 0.0}
    for _, shared, write, req, units, ideal in sites:
        op = "st" if write else "ld"
        if shared:
            m[SHARED_KEYS[(op, "wavefronts")]] += units
            m[SHARED_KEYS[(op, "conflicts")]] += units - ideal
            m[f"unetcu__shared_requests_op_{op}"] += req
        else:
            m[GLOBAL_KEYS[(op, "requests")]] += req
            m[GLOBAL_KEYS[(op, "sectors")]] += units
            ideal_sectors[op] += ideal
    for op in ("ld", "st"):
        m[f"unetcu__ideal_sectors_op_{op}"] = ideal_sectors[op]
    # compulsory bytes: per pointer argument; a sampled launch's weighted count is capped at its size
    # (sampled blocks' halos counted for their whole stratum overshoot it)
    grid_blocks = int(np.prod(grid))
    run_blocks = grid_blocks if weights is None else int(np.prod([sum(1 for x in w if x > 0) for w in weights]))
    read = sum(min(range_bytes[i], r) for i, (r, _) in ranges.items())
    written = sum(min(range_bytes[i], w) for i, (_, w) in ranges.items())
    m["unetcu__compulsory_bytes_read"] = read
    m["unetcu__compulsory_bytes_written"] = written
    if weights is None:  # exact counts are integers
        m = {k: int(round(v)) for k, v in m.items()}
    threads = int(np.prod(block))
    res = kernel_resources(kernel.source, kernel.options, kernel.filename) if kernel.source else "registers unknown"
    occ, regs, static = None, None, None
    if isinstance(res, dict) and kernel.name not in res and "<" in kernel.name:
        res = "registers unknown: ptxas reports template kernels under mangled names"
    if isinstance(res, dict) and kernel.name in res:
        rep = res[kernel.name]
        regs, static = rep.registers, rep.smem
        occ = occupancy_sm90(threads, regs, static, int(shared_mem))
        m[OCCUPANCY_KEY] = occ["pct"]
    else:
        m[OCCUPANCY_KEY] = None
    rec, flop = kernel.variant, None  # the op's Variant record (ops._core.kernel sets it), else None
    if rec is not None and rec.flops is not None:
        scalars = {n: int(a) for n, a in zip(kernel.params, args) if n and isinstance(a, np.integer)}
        flop = float(rec.flops(scalars))
    m["unetcu__flop"] = flop
    m.update(roofline(flop, m["unetcu__compulsory_bytes_read"] + m["unetcu__compulsory_bytes_written"]))
    # per source line (g++ may emit one line's access as several instructions: unrolled loops)
    where = {o: _relative(w) for o, w in symbolize(kernel.so, [s[0] for s in sites]).items()}
    lines: dict[tuple, dict] = {}
    for s, sh, wr, req, units, ideal in sites:
        unit = "wavefronts" if sh else "sectors"
        row = lines.setdefault((where[s], sh, wr), {"site": where[s], "space": "shared" if sh else "global",
                                                    "op": "st" if wr else "ld", "requests": 0.0, unit: 0.0, "ideal": 0.0})
        row["requests"] += req
        row[unit] += units
        row["ideal"] += ideal
    site_rows = sorted(lines.values(), key=lambda r: -(r.get("sectors", r.get("wavefronts")) - r["ideal"]))
    return {"kernel": kernel.name, "file": os.path.basename(kernel.filename or ""), "grid": list(grid), "block": list(block),
            "dynamic_shared_bytes": int(shared_mem), "registers": regs, "static_shared_bytes": static,
            "occupancy": occ if occ else (res if isinstance(res, str) else "kernel missing from ptxas's report"),
            "op": f"{rec.op} v{rec.number}" if rec else None, "precision": rec.precision if rec else "fp32",
            "grid_blocks": grid_blocks, "sampled_blocks": run_blocks if weights is not None else None,
            "metrics": m, "sites": site_rows}


def add(record: dict) -> None:
    with _lock:
        for c in _collectors:
            c.append(record)
        log = os.environ.get(LOG_ENV)
        if log:
            with open(log, "a") as f:
                f.write(json.dumps(record) + "\n")


class _Profiler(emu.Tool):
    def setting(self):
        return ENV if enabled() else None

    def build(self):
        return "profile"

    def begin(self, kernel, grid, block, shared_mem, args):
        # the global memory (the pointer arguments: their compulsory bytes are counted per range),
        # then which blocks run (all, or a sample of each grid dimension)
        ranges, _ = launch_ranges([a for a in args if isinstance(a, np.ndarray)])
        kernel.san_begin("profile", ranges)
        profiled = wanted(kernel.name)
        weights = sample_weights(grid, sample_size()) if profiled else None
        kernel.prof_begin(grid, weights)
        if not profiled:
            return None
        return grid, block, shared_mem, args, [hi - lo for lo, hi in zip(ranges[0::3], ranges[1::3])], weights

    def end(self, kernel, launch, rc):
        counts = kernel.prof_take() if launch is not None else ""
        kernel.san_take()  # ends the launch (a profile build records no hazards)
        if launch is not None and rc == 0:
            grid, block, shared_mem, args, range_bytes, weights = launch
            add(launch_record(kernel, grid, block, shared_mem, args, counts, range_bytes, weights))


emu.register_tool(_Profiler())


# ---- reading the records -------------------------------------------------------------------------
def per_request(m: dict, units: str, op: str, space: str = "global") -> float | None:
    if space == "global":
        req = m[GLOBAL_KEYS[(op, "requests")]]
        return m[GLOBAL_KEYS[(op, "sectors")]] / req if req else None
    req = m.get(f"unetcu__shared_requests_op_{op}", 0)
    return m[SHARED_KEYS[(op, units)]] / req if req else None


def _si(v) -> str:
    if v is None:
        return "-"
    for unit, f in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= f:
            return f"{v / f:.2f}{unit}"
    return f"{v:.0f}"


def table(records: list[dict], sites: int = 3) -> str:
    """A launch after another, as ncu's --page details prints them: a header line, the metrics, and
    the access sites that waste most (sectors or wavefronts beyond the ideal)."""
    out = []
    for r in records:
        m = r["metrics"]
        sampled = f", {r['sampled_blocks']} of {r['grid_blocks']} blocks sampled" if r["sampled_blocks"] else ""
        out.append(f"  {r['kernel']} ({', '.join(map(str, r['grid']))})x({', '.join(map(str, r['block']))}), "
                   f"{r['dynamic_shared_bytes']} B dynamic shared{sampled}{'  [' + r['op'] + ']' if r['op'] else ''}")
        rows = []
        for op, name in (("ld", "load"), ("st", "store")):
            req = m[GLOBAL_KEYS[(op, "requests")]]
            if req:
                ideal = m[f"unetcu__ideal_sectors_op_{op}"] / req
                rows.append((f"global {name}s: requests / sectors", f"{_si(req)} / {_si(m[GLOBAL_KEYS[(op, 'sectors')]])}",
                             f"{per_request(m, 'sectors', op):.2f} sectors/request (ideal {ideal:.2f})"))
            sreq = m.get(f"unetcu__shared_requests_op_{op}", 0)
            if sreq:
                rows.append((f"shared {name}s: wavefronts / bank conflicts",
                             f"{_si(m[SHARED_KEYS[(op, 'wavefronts')]])} / {_si(m[SHARED_KEYS[(op, 'conflicts')]])}",
                             f"{per_request(m, 'wavefronts', op, 'shared'):.2f} wavefronts/request"))
        rows.append(("compulsory bytes read / written",
                     f"{_si(m['unetcu__compulsory_bytes_read'])} / {_si(m['unetcu__compulsory_bytes_written'])}", ""))
        occ = r["occupancy"]
        if isinstance(occ, dict):
            rows.append(("theoretical occupancy (sm_90)", f"{occ['pct']:.1f} %",
                         f"{occ['blocks']} blocks/SM, limited by {occ['limiter']}; {r['registers']} registers, "
                         f"{r['static_shared_bytes']} B static shared"))
        else:
            rows.append(("theoretical occupancy (sm_90)", "-", occ))
        prec = r["precision"] if r["precision"] in ("fp32", "tf32") else "fp32"
        rows.append(("FLOP", _si(m["unetcu__flop"]), "op registry" if m["unetcu__flop"] is not None
                     else "not counted (not a compute op's kernel)"))
        rows.append((f"roofline bound H100 SXM / H200 ({prec})",
                     f"{m[f'unetcu__roofline_bound_us_h100_sxm_{prec}']:.2f} / {m[f'unetcu__roofline_bound_us_h200_{prec}']:.2f} us",
                     "a bound, not a time"))
        for name, val, note in rows:
            out.append(f"    {name:<46} {val:>20}  {note}")
        waste = [s for s in r["sites"] if s.get("sectors", s.get("wavefronts")) > s["ideal"] + 1e-9][:sites]
        for s in waste:
            unit = "sectors" if s["space"] == "global" else "wavefronts"
            out.append(f"    waste: {s['space']} {s['op']} at {s['site']}: {s[unit] / s['requests']:.2f} {unit}/request "
                       f"(ideal {s['ideal'] / s['requests']:.2f})")
    return "\n".join(out)


# ---- the front end ---------------------------------------------------------------------------------
def child_env(kernel: str | None, sample: int | None, log: str) -> dict:
    env = dict(os.environ, **{ENV: "1", LOG_ENV: log})
    env.pop(KERNEL_ENV, None)
    env.pop(SAMPLE_ENV, None)
    if kernel:
        env[KERNEL_ENV] = kernel
    if sample:
        env[SAMPLE_ENV] = str(sample)
    for k in ("UNETCU_SANITIZE", "UNETCU_EMU_SANITIZE"):  # one instrumentation at a time
        env.pop(k, None)
    return env


def run(cmd, kernel: str | None = None, json_path: str | None = None, sample: int | None = None, out=sys.stdout) -> int:
    """Run cmd under the profiler; print the table; write the records as JSON. Exit status: the
    command's (1 if it succeeded but launched no kernel that matched)."""
    if kernel:
        try:
            re.compile(kernel)
        except re.error as e:
            print(f"unetcu profile: --kernel {kernel!r} is not a regular expression: {e}", file=sys.stderr)
            return 2
    if shutil.which(cmd[0]) is None:
        print(f"unetcu profile: cannot run {cmd[0]!r}: not found or not executable", file=sys.stderr)
        return 127
    if json_path is not None:  # before the command runs: its records must have somewhere to go
        why = None
        if not json_path or os.path.isdir(json_path):
            why = "is a folder" if json_path else "is empty"
        else:
            try:
                with open(json_path + ".tmp", "w"):
                    pass
                os.unlink(json_path + ".tmp")
            except OSError as e:
                why = f"cannot be written ({e.strerror})"
        if why:
            print(f"unetcu profile: --json {json_path!r} {why}", file=sys.stderr)
            return 2
    fd, log = tempfile.mkstemp(prefix="unetcu-profile-", suffix=".jsonl")
    os.close(fd)
    try:
        print("==PROF== unetcu profile (CPU emulator: counts from the emulated accesses, no timing)", file=sys.stderr, flush=True)
        try:
            rc = subprocess.call(cmd, env=child_env(kernel, sample, log))
        except OSError as e:
            print(f"unetcu profile: cannot run {cmd[0]!r}: {e.strerror}", file=sys.stderr)
            return 127
        with open(log) as f:
            records = [json.loads(line) for line in f if line.strip()]
    finally:
        os.unlink(log)
    if records:
        print(table(records), file=out)
    if json_path:
        tmp = json_path + ".tmp"
        try:
            with open(tmp, "w") as f:
                json.dump({"launches": records, "sample": sample, "model": "unetcu emulator (kernels/emu/emu_profile.h)"},
                          f, indent=1)
            os.replace(tmp, json_path)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            print(f"unetcu profile: cannot write --json {json_path!r}: {e.strerror}", file=sys.stderr)
            return 1
    print(f"==PROF== {len(records)} kernel launch{'es' if len(records) != 1 else ''} profiled"
          + (f"; written to {json_path}" if json_path else ""), file=sys.stderr)
    if rc == 0 and not records:
        why = (f"no launch matched --kernel {kernel!r}" if kernel else
               "the command launched no emulated kernel (kernels run on the emulator with engine emu: UNETCU_ENGINE=emu)")
        print(f"unetcu profile: {why}", file=sys.stderr)
        return 1
    if rc < 0:
        print(f"unetcu profile: the command was killed by signal {-rc}", file=sys.stderr)
        return 128 - rc
    return rc
