"""Shared by the benchmarks: the U-Net's layer shapes, timers, ceilings, the cuDNN counterparts."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from unetcu.model import output_size  # noqa: E402


def default_data_dir() -> str:
    """The shared real data sets: UNETCU_DATA, else ../shared/data beside the checkout."""
    return os.environ.get("UNETCU_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))


def unet_layers(tile=572, depth=5, base=64, in_ch=1, classes=2, batch=1):
    """Every op of one training step of the U-Net, in forward order, with its shapes:
    a list of dicts(op, name, shape params). Shapes follow the model exactly (valid convs, crops)."""
    layers = []
    s, c = tile, in_ch
    skips = []
    for l in range(depth):
        ch = base * 2 ** l
        for j in (1, 2):
            layers.append(dict(op="conv3x3", name=f"down{l}.conv{j}", N=batch, C=c, H=s, W=s, K=ch))
            s, c = s - 2, ch
        if l < depth - 1:
            skips.append((c, s))
            layers.append(dict(op="maxpool2x2", name=f"pool{l}", N=batch, C=c, H=s, W=s))
            s //= 2
    for l in range(depth - 2, -1, -1):
        ch = base * 2 ** l
        layers.append(dict(op="upconv2x2", name=f"up{l}.upconv", N=batch, C=c, H=s, W=s, K=ch))
        s, c = 2 * s, ch
        cs, ss = skips[l]
        layers.append(dict(op="crop_concat", name=f"up{l}.concat", N=batch, Cs=cs, Hs=ss, Cu=c, H=s))
        c = cs + c
        for j in (1, 2):
            layers.append(dict(op="conv3x3", name=f"up{l}.conv{j}", N=batch, C=c, H=s, W=s, K=ch))
            s, c = s - 2, ch
    layers.append(dict(op="conv1x1", name="head", N=batch, C=c, H=s, W=s, K=classes))
    layers.append(dict(op="softmax_xent", name="loss", N=batch, K=classes, H=s, W=s))
    assert s == output_size(tile, depth)
    return layers


def conv_flops(l):
    """Multiply-adds x 2 of one direction of a valid 3x3 conv."""
    return 2.0 * l["N"] * l["K"] * l["C"] * 9 * (l["H"] - 2) * (l["W"] - 2)


def machine_info():
    info = dict(machine=platform.machine(), cpus=os.cpu_count(), python=platform.python_version())
    try:
        import cupy
        dev = cupy.cuda.Device()
        props = cupy.cuda.runtime.getDeviceProperties(dev.id)
        info.update(gpu=props["name"].decode(), sms=props["multiProcessorCount"],
                    driver=cupy.cuda.runtime.driverGetVersion(), cuda_runtime=cupy.cuda.runtime.runtimeGetVersion(),
                    cupy=cupy.__version__)
    except Exception as e:
        info["gpu"] = f"none ({type(e).__name__})"
    try:
        import torch
        info.update(torch=torch.__version__, cudnn=torch.backends.cudnn.version() if torch.cuda.is_available() else None)
    except ImportError:
        info["torch"] = None
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                        cwd=Path(__file__).resolve().parent).stdout.strip()
    except OSError:
        info["commit"] = "?"
    info["date"] = time.strftime("%Y-%m-%d")
    return info


def gpu_median_ms(fn, warmup=3, reps=20):
    """Median time of fn() in ms with CUDA events, after warm-up."""
    import cupy
    for _ in range(warmup):
        fn()
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    times = []
    for _ in range(reps):
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop))
    return float(np.median(times))


def cpu_median_ms(fn, warmup=1, reps=3):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return float(np.median(times))


def torch_or_none():
    """torch, if importable with a CUDA device (the cuDNN baseline); else None."""
    try:
        import torch
        return torch if torch.cuda.is_available() else None
    except ImportError:
        return None


def ceilings(torch=None):
    """Measured in this run: device copy bandwidth (read + write), SGEMM (TF32 off) and TF32 GEMM."""
    import cupy
    out = {}
    n = 256 * 1024 * 1024 // 4
    a = cupy.ones(n, np.float32)
    b = cupy.empty_like(a)
    ms = gpu_median_ms(lambda: b.__setitem__(slice(None), a))
    out["copy_GBps"] = 2 * a.nbytes / ms / 1e6
    m = 8192
    x = cupy.random.rand(m, m, dtype=np.float32)
    y = cupy.random.rand(m, m, dtype=np.float32)
    ms = gpu_median_ms(lambda: cupy.matmul(x, y), reps=10)
    out["sgemm_TFLOPs"] = 2 * m ** 3 / ms / 1e9
    if torch is not None:
        tx, ty = torch.from_dlpack(x), torch.from_dlpack(y)
        torch.backends.cuda.matmul.allow_tf32 = True
        ms = gpu_median_ms(lambda: torch.matmul(tx, ty), reps=10)
        torch.backends.cuda.matmul.allow_tf32 = False
        out["tf32_gemm_TFLOPs"] = 2 * m ** 3 / ms / 1e9
        out["tf32_gemm_via"] = "torch (cuBLAS)"
    return out
