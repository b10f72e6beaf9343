"""Data augmentation: one warp that applies, per output pixel, the elastic deformation composed with
rotation, shift and flips, and samples the image (bicubic or bilinear), the class labels (nearest:
class ids are never interpolated) and the weight map (bilinear), with mirrored borders, in one
launch. It produces the input tile (T x T) and the output-sized label and weight crops (O x O,
centred in the tile), plus gray-value changes of the image tile.

The per-pixel code is written once (`_make_pixel`) and compiled twice: as a Numba CUDA device
function for the GPU (CuPy arrays, launched on CuPy's current stream) and with Numba's CPU
target for the numpy and emu engines (a parallel loop over pixels). Both compute in float64 and
give the same numbers up to the last bits of the fused multiply-adds.

Elastic deformation (the paper): displacement vectors on a coarse 3x3 grid spanning the tile,
drawn from N(0, sigma^2) with sigma = 10 px, interpolated per pixel with bicubic (Keys' cubic
convolution, a = -0.5; the grid is extended past its edges by linear extrapolation).
The source position of tile pixel o is  centre + R(theta) F (o - (T-1)/2 + d(o)),  F the flips.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from .tiling import mirror_pad


def _make_pixel(jit):
    """Compile the per-pixel warp with `jit` (numba.njit or a cuda device-function decorator)."""

    @jit
    def reflect(i, n):
        # mirror index without repeating the edge pixel (period 2n-2), any distance out
        if 0 <= i < n:  # most taps: no integer division
            return i
        if n == 1:
            return 0
        p = 2 * n - 2
        i = abs(i) % p
        return p - i if i >= n else i

    @jit
    def keys(t):
        # Keys' cubic convolution kernel, a = -0.5 (Catmull-Rom): interpolating, exact at nodes
        t = abs(t)
        if t < 1.0:
            return (1.5 * t - 2.5) * t * t + 1.0
        if t < 2.0:
            return ((-0.5 * t + 2.5) * t - 4.0) * t + 2.0
        return 0.0

    @jit
    def sample_cubic(img, y, x):
        h, w = img.shape
        fy = math.floor(y)
        fx = math.floor(x)
        s = 0.0
        for a in range(-1, 3):
            wy = keys(y - (fy + a))
            if wy == 0.0:
                continue
            row = reflect(int(fy) + a, h)
            for b in range(-1, 3):
                wx = keys(x - (fx + b))
                if wx != 0.0:
                    s += wy * wx * img[row, reflect(int(fx) + b, w)]
        return s

    @jit
    def sample_linear(img, y, x):
        h, w = img.shape
        fy = math.floor(y)
        fx = math.floor(x)
        ty = y - fy
        tx = x - fx
        y0 = reflect(int(fy), h)
        y1 = reflect(int(fy) + 1, h)
        x0 = reflect(int(fx), w)
        x1 = reflect(int(fx) + 1, w)
        top = img[y0, x0] + tx * (img[y0, x1] - img[y0, x0])
        bot = img[y1, x0] + tx * (img[y1, x1] - img[y1, x0])
        return top + ty * (bot - top)

    @jit
    def pixel(idx, tile, out, disp, rot, flip_y, flip_x, cy, cx, cubic, image, labels, weights,
              out_image, out_labels, out_weights):
        oy = idx // tile
        ox = idx % tile
        half = (tile - 1) * 0.5
        dy = disp[0, oy, ox]
        dx = disp[1, oy, ox]
        py = oy - half + dy
        px = ox - half + dx
        if flip_y:
            py = -py
        if flip_x:
            px = -px
        c = math.cos(rot)
        s = math.sin(rot)
        sy = cy + c * py - s * px
        sx = cx + s * py + c * px
        if cubic:
            out_image[oy, ox] = sample_cubic(image, sy, sx)
        else:
            out_image[oy, ox] = sample_linear(image, sy, sx)
        m = (tile - out) // 2
        ly = oy - m
        lx = ox - m
        if 0 <= ly < out and 0 <= lx < out:
            h, w = labels.shape
            out_labels[ly, lx] = labels[reflect(int(math.floor(sy + 0.5)), h), reflect(int(math.floor(sx + 0.5)), w)]
            out_weights[ly, lx] = sample_linear(weights, sy, sx)

    return pixel


_cpu_pixel = _make_pixel(njit(cache=False))


@njit(parallel=True, nogil=True, cache=False)  # nogil: it runs in train's tile worker beside the step
def _warp_cpu(tile, out, disp, rot, flip_y, flip_x, cy, cx, cubic, image, labels, weights,
              out_image, out_labels, out_weights):
    for idx in prange(tile * tile):
        _cpu_pixel(idx, tile, out, disp, rot, flip_y, flip_x, cy, cx, cubic, image, labels, weights,
                   out_image, out_labels, out_weights)


_cuda_kernel = None
_cuda_pixel = None
cuda = None  # numba.cuda, imported on first use; a module global so Numba's simulator can swap it


def _warp_kernel(tile, out, disp, rot, flip_y, flip_x, cy, cx, cubic, image, labels, weights,
                 out_image, out_labels, out_weights):
    idx = cuda.grid(1)  # one thread per tile pixel
    if idx < tile * tile:
        _cuda_pixel(idx, tile, out, disp, rot, flip_y, flip_x, cy, cx, cubic, image, labels, weights,
                    out_image, out_labels, out_weights)


def _get_cuda_kernel():
    """The Numba CUDA kernel, compiled on first use."""
    global _cuda_kernel, _cuda_pixel, cuda
    if _cuda_kernel is None:
        from numba import cuda as numba_cuda
        cuda = numba_cuda
        _cuda_pixel = _make_pixel(cuda.jit(device=True))
        _cuda_kernel = cuda.jit(_warp_kernel)
    return _cuda_kernel


# ---- parameters ----------------------------------------------------------------------------------
@dataclass
class WarpParams:
    grid: np.ndarray       # (3, 3, 2) float64 displacements (dy, dx) in pixels
    rot: float             # radians
    flip_y: bool
    flip_x: bool
    cy: float              # image position the tile centre maps to
    cx: float
    contrast: float = 1.0  # gray values: v -> contrast * v + brightness, then gamma on [0, 1]
    brightness: float = 0.0
    gamma: float = 1.0

    @classmethod
    def identity(cls, cy, cx):
        return cls(np.zeros((3, 3, 2)), 0.0, False, False, float(cy), float(cx))


def draw_params(rng: np.random.Generator, image_hw, sigma: float = 10.0, rotate: bool = True,
                flip: bool = True, gray: bool = True) -> WarpParams:
    """Random parameters: elastic grid ~ N(0, sigma^2), rotation ~ U(0, 2 pi), flips, a centre
    anywhere in the image (the shift), and mild gray-value changes."""
    h, w = image_hw
    return WarpParams(
        grid=rng.normal(0.0, sigma, (3, 3, 2)) if sigma > 0 else np.zeros((3, 3, 2)),
        rot=float(rng.uniform(0, 2 * np.pi)) if rotate else 0.0,
        flip_y=bool(flip and rng.random() < 0.5), flip_x=bool(flip and rng.random() < 0.5),
        cy=float(rng.uniform(0, h - 1)), cx=float(rng.uniform(0, w - 1)),
        contrast=float(rng.uniform(0.8, 1.2)) if gray else 1.0,
        brightness=float(rng.normal(0, 0.1)) if gray else 0.0,
        gamma=float(np.exp(rng.uniform(-0.3, 0.3))) if gray else 1.0,
    )


# ---- the warp ------------------------------------------------------------------------------------
def warp(image, labels, weights, params: WarpParams, tile: int, out: int, cubic: bool = True, target: str | None = None):
    """Warp one (image, labels, weights) triple: returns (image tile (tile, tile) float32,
    labels (out, out) int32, weights (out, out) float32, displacement (2, tile, tile) float64).

    target: "cpu" (Numba CPU, NumPy arrays) or "cuda" (Numba CUDA kernel, CuPy arrays); default:
    cuda for CuPy inputs, else cpu."""
    if (tile - out) % 2 or out > tile or out < 1:
        raise ValueError(f"warp: output crop {out} must be centred in the tile {tile}")
    is_gpu = hasattr(image, "__cuda_array_interface__") and not isinstance(image, np.ndarray)
    target = target or ("cuda" if is_gpu else "cpu")
    if labels.shape != image.shape or weights.shape != image.shape:
        raise ValueError(f"warp: image {image.shape}, labels {labels.shape} and weights {weights.shape} must match")
    sizes = (np.int64(tile), np.int64(out))
    scalars = (float(params.rot), bool(params.flip_y), bool(params.flip_x), float(params.cy), float(params.cx), bool(cubic))
    if target == "cpu":
        xp = np
        o_img = np.empty((tile, tile), np.float32)
        o_lab = np.empty((out, out), np.int32)
        o_w = np.empty((out, out), np.float32)
        disp = displacement_field(params.grid, tile)
        _warp_cpu(*sizes, disp, *scalars, np.ascontiguousarray(image), np.ascontiguousarray(labels),
                  np.ascontiguousarray(weights), o_img, o_lab, o_w)
    elif target == "cuda":
        kern = _get_cuda_kernel()
        if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
            xp = np  # the simulator takes host arrays
        else:
            import cupy as xp
        o_img = xp.empty((tile, tile), np.float32)
        o_lab = xp.empty((out, out), np.int32)
        o_w = xp.empty((out, out), np.float32)
        disp = xp.asarray(displacement_field(params.grid, tile))
        threads = 256
        blocks = -(-tile * tile // threads)
        if xp is np:
            kern[blocks, threads](*sizes, disp, *scalars, image, labels, weights, o_img, o_lab, o_w)
        else:  # on CuPy's current stream, so it is ordered with our kernels
            stream = cuda.external_stream(xp.cuda.get_current_stream().ptr)
            kern[blocks, threads, stream](*sizes, disp, *scalars, image, labels, weights, o_img, o_lab, o_w)
    else:
        raise ValueError(f"warp: target must be 'cpu' or 'cuda', got {target!r}")
    return gray_values(o_img, params, xp), o_lab, o_w, disp


def _keys(t):
    """Keys' cubic convolution kernel, a = -0.5 (Catmull-Rom), elementwise: interpolating, exact at nodes."""
    t = np.abs(t)
    return np.where(t < 1, (1.5 * t - 2.5) * t * t + 1, np.where(t < 2, ((-0.5 * t + 2.5) * t - 4) * t + 2, 0.0))


def displacement_field(grid, tile: int) -> np.ndarray:
    """(2, tile, tile) float64: the 3x3 grid of displacement vectors (3, 3, 2) interpolated at every tile
    pixel with bicubic (Keys) convolution, the grid extended past its edges by linear extrapolation.
    Separable, so it is two small matrix products per component, (T, 6) @ (6, 6) @ (6, T), instead of
    16 kernel evaluations per pixel: the grid's 6 nodes per axis, -1..4, cover every tap."""
    g = np.asarray(grid, dtype=np.float64)
    ext = np.empty((6, 6, 2))
    for a in range(-1, 5):  # node (a, b): the nearest grid node, plus each axis's slope times the distance past it
        for b in range(-1, 5):
            ia, ib = min(max(a, 0), 2), min(max(b, 0), 2)
            v = g[ia, ib].copy()
            if a != ia:
                v += (a - ia) * (g[ia, ib] - g[ia - (a - ia), ib])
            if b != ib:
                v += (b - ib) * (g[ia, ib] - g[ia, ib - (b - ib)])
            ext[a + 1, b + 1] = v
    pos = np.arange(tile) * (2.0 / (tile - 1)) if tile > 1 else np.zeros(1)  # grid coordinates in [0, 2]
    w = _keys(pos[:, None] - np.arange(-1, 5)[None, :])  # (T, 6): weight of node -1..4 at each pixel
    return np.stack([w @ ext[:, :, c] @ w.T for c in range(2)])


def gray_values(tile, params: WarpParams, xp=np):
    """Contrast, brightness, then gamma applied to the tile's values mapped onto [0, 1] and back."""
    if params.contrast == 1.0 and params.brightness == 0.0 and params.gamma == 1.0:
        return tile
    t = tile * np.float32(params.contrast) + np.float32(params.brightness)
    if params.gamma != 1.0:
        lo, hi = t.min(), t.max()
        span = xp.maximum(hi - lo, np.float32(1e-6))
        t = lo + span * ((t - lo) / span) ** np.float32(params.gamma)
    return t.astype(np.float32)


def draw_window(rng: np.random.Generator, image_hw, tile: int, out: int, flips: bool = True) -> tuple:
    """The plain augmentation's random numbers, in random_window's order: (y0, x0, quarter turns k,
    mirror f) for an image of shape image_hw. window() applies them."""
    h, w = image_hw
    y0 = int(rng.integers(0, max(1, h - out + 1)))
    x0 = int(rng.integers(0, max(1, w - out + 1)))
    k, f = (int(rng.integers(0, 4)), bool(rng.random() < 0.5)) if flips else (0, False)
    return y0, x0, k, f


def window(image, labels, weights, tile: int, out: int, drawn: tuple):
    """The window of draw_window's numbers: image (tile, tile) float32, labels (out, out) int32 and
    weights (out, out) float32, mirror-padded at the borders, turned k quarters, then mirrored."""
    y0, x0, k, f = drawn
    h, w = image.shape
    m = (tile - out) // 2
    pi = mirror_pad(image, m, m + max(0, out - h), m, m + max(0, out - w))
    pl = mirror_pad(labels, 0, max(0, out - h), 0, max(0, out - w))
    pw = mirror_pad(weights, 0, max(0, out - h), 0, max(0, out - w))
    t = pi[y0:y0 + tile, x0:x0 + tile]
    lab = pl[y0:y0 + out, x0:x0 + out]
    wt = pw[y0:y0 + out, x0:x0 + out]
    res = []
    for a in (t, lab, wt):
        a = np.rot90(a, k)
        res.append(np.ascontiguousarray(a[:, ::-1] if f else a))
    return res[0].astype(np.float32), res[1].astype(np.int32), res[2].astype(np.float32)


def random_window(rng: np.random.Generator, image, labels, weights, tile: int, out: int, flips: bool = True):
    """The plain augmentation (no elastic warp): a random window, mirror-padded at the borders,
    with random flips and 90 degree rotations when `flips` (draw_window, then window)."""
    return window(image, labels, weights, tile, out, draw_window(rng, image.shape, tile, out, flips))
