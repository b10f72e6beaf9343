"""`unetcu predict`: segment image files with a trained model, by overlap-tile, and write the
results. Every input is read and checked before anything is written, and every output file is
written to a temporary name and renamed, so a failure leaves no half-written results."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from .data import load_images
from .files import atomic_write
from .model import UNet
from .ops._core import PRECISIONS
from .tiling import predict_probs


def write_results(out: Path, name: str, probs: np.ndarray):
    import tifffile
    from PIL import Image
    k = probs.shape[0]
    labels = probs.argmax(0)
    inst, n = ndi.label(labels > 0)
    if n >= 2**16:
        raise ValueError(f"{name}: {n} objects do not fit a 16-bit instance image")
    scale = 255 // max(1, k - 1)
    atomic_write(out / f"{name}_prob.tif", lambda p: tifffile.imwrite(p, probs.astype(np.float32)))
    atomic_write(out / f"{name}_labels.png", lambda p: Image.fromarray((labels * scale).astype(np.uint8)).save(p, format="PNG"))
    atomic_write(out / f"{name}_instances.png", lambda p: Image.fromarray(inst.astype(np.uint16)).save(p, format="PNG"))
    return n


def predict_files(model_path, images, out_dir, engine=None, tile=None, batch=4, tta=False, progress=True,
                  precision="fp32"):
    model = UNet.load(model_path, engine=engine)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    model.precision = precision
    if model.config["in_channels"] != 1:
        raise ValueError(f"{model_path}: the model takes {model.config['in_channels']} channels; files give 1")
    inputs = load_images(images)  # reads and checks every file first
    names = [n for n, _ in inputs]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"two inputs would write the same outputs: {', '.join(sorted(dup))}")
    if tile is not None:
        model.output_size(tile)  # a clear error for an invalid tile before any work
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for i, (name, img) in enumerate(inputs, 1):
        probs = predict_probs(model, img, tile=tile, batch=batch, tta=tta)
        n = write_results(out, name, probs)
        if progress:
            print(f"[{i}/{len(inputs)}] {name}: {img.shape[0]}x{img.shape[1]}, {n} objects -> {out}/{name}_*", file=sys.stderr)
    return names
