"""CPU benchmark: unetcu's numpy engine against PyTorch on the CPU (oneDNN), each side in a process of
its own (in one process OpenBLAS's spinning threads slow PyTorch and flatter unetcu), alternating
sides over several rounds, the median of each side's rounds reported with the ratio ours / PyTorch.

    python -m benchmarks.bench_cpu [--presets tiny small] [--rounds 3] [--layers] [--e2e 300] [--data DIR] [--json FILE]

Per step (batch 1, the preset's tile): forward, and forward + loss + backward (the training step's
gradient work, no optimizer), the identical network on both sides (benchmarks/torch_unet.py).
A breakdown of unetcu's step by op (process CPU time). With --layers: each 3x3 convolution of the small
preset in its three directions against PyTorch's (where the step's time goes). With --e2e N: end to end, `unetcu train`
(defaults: Adam, cosine, weight maps) against the peer (benchmarks/peer.py: the same tiles from
unetcu's pipeline, PyTorch's step) for N steps of the small preset, with the elastic warp and with
flips only, each a fresh process timed from start to exit. Needs torch importable here.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks.common import cpu_median_ms, machine_info

PRESETS = {"tiny": (3, 8, 92), "small": (4, 16, 188), "paper": (5, 64, 572)}


def _median_ms(fn):
    return cpu_median_ms(fn, warmup=2, reps=7)


def _inputs(preset):
    from unetcu.model import output_size
    depth, base, tile = PRESETS[preset]
    o = output_size(tile, depth)
    rng = np.random.default_rng(0)
    return (depth, base, tile, rng.standard_normal((1, 1, tile, tile)).astype(np.float32),
            rng.integers(0, 2, (1, o, o)).astype(np.int32), rng.uniform(1, 5, (1, o, o)).astype(np.float32))


def worker_ours(preset):
    from unetcu import UNet
    depth, base, _, x, lab, wt = _inputs(preset)
    m = UNet(depth=depth, base_channels=base, engine="numpy", seed=0)
    return dict(step_ms=_median_ms(lambda: m.loss_and_grads(x, lab, wt, dropout_seed=1)),
                forward_ms=_median_ms(lambda: m.forward(x)))


def worker_torch(preset):
    import torch
    from benchmarks.torch_unet import TorchUNet, weighted_xent
    depth, base, _, x, lab, wt = _inputs(preset)
    torch.manual_seed(0)
    net = TorchUNet(depth=depth, base=base)
    x, lab, wt = torch.from_numpy(x), torch.from_numpy(lab).long(), torch.from_numpy(wt)

    def step():
        net.zero_grad(set_to_none=True)
        weighted_xent(net(x), lab, wt).backward()

    res = dict(step_ms=_median_ms(step))
    net.eval()
    with torch.no_grad():
        res["forward_ms"] = _median_ms(lambda: net(x))
    res["threads"] = torch.get_num_threads()
    return res


def conv_layers(preset):
    """The 3x3 convolutions of a preset's network, in order: (input channels, output channels, input size)."""
    from unetcu import UNet
    depth, base, tile = PRESETS[preset]
    layers = UNet(depth=depth, base_channels=base, engine="numpy").layers(tile)
    return [(l["C"], l["K"], l["H"]) for l in layers if l["op"] == "conv3x3"]


def worker_layers(side, preset):
    """Median wall ms of each 3x3 convolution of the preset in its three directions (forward, backward-data,
    backward-weight), no ReLU: [(cin, cout, size, fwd, data, weight), ...]."""
    rng = np.random.default_rng(0)
    rows = []
    for cin, cout, s in conv_layers(preset):
        x = rng.standard_normal((1, cin, s, s)).astype(np.float32)
        w = (rng.standard_normal((cout, cin, 3, 3)) / np.sqrt(9 * cin)).astype(np.float32)
        b = np.zeros(cout, np.float32)
        dy = rng.standard_normal((1, cout, s - 2, s - 2)).astype(np.float32)
        if side == "ours":
            from unetcu import cpu
            fns = (lambda: cpu.conv3x3_forward(x, w, b, relu=False), lambda: cpu.conv3x3_backward_data(dy, w),
                   lambda: cpu.conv3x3_backward_weight(dy, x))
        else:
            import torch
            X, W, B, DY = map(torch.from_numpy, (x, w, b, dy))
            conv_bwd = torch.ops.aten.convolution_backward
            args = (DY, X, W, [cout], [1, 1], [0, 0], [1, 1], False, [0, 0], 1)
            fns = (lambda: torch.nn.functional.conv2d(X, W, B), lambda: conv_bwd(*args, [True, False, False]),
                   lambda: conv_bwd(*args, [False, True, True]))
        rows.append((cin, cout, s, *(cpu_median_ms(f, warmup=2, reps=11) for f in fns)))
    return rows


def breakdown(preset, reps=10):
    """Process CPU ms per op of unetcu's step (the model's calls into unetcu.ops, wrapped)."""
    import collections
    import unetcu.model as M
    from unetcu import UNet, ops
    acc = collections.Counter()

    def timed(name, f):
        def g(*a, **k):
            t = time.process_time()
            r = f(*a, **k)
            acc[name] += time.process_time() - t
            return r
        return g

    class Ops:
        pass
    wrapped = Ops()
    for name in dir(ops):
        f = getattr(ops, name)
        setattr(wrapped, name, timed(name, f) if callable(f) and not name.startswith("_") else f)
    depth, base, _, x, lab, wt = _inputs(preset)
    m = UNet(depth=depth, base_channels=base, engine="numpy", seed=0)
    real, M.ops = M.ops, wrapped
    try:
        m.loss_and_grads(x, lab, wt, dropout_seed=1)
        acc.clear()
        t = time.process_time()
        for _ in range(reps):
            m.loss_and_grads(x, lab, wt, dropout_seed=1)
        total = (time.process_time() - t) / reps
    finally:
        M.ops = real
    rows = {k: 1e3 * v / reps for k, v in acc.most_common()}
    rows["(outside the ops)"] = 1e3 * total - sum(rows.values())
    return dict(step_cpu_ms=1e3 * total, ops=rows)


def _run_worker(side, preset):
    r = subprocess.run([sys.executable, "-m", "benchmarks.bench_cpu", "--worker", side, "--presets", preset],
                       capture_output=True, text=True, timeout=1800)
    if r.returncode:
        raise RuntimeError(f"{side} {preset}: {r.stderr.strip().splitlines()[-1:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _timed_process(cmd, cwd):
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=7200)
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd[:4])}...: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    return time.perf_counter() - t


PEER = """
import sys
from unetcu.data import load_folder
from benchmarks.peer import Recipe, train_peer
samples = load_folder(sys.argv[1])
train_peer(samples, Recipe(augment=sys.argv[3]), steps=int(sys.argv[2]), depth=4, base=16, tile=188, seed=0)
"""


def end_to_end(steps, data, rounds):
    """Seconds of `unetcu train` and of the peer, each a fresh process, for both augmentations."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if data is None:
            data = os.path.join(tmp, "data")
            subprocess.run([sys.executable, "-m", "unetcu.cli", "synth", data, "--count", "8", "--size", "256"],
                           check=True, capture_output=True)
        for augment in ("elastic", "flips"):
            ours, peer = [], []
            for k in range(rounds):
                ours.append(_timed_process(
                    [sys.executable, "-m", "unetcu.cli", "train", "--data", data, "--preset", "small", "--steps",
                     str(steps), "--augment", augment, "--engine", "numpy", "--no-progress", "--val-fraction", "0",
                     "--out", os.path.join(tmp, f"run{k}"), "--overwrite"], tmp))
                peer.append(_timed_process([sys.executable, "-c", PEER, data, str(steps), augment], os.getcwd()))
            o, p = statistics.median(ours), statistics.median(peer)
            rows.append(dict(augment=augment, steps=steps, ours_s=o, peer_s=p, ratio=o / p, ours_all=ours, peer_all=peer))
            print(f"end to end, {steps} steps, small preset, augment {augment}: unetcu train {o:.1f} s, "
                  f"PyTorch peer {p:.1f} s: ratio {o / p:.2f}x", flush=True)
    return rows


def conv_layer_ratios(rounds):
    """Each 3x3 convolution of the small preset, both sides in alternating processes, medians over rounds."""
    runs = {"ours": [], "torch": []}
    for _ in range(rounds):
        for side in runs:
            runs[side].append(_run_worker(f"layers-{side}", "small"))
    rows = []
    for i, (cin, cout, s) in enumerate(conv_layers("small")):
        med = {side: [statistics.median(r[i][3 + j] for r in rs) for j in range(3)] for side, rs in runs.items()}
        rows.append(dict(cin=cin, cout=cout, size=s, ours_ms=med["ours"], torch_ms=med["torch"]))
        print(f"conv {cin:>3} -> {cout:<3} at {s:>3}: forward {med['ours'][0]:5.2f} / {med['torch'][0]:5.2f} ms, "
              f"backward-data {med['ours'][1]:5.2f} / {med['torch'][1]:5.2f}, backward-weight {med['ours'][2]:5.2f} / "
              f"{med['torch'][2]:5.2f} (ours / PyTorch)", flush=True)
    return rows


def section(r) -> list[str]:
    """RESULTS.md's CPU section from bench_cpu's JSON (make_results.py: cpu.json)."""
    m = r["machine"]
    lines = ["## CPU: the numpy engine against PyTorch on the CPU", "",
             f"Measured {m['date']}, commit {m.get('commit', '?')}, on {m['machine']} with {m['cpus']} cores; unetcu's "
             f"numpy engine on {m['blas']}, PyTorch {m.get('torch')} (oneDNN) with its default threads; each side in "
             "a process of its own, alternating, the median of the rounds (`python -m benchmarks.bench_cpu`). "
             "Ratio = ours / PyTorch (< 1: unetcu is faster).", "",
             "| preset | step (forward + backward): ours | PyTorch | ratio | forward: ours | PyTorch | ratio |",
             "|---|---|---|---|---|---|---|"]
    for s in r["steps"]:
        lines.append(f"| {s.get('label', s['preset'])} | {s['ours_step_ms']:.1f} ms | {s['torch_step_ms']:.1f} ms | {s['step_ratio']:.2f}x "
                     f"| {s['ours_forward_ms']:.1f} ms | {s['torch_forward_ms']:.1f} ms | {s['forward_ratio']:.2f}x |")
    bd = r["breakdown"]
    lines += ["", f"unetcu's small-preset step by op, process CPU time over all threads (a step of "
                  f"{bd['step_cpu_ms']:.0f} ms CPU):", "", "| op | ms |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in bd["ops"].items()]
    if r.get("layers"):
        lines += ["", "Each 3x3 convolution of the small preset on its own (`--layers`; batch 1, no ReLU), ours / PyTorch "
                      "(oneDNN) in ms and their ratio, per direction:", "",
                  "| conv (in -> out channels, input size) | forward | backward-data | backward-weight |", "|---|---|---|---|"]
        tot = np.zeros((2, 3))
        for e in r["layers"]:
            tot += [e["ours_ms"], e["torch_ms"]]
            lines.append(f"| {e['cin']} -> {e['cout']}, {e['size']} | " + " | ".join(
                f"{o:.2f} / {t:.2f} ({o / t:.2f}x)" for o, t in zip(e["ours_ms"], e["torch_ms"])) + " |")
        lines.append("| all | " + " | ".join(f"{o:.1f} / {t:.1f} ({o / t:.2f}x)" for o, t in zip(*tot)) + " |")
    if r.get("end_to_end"):
        lines += ["", "End to end, small preset, a fresh process each (`--e2e`): `unetcu train` (its defaults) against "
                      "the PyTorch peer (benchmarks/peer.py's plain recipe: unetcu's tiles, PyTorch's step and Adam). unetcu's "
                      "side does more: the paper's weight maps (the border term's distance transforms; the peer "
                      "balances classes only), the validation and its plots at the end:", "",
                  "| augmentation | steps | unetcu train | PyTorch peer | ratio |", "|---|---|---|---|---|"]
        lines += [f"| {e['augment']} | {e['steps']} | {e['ours_s']:.1f} s | {e['peer_s']:.1f} s | {e['ratio']:.2f}x |"
                  for e in r["end_to_end"]]
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "small"], choices=list(PRESETS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--e2e", type=int, metavar="STEPS", help="also time N training steps end to end")
    ap.add_argument("--data", help="--e2e data folder (default: 8 synthetic 256x256 images)")
    ap.add_argument("--json")
    ap.add_argument("--layers", action="store_true", help="also time each 3x3 convolution of the small preset, both sides")
    ap.add_argument("--worker", choices=("ours", "torch", "layers-ours", "layers-torch"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        work = {"ours": worker_ours, "torch": worker_torch}.get(a.worker)
        print(json.dumps(work(a.presets[0]) if work else worker_layers(a.worker.split("-")[1], a.presets[0])))
        return 0
    from unetcu.cpu import blas_info
    info = dict(machine_info(), blas=blas_info())
    print(f"CPU benchmark, {info['date']}: numpy engine ({info['blas']}) vs PyTorch CPU, each side in its own "
          f"process, median of {a.rounds} alternating rounds", flush=True)
    steps = []
    for preset in a.presets:
        runs = {"ours": [], "torch": []}
        for _ in range(a.rounds):
            for side in runs:
                runs[side].append(_run_worker(side, preset))
        row = dict(preset=preset, **{f"{side}_{k}": statistics.median(r[k] for r in rs)
                                     for side, rs in runs.items() for k in ("step_ms", "forward_ms")})
        row["torch_threads"] = runs["torch"][0]["threads"]
        row["step_ratio"], row["forward_ratio"] = (row["ours_step_ms"] / row["torch_step_ms"],
                                                   row["ours_forward_ms"] / row["torch_forward_ms"])
        steps.append(row)
        print(f"{preset:<6} step (forward + backward): ours {row['ours_step_ms']:7.1f} ms, PyTorch {row['torch_step_ms']:7.1f} ms "
              f"({row['torch_threads']} threads): {row['step_ratio']:.2f}x | forward: ours {row['ours_forward_ms']:7.1f} ms, "
              f"PyTorch {row['torch_forward_ms']:7.1f} ms: {row['forward_ratio']:.2f}x", flush=True)
    bd = breakdown("small")
    print(f"unetcu's small-preset step by op (process CPU time, all threads): {bd['step_cpu_ms']:.1f} ms")
    for k, v in bd["ops"].items():
        print(f"  {k:34s} {v:7.2f} ms")
    layers = conv_layer_ratios(a.rounds) if a.layers else []
    e2e = end_to_end(a.e2e, a.data, a.rounds) if a.e2e else []
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(machine=info, steps=steps, breakdown=bd, layers=layers, end_to_end=e2e), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
