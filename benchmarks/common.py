"""Shared by the benchmarks: timers, ceilings, the machine's description, the data folder."""
from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np


def default_data_dir() -> str:
    """The shared real data sets: UNETCU_DATA, else ../shared/data beside the checkout."""
    return os.environ.get("UNETCU_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))


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


def update_section(path, title: str, lines: list[str]):
    """Replace the section of RESULTS.md that starts with `title` (a "## ..." line) by lines, or
    append it; the rest of the file stays as it is."""
    from pathlib import Path
    path = Path(path)
    text = path.read_text() if path.exists() else "# unetcu benchmark results\n"
    new = "\n".join(lines) + "\n"
    if title in text:
        i = text.index(title)
        j = text.find("\n## ", i + len(title))
        text = text[:i] + new + (text[j + 1:] if j >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + new
    path.write_text(text)
