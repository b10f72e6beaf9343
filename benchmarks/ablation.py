"""What separates unetcu's training recipe from the plain PyTorch one: one factor at a time, several
seeds each, on the quality benchmark's splits (quality.split). Every run trains the same
architecture in the peer harness (peer.py: PyTorch at its CPU speed, unetcu's tiles, weight maps,
overlap-tile prediction and metrics; unetcu's gradients equal this net's, so a recipe measured here
is the recipe `unetcu train` would run) and segments the held-out images.

    python -m benchmarks.ablation --sets isbi2012 --seeds 0 1 2 --steps 1500 --workers 2
    python -m benchmarks.ablation --report bench-out/ablation/runs.jsonl

Runs append to OUT/runs.jsonl as they finish (a rerun skips the runs already there), so a long
ablation can be stopped and continued. The report prints mean +- standard deviation over seeds.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from benchmarks.common import default_data_dir

PRESET = dict(small=(4, 16, 188), tiny=(3, 8, 92))
PLAIN = dict(optimizer="adam", lr=1e-3, augment="flips")
CORE = ("unetcu (", "unetcu, adam 1e-3 + warm-up", "unetcu, adam 1e-3,", "plain peer (")


def recipes(name: str):
    """(label, Recipe fields) of the factors measured on data set `name`, starting from unetcu's recipe
    (SGD 0.99, lr 1e-3, clip 1, elastic, He init; w0 10 on the cell sets) and from the plain one."""
    from benchmarks.peer import Recipe
    w0 = 0.0 if name == "isbi2012" else 10.0
    u = Recipe.unetcu(w0=w0)
    p = Recipe(**PLAIN)
    rows = [
        ("unetcu (sgd 0.99, clip 1, elastic, he)", u),
        ("unetcu, clip off", replace(u, clip=0.0)),
        ("unetcu, flips instead of elastic", replace(u, augment="flips")),
        ("unetcu, torch init", replace(u, init="torch")),
        ("unetcu, sgd lr 0.01 + warm-up 100 + poly", replace(u, lr=0.01, warmup=100, schedule="poly")),
        ("unetcu, adam 1e-3", replace(u, optimizer="adam", clip=0.0)),
        ("unetcu, adam 1e-3, flips", replace(u, optimizer="adam", clip=0.0, augment="flips")),
        ("unetcu, adam 1e-3 + warm-up 100 + cosine", replace(u, optimizer="adam", clip=0.0, warmup=100, schedule="cosine")),
        ("unetcu, no dropout", replace(u, dropout=0.0)),
        ("plain peer (adam 1e-3, flips, torch init, w0 0)", p),
        ("plain peer, he init", replace(p, init="he")),
        ("plain peer, elastic", replace(p, augment="elastic")),
    ]
    if name != "isbi2012":
        rows.insert(1, ("unetcu, w0 0 (class balance only)", replace(u, w0=0.0)))
        rows.append(("plain peer, w0 10", replace(p, w0=10.0)))
    else:
        rows.insert(1, ("unetcu, w0 10", replace(u, w0=10.0)))
    return rows


_DATA = {}


def _job(root, name, label, fields, seed, steps, preset):
    import torch
    torch.set_num_threads(1)
    from benchmarks.peer import Recipe, train_peer
    from benchmarks.quality import split
    from benchmarks.postprocess import instance_variants
    from unetcu import data as D
    from unetcu.metrics import evaluate, seg_score
    from unetcu.tiling import predict_probs
    if name not in _DATA:
        _DATA[name] = split(name, D.load_folder(Path(root) / name))
    tr, te = _DATA[name]
    depth, base, tile = PRESET[preset]
    t0 = time.perf_counter()
    net, losses = train_peer(tr, Recipe(**fields), steps, depth, base, tile, seed=seed)
    t_train = time.perf_counter() - t0
    images = {}
    for s in te:
        pfg = 1.0 - predict_probs(net, s.image, tile=tile)[0]
        m = evaluate(s.instances, prob_fg=pfg)
        for k, inst in instance_variants(pfg).items():
            m[f"seg_{k}"] = seg_score(s.instances, inst)
        images[s.name] = m
    import platform
    from datetime import date
    return dict(set=name, label=label, recipe=fields, seed=seed, steps=steps, preset=preset, train_seconds=t_train,
                date=str(date.today()), machine=f"{platform.machine()}, {os.cpu_count()} cores",
                final_loss=float(np.mean(losses[-100:])), diverged=not np.isfinite(losses[-1]), images=images)


def report(rows, metrics=("rand_error", "info_error", "pixel_error", "iou", "seg", "seg_ws_prob", "seg_ws_dist")):
    out = []
    for name in dict.fromkeys(r["set"] for r in rows):
        out.append(f"\n{name} ({rows[0]['preset']} preset, {rows[0]['steps']} steps; mean +- std over seeds)\n")
        out.append("| recipe | seeds | " + " | ".join(metrics) + " |")
        out.append("|---|---|" + "---|" * len(metrics))
        for label in dict.fromkeys(r["label"] for r in rows if r["set"] == name):
            rs = [r for r in rows if r["set"] == name and r["label"] == label]
            cells = []
            for m in metrics:
                per_seed = [np.nanmean([im[m] for im in r["images"].values()]) for r in rs if not r["diverged"]]
                cells.append(f"{np.mean(per_seed):.3f} +- {np.std(per_seed):.3f}" if per_seed else "diverged")
            n_div = sum(r["diverged"] for r in rs)
            out.append(f"| {label} | {len(rs)}{f' ({n_div} diverged)' if n_div else ''} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=default_data_dir())
    ap.add_argument("--sets", nargs="+", default=["isbi2012", "dic_hela"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--preset", choices=tuple(PRESET), default="small")
    ap.add_argument("--only", nargs="*", help="recipe labels to run (exactly as printed); default all")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes, one thread each")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench-out") + "/ablation")
    ap.add_argument("--report", help="print the table of a runs.jsonl and exit")
    a = ap.parse_args(argv)
    if a.report:
        print(report([json.loads(l) for l in open(a.report)]))
        return 0
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = out / "runs.jsonl"
    done = {(r["set"], r["label"], r["seed"], r["steps"], r["preset"]) for r in map(json.loads, runs.open())} if runs.exists() else set()
    # the first seed of the core recipes, then of the others, then the further seeds in the same order:
    # a stopped ablation has measured the most decisive runs
    jobs = [(name, label, asdict(rec), seed) for first in (True, False) for core in (True, False) for seed in a.seeds
            if (seed == a.seeds[0]) == first for name in a.sets for label, rec in recipes(name)
            if any(label.startswith(c) for c in CORE) == core
            if (not a.only or label in a.only) and (name, label, seed, a.steps, a.preset) not in done]
    print(f"{len(jobs)} runs to do ({len(done)} done) on {a.workers} workers", flush=True)
    # one thread per process (torch's OpenMP and Numba's parallel warp), set before a worker imports
    # either: a forked pool inherited the parent's OpenMP state, and two busy threads per worker on
    # two cores ran 8x slower
    os.environ["OMP_NUM_THREADS"] = os.environ["NUMBA_NUM_THREADS"] = "1"
    with ProcessPoolExecutor(a.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futs = {pool.submit(_job, a.data, name, label, f, seed, a.steps, a.preset): (name, label, seed) for name, label, f, seed in jobs}
        for fut in as_completed(futs):
            r = fut.result()
            with runs.open("a") as f:
                f.write(json.dumps(r) + "\n")
            mean = {m: np.nanmean([im[m] for im in r["images"].values()]) for m in ("rand_error", "seg", "seg_ws_dist")}
            print(f"{r['set']} | {r['label']} | seed {r['seed']}: {r['train_seconds']:.0f} s, "
                  + ", ".join(f"{k} {v:.3f}" for k, v in mean.items()), flush=True)
    print(report([json.loads(l) for l in runs.open()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
