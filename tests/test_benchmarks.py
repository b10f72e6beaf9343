"""The benchmark harness runs on the CPU (numpy engine, tiny shapes) and RESULTS.md is generated
from its JSON; the layer list is the paper network's."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np


ROOT = Path(__file__).resolve().parents[1]  # the benchmarks package runs from the checkout (python -m)


def test_layer_list_is_the_paper_network():
    from benchmarks.bench_kernels import conv_flops
    from unetcu import UNet
    layers = UNet(engine="numpy").layers(572)
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
    r = subprocess.run([sys.executable, "-m", "benchmarks.make_results", str(tmp_path), "--out", str(tmp_path / "RESULTS.md")],
                       capture_output=True, text=True, timeout=120, cwd=str(ROOT))
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "RESULTS.md").read_text()
    assert "not comparable with GPU figures" in text and "| conv3x3 |" in text


def test_profile_script_runs_on_the_emulator():
    """device_check.sh runs benchmarks/profile_conv.py under ncu; here its tiny emulator form."""
    r = subprocess.run([sys.executable, "-m", "benchmarks.profile_conv", "--engine", "emu"], capture_output=True, text=True,
                       timeout=300, cwd=str(ROOT))
    assert r.returncode == 0, r.stderr
    assert "fused concat" in r.stdout


def test_harness_agrees_with_torch_where_torch_is_installed():
    """bench_kernels' baselines (conv2d, conv2d_input, conv2d_weight, ...) compute what our ops
    compute: run its comparison code with PyTorch on the CPU (skipped where torch is absent, as in CI;
    on the GPU machine the same code runs against cuDNN)."""
    torch = __import__("pytest").importorskip("torch")
    from benchmarks import bench_kernels
    rows = bench_kernels.run("numpy", 44, 2, 4, 1, 1, torch)
    assert not [r for r in rows if "error" in r]
    checked = [r for r in rows if "check_rel_err" in r]
    assert len(checked) > 20 and all(r["check_rel_err"] <= (1e-4 if r["precision"] == "fp32" else 5e-3) for r in checked)


def test_peer_harness_trains_what_unetcu_train_trains_where_torch_is_installed(tmp_path):
    """The ablation measures recipes in the PyTorch peer harness on the claim that unetcu's recipe run
    there is unetcu's training: same initial weights, same tiles, same update, so the same losses
    step by step (dropout off: the two draw their masks differently). Skipped without torch (CI)."""
    import numpy as np
    import pytest
    torch = pytest.importorskip("torch")
    from benchmarks.peer import Recipe, train_peer
    from unetcu import UNet
    from unetcu.data import synthetic_dataset
    from unetcu.run import Run, TrainConfig
    from unetcu.train import train
    torch.set_num_threads(1)
    data = synthetic_dataset(3, (96, 96), seed=7)
    for i, recipe in enumerate((Recipe.unetcu(dropout=0.0, w0=10.0),
                                Recipe.unetcu(dropout=0.0, w0=10.0, optimizer="adam", clip=0.0, warmup=2, schedule="cosine"))):
        _, peer = train_peer(data, recipe, 6, 3, 8, 92, seed=3)
        m = UNet(depth=3, base_channels=8, dropout=0.0, engine="numpy", seed=3)
        cfg = TrainConfig(steps=6, tile=92, optimizer=recipe.optimizer, clip=recipe.clip, w0=10.0, seed=3,
                          warmup=recipe.warmup, schedule=recipe.schedule, out=str(tmp_path / f"run{i}"), ckpt_every=100)
        ours = [r["loss"] for r in train(Run.of(m, data, [], cfg), progress=False, log=lambda *a: None)]
        assert np.allclose(peer, ours, rtol=2e-5), (recipe.optimizer, peer, ours)
        assert len(set(np.round(ours, 3))) > 3  # the losses move: the comparison is not of six equal numbers


def test_quality_and_ablation_tables_give_mean_spread_and_paired_differences(tmp_path):
    """make_results renders quality.py's runs.jsonl (mean +- std over folds x seeds per arm, and each
    arm's paired difference from the peer, fold by fold) and ablation.py's runs.jsonl."""
    metrics = ("pixel_error", "pixel_error_fscore", "iou", "seg", "seg_watershed", "rand_error", "info_error")
    vals = {("unetcu", 0, 0): 0.2, ("unetcu", 0, 1): 0.4, ("unetcu", 1, 0): 0.1, ("unetcu", 1, 1): 0.3,
            ("peer", 0, 0): 0.5, ("peer", 0, 1): 0.5, ("peer", 1, 0): 0.2, ("peer", 1, 1): 0.2}
    runs = [dict(set="isbi2012", k=5, fold=f, seed=seed, arm=arm, preset="small", steps=9, engine="numpy", train_images=20,
                 test_images=5, train_seconds=10.0, predict_seconds_per_image=1.0, mean={m: v for m in metrics}, images={},
                 date="d", machine="m") for (arm, f, seed), v in vals.items()]
    (tmp_path / "quality").mkdir()
    (tmp_path / "quality" / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs))
    (tmp_path / "ablation").mkdir()
    rows = [dict(set="dic_hela", label="plain", seed=s, steps=9, preset="small", date="d", machine="m", diverged=False,
                 images={"a": dict(rand_error=v, info_error=v, pixel_error=v, iou=v, seg=v, seg_ws_prob=v, seg_ws_dist=v)})
            for s, v in enumerate((0.1, 0.3))]
    (tmp_path / "ablation" / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = subprocess.run([sys.executable, "-m", "benchmarks.make_results", str(tmp_path), "--out", str(tmp_path / "R.md")],
                       capture_output=True, text=True, cwd=str(ROOT))
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "R.md").read_text()
    assert "| unetcu | 4 | 10 | 0.250 +- 0.112 |" in text and "| peer | 4 | 10 | 0.350 +- 0.150 |" in text
    # unetcu - peer: fold 0 (-0.3, -0.1) -> -0.200, fold 1 (-0.1, +0.1) -> +0.000; all pairs -0.100 +- 0.141
    assert "| unetcu | rand_error | -0.200 | +0.000 | -0.100 +- 0.141 | 4 | within spread |" in text
    assert "| plain | 2 | 0.200 +- 0.100 |" in text


def test_large_benchmark_runs_and_its_section_is_generated(tmp_path):
    """bench_large.py at a toy size: both paths run, the block-wise result is compared with the
    in-memory one, and its RESULTS.md section is written (by itself and by make_results.py)."""
    __import__("pytest").importorskip("zarr")
    res = tmp_path / "RESULTS.md"
    res.write_text("# unetcu benchmark results\n\n## Other\n\nkept\n")
    r = subprocess.run([sys.executable, "-m", "benchmarks.bench_large", "--sizes", "157", "--blocks", "104", "--workers", "2",
                        "--tile", "92", "--json", str(tmp_path / "large.json"), "--results", str(res)],
                       capture_output=True, text=True, timeout=600, cwd=str(ROOT))
    assert r.returncode == 0, r.stderr
    runs = json.loads((tmp_path / "large.json").read_text())["runs"]
    assert [x["mode"] for x in runs] == ["memory", "blocks"] and runs[1]["n_blocks"] == 4
    assert runs[1]["max_diff"] <= 1e-5 and all(x["peak_rss_mb"] > 0 and x["mpx_s"] > 0 for x in runs)
    text = res.read_text()
    assert "## Other\n\nkept" in text and "| 157² | blocks (Dask) | 104 | 2 | 4 |" in text
    r = subprocess.run([sys.executable, "-m", "benchmarks.make_results", str(tmp_path), "--out", str(tmp_path / "R2.md")],
                       capture_output=True, text=True, timeout=120, cwd=str(ROOT))
    assert r.returncode == 0, r.stderr
    assert "Block-wise prediction of large images" in (tmp_path / "R2.md").read_text()


def test_the_case_table_covers_every_registered_op():
    """bench_kernels times every variant of every op in the registry: none is left out of CASES."""
    from benchmarks.bench_kernels import CASES
    from unetcu import ops
    assert {c.op for cases in CASES.values() for c in cases} == set(ops.REGISTRY)


def test_a_bad_engine_is_one_line_not_a_traceback(tmp_path):
    import os
    for which in ("kernels", "step"):
        r = subprocess.run([sys.executable, "-m", "unetcu.cli", "bench", which], capture_output=True, text=True,
                           timeout=120, cwd=str(tmp_path), env=dict(os.environ, UNETCU_ENGINE="bogus"))
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.strip().splitlines()[-1].endswith("unknown engine 'bogus' (UNETCU_ENGINE=bogus): choose one of "
                                                          "numpy, emu, cuda"), r.stderr


def test_cpu_benchmark_worker_and_breakdown_run_without_torch():
    """bench_cpu's unetcu side (one process per side) and its per-op breakdown, at the tiny preset."""
    r = subprocess.run([sys.executable, "-m", "benchmarks.bench_cpu", "--worker", "ours", "--presets", "tiny"],
                       capture_output=True, text=True, timeout=600, cwd=str(ROOT))
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["step_ms"] > 0 and res["forward_ms"] > 0
    from benchmarks.bench_cpu import breakdown
    bd = breakdown("tiny", reps=2)
    assert {"conv3x3_forward", "conv3x3_backward_weight", "softmax_xent"} <= set(bd["ops"])
    assert bd["step_cpu_ms"] > 0 and all(v >= 0 for k, v in bd["ops"].items() if not k.startswith("("))
    from benchmarks.bench_cpu import section
    row = dict(preset="tiny", ours_step_ms=res["step_ms"], torch_step_ms=2 * res["step_ms"], step_ratio=0.5,
               ours_forward_ms=res["forward_ms"], torch_forward_ms=res["forward_ms"], forward_ratio=1.0)
    text = "\n".join(section(dict(machine=dict(date="2026-12-06", machine="x86_64", cpus=2, blas="openblas"),
                                  steps=[row], breakdown=bd, end_to_end=[])))
    assert "| tiny |" in text and "0.50x" in text and "| conv3x3_forward |" in text


def test_bench_cpu_layers_are_the_networks_convolutions(monkeypatch):
    """--layers times the 3x3 convolutions the network runs: conv_layers(preset) is the list of (in, out
    channels, input size) of the forward pass's conv3x3 calls; the worker times each in 3 directions."""
    import unetcu.model as M
    from benchmarks.bench_cpu import PRESETS, conv_layers, section
    from unetcu import UNet
    seen, real = [], M.ops

    class Spy:
        def __getattr__(self, name):
            f = getattr(real, name)
            if name == "conv3x3_forward":
                return lambda x, w, *a, **k: seen.append((x.shape[1], w.shape[0], x.shape[2])) or f(x, w, *a, **k)
            if name == "conv3x3_forward_concat":
                return lambda s, u, w, *a, **k: seen.append((w.shape[1], w.shape[0], u.shape[2])) or f(s, u, w, *a, **k)
            return f
    monkeypatch.setattr(M, "ops", Spy())
    depth, base, tile = PRESETS["tiny"]
    UNet(depth=depth, base_channels=base, engine="numpy", seed=0).forward(np.ones((1, 1, tile, tile), np.float32))
    assert seen == conv_layers("tiny")
    r = subprocess.run([sys.executable, "-m", "benchmarks.bench_cpu", "--worker", "layers-ours", "--presets", "tiny"],
                       capture_output=True, text=True, timeout=600, cwd=str(ROOT))
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout.strip().splitlines()[-1])
    assert [tuple(x[:3]) for x in rows] == conv_layers("tiny") and all(t > 0 for x in rows for t in x[3:])
    layers = [dict(cin=x[0], cout=x[1], size=x[2], ours_ms=x[3:], torch_ms=[2 * t for t in x[3:]]) for x in rows]
    text = "\n".join(section(dict(machine=dict(date="d", machine="m", cpus=2, blas="b"), steps=[],
                                  breakdown=dict(step_cpu_ms=1.0, ops={}), layers=layers, end_to_end=[])))
    assert f"| 1 -> 8, {tile} |" in text and text.count("(0.50x)") == 3 * (len(rows) + 1)


def test_quality_folds_partition_each_set_and_arms_are_checked():
    """k-fold: every image is tested exactly once over the folds and never trained on in its own
    fold; DIC-HeLa's partly annotated frame 067 is in neither; an arm names real fields."""
    import pytest
    from benchmarks.quality import FOLDS, parse_arm, split
    from unetcu.data import Sample
    for name, n in (("isbi2012", 25), ("dic_hela", 9), ("dsb2018_fluo", 260)):
        names = [f"01_t{i:03d}" if name == "dic_hela" else f"{i:03d}" for i in (list(range(60, 69)) if name == "dic_hela" else range(n))]
        samples = [Sample(None, None, s) for s in names]
        tested = []
        for f in range(FOLDS[name]):
            tr, te = split(name, samples, f)
            assert te and not {s.name for s in tr} & {s.name for s in te}
            tested += [s.name for s in te]
        use = [s for s in names if not (name == "dic_hela" and s.endswith("067"))]
        assert sorted(tested) == sorted(use)
        with pytest.raises(ValueError, match="folds"):
            split(name, samples, FOLDS[name])
    assert parse_arm("unetcu:augment=flips,w0=0,border=off") == ("unetcu", dict(augment="flips", w0=0.0, border="off"))
    if __import__("importlib").util.find_spec("torch"):  # the peer's Recipe lives beside its PyTorch code
        assert parse_arm("peer:lr=3e-4") == ("peer", dict(lr=3e-4))
        with pytest.raises(ValueError, match="arm"):
            parse_arm("peer:w0")
    for bad in ("unetcu:steps=5", "unetcu:nonsense=1", "unetcu:w0", "nnunet"):
        with pytest.raises(ValueError, match="arm"):
            parse_arm(bad)


def test_own_sampler_windows_cover_the_image_with_their_labels_where_torch_is_installed():
    """The peer's own sampler: the label window is the centre of the image window (the halo comes
    from the reflect padding), every output pixel is reachable, and the 8 rotations/flips occur."""
    import numpy as np
    import pytest
    pytest.importorskip("torch")
    from benchmarks.peer import OwnSampler
    from unetcu.data import Sample
    rng = np.random.default_rng(0)
    img = rng.standard_normal((41, 37)).astype(np.float32)
    lab = (rng.random((41, 37)) > 0.7).astype(np.int32)
    s = Sample(img, lab, "r")
    sampler = OwnSampler([s], 28, 12)
    seen, orient = np.zeros_like(lab), set()
    padded = np.pad(img, 8, mode="reflect")
    for _ in range(3000):
        x, y = sampler(rng)
        assert x.shape == (1, 1, 28, 28) and y.shape == (1, 12, 12)
        # find the window: the label window's pixels equal the image window's centre in some orientation
        for k in range(4):
            for flip in (False, True):
                cx = np.rot90(x[0, 0], -k) if not flip else np.rot90(x[0, 0][:, ::-1], -k)
                cy = np.rot90(y[0], -k) if not flip else np.rot90(y[0][:, ::-1], -k)
                hits = [(i, j) for i in range(41 - 11) for j in range(37 - 11)
                        if np.array_equal(padded[i:i + 28, j:j + 28], cx) and np.array_equal(lab[i:i + 12, j:j + 12], cy)]
                if hits:
                    orient.add((k, flip))
                    seen[hits[0][0]:hits[0][0] + 12, hits[0][1]:hits[0][1] + 12] = 1
                    break
            else:
                continue
            break
        else:
            raise AssertionError("a window that is no window of the image with its labels")
    assert seen.all() and len(orient) >= 4  # (a rotation by 180 equals both flips: 8 draws, some the same)
    w = sampler.class_weights
    assert np.isclose((w * np.bincount(lab.ravel())).sum(), lab.size)  # N / (K n_c): each class weighs N / K
