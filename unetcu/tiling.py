"""Overlap-tile inference (the paper's Fig. 2): segment an image of any size with a net whose
convolutions are all valid. The middle of predict's path: files (predict.py, large.py) -> tiles
(here) -> the model's forward pass (model.py) -> class probabilities, back to the caller to write.

The output plane is cut into output-sized tiles; each tile's input is the surrounding input-sized
window of the image, mirror-padded where the window leaves the image (missing context is
extrapolated by mirroring). Because every convolution is valid, the stitched tiles equal one pass
over the whole padded image up to float rounding: there are no seams.
"""
from __future__ import annotations

import numpy as np

from .model import check_memory, output_size, valid_input_size


def mirror_index(n: int, before: int, after: int) -> np.ndarray:
    """The source index of every position of one axis of n pixels padded by `before` and `after`:
    mirrored without repeating the edge pixel (numpy's 'reflect', period 2n-2), reflecting again
    as often as needed when a pad is wider than the axis; a 1-pixel axis cannot reflect and repeats.
    Each axis is padded on its own: a 1-pixel-thin image (a line scan) is mirrored along its long
    axis exactly as a wider image is."""
    if n < 1 or before < 0 or after < 0:
        raise ValueError(f"mirror_index: an axis of {n} pixels padded by ({before}, {after})")
    return np.pad(np.arange(n), (before, after), mode="edge" if n == 1 else "reflect")


def mirror_pad(img: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    """Pad the last two axes by mirroring without repeating the edge pixel (numpy's 'reflect'),
    reflecting again as often as needed when a pad is wider than the image; each axis on its own
    (mirror_index): a 1-pixel axis repeats, the other axis still reflects."""
    rows = mirror_index(img.shape[-2], top, bottom)
    cols = mirror_index(img.shape[-1], left, right)
    return np.take(np.take(img, rows, axis=-2), cols, axis=-1)


def default_tile(depth: int, image_hw, max_out: int = 388) -> int:
    """Input tile size: the paper's 572 for depth 5, else the valid size whose output is
    about max_out, never much larger than the image."""
    want = min(max_out, max(image_hw))
    return valid_input_size(max(1, want), depth)


def tile_geometry(model, tile: int | None, image_hw=(10**9, 10**9)) -> tuple[int, int, int]:
    """(tile, out, margin): the input tile (the given one, else default_tile for an image of
    image_hw, the largest it picks by default), its output size and the context each side
    ((tile - out) / 2). Raises ValueError "--tile: ..." for a tile the net cannot take."""
    depth = model.config["depth"]
    if tile is not None and not (isinstance(tile, (int, np.integer)) and not isinstance(tile, bool) and tile >= 1):
        raise ValueError(f"--tile {tile!r}: give a whole number of pixels >= 1")
    tile = default_tile(depth, image_hw) if tile is None else int(tile)
    try:
        out = output_size(tile, depth)
    except ValueError as e:
        raise ValueError(f"--tile: {e}") from None
    return tile, out, (tile - out) // 2


def check_tiles(model, tile: int | None, batch: int, image_hw=(10**9, 10**9)) -> None:
    """Refuse before any work a tile the net cannot take (tile_geometry) or `batch` tiles that the
    engine's memory cannot hold (model.check_memory: MemoryError)."""
    if not (isinstance(batch, (int, np.integer)) and not isinstance(batch, bool) and batch >= 1):
        raise ValueError(f"--batch {batch!r}: give a whole number of tiles >= 1")
    tile = tile_geometry(model, tile, image_hw)[0]
    c = model.config
    check_memory(model.engine, tile, batch, c["depth"], c["base_channels"], c["n_classes"], c["in_channels"],
                 training=False)


def predict_probs(model, image: np.ndarray, tile: int | None = None, batch: int = 4, tta: bool = False,
                  progress=None) -> np.ndarray:
    """Class probabilities (n_classes, H, W) of a standardised (H, W) image, by overlap-tile.

    tile: the input tile size (default: see default_tile); batch: tiles per forward pass;
    tta: average the probabilities over the 8 rotations/flips of the input."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2 or 0 in image.shape:
        raise ValueError(f"predict: expected a non-empty 2-D image, got shape {image.shape}")
    if not tta:
        return _predict(model, image, tile, batch, progress)
    acc = None
    for k in range(8):
        t = _dihedral(image, k)
        p = _dihedral_inverse(_predict(model, t, tile, batch, progress), k)
        acc = p if acc is None else acc + p
    return acc / 8


def _dihedral(a, k):  # rotate by 90*(k % 4) degrees, then flip horizontally if k >= 4
    a = np.rot90(a, k % 4, axes=(-2, -1))
    return np.ascontiguousarray(a[..., ::-1] if k >= 4 else a)


def _dihedral_inverse(a, k):
    a = a[..., ::-1] if k >= 4 else a
    return np.ascontiguousarray(np.rot90(a, -(k % 4), axes=(-2, -1)))


def _predict(model, image, tile, batch, progress):
    tile, out, margin = tile_geometry(model, tile, image.shape)
    h, w = image.shape
    ny, nx = -(-h // out), -(-w // out)
    padded = mirror_pad(image, margin, margin + ny * out - h, margin, margin + nx * out - w)
    return predict_padded(model, padded, tile, batch, progress)[:, :h, :w]


def predict_padded(model, padded: np.ndarray, tile: int, batch: int = 4, progress=None) -> np.ndarray:
    """Class probabilities (n_classes, ny*out, nx*out) float32 of a window that already holds its
    context: padded is (ny*out + 2*margin, nx*out + 2*margin) float32, margin = (tile - out) / 2.

    The tile loop of overlap-tile, shared by the in-memory path (the whole mirror-padded image) and
    the block-wise path (unetcu.large: one block of a larger image with its neighbours' pixels as
    context), so both run the same tiles through the same code. Raises ValueError when the window
    is not a whole number of output tiles plus the margins."""
    tile, out, margin = tile_geometry(model, tile)
    ph, pw = padded.shape
    if (ph - 2 * margin) % out or (pw - 2 * margin) % out or min(ph, pw) < tile:
        raise ValueError(f"predict_padded: a {ph}x{pw} window is not whole {out}-pixel output tiles "
                         f"plus a {margin}-pixel margin on each side (tile {tile})")
    ny, nx = (ph - 2 * margin) // out, (pw - 2 * margin) // out
    probs = np.empty((model.config["n_classes"], ny * out, nx * out), np.float32)
    corners = [(ty * out, tx * out) for ty in range(ny) for tx in range(nx)]
    xp = model.xp
    for i in range(0, len(corners), batch):
        chunk = corners[i:i + batch]
        x = np.stack([padded[y:y + tile, x:x + tile] for y, x in chunk])[:, None]
        p = model.predict_proba(xp.asarray(x))
        p = p.get() if hasattr(p, "get") else p
        for (y, x0), pi in zip(chunk, p):
            probs[:, y:y + out, x0:x0 + out] = pi
        if progress:
            progress(min(i + batch, len(corners)), len(corners))
    return probs
