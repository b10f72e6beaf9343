"""What `train --distributed` adds to a step: the per-step (loss, error) allgather and the
gradient all-reduce (pack into one flat buffer, MPI_Allreduce or NCCL in place, divide by N),
through unetcu.distributed.Distributed itself, at each preset's parameter count. Run it as the
ranks of an MPI job:

    mpirun -n 2 python -m benchmarks.bench_allreduce [--engine numpy|cuda] [--reps 20] [--json out.json]

Prints (rank 0) per preset: parameters, bytes all-reduced per step, the median and min seconds of
each part over --reps steps (after 2 warm-up steps), and the bus bandwidth NCCL's tests would
report for the all-reduce (2 (N-1)/N x bytes / time). On the cuda engine each part is timed to the
end of its GPU work (stream synchronize).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from unetcu.distributed import Distributed
from unetcu.model import UNet
from unetcu.run import PRESETS


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", default="numpy", choices=("numpy", "cuda"))
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--presets", default="tiny,small,paper")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    dist = Distributed(engine_hint=a.engine)
    xp = np
    sync = lambda: None  # noqa: E731
    if a.engine == "cuda":
        import cupy as xp
        sync = xp.cuda.get_current_stream().synchronize
    rows = []
    for preset in a.presets.split(","):
        depth, base, _ = PRESETS[preset]
        shapes = {k: v.shape for k, v in UNet(depth=depth, base_channels=base, engine="numpy", seed=0).params.items()}
        rng = np.random.default_rng(dist.rank)
        grads = {k: xp.asarray(rng.standard_normal(s, dtype=np.float32)) for k, s in shapes.items()}
        n = sum(int(np.prod(s)) for s in shapes.values())
        dist.engine, dist.flat = a.engine, xp.zeros(n, np.float32)
        dist.backend = None
        if a.engine == "cuda" and not dist.shared_gpu:
            from cupy.cuda import nccl
            uid = dist.comm.bcast(nccl.get_unique_id() if dist.root else None, root=0)
            dist.nccl, dist.backend = nccl.NcclCommunicator(dist.size, uid, dist.rank), "nccl"
        else:
            dist.backend = "mpi"
        t_gather, t_reduce = [], []
        for i in range(a.reps + 2):
            dist.comm.Barrier()
            sync()
            t0 = time.perf_counter()
            dist.comm.allgather((1.0, None))  # the per-step (loss, error) exchange
            t1 = time.perf_counter()
            out = dist.allreduce_mean(grads)
            sync()
            t2 = time.perf_counter()
            if i >= 2:
                t_gather.append(t1 - t0), t_reduce.append(t2 - t1)
        # the result is the mean over the ranks: check one element against the ranks' own draws
        want = np.mean([np.random.default_rng(r).standard_normal(shapes[next(iter(shapes))], dtype=np.float32).ravel()[0]
                        for r in range(dist.size)])
        got = float(out[next(iter(out))].ravel()[0])
        assert abs(got - want) <= 1e-5 * max(1.0, abs(want)), (got, want)
        med = float(np.median(t_reduce))
        rows.append(dict(preset=preset, params=n, bytes=4 * n, ranks=dist.size, backend=dist.backend, engine=a.engine,
                         gather_median_s=float(np.median(t_gather)), allreduce_median_s=med,
                         allreduce_min_s=float(np.min(t_reduce)),
                         busbw_GBps=2 * (dist.size - 1) / dist.size * 4 * n / med / 1e9))
    if dist.root:
        print(f"{dist.size} ranks, engine {a.engine}, all-reduce by {rows[0]['backend']}, {a.reps} steps")
        print(f"{'preset':8s} {'params':>11s} {'MB/step':>8s} {'allgather':>10s} {'all-reduce med':>15s} {'min':>9s} {'bus GB/s':>9s}")
        for r in rows:
            print(f"{r['preset']:8s} {r['params']:11,d} {r['bytes'] / 1e6:8.2f} {r['gather_median_s'] * 1e6:8.0f}us "
                  f"{r['allreduce_median_s'] * 1e3:13.2f}ms {r['allreduce_min_s'] * 1e3:7.2f}ms {r['busbw_GBps']:9.2f}")
        if a.json:
            Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
