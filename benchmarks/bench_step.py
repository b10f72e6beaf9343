"""Step benchmark: our whole training step (forward, loss, backward, SGD) and the inference
forward, against a PyTorch U-Net of the identical architecture (cudnn.benchmark on), batch 1 and
4, in fp32 (TF32 off on both sides) and tf32 (our tf32 kernels vs PyTorch with TF32 on). Our step
also as one CUDA graph (--cuda-graph in training) and without the fusions (fuse=False), so what
each saves is measured in the same run.
Also the peak GPU memory of both, the elastic warp of a 572 tile (Numba on the GPU vs
scipy.ndimage on the CPU, and elasticdeform if installed) and the weight-map time.

Without a GPU: the tiny preset on the numpy and emu engines — CPU timings, not comparable.

    python -m benchmarks.bench_step [--engine cuda|emu|numpy] [--json FILE] [--quick]
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from benchmarks.common import cpu_median_ms, gpu_median_ms, machine_info, torch_or_none
from unetcu import UNet, augment
from unetcu.data import classes_from_instances, synthetic_cells
from unetcu.model import output_size
from unetcu.optim import Optimizer
from unetcu.engines.runtime import ENGINES, resolve_engine
from unetcu.run import PRESETS
from unetcu.weightmap import weight_map


def our_step(model, x, lab, wt, opt):
    loss, grads = model.loss_and_grads(x, lab, wt, dropout_seed=1)
    opt.step(model.params, grads, 1e-4, 1)
    return loss


def bench_ours(engine, preset, batch, reps, warmup=2, precision="fp32", fuse=True, graph=False):
    depth, base, tile = PRESETS[preset]
    o = output_size(tile, depth)
    m = UNet(depth=depth, base_channels=base, engine=engine, seed=0, precision=precision, fuse=fuse)
    xp = m.xp
    rng = np.random.default_rng(0)
    x = xp.asarray(rng.standard_normal((batch, 1, tile, tile)).astype(np.float32))
    lab = xp.asarray(rng.integers(0, 2, (batch, o, o)).astype(np.int32))
    wt = xp.asarray(rng.uniform(1, 5, (batch, o, o)).astype(np.float32))
    opt = Optimizer("sgd", m.params, engine, xp, momentum=0.99)
    step = lambda: our_step(m, x, lab, wt, opt)
    if graph:
        from unetcu.graph import GraphStep
        gs = GraphStep(m, opt, 1e-4)
        step = lambda: gs(x, lab, wt, 1)[0]
    res = {}
    if engine == "cuda":
        import cupy
        pool = cupy.get_default_memory_pool()
        pool.free_all_blocks()
        res["step_ms"] = gpu_median_ms(step, warmup=warmup, reps=reps)
        if not graph:
            res["forward_ms"] = gpu_median_ms(lambda: m.forward(x), warmup=warmup, reps=reps)
        res["peak_MB"] = (pool.total_bytes() + (gs.pool.total_bytes() if graph else 0)) / 2**20
    else:
        res["step_ms"] = cpu_median_ms(step, reps=reps)
        res["forward_ms"] = cpu_median_ms(lambda: m.forward(x), reps=reps)
    res["loss"] = float(step())
    return res


def bench_torch(torch, preset, batch, reps, tf32):
    from benchmarks.torch_unet import TorchUNet, weighted_xent
    depth, base, tile = PRESETS[preset]
    o = output_size(tile, depth)
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    net = TorchUNet(depth=depth, base=base).cuda()
    opt = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.99)
    x = torch.randn(batch, 1, tile, tile, device="cuda")
    lab = torch.randint(0, 2, (batch, o, o), device="cuda")
    wt = torch.rand(batch, o, o, device="cuda") * 4 + 1

    def step():
        opt.zero_grad(set_to_none=True)
        loss = weighted_xent(net(x), lab, wt)
        loss.backward()
        opt.step()

    torch.cuda.reset_peak_memory_stats()
    res = {"step_ms": gpu_median_ms(step, warmup=3, reps=reps)}
    res["peak_MB"] = torch.cuda.max_memory_allocated() / 2**20
    net.eval()
    with torch.no_grad():
        res["forward_ms"] = gpu_median_ms(lambda: net(x), warmup=2, reps=reps)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    return res


def bench_augment(engine, reps):
    """Elastic warp of a 572 tile from a 512 image: ours (Numba, GPU or CPU) vs scipy.ndimage."""
    from scipy import ndimage as ndi
    img, inst = synthetic_cells((512, 512), seed=0)
    lab = classes_from_instances(inst)
    w = weight_map(inst)
    res = {"weightmap_512_ms": cpu_median_ms(lambda: weight_map(inst), reps=reps), "weightmap_cells": int(inst.max())}
    rng = np.random.default_rng(0)
    p = augment.draw_params(rng, img.shape)
    if engine == "cuda":
        import cupy
        gi, gl, gw = cupy.asarray(img), cupy.asarray(lab), cupy.asarray(w)
        res["warp_ours_ms"] = gpu_median_ms(lambda: augment.warp(gi, gl, gw, p, 572, 388), reps=reps)
        res["warp_ours_where"] = "GPU (Numba CUDA)"
    else:
        res["warp_ours_ms"] = cpu_median_ms(lambda: augment.warp(img, lab, w, p, 572, 388), reps=reps)
        res["warp_ours_where"] = "CPU (Numba)"

    def scipy_warp():
        # the same transform the slow way: a bicubic-upsampled 3x3 field, then map_coordinates
        disp = [ndi.zoom(p.grid[..., c], 572 / 3, order=3, mode="nearest") for c in (0, 1)]
        yy, xx = np.mgrid[0:572, 0:572].astype(np.float64) - 285.5
        py, px = yy + disp[0], xx + disp[1]
        c, s = np.cos(p.rot), np.sin(p.rot)
        coords = np.stack([p.cy + c * py - s * px, p.cx + s * py + c * px])
        ndi.map_coordinates(img, coords, order=3, mode="mirror")
        ndi.map_coordinates(lab, coords[:, 92:480, 92:480], order=0, mode="mirror")
        ndi.map_coordinates(w, coords[:, 92:480, 92:480], order=1, mode="mirror")

    res["warp_scipy_cpu_ms"] = cpu_median_ms(scipy_warp, reps=reps)
    try:
        import elasticdeform
        res["warp_elasticdeform_cpu_ms"] = cpu_median_ms(
            lambda: elasticdeform.deform_random_grid([img, w], sigma=10, points=3, order=[3, 1]), reps=reps)
    except ImportError:
        res["warp_elasticdeform_cpu_ms"] = None
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_step", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", choices=ENGINES)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    try:
        engine = resolve_engine(a.engine)
    except (ValueError, RuntimeError) as e:  # a bad engine or no GPU: one line, not a traceback
        ap.error(str(e))
    info = machine_info()
    rows = []
    if engine == "cuda":
        torch = torch_or_none()
        reps, warmup = (3, 1) if a.quick else (15, 2)
        print(f"step benchmark on {info.get('gpu')} ({info['date']}): paper U-Net, 572 tile, fp32 and tf32")
        for batch in (1, 4):
            for prec in ("fp32", "tf32"):
                r = dict(preset="paper", batch=batch, precision=prec,
                         ours=bench_ours("cuda", "paper", batch, reps, warmup, precision=prec))
                for label, kw in (("ours_graph", dict(graph=True)), ("ours_unfused", dict(fuse=False))):
                    try:
                        r[label] = bench_ours("cuda", "paper", batch, reps, warmup, precision=prec, **kw)
                    except Exception as e:  # recorded, never dropped
                        r[label] = {"error": f"{type(e).__name__}: {e}"}
                if torch is not None:
                    r["torch"] = bench_torch(torch, "paper", batch, reps, tf32=prec == "tf32")
                    r["ratio_vs_torch"] = r["torch"]["step_ms"] / r["ours"]["step_ms"]
                rows.append(r)
    else:
        reps = 3
        print("step benchmark on the CPU, tiny preset, engines numpy and emu: CPU timings, not comparable with GPU figures")
        for eng in ("numpy", "emu"):
            rows.append(dict(preset="tiny", batch=1, engine=eng, ours=bench_ours(eng, "tiny", 1, reps)))
    for r in rows:
        o = r["ours"]
        line = (f"{r['preset']:<6} batch {r['batch']} {r.get('engine', engine):<6} {r.get('precision', 'fp32')} "
                f"ours: step {o['step_ms']:9.2f} ms, forward {o['forward_ms']:9.2f} ms")
        if "peak_MB" in o:
            line += f", peak {o['peak_MB']:.0f} MB"
        for label in ("ours_graph", "ours_unfused"):
            if label in r:
                g = r[label]
                line += f" | {label[5:]}: " + (f"step {g['step_ms']:.2f} ms" if "step_ms" in g else g["error"])
        if "torch" in r:
            t = r["torch"]
            line += (f" | PyTorch {r['precision']}: step {t['step_ms']:.2f} ms, forward {t['forward_ms']:.2f} ms, "
                     f"peak {t['peak_MB']:.0f} MB | ratio (torch / ours) x{r['ratio_vs_torch']:.2f}")
        print(line, flush=True)
    aug = bench_augment(engine, 3)
    print(f"weight map 512x512 ({aug['weightmap_cells']} cells): {aug['weightmap_512_ms']:.1f} ms (CPU); elastic warp 572 tile: "
          f"ours {aug['warp_ours_ms']:.2f} ms on {aug['warp_ours_where']}, scipy.ndimage {aug['warp_scipy_cpu_ms']:.1f} ms on the CPU"
          + (f", elasticdeform {aug['warp_elasticdeform_cpu_ms']:.1f} ms" if aug["warp_elasticdeform_cpu_ms"] else ", elasticdeform not installed"))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(machine=info, engine=engine, steps=rows, augment=aug), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
