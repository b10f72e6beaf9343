"""Pictures people can open: instance maps in distinct colours (a 16-bit id image looks black in
any viewer), optionally blended over the gray image, so merged or split cells are visible."""
from __future__ import annotations

import numpy as np


def colour_instances(instances: np.ndarray, image: np.ndarray | None = None, alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) uint8: object k in a colour of its own (golden-ratio hues, so neighbouring ids
    differ), background black; with `image` (H, W), blended over the image scaled to 0..255
    (background shows the image). instances: (H, W) integers, 0 = background."""
    inst = np.asarray(instances).astype(np.int64)
    if inst.ndim != 2:
        raise ValueError(f"colour_instances: expected (H, W) ids, got shape {inst.shape}")
    n = int(inst.max()) if inst.size else 0
    hue = (np.arange(n + 1) * 0.618033988749895) % 1.0
    import matplotlib.colors as mcolors
    lut = (mcolors.hsv_to_rgb(np.stack([hue, np.full(n + 1, 0.85), np.full(n + 1, 0.95)], -1)) * 255).astype(np.uint8)
    lut[0] = 0
    rgb = lut[np.clip(inst, 0, None)]
    if image is None:
        return rgb
    g = np.asarray(image, dtype=np.float64)
    lo, hi = np.nanpercentile(g, 1), np.nanpercentile(g, 99)
    g = np.clip((g - lo) / (hi - lo if hi > lo else 1.0), 0, 1)[..., None] * 255
    out = np.where(inst[..., None] > 0, (1 - alpha) * g + alpha * rgb, g)
    return np.round(out).astype(np.uint8)
