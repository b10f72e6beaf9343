"""What a training run shows as it goes: the progress bar, log.csv and the two plots.

    Progress      a one-line bar on a terminal; a line every ~5 % (or 30 s) in a log file
    CsvLog        log.csv, a row per step (step, loss, lr, val_loss, val_iou, seconds), appended as it goes
    plot_curves   curves.png: training and validation loss (log axis), validation IoU
    plot_samples  samples.png: image, truth and prediction of a few validation images
Every file is replaced atomically (files.atomic_write). train.py calls these; nothing here trains.
"""
from __future__ import annotations

import csv
import io
import math
import sys
import time
from pathlib import Path

import numpy as np

from .files import atomic_write


class Progress:
    """A one-line progress bar on a terminal. Elsewhere (a log file, CI) a line after the first step,
    then every ~5% of the run or every 30 s, whichever comes first. The speed and ETA are measured
    from the end of the first step: it also compiles (the warp, kernels) and would skew them."""

    def __init__(self, total, start=0, stream=sys.stderr, enabled=True, every_s=30.0):
        self.total, self.start, self.stream, self.enabled = total, start, stream, enabled
        self.t0 = self.t_line = time.perf_counter()
        self.tty = getattr(stream, "isatty", lambda: False)()
        self.every, self.every_s = max(1, (total - start) // 20), every_s
        self.open_line = False
        self.first = None  # (step, time) at the first update

    def update(self, step, **info):
        if not self.enabled:
            return
        now = time.perf_counter()
        done = step - self.start
        if self.first is None:
            self.first = (step, now)
        if step > self.first[0]:
            rate = (step - self.first[0]) / max(now - self.first[1], 1e-9)
            speed = f"{rate:.2f} steps/s ETA {_fmt_time((self.total - step) / rate)}"
        else:
            speed = f"first step {now - self.t0:.1f} s (with compiling)"
        bar = "#" * int(30 * step / self.total)
        text = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items())
        line = f"step {step}/{self.total} [{bar:<30}] {text} {speed}"
        if self.tty:
            self.stream.write("\r" + line[:160].ljust(160))
            self.open_line = step != self.total
            if step == self.total:
                self.stream.write("\n")
        elif done == 1 or done % self.every == 0 or step == self.total or now - self.t_line >= self.every_s:
            self.stream.write(line + "\n")
            self.t_line = now
        self.stream.flush()

    def begin(self, note=""):
        """A first line at once, before the first step (which may take a while: compiling, caches)."""
        if self.enabled:
            line = f"step {self.start}/{self.total} [{'#' * int(30 * self.start / self.total):<30}] starting{note}"
            self.stream.write(("\r" + line[:160].ljust(160)) if self.tty else line + "\n")
            self.open_line = self.tty
            self.stream.flush()

    def close(self):
        """End a bar left open on a terminal (so the next message starts on its own line)."""
        if self.enabled and self.open_line:
            self.stream.write("\n")
            self.stream.flush()
            self.open_line = False


def _fmt_time(s):
    if not math.isfinite(s):
        return "?"
    return f"{int(s // 60)}m{int(s % 60):02d}s"


class CsvLog:
    """log.csv, a row per step as training goes (so a long run can be watched). Opening it rewrites
    the file atomically from `history` (a resumed run's earlier steps), then rows are appended."""
    KEYS = ["step", "loss", "lr", "val_loss", "val_iou", "seconds"]

    def __init__(self, path, history=()):
        self.path = Path(path)
        self.last = history[-1]["step"] if history else 0
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self.KEYS, lineterminator="\n")
        w.writeheader()
        for row in history:
            w.writerow({k: row.get(k, "") for k in self.KEYS})
        atomic_write(self.path, lambda p: Path(p).write_text(buf.getvalue()))

    def append(self, row):
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.KEYS, lineterminator="\n").writerow({k: row.get(k, "") for k in self.KEYS})
        self.last = row["step"]


def _savefig(fig, path):
    atomic_write(path, lambda p: fig.savefig(p, dpi=100, format=Path(path).suffix[1:]))


def loss_axis(loss, val_loss=()) -> tuple[float, float]:
    """(bottom, top) of the log loss axis: from the 2nd percentile of the positive losses / 1.5 (a
    few near-zero steps would stretch the axis over decades and flatten the curve) to 1.5 x the
    largest finite loss, at least one decade."""
    loss = np.asarray(loss, dtype=np.float64)
    finite = np.concatenate([loss[np.isfinite(loss)], np.asarray(val_loss, dtype=np.float64)])
    pos = finite[finite > 0]
    if not pos.size:
        return 1e-3, 1.0
    lo = float(np.percentile(pos, 2)) / 1.5
    return lo, max(lo * 10, float(pos.max()) * 1.5)


def plot_curves(history, path):
    """Training loss (per step and a running mean) and validation loss on a log axis, validation
    IoU beside it. The loss axis spans the 2nd..100th percentile of the steps' losses (a single
    near-zero step would otherwise stretch it over decades); steps below it are counted in the legend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    steps = [r["step"] for r in history]
    loss = np.array([r["loss"] for r in history], dtype=np.float64)
    v = [r for r in history if "val_loss" in r]
    lo, hi = loss_axis(loss, [r["val_loss"] for r in v])
    below = int((loss < lo).sum())
    ax[0].plot(steps, loss, lw=0.5, alpha=0.4,
               label="training loss (per step)" + (f"; {below} below the axis" if below else ""))
    k = max(1, len(loss) // 50)
    if len(loss) >= k:
        ax[0].plot(steps[k - 1:], np.convolve(loss, np.ones(k) / k, mode="valid"), label=f"mean of {k}")
    if v:
        ax[0].plot([r["step"] for r in v], [r["val_loss"] for r in v], "o-", label="validation loss")
        ax[1].plot([r["step"] for r in v], [r["val_iou"] for r in v], "o-", color="C2")
    ax[0].set_xlabel("step"), ax[0].set_ylabel("weighted cross-entropy per pixel"), ax[0].set_yscale("log")
    ax[0].legend(fontsize=7, framealpha=0.6)
    if not v:
        ax[1].text(0.5, 0.5, "no validation yet", ha="center", va="center", transform=ax[1].transAxes, color="0.4")
    ax[0].set_ylim(lo, hi)
    ax[1].set_xlabel("step"), ax[1].set_ylabel("validation IoU (mean)"), ax[1].set_ylim(0, 1)
    ax[1].grid(alpha=0.3)
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)


def plot_samples(model, samples, path, tile: int):
    """Image, truth and prediction side by side for a few validation images; objects in colours of
    their own (the truth's instances; the prediction's, as predict makes them), so cells the net
    merges show as one colour."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from .instances import from_classes
    from .metrics import segments
    from .tiling import predict_probs
    from .viz import colour_instances
    fig, ax = plt.subplots(len(samples), 3, figsize=(9, 3 * len(samples)), squeeze=False)
    for i, s in enumerate(samples):
        pred = from_classes(predict_probs(model, s.image, tile=tile).argmax(0), model.config.get("border", 0))
        truth = s.instances if not s.semantic else segments(s.classes() > 0)
        n_true, n_pred = int(np.unique(truth[truth > 0]).size), int(pred.max())
        panels = ((s.image, f"{s.name}: image"), (colour_instances(truth), f"truth: {n_true} objects"),
                  (colour_instances(pred), f"prediction: {n_pred} objects"))
        for j, (a, title) in enumerate(panels):
            ax[i, j].imshow(a, cmap="gray", interpolation="nearest")
            ax[i, j].set_title(title, fontsize=8)
            ax[i, j].axis("off")
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)
