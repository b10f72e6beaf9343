"""Data: the synthetic touching-cells generator (the default dataset, so `unetcu train` works with
nothing downloaded) and loaders for PNG/TIFF folders and multi-page TIFF stacks.

Files are read under one input-format policy (README "Input formats", `ImageFile`): the file's own
metadata decides pages and channels, colour becomes ITU-R 601 luma, alpha is dropped, anything
else is refused naming the file and its shape; label values are audited for their mode.

A sample is (image, instances, name): image float32 (H, W) standardised per image (zero mean,
unit variance; the same at training and prediction), instances int32 (H, W) with 0 = background
and 1..n = objects. Binary label images (e.g. ISBI 2012: 0 = membrane, 255 = interior) become
instances by connected components of the foreground, as the paper's weight map needs.
The two training classes are background (with the separation borders between touching objects)
and object interior: `classes_from_instances`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

IMAGE_EXTS = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


@dataclass
class Sample:
    image: np.ndarray      # (H, W) float32, standardised
    instances: np.ndarray  # (H, W) int32, 0 = background (for label mode 'classes': the class map)
    name: str
    semantic: bool = False  # True: `instances` holds class ids as given (label mode 'classes')
    read_as: str = ""       # how the label file was read: binary, instance, classes, threshold ("": generated)

    def classes(self) -> np.ndarray:
        """The training target: class ids (H, W) int32."""
        return self.instances.astype(np.int32) if self.semantic else classes_from_instances(self.instances)


# ---- labels --------------------------------------------------------------------------------------
def separation_borders(instances: np.ndarray) -> np.ndarray:
    """Object pixels that touch (8-neighbourhood) a pixel of a different object: the separation
    border the paper makes background so the net learns the gap between touching cells."""
    inst = np.asarray(instances)
    fg = inst > 0
    inst = inst.astype(np.int64)
    above = int(inst.max()) + 1  # stands for background in the min filter (no int64-max: scipy overflows)
    mx = ndi.maximum_filter(inst, size=3, mode="nearest")
    mn = ndi.minimum_filter(np.where(fg, inst, above), size=3, mode="nearest")
    return fg & ((mx > inst) | (mn < inst))


def classes_from_instances(instances: np.ndarray) -> np.ndarray:
    """int32 class map: 1 = object interior, 0 = background and separation borders."""
    return ((instances > 0) & ~separation_borders(instances)).astype(np.int32)


def border_classes(instances: np.ndarray, width: int) -> np.ndarray:
    """int32 (H, W) class map of the border target: 0 = background, 1 = cell interior, 2 = touching
    border: object pixels within `width` px (Euclidean) of a pixel of another object. Cells that
    touch are then two interiors apart by 2 x width px of border, a band a small net learns far
    more easily than the paper's 1-px gap; objects are the interiors grown back into the border
    (instances.grow_cores). Source: the three-class (background / interior / boundary) U-Net of
    Caicedo et al. (Cytometry A 2019, nucleus segmentation); the boundary here only where another
    object is within `width` px, so a cell far from others keeps its whole area."""
    if width < 1:
        raise ValueError(f"border_classes: width must be >= 1 px, got {width}")
    inst = np.asarray(instances).astype(np.int64)
    fg = inst > 0
    y, x = np.ogrid[-width:width + 1, -width:width + 1]
    disk = x * x + y * y <= width * width
    above = int(inst.max()) + 1  # stands for background in the min filter
    mx = ndi.maximum_filter(inst, footprint=disk, mode="nearest")
    mn = ndi.minimum_filter(np.where(fg, inst, above), footprint=disk, mode="nearest")
    return np.where(fg & ((mx > inst) | (mn < inst)), 2, fg).astype(np.int32)


def touching_fraction(instance_maps) -> float:
    """The fraction of the objects of (H, W) instance maps (0 = background) that touch another
    object (8-neighbourhood, separation_borders); 0.0 when there are none. Membrane labels (ISBI
    2012: nearly every cell walled off by background) give 0.01; DIC-HeLa's touching cells 0.47."""
    touching = total = 0
    for m in instance_maps:
        m = np.asarray(m)
        total += np.unique(m[m > 0]).size
        touching += np.unique(m[separation_borders(m)]).size
    return touching / total if total else 0.0


def standardise(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img, dtype=np.float64)
    if img.ndim != 2:  # colour becomes gray when a file is read (ImageFile), never here
        raise ValueError(f"standardise: expected a 2-D image, got shape {img.shape}")
    s = img.std()
    return ((img - img.mean()) / (s if s > 0 else 1.0)).astype(np.float32)


# ---- synthetic touching cells --------------------------------------------------------------------
def synthetic_cells(size=(256, 256), seed: int = 0, density: float = 1 / 1400, radius=(9.0, 17.0)):
    """One synthetic image of touching cells: (image float32 in [0, 1], instances int32).

    Cells are wobbly ellipses at random positions, packed so that many touch or nearly touch;
    where two overlap the pixel goes to the nearer (in normalised distance), which leaves a shared
    boundary with no gap. Interiors are textured, rims and shared boundaries slightly darker, then
    blur and noise. Deterministic for a given seed."""
    rng = np.random.default_rng(seed)
    h, w = size
    n = max(1, int(round(density * h * w * rng.uniform(0.8, 1.2))))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    best = np.full((h, w), np.inf)
    second = np.full((h, w), np.inf)
    inst = np.zeros((h, w), np.int32)
    centres = []
    tries = 0
    while len(centres) < n and tries < 50 * n:
        tries += 1
        c = rng.uniform([0, 0], [h, w])
        r = rng.uniform(*radius)
        # close packing: centres may come as near as 1.1 radii, so neighbours overlap and touch
        if any(np.hypot(*(c - c2)) < 1.1 * max(r, r2) for c2, r2 in centres):
            continue
        centres.append((c, r))
    for k, (c, r) in enumerate(centres, 1):
        ratio = rng.uniform(0.7, 1.0)
        th = rng.uniform(0, np.pi)
        dy, dx = yy - c[0], xx - c[1]
        u = (dx * np.cos(th) + dy * np.sin(th)) / r
        v = (-dx * np.sin(th) + dy * np.cos(th)) / (r * ratio)
        ang = np.arctan2(v, u)
        wobble = 1 + 0.08 * np.sin(3 * ang + rng.uniform(0, 6.3)) + 0.05 * np.sin(5 * ang + rng.uniform(0, 6.3))
        d = np.hypot(u, v) / wobble
        closer = d < best
        second = np.where(closer, best, np.minimum(second, d))
        best = np.where(closer, d, best)
        inst = np.where(closer & (d < 1.0), k, inst)
    inst = _relabel(inst)
    # image: background, textured interiors, darker rims and shared boundaries
    tex = ndi.gaussian_filter(rng.standard_normal((h, w)), 2.0)
    tex /= tex.std() + 1e-12
    level = np.concatenate([[0.0], rng.uniform(0.55, 0.85, inst.max())])
    img = np.where(inst > 0, level[inst] + 0.06 * tex, 0.2 + 0.03 * ndi.gaussian_filter(rng.standard_normal((h, w)), 8) * 10)
    rim = (inst > 0) & (best > 0.85)
    img = np.where(rim, img - 0.12 * (best - 0.85) / 0.15, img)
    shared = separation_borders(inst)
    img = np.where(shared, img - rng.uniform(0.05, 0.15), img)
    img = ndi.gaussian_filter(img, 1.0) + rng.normal(0, 0.04, (h, w))
    return np.clip(img, 0, 1).astype(np.float32), inst


def _relabel(inst):
    """Consecutive ids 1..n; an object split in two by its neighbours becomes two objects."""
    out = np.zeros_like(inst)
    nxt = 1
    for k in np.unique(inst[inst > 0]):
        comp, m = ndi.label(inst == k)
        for j in range(1, m + 1):
            out[comp == j] = nxt
            nxt += 1
    return out


def synthetic_dataset(count: int, size=(256, 256), seed: int = 0) -> list[Sample]:
    out = []
    for i in range(count):
        img, inst = synthetic_cells(size, seed=seed * 100003 + i)
        out.append(Sample(standardise(img), inst, f"synthetic-{seed}-{i:03d}"))
    return out


# ---- files ---------------------------------------------------------------------------------------
# The input-format policy (README "Input formats"): every file becomes pages of 2-D (H, W) arrays.
# Pillow's mode and tifffile's series axes decide which axis is pages and which is channels; a
# layout that the table does not cover is refused with the file name and its shape.
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, the weights of Pillow's "L" conversion
_PAGE_AXES = set("QIZTAPRHLVM")  # tifffile axes read as pages (in file order); C/S/E are channels
_PIL_MODES = ("1", "L", "I", "F", "LA", "P", "PA", "RGB", "RGBA", "RGBX")
_LOSSY_PIL = {"JPEG", "MPO", "JPEG2000", "WEBP"}


def _non_finite(a: np.ndarray) -> int:
    """How many NaN or +-Inf values (0 for integer arrays)."""
    return a.size - int(np.count_nonzero(np.isfinite(a))) if a.dtype.kind in "fc" else 0


class InputError(ValueError):
    """An input file unetcu refuses to read: the message names the file (and page) and why."""


def _describe(n_pages: int, hw) -> str:
    size = f"{hw[0]}x{hw[1]}"
    return f"{n_pages} pages of {size}" if n_pages != 1 else f"1 page of {size}"


def _values(values, k=6) -> str:
    v = [f"{x:g}" for x in values[:k]]
    return ", ".join(v) + (", ..." if len(values) > k else "")


def gray_from_rgb(rgb: np.ndarray, role: str, where: str) -> np.ndarray:
    """(H, W, 3) -> (H, W): channels that are all equal are taken exactly (in the file's dtype),
    else ITU-R 601-2 luma as float32. Labels must not be colour."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    if np.array_equal(r, g) and np.array_equal(r, b):
        return np.ascontiguousarray(r)
    if role == "label":
        raise InputError(f"{where}: a colour label image (RGB channels differ, shape {rgb.shape}); "
                         "save labels with one channel (gray, 16-bit or palette)")
    return (rgb[..., :3].astype(np.float64) @ np.array(LUMA)).astype(np.float32)


def _pil_page(im, role: str, where: str) -> np.ndarray:
    """One Pillow frame -> (H, W) by its mode."""
    mode = im.mode
    if mode in ("1", "L", "I", "F") or mode.startswith("I;16"):
        a = np.asarray(im)
        return a.astype(np.uint8) if a.dtype == bool else a
    if mode in ("LA", "PA", "P"):
        a = np.asarray(im)
        idx = a[..., 0] if a.ndim == 3 else a  # alpha dropped
        if mode == "LA" or role == "label":  # gray, or palette indices as label ids
            return np.ascontiguousarray(idx)
        pal = np.asarray(im.getpalette() or [], dtype=np.uint8).reshape(-1, 3)
        if idx.max() >= len(pal):
            raise InputError(f"{where}: palette index {idx.max()} outside its {len(pal)}-colour palette")
        return gray_from_rgb(pal[idx], role, where)
    if mode in ("RGB", "RGBA", "RGBX"):
        return gray_from_rgb(np.asarray(im)[..., :3], role, where)
    raise InputError(f"{where}: Pillow mode {mode!r} (size {im.size[1]}x{im.size[0]}) is not a layout unetcu "
                     "reads; save it as gray, gray+alpha, RGB(A), palette, 16-bit or float")


class ImageFile:
    """One image file opened under the input-format policy: `n_pages` pages of `hw` = (H, W);
    `pages()` reads them one at a time (each checked: finite values), so a stack never has to be
    in memory at once. role 'label' keeps palette indices as values and refuses colour."""

    def __init__(self, path, role: str = "image"):
        path = Path(path)
        self.path, self.role = path, role
        if path.is_dir():
            raise InputError(f"{path} is a folder, not an image file (give the files in it, e.g. {path}/*.png)")
        if not path.is_file():
            raise FileNotFoundError(f"no such image file: {path}")
        self.is_tiff = path.suffix.lower() in (".tif", ".tiff")
        try:
            self._open_tiff() if self.is_tiff else self._open_pil()
        except InputError:
            raise
        except Exception as e:  # any decoder error is the same thing to the user: unreadable
            raise InputError(f"cannot read image {path}: {type(e).__name__}: {e}") from None
        if 0 in self.hw or self.n_pages == 0:
            raise InputError(f"{path}: an empty image (shape {self.shape})")

    def where(self, k: int) -> str:
        return f"{self.path} page {k}" if self.n_pages > 1 else str(self.path)

    def describe(self) -> str:
        return _describe(self.n_pages, self.hw)

    # -- Pillow formats (PNG, JPEG, BMP, ...)
    def _open_pil(self):
        from PIL import Image
        with Image.open(self.path) as im:
            self.format, self.mode = im.format, im.mode
            n = getattr(im, "n_frames", 1)
            self.hw = (im.size[1], im.size[0])
            self.shape = (self.hw if self.mode in ("1", "L", "P", "I", "F") or self.mode.startswith("I;16")
                          else self.hw + (len(im.getbands()),))
            if n > 1:
                raise InputError(f"{self.path}: an animated {im.format} with {n} frames; save stacks as multi-page TIFF")
            self.layout = f"Pillow mode {self.mode}"
            if im.format == "PNG" and self.mode in ("LA", "RGB", "RGBA"):
                with open(self.path, "rb") as fh:
                    head = fh.read(26)
                if len(head) == 26 and head[12:16] == b"IHDR" and head[24] == 16:
                    # Pillow keeps only the high byte of 16-bit colour / gray+alpha PNGs: ids 1 and 300
                    # would both become 1, and a 16-bit image would lose its low bits
                    raise InputError(f"{self.path}: a 16-bit {self.mode} PNG (size {self.hw[0]}x{self.hw[1]}), which "
                                     "cannot be read without losing its low 8 bits; save it as 16-bit gray PNG "
                                     "(no alpha) or as TIFF")
            if not (self.mode in _PIL_MODES or self.mode.startswith("I;16")):
                raise InputError(f"{self.path}: Pillow mode {self.mode!r} (size {self.hw[0]}x{self.hw[1]}) is not a layout "
                                 "unetcu reads; save it as gray, gray+alpha, RGB(A), palette, 16-bit or float")
        self.n_pages = 1
        self.lossy = self.format in _LOSSY_PIL
        self._pil = True

    # -- TIFF through tifffile's series (axes from the file's metadata)
    def _open_tiff(self):
        import tifffile
        self._pil = False
        with tifffile.TiffFile(str(self.path)) as t:
            series = t.series
            if not series:
                raise InputError(f"{self.path}: a TIFF without images")
            if len(series) > 1:
                shapes = ", ".join(str(s.shape) for s in series[:4])
                raise InputError(f"{self.path}: a TIFF with {len(series)} image series ({shapes}); "
                                 "unetcu reads one stack of equal-sized pages")
            s = series[0]
            kf = s.keyframe
            axes, shape, kaxes = s.axes, tuple(s.shape), kf.axes
            self.shape, self.axes, self.format = shape, axes, "TIFF"
            self.lossy = any(w in kf.compression.name for w in ("JPEG", "WEBP"))
            if not axes.endswith(kaxes) or kaxes not in ("YX", "YXS", "SYX"):
                raise InputError(f"{self.path}: TIFF axes {axes} (shape {shape}) are not a layout unetcu reads")
            outer, oshape = axes[:len(axes) - len(kaxes)], shape[:len(axes) - len(kaxes)]
            for ax, n in zip(outer, oshape):
                if ax not in _PAGE_AXES and n > 1:
                    raise InputError(f"{self.path}: {n} channels (TIFF axes {axes}, shape {shape}); the model takes one "
                                     "channel: save one channel per file")
            if np.dtype(kf.dtype).kind not in "buif":
                raise InputError(f"{self.path}: pixel type {kf.dtype} (shape {shape}) is not a layout unetcu reads")
            ns = shape[axes.index("S")] if "S" in axes else 1
            pm = int(kf.photometric)
            kinds = [int(e) for e in kf.extrasamples]
            extra = len(kinds)
            if any(e != 2 for e in kinds):  # 2 = unassociated alpha; 1 (premultiplied) and 0 (other data) refused
                raise InputError(f"{self.path}: TIFF extra samples {[e.name for e in kf.extrasamples]} (axes {axes}, "
                                 f"shape {shape}) are not a layout unetcu reads: only an unassociated alpha is dropped")
            # photometric: 0 min-is-white, 1 min-is-black, 2 RGB, 3 palette. Min-is-white gray (1-bit
            # masks from tifffile's imwrite(bool), ImageJ masks with an inverting LUT) is read as
            # stored, as tifffile and ImageJ give it: 1-bit True = 1, ImageJ's foreground = 255
            self._miniswhite = pm == 0
            if pm in (0, 1) and ns - extra == 1:
                self.layout = "gray" + ("+alpha" if extra else "") + (" (min-is-white, values as stored)" if pm == 0 else "")
            elif pm == 2 and ns - extra == 3:
                self.layout = "RGB" + ("A" if extra else "")
            elif pm == 3 and ns == 1:
                self.layout = "palette"
                self._colormap = kf.colormap
            else:
                raise InputError(f"{self.path}: TIFF photometric {kf.photometric.name} with {ns} samples per pixel "
                                 f"(axes {axes}, shape {shape}) is not a layout unetcu reads")
            self.hw = (shape[axes.index("Y")], shape[axes.index("X")])
            self.n_pages = int(np.prod(oshape, dtype=np.int64)) if oshape else 1
            self._kaxes = kaxes

    def _tiff_page(self, a: np.ndarray, where: str) -> np.ndarray:
        if a.dtype == bool:  # 1-bit: 0/1
            a = a.astype(np.uint8)
        if self._kaxes == "SYX":
            a = np.moveaxis(a, 0, -1)
        if a.ndim == 3:
            a = gray_from_rgb(a, self.role, where) if self.layout.startswith("RGB") else np.ascontiguousarray(a[..., 0])
        if self.layout == "palette" and self.role != "label":
            cmap = np.asarray(self._colormap, dtype=np.float64)  # (3, 2**bits), 16-bit
            a = gray_from_rgb(np.moveaxis(cmap[:, a], 0, -1) / 257.0, self.role, where)
        return a

    def _raw_pages(self):
        done = 0
        if not self._pil:
            import tifffile
            with tifffile.TiffFile(str(self.path)) as t:
                for k in range(self.n_pages):
                    try:
                        a = t.asarray(key=k, series=0)
                    except ValueError as e:
                        if "imagecodecs" not in str(e):
                            raise
                        break  # a compression tifffile cannot decode without imagecodecs: Pillow reads it
                    yield self._tiff_page(a, self.where(k))
                    done += 1
            if done == self.n_pages:
                return
        from PIL import Image
        with Image.open(self.path) as im:
            for k in range(done, self.n_pages):
                im.seek(k)
                a = _pil_page(im, self.role, self.where(k))
                if not self._pil and self._miniswhite and im.mode in ("1", "L"):
                    a = (1 if im.mode == "1" else 255) - a  # Pillow inverts min-is-white; values as stored
                yield a

    def pages(self):
        """Yield each page as a 2-D array in the file's dtype (float32 for converted colour)."""
        it = self._raw_pages()
        k = 0
        while True:
            try:
                a = next(it)
            except StopIteration:
                break
            except InputError:
                raise
            except Exception as e:
                raise InputError(f"cannot read image {self.where(k)}: {type(e).__name__}: {e}") from None
            if a.shape != self.hw:
                raise InputError(f"{self.where(k)}: page of shape {a.shape}, expected {self.hw} (shape {self.shape})")
            bad = _non_finite(a)
            if bad:
                raise InputError(f"{self.where(k)}: {bad} non-finite pixel values (NaN or Inf); "
                                 "unetcu needs finite values")
            if not a.dtype.isnative:
                a = a.astype(a.dtype.newbyteorder("="))
            yield a
            k += 1
        if k != self.n_pages:
            raise InputError(f"{self.path}: read {k} pages, expected {self.n_pages} (shape {self.shape})")


def read_image(path, role: str = "image") -> np.ndarray:
    """The whole file under the input-format policy: (H, W), or (P, H, W) for several pages."""
    f = ImageFile(path, role)
    pages = list(f.pages())
    return pages[0] if len(pages) == 1 else np.stack(pages)


LABEL_MODES = ("auto", "binary", "instance", "classes", "threshold")


def open_label(path, mode: str) -> ImageFile:
    """A label file; lossy formats are refused (their values are changed by compression) unless
    the rule is 'threshold'."""
    if mode not in LABEL_MODES:
        raise ValueError(f"label mode must be one of {', '.join(LABEL_MODES)}, got {mode!r}")
    f = ImageFile(path, "label")
    if f.lossy and mode != "threshold":
        raise InputError(f"{path}: a label image in a lossy format ({f.format}); compression changes label values: "
                         "save labels as PNG or uncompressed/LZW TIFF (or read it with label mode 'threshold')")
    return f


def _damaged_binary(lab, values) -> bool:
    """A two-valued mask after lossy compression: each value between its extremes lies scattered
    in many small pieces (JPEG/WebP masks: 10 to 70 pieces per value), where an instance mask has
    about one piece per id (at most 1.5 on average in DSB 2018 and DIC-HeLa)."""
    if values[-1] - values[0] > 2**16:
        return False
    mid = (lab != values[0]) & (lab != values[-1])
    ids = np.where(mid, lab.astype(np.int64) - int(values[0]), 0)
    pieces = sum(ndi.label(ids[sl] == k)[1] for k, sl in enumerate(ndi.find_objects(ids), 1) if sl is not None)
    return pieces > 3 * (len(values) - 2)


def _looks_like_image(lab, values) -> str:
    """Why `lab` looks like a gray image rather than labels ('' if it does not): many values that
    change between most neighbouring pixels by small steps (a label image changes only at object
    borders; a lossy mask's edges jump by half its range or more), each value in many pieces (a
    label id is about one piece). Measured: images 45..98 % of neighbours differ, < 0.1 % of the
    differences above half the range; labels < 5 %; lossy masks < 40 %, with > 5 % such jumps."""
    if len(values) <= 16 or lab.size < 64:
        return ""
    h, w = lab.shape  # a window of at most 1024 x 1024 from the middle decides
    y, x = max(0, h // 2 - 512), max(0, w // 2 - 512)
    a = lab[y:y + 1024, x:x + 1024].astype(np.float64)
    steps = np.concatenate([np.abs(np.diff(a, axis=0)).ravel(), np.abs(np.diff(a, axis=1)).ravel()])
    differ = steps > 0
    share = float(differ.mean())
    if share < 0.1 or (steps > (float(values[-1]) - float(values[0])) / 2).sum() > 0.01 * differ.sum():
        return ""
    from skimage.measure import label
    pieces = int(label(np.unique(a, return_inverse=True)[1].reshape(a.shape) + 1, background=0, connectivity=1).max())
    if pieces < 3 * len(np.unique(a)):
        return ""
    return (f"{len(values)} distinct values that change by small steps between {share:.0%} of neighbouring pixels, "
            f"in {pieces} pieces; labels change only at object borders")


def instances_from_label_image(lab: np.ndarray, mode: str = "auto", where: str = "label image",
                               n_classes: int | None = None) -> np.ndarray:
    """Label image (H, W) -> instances, after an audit of its values for the mode (a refusal
    names `where`). 'binary': two values, foreground = the larger (or nonzero), objects = its
    connected components; 'instance': 0 = background, 1..n object ids; 'classes': class ids as
    they are (below n_classes when given); 'auto': binary if two values, else instance;
    'threshold' (the explicit rule for lossy masks): foreground where value > the midpoint of min
    and max, then components. A gray image given as a label is refused in every mode."""
    return read_label(lab, mode, where, n_classes)[0]


def read_label(lab: np.ndarray, mode: str = "auto", where: str = "label image",
               n_classes: int | None = None) -> tuple[np.ndarray, str]:
    """(instances, how it was read: 'binary', 'instance', 'classes' or 'threshold'), see
    instances_from_label_image."""
    lab = np.asarray(lab)
    if mode not in LABEL_MODES:
        raise ValueError(f"label mode must be one of {', '.join(LABEL_MODES)}, got {mode!r}")
    if lab.ndim != 2:
        raise InputError(f"{where}: expected a 2-D label image, got shape {lab.shape}")
    bad = _non_finite(lab)
    if bad:
        raise InputError(f"{where}: {bad} non-finite label values (NaN or Inf)")
    values = np.unique(lab)
    if mode != "threshold" and lab.dtype.kind == "f" and not np.array_equal(values, np.round(values)):
        frac = values[values != np.round(values)]
        raise InputError(f"{where}: label values must be whole numbers; found {_values(frac)} "
                         f"({len(values)} distinct values) — a probability map?")
    why = _looks_like_image(lab, values)
    if why:
        raise NotALabelImage(f"{where}: looks like an image, not a label image ({why}); give the label "
                             "images (ground truth) here", where, why)
    if mode == "threshold":
        fg = lab > (float(values[0]) + float(values[-1])) / 2 if len(values) > 1 else np.zeros(lab.shape, bool)
        return ndi.label(fg)[0].astype(np.int32), mode
    if mode == "auto":
        if len(values) <= 2:
            mode = "binary"
        elif _damaged_binary(lab, values):
            raise InputError(f"{where}: {len(values)} distinct values ({_values(values)}), each in many scattered "
                             "pieces: a binary mask damaged by lossy compression? Save it losslessly, "
                             "or use label mode 'threshold'")
        else:
            mode = "instance"
    if mode == "binary":
        if len(values) > 2:
            raise InputError(f"{where}: {len(values)} distinct values ({_values(values)}); a binary mask has 2 "
                             "— lossy compression? (save it losslessly, or use label mode 'threshold')")
        comp, _ = ndi.label(lab > values.min() if len(values) == 2 else lab > 0)
        return comp.astype(np.int32), mode
    if values[0] < 0:
        raise InputError(f"{where}: negative label values ({_values(values[values < 0])}); {mode} labels are "
                         "0 = background and positive ids")
    if values[-1] >= 2**31:
        raise InputError(f"{where}: label value {values[-1]:g} does not fit 32-bit ids")
    if mode == "classes" and n_classes is not None and values[-1] >= n_classes:
        raise InputError(f"{where}: label value {values[-1]:g} is outside the model's {n_classes} classes "
                         f"(0..{n_classes - 1}; values {_values(values)})"
                         + ("; a binary mask? read it with --labels binary" if len(values) == 2 and n_classes == 2 else ""))
    return lab.astype(np.int32), mode


class NotALabelImage(InputError):
    """A gray image where a label image belongs; where: the file (and page), why: the evidence."""

    def __init__(self, message, where, why):
        super().__init__(message)
        self.where, self.why = where, why


def label_mode_for(mode: str, n_classes: int) -> str:
    """The label mode `train` reads with for n_classes: with more than 2 classes 'auto' means class
    ids; binary, instance and threshold labels give 2 classes (background, object interior), so
    they are refused then."""
    if mode not in LABEL_MODES:
        raise ValueError(f"label mode must be one of {', '.join(LABEL_MODES)}, got {mode!r}")
    if n_classes > 2 and mode != "classes":
        if mode == "auto":
            return "classes"
        raise ValueError(f"--labels {mode} gives 2 classes (background, object interior), not the {n_classes} of "
                         f"--classes {n_classes}: give class-id labels with --labels classes (or auto)")
    return mode


def describe_labels(samples: list[Sample], n_classes: int) -> str:
    """One line: how the labels were read ("labels: instance ids, 16 images, 412 objects",
    "labels: class ids 0..2 (3 classes), 16 images"), saying which classes occur in no image."""
    n = len(samples)
    images = f"{n} image" + ("s" if n != 1 else "")
    if samples and all(s.semantic for s in samples):
        present = np.unique(np.concatenate([np.unique(s.instances) for s in samples]))
        lo, hi = int(present[0]), int(present[-1])
        missing = sorted(set(range(n_classes)) - {int(v) for v in present})
        if not missing:
            return f"labels: class ids {lo}..{hi} ({n_classes} classes), {images}"
        return (f"labels: class ids {', '.join(map(str, present))} of {n_classes} classes "
                f"(class{'es' if len(missing) > 1 else ''} {', '.join(map(str, missing))} in no image: check --classes), {images}")
    names = {"binary": "binary masks (objects: connected components)", "instance": "instance ids",
             "threshold": "thresholded masks (objects: connected components)", "classes": "class ids",
             "": "instance ids (synthetic)"}
    kinds = {}
    for s in samples:
        kinds[s.read_as] = kinds.get(s.read_as, 0) + 1
    objects = sum(int(np.count_nonzero(np.unique(s.instances))) for s in samples if not s.semantic)
    how = ", ".join(names[k] + (f" ({c} images)" if len(kinds) > 1 else "") for k, c in kinds.items())
    return f"labels: {how}, {images}, {objects} objects"


def _key(stem: str) -> str:
    digits = re.findall(r"\d+", stem)
    return digits[-1].lstrip("0") or "0" if digits else stem


def find_pairs(root) -> list[tuple[Path, Path]]:
    """(image, label) file pairs under root: root/images + root/labels, or root/train/images +
    root/train/labels. Files pair by stem, else by their last number (01_t002.tif <-> 01_man_seg002.tif)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no such data folder: {root}")
    for base in (root, root / "train"):
        im_dir, lab_dir = base / "images", base / "labels"
        if im_dir.is_dir() and lab_dir.is_dir():
            break
    else:
        raise FileNotFoundError(f"{root}: expected an images/ and a labels/ folder (or train/images and train/labels)")
    ims = sorted(p for p in im_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    labs = sorted(p for p in lab_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not ims:
        raise FileNotFoundError(f"{im_dir}: no image files ({', '.join(IMAGE_EXTS)})")
    found = pair_labels([p.stem for p in ims], labs)
    for p, lab in zip(ims, found):
        if lab is None:
            raise ValueError(f"cannot pair image {p.name} with a label in {lab_dir} (by name or by number)")
    return list(zip(ims, found))


def pair_labels(names: list[str], labels: list[Path]) -> list[Path | None]:
    """The label file of each name: the one with the same stem, else the one (among the labels no
    other name has by stem) with the same last number (01_t002 <-> 01_man_seg002); None if there
    is none or more than one. A label that two names would share is refused (ValueError): pairing
    cellB_01 with cellA_01's label would score or train on the wrong truth."""
    by_stem = {p.stem: p for p in labels}
    taken = {n for n in names if n in by_stem}
    by_num = {}
    for p in labels:
        if p.stem not in taken:
            by_num.setdefault(_key(p.stem), []).append(p)
    out = []
    for n in names:
        cand = [by_stem[n]] if n in by_stem else by_num.get(_key(n), [])
        out.append(cand[0] if len(cand) == 1 else None)
    first = {}
    for n, lab in zip(names, out):
        if lab is not None and first.setdefault(lab, n) != n:
            raise ValueError(f"label {lab} would pair with both {first[lab]} and {n} (by name or by last number): "
                             "give each image and its label the same name")
    return out


def _pair(ip, lp, label_mode: str):
    """(image file, label file) opened and checked to match page for page."""
    fi, fl = ImageFile(ip), open_label(lp, label_mode)
    if fi.n_pages != fl.n_pages or fi.hw != fl.hw:
        raise InputError(f"image {ip} ({fi.describe()}) and label {lp} ({fl.describe()}) differ")
    return fi, fl


def _samples(fi: ImageFile, fl: ImageFile, label_mode: str, stem: str, n_classes: int | None = None) -> list[Sample]:
    out = []
    for k, (a, b) in enumerate(zip(fi.pages(), fl.pages())):
        name = stem if fi.n_pages == 1 else f"{stem}-{k:03d}"
        inst, how = read_label(b, label_mode, fl.where(k), n_classes)
        out.append(Sample(standardise(a), inst, name, label_mode == "classes", how))
    return out


def split_train_val(samples: list, val_fraction: float) -> tuple[list, list]:
    """(train, validation): the last round(val_fraction * len) samples validate, at least one and at
    most all but one when val_fraction > 0 and there are two or more; the order is the folder's."""
    nval = int(round(val_fraction * len(samples)))
    if val_fraction > 0 and len(samples) > 1:
        nval = min(max(1, nval), len(samples) - 1)
    return samples[:len(samples) - nval], samples[len(samples) - nval:]


def load_folder(root, label_mode: str = "auto", n_classes: int | None = None) -> list[Sample]:
    """Every (image, label) pair of a folder as Samples. Multi-page files give one sample per page;
    an image and its label must have the same pages of the same size. With n_classes the mode is
    label_mode_for(label_mode, n_classes) ('auto' = class ids above 2 classes) and class ids must
    lie below it."""
    if n_classes is not None:
        label_mode = label_mode_for(label_mode, n_classes)
    pairs = [_pair(ip, lp, label_mode) for ip, lp in find_pairs(root)]  # every layout checked first
    return [s for fi, fl in pairs for s in _samples(fi, fl, label_mode, fi.path.stem, n_classes)]


def load_stack(images_tif, labels_tif, label_mode: str = "auto", n_classes: int | None = None) -> list[Sample]:
    """A pair of multi-page TIFF stacks (e.g. ISBI's train-volume.tif / train-labels.tif)."""
    if n_classes is not None:
        label_mode = label_mode_for(label_mode, n_classes)
    fi, fl = _pair(images_tif, labels_tif, label_mode)
    stem = Path(images_tif).stem
    return [Sample(s.image, s.instances, f"{stem}-{k:03d}", s.semantic, s.read_as)
            for k, s in enumerate(_samples(fi, fl, label_mode, stem, n_classes))]


def page_names(f: ImageFile) -> list[str]:
    """Output names of a file's pages: its stem, or stem-000, stem-001, ... for several pages."""
    stem = f.path.stem
    return [stem] if f.n_pages == 1 else [f"{stem}-{k:03d}" for k in range(f.n_pages)]


def fingerprint(root) -> dict[str, str]:
    """The content of what a run reads from a data folder: {name relative to root ('/'-separated):
    the first 32 hex digits of its SHA-256} for every image and label file find_pairs pairs. A run
    records it in its checkpoint, so that --resume accepts the folder at another path when its
    files are the same and refuses it when one has changed; the ranks of `train --distributed`
    compare theirs before the first step."""
    import hashlib
    root = Path(root)
    files = {}
    for pair in find_pairs(root):
        for p in pair:
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            files[p.relative_to(root).as_posix()] = h.hexdigest()[:32]
    return files


def first_difference(had: dict[str, str], now: dict[str, str]) -> str | None:
    """The first file (in name order) in which two fingerprints differ, in words: 'images/a.png has
    other content', 'images/a.png is missing' (in had, not in now), 'images/b.png is new'; None if
    they are equal."""
    for name in sorted(set(had) | set(now)):
        if name not in now:
            return f"{name} is missing"
        if name not in had:
            return f"{name} is new"
        if had[name] != now[name]:
            return f"{name} has other content"
    return None
