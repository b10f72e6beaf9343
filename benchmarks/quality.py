"""Segmentation quality on real data: train on a split of each shared data set with a stated budget,
segment the held-out images by overlap-tile, print the metric table, write quality.json.

Two arms, each over several seeds (mean and spread are reported): `unetcu` trains with `unetcu
train`'s defaults; `peer` trains a PyTorch U-Net of the same architecture with the plain recipe most
PyTorch users pick (Adam 1e-3, class-balanced cross-entropy, random windows with the 8
rotations/flips; peer.py), on the same tiles pipeline, steps and tile size, and is scored by the
same overlap-tile code, instance step and metrics. PyTorch is needed for the peer arm only.

    python -m benchmarks.quality                       # ISBI 2012 and DIC-HeLa, both arms, seeds 0 1 2
    python -m benchmarks.quality --sets dic_hela --arms unetcu --seeds 0 --steps 3000 --engine numpy

Splits: isbi2012 slices 0-19 train, 20-24 test; dic_hela frames 002..039 train, 054 and the
remaining full frames test, frame 067 (3 of ~18 cells annotated) left out of both; dsb2018_fluo
the first 200 images (sorted by name) train, the other 60 test.
Weight maps: the paper's (w0 = 10, sigma = 5) for the cell sets; class balancing only (w0 = 0) for
ISBI 2012, whose membranes separate every pair of neighbouring cells, so that the border term
would weigh nearly all background ~10x and the net learns to call everything membrane.
Data: --data, else UNETCU_DATA, else ../shared/data beside the checkout.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict
from datetime import date
from pathlib import Path

import numpy as np

from benchmarks.common import default_data_dir
from unetcu import UNet, data as D
from unetcu.instances import instances, min_distance_for, object_radius
from unetcu.metrics import METRIC_NAMES, evaluate, format_table, seg_score, segments
from unetcu.engines.runtime import ENGINES, resolve_engine
from unetcu.tiling import predict_probs
from unetcu.run import PRESETS, Run, TrainConfig
from unetcu.train import train

W0 = {"isbi2012": 0.0}  # the weight map's border term per set; 10 (the paper's) elsewhere


def split(name: str, samples):
    if name == "isbi2012":
        return samples[:20], samples[20:]
    if name == "dic_hela":
        use = [s for s in samples if not s.name.endswith("067")]
        return use[:6], use[6:]
    if name == "dsb2018_fluo":
        return samples[:200], samples[200:]
    raise ValueError(f"unknown data set {name}")


def run_arm(arm, name, tr, te, engine, preset, steps, seed, out, tta=False, retrain=False):
    """Train one arm on tr with one seed and score it on te; returns the run's record and the
    predicted instances of te[0] (for the figure)."""
    depth, base, tile = PRESETS[preset]
    w0 = W0.get(name, 10.0)
    t0 = time.perf_counter()
    radius = object_radius([s.instances for s in tr])
    if arm == "unetcu":
        model = UNet(depth=depth, base_channels=base, engine=engine, seed=seed)
        cfg = TrainConfig(steps=steps, tile=tile, val_every=max(steps // 3, 1), ckpt_every=steps,
                          out=str(Path(out) / f"{name}-{arm}-{seed}"), seed=seed, w0=w0)
        ckpt = Path(cfg.out) / "checkpoint.npz"
        done = UNet.load(ckpt, engine=engine, with_state=True) if ckpt.exists() and not retrain else None
        if done and done[2].get("step") == steps and done[2]["config"]["optimizer"] == cfg.optimizer:
            model, history = done[0], done[2]["history"]  # trained already: score it again (--retrain to train anew)
            print(f"{ckpt}: trained already, scoring it", flush=True)
        else:
            history = train(Run.of(model, tr, te[:2], cfg, overwrite=True), progress=True, log=print)  # a rerun replaces its own runs
        t_train = history[-1]["seconds"]
        recipe = {k: getattr(cfg, k) for k in ("optimizer", "lr", "warmup", "schedule", "momentum", "clip", "augment", "w0")}
    else:
        from benchmarks.peer import Recipe, train_peer
        rec = Recipe()
        model, _ = train_peer(tr, rec, steps, depth, base, tile, seed=seed, log=print)
        recipe = asdict(rec)
        t_train = time.perf_counter() - t0
    rows = []
    t0 = time.perf_counter()
    first = None
    for s in te:
        probs = predict_probs(model, s.image, tile=tile, tta=tta)
        m = evaluate(s.instances, prob_fg=1.0 - probs[0])
        ws = instances(probs.argmax(0) > 0, "watershed", min_distance_for(radius))
        m["seg_watershed"] = seg_score(s.instances, ws)  # predict --instances watershed
        rows.append((s.name, m))
        first = first if first is not None else (ws if w0 > 0 else segments(probs.argmax(0) > 0))
    t_pred = (time.perf_counter() - t0) / len(te)
    print(f"-- {name}, {arm}, seed {seed}:\n" + format_table(rows), flush=True)
    mean = {m: float(np.nanmean([r[m] for _, r in rows])) for m in METRIC_NAMES + ("seg_watershed",)}
    return dict(set=name, arm=arm, seed=seed, train_images=len(tr), test_images=len(te), train_seconds=t_train,
                predict_seconds_per_image=t_pred, recipe=recipe, mean=mean, images=dict(rows)), first


def figure(panels, path):
    """Rows: data sets; columns: image, truth, then each arm's instances (each object its own colour)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from unetcu.viz import colour_instances
    arms = list(dict.fromkeys(a for _, a in panels if a))
    sets = list(dict.fromkeys(n for n, _ in panels))
    fig, ax = plt.subplots(len(sets), 2 + len(arms), figsize=(3.2 * (2 + len(arms)), 3.3 * len(sets)), squeeze=False)
    for i, name in enumerate(sets):
        s, _ = panels[(name, None)]
        cols = [(s.image, f"{name}: {s.name}"), (colour_instances(s.instances), f"truth: {int(s.instances.max())} objects")]
        for arm in arms:
            inst, seg, ws = panels.get((name, arm), (None, None, None))
            if inst is not None:
                how = "watershed" if ws else "components"
                cols.append((colour_instances(inst), f"{arm} ({how}): {int(inst.max())} objects, SEG {seg:.2f}"))
        for j, (a, title) in enumerate(cols):
            ax[i, j].imshow(a, cmap="gray" if a.ndim == 2 else None)
            ax[i, j].set_title(title, fontsize=9)
            ax[i, j].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def summary(runs):
    """{(set, arm): {metric: (mean over seeds, std over seeds)}} and the seed counts."""
    out = {}
    for key in dict.fromkeys((r["set"], r["arm"]) for r in runs):
        rs = [r for r in runs if (r["set"], r["arm"]) == key]
        out[key] = dict(seeds=len(rs), **{m: (float(np.mean([r["mean"][m] for r in rs])), float(np.std([r["mean"][m] for r in rs])))
                                          for m in METRIC_NAMES})
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=default_data_dir())
    ap.add_argument("--sets", nargs="+", default=["isbi2012", "dic_hela"], choices=["isbi2012", "dic_hela", "dsb2018_fluo"])
    ap.add_argument("--arms", nargs="+", default=["unetcu", "peer"], choices=["unetcu", "peer"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--engine", choices=ENGINES)
    ap.add_argument("--preset", choices=tuple(PRESETS), help="default: paper on a GPU, small on a CPU")
    ap.add_argument("--steps", type=int, help="training steps per set (default: 1500 small, 4000 paper)")
    ap.add_argument("--tta", action="store_true", help="test-time augmentation over 8 rotations/flips")
    ap.add_argument("--retrain", action="store_true", help="train the unetcu arm even where OUT holds its trained model")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench-out") + "/quality")
    ap.add_argument("--figure", help="write image / truth / each arm's instances of a held-out image per set "
                                     "(first seed) to this PNG (default OUT/quality.png)")
    a = ap.parse_args(argv)
    try:
        engine = resolve_engine(a.engine)
    except (ValueError, RuntimeError) as e:  # a bad engine or no GPU: one line, not a traceback
        ap.error(str(e))
    preset = a.preset or ("paper" if engine == "cuda" else "small")
    steps = a.steps or (4000 if preset == "paper" else 1500)
    root = Path(a.data)
    if not root.is_dir():
        print(f"quality: no data at {root} (set --data or UNETCU_DATA)", file=sys.stderr)
        return 2
    if "peer" in a.arms:
        try:
            import torch
            torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
        except ImportError:
            print("quality: the peer arm needs PyTorch (pip install torch), or run --arms unetcu", file=sys.stderr)
            return 2
    report = dict(date=str(date.today()), engine=engine, preset=preset, steps=steps, tile=PRESETS[preset][2],
                  machine=f"{platform.machine()}, {os.cpu_count()} cores", runs=[])
    Path(a.out).mkdir(parents=True, exist_ok=True)
    panels = {}
    for name in a.sets:
        tr, te = split(name, D.load_folder(root / name))
        panels[(name, None)] = (te[0], None)
        print(f"== {name}: {len(tr)} training, {len(te)} test images; preset {preset}, {steps} steps", flush=True)
        for seed in a.seeds:
            for arm in a.arms:
                rec, inst = run_arm(arm, name, tr, te, engine, preset, steps, seed, a.out, a.tta, a.retrain)
                report["runs"].append(rec)
                if seed == a.seeds[0]:
                    ws = W0.get(name, 10.0) > 0  # cells: the watershed's instances; ISBI: the components
                    panels[(name, arm)] = (inst, rec["images"][te[0].name]["seg_watershed" if ws else "seg"], ws)
                with open(Path(a.out) / "quality.json", "w") as f:  # after every run: a long benchmark shows as it goes
                    json.dump(report, f, indent=1)
    figure(panels, a.figure or Path(a.out) / "quality.png")
    print(f"\nwrote {a.out}/quality.json and {a.figure or Path(a.out) / 'quality.png'}\n{'set':<14}{'arm':<8}{'seeds':>6}" + "".join(f"{m:>22}" for m in METRIC_NAMES))
    for (name, arm), r in summary(report["runs"]).items():
        print(f"{name:<14}{arm:<8}{r['seeds']:>6}" + "".join(f"{r[m][0]:>13.4f} +-{r[m][1]:.3f}" for m in METRIC_NAMES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
