"""Segmentation quality on real data: train on a split of each shared data set with a stated budget,
segment the held-out images by overlap-tile, print the metric table, write quality.json.

    python benchmarks/quality.py                       # ISBI 2012 and DIC-HeLa, preset by device
    python benchmarks/quality.py --sets dic_hela --steps 3000 --preset small --engine numpy

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
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import default_data_dir  # noqa: E402
from unetcu import UNet, data as D  # noqa: E402
from unetcu.metrics import METRIC_NAMES, evaluate, format_table  # noqa: E402
from unetcu.ops import resolve_engine  # noqa: E402
from unetcu.tiling import predict_probs  # noqa: E402
from unetcu.train import PRESETS, TrainConfig, train  # noqa: E402


def split(name: str, samples):
    if name == "isbi2012":
        return samples[:20], samples[20:]
    if name == "dic_hela":
        use = [s for s in samples if not s.name.endswith("067")]
        return use[:6], use[6:]
    if name == "dsb2018_fluo":
        return samples[:200], samples[200:]
    raise ValueError(f"unknown data set {name}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=default_data_dir())
    ap.add_argument("--sets", nargs="+", default=["isbi2012", "dic_hela"], choices=["isbi2012", "dic_hela", "dsb2018_fluo"])
    ap.add_argument("--engine", choices=("numpy", "emu", "cuda"))
    ap.add_argument("--preset", choices=tuple(PRESETS), help="default: paper on a GPU, small on a CPU")
    ap.add_argument("--steps", type=int, help="training steps per set (default: 1500 small, 4000 paper)")
    ap.add_argument("--lr", type=float, default=0.001)
    ap.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping (default 1; 0: off)")
    ap.add_argument("--tta", action="store_true", help="test-time augmentation over 8 rotations/flips")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench-out") + "/quality")
    a = ap.parse_args(argv)
    engine = resolve_engine(a.engine)
    preset = a.preset or ("paper" if engine == "cuda" else "small")
    depth, base, tile = PRESETS[preset]
    steps = a.steps or (4000 if preset == "paper" else 1500)
    root = Path(a.data)
    if not root.is_dir():
        print(f"quality: no data at {root} (set --data or UNETCU_DATA)", file=sys.stderr)
        return 2
    report = dict(date=str(date.today()), engine=engine, preset=preset, steps=steps, lr=a.lr, clip=a.clip, tile=tile,
                  machine=f"{platform.machine()}, {os.cpu_count()} cores", sets={})
    for name in a.sets:
        samples = D.load_folder(root / name)
        tr, te = split(name, samples)
        print(f"== {name}: {len(tr)} training, {len(te)} test images; preset {preset} on {engine}, {steps} steps", flush=True)
        model = UNet(depth=depth, base_channels=base, engine=engine, seed=0)
        cfg = TrainConfig(steps=steps, lr=a.lr, tile=tile, val_every=max(steps // 3, 1), ckpt_every=steps,
                          out=str(Path(a.out) / name), seed=0, w0=0.0 if name == "isbi2012" else 10.0, clip=a.clip)
        t0 = time.perf_counter()
        train(model, tr, te[:2], cfg, progress=True, log=print, overwrite=True)  # a rerun replaces its own runs
        t_train = time.perf_counter() - t0
        rows = []
        t0 = time.perf_counter()
        for s in te:
            probs = predict_probs(model, s.image, tile=tile, tta=a.tta)
            rows.append((s.name, evaluate(s.instances, prob_fg=1.0 - probs[0])))
        t_pred = (time.perf_counter() - t0) / len(te)
        print(format_table(rows), flush=True)
        mean = {m: float(np.nanmean([r[m] for _, r in rows])) for m in METRIC_NAMES}
        report["sets"][name] = dict(train_images=len(tr), test_images=len(te), train_seconds=t_train, w0=cfg.w0, clip=cfg.clip,
                                    predict_seconds_per_image=t_pred, mean=mean, images=dict(rows))
    Path(a.out).mkdir(parents=True, exist_ok=True)
    with open(Path(a.out) / "quality.json", "w") as f:
        json.dump(report, f, indent=1)
    print(f"\nwrote {a.out}/quality.json")
    print(f"{'set':<14}{'train s':>9}{'s/image':>9}" + "".join(f"{m:>20}" for m in METRIC_NAMES))
    for name, r in report["sets"].items():
        print(f"{name:<14}{r['train_seconds']:>9.0f}{r['predict_seconds_per_image']:>9.2f}"
              + "".join(f"{r['mean'][m]:>20.4f}" for m in METRIC_NAMES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
