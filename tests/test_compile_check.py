"""Every kernels/*.cu compiles for sm_90 with the runtime's own options, and ptxas reports each
kernel the emulator sees. Skipped, with the reason, only where no CUDA compiler exists."""
import io

import pytest

from unetcu.engines import compile_check, emu, runtime

COMPILER, WHY = compile_check.available_compiler()
needs_compiler = pytest.mark.skipif(COMPILER is None, reason=f"no CUDA compiler here: {WHY}")


@needs_compiler
def test_every_kernel_file_compiles_for_sm90():
    out = io.StringIO()
    reports = compile_check.check(arch="90", out=out)
    files = sorted(runtime.kernels_dir().glob("*.cu")) + sorted(runtime.kernels_dir().glob("examples/*.cu"))
    expected = {(f.name, k) for f in files for k in emu.kernel_names(f.read_text())}
    assert {(r.file, r.kernel) for r in reports} == expected
    for r in reports:
        assert r.arch == "sm_90" and r.registers > 0, r
    assert "kernels in" in out.getvalue()


@needs_compiler
def test_compile_check_reports_local_memory(tmp_path):
    # a 2000-float per-thread array cannot live in registers: ptxas must give it a stack frame
    src = tmp_path / "spill.cu"
    src.write_text(r'''
extern "C" __global__ void spiller(const float* x, float* y, int n) {
    float a[2000];
    for (int i = 0; i < 2000; ++i) a[i] = x[(i * 7 + threadIdx.x) % n];
    float s = 0.0f;
    for (int i = 0; i < 2000; ++i) s += a[(i * 13 + (int)s) % 2000];
    y[threadIdx.x] = s;
}''')
    r = compile_check.compile_file(src, COMPILER)
    assert [k.kernel for k in r] == ["spiller"]
    assert r[0].stack > 0


def test_parse_ptxas_log():
    log = """ptxas info    : Compiling entry function 'k1' for 'sm_90'
ptxas info    : Function properties for k1
ptxas         .     8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 2048 bytes smem
ptxas info    : Compiling entry function 'k2' for 'sm_90'
ptxas info    : Function properties for k2
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 12 registers, used 0 barriers
ptxas info    : Compiling entry function 'k3' for 'sm_90'
ptxas info    : Function properties for k3
    256 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 224 registers, used 1 barriers, 256 bytes cumulative stack size, 41984 bytes smem"""
    a, b, c = compile_check.parse_ptxas(log, "f.cu")
    assert (a.kernel, a.registers, a.stack, a.spill_stores, a.spill_loads, a.smem, a.spills) == ("k1", 40, 8, 4, 12, 2048, True)
    assert (b.kernel, b.registers, b.smem, b.spills) == ("k2", 12, 0, False)
    assert (c.kernel, c.registers, c.stack, c.smem, c.spills) == ("k3", 224, 256, 41984, False)


@needs_compiler
def test_default_variants_do_not_spill():
    from unetcu import ops
    reports = {r.kernel: r for r in compile_check.check(out=io.StringIO())}
    defaults = [name for op in ops.REGISTRY for prec in ops.PRECISIONS if ops.variants(op, prec)
                for name in ops.kernel_names(op, ops.default_variant(op, prec))]
    assert defaults and all(name in reports for name in defaults), set(defaults) - set(reports)
    spilling = [n for n in defaults if reports[n].spills]
    assert not spilling, spilling


def test_setup_ships_every_package_and_the_kernels():
    """A non-editable install must carry every unetcu subpackage and the .cu files."""
    import re
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    text = (root / "setup.py").read_text()
    listed = set(re.search(r"packages=\[([^\]]*)\]", text).group(1).replace('"', "").replace(" ", "").split(","))
    present = {".".join(p.parent.relative_to(root).parts) for p in (root / "unetcu").rglob("__init__.py")}
    assert present <= listed, present - listed
    assert '"unetcu.kernels": "kernels"' in text and '"*.cu"' in text
