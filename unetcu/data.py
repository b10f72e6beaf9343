"""Data: the synthetic touching-cells generator (the default dataset, so `unetcu train` works with
nothing downloaded) and loaders for PNG/TIFF folders and multi-page TIFF stacks.

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


def standardise(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img, dtype=np.float64)
    if img.ndim == 3:  # colour -> gray
        img = img[..., :3].mean(axis=-1)
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
def read_image(path) -> np.ndarray:
    """A 2-D array (or the pages of a multi-page TIFF as (P, H, W)), in the file's own dtype."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such image file: {path}")
    ext = path.suffix.lower()
    try:
        if ext in (".tif", ".tiff"):
            a = _read_tiff(path)
        else:
            from PIL import Image
            with Image.open(path) as im:
                a = np.asarray(im)
    except Exception as e:  # any decoder error is the same thing to the user: unreadable
        raise ValueError(f"cannot read image {path}: {type(e).__name__}: {e}") from None
    if a.ndim == 3 and a.shape[-1] in (3, 4) and ext not in (".tif", ".tiff"):
        a = a[..., :3].mean(axis=-1)
    if a.ndim not in (2, 3) or 0 in a.shape:
        raise ValueError(f"{path}: expected a 2-D image or a stack of them, got shape {a.shape}")
    return a


LABEL_MODES = ("auto", "binary", "instance", "classes")


def _read_tiff(path: Path) -> np.ndarray:
    """tifffile first; Pillow for what tifffile cannot decode without the optional imagecodecs
    package (LZW-compressed TIFFs such as the Cell Tracking Challenge's)."""
    import tifffile
    try:
        return tifffile.imread(str(path))
    except ValueError as e:
        if "imagecodecs" not in str(e):
            raise
    from PIL import Image, ImageSequence
    with Image.open(path) as im:
        pages = [np.asarray(p) for p in ImageSequence.Iterator(im)]
    return pages[0] if len(pages) == 1 else np.stack(pages)


def instances_from_label_image(lab: np.ndarray, mode: str = "auto") -> np.ndarray:
    """Label image -> instances. mode 'binary': foreground = nonzero, objects = its connected
    components; 'instance': the ids as they are; 'auto': binary if the image holds two values
    (e.g. 0/255), else instance; 'classes': the values are class ids, returned as they are."""
    lab = np.asarray(lab)
    if lab.ndim == 3:
        lab = lab[..., 0]
    values = np.unique(lab)
    if mode == "auto":
        mode = "binary" if len(values) <= 2 else "instance"
    if mode == "binary":
        comp, _ = ndi.label(lab > values.min() if len(values) == 2 else lab > 0)
        return comp.astype(np.int32)
    if mode not in ("instance", "classes"):
        raise ValueError(f"label mode must be one of {', '.join(LABEL_MODES)}, got {mode!r}")
    if lab.min() < 0:
        raise ValueError("label values must be non-negative")
    return lab.astype(np.int32)


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
    by_stem = {p.stem: p for p in labs}
    if all(p.stem in by_stem for p in ims):
        return [(p, by_stem[p.stem]) for p in ims]
    by_num = {}
    for p in labs:
        by_num.setdefault(_key(p.stem), []).append(p)
    pairs = []
    for p in ims:
        cand = by_num.get(_key(p.stem), [])
        if len(cand) != 1:
            raise ValueError(f"cannot pair image {p.name} with a label in {lab_dir} (by name or by number)")
        pairs.append((p, cand[0]))
    return pairs


def load_folder(root, label_mode: str = "auto") -> list[Sample]:
    """Every (image, label) pair of a folder as Samples. Multi-page TIFFs give one sample per page."""
    out = []
    for ip, lp in find_pairs(root):
        img, lab = read_image(ip), read_image(lp)
        imgs = img if img.ndim == 3 and lp.suffix.lower() in (".tif", ".tiff") and lab.ndim == 3 else [img]
        labs = lab if lab.ndim == 3 and len(imgs) > 1 else [lab]
        if len(imgs) != len(labs):
            raise ValueError(f"{ip.name}: {len(imgs)} image pages but {len(labs)} label pages")
        for k, (a, b) in enumerate(zip(imgs, labs)):
            if a.shape[:2] != b.shape[:2]:
                raise ValueError(f"{ip.name}: image {a.shape[:2]} and label {b.shape[:2]} differ in size")
            name = ip.stem if len(imgs) == 1 else f"{ip.stem}-{k:03d}"
            out.append(Sample(standardise(a), instances_from_label_image(b, label_mode), name, label_mode == "classes"))
    return out


def load_stack(images_tif, labels_tif, label_mode: str = "auto") -> list[Sample]:
    """A pair of multi-page TIFF stacks (e.g. ISBI's train-volume.tif / train-labels.tif)."""
    imgs, labs = read_image(images_tif), read_image(labels_tif)
    imgs = imgs if imgs.ndim == 3 else imgs[None]
    labs = labs if labs.ndim == 3 else labs[None]
    if imgs.shape != labs.shape:
        raise ValueError(f"stacks differ: images {imgs.shape}, labels {labs.shape}")
    stem = Path(images_tif).stem
    return [Sample(standardise(a), instances_from_label_image(b, label_mode), f"{stem}-{k:03d}", label_mode == "classes")
            for k, (a, b) in enumerate(zip(imgs, labs))]


def load_images(paths) -> list[tuple[str, np.ndarray]]:
    """For prediction: (name, standardised image) for each file (every page of a TIFF stack)."""
    out = []
    for p in paths:
        a = read_image(p)
        if a.ndim == 3 and Path(p).suffix.lower() in (".tif", ".tiff"):
            out += [(f"{Path(p).stem}-{k:03d}", standardise(x)) for k, x in enumerate(a)]
        else:
            out.append((Path(p).stem, standardise(a)))
    return out

