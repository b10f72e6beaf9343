"""The benchmark harness runs on the CPU (numpy engine, tiny shapes) and RESULTS.md is generated
from its JSON; the layer list is the paper network's."""
import json
import subprocess
import sys
from pathlib import Path


BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))


def test_layer_list_is_the_paper_network():
    from common import conv_flops, unet_layers
    layers = unet_layers()
    convs = [l for l in layers if l["op"] == "conv3x3"]
    assert len(convs) == 18 and sum(l["op"] == "upconv2x2" for l in layers) == 4
    assert (convs[0]["C"], convs[0]["H"], convs[0]["K"]) == (1, 572, 64)
    assert (convs[-1]["C"], convs[-1]["H"], convs[-1]["K"]) == (64, 390, 64)
    assert [l for l in layers if l["op"] == "crop_concat"][-1]["Hs"] == 568
    # the forward pass is 300.9 GFLOP: 289.6 in the 3x3 convs, 11.3 in the up-convs, 0.04 in the head
    ups = [l for l in layers if l["op"] == "upconv2x2"]
    head = layers[-2]
    total = (sum(conv_flops(l) for l in convs) + sum(2.0 * l["C"] * l["K"] * 4 * l["H"] * l["W"] for l in ups)
             + 2.0 * head["C"] * head["K"] * head["H"] * head["W"])
    assert abs(total - 300.9e9) < 0.1e9


def test_harness_runs_on_cpu_and_results_are_generated(tmp_path):
    r = subprocess.run([sys.executable, "-m", "unetcu.cli", "bench", "kernels", "--engine", "numpy",
                        "--json", str(tmp_path / "kernels.json")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "CPU timings" in r.stdout
    k = json.loads((tmp_path / "kernels.json").read_text())
    assert {row["op"] for row in k["rows"]} >= {"conv3x3", "maxpool2x2", "upconv2x2", "crop_concat", "conv1x1", "softmax_xent", "sgd"}
    assert all("ms" in row and row["ms"] > 0 for row in k["rows"])
    r = subprocess.run([sys.executable, str(BENCH / "make_results.py"), str(tmp_path), "--out", str(tmp_path / "RESULTS.md")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "RESULTS.md").read_text()
    assert "not comparable with GPU figures" in text and "| conv3x3 |" in text


def test_profile_script_runs_on_the_emulator():
    """device_check.sh runs benchmarks/profile_conv.py under ncu; here its tiny emulator form."""
    r = subprocess.run([sys.executable, str(BENCH / "profile_conv.py"), "--engine", "emu"], capture_output=True, text=True,
                       timeout=300, cwd=str(BENCH.parent))
    assert r.returncode == 0, r.stderr
    assert "fused concat" in r.stdout


def test_harness_agrees_with_torch_where_torch_is_installed():
    """bench_kernels' baselines (conv2d, conv2d_input, conv2d_weight, ...) compute what our ops
    compute: run its comparison code with PyTorch on the CPU (skipped where torch is absent, as in CI;
    on the GPU machine the same code runs against cuDNN)."""
    torch = __import__("pytest").importorskip("torch")
    import bench_kernels
    rows = bench_kernels.run("numpy", 44, 2, 4, 1, 1, torch)
    assert not [r for r in rows if "error" in r]
    checked = [r for r in rows if "check_rel_err" in r]
    assert len(checked) > 20 and all(r["check_rel_err"] <= (1e-4 if r["precision"] == "fp32" else 5e-3) for r in checked)


def test_large_benchmark_runs_and_its_section_is_generated(tmp_path):
    """bench_large.py at a toy size: both paths run, the block-wise result is compared with the
    in-memory one, and its RESULTS.md section is written (by itself and by make_results.py)."""
    __import__("pytest").importorskip("zarr")
    res = tmp_path / "RESULTS.md"
    res.write_text("# unetcu benchmark results\n\n## Other\n\nkept\n")
    r = subprocess.run([sys.executable, str(BENCH / "bench_large.py"), "--sizes", "157", "--blocks", "104", "--workers", "2",
                        "--tile", "92", "--json", str(tmp_path / "large.json"), "--results", str(res)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    runs = json.loads((tmp_path / "large.json").read_text())["runs"]
    assert [x["mode"] for x in runs] == ["memory", "blocks"] and runs[1]["n_blocks"] == 4
    assert runs[1]["max_diff"] <= 1e-5 and all(x["peak_rss_mb"] > 0 and x["mpx_s"] > 0 for x in runs)
    text = res.read_text()
    assert "## Other\n\nkept" in text and "| 157² | blocks (Dask) | 104 | 2 | 4 |" in text
    r = subprocess.run([sys.executable, str(BENCH / "make_results.py"), str(tmp_path), "--out", str(tmp_path / "R2.md")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Block-wise prediction of large images" in (tmp_path / "R2.md").read_text()
