"""unetcu profile: Nsight Compute's memory counters, occupancy and roofline bounds from the
emulator. The planted patterns (tests/profile_planted.py) have known counts; every one is checked
through the command line, as a user runs it."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from unetcu.engines import profile

HERE = Path(__file__).parent
LD, LD_SEC = profile.GLOBAL_KEYS[("ld", "requests")], profile.GLOBAL_KEYS[("ld", "sectors")]
SH_WF, SH_BC = profile.SHARED_KEYS[("ld", "wavefronts")], profile.SHARED_KEYS[("ld", "conflicts")]


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "unetcu.cli", "profile", *args], capture_output=True, text=True,
                          env=env)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    out = tmp_path_factory.mktemp("profile") / "planted.json"
    r = _cli("--json", str(out), "--", sys.executable, str(HERE / "profile_planted.py"))
    assert r.returncode == 0, r.stderr
    return json.loads(out.read_text())["launches"], r.stdout


def _sectors_per_request(launch, op="ld"):
    m = launch["metrics"]
    return m[profile.GLOBAL_KEYS[(op, "sectors")]] / m[profile.GLOBAL_KEYS[(op, "requests")]]


def test_global_coalescing_exact(planted):
    launches, _ = planted
    stride = [l for l in launches if l["kernel"] == "load_stride"]
    # 2 blocks of one warp: 2 load requests each launch; 4, 8, 32 sectors per request for strides 1, 2, 32
    for launch, want in zip(stride, (4, 8, 32)):
        m = launch["metrics"]
        assert m[LD] == 2 and m[LD_SEC] == 2 * want
        assert m[profile.GLOBAL_KEYS[("st", "sectors")]] == 8  # the stores stay coalesced
        assert m["unetcu__compulsory_bytes_read"] == 256 and m["unetcu__compulsory_bytes_written"] == 256
    f4 = next(l for l in launches if l["kernel"] == "load_float4")
    assert _sectors_per_request(f4) == 16 and _sectors_per_request(f4, "st") == 16
    assert f4["metrics"][LD] == 2


def test_partial_warps_and_divergent_lanes(planted):
    launches, _ = planted
    # 3 blocks of 48 threads over 100 elements: warps of 32, 16 | 32, 16 | 4 lanes, and one with none
    part = [l for l in launches if l["kernel"] == "load_stride"][3]
    m = part["metrics"]
    assert part["block"] == [48, 1, 1]
    assert m[LD] == 5 and m[LD_SEC] == 4 + 2 + 4 + 2 + 1
    assert m["unetcu__compulsory_bytes_read"] == 400
    # every other lane: one request of 16 lanes spanning 128 bytes, whose 64 would fit 2 sectors
    div = next(l for l in launches if l["kernel"] == "divergent")["metrics"]
    assert div[LD] == 1 and div[LD_SEC] == 4 and div["unetcu__ideal_sectors_op_ld"] == 2


def test_shared_bank_conflicts_exact(planted):
    launches, _ = planted
    column, padded, broadcast = [l["metrics"] for l in launches if l["kernel"] == "shared_tile"]
    for m in (column, padded, broadcast):  # 32 row stores of one wavefront each, no conflict
        assert m[profile.SHARED_KEYS[("st", "wavefronts")]] == 32 and m[profile.SHARED_KEYS[("st", "conflicts")]] == 0
        assert m["unetcu__shared_requests_op_ld"] == 32
    assert column[SH_WF] == 32 * 32 and column[SH_BC] == 32 * 31  # 32-way: 31 extra wavefronts per request
    assert padded[SH_WF] == 32 and padded[SH_BC] == 0
    assert broadcast[SH_WF] == 32 and broadcast[SH_BC] == 0


def test_shared_vector_phases(planted):
    """float2 reads by half-warps (2 wavefronts), float4 by quarter-warps (4), no conflict."""
    launches, _ = planted
    vec = next(l for l in launches if l["kernel"] == "shared_vec")
    reads = sorted((s["site"], s["wavefronts"] / s["requests"]) for s in vec["sites"] if s["space"] == "shared" and s["op"] == "ld")
    assert [w for _, w in reads] == [2.0, 4.0], reads
    assert vec["metrics"][SH_BC] == 0


def test_wide_copies_and_a_freed_dynamic_buffer(planted):
    launches, _ = planted
    wide = next(l for l in launches if l["kernel"] == "copy_struct")["metrics"]
    # two 16-byte pieces, each a request of 32 lanes 32 bytes apart: a sector per lane, half of it used
    assert wide[LD] == 2 and wide[LD_SEC] == 2 * 32 and wide["unetcu__ideal_sectors_op_ld"] == 2 * 16
    assert wide[profile.GLOBAL_KEYS[("st", "requests")]] == 2
    dyn = next(l for l in launches if l["kernel"] == "dynamic_shared")
    assert dyn["dynamic_shared_bytes"] == 40000 and dyn["metrics"]["unetcu__shared_requests_op_ld"] == 1
    # the launch after it: 10000 floats, 40 blocks of 256: all global, every byte counted
    after = [l for l in launches if l["kernel"] == "load_stride" and l["grid"] == [40, 1, 1]][0]["metrics"]
    assert after[LD] == -(-10000 // 32) and after["unetcu__shared_requests_op_ld"] == 0
    assert after["unetcu__compulsory_bytes_read"] == 40000 and after["unetcu__compulsory_bytes_written"] == 40000


def test_gemm_example(planted):
    """The README's example: 64^3, blocks of 32x32 threads."""
    launches, _ = planted
    naive = next(l for l in launches if l["kernel"] == "gemm_naive")
    tiled = next(l for l in launches if l["kernel"] == "gemm_tiled")["metrics"]
    m = naive["metrics"]
    # 4 blocks x 32 warps x 64 k: A's request 32 sectors (rows 256 bytes apart), B's a broadcast (1)
    assert m[LD] == 4 * 32 * 64 * 2 and m[LD_SEC] == 4 * 32 * 64 * (32 + 1)
    a_line = next(s for s in naive["sites"] if s["op"] == "ld" and s["sectors"] == 32 * s["requests"])
    assert a_line["ideal"] == 4 * a_line["requests"]
    assert tiled[LD] == 4 * 32 * 2 * 2 and tiled[LD_SEC] == 4 * tiled[LD]  # coalesced tile loads
    assert tiled[SH_WF] == 4 * 32 * 2 * 32 * 2 and tiled[SH_BC] == 0  # As[ty][k] broadcast, Bs[k][tx] a row
    assert tiled["unetcu__compulsory_bytes_read"] == 2 * 64 * 64 * 4


def test_table_names_the_wasteful_line(planted):
    _, table = planted
    assert "waste: global ld at planted.cu:4 in load_stride: 32.00 sectors/request (ideal 4.00)" in table
    assert "planted.cu:18 in shared_tile: 32.00 wavefronts/request (ideal 1.00)" in table
    assert "a bound, not a time" in table


def _occupancy_header():
    for d in [os.environ.get("CUDA_PATH", ""), "/usr/local/cuda", *sorted(Path("/usr/local").glob("cuda-*"))]:
        if d and (Path(d) / "include" / "cuda_occupancy.h").is_file():
            return Path(d) / "include"
    for p in map(Path, sys.path):
        for h in p.glob("nvidia/*/include/cuda_occupancy.h"):
            return h.parent
    return None


OCC_MAIN = r'''
#include <cstdio>
#include "cuda_occupancy.h"
int main() {
    cudaOccDeviceProp p;  // H100 / H200: compute capability 9.0
    p.computeMajor = 9; p.computeMinor = 0; p.maxThreadsPerBlock = 1024; p.maxThreadsPerMultiprocessor = 2048;
    p.regsPerBlock = 65536; p.regsPerMultiprocessor = 65536; p.warpSize = 32; p.sharedMemPerBlock = 49152;
    p.sharedMemPerMultiprocessor = 233472; p.numSms = 132; p.sharedMemPerBlockOptin = 232448;
    p.reservedSharedMemPerBlock = 1024;
    int threads, regs, smem, dyn;
    while (scanf("%d %d %d %d", &threads, &regs, &smem, &dyn) == 4) {
        cudaOccFuncAttributes a;
        a.maxThreadsPerBlock = 1024; a.numRegs = regs; a.sharedSizeBytes = smem;
        a.partitionedGCConfig = PARTITIONED_GC_OFF;
        bool optin = smem + dyn > 49152;  // the kernel opted in (cudaFuncSetAttribute), else the launch fails
        a.shmemLimitConfig = optin ? FUNC_SHMEM_LIMIT_OPTIN : FUNC_SHMEM_LIMIT_DEFAULT;
        a.maxDynamicSharedSizeBytes = optin ? 232448 - smem : 49152 - smem;
        a.numBlockBarriers = 1;
        cudaOccDeviceState st;
        cudaOccResult r;
        printf("%d\n", cudaOccMaxActiveBlocksPerMultiprocessor(&r, &p, &a, &st, threads, dyn) == CUDA_OCC_SUCCESS
                       ? r.activeBlocksPerMultiprocessor : -1);
    }
}
'''


@pytest.mark.skipif(_occupancy_header() is None or shutil.which("g++") is None,
                    reason="no cuda_occupancy.h (CUDA toolkit or an nvidia-*-cu13 wheel) to compare with")
def test_occupancy_equals_cuda_occupancy_header(tmp_path):
    """occupancy_sm90 against CUDA's own calculator (cuda_occupancy.h, what
    cudaOccupancyMaxActiveBlocksPerMultiprocessor computes) over block sizes, registers and shared memory."""
    (tmp_path / "occ.cpp").write_text(OCC_MAIN)
    subprocess.run(["g++", "-std=c++17", "-I", str(_occupancy_header()), str(tmp_path / "occ.cpp"), "-o", str(tmp_path / "occ")],
                   check=True)
    rng = np.random.default_rng(1)
    cases = [(256, 128, 33792, 0), (256, 64, 0, 0), (1024, 64, 0, 0), (32, 8, 0, 0), (64, 255, 0, 100000),
             (256, 40, 16384, 65536), (96, 33, 100, 227 * 1024 - 100), (1000, 65, 0, 0), (256, 32, 32768, 20480)]
    for _ in range(300):
        threads = int(rng.integers(1, 1025))
        smem = int(rng.choice([0, int(rng.integers(0, 48 * 1024))]))
        dyn = int(rng.choice([0, int(rng.integers(0, 48 * 1024 - smem + 1)), int(rng.integers(0, 227 * 1024 - smem))]))
        cases.append((threads, int(rng.integers(1, 256)), smem, dyn))
    r = subprocess.run([str(tmp_path / "occ")], input="".join(f"{c[0]} {c[1]} {c[2]} {c[3]}\n" for c in cases),
                       capture_output=True, text=True, check=True)
    theirs = [int(v) for v in r.stdout.split()]
    ours = [profile.occupancy_sm90(*c)["blocks"] for c in cases]
    bad = [(c, o, t) for c, o, t in zip(cases, ours, theirs) if o != t]
    assert not bad, bad[:5]
    assert len(set(theirs)) > 5  # the cases reach several limits


def test_occupancy_limiters():
    assert profile.occupancy_sm90(256, 128, 0, 0) == {"blocks": 2, "warps": 16, "pct": 25.0, "limiter": "registers"}
    assert profile.occupancy_sm90(256, 32, 0, 0)["limiter"] == "warps"
    assert profile.occupancy_sm90(128, 32, 100 * 1024, 0)["limiter"] == "shared memory"
    assert profile.occupancy_sm90(32, 16, 0, 0) == {"blocks": 32, "warps": 32, "pct": 50.0, "limiter": "blocks"}


def test_sample_weights_stand_for_the_grid():
    assert profile.sample_weights((10, 3, 1), None) is None
    assert profile.sample_weights((4, 4, 1), 4) is None
    w = profile.sample_weights((100, 3, 1), 5)
    assert sum(w[0]) == pytest.approx(100) and w[0][0] == 1 and w[0][99] == 1
    assert sum(1 for x in w[0] if x > 0) == 5 and w[1] == [1.0, 1.0, 1.0]


OP_SCRIPT = r'''
import json, sys
import numpy as np
from unetcu import ops
from unetcu.engines import profile
rng = np.random.default_rng(0)
x = rng.standard_normal((1, 8, 42, 42)).astype(np.float32)
w = (rng.standard_normal((16, 8, 3, 3)) * 0.1).astype(np.float32)
b = rng.standard_normal(16).astype(np.float32)
with profile.collect() as got:
    y = ops.conv3x3_forward(x, w, b, engine="emu", variant=3, tile=(64, 64))
json.dump(got, open(sys.argv[1], "w"))
'''


def _op_record(tmp_path, sample):
    script = tmp_path / "op.py"
    script.write_text(OP_SCRIPT)
    env = dict(os.environ, **{profile.ENV: "1"})
    if sample:
        env[profile.SAMPLE_ENV] = str(sample)
    subprocess.run([sys.executable, str(script), str(tmp_path / f"r{sample}.json")], env=env, check=True)
    (rec,) = json.loads((tmp_path / f"r{sample}.json").read_text())
    return rec


def test_op_launch_flops_roofline_and_sample(tmp_path):
    """An op's launch: FLOPs from the registry's formula, the roofline bound from them and the
    compulsory bytes; a sample of 5 of the grid's 25 blocks gives the full grid's counts within
    2 % (the blocks differ only in how their pixel rows meet the sectors)."""
    full = _op_record(tmp_path, None)
    m = full["metrics"]
    assert full["op"] == "conv3x3_forward v3" and full["grid"] == [25, 1, 1] and full["sampled_blocks"] is None
    assert m["unetcu__flop"] == 2.0 * 16 * 8 * 9 * 40 * 40
    assert m["unetcu__compulsory_bytes_read"] == 4 * (8 * 42 * 42 + 16 * 8 * 9 + 16)  # every byte of x, w, b
    assert m["unetcu__compulsory_bytes_written"] == 4 * 16 * 40 * 40
    peak = profile.GPUS["h200"]
    bound = max(m["unetcu__flop"] / peak["fp32"],
                (m["unetcu__compulsory_bytes_read"] + m["unetcu__compulsory_bytes_written"]) / peak["bandwidth"])
    assert m["unetcu__roofline_bound_us_h200_fp32"] == pytest.approx(1e6 * bound)
    assert isinstance(full["occupancy"], dict) and 0 < m[profile.OCCUPANCY_KEY] <= 100
    assert full["registers"] > 0
    part = _op_record(tmp_path, 5)
    assert part["sampled_blocks"] == 5 and part["grid_blocks"] == 25
    s = part["metrics"]
    for key in (LD, LD_SEC, SH_WF, profile.GLOBAL_KEYS[("st", "sectors")], "unetcu__compulsory_bytes_read",
                "unetcu__compulsory_bytes_written"):
        assert s[key] == pytest.approx(m[key], rel=0.02), key
    assert s[SH_WF] > 0 and s[LD] > 0


def test_refusals(tmp_path):
    r = _cli("--", "no_such_command_xyz")
    assert r.returncode == 127 and "cannot run 'no_such_command_xyz'" in r.stderr
    r = _cli("--kernel", "(", "--", sys.executable, "-c", "pass")
    assert r.returncode == 2 and "not a regular expression" in r.stderr
    r = _cli("--sample", "2", "--", sys.executable, "-c", "pass")
    assert r.returncode == 2 and "at least 3" in r.stderr
    r = _cli("--json", str(tmp_path / "no" / "p.json"), "--", sys.executable, "-c", "pass")
    assert r.returncode == 2 and "does not exist" in r.stderr
    for bad in (str(tmp_path), ""):  # a folder, nothing: refused before the command runs
        r = _cli("--json", bad, "--", sys.executable, "-c", f"open({str(tmp_path / 'ran')!r}, 'w')")
        assert r.returncode == 2 and "--json" in r.stderr and not (tmp_path / "ran").exists()
    r = _cli()
    assert r.returncode == 2
    # a command that launches nothing is said, with exit 1 (a profile of nothing is not a success)
    r = _cli("--", sys.executable, "-c", "pass")
    assert r.returncode == 1 and "launched no emulated kernel" in r.stderr
    r = _cli("--kernel", "no_such_kernel", "--", sys.executable, str(HERE / "profile_planted.py"))
    assert r.returncode == 1 and "no launch matched --kernel 'no_such_kernel'" in r.stderr
    # the command's own failure is its exit status
    r = _cli("--", sys.executable, "-c", "raise SystemExit(3)")
    assert r.returncode == 3


def test_compare_ncu_reads_ncu_csv(tmp_path, capsys):
    """The device check's comparison: ncu's --csv rows (one per launch and metric) against the
    emulator's JSON, launch by launch."""
    from benchmarks import compare_ncu
    head = '"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size",' \
           '"Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"\n'
    rows = "".join(f'"{i}","1","python3","h","{k}","1","7","(32, 1, 1)","(2, 1, 1)","0","9.0","Command line profiler '
                   f'metrics","{LD_SEC}","sector","{v}"\n' for i, (k, v) in enumerate([("load_stride", "8"), ("load_stride", "1,600")]))
    (tmp_path / "ncu.csv").write_text("==PROF== Connected to process 1\n" + head + rows)
    emu = {"launches": [{"kernel": "load_stride", "metrics": {LD_SEC: 8}}, {"kernel": "load_stride", "metrics": {LD_SEC: 16}}]}
    (tmp_path / "emu.json").write_text(json.dumps(emu))
    assert compare_ncu.main([str(tmp_path / "emu.json"), str(tmp_path / "ncu.csv")]) == 0
    out = capsys.readouterr().out
    assert "1.000" in out and "0.010" in out  # 8 vs 8; 16 vs 1600
    emu["launches"][1]["kernel"] = "other"
    (tmp_path / "emu.json").write_text(json.dumps(emu))
    assert compare_ncu.main([str(tmp_path / "emu.json"), str(tmp_path / "ncu.csv")]) == 1


def test_readme_example_is_the_real_output(planted):
    """The README quotes `unetcu profile --kernel gemm -- python tests/profile_planted.py` line by
    line (the planted run prints the same launches among the others)."""
    _, table = planted
    text = (HERE.parent / "README.md").read_text()
    start = text.index("$ unetcu profile --kernel gemm -- python tests/profile_planted.py\n")
    block = text[text.index("\n", start) + 1:text.index("```", start)].splitlines()
    assert len(block) > 10
    missing = [line for line in block if line not in table.splitlines()]
    assert not missing, missing
