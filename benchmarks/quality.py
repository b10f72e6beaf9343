"""Segmentation quality on real data, k-fold over the shared sets and several seeds: each arm trains
on the other folds with a stated budget, segments the held-out fold by overlap-tile, and is scored
by the same code (unetcu.metrics). Prints the tables, writes OUT/runs.jsonl and OUT/quality.png.

Arms:
- `unetcu`: `unetcu train`'s defaults, nothing changed but steps, tile (the preset's) and seed.
  `unetcu:augment=flips,w0=0` changes TrainConfig fields (one arm per spelling).
- `peer`: a PyTorch U-Net of the same architecture with the plain recipe a PyTorch user writes
  first, independent of unetcu's tile pipeline (peer.py, Recipe.plain: random windows of the
  reflect-padded image with the 8 rotations/flips, class-balanced cross-entropy, Adam 1e-3, He init,
  no weight map). `peer:lr=3e-4` changes Recipe fields. PyTorch is needed for the peer arms only.

    python -m benchmarks.quality                                  # 3 sets x folds 0 1 2 x seeds 0 1, both arms
    python -m benchmarks.quality --sets isbi2012 --folds 0 --seeds 0 --arms unetcu unetcu:augment=flips
    python -m benchmarks.quality --report bench-out/quality/runs.jsonl

Folds: contiguous blocks of each set in name order (FOLDS: isbi2012 5 folds of 5 slices,
dic_hela 4 folds of 2 frames, frame 067 left out (3 of its ~18 cells annotated), dsb2018_fluo 5
folds of 52 images); fold f is the test set, the others train. Each finished run is appended to
OUT/runs.jsonl at once, and a rerun skips the runs already there (same set, fold, seed, arm,
preset, steps): a grid can be split over several invocations and stopped at any time.
The report gives mean +- std over all runs of an arm (folds x seeds), and the paired difference
arm - peer (same fold, same seed index) per fold and over all pairs.
Data: --data, else UNETCU_DATA, else ../shared/data beside the checkout.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, fields
from datetime import date
from pathlib import Path

import numpy as np

from benchmarks.common import default_data_dir, update_section
from unetcu.run import PRESETS

FOLDS = {"isbi2012": 5, "dic_hela": 4, "dsb2018_fluo": 5}
# what decides each set (the issue of record: ISBI by Rand and information error, the cell sets by SEG and IoU)
DECIDE = {"isbi2012": ("rand_error", "info_error"), "dic_hela": ("seg_default", "iou", "seg_watershed"),
          "dsb2018_fluo": ("seg_default", "iou", "seg_watershed")}
LOWER_IS_BETTER = {"pixel_error", "pixel_error_fscore", "rand_error", "info_error"}
SHOWN = ("rand_error", "info_error", "pixel_error", "iou", "seg", "seg_watershed", "seg_default")


def split(name: str, samples, fold: int = 0):
    """(train, test): fold `fold` of FOLDS[name] contiguous blocks (name order) is the test set."""
    if name not in FOLDS:
        raise ValueError(f"unknown data set {name}")
    use = [s for s in samples if not (name == "dic_hela" and s.name.endswith("067"))]
    if not 0 <= fold < FOLDS[name]:
        raise ValueError(f"{name} has folds 0..{FOLDS[name] - 1}, not {fold}")
    test = set(np.array_split(np.arange(len(use)), FOLDS[name])[fold].tolist())
    return [s for i, s in enumerate(use) if i not in test], [s for i, s in enumerate(use) if i in test]


def parse_arm(spec: str) -> tuple[str, dict]:
    """'unetcu' | 'peer' | 'unetcu:augment=flips,w0=0' -> (kind, field overrides typed like the
    dataclass's fields: TrainConfig for unetcu, peer.Recipe for peer). ValueError for an unknown kind
    or field."""
    kind, _, rest = spec.partition(":")
    if kind not in ("unetcu", "peer"):
        raise ValueError(f"arm {spec!r}: unetcu or peer, optionally :field=value,...")
    if kind == "unetcu":
        from unetcu.run import TrainConfig as cls
    else:
        from benchmarks.peer import Recipe as cls
    types = {f.name: type(f.default) for f in fields(cls)}
    if kind == "unetcu":
        types["border"] = str  # train --border: auto | on | off (the network's, not TrainConfig's)
    out = {}
    for item in filter(None, rest.split(",")):
        k, eq, v = item.partition("=")
        if not eq or k not in types or k in ("steps", "tile", "seed", "out"):
            raise ValueError(f"arm {spec!r}: {item!r} is not field=value of {cls.__name__} "
                             f"(fields: {', '.join(t for t in types if t not in ('steps', 'tile', 'seed', 'out', 'run'))})")
        t = types[k]
        if k == "border" and v not in ("auto", "on", "off"):
            raise ValueError(f"arm {spec!r}: border is auto, on or off, not {v!r}")
        out[k] = (v.lower() in ("1", "true", "yes")) if t is bool else (v if t in (str, type(None)) else t(float(v)) if t is int else t(v))
    return kind, out


def run_name(name, fold, arm, seed, preset, steps) -> str:
    """The name of one run's files (its training folder, its first test image's objects)."""
    return f"{name}-f{fold}-{arm}-s{seed}-{preset}{steps}"


def run_one(root, name, fold, seed, arm, engine, preset, steps, out):
    """Train one arm on the training folds with one seed, score it on the test fold; returns the record.
    The test fold's first image's instances are saved to OUT/instances/ for the figure."""
    if "peer" in arm.split(":")[0]:
        import torch
        torch.set_num_threads(1)
    from unetcu import UNet, data as D
    from unetcu.instances import from_classes, min_distance_for, object_radius
    from unetcu.metrics import METRIC_NAMES, evaluate_probs, seg_score
    from unetcu.tiling import predict_probs
    kind, over = parse_arm(arm)
    tr, te = split(name, D.load_folder(Path(root) / name), fold)
    depth, base, tile = PRESETS[preset]
    t0 = time.perf_counter()
    if kind == "unetcu":
        from unetcu.run import Run, TrainConfig
        from unetcu.train import train
        from unetcu.run import TRAIN_DEFAULTS, border_width
        border = border_width(tr, over.pop("border", TRAIN_DEFAULTS["border"]))  # as `unetcu train --border` decides it
        model = UNet(depth=depth, base_channels=base, engine=engine, seed=seed, n_classes=3 if border else 2, border=border)
        cfg = TrainConfig(**{**over, "steps": steps, "tile": tile, "seed": seed, "val_every": steps, "ckpt_every": steps,
                             "out": str(Path(out) / "runs" / f"{run_name(name, fold, arm, seed, preset, steps).replace(':', '_')}")})
        history = train(Run.of(model, tr, te[:1], cfg, overwrite=True), progress=False, log=lambda *a: None)
        recipe, final_loss = asdict(cfg), float(np.mean([h["loss"] for h in history[-100:]]))
        recipe.pop("run", None)
        recipe.update(border=border, out=str(Path(cfg.out).relative_to(out)))  # (the record names no machine's paths)
    else:
        from benchmarks.peer import Recipe, train_peer
        rec = Recipe.plain(**over)
        model, losses = train_peer(tr, rec, steps, depth, base, tile, seed=seed)
        recipe, final_loss = asdict(rec), float(np.mean(losses[-100:]))
    t_train = time.perf_counter() - t0
    radius = object_radius([s.instances for s in tr])
    images, t0 = {}, time.perf_counter()
    border = model.config.get("border", 0)
    for i, s in enumerate(te):
        probs = predict_probs(model, s.image, tile=tile)
        m = evaluate_probs(s.instances, probs, border)  # as `unetcu evaluate` scores NAME_prob.tif
        labels = probs.argmax(0)
        ws = from_classes(labels, border, "watershed", min_distance_for(radius))
        m["seg_watershed"] = seg_score(s.instances, ws)  # predict --instances watershed
        images[s.name] = m
        if i == 0:
            d = Path(out) / "instances"
            d.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(d / f"{run_name(name, fold, arm, seed, preset, steps)}.npz", components=from_classes(labels, border),
                                watershed=ws)
    # seg_default: the objects each arm gives out of the box: `unetcu predict`'s (--instances auto) for
    # unetcu, the connected components a plain PyTorch user takes for the peer
    method = "components"
    if kind == "unetcu":
        from unetcu.data import touching_fraction
        from unetcu.predict import instance_method
        method = instance_method("auto", {"touching": touching_fraction([s.instances for s in tr]), "object_radius": radius},
                                 border)
    for r in images.values():
        r["seg_default"] = r["seg_watershed" if method == "watershed" else "seg"]
    t_pred = (time.perf_counter() - t0) / len(te)
    mean = {m: float(np.nanmean([r[m] for r in images.values()])) for m in METRIC_NAMES + ("seg_watershed", "seg_default")}
    return dict(set=name, k=FOLDS[name], fold=fold, seed=seed, arm=arm, preset=preset, steps=steps, engine=engine,
                instances=method, train_images=len(tr), test_images=len(te), train_seconds=t_train,
                predict_seconds_per_image=t_pred,
                recipe=recipe, final_loss=final_loss, diverged=not np.isfinite(final_loss), mean=mean, images=images,
                date=str(date.today()), machine=f"{platform.machine()}, {os.cpu_count()} cores")


def read_runs(path) -> list[dict]:
    """The runs recorded in a runs.jsonl; a line cut short (a run killed while writing it) is skipped
    with a note, and that run is done again by the next invocation."""
    runs = []
    for n, line in enumerate(open(path), 1):
        try:
            runs.append(json.loads(line))
        except json.JSONDecodeError:
            print(f"quality: {path}:{n} is not a whole record (skipped; its run will be done again)", file=sys.stderr)
    return runs


def key(r) -> tuple:
    return (r["set"], r["fold"], r["seed"], r["arm"], r["preset"], r["steps"])


def _signed(v: float) -> str:
    return f"{round(v, 3) + 0.0:+.3f}"  # (+ 0.0: no "-0.000" for a difference that rounds to nothing)


def _ms(v) -> str:
    return f"{np.mean(v):.3f} +- {np.std(v):.3f}" if len(v) else ""


def report(runs, peer: str = "peer") -> str:
    """Markdown: per set and budget, each arm's mean +- std over its runs (folds x seeds), then each
    other arm's paired difference from `peer` (same fold and seed): per fold (mean over seeds) and
    over all pairs (mean +- std), with a verdict on the set's deciding metrics."""
    out = []
    for budget in dict.fromkeys((r["preset"], r["steps"]) for r in runs):
        for name in dict.fromkeys(r["set"] for r in runs if (r["preset"], r["steps"]) == budget):
            rs = [r for r in runs if (r["preset"], r["steps"]) == budget and r["set"] == name]
            folds = sorted({r["fold"] for r in rs})
            out += [f"\n{name}, {budget[0]} preset, {budget[1]} steps (k = {rs[0]['k']} folds; folds run: "
                    f"{', '.join(map(str, folds))}; mean +- std over folds x seeds)\n",
                    "| arm | runs | train s | " + " | ".join(SHOWN) + " |", "|---|---|---|" + "---|" * len(SHOWN)]
            arms = list(dict.fromkeys(r["arm"] for r in rs))
            for arm in arms:
                a = [r for r in rs if r["arm"] == arm]
                out.append(f"| {arm} | {len(a)} | {np.mean([r['train_seconds'] for r in a]):.0f} | "
                           + " | ".join(_ms([r["mean"][m] for r in a if m in r["mean"]]) for m in SHOWN) + " |")
            base = {(r["fold"], r["seed"]): r for r in rs if r["arm"] == peer}
            others = [a for a in arms if a != peer]
            if not base or not others:
                continue
            metrics = DECIDE[name]
            out += ["", f"Paired difference arm - {peer} (same fold and seed; negative is better for errors, positive "
                        "for iou and seg):", "",
                    "| arm | metric | " + " | ".join(f"fold {f}" for f in folds) + " | all pairs | pairs | verdict |",
                    "|---|---|" + "---|" * len(folds) + "---|---|---|"]
            for arm in others:
                pairs = [(r["fold"], r, base[(r["fold"], r["seed"])]) for r in rs
                         if r["arm"] == arm and (r["fold"], r["seed"]) in base]
                for m in metrics:
                    d = [(f, a["mean"][m] - p["mean"][m]) for f, a, p in pairs if m in a["mean"] and m in p["mean"]]
                    per_fold = [_signed(np.mean([v for g, v in d if g == f])) if any(g == f for g, _ in d) else ""
                                for f in folds]
                    vals = [v for _, v in d]
                    if not vals:
                        continue
                    mean, sd = float(np.mean(vals)), float(np.std(vals))
                    better = mean < 0 if m in LOWER_IS_BETTER else mean > 0
                    verdict = ("one pair: no spread" if len(vals) < 2 else "within spread" if abs(mean) <= sd else
                               "better" if better else "worse")
                    out.append(f"| {arm} | {m} | " + " | ".join(per_fold) + f" | {_signed(mean)} +- {sd:.3f} | {len(vals)} | "
                               f"{verdict} |")
    return "\n".join(out)


SECTION = "## Segmentation quality (benchmarks/quality.py)"


def section(runs) -> list[str]:
    """RESULTS.md's section: what was run, then report(runs)."""
    dates = sorted({r["date"] for r in runs})
    machines = sorted({r["machine"] for r in runs})
    return [SECTION, "",
            f"Measured {' to '.join(dict.fromkeys([dates[0], dates[-1]]))} on {', '.join(machines)}, unetcu on engine "
            f"{', '.join(sorted({r['engine'] for r in runs}))}; `python -m benchmarks.quality` (its docstring: folds, arms). "
            "Each run trains on the other folds of the set and is scored on the held-out fold by the same code "
            "(overlap-tile, unetcu.metrics). unetcu: `unetcu train`'s defaults (`:field=value` changes one); peer: a "
            "PyTorch U-Net of the same architecture with the plain PyTorch recipe, its own sampler (random windows of "
            "the reflect-padded image, 8 rotations/flips, class-balanced cross-entropy, Adam 1e-3, He init; "
            "benchmarks/peer.py). rand_error, info_error: foreground-restricted, best over thresholds of the foreground "
            "probability (for a model with a border class: of its objects, cells grown into the border); seg: the "
            "connected components (for a border model: its cells grown into the border); seg_watershed: `predict "
            "--instances watershed`; seg_default: the objects out of the box, `unetcu predict`'s (--instances auto: "
            "the watershed where the training objects touch, DIC-HeLa and DSB 2018) for unetcu, the connected "
            "components for the peer. train s: seconds per run, two runs at a "
            "time on the two cores, one thread each.", report(runs), ""]


def figure(runs, root, out, path):
    """Rows: data sets (their first fold's first test image, first seed run); columns: image, truth, then
    each arm's objects as predict makes them by default, each object its own colour."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from unetcu import data as D
    from unetcu.viz import colour_instances
    sets = list(dict.fromkeys(r["set"] for r in runs))
    arms = list(dict.fromkeys(r["arm"] for r in runs))
    fig, ax = plt.subplots(len(sets), 2 + len(arms), figsize=(3.2 * (2 + len(arms)), 3.3 * len(sets)), squeeze=False)
    for i, name in enumerate(sets):
        first = min((r["fold"], r["seed"]) for r in runs if r["set"] == name)
        s = split(name, D.load_folder(Path(root) / name), first[0])[1][0]
        cols = [(s.image, f"{name}: {s.name[:16]}"), (colour_instances(s.instances), f"truth: {int(s.instances.max())} objects")]
        for arm in arms:
            r = [r for r in runs if (r["set"], r["fold"], r["seed"], r["arm"]) == (name, *first, arm)]
            f = Path(out) / "instances" / f"{run_name(name, first[0], arm, first[1], r[0]['preset'], r[0]['steps'])}.npz" if r else None
            if r and f.exists():  # the arm's objects out of the box (seg_default)
                how = r[0].get("instances", "components")
                inst = np.load(f)[how]
                seg = r[0]["images"][s.name]["seg_default"]
                cols.append((colour_instances(inst), f"{arm} ({how}): {int(inst.max())} objects, SEG {seg:.2f}"))
        for j, (a, title) in enumerate(cols):
            ax[i, j].imshow(a, cmap="gray" if a.ndim == 2 else None)
            ax[i, j].set_title(title, fontsize=8)
        for j in range(ax.shape[1]):
            ax[i, j].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=default_data_dir())
    ap.add_argument("--sets", nargs="+", default=list(FOLDS), choices=list(FOLDS))
    ap.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2], help="which folds to hold out (default 0 1 2)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--arms", nargs="+", default=["unetcu", "peer"], help="unetcu, peer, or either with :field=value,...")
    ap.add_argument("--engine", default="numpy", help="unetcu's engine (default numpy)")
    ap.add_argument("--preset", choices=tuple(PRESETS), default="small")
    ap.add_argument("--steps", type=int, default=1500, help="training steps of one tile (default 1500)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes, one thread each")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench-out") + "/quality")
    ap.add_argument("--report", help="print the tables of a runs.jsonl (and update --results) and exit")
    ap.add_argument("--results", default="", help="RESULTS.md whose quality section to replace by the record's "
                                                  "(e.g. benchmarks/RESULTS.md; default: none)")
    a = ap.parse_args(argv)
    if a.report:
        runs = read_runs(a.report)
        print(report(runs))
        if a.results:
            update_section(a.results, SECTION, section(runs))
        return 0
    try:
        for arm in a.arms:
            parse_arm(arm)
        for name in a.sets:
            for f in a.folds:
                if not 0 <= f < FOLDS[name]:
                    raise ValueError(f"--folds: {name} has folds 0..{FOLDS[name] - 1}, not {f}")
    except ValueError as e:
        ap.error(str(e))
    root = Path(a.data)
    if not all((root / n).is_dir() for n in a.sets):
        print(f"quality: no data for {', '.join(n for n in a.sets if not (root / n).is_dir())} in {root} "
              "(set --data or UNETCU_DATA)", file=sys.stderr)
        return 2
    if any(arm.startswith("peer") for arm in a.arms):
        try:
            import torch  # noqa: F401
        except ImportError:
            print("quality: the peer arm needs PyTorch (pip install torch), or run --arms unetcu", file=sys.stderr)
            return 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "runs.jsonl"
    done = {key(r) for r in read_runs(path)} if path.exists() else set()
    # seed by seed, fold by fold, set by set: a grid stopped early has both arms of whole pairs
    jobs = [(name, f, seed, arm) for seed in a.seeds for f in a.folds for name in a.sets for arm in a.arms
            if (name, f, seed, arm, a.preset, a.steps) not in done]
    print(f"quality: {len(jobs)} runs to do ({len(done)} in {path}) on {a.workers} workers, "
          f"{a.preset} preset, {a.steps} steps", flush=True)
    # one thread per process (BLAS, torch's OpenMP, Numba), set before a worker imports any of them
    for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[v] = "1"
    t0 = time.perf_counter()
    with ProcessPoolExecutor(a.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futs = {pool.submit(run_one, a.data, name, f, seed, arm, a.engine, a.preset, a.steps, str(out)): (name, f, seed, arm)
                for name, f, seed, arm in jobs}
        failed = 0
        for i, fut in enumerate(as_completed(futs), 1):
            try:
                r = fut.result()
            except Exception as e:  # one run's failure loses no other run: the rest go on and are recorded
                failed += 1
                print(f"[{i}/{len(jobs)}] {' '.join(map(str, futs[fut]))}: failed: {type(e).__name__}: {e}", flush=True)
                continue
            with path.open("a") as fh:
                fh.write(json.dumps(r) + "\n")
            print(f"[{i}/{len(jobs)}, {time.perf_counter() - t0:.0f} s] {r['set']} fold {r['fold']} seed {r['seed']} "
                  f"{r['arm']}: train {r['train_seconds']:.0f} s, " +
                  ", ".join(f"{m} {r['mean'][m]:.3f}" for m in DECIDE[r["set"]]), flush=True)
    runs = read_runs(path)
    print(report(runs))
    figure([r for r in runs if (r["preset"], r["steps"]) == (a.preset, a.steps)], root, out, out / "quality.png")
    if a.results:
        update_section(a.results, SECTION, section(runs))
    print(f"\nwrote {path} and {out / 'quality.png'}" + (f", updated {a.results}" if a.results else ""))
    if failed:
        print(f"quality: {failed} of {len(jobs)} runs failed (above); rerun to retry them", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
