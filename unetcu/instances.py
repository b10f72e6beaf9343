"""From the net's foreground to objects: the instance step of `unetcu predict`
(NAME_instances.png), of the SEG score on probability maps and of the quality benchmark.

    components  connected components (4-connectivity) of the foreground (p > 0.5, or for more than
                two classes the pixels whose most likely class is not 0): objects are separated only where
                the net predicts background between them (the border the weight map teaches)
    (a model with a border class, UNet(border=...), learns where touching cells meet: its objects are
    the connected components of the cell class grown into the border class, grow_cores, whatever
    the method; the watershed splits the cell class's components the same way before they grow)
    watershed   the same foreground, split by a seeded watershed on its distance transform: one seed
                per maximum of the distance to the background at least `min_distance` px from the
                next, so two touching round cells joined by a neck become two objects. The
                distance suits objects of one size: predict takes 0.9 x the median radius of the
                objects the model was trained on (object_radius, kept in the checkpoint); on
                DIC-HeLa's held-out frames that raised SEG from 0.06 (components) to 0.47
                (benchmarks/RESULTS.md; the factor was picked on those two frames).

Source: the paper separates touching cells by the border-weighted loss alone (section 3); the
border class is the three-class (background / interior / boundary) U-Net of Caicedo et al.
(Cytometry A 2019, nucleus segmentation); the
distance-transform watershed is the classic split of touching nuclei (e.g. scikit-image's
"Watershed segmentation" example, Beucher & Meyer 1993).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

METHODS = ("components", "watershed")


def object_radius(instance_maps) -> float | None:
    """The median equivalent radius sqrt(area / pi) in pixels of the objects of (H, W) instance maps
    (0 = background), or None when there are none."""
    areas = np.concatenate([np.bincount(np.asarray(m, dtype=np.int64).ravel())[1:] for m in instance_maps] or [np.zeros(0)])
    areas = areas[areas > 0]
    return float(np.sqrt(np.median(areas) / np.pi)) if areas.size else None


def min_distance_for(radius: float) -> int:
    """The watershed's seed spacing for objects of this median radius: 0.9 x radius, at least 2 px."""
    return max(2, int(round(0.9 * radius)))


def min_size_for(radius: float) -> int:
    """The least object area kept by predict for training objects of this median radius: a tenth of
    their median area pi r^2, at least 1 px. A foreground speck far smaller than any training object
    (noise on an image unlike the training data) is not an object; a tenth keeps small cells."""
    return max(1, int(round(0.1 * np.pi * radius ** 2)))


def remove_small(inst: np.ndarray, min_size: int) -> tuple[np.ndarray, int]:
    """(ids, removed): the (H, W) object ids without the objects of fewer than min_size pixels (set to
    background), the others renumbered 1..n in their order; removed = how many objects were dropped."""
    inst = np.asarray(inst)
    area = np.bincount(inst.ravel().astype(np.int64))
    small = area < min_size
    small[0] = False  # the background stays
    removed = int(np.count_nonzero(small[1:] & (area[1:] > 0)))
    keep = ~small & (area > 0)  # ids with no pixel (a gap in the numbering) go too
    keep[0] = False
    new = np.zeros(area.size, inst.dtype)
    new[keep] = np.arange(1, int(keep.sum()) + 1)
    return new[inst], removed


def instances(fg: np.ndarray, method: str = "components", min_distance: int = 7) -> np.ndarray:
    """(H, W) int32 object ids (0 = background, 1..n) of a (H, W) boolean foreground mask.
    Raises ValueError for an unknown method or a mask that is not 2-D."""
    fg = np.asarray(fg, dtype=bool)
    if fg.ndim != 2:
        raise ValueError(f"instances: expected a (H, W) foreground mask, got shape {fg.shape}")
    if method not in METHODS:
        raise ValueError(f"instances: method must be one of {METHODS}, got {method!r}")
    cc = ndi.label(fg)[0].astype(np.int32)
    if method == "components" or not fg.any():
        return cc
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed
    dist = ndi.distance_transform_edt(fg)
    peaks = peak_local_max(dist, min_distance=min_distance, labels=cc, exclude_border=False)
    markers = np.zeros(fg.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    # a component without a peak (a plateau, a sliver) gets one at its deepest pixel: none is lost
    seeded = np.zeros(int(cc.max()) + 1, bool)
    seeded[cc[tuple(peaks.T)]] = True
    missing = np.flatnonzero(~seeded[1:]) + 1
    for k, pos in enumerate(ndi.maximum_position(dist, cc, missing) if len(missing) else [], start=len(peaks) + 1):
        markers[pos] = k
    return watershed(-dist, markers, mask=fg).astype(np.int32)


def grow_cores(cores: np.ndarray, fg: np.ndarray) -> np.ndarray:
    """(H, W) int32 objects: each core (object ids, 0 = none) grown over the (H, W) boolean
    foreground `fg` to the pixels nearer to it than to any other core, within the foreground (a
    watershed on the distance to the cores). A piece of the foreground that holds no core (a
    stretch of border alone) becomes an object of its own: no foreground pixel is lost."""
    cores, fg = np.asarray(cores), np.asarray(fg, dtype=bool)
    if cores.shape != fg.shape or fg.ndim != 2:
        raise ValueError(f"grow_cores: cores {cores.shape} and foreground {fg.shape} must be the same (H, W)")
    from skimage.segmentation import watershed
    markers = np.where(fg, cores, 0).astype(np.int32)
    comp = ndi.label(fg)[0]
    seeded = np.zeros(int(comp.max()) + 1, bool)
    seeded[comp[markers > 0]] = True
    lone = np.flatnonzero(~seeded[1:]) + 1  # components of the foreground without a core
    if lone.size:
        ids = np.zeros(seeded.size, np.int32)
        ids[lone] = np.arange(1, lone.size + 1) + int(markers.max())
        markers = np.where(markers == 0, ids[comp], markers)
    dist = ndi.distance_transform_edt(markers == 0)
    return watershed(dist, markers, mask=fg).astype(np.int32)


def from_classes(labels: np.ndarray, border: int = 0, method: str = "components", min_distance: int = 7) -> np.ndarray:
    """(H, W) int32 objects of a (H, W) class map (the argmax of the net's probabilities): the
    foreground (class != 0) split by `method`; for a model with a border class (border > 0: class 1
    cell, class 2 touching border) the cell class split by `method`, then grown into the border."""
    labels = np.asarray(labels)
    if not border:
        return instances(labels > 0, method, min_distance)
    return grow_cores(instances(labels == 1, method, min_distance), labels > 0)
